"""report.md of a comparison: markdown tables, the verdict, the margin sweep, the plots; and summary.json.

It reads only the run directory (through `hf_selfish.lab.results`), so a report can be rebuilt at any
time::

    from hf_selfish.reporting.report import write_report
    write_report("runs/tinyshakespeare_cpu")        # -> report.md and summary.json in that folder
    write_report("runs/tinyshakespeare_cpu", baseline="selfish")  # -> report_vs_selfish.md: every Δ vs selfish

The numbers come from `hf_selfish.reporting.summary` and `.subsets`; summary.json holds every number of
report.md's tables (its layout: docs/guide/summary_json.md). No table is wider than `tables.MAX_TABLE_COLUMNS`.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..files import atomic_write_text
from ..lab.results import (
    PLOTS_DIR,
    REPORT_FILE,
    SUMMARY_FILE,
    arm_names,
    finished_runs,
    incomplete_reason,
    load_results,
)
from ..metric_names import LOWER_IS_BETTER, MAIN_STAT, MEAN_STATS, STAT_TITLES, group_label
from ..model_card import ABSENT, MISSING, fmt
from ..ops.margin import margin_label
from .contrasts import contrast_groups, contrast_table, format_delta, format_stat, language_contrast_table
from .figures import figure_caption, order_figures
from .recipe_section import recipe_summary
from .subsets import SubsetRow, subset_rows, summary_record
from .summary import ArmStats, GroupRow, Stat, Summary, headline_groups, is_sweep, reference_arm, summarize, sweep_rows
from .tables import MAX_TABLE_COLUMNS, fitted_table

logger = logging.getLogger(__name__)

__all__ = ["group_table", "language_tables", "reference_report_file", "render_report", "verdict", "write_report"]

SWEEP_TABLE_STATS = ("nll", "accuracy", "mrr")  # one margin-sweep table each, a column per headline group
SWEEP_STAT_TITLES = {"nll": "NLL", "accuracy": "acc", "mrr": "MRR"}

# ----------------------------------------------------------------------------------------------
# Formatting
# ----------------------------------------------------------------------------------------------


def _cell(arm: ArmStats, stat: str) -> str:
    return ABSENT if arm.absent else format_stat(arm.stats.get(stat))


def _delta_cell(row_arms: Mapping[str, ArmStats], baseline: str, arm: str, stat: str) -> str:
    if row_arms[arm].absent and row_arms[baseline].absent:
        return ABSENT
    return format_delta(row_arms[arm].delta.get(stat))


def _tokens_cell(row: GroupRow) -> str:
    if row.tokens is None:
        return MISSING
    text = f"{row.tokens:,}" + (f" ({row.types})" if row.types is not None else "")
    return text + (" *" if row.counts_differ else "")


def arms_shown(summary: Summary, lead: int = 3) -> list[str]:
    """The arms whose own values a table shows beside the Δ columns: every arm while ``lead`` label columns,
    every arm and every Δ fit in `MAX_TABLE_COLUMNS`; else the baseline alone (its value, then each arm's Δ:
    the others' own values are in summary.json). ``lead`` is fixed per report, so its tables share one layout."""
    if lead + len(summary.arms) + len(summary.others) <= MAX_TABLE_COLUMNS:
        return list(summary.arms)
    return [summary.baseline]


def group_table(summary: Summary, stat: str = MAIN_STAT, *, with_tokens: bool = True) -> str:
    """``bucket | eval tokens (types) | <arm1> | <arm2> | ... | Δ <arm>-<arm1>`` for one statistic (with many
    arms: ``bucket | eval tokens (types) | <arm1> | Δ <arm>-<arm1> ...``)."""
    with_before = stat == MAIN_STAT and any(value.n for value in summary.before.values())
    lead = ["bucket"] + (["eval tokens (types)"] if with_tokens else []) + (["before training"] if with_before else [])
    shown = arms_shown(summary)
    header = lead + shown + [f"Δ {arm}-{summary.baseline}" for arm in summary.others]
    rows = []
    for row in summary.groups:
        cells = [row.label] + ([_tokens_cell(row)] if with_tokens else [])
        cells += [ABSENT if row.absent else format_stat(summary.before.get(row.group))] if with_before else []
        cells += [_cell(row.arms[arm], stat) for arm in shown]
        cells += [_delta_cell(row.arms, summary.baseline, arm, stat) for arm in summary.others]
        rows.append(cells)
    return fitted_table(header, rows, keep=len(lead) + 1)


def eval_loss_table(summary: Summary) -> str:
    shown = arms_shown(summary)
    header = ["", *shown] + [f"Δ {arm}-{summary.baseline}" for arm in summary.others]
    cells = ["overall eval loss"] + [format_stat(summary.eval_loss[a].stats.get("eval_loss")) for a in shown]
    cells += [format_delta(summary.eval_loss[a].delta.get("eval_loss")) for a in summary.others]
    return fitted_table(header, [cells], keep=2)


# ----------------------------------------------------------------------------------------------
# Verdict
# ----------------------------------------------------------------------------------------------


def _direction(delta: float, lower_is_better: bool) -> tuple[str, str]:
    """('lower'|'higher'|'equal to', 'better'|'worse'|'same'); a difference that rounds to 0 is a tie."""
    if round(delta, 4) == 0:
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
    ci = delta.ci
    if ci is not None:
        text += f", 95% CI [{ci.low:+.4f}, {ci.high:+.4f}]" + ("" if ci.significant else ", not significant")
    return text + ")", verdict


def verdict(summary: Summary, stat: str = MAIN_STAT, *, paper_pattern: bool = True) -> str:
    """One paragraph, computed from the numbers: per group and arm, which way ``stat`` moved vs baseline.

    ``paper_pattern``: say whether the selfish-loss paper's frequent-vs-rare pattern shows; only meaningful
    against plain cross-entropy (the first arm), not in a report read against another arm."""
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
        pattern = _frequency_pattern(summary, verdicts) if paper_pattern else None
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
    """Whether the paper's pattern shows: worse on the most frequent rank bucket, better on the rarer half."""
    ranked = [row.group for row in summary.groups if row.kind == "rank" and row.group in verdicts]
    if len(ranked) < 3:
        return None
    head, rare = ranked[0], ranked[len(ranked) // 2 :]
    head_worse = verdicts[head] == "worse"
    rare_better = sum(verdicts[g] == "better" for g in rare)
    rare_ok = rare_better * 2 > len(rare)
    status = "holds" if head_worse and rare_ok else ("holds partly" if head_worse or rare_ok else "does not hold")
    return (
        f"The pattern the selfish-loss paper predicts (worse on the most frequent bucket, better on rare ones) "
        f"{status}: "
        f"{group_label(head)} is {verdicts[head]}, and {rare_better} of the {len(rare)} rarer buckets "
        f"({group_label(rare[0])} to {group_label(rare[-1]).removeprefix('ranks ')}) are better."
    )


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def _plots_section(plots: Sequence[str | os.PathLike]) -> str:
    lines = ["## Plots", ""]
    for path in order_figures(plots):
        caption = figure_caption(path)
        lines += [f"**{caption}**", "", f"![{caption}]({Path(path).as_posix()})", ""]
    return "\n".join(lines).rstrip()


def sweep_table(results: Mapping[str, Any]) -> str:
    """Markdown: per statistic (NLL, accuracy, MRR) a table of one row per arm (margin), the sweep groups' final
    values (mean over seeds) as columns; the NLL table also has the overall eval loss."""
    rows = sweep_rows(results)
    groups = headline_groups(results)
    tables = []
    for stat in SWEEP_TABLE_STATS:
        with_loss = stat == SWEEP_TABLE_STATS[0]
        header = ["arm", "margin"] + (["eval loss"] if with_loss else [])
        header += [f"{group_label(g)} {SWEEP_STAT_TITLES[stat]}" for g in groups]
        lines = []
        for arm, runs in finished_runs(results).items():
            arm_rows = [r for r in rows if r["arm"] == arm]
            margin = arm_rows[0]["margin_value"] if arm_rows else None
            setting = arm_rows[0]["margin"] if arm_rows else None
            cells = [arm, margin_label(setting, margin)]
            cells += [fmt(statistics.mean(r["final"]["eval_loss"] for r in runs))] if with_loss else []
            for group in groups:
                values = [r[stat] for r in arm_rows if r["group"] == group and stat in r]
                cells.append(fmt(statistics.mean(values)) if values else "absent")
            lines.append(cells)
        tables.append(fitted_table(header, lines, ["l", "l"] + ["r"] * (len(header) - 2), keep=2))
    return "\n\n".join(tables)


def render_report(
    results: Mapping[str, Any], plots: Sequence[str | os.PathLike] = (), *, baseline: str | None = None
) -> str:
    """The comparison as markdown. ``plots``: PNG paths relative to the report (e.g. ``plots/eval_loss.png``).

    ``baseline``: the arm every Δ is taken against (default: the first arm); its column comes first.

    Raises:
        ValueError: ``baseline`` names no arm of the comparison.
    """
    summary = summarize(results, baseline=baseline)
    other_stats = [s for s in MEAN_STATS if s != MAIN_STAT]
    incomplete = incomplete_reason(results)
    parts = [f"# hf_selfish comparison: {summary.name}", ""]
    first = arm_names(results)[0]
    rebased = summary.baseline != first  # read against another arm: say so on top, and judge no paper pattern
    if rebased:
        parts += [reference_note(summary.baseline, first), ""]
    if incomplete:
        parts += [f"> **Incomplete comparison**: {incomplete}. {NO_VERDICT}", ""]
    parts += [
        "## Recipe",
        "",
        recipe_summary(results, summary),
        "",
        f"## Eval {STAT_TITLES[MAIN_STAT]} per frequency group",
        "",
        f"Mean of each token's mean eval NLL over the tokens of the group present in the eval data, at the end of "
        f"training; mean ± std over seeds; Δ against `{summary.baseline}` (negative: lower NLL than the baseline), "
        f"{DELTA_NOTE} Eval loss is plain cross-entropy over the full vocabulary for every arm.",
        "",
        group_table(summary, MAIN_STAT),
    ]
    if any(row.counts_differ for row in summary.groups):
        parts += ["", "\\* the arms evaluated different token counts in this group; the first arm's count is shown."]
    parts += ["", "## Overall eval loss", "", eval_loss_table(summary)]
    if len(summary.arms) >= 3:
        groups = contrast_groups(results)
        parts += ["", "## Every arm against the baseline", "", CONTRAST_NOTE, "", contrast_table(summary, groups)]
    languages = subset_rows(results, baseline=summary.baseline)
    if languages:
        parts += ["", "## Per language", "", LANGUAGE_NOTE, "", language_tables(languages, summary)]
        for language in languages:  # the same frequency groups (train-split ranks, `unseen`) on each language alone
            title = f"### {language.name}: eval {STAT_TITLES[MAIN_STAT]} per frequency group"
            parts += [
                "",
                title,
                "",
                group_table(summarize(results, language.name, baseline=summary.baseline), MAIN_STAT),
            ]
    words = verdict(summary, paper_pattern=not rebased)
    parts += ["", "## Verdict", "", f"No verdict: {incomplete}." if incomplete else words]
    if is_sweep(results):
        parts += ["", "## Margin sweep", "", "Final metrics per margin (mean over seeds).", "", sweep_table(results)]
    parts += ["", "## Other metrics", ""]
    for stat in other_stats:
        parts += [f"### {STAT_TITLES[stat]}", "", group_table(summary, stat, with_tokens=False), ""]
    if plots:
        parts += [_plots_section(plots), ""]
    return "\n".join(parts).rstrip() + "\n"


def reference_note(reference: str, first: str) -> str:
    """The line atop a report read against another arm than the first: what "the baseline" means there."""
    return (
        f'> **Read against `{reference}`**: every Δ below is an arm minus `{reference}` ("the baseline" in this '
        f"report), paired by seed. The plots and report.md compare against the first arm, `{first}`."
    )


NO_VERDICT = "No verdict until every arm has finished the same seeds; re-run `hf-selfish compare` to finish them."
CONTRAST_NOTE = (
    "Per-token-mean NLL (and the overall eval loss) of each arm minus the baseline's, paired by seed: mean "
    "[95% confidence interval, t over seeds], * when the interval excludes 0. Negative is better."
)
DELTA_NOTE = (
    "paired by seed: the mean difference [its 95% confidence interval, t over seeds], * when the interval "
    "excludes 0 (significant); every Δ column of this report reads the same way."
)
LANGUAGE_NOTE = (
    "Each language's held-out verses evaluated alone, one table per statistic: bits per character (the eval loss "
    "in bits, divided by the characters per token of that language's text: the one number comparable across "
    "tokenizers), and over all its tokens the per-token-mean NLL, top-1 accuracy and MRR. Columns: the baseline's "
    "value (mean ± std over seeds; the value alone from one seed), then each arm's Δ against it, paired by seed "
    "(mean [95% confidence interval] as in every Δ column). Before training: bits per character at the step-0 evaluation (the same "
    "starting model for every arm of a seed), when the runs evaluated before training (learning vs forgetting of "
    "a pretrained model). Every number is also in summary.json."
)
LANGUAGE_STAT_TITLES = {
    "bits_per_char": "Bits per character",
    "nll": "Per-token-mean NLL",
    "accuracy": "Top-1 accuracy",
    "mrr": "MRR",
}


def language_tables(rows: Sequence[SubsetRow], summary: Summary) -> str:
    """One table per statistic (bits per character, NLL, accuracy, MRR): languages as rows, the baseline's value
    then each arm's Δ with its 95% interval as columns; the first also has the eval tokens and, when the runs
    evaluated before training, the bits per character of the starting model."""
    with_before = any(row.before.n for row in rows)  # a step-0 evaluation: the model before training
    parts = []
    for index, (stat, title) in enumerate(LANGUAGE_STAT_TITLES.items()):
        first = index == 0
        table = language_contrast_table(rows, summary.arms, stat, with_tokens=first, with_before=first and with_before)
        parts += [f"**{title}**", "", table, ""]
    return "\n".join(parts).rstrip()


def existing_plots(run_dir: str | os.PathLike) -> list[str]:
    """``plots/*.png`` of a run dir, as paths relative to it."""
    folder = Path(run_dir) / PLOTS_DIR
    return [f"{PLOTS_DIR}/{p.name}" for p in sorted(folder.glob("*.png"))] if folder.is_dir() else []


def reference_report_file(arm: str) -> str:
    """``report_vs_<arm>.md``: the report read against ``arm``. The name is checked as recipes check arm names
    (one folder-name-like token), so the file stays inside the run directory."""
    from ..lab.recipe import check_arm_name  # imported here: recipe.py loads transformers, which a report needs not

    return f"report_vs_{check_arm_name(arm)}.md"


def _write_reference_report(run_dir: Path, results: Mapping[str, Any], reference: str) -> Path:
    """``report_vs_<reference>.md`` alone: report.md and summary.json (read against the first arm) stay."""
    report = run_dir / reference_report_file(reference)
    atomic_write_text(report, render_report(results, baseline=reference))
    logger.info("report against %s written to %s", reference, report)
    return report


def write_report(run_dir: str | os.PathLike, *, baseline: str | None = None) -> Path:
    """Write ``report.md`` and ``summary.json`` into ``run_dir`` (atomically); returns the report path.

    ``baseline``: an arm other than the first writes ``report_vs_<arm>.md`` instead (every Δ against that arm,
    no plots: they compare against the first arm), leaving report.md and summary.json as they are.

    Raises:
        ValueError: ``baseline`` names no arm of the comparison.
    """
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    reference = reference_arm(results, baseline)
    if reference != arm_names(results)[0]:
        return _write_reference_report(run_dir, results, reference)
    report = run_dir / REPORT_FILE
    atomic_write_text(report, render_report(results, existing_plots(run_dir)))
    summary = summarize(results)
    incomplete = incomplete_reason(results)
    record = {
        **summary_record(results, summary),
        "verdict": None if incomplete else verdict(summary),
        "incomplete": incomplete,
    }
    atomic_write_text(run_dir / SUMMARY_FILE, json.dumps(record, indent=2, allow_nan=False) + "\n")
    if incomplete:
        logger.warning("%s is incomplete: %s. %s", run_dir, incomplete, NO_VERDICT)
    logger.info("report written to %s", report)
    return report
