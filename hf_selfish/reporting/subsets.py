"""Per eval subset (a language evaluated alone): bits per character, NLL, accuracy and MRR over seeds, the deltas
against the baseline, and ``summary.json``'s record with its per-language entries (docs/guide/summary_json.md)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..lab.results import finished_runs
from ..metric_names import ALL_GROUP, finite_or_none, metric_key, subset_prefix
from .summary import Stat, Summary, group_json, paired_delta, reference_first, stat_at_start, stat_over_runs, summarize

__all__ = ["SUBSET_STATS", "SubsetRow", "final_tokens_of", "language_json", "subset_rows", "summary_record"]

SUBSET_STATS = ("bits_per_char", "nll", "accuracy", "mrr")


@dataclass
class SubsetRow:
    """One eval subset (a language): its statistics per arm over seeds and the deltas against the baseline."""

    name: str
    tokens: int | None  # scored positions of the subset (the first arm's first run)
    arms: dict[str, dict[str, Stat]]  # arm -> stat (SUBSET_STATS) -> over seeds
    delta: dict[str, dict[str, Stat]]  # arm -> stat -> arm - baseline (paired by seed)
    # bits per character before training (the step-0 evaluation, one value per seed: every arm of a seed starts
    # from the same model), empty without `eval_on_start`: learning vs forgetting when a pretrained model is tuned
    before: Stat = field(default_factory=lambda: Stat(values=()))

    def to_json(self) -> dict[str, Any]:
        """``summary.json``'s entry of the language (see docs/guide/summary_json.md)."""
        return {
            "name": self.name,
            "tokens": self.tokens,
            "before": {"bits_per_char": self.before.to_json()},
            "arms": {arm: {s: v.to_json() for s, v in stats.items()} for arm, stats in self.arms.items()},
            "delta": {arm: {s: v.to_json() for s, v in stats.items()} for arm, stats in self.delta.items()},
        }


def _subset_stat(runs: Sequence[Mapping[str, Any]], name: str, stat: str, chars_per_token: float) -> Stat:
    """``bits_per_char`` = the subset's eval loss (nats per token) / ln 2 / characters per token; else the
    subset's ``all`` group statistic (every token id: per-token-mean NLL, accuracy, MRR)."""
    prefix = subset_prefix(name)
    if stat != "bits_per_char":
        return stat_over_runs(runs, metric_key(ALL_GROUP, stat, prefix))
    loss = stat_over_runs(runs, f"{prefix}_loss")
    return Stat(values=tuple(v / math.log(2) / chars_per_token for v in loss.values), seeds=loss.seeds)


def subset_rows(results: Mapping[str, Any], *, baseline: str | None = None) -> list[SubsetRow]:
    """Per eval subset (``results["eval_subsets"]``): bits per character and the ``all`` group's statistics.

    ``baseline``: the arm the deltas are taken against (default: the first arm); it comes first in each row's
    ``arms``, the other arms keep their order."""
    runs = finished_runs(results)
    arms = reference_first(results, baseline)
    rows = []
    for name, meta in (results.get("eval_subsets") or {}).items():
        stats = {
            arm: {s: _subset_stat(runs[arm], name, s, meta["chars_per_token"]) for s in SUBSET_STATS} for arm in arms
        }
        delta = {arm: {s: paired_delta(stats[arm][s], stats[arms[0]][s]) for s in SUBSET_STATS} for arm in arms[1:]}
        tokens = next((final_tokens_of(run, name) for arm in arms for run in runs[arm]), None)
        before = stat_at_start(runs, f"{subset_prefix(name)}_loss", 1 / math.log(2) / meta["chars_per_token"])
        rows.append(SubsetRow(name=name, tokens=tokens, arms=stats, delta=delta, before=before))
    return rows


def language_json(results: Mapping[str, Any], row: SubsetRow) -> dict[str, Any]:
    """A language's entry of ``summary.json``: its statistics (bits per character, NLL, accuracy, MRR) per arm
    with the deltas, the characters per token, and its frequency groups with their step-0 values."""
    alone = summarize(results, row.name)
    return {
        **row.to_json(),
        "chars_per_token": results["eval_subsets"][row.name]["chars_per_token"],
        "groups": [group_json(group) for group in alone.groups],
        "groups_before": {group: stat.to_json() for group, stat in alone.before.items()},
    }


def summary_record(results: Mapping[str, Any], summary: Summary | None = None) -> dict[str, Any]:
    """The content of ``summary.json`` (less the verdict, which report.py words): every number report.md shows.

    ``summary``: ``summarize(results)`` when the caller has it already."""
    return {
        **(summary or summarize(results)).to_json(),
        "arm_settings": [dict(arm) for arm in results.get("arms", [])],
        "languages": [language_json(results, row) for row in subset_rows(results)],
    }


def final_tokens_of(run: Mapping[str, Any], subset: str) -> int | None:
    value = finite_or_none((run.get("final") or {}).get(metric_key(ALL_GROUP, "tokens", subset_prefix(subset))))
    return None if value is None else int(value)
