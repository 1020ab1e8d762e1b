"""Results tables of a comparison run (markdown + JSON) and the Hugging Face Hub model card.

Everything here reads what training wrote (``results.json``, see ``results_schema.md``; a Trainer
output dir's metrics) and never trains, so a report can be rebuilt at any time::

    from hf_selfish.report import write_report
    write_report("runs/tinyshakespeare_cpu")        # -> report.md and summary.json in that folder

Numbers: for each group and arm, the mean over seeds of the final eval statistic, with the sample
standard deviation (``ddof=1``) when there are at least two seeds. Deltas are taken against the
first arm (the baseline); when both arms ran the same seeds, the delta's spread is the standard
deviation of the per-seed paired differences (same seed = same init and data order). A group with
no eval tokens is "absent": it has no statistics, and it is never shown as NaN or 0.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import statistics
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

__all__ = [
    "ArmStats",
    "GroupRow",
    "Stat",
    "Summary",
    "group_label",
    "load_results",
    "metric_key",
    "render_model_card",
    "render_report",
    "summarize",
    "write_model_card",
    "write_report",
]

RESULTS_FILENAME = "results.json"
REPORT_FILENAME = "report.md"
SUMMARY_FILENAME = "summary.json"
MODEL_CARD_FILENAME = "README.md"
PLOTS_DIRNAME = "plots"
FINISHED = "finished"

# Per-group statistics logged as `eval_{group}_{stat}` (see the shared interfaces).
MEAN_STATS = ("nll", "nll_weighted", "accuracy", "recall_at_5", "mrr")
COUNT_STATS = ("tokens", "types")
ALL_STATS = MEAN_STATS + COUNT_STATS
MAIN_STAT = "nll"
STAT_TITLES = {
    "nll": "per-token-mean NLL",
    "nll_weighted": "occurrence-weighted NLL",
    "accuracy": "top-1 accuracy",
    "recall_at_5": "recall@5",
    "mrr": "MRR",
    "tokens": "eval tokens",
    "types": "eval types",
    "eval_loss": "overall eval loss",
}
LOWER_IS_BETTER = {"nll": True, "nll_weighted": True, "eval_loss": True, "accuracy": False, "recall_at_5": False, "mrr": False}
# Suffixes tried longest first, so `eval_x_nll_weighted` is never read as group `x_nll`, stat `weighted`.
_STATS_BY_LENGTH = sorted(ALL_STATS, key=len, reverse=True)
_RANK_GROUP = re.compile(r"^rank_(\d+)-(\d+)$")
# Known plots, in the order the report shows them; any other PNG in plots/ follows alphabetically.
PLOT_CAPTIONS = {
    "token_distribution": "Train-split token counts by frequency rank",
    "eval_loss": "Overall eval loss along training",
    "eval_nll_by_group": "Per-token-mean eval NLL per group along training",
    "eval_nll_delta_by_group": "Δ per-token-mean eval NLL against the baseline along training (below 0: lower NLL)",
    "eval_nll_weighted_by_group": "Occurrence-weighted eval NLL per group along training",
    "eval_accuracy_by_group": "Top-1 accuracy per group along training",
    "eval_recall_at_5_by_group": "Recall@5 per group along training",
    "eval_mrr_by_group": "MRR per group along training",
    "language_metrics": "Per-language NLL, accuracy, recall@5 and MRR along training",
    "token_nll_final": "Final eval NLL of each token, by frequency rank",
    "training_curves": "Training loss and fraction of logits masked",
    "scenarios_non_target_comparison": "Gradient scenario 2.2 (token as non-target) per arm",
    "margin_sweep": "Rare-group metrics against the margin",
}


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def load_results(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``run_dir/results.json`` (or the given ``results.json`` path) and check its shape.

    Raises ValueError naming the path when the file is missing, not JSON, or lacks the ``arms`` /
    ``runs`` lists every report needs.
    """
    path = Path(run_dir)
    if path.is_dir() or path.suffix != ".json":
        path = path / RESULTS_FILENAME
    if not path.is_file():
        raise ValueError(
            f"no results file at {str(path)!r}: pass the folder `hf-selfish compare` wrote (it holds results.json)"
        )
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"results file {str(path)!r} is not valid JSON ({err}); re-run the comparison") from None
    _check_results(results, str(path))
    return results


def _check_results(results: Any, where: str) -> None:
    if not isinstance(results, dict):
        raise ValueError(f"results {where!r} must be a JSON object, got {type(results).__name__}")
    fmt = results.get("format", 1)
    if fmt != 1:
        raise ValueError(f"results {where!r} has format {fmt!r}; this version of hf_selfish reads format 1")
    for key in ("arms", "runs"):
        if not isinstance(results.get(key), list):
            raise ValueError(f"results {where!r} has no {key!r} list; it was not written by `hf-selfish compare`")
    if not results["arms"]:
        raise ValueError(f"results {where!r} lists no arms")
    for i, arm in enumerate(results["arms"]):
        if not isinstance(arm, dict) or "name" not in arm:
            raise ValueError(f"arm #{i + 1} of results {where!r} must be an object with a 'name', got {arm!r}")


# ----------------------------------------------------------------------------------------------
# Keys and names
# ----------------------------------------------------------------------------------------------


def metric_key(group: str, stat: str) -> str:
    """The logged key of a group statistic: ``metric_key("rank_1-10", "nll") == "eval_rank_1-10_nll"``."""
    return f"eval_{group}_{stat}"


def split_metric_key(key: str) -> tuple[str, str] | None:
    """``"eval_rank_1-10_nll_weighted"`` -> ``("rank_1-10", "nll_weighted")``; None for other keys."""
    if not key.startswith("eval_"):
        return None
    for stat in _STATS_BY_LENGTH:
        suffix = "_" + stat
        if key.endswith(suffix) and len(key) > len("eval_") + len(suffix):
            return key[len("eval_") : -len(suffix)], stat
    return None


def groups_in_metrics(metrics: Mapping[str, Any]) -> list[str]:
    """Group names found in ``eval_{group}_{stat}`` keys, in order of first appearance."""
    names: dict[str, None] = {}
    for key in metrics:
        parsed = split_metric_key(key)
        if parsed is not None:
            names.setdefault(parsed[0], None)
    return list(names)


def group_label(group: str) -> str:
    """A readable name: ``rank_41-50`` -> ``ranks 41-50``; other names unchanged."""
    match = _RANK_GROUP.match(group)
    return f"ranks {match.group(1)}-{match.group(2)}" if match else group


def group_names(results: Mapping[str, Any]) -> list[str]:
    """The groups of a comparison in order: ``results["groups"]`` if given, else those in the metrics."""
    if results.get("groups"):
        return list(results["groups"])
    names: dict[str, None] = {}
    for run in results.get("runs", []):
        for name in groups_in_metrics(run.get("final") or {}):
            names.setdefault(name, None)
    return list(names)


def arm_names(results: Mapping[str, Any]) -> list[str]:
    return [str(arm["name"]) for arm in results["arms"]]


def finished_runs(results: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The finished runs (with final metrics) of each arm, arms in order, runs sorted by seed."""
    by_arm: dict[str, list[dict[str, Any]]] = {name: [] for name in arm_names(results)}
    for run in results["runs"]:
        if run.get("status") == FINISHED and run.get("final") and run.get("arm") in by_arm:
            by_arm[run["arm"]].append(run)
    for runs in by_arm.values():
        runs.sort(key=lambda r: (r.get("seed") is None, r.get("seed")))
    return by_arm


def format_margin(margin: Any) -> str:
    """How an arm's margin reads in a table: ``None`` is the plain cross-entropy baseline."""
    if margin is None:
        return "none (plain CE)"
    if isinstance(margin, str):
        return margin
    return f"{float(margin):g}"


# ----------------------------------------------------------------------------------------------
# Summary (pure numbers)
# ----------------------------------------------------------------------------------------------


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

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": self.n, "values": list(self.values), "seeds": list(self.seeds)}


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

    @property
    def others(self) -> list[str]:
        return [a for a in self.arms if a != self.baseline]

    def to_json(self) -> dict[str, Any]:
        """Machine-readable form (``summary.json``); absent groups have ``"absent": true`` and no stats."""

        def arm_json(arm: ArmStats) -> dict[str, Any]:
            return {
                "absent": arm.absent,
                "stats": {k: v.to_json() for k, v in arm.stats.items()},
                "delta": {k: v.to_json() for k, v in arm.delta.items()},
            }

        return {
            "format": 1,
            "name": self.name,
            "baseline": self.baseline,
            "arms": self.arms,
            "main_stat": MAIN_STAT,
            "groups": [
                {
                    "group": row.group,
                    "label": row.label,
                    "tokens": row.tokens,
                    "types": row.types,
                    "absent": row.absent,
                    "arms": {name: arm_json(arm) for name, arm in row.arms.items()},
                }
                for row in self.groups
            ],
            "eval_loss": {name: arm_json(arm) for name, arm in self.eval_loss.items()},
            "runs": self.runs,
        }


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _stat_over_runs(runs: Sequence[Mapping[str, Any]], key: str) -> Stat:
    """The finite values of ``final[key]`` over runs (runs lacking it are skipped), with their seeds."""
    pairs = [(run.get("seed"), _finite((run.get("final") or {}).get(key))) for run in runs]
    kept = [(seed, value) for seed, value in pairs if value is not None]
    return Stat(values=tuple(v for _, v in kept), seeds=tuple(s for s, _ in kept))


def _delta(arm: Stat, base: Stat) -> Stat:
    """arm - baseline. Paired by seed when both ran the same seeds, else the difference of the means."""
    if not arm.n or not base.n:
        return Stat(values=())
    if arm.seeds and tuple(arm.seeds) == tuple(base.seeds) and None not in arm.seeds:
        return Stat(values=tuple(a - b for a, b in zip(arm.values, base.values)), seeds=arm.seeds)
    return Stat(values=(arm.mean - base.mean,))


def _arm_stats(arm: str, runs: Sequence[Mapping[str, Any]], group: str) -> ArmStats:
    stats = {stat: _stat_over_runs(runs, metric_key(group, stat)) for stat in ALL_STATS}
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
                arm.delta[stat] = _delta(value, base.stats[stat])


def _count(row_arms: Mapping[str, ArmStats], stat: str) -> int | None:
    for arm in row_arms.values():
        value = arm.stats.get(stat)
        if value is not None and value.n:
            return int(round(value.values[0]))
    return None


def summarize(results: Mapping[str, Any]) -> Summary:
    """Per group and arm: mean ± std over seeds of the final statistics, and deltas vs the first arm."""
    _check_results(results, results.get("name", "<results>"))
    arms = arm_names(results)
    baseline = arms[0]
    runs = finished_runs(results)
    rows = []
    for group in group_names(results):
        row_arms = {arm: _arm_stats(arm, runs[arm], group) for arm in arms}
        _add_deltas(row_arms, baseline)
        row = GroupRow(group=group, tokens=_count(row_arms, "tokens"), types=_count(row_arms, "types"), arms=row_arms)
        if row.counts_differ:
            logger.warning("group %s: the arms evaluated different token counts; the table shows the first", group)
        rows.append(row)
    eval_loss = {arm: ArmStats(arm=arm, absent=False, stats={"eval_loss": _stat_over_runs(runs[arm], "eval_loss")}) for arm in arms}
    _add_deltas(eval_loss, baseline)
    run_rows = [
        {
            "arm": run.get("arm"),
            "seed": run.get("seed"),
            "status": run.get("status"),
            "train_seconds": _finite(run.get("train_seconds")),
            "eval_loss": _finite((run.get("final") or {}).get("eval_loss")),
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
    )


# ----------------------------------------------------------------------------------------------
# Formatting
# ----------------------------------------------------------------------------------------------

ABSENT = "absent"
MISSING = "n/a"


def _fmt(value: float, digits: int = 4, signed: bool = False) -> str:
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def format_stat(stat: Stat | None, *, digits: int = 4, signed: bool = False) -> str:
    """``1.2345 ± 0.0123`` (std only with ≥2 seeds); ``n/a`` when no run has the value."""
    if stat is None or not stat.n:
        return MISSING
    text = _fmt(stat.mean, digits, signed)
    if stat.std is not None:
        text += f" ± {_fmt(stat.std, digits)}"
    return text


def _cell(arm: ArmStats, stat: str) -> str:
    return ABSENT if arm.absent else format_stat(arm.stats.get(stat))


def _delta_cell(row_arms: Mapping[str, ArmStats], baseline: str, arm: str, stat: str) -> str:
    if row_arms[arm].absent and row_arms[baseline].absent:
        return ABSENT
    return format_stat(row_arms[arm].delta.get(stat), signed=True)


def _tokens_cell(row: GroupRow) -> str:
    if row.tokens is None:
        return MISSING
    text = f"{row.tokens:,}" + (f" ({row.types})" if row.types is not None else "")
    return text + (" *" if row.counts_differ else "")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]], align: Sequence[str] | None = None) -> str:
    """A GitHub markdown table; ``align`` holds 'l' or 'r' per column (default: first left, rest right)."""
    align = align or ["l"] + ["r"] * (len(header) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def group_table(summary: Summary, stat: str = MAIN_STAT, *, with_tokens: bool = True) -> str:
    """``bucket | eval tokens (types) | <arm1> | <arm2> | ... | Δ <arm>-<arm1>`` for one statistic."""
    header = ["bucket"] + (["eval tokens (types)"] if with_tokens else []) + summary.arms
    header += [f"Δ {arm}-{summary.baseline}" for arm in summary.others]
    rows = []
    for row in summary.groups:
        cells = [row.label] + ([_tokens_cell(row)] if with_tokens else [])
        cells += [_cell(row.arms[arm], stat) for arm in summary.arms]
        cells += [_delta_cell(row.arms, summary.baseline, arm, stat) for arm in summary.others]
        rows.append(cells)
    return markdown_table(header, rows)


def eval_loss_table(summary: Summary) -> str:
    header = ["", *summary.arms] + [f"Δ {arm}-{summary.baseline}" for arm in summary.others]
    cells = ["overall eval loss"] + [format_stat(summary.eval_loss[a].stats.get("eval_loss")) for a in summary.arms]
    cells += [format_stat(summary.eval_loss[a].delta.get("eval_loss"), signed=True) for a in summary.others]
    return markdown_table(header, [cells])


# ----------------------------------------------------------------------------------------------
# Verdict
# ----------------------------------------------------------------------------------------------


def _direction(delta: float, lower_is_better: bool) -> tuple[str, str]:
    """('lower'|'higher'|'equal to', 'better'|'worse'|'same')."""
    if delta == 0:
        return "equal to", "same"
    word = "lower" if delta < 0 else "higher"
    better = (delta < 0) == lower_is_better
    return word, "better" if better else "worse"


def _clause(name: str, arm: str, baseline: str, delta: Stat, stat: str) -> tuple[str, str]:
    """``"ranks 41-50: selfish lower than baseline by 0.0512 (better)"`` and the verdict word."""
    word, verdict = _direction(delta.mean, LOWER_IS_BETTER[stat])
    if verdict == "same":
        return f"{name}: {arm} equal to {baseline}", verdict
    text = f"{name}: {arm} {word} than {baseline} by {abs(delta.mean):.4f} ({verdict}"
    if delta.std is not None and abs(delta.mean) <= delta.std:
        text += f", within the seed-to-seed spread ±{delta.std:.4f}"
    return text + ")", verdict


def verdict(summary: Summary, stat: str = MAIN_STAT) -> str:
    """One paragraph, computed from the numbers: per group and arm, which way ``stat`` moved vs baseline."""
    sentences = []
    absent = [row.label for row in summary.groups if row.absent]
    for arm in summary.others:
        clauses, verdicts = [], {}
        for row in summary.groups:
            delta = row.arms[arm].delta.get(stat)
            if delta is None or not delta.n:
                continue
            text, word = _clause(row.label, arm, summary.baseline, delta, stat)
            clauses.append(text)
            verdicts[row.group] = word
        if not clauses:
            sentences.append(f"{arm}: no group has results for both {arm} and {summary.baseline}.")
            continue
        n_better = sum(v == "better" for v in verdicts.values())
        head = (
            f"{STAT_TITLES[stat][0].upper() + STAT_TITLES[stat][1:]} ({arm} − {summary.baseline}, mean over seeds): "
            f"{arm} is better on {n_better} of {len(verdicts)} groups present."
        )
        sentences.append(head + " " + "; ".join(clauses) + ".")
        pattern = _frequency_pattern(summary, verdicts)
        if pattern:
            sentences.append(pattern)
        overall = summary.eval_loss[arm].delta.get("eval_loss")
        if overall is not None and overall.n:
            text, _ = _clause("Overall eval loss", arm, summary.baseline, overall, "eval_loss")
            sentences.append(text + ".")
    if absent:
        sentences.append(f"Absent from the eval data (no statistics): {', '.join(absent)}.")
    return " ".join(sentences)


def _frequency_pattern(summary: Summary, verdicts: Mapping[str, str]) -> str | None:
    """Whether the seed's pattern shows: worse on the most frequent rank bucket, better on the rarer half."""
    ranked = [row.group for row in summary.groups if _RANK_GROUP.match(row.group) and row.group in verdicts]
    if len(ranked) < 3:
        return None
    head, rare = ranked[0], ranked[len(ranked) // 2 :]
    head_worse = verdicts[head] == "worse"
    rare_better = sum(verdicts[g] == "better" for g in rare)
    rare_ok = rare_better * 2 > len(rare)
    status = "holds" if head_worse and rare_ok else ("holds partly" if head_worse or rare_ok else "does not hold")
    return (
        f"The seed's pattern (worse on the most frequent bucket, better on rare ones) {status}: "
        f"{group_label(head)} is {verdicts[head]}, and {rare_better} of the {len(rare)} rarer buckets "
        f"({group_label(rare[0])} to {group_label(rare[-1]).removeprefix('ranks ')}) are better."
    )


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------

_RECIPE_KEYS = (
    ("dataset_name", "data"),
    ("model_name_or_path", "model"),
    ("model_type", "model type"),
    ("config_overrides", "config"),
    ("block_size", "block size"),
    ("per_device_train_batch_size", "batch size"),
    ("max_steps", "steps"),
    ("learning_rate", "learning rate"),
    ("lr_scheduler_type", "schedule"),
    ("warmup_steps", "warmup steps"),
    ("eval_steps", "eval every"),
    ("low_resource_fraction", "small-language fraction"),
)


def _arm_settings(results: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for arm in results["arms"]:
        extra = ", ".join(f"{k}={v}" for k, v in arm.items() if k not in ("name", "selfish_margin"))
        rows.append([str(arm["name"]), format_margin(arm.get("selfish_margin")), extra or "—"])
    return rows


def recipe_summary(results: Mapping[str, Any], summary: Summary) -> str:
    """Model, data, steps, margin per arm, seeds and train time per run, as markdown."""
    recipe = results.get("recipe") or {}
    lines = []
    settings = [f"{label}: `{recipe[key]}`" for key, label in _RECIPE_KEYS if recipe.get(key) is not None]
    if results.get("vocab_size"):
        settings.append(f"vocabulary: {results['vocab_size']} tokens")
    if settings:
        lines += ["- " + s for s in settings]
    seeds = sorted({r["seed"] for r in summary.runs if r["seed"] is not None})
    if seeds:
        lines.append(f"- seeds: {', '.join(map(str, seeds))}")
    lines += ["", markdown_table(["arm", "selfish margin", "other settings"], _arm_settings(results), ["l", "l", "l"])]
    run_rows = [
        [
            str(r["arm"]),
            str(r["seed"]),
            str(r["status"]),
            MISSING if r["train_seconds"] is None else f"{r['train_seconds']:.1f}",
            MISSING if r["eval_loss"] is None else f"{r['eval_loss']:.4f}",
        ]
        for r in summary.runs
    ]
    lines += ["", markdown_table(["arm", "seed", "status", "train time (s)", "final eval loss"], run_rows, list("lllrr"))]
    unfinished = [r for r in summary.runs if r["status"] != FINISHED]
    if unfinished:
        lines.append(f"\n{len(unfinished)} run(s) did not finish and are left out of every mean below.")
    return "\n".join(lines)


def order_plots(plots: Iterable[str | os.PathLike]) -> list[str]:
    """Known plots in the report's order (per-arm scenario figures after the token plots), others after."""
    paths = sorted(str(p) for p in plots)
    known = list(PLOT_CAPTIONS)

    def key(path: str) -> tuple[int, int, str]:
        stem = Path(path).stem
        if stem in PLOT_CAPTIONS:
            return known.index(stem), 1, path
        if stem.startswith("scenarios_"):  # each arm's figure, then the comparison
            return known.index("scenarios_non_target_comparison"), 0, path
        return len(known), 0, path

    return sorted(paths, key=key)


def plot_caption(path: str | os.PathLike) -> str:
    stem = Path(path).stem
    if stem in PLOT_CAPTIONS:
        return PLOT_CAPTIONS[stem]
    if stem.startswith("scenarios_"):
        return f"Gradient scenarios of arm {stem.removeprefix('scenarios_')}: summed norm per token"
    return stem.replace("_", " ")


def _plots_section(plots: Sequence[str | os.PathLike]) -> str:
    lines = ["## Plots", ""]
    for path in order_plots(plots):
        caption = plot_caption(path)
        lines += [f"**{caption}**", "", f"![{caption}]({Path(path).as_posix()})", ""]
    return "\n".join(lines).rstrip()


def render_report(results: Mapping[str, Any], plots: Sequence[str | os.PathLike] = ()) -> str:
    """The comparison as markdown. ``plots``: PNG paths relative to the report (e.g. ``plots/eval_loss.png``)."""
    summary = summarize(results)
    other_stats = [s for s in MEAN_STATS if s != MAIN_STAT]
    parts = [
        f"# hf_selfish comparison: {summary.name}",
        "",
        "## Recipe",
        "",
        recipe_summary(results, summary),
        "",
        f"## Eval {STAT_TITLES[MAIN_STAT]} per frequency group",
        "",
        f"Mean of each token's mean eval NLL over the tokens of the group present in the eval data, at the end of "
        f"training; mean ± std over seeds; Δ against `{summary.baseline}` (negative: lower NLL than the baseline). "
        "Eval loss is plain cross-entropy over the full vocabulary for every arm.",
        "",
        group_table(summary, MAIN_STAT),
    ]
    if any(row.counts_differ for row in summary.groups):
        parts += ["", "\\* the arms evaluated different token counts in this group; the first arm's count is shown."]
    parts += ["", "## Overall eval loss", "", eval_loss_table(summary), "", "## Verdict", "", verdict(summary)]
    parts += ["", "## Other metrics", ""]
    for stat in other_stats:
        parts += [f"### {STAT_TITLES[stat]}", "", group_table(summary, stat, with_tokens=False), ""]
    if plots:
        parts += [_plots_section(plots), ""]
    return "\n".join(parts).rstrip() + "\n"


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temp file in the same folder, then ``os.replace`` it onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def existing_plots(run_dir: str | os.PathLike) -> list[str]:
    """``plots/*.png`` of a run dir, as paths relative to it."""
    folder = Path(run_dir) / PLOTS_DIRNAME
    return [f"{PLOTS_DIRNAME}/{p.name}" for p in sorted(folder.glob("*.png"))] if folder.is_dir() else []


def write_report(run_dir: str | os.PathLike) -> Path:
    """Write ``report.md`` and ``summary.json`` into ``run_dir`` (atomically); returns the report path."""
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    report = run_dir / REPORT_FILENAME
    _write_atomic(report, render_report(results, existing_plots(run_dir)))
    summary = summarize(results)
    record = {**summary.to_json(), "verdict": verdict(summary)}
    _write_atomic(run_dir / SUMMARY_FILENAME, json.dumps(record, indent=2, allow_nan=False) + "\n")
    logger.info("report written to %s", report)
    return report


# ----------------------------------------------------------------------------------------------
# Model card (Hugging Face Hub README.md)
# ----------------------------------------------------------------------------------------------

SELFISH_FORMULA = (
    "Per position with target $t$ and logits $z$, only the logits at most $m$ below the target's logit "
    "stay in the softmax:\n\n"
    "$$K = \\{\\, j : z_j \\ge z_t - m \\,\\}, \\qquad "
    "\\mathcal{L} = -z_t + \\log \\sum_{j \\in K} e^{z_j}$$\n\n"
    "so every token whose probability is below $P(t)\\,e^{-m}$ is dropped from the normalizer and receives no "
    "gradient as a non-target (the target itself is never dropped)."
)
CE_FORMULA = "$$\\mathcal{L} = -z_t + \\log \\sum_{j=1}^{V} e^{z_j}$$"
_CARD_ARGS = (
    ("model_type", "model type"),
    ("config_overrides", "config"),
    ("block_size", "block size"),
    ("max_steps", "steps"),
    ("num_train_epochs", "epochs"),
    ("learning_rate", "learning rate"),
    ("lr_scheduler_type", "schedule"),
    ("warmup_steps", "warmup steps"),
    ("per_device_train_batch_size", "batch size per device"),
    ("gradient_accumulation_steps", "gradient accumulation"),
    ("weight_decay", "weight decay"),
    ("seed", "seed"),
)


def _front_matter(*, license: str | None, datasets: Sequence[str] | None, base_model: str | None, tags: Sequence[str]) -> str:
    meta: dict[str, Any] = {"library_name": "transformers"}
    if license:
        meta["license"] = license
    if base_model:
        meta["base_model"] = base_model
    if datasets:
        meta["datasets"] = list(datasets)
    meta["tags"] = list(dict.fromkeys(["hf_selfish", "selfish-loss", "causal-lm", *tags]))
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _loss_section(margin: Any, schedule: str | None = None) -> str:
    if margin is None:
        return "Training loss: **plain cross-entropy** (the baseline arm of hf_selfish):\n\n" + CE_FORMULA
    text = f"Training loss: **selfish cross-entropy** with margin m = {format_margin(margin)}"
    if schedule:
        text += f" (schedule: {schedule})"
    return text + ". " + SELFISH_FORMULA


def run_group_table(metrics: Mapping[str, Any], groups: Sequence[str] | None = None) -> str:
    """One run's per-group eval table: ``bucket | eval tokens (types) | NLL | weighted NLL | acc | recall@5 | MRR``."""
    groups = list(groups) if groups is not None else groups_in_metrics(metrics)
    header = ["bucket", "eval tokens (types)"] + [STAT_TITLES[s] for s in MEAN_STATS]
    rows = []
    for group in groups:
        tokens = _finite(metrics.get(metric_key(group, "tokens")))
        types = _finite(metrics.get(metric_key(group, "types")))
        count = MISSING if tokens is None else f"{int(tokens):,}" + (f" ({int(types)})" if types is not None else "")
        if tokens == 0:
            cells = [ABSENT] * len(MEAN_STATS)
        else:
            values = [_finite(metrics.get(metric_key(group, s))) for s in MEAN_STATS]
            cells = [MISSING if v is None else _fmt(v) for v in values]
        rows.append([group_label(group), count, *cells])
    return markdown_table(header, rows)


def _how_to_load(model_id: str) -> str:
    return (
        "## How to use\n\n"
        "```python\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'model = AutoModelForCausalLM.from_pretrained("{model_id}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{model_id}")\n'
        "```\n\n"
        "The selfish loss changes only training; the model is a standard causal LM. To train your own:\n\n"
        "```python\n"
        "from hf_selfish import SelfishTrainer, SelfishTrainingArguments\n\n"
        'args = SelfishTrainingArguments(output_dir="out", selfish_margin=2.0)  # None: plain cross-entropy\n'
        "trainer = SelfishTrainer(model=model, args=args, train_dataset=train, eval_dataset=val)\n"
        "```"
    )


def _card_settings(training_args: Mapping[str, Any]) -> str:
    items = [f"- {label}: `{training_args[key]}`" for key, label in _CARD_ARGS if training_args.get(key) not in (None, "")]
    return "\n".join(items)


def render_model_card(
    *,
    metrics: Mapping[str, Any] | None = None,
    training_args: Mapping[str, Any] | None = None,
    results: Mapping[str, Any] | None = None,
    arm: str | None = None,
    model_id: str | None = None,
    base_model: str | None = None,
    license: str | None = None,
    datasets: Sequence[str] | None = None,
    groups: Sequence[str] | None = None,
    plots: Sequence[str | os.PathLike] = (),
    tags: Sequence[str] = (),
) -> str:
    """The ``README.md`` model card of a model trained with hf_selfish, for the Hugging Face Hub.

    Two inputs:
    - one Trainer run: ``metrics`` (its final ``eval_*`` metrics) and ``training_args``
      (``TrainingArguments.to_dict()``, holding ``selfish_margin``) -> that run's per-group table;
    - a comparison: ``results`` (``results.json``), optionally ``arm`` (the arm whose model this is) ->
      the table of every arm with deltas, the verdict and links to ``plots``.
    Raises ValueError when neither is given.
    """
    if results is None and metrics is None:
        raise ValueError("render_model_card needs the run's `metrics` (and `training_args`) or a comparison's `results`")
    training_args = dict(training_args or {})
    recipe = dict((results or {}).get("recipe") or {})
    if results is not None:
        _check_results(results, results.get("name", "<results>"))
        if arm is not None and arm not in arm_names(results):
            raise ValueError(f"arm {arm!r} is not in the comparison; its arms are {arm_names(results)}")
    settings = {**recipe, **training_args}
    base_model = base_model or settings.get("model_name_or_path")
    dataset = settings.get("dataset_name")
    if datasets is None and dataset and dataset != "tinyshakespeare":
        datasets = [dataset]
    model_id = model_id or settings.get("hub_model_id") or "<repo_id>"

    parts = [_front_matter(license=license, datasets=datasets, base_model=base_model, tags=tags)]
    title = model_id if model_id != "<repo_id>" else "Causal LM trained with hf_selfish"
    parts += [f"# {title}", ""]
    origin = f"fine-tuned from `{base_model}`" if base_model else "trained from scratch"
    data_text = f" on `{dataset}`" if dataset else ""
    parts += [
        f"A causal language model {origin}{data_text} with hf_selfish — the Hugging Face "
        "`Trainer` with selfish-token hard-negative masking, which stops pushing down tokens that are already "
        "far below the target so rare tokens are not drowned by their role as negatives.",
        "",
        "## Training",
        "",
    ]
    if results is not None and arm is None:
        parts += [
            "This card describes a comparison; each arm was trained with its own loss:",
            "",
            markdown_table(["arm", "selfish margin", "other settings"], _arm_settings(results), ["l", "l", "l"]),
            "",
            "Selfish loss: " + SELFISH_FORMULA,
            "",
        ]
    else:
        if results is not None:
            margin = next(a.get("selfish_margin") for a in results["arms"] if a["name"] == arm)
        else:
            margin = training_args.get("selfish_margin")
        parts += [_loss_section(margin, training_args.get("selfish_margin_schedule")), ""]
    card_settings = _card_settings(settings)
    if card_settings:
        parts += [card_settings, ""]
    parts += ["Evaluation always uses plain cross-entropy over the full vocabulary, whatever the training loss.", ""]

    parts += ["## Evaluation per frequency group", ""]
    if results is not None:
        summary = summarize(results)
        parts += [
            f"Per-token-mean eval NLL (mean ± std over seeds; Δ against `{summary.baseline}`):",
            "",
            group_table(summary, MAIN_STAT),
            "",
            eval_loss_table(summary),
            "",
            verdict(summary),
            "",
        ]
    else:
        if metrics.get("eval_loss") is not None:
            parts += [f"Overall eval loss: {_fmt(float(metrics['eval_loss']))}", ""]
        parts += [run_group_table(metrics, groups), ""]
    parts += ["Groups are token-frequency ranks in the training split (rank 1 = most frequent) or named id sets; "
              "'absent' marks a group with no tokens in the eval data.", ""]
    if plots:
        parts += [_plots_section(plots), ""]
    parts += [_how_to_load(model_id), ""]
    return "\n".join(parts).rstrip() + "\n"


def _last_eval_metrics(output_dir: Path) -> dict[str, Any]:
    """The metrics of the last evaluation in ``trainer_state.json`` (entries of that step merged)."""
    state_path = output_dir / "trainer_state.json"
    if not state_path.is_file():
        raise ValueError(f"no metrics given and no trainer_state.json in {str(output_dir)!r}; pass `metrics`")
    try:
        history = json.loads(state_path.read_text()).get("log_history", [])
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(state_path)!r} is not valid JSON ({err})") from None
    evals = [entry for entry in history if "eval_loss" in entry or any(k.startswith("eval_") for k in entry)]
    if not evals:
        raise ValueError(f"{str(state_path)!r} holds no evaluation; run trainer.evaluate() or pass `metrics`")
    step = evals[-1].get("step")
    merged: dict[str, Any] = {}
    for entry in evals:
        if entry.get("step") == step:
            merged.update(entry)
    return merged


def write_model_card(output_dir: str | os.PathLike, **kwargs: Any) -> Path:
    """Write ``output_dir/README.md`` (atomically) from `render_model_card` (same keyword arguments).

    Without ``metrics`` and ``results``, the last evaluation in ``output_dir/trainer_state.json`` is used.
    """
    output_dir = Path(output_dir)
    if kwargs.get("metrics") is None and kwargs.get("results") is None:
        kwargs["metrics"] = _last_eval_metrics(output_dir)
    path = output_dir / MODEL_CARD_FILENAME
    _write_atomic(path, render_model_card(**kwargs))
    return path
