"""Figure helpers shared by the plot modules: Agg figures, atomic PNG saving, arm styles, token axes."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ...files import atomic_path
from ...frequency import display_token as token_text
from ..series import mean_band

# Argument types shared by the figure functions.
Results = Mapping[str, Any]  # results.json
PathLike = str | os.PathLike
Tokens = Sequence[str | None] | None  # a label per token id
IdGroups = Mapping[str, Sequence[int]]  # group name -> token ids
Order = Sequence[int] | np.ndarray | None  # token ids by frequency rank

MAX_LABELLED_TOKENS = 160  # above this, no per-token tick labels
DPI = 120
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9_.-]+")


def display_token(token: str | None) -> str:
    """A tick label: `hf_selfish.frequency.display_token`, with ``$`` escaped from matplotlib's mathtext."""
    return token_text(token).replace("$", r"\$")


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: str | os.PathLike) -> Path:
    """Save as PNG through a temp file in the same folder, then ``os.replace``."""
    path = Path(path)
    try:
        with atomic_path(path, suffix=".png.tmp") as tmp:
            fig.savefig(tmp, format="png", dpi=DPI)
    finally:
        fig.clear()
    return path


_LINESTYLES = ("-", "--", "-.", ":")


def arm_style(index: int) -> dict[str, str]:
    """Colour and line style of the arm at ``index`` (styles differ too, so overlapping arms stay visible)."""
    return {"color": f"C{index % 10}", "ls": _LINESTYLES[index % len(_LINESTYLES)]}


def safe_name(name: str) -> str:
    return _UNSAFE_FILENAME.sub("_", name).strip("_") or "arm"


def token_axis(ax, order: np.ndarray, tokens: Sequence[str | None] | None, *, fontsize: float = 7) -> None:
    """x = rank positions 0..V-1; tick labels = the characters when the vocabulary is small enough."""
    n = len(order)
    if tokens is not None and n <= MAX_LABELLED_TOKENS:
        ax.set_xticks(np.arange(n))
        labels = ax.set_xticklabels(
            [display_token(tokens[i]) for i in order], fontsize=fontsize + 1, family="monospace"
        )
        for label, i in zip(labels, order):  # single characters upright, names ('space', '\n') turned
            if len(str(tokens[i])) != 1 or display_token(tokens[i]) != tokens[i].replace("$", r"\$"):
                label.set_rotation(90)
                label.set_fontsize(fontsize)
        ax.set_xlim(-0.7, n - 0.3)
        ax.set_xlabel("token, by train frequency rank (most frequent first)")
    else:
        ax.set_xlabel("train frequency rank (1 = most frequent)")


def rank_x(order: np.ndarray, labelled: bool) -> np.ndarray:
    return np.arange(len(order)) if labelled else np.arange(1, len(order) + 1)


def positive(values: np.ndarray) -> np.ndarray:
    """Values for a log axis: non-positive entries become gaps (a zero has no place on a log scale)."""
    values = np.asarray(values, dtype=float)
    return np.where(values > 0, values, np.nan)


def draw_arm(ax, steps: np.ndarray, values: np.ndarray, label: str, index: int) -> bool:
    """Mean line with a min-max band over seeds; returns False when there is nothing to draw."""
    if not steps.size or not np.isfinite(values).any():
        return False
    mean, low, high, present = mean_band(values)
    n = values.shape[0]
    style = arm_style(index)
    ax.plot(steps, mean, **style, label=f"{label} (mean of {n} seeds)" if n > 1 else label, lw=1.5, marker=".", ms=3)
    if n > 1:
        ax.fill_between(steps, low, high, color=style["color"], alpha=0.2, lw=0, where=present > 1)
    return True


def focus_ylim(ax, arrays: Sequence[np.ndarray], steps: Sequence[np.ndarray], tail: float = 0.75) -> None:
    """Zoom y on the last ``tail`` of training, where the arms differ; early, larger values run off the top."""
    chunks = []
    for values, s in zip(arrays, steps):
        if s.size:
            cutoff = s.max() - tail * (s.max() - s.min())
            chunk = values[:, s >= cutoff]
            chunks.append(chunk[np.isfinite(chunk)])
    data = np.concatenate(chunks) if chunks else np.array([])
    if data.size < 2:
        return
    low, high = float(data.min()), float(data.max())
    pad = 0.08 * (high - low) if high > low else 0.05 * max(abs(high), 1e-3)
    ax.set_ylim(low - pad, high + pad)


def grid(n: int, *, max_cols: int = 4, panel: tuple[float, float] = (3.6, 2.8), xlabel: str = "training step"):
    """``n`` panels in rows of at most ``max_cols``, sharing x; the lowest panel of each column carries the x label."""
    cols = max(1, min(max_cols, n))
    rows = max(1, math.ceil(n / cols))
    fig = new_figure(panel[0] * cols + 0.6, panel[1] * rows + 0.9)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    for column in range(cols):
        lowest = max(i for i in range(column, n, cols)) if column < n else None
        if lowest is not None:
            axes[lowest].xaxis.set_tick_params(labelbottom=True)
            axes[lowest].set_xlabel(xlabel, fontsize=8)
    return fig, axes[:n]


def mark_absent(ax, text: str = "absent from the eval data") -> None:
    """An empty panel that says why (tick changes stay on this panel; its x axis may be shared)."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.tick_params(left=False, labelleft=False, bottom=False, labelbottom=False)


def legend_once(fig: Figure, axes: Sequence) -> None:
    """One legend for the whole figure, from the first panel that has lines."""
    for ax in axes:
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=8)
            return
