"""Print the tuning table of a rival-loss tuning comparison and the value chosen per method.

    python scripts/choose_rival_values.py runs/rivals_tune_cpu [--group rank_41-50] [--max_loss_increase 0.05]

The target group defaults to the simulation's small language when there is one, else the rare headline
bucket (`hf_selfish.reporting.pareto.pareto_groups`). The rule is `hf_selfish.reporting.tuning.choose_values`.
"""

from __future__ import annotations

import argparse

from hf_selfish.lab.results import load_results
from hf_selfish.reporting.pareto import pareto_groups
from hf_selfish.reporting.tuning import DEFAULT_MAX_LOSS_INCREASE, choose_values, tuning_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--group", help="target group (default: the small language, else the rare headline bucket)")
    parser.add_argument("--max_loss_increase", type=float, default=DEFAULT_MAX_LOSS_INCREASE)
    ns = parser.parse_args()
    results = load_results(ns.run_dir)
    group = ns.group
    if group is None:
        _, y_groups = pareto_groups(results)
        languages = [g for g in y_groups if g.startswith("lang_")]
        group = (languages or y_groups)[0]
    print(tuning_table(results, group, ns.max_loss_increase))
    print()
    for c in choose_values(results, group, ns.max_loss_increase)[1]:
        if c.chosen:
            print(f"{c.method}: {c.knob} = {c.value}")


if __name__ == "__main__":
    main()
