"""Per-token figures: the train-split token distribution and each token's final eval NLL, by frequency rank."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ...frequency import frequency_order
from ...metric_names import describe_group, group_label
from ._common import (
    MAX_LABELLED_TOKENS,
    arm_style,
    new_figure,
    positive,
    rank_x,
    save,
    token_axis,
)


def plot_token_distribution(
    counts: Sequence[int] | np.ndarray,
    path: str | os.PathLike,
    *,
    tokens: Sequence[str | None] | None = None,
    groups: Mapping[str, Sequence[int]] | None = None,
    title: str | None = None,
) -> Path:
    """Train-split count of each token by frequency rank, log y; bars coloured by group when given.

    Small vocabularies (≤ ``MAX_LABELLED_TOKENS``) get one bar per token labelled with its characters;
    bigger ones a rank-count line on log-log axes without per-token labels.
    """
    counts = np.asarray(counts)
    if tokens is not None and len(tokens) != counts.size:
        raise ValueError(f"tokens has {len(tokens)} entries but counts has {counts.size}; give one per token id")
    order = frequency_order(counts)
    sorted_counts = counts[order].astype(float)
    labelled = tokens is not None and counts.size <= MAX_LABELLED_TOKENS
    if counts.size <= MAX_LABELLED_TOKENS:
        fig = new_figure(max(8.0, 0.13 * counts.size + 2), 4.5)
        ax = fig.add_subplot()
        x = rank_x(order, labelled)
        colors = ["0.5"] * counts.size
        handles = {}
        if groups:
            group_of = {}
            for g_index, (name, ids) in enumerate(groups.items()):
                for token_id in ids:
                    group_of.setdefault(int(token_id), (g_index, name))
            for pos, token_id in enumerate(order):
                if int(token_id) in group_of:
                    g_index, name = group_of[int(token_id)]
                    colors[pos] = f"C{g_index % 10}"
                    handles.setdefault(name, colors[pos])
        ax.bar(x, positive(sorted_counts), color=colors, width=0.8)
        if handles:
            from matplotlib.patches import Patch

            ax.legend(
                [Patch(color=c) for c in handles.values()], [group_label(n) for n in handles], fontsize=8, ncols=2
            )
        token_axis(ax, order, tokens if labelled else None)
    else:
        fig = new_figure(8.0, 4.5)
        ax = fig.add_subplot()
        ax.plot(np.arange(1, counts.size + 1), positive(sorted_counts), color="C0")
        ax.set_xscale("log")
        ax.set_xlabel("train frequency rank (1 = most frequent)")
    ax.set_yscale("log")
    ax.set_ylabel("train occurrences (log)")
    ax.set_title(title or f"Token distribution ({counts.size} tokens, {int(counts.sum()):,} train occurrences)")
    ax.grid(axis="y", which="major", alpha=0.3)
    return save(fig, path)


def plot_token_nll(
    per_arm: Mapping[str, Sequence[float | None] | np.ndarray],
    counts: Sequence[int] | np.ndarray,
    path: str | os.PathLike,
    *,
    tokens: Sequence[str | None] | None = None,
    groups: Mapping[str, Sequence[int]] | None = None,
    title: str | None = None,
) -> Path:
    """Final eval NLL of each token (``per_arm[arm][id]``, None/NaN: absent) against its train frequency rank.

    Dotted vertical lines separate rank groups (``groups`` named ``rank_*``) when given.
    """
    counts = np.asarray(counts)
    order = frequency_order(counts)
    labelled = tokens is not None and counts.size <= MAX_LABELLED_TOKENS
    fig = new_figure(max(8.0, 0.13 * counts.size + 2) if labelled else 9.0, 4.5)
    ax = fig.add_subplot()
    x = rank_x(order, labelled)
    for index, (arm, values) in enumerate(per_arm.items()):
        values = np.array([np.nan if v is None else float(v) for v in values], dtype=float)
        if values.size != counts.size:
            raise ValueError(f"per-token NLL of arm {arm!r} has {values.size} entries, expected {counts.size}")
        ax.plot(x, values[order], **arm_style(index), marker="o", ms=3, lw=0.8, label=arm)
    if groups:
        position = {int(token_id): pos for pos, token_id in enumerate(order)}
        for name, ids in list(groups.items())[1:]:
            if describe_group(name).kind == "rank" and ids:
                start = min(position[int(i)] for i in ids)
                ax.axvline(x[start] - (0.5 if labelled else 0), color="0.6", ls=":", lw=0.8)
    token_axis(ax, order, tokens if labelled else None)
    ax.set_ylabel("final eval NLL of the token")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "Per-token eval NLL by train frequency rank (gaps: absent from eval)")
    return save(fig, path)
