"""Compact tables for many arms: every arm's paired difference to the baseline, with its 95% interval.

`contrast_table`: rows are arms, columns the overall eval loss and the groups of the Pareto figure (the most
frequent rank bucket, the rare ones, the small language). `language_contrast_table`: rows are languages, columns
the baseline's value then each arm's Δ, for one statistic. A Δ reads ``Δ [low, high] *`` in every Δ column of
report.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..metric_names import MAIN_STAT, group_label
from ..model_card import MISSING, fmt
from .pareto import pareto_groups
from .subsets import SubsetRow
from .summary import Stat, Summary
from .tables import fitted_table

__all__ = ["contrast_groups", "contrast_table", "format_delta", "format_stat", "language_contrast_table"]


def format_stat(stat: Stat | None, *, digits: int = 4, signed: bool = False) -> str:
    """``1.2345 ± 0.0123`` (std only with ≥2 seeds); ``n/a`` when no run has the value."""
    if stat is None or not stat.n:
        return MISSING
    text = fmt(stat.mean, digits, signed)
    if stat.std is not None:
        text += f" ± {fmt(stat.std, digits)}"
    return text


def format_delta(stat: Stat | None, *, digits: int = 4) -> str:
    """A paired difference: ``+0.2000 [+0.1500, +0.2500] *`` (mean, 95% t interval over seeds, ``*`` when the
    interval excludes 0); ``+0.2000`` alone below two paired seeds; ``n/a`` when no run has the value."""
    if stat is None or not stat.n:
        return MISSING
    text = fmt(stat.mean, digits, True)
    ci = stat.ci
    if ci is not None:
        text += f" [{fmt(ci.low, digits, True)}, {fmt(ci.high, digits, True)}]" + (" *" if ci.significant else "")
    return text


def contrast_groups(results: Mapping[str, Any]) -> list[str]:
    """The groups of the compact table: the Pareto figure's x group, then its y groups."""
    x_group, y_groups = pareto_groups(results)
    return ([x_group] if x_group else []) + y_groups


def contrast_table(summary: Summary, groups: Sequence[str], stat: str = MAIN_STAT) -> str:
    """``arm | Δ eval loss | Δ <stat> <group> ...`` for every arm but the baseline."""
    fmt_delta = format_delta
    rows = {row.group: row for row in summary.groups}
    header = ["arm", "Δ eval loss"] + [f"Δ {group_label(g)}" for g in groups if g in rows]
    lines = []
    for arm in summary.others:
        cells = [arm, fmt_delta(summary.eval_loss[arm].delta.get("eval_loss"))]
        cells += [fmt_delta(rows[g].arms[arm].delta.get(stat)) for g in groups if g in rows]
        lines.append(cells)
    return fitted_table(header, lines, ["l"] + ["r"] * (len(header) - 1))


def language_contrast_table(
    rows: Sequence[SubsetRow],
    arms: Sequence[str],
    stat: str = "bits_per_char",
    *,
    with_tokens: bool = False,
    with_before: bool = False,
) -> str:
    """``language | [eval tokens] | [before training] | <baseline> | Δ <arm> ...`` for one statistic: the
    baseline's value (mean ± sd over seeds; the value alone from one seed), then every arm's paired difference
    with its 95% interval; one row per language. ``with_before``: the rows' step-0 value (bits per character)."""
    spread = any(row.arms[arms[0]][stat].std is not None for row in rows)
    lead = ["language"] + (["eval tokens"] if with_tokens else []) + (["before training"] if with_before else [])
    header = lead + [f"{arms[0]} (mean ± sd)" if spread else arms[0]] + [f"Δ {arm}" for arm in arms[1:]]
    lines = []
    for row in rows:
        cells = [row.name] + ([MISSING if row.tokens is None else f"{row.tokens:,}"] if with_tokens else [])
        cells += [format_stat(row.before)] if with_before else []
        cells += [format_stat(row.arms[arms[0]][stat])]
        lines.append(cells + [format_delta(row.delta[arm][stat]) for arm in arms[1:]])
    return fitted_table(header, lines, ["l"] + ["r"] * (len(header) - 1), keep=len(lead) + 1)
