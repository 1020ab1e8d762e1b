"""Statistics over seeds, read from results.json: per-group means, paired deltas, series along training.

For each group and arm: the mean over seeds of the final eval statistic, with the sample standard
deviation (``ddof=1``) when there are at least two seeds. Deltas are taken against the first arm (the
baseline), or the arm ``summarize(..., baseline=...)`` names; when both arms ran the same seeds, the delta's
spread is the standard deviation of the per-seed paired differences (same seed = same init and data order),
and its 95% confidence interval the t interval over seeds (`stats.paired_interval`; significant when it
excludes 0). A group with no eval tokens is "absent": it has no statistics, and it is never shown as NaN or 0.

Which groups a compact view shows (`headline_groups`) follows from the group metadata saved with the
run: the most frequent rank bucket, the rarest rank bucket that still holds a visible share of the eval
tokens, and every language group; log-spaced buckets work the same as buckets of ten.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..lab.results import arm_names, check_results, finished_runs, group_info, group_names
from ..metric_names import (
    ALL_STATS,
    COUNT_STATS,
    EVAL_PREFIX,
    HEADLINE_STATS,
    MAIN_STAT,
    finite_or_none,
    group_label,
    metric_key,
    subset_prefix,
)
from .stats import Interval, paired_interval

logger = logging.getLogger(__name__)

__all__ = [
    "ArmStats",
    "GroupRow",
    "Stat",
    "Summary",
    "final_tokens",
    "group_json",
    "headline_groups",
    "is_sweep",
    "paired_delta",
    "reference_arm",
    "reference_first",
    "stat_at_start",
    "stat_over_runs",
    "summarize",
    "sweep_rows",
]

# The rare headline bucket is the rarest rank bucket holding at least this share of the eval tokens.
RARE_GROUP_MIN_SHARE = 0.01


@dataclass(frozen=True)
class Stat:
    """One statistic over seeds: the per-seed values, their mean and sample std (None below 2 seeds)."""

    values: tuple[float, ...]
    seeds: tuple[Any, ...] = ()

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) >= 2 else None

    @property
    def ci(self) -> Interval | None:
        """The 95% t interval of the mean over seeds (for a delta: of the paired differences); None below 2."""
        return paired_interval(self.values)

    def to_json(self) -> dict[str, Any]:
        ci = self.ci
        return {
            "mean": self.mean,
            "std": self.std,
            "n": self.n,
            "values": list(self.values),
            "seeds": list(self.seeds),
            "ci95": None if ci is None else ci.to_json(),
        }


@dataclass
class ArmStats:
    """One arm in one group: its statistics over seeds and its deltas against the baseline arm."""

    arm: str
    absent: bool  # no eval tokens in any of the arm's runs
    stats: dict[str, Stat] = field(default_factory=dict)  # stat -> over seeds (MEAN_STATS and COUNT_STATS)
    delta: dict[str, Stat] = field(default_factory=dict)  # stat -> arm - baseline (empty for the baseline)


@dataclass
class GroupRow:
    """One group (a frequency bucket or a named id set) of the summary table."""

    group: str
    tokens: int | None  # eval occurrences (the baseline's, or the first arm with runs)
    types: int | None  # distinct eval tokens present
    arms: dict[str, ArmStats]

    kind: str = "other"  # rank, unseen, language, other (metric_names.describe_group)

    @property
    def label(self) -> str:
        return group_label(self.group)

    @property
    def absent(self) -> bool:
        return self.tokens == 0

    @property
    def counts_differ(self) -> bool:
        """True when the arms evaluated different numbers of tokens in this group."""
        seen = {a.stats["tokens"].mean for a in self.arms.values() if "tokens" in a.stats and a.stats["tokens"].n}
        return len(seen) > 1


@dataclass
class Summary:
    """Everything the report shows, as numbers."""

    name: str
    arms: list[str]
    baseline: str
    groups: list[GroupRow]
    eval_loss: dict[str, ArmStats]  # arm -> overall eval loss (stat "eval_loss") and its delta
    runs: list[dict[str, Any]]  # arm, seed, status, train_seconds, eval_loss of every run
    before: dict[str, Stat] = field(default_factory=dict)  # group -> MAIN_STAT at step 0 (every run), if evaluated

    @property
    def others(self) -> list[str]:
        return [a for a in self.arms if a != self.baseline]

    def to_json(self) -> dict[str, Any]:
        """Machine-readable form (``summary.json``); absent groups have ``"absent": true`` and no stats."""

        return {
            "format": 1,
            "name": self.name,
            "baseline": self.baseline,
            "arms": self.arms,
            "main_stat": MAIN_STAT,
            "groups": [group_json(row) for row in self.groups],
            "eval_loss": {name: _arm_json(arm) for name, arm in self.eval_loss.items()},
            "runs": self.runs,
        }


def _arm_json(arm: ArmStats) -> dict[str, Any]:
    return {
        "absent": arm.absent,
        "stats": {k: v.to_json() for k, v in arm.stats.items()},
        "delta": {k: v.to_json() for k, v in arm.delta.items()},
    }


def group_json(row: GroupRow) -> dict[str, Any]:
    return {
        "group": row.group,
        "label": row.label,
        "kind": row.kind,
        "tokens": row.tokens,
        "types": row.types,
        "absent": row.absent,
        "arms": {name: _arm_json(arm) for name, arm in row.arms.items()},
    }


def stat_over_runs(runs: Sequence[Mapping[str, Any]], key: str) -> Stat:
    """The finite values of ``final[key]`` over runs (runs lacking it are skipped), with their seeds."""
    pairs = [(run.get("seed"), finite_or_none((run.get("final") or {}).get(key))) for run in runs]
    kept = [(seed, value) for seed, value in pairs if value is not None]
    return Stat(values=tuple(v for _, v in kept), seeds=tuple(s for s, _ in kept))


def paired_delta(arm: Stat, base: Stat) -> Stat:
    """arm - baseline. Paired by seed when both ran the same seeds, else the difference of the means."""
    if not arm.n or not base.n:
        return Stat(values=())
    if arm.seeds and tuple(arm.seeds) == tuple(base.seeds) and None not in arm.seeds:
        return Stat(values=tuple(a - b for a, b in zip(arm.values, base.values)), seeds=arm.seeds)
    return Stat(values=(arm.mean - base.mean,))


def _arm_stats(arm: str, runs: Sequence[Mapping[str, Any]], group: str, prefix: str) -> ArmStats:
    stats = {stat: stat_over_runs(runs, metric_key(group, stat, prefix)) for stat in ALL_STATS}
    tokens = stats["tokens"]
    absent = tokens.n > 0 and all(v == 0 for v in tokens.values)
    if absent:  # a group without eval tokens has no statistics (never NaN, never 0)
        stats = {k: v for k, v in stats.items() if k in COUNT_STATS}
    return ArmStats(arm=arm, absent=absent, stats={k: v for k, v in stats.items() if v.n})


def _add_deltas(arms: dict[str, ArmStats], baseline: str) -> None:
    base = arms[baseline]
    for name, arm in arms.items():
        if name == baseline or arm.absent or base.absent:
            continue
        for stat, value in arm.stats.items():
            if stat in base.stats and stat not in COUNT_STATS:
                arm.delta[stat] = paired_delta(value, base.stats[stat])


def _count(row_arms: Mapping[str, ArmStats], stat: str) -> int | None:
    for arm in row_arms.values():
        value = arm.stats.get(stat)
        if value is not None and value.n:
            return int(round(value.values[0]))
    return None


def reference_arm(results: Mapping[str, Any], baseline: str | None = None) -> str:
    """The arm every Δ is taken against: ``baseline`` when given (an arm's name), else the first arm.

    Raises:
        ValueError: ``baseline`` names no arm of the comparison.
    """
    arms = arm_names(results)
    if baseline is None:
        return arms[0]
    if baseline not in arms:
        raise ValueError(f"baseline arm {baseline!r} is not an arm of this comparison; pick one of: {', '.join(arms)}")
    return baseline


def reference_first(results: Mapping[str, Any], baseline: str | None = None) -> list[str]:
    """The arms in table order: the reference arm (`reference_arm`) first, the others in their own order."""
    reference = reference_arm(results, baseline)
    return [reference] + [arm for arm in arm_names(results) if arm != reference]


def summarize(results: Mapping[str, Any], subset: str | None = None, *, baseline: str | None = None) -> Summary:
    """Per group and arm: mean ± std over seeds of the final statistics, and deltas vs the reference arm.

    ``subset``: of that eval subset's metrics (a language's ``eval_<code>_*``), with ``before``: each group's
    MAIN_STAT at the step-0 evaluation. ``baseline``: the arm the deltas are taken against (default: the first
    arm); it comes first in ``Summary.arms``, the other arms keep their order.
    """
    check_results(results, results.get("name", "<results>"))
    arms = reference_first(results, baseline)
    baseline = arms[0]
    runs = finished_runs(results)
    prefix = EVAL_PREFIX if subset is None else subset_prefix(subset)
    rows = []
    info = group_info(results)
    for group in group_names(results):
        row_arms = {arm: _arm_stats(arm, runs[arm], group, prefix) for arm in arms}
        _add_deltas(row_arms, baseline)
        row = GroupRow(
            group=group,
            tokens=_count(row_arms, "tokens"),
            types=_count(row_arms, "types"),
            arms=row_arms,
            kind=info[group].get("kind", "other"),
        )
        if row.counts_differ:
            logger.warning("group %s: the arms evaluated different token counts; the table shows the first", group)
        rows.append(row)
    eval_loss = {
        arm: ArmStats(arm=arm, absent=False, stats={"eval_loss": stat_over_runs(runs[arm], f"{prefix}_loss")})
        for arm in arms
    }
    _add_deltas(eval_loss, baseline)
    run_rows = [
        {
            "arm": run.get("arm"),
            "seed": run.get("seed"),
            "status": run.get("status"),
            "train_seconds": finite_or_none(run.get("train_seconds")),
            "eval_loss": finite_or_none((run.get("final") or {}).get("eval_loss")),
            "selfish_margin": finite_or_none(run.get("selfish_margin")),
            "output_dir": run.get("output_dir"),
        }
        for run in results["runs"]
    ]
    return Summary(
        name=str(results.get("name") or "comparison"),
        arms=arms,
        baseline=baseline,
        groups=rows,
        eval_loss=eval_loss,
        runs=run_rows,
        before={}
        if subset is None
        else {row.group: stat_at_start(runs, metric_key(row.group, MAIN_STAT, prefix)) for row in rows},
    )


def stat_at_start(runs: Mapping[str, Sequence[Mapping[str, Any]]], key: str, scale: float = 1.0) -> Stat:
    """``key`` x ``scale`` at the step-0 evaluation, one value per seed: the arms of a seed start from the same
    model (same seed = same init), so their step-0 values are one measurement, not one per arm (five arms of
    one seed are one value, without a spread); the mean over the seed's runs that have one."""
    by_seed: dict[Any, list[float]] = {}
    for run in (run for arm_runs in runs.values() for run in arm_runs):
        first = next((entry for entry in run.get("history") or () if entry.get("step") == 0), {})
        value = finite_or_none(first.get(key))
        if value is not None:
            by_seed.setdefault(run.get("seed"), []).append(value * scale)
    return Stat(values=tuple(statistics.fmean(v) for v in by_seed.values()), seeds=tuple(by_seed))


def final_tokens(results: Mapping[str, Any], group: str) -> int | None:
    for runs in finished_runs(results).values():
        for run in runs:
            value = finite_or_none((run.get("final") or {}).get(metric_key(group, "tokens")))
            if value is not None:
                return int(value)
    return None


def headline_groups(results: Mapping[str, Any]) -> list[str]:
    """The groups a compact view shows: the most frequent rank bucket, a rare one, and the languages.

    The rare bucket is the rarest rank bucket whose eval tokens are at least `RARE_GROUP_MIN_SHARE` of all
    rank-bucket eval tokens (the last buckets can hold a handful of tokens whose NLL is mostly noise).
    """
    info = group_info(results)
    ranks = [name for name, meta in info.items() if meta.get("kind") == "rank"]
    chosen = ranks[:1]
    counts = {g: final_tokens(results, g) or 0 for g in ranks}
    total = sum(counts.values())
    rare = [g for g in ranks[1:] if total and counts[g] >= RARE_GROUP_MIN_SHARE * total]
    if rare:
        chosen.append(rare[-1])
    chosen += [name for name, meta in info.items() if meta.get("kind") in ("language", "language_only")]
    return chosen


# ------------------------------------------------------------------------------------------- sweeps


def is_sweep(results: Mapping[str, Any]) -> bool:
    """Whether a comparison is a margin sweep (its recipe sets ``sweep_margins``)."""
    return bool((results.get("recipe") or {}).get("sweep_margins"))


def sweep_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per finished run and headline group: the margin setting, its value, and the final stats.

    ``margin`` is None for the plain cross-entropy arm.
    """
    settings = {
        arm["name"]: arm.get("selfish_margin_setting", arm.get("selfish_margin")) for arm in results.get("arms", [])
    }
    groups = headline_groups(results)
    rows = []
    for arm, runs in finished_runs(results).items():
        for run in runs:
            for group in groups:
                row = {
                    "arm": arm,
                    "seed": run.get("seed"),
                    "group": group,
                    "eval_loss": run["final"].get("eval_loss"),
                    "margin": settings.get(arm),
                    "margin_value": run.get("selfish_margin"),
                }
                for stat in HEADLINE_STATS:
                    value = finite_or_none(run["final"].get(metric_key(group, stat)))
                    if value is not None:
                        row[stat] = value
                rows.append(row)
    return rows
