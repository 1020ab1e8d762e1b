"""Bits per character per language (eval subsets): each arm's value and its change against the baseline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..subsets import SubsetRow
from ._common import PathLike, new_figure, save


@dataclass
class Bar:
    """One bar: a language, a series (an arm, or "before training"), its mean over seeds and error extents."""

    language: str
    series: str
    mean: float
    low: float  # distance below the mean (0 when unknown)
    high: float  # distance above the mean


def bits_per_char_bars(rows: Sequence[SubsetRow], arms: Sequence[str]) -> tuple[list[Bar], list[Bar]]:
    """The figure's two panels as bars: (absolute: before training when evaluated, then every arm, error = sd;
    change: every arm but the baseline minus the baseline, paired by seed, error = its 95% t interval)."""
    absolute, change = [], []
    for row in rows:
        if row.before.values:
            absolute.append(_bar(row.name, "before training", row.before.mean, row.before.std))
        for arm in arms:
            stat = row.arms[arm]["bits_per_char"]
            if stat.values:
                absolute.append(_bar(row.name, arm, stat.mean, stat.std))
        for arm in arms[1:]:
            delta = row.delta[arm]["bits_per_char"]
            if delta.values:
                ci = delta.ci
                low, high = (0.0, 0.0) if ci is None else (delta.mean - ci.low, ci.high - delta.mean)
                change.append(Bar(row.name, arm, delta.mean, low, high))
    return absolute, change


def _bar(language: str, series: str, mean: float, std: float | None) -> Bar:
    return Bar(language, series, mean, std or 0.0, std or 0.0)


def plot_bits_per_char(
    rows: Sequence[SubsetRow], arms: Sequence[str], path: PathLike, *, title: str | None = None
) -> Path:
    """Left: bits per character of each language's held-out text per arm (and before training); right: each
    arm's change against the baseline (``arms[0]``) with its 95% interval over seeds. Lower is better."""
    absolute, change = bits_per_char_bars(rows, arms)
    if not absolute:
        raise ValueError("plot_bits_per_char needs at least one language with a finished run")
    panels = [(absolute, "bits per character (± sd over seeds)")]
    if change:
        panels.append((change, f"Δ bits per character vs {arms[0]} (95% interval)"))
    colors = {"before training": "0.7", **{arm: f"C{i % 10}" for i, arm in enumerate(arms)}}  # same in both panels
    fig = new_figure(5.2 * len(panels) + 0.4, 3.9)
    axes = fig.subplots(1, len(panels), squeeze=False).ravel()
    for ax, (bars, label) in zip(axes, panels):
        _draw_groups(ax, bars, colors)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[-1].axhline(0.0, color="0.3", lw=0.8)
    fig.suptitle(title or "Bits per character on each language's held-out verses (lower is better)", fontsize=10)
    return save(fig, path)


def _draw_groups(ax, bars: Sequence[Bar], colors: dict[str, str]) -> None:
    """Grouped bars: one group per language, one colour per series."""
    languages = list(dict.fromkeys(b.language for b in bars))
    series = list(dict.fromkeys(b.series for b in bars))
    width = 0.8 / len(series)
    for s_index, name in enumerate(series):
        own = {b.language: b for b in bars if b.series == name}
        xs = [i + (s_index - (len(series) - 1) / 2) * width for i, lang in enumerate(languages) if lang in own]
        picked = [own[lang] for lang in languages if lang in own]
        ax.bar(
            xs,
            [b.mean for b in picked],
            width,
            yerr=np.array([[b.low for b in picked], [b.high for b in picked]]),
            color=colors[name],
            capsize=2,
            label=name,
        )
    ax.set_xticks(range(len(languages)))
    ax.set_xticklabels(languages, fontsize=8, rotation=20)
    ax.legend(fontsize=7)
