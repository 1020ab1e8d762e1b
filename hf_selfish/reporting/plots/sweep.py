"""The margin-sweep figure: headline-group metrics against the selfish margin."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...metric_names import HEADLINE_STATS, STAT_TITLES, finite_or_none, group_label
from ...ops.margin import margin_label
from ._common import PathLike, legend_once, new_figure, save


def plot_margin_sweep(
    rows: Sequence[Mapping[str, Any]],
    path: PathLike,
    *,
    stats: Sequence[str] = HEADLINE_STATS,
    groups: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Group metrics against the margin: one panel per stat, one line per group.

    ``rows``: dicts ``{"margin": float | "auto" | None, "margin_value": float, "group": name, <stat>: value}``,
    one per (margin, group, seed); seeds are averaged (bars: min-max). ``margin=None`` rows (plain CE)
    are drawn as a dashed horizontal reference line per group. The x axis is log-2 when all margins are > 0.
    """
    if not rows:
        raise ValueError("plot_margin_sweep needs at least one row")
    groups = list(groups) if groups is not None else list(dict.fromkeys(str(r["group"]) for r in rows if "group" in r))
    stats = [s for s in stats if any(finite_or_none(r.get(s)) is not None for r in rows)]
    if not stats:
        raise ValueError("no row holds any of the requested statistics")
    points: dict[tuple[str, float], list[Mapping[str, Any]]] = {}
    baseline: dict[str, list[Mapping[str, Any]]] = {}
    labels: dict[float, str] = {}
    for row in rows:
        if "group" not in row:
            raise ValueError(f"margin-sweep row {dict(row)!r} has no 'group'")
        if row.get("margin") is None:
            baseline.setdefault(str(row["group"]), []).append(row)
            continue
        value = finite_or_none(row.get("margin_value", row.get("margin")))
        if value is None:
            raise ValueError(
                f"margin-sweep row {dict(row)!r} needs a numeric 'margin_value' (the margin actually used)"
            )
        points.setdefault((str(row["group"]), value), []).append(row)
        labels[value] = margin_label(row.get("margin"), value).replace(" = ", "\n")
    margins = sorted(labels)
    fig = new_figure(4.0 * len(stats) + 0.6, 3.8)
    axes = fig.subplots(1, len(stats), squeeze=False).ravel()
    for ax, stat in zip(axes, stats):
        for g_index, group in enumerate(groups):
            color = f"C{g_index % 10}"
            xs, means, lows, highs = [], [], [], []
            for m in margins:
                values = [v for v in (finite_or_none(r.get(stat)) for r in points.get((group, m), [])) if v is not None]
                if values:
                    xs.append(m)
                    means.append(float(np.mean(values)))
                    lows.append(float(np.mean(values) - min(values)))
                    highs.append(float(max(values) - np.mean(values)))
            if xs:
                ax.errorbar(
                    xs, means, yerr=[lows, highs], color=color, marker="o", ms=4, capsize=3, label=group_label(group)
                )
            base = [v for v in (finite_or_none(r.get(stat)) for r in baseline.get(group, [])) if v is not None]
            if base:
                ax.axhline(float(np.mean(base)), color=color, ls="--", lw=0.9, label=f"{group_label(group)}: plain CE")
        if margins and margins[0] > 0:
            ax.set_xscale("log", base=2)
        ax.set_xticks(margins)
        ax.set_xticklabels([labels[m] for m in margins], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel("margin m")
        ax.set_title(STAT_TITLES.get(stat, stat), fontsize=9)
        ax.grid(alpha=0.3)
    legend_once(fig, list(axes))
    fig.suptitle(title or "Group metrics against the selfish margin (dashed: plain cross-entropy)", fontsize=11)
    return save(fig, path)
