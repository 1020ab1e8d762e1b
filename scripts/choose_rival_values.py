"""Print the tuning table of a rival-loss tuning comparison and the value chosen per method.

    python scripts/choose_rival_values.py runs/rivals_tune_cpu [--group rank_41-50] [--max_loss_increase 0.05]
    python scripts/choose_rival_values.py runs/bible_nya_sweep_cpu --language nya_chichewa --main eng_web

The target group defaults to the simulation's small language when there is one, else the rare headline
bucket (`hf_selfish.reporting.pareto.pareto_groups`). On a Bible mix, ``--language`` (with ``--main``) minimises that
language's eval loss among the values that keep the main language's within the limit. The rule is
`hf_selfish.reporting.tuning.choose_values`.
"""

from __future__ import annotations

import argparse

from hf_selfish.lab.results import load_results
from hf_selfish.reporting.pareto import pareto_groups
from hf_selfish.reporting.tuning import DEFAULT_MAX_LOSS_INCREASE, choose_values, language_keys, tuning_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--group", help="target group (default: the small language, else the rare headline bucket)")
    parser.add_argument("--max_loss_increase", type=float, default=DEFAULT_MAX_LOSS_INCREASE)
    parser.add_argument("--language", help="a Bible mix's small language: minimise its eval loss")
    parser.add_argument("--main", help="with --language: the main language, whose eval loss is limited")
    ns = parser.parse_args()
    if (ns.language is None) != (ns.main is None):
        parser.error("--language and --main go together")
    results = load_results(ns.run_dir)
    keys = language_keys(ns.main, ns.language) if ns.language else {}
    group = ns.language or ns.group
    if group is None:
        _, y_groups = pareto_groups(results)
        languages = [g for g in y_groups if g.startswith("lang_")]
        group = (languages or y_groups)[0]
    print(tuning_table(results, group, ns.max_loss_increase, **keys))
    print()
    for c in choose_values(results, group, ns.max_loss_increase, **keys)[1]:
        if c.chosen:
            print(f"{c.method}: {c.knob} = {c.value}")


if __name__ == "__main__":
    main()
