"""Figures of a comparison run, drawn from saved results only (never trains; re-run any time).

    from hf_selfish.plots import write_plots
    write_plots("runs/tinyshakespeare_cpu")        # -> runs/tinyshakespeare_cpu/plots/*.png

Figures are `matplotlib.figure.Figure` objects drawn on the Agg canvas, never through `pyplot`, so
nothing is registered globally, no window opens, and each figure is freed once saved. Every function
writes one PNG (atomically: temp file + ``os.replace``) and returns its `Path`.

Curves along training are the mean over seeds, with the min-max range over seeds shaded when an arm
has several. Missing values (a group absent from the eval data, a run without that eval step) are
left out of the curves, never drawn as 0.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .files import atomic_path
from .report import (
    PLOTS_DIRNAME,
    STAT_TITLES,
    finished_runs,
    format_margin,
    group_label,
    group_names,
    is_sweep,
    load_results,
    metric_key,
    sweep_groups,
    sweep_rows,
)

logger = logging.getLogger(__name__)

__all__ = [
    "display_token",
    "frequency_order",
    "load_scenarios",
    "plot_eval_loss",
    "plot_group_delta",
    "plot_group_history",
    "plot_language_metrics",
    "plot_margin_sweep",
    "plot_scenarios",
    "plot_scenarios_comparison",
    "plot_token_distribution",
    "plot_token_nll",
    "plot_training_curves",
    "write_plots",
]

SCENARIO_KEYS = ("input", "target", "non_target")
SCENARIO_LABELS = {
    "input": "1: as input",
    "target": "2.1: as target",
    "non_target": "2.2: as non-target",
}
RANKING_STATS = ("accuracy", "recall_at_5", "mrr")
LANGUAGE_STATS = ("nll", "accuracy", "recall_at_5", "mrr")
MAX_LABELLED_TOKENS = 160  # above this, no per-token tick labels
DPI = 120
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9_.-]+")


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------


def display_token(token: str | None) -> str:
    """A readable tick label: ``"\\n"`` -> ``\\n``, ``" "`` -> ``space``, ``"$"`` escaped from mathtext."""
    if token is None:
        return "?"
    named = {" ": "space", "\n": "\\n", "\t": "\\t", "\r": "\\r", "": "''"}
    if token in named:
        return named[token]
    if token.isspace() or not token.isprintable():
        return repr(token)[1:-1]
    return token.replace("$", r"\$")


def frequency_order(counts: Sequence[int] | np.ndarray) -> np.ndarray:
    """Token ids by frequency rank: most frequent first, ties by lower id (as `TokenFrequency`). ``[V]``."""
    counts = np.asarray(counts)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"counts must be a non-empty 1-D sequence, got shape {counts.shape}")
    return np.lexsort((np.arange(counts.size), -counts))


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    """Save as PNG through a temp file in the same folder, then ``os.replace``."""
    path = Path(path)
    try:
        with atomic_path(path, suffix=".png.tmp") as tmp:
            fig.savefig(tmp, format="png", dpi=DPI)
    finally:
        fig.clear()
    return path


_LINESTYLES = ("-", "--", "-.", ":")


def _arm_style(index: int) -> dict[str, str]:
    """Colour and line style of the arm at ``index`` (styles differ too, so overlapping arms stay visible)."""
    return {"color": f"C{index % 10}", "ls": _LINESTYLES[index % len(_LINESTYLES)]}


def _safe_name(name: str) -> str:
    return _UNSAFE_FILENAME.sub("_", name).strip("_") or "arm"


def _token_axis(ax, order: np.ndarray, tokens: Sequence[str | None] | None, *, fontsize: float = 7) -> None:
    """x = rank positions 0..V-1; tick labels = the characters when the vocabulary is small enough."""
    n = len(order)
    if tokens is not None and n <= MAX_LABELLED_TOKENS:
        ax.set_xticks(np.arange(n))
        labels = ax.set_xticklabels([display_token(tokens[i]) for i in order], fontsize=fontsize + 1, family="monospace")
        for label, i in zip(labels, order):  # single characters upright, names ('space', '\n') turned
            if len(str(tokens[i])) != 1 or display_token(tokens[i]) != tokens[i].replace("$", r"\$"):
                label.set_rotation(90)
                label.set_fontsize(fontsize)
        ax.set_xlim(-0.7, n - 0.3)
        ax.set_xlabel("token, by train frequency rank (most frequent first)")
    else:
        ax.set_xlabel("train frequency rank (1 = most frequent)")


def _rank_x(order: np.ndarray, labelled: bool) -> np.ndarray:
    return np.arange(len(order)) if labelled else np.arange(1, len(order) + 1)


def _positive(values: np.ndarray) -> np.ndarray:
    """Values for a log axis: non-positive entries become gaps (a zero has no place on a log scale)."""
    values = np.asarray(values, dtype=float)
    return np.where(values > 0, values, np.nan)


# ----------------------------------------------------------------------------------------------
# Token distribution
# ----------------------------------------------------------------------------------------------


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
        fig = _new_figure(max(8.0, 0.13 * counts.size + 2), 4.5)
        ax = fig.add_subplot()
        x = _rank_x(order, labelled)
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
        ax.bar(x, _positive(sorted_counts), color=colors, width=0.8)
        if handles:
            from matplotlib.patches import Patch

            ax.legend([Patch(color=c) for c in handles.values()], [group_label(n) for n in handles], fontsize=8, ncols=2)
        _token_axis(ax, order, tokens if labelled else None)
    else:
        fig = _new_figure(8.0, 4.5)
        ax = fig.add_subplot()
        ax.plot(np.arange(1, counts.size + 1), _positive(sorted_counts), color="C0")
        ax.set_xscale("log")
        ax.set_xlabel("train frequency rank (1 = most frequent)")
    ax.set_yscale("log")
    ax.set_ylabel("train occurrences (log)")
    ax.set_title(title or f"Token distribution ({counts.size} tokens, {int(counts.sum()):,} train occurrences)")
    ax.grid(axis="y", which="major", alpha=0.3)
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------
# Curves along training
# ----------------------------------------------------------------------------------------------


def _series(runs: Sequence[Mapping[str, Any]], key: str, history: str = "history") -> tuple[np.ndarray, np.ndarray]:
    """``steps [S]`` and ``values [R, S]`` of ``key`` over the runs' histories (NaN where a run lacks it)."""
    per_run = []
    for run in runs:
        points = {}
        for entry in run.get(history) or []:
            value = entry.get(key)
            if entry.get("step") is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
                if math.isfinite(value):
                    points[entry["step"]] = float(value)
        per_run.append(points)
    steps = np.array(sorted({s for points in per_run for s in points}), dtype=float)
    values = np.full((len(per_run), steps.size), np.nan)
    for r, points in enumerate(per_run):
        for s, step in enumerate(steps):
            values[r, s] = points.get(step, np.nan)
    return steps, values


def _mean_band(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean, min, max over runs (axis 0) and the number of runs present, at each step (columns all-NaN stay NaN)."""
    present = np.isfinite(values).sum(axis=0)  # [S]
    safe = np.where(np.isfinite(values), values, 0.0)
    mean = np.where(present > 0, safe.sum(axis=0) / np.maximum(present, 1), np.nan)
    low = np.where(present > 0, np.where(np.isfinite(values), values, np.inf).min(axis=0), np.nan)
    high = np.where(present > 0, np.where(np.isfinite(values), values, -np.inf).max(axis=0), np.nan)
    return mean, low, high, present


def _draw_arm(ax, steps: np.ndarray, values: np.ndarray, label: str, index: int) -> bool:
    """Mean line with a min-max band over seeds; returns False when there is nothing to draw."""
    if not steps.size or not np.isfinite(values).any():
        return False
    mean, low, high, present = _mean_band(values)
    n = values.shape[0]
    style = _arm_style(index)
    ax.plot(steps, mean, **style, label=f"{label} (mean of {n} seeds)" if n > 1 else label, lw=1.5, marker=".", ms=3)
    if n > 1:
        ax.fill_between(steps, low, high, color=style["color"], alpha=0.2, lw=0, where=present > 1)
    return True


def _focus_ylim(ax, arrays: Sequence[np.ndarray], steps: Sequence[np.ndarray], tail: float = 0.75) -> None:
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


def _grid(n: int, *, max_cols: int = 4, panel: tuple[float, float] = (3.6, 2.8), xlabel: str = "training step"):
    """``n`` panels in rows of at most ``max_cols``, sharing x; the lowest panel of each column carries the x label."""
    cols = max(1, min(max_cols, n))
    rows = max(1, math.ceil(n / cols))
    fig = _new_figure(panel[0] * cols + 0.6, panel[1] * rows + 0.9)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    for column in range(cols):
        lowest = max(i for i in range(column, n, cols)) if column < n else None
        if lowest is not None:
            axes[lowest].xaxis.set_tick_params(labelbottom=True)
            axes[lowest].set_xlabel(xlabel, fontsize=8)
    return fig, axes[:n]


def _group_tokens(results: Mapping[str, Any], group: str) -> int | None:
    for runs in finished_runs(results).values():
        for run in runs:
            value = (run.get("final") or {}).get(metric_key(group, "tokens"))
            if isinstance(value, (int, float)):
                return int(value)
    return None


def _mark_absent(ax, text: str = "absent from the eval data") -> None:
    """An empty panel that says why (tick changes stay on this panel; its x axis may be shared)."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.tick_params(left=False, labelleft=False, bottom=False, labelbottom=False)


def plot_group_history(
    results: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    stat: str = "nll",
    groups: Sequence[str] | None = None,
    title: str | None = None,
    focus: bool = True,
) -> Path:
    """``eval_{group}_{stat}`` along training: one panel per group, one line per arm (x = step).

    ``focus`` zooms each panel's y range on the last 3/4 of training, where the arms separate.
    """
    groups = list(groups) if groups is not None else group_names(results)
    if not groups:
        raise ValueError("no groups to plot: results.json has no 'groups' and no eval_{group}_* metrics")
    runs = finished_runs(results)
    fig, axes = _grid(len(groups))
    for ax, group in zip(axes, groups):
        tokens = _group_tokens(results, group)
        ax.set_title(group_label(group) + (f" ({tokens:,} eval tok)" if tokens else ""), fontsize=9)
        if tokens == 0:
            _mark_absent(ax)
            continue
        drawn, arrays, steps_list = False, [], []
        for index, (arm, arm_runs) in enumerate(runs.items()):
            steps, values = _series(arm_runs, metric_key(group, stat))
            if _draw_arm(ax, steps, values, arm, index):
                drawn = True
                arrays.append(values)
                steps_list.append(steps)
        if not drawn:
            _mark_absent(ax, "no values logged")
            continue
        if focus:
            _focus_ylim(ax, arrays, steps_list)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    _legend_once(fig, axes)
    fig.supylabel(f"eval {STAT_TITLES.get(stat, stat)}", fontsize=9)
    fig.suptitle(title or f"Eval {STAT_TITLES.get(stat, stat)} per group along training", fontsize=11)
    return _save(fig, path)


def _legend_once(fig: Figure, axes: Sequence) -> None:
    """One legend for the whole figure, from the first panel that has lines."""
    for ax in axes:
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=8)
            return


def _paired_delta(arm_runs: Sequence[Mapping[str, Any]], base_runs: Sequence[Mapping[str, Any]], key: str):
    """``steps [S]``, ``deltas [R, S]`` of arm - baseline: per seed when the seeds match, else of the means."""
    steps_a, values_a = _series(arm_runs, key)
    steps_b, values_b = _series(base_runs, key)
    common = np.intersect1d(steps_a, steps_b)
    a = values_a[:, np.isin(steps_a, common)]
    b = values_b[:, np.isin(steps_b, common)]
    if [r.get("seed") for r in arm_runs] == [r.get("seed") for r in base_runs]:
        return common, a - b
    return common, (_mean_band(a)[0] - _mean_band(b)[0])[None, :]


def plot_group_delta(
    results: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    stat: str = "nll",
    groups: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Δ ``eval_{group}_{stat}`` of each arm against the first (baseline) along training, one panel per group.

    Below the zero line the arm has the lower value (for NLL: better). Seeds are paired (same seed, same
    init and data order); the band is the min-max of the per-seed differences.
    """
    groups = list(groups) if groups is not None else group_names(results)
    runs = finished_runs(results)
    arms = list(runs)
    if len(arms) < 2:
        raise ValueError(f"a delta plot needs at least two arms, got {arms}")
    baseline = arms[0]
    fig, axes = _grid(len(groups))
    for ax, group in zip(axes, groups):
        tokens = _group_tokens(results, group)
        ax.set_title(group_label(group) + (f" ({tokens:,} eval tok)" if tokens else ""), fontsize=9)
        if tokens == 0:
            _mark_absent(ax)
            continue
        ax.axhline(0.0, color="0.3", lw=0.8, ls="--")
        for index, arm in enumerate(arms[1:], start=1):
            steps, deltas = _paired_delta(runs[arm], runs[baseline], metric_key(group, stat))
            _draw_arm(ax, steps, deltas, f"{arm} − {baseline}", index)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    _legend_once(fig, axes)
    fig.supylabel(f"Δ eval {STAT_TITLES.get(stat, stat)} vs {baseline}", fontsize=9)
    fig.suptitle(title or f"Δ eval {STAT_TITLES.get(stat, stat)} against {baseline} (below 0: lower)", fontsize=11)
    return _save(fig, path)


def plot_eval_loss(results: Mapping[str, Any], path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Overall ``eval_loss`` (plain CE over the full vocabulary) along training, one line per arm.

    Two panels: the whole run, and the last 3/4 of training zoomed in.
    """
    runs = finished_runs(results)
    fig = _new_figure(10.0, 4.0)
    axes = fig.subplots(1, 2)
    arrays, steps_list = [], []
    for index, (arm, arm_runs) in enumerate(runs.items()):
        steps, values = _series(arm_runs, "eval_loss")
        for ax in axes:
            _draw_arm(ax, steps, values, arm, index)
        arrays.append(values)
        steps_list.append(steps)
    _focus_ylim(axes[1], arrays, steps_list)
    axes[0].set_title("whole run", fontsize=9)
    axes[1].set_title("zoom: last 3/4 of training", fontsize=9)
    for ax in axes:
        ax.set_xlabel("training step")
        ax.set_ylabel("eval loss (cross-entropy)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title or "Overall eval loss along training", fontsize=11)
    return _save(fig, path)


def plot_language_metrics(
    results: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    groups: Sequence[str],
    stats: Sequence[str] = LANGUAGE_STATS,
    title: str | None = None,
) -> Path:
    """Per-language metrics along training: one row per stat (NLL, accuracy, recall@5, MRR), one column
    per group (e.g. ``lang_main``, ``lang_small``), one line per arm."""
    if not groups:
        raise ValueError("plot_language_metrics needs at least one group, e.g. ['lang_main', 'lang_small']")
    runs = finished_runs(results)
    fig = _new_figure(4.2 * len(groups) + 0.6, 2.6 * len(stats) + 0.8)
    axes = fig.subplots(len(stats), len(groups), squeeze=False, sharex=True)
    for c, group in enumerate(groups):
        tokens = _group_tokens(results, group)
        axes[0, c].set_title(group_label(group) + (f" ({tokens:,} eval tok)" if tokens else ""), fontsize=9)
        for r, stat in enumerate(stats):
            ax = axes[r, c]
            if tokens == 0:
                _mark_absent(ax)
                continue
            for index, (arm, arm_runs) in enumerate(runs.items()):
                steps, values = _series(arm_runs, metric_key(group, stat))
                _draw_arm(ax, steps, values, arm, index)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=8)
            if c == 0:
                ax.set_ylabel(STAT_TITLES.get(stat, stat), fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("training step", fontsize=8)
    _legend_once(fig, axes.ravel().tolist())
    fig.suptitle(title or "Per-language eval metrics along training", fontsize=11)
    return _save(fig, path)


def plot_training_curves(results: Mapping[str, Any], path: str | os.PathLike, *, title: str | None = None) -> Path | None:
    """Training loss, fraction of logits masked and the margin (when it changes) per arm; None if nothing logged.

    Each arm's training loss is its own objective (selfish or CE), so compare arms on the eval plots.
    """
    runs = finished_runs(results)
    panels = [
        ("loss", "training loss (own objective)"),
        ("selfish_masked_fraction", "fraction of logits masked"),
        ("selfish_margin", "margin"),
    ]
    present = []
    for key, label in panels:
        series = {arm: _series(arm_runs, key, "train_history") for arm, arm_runs in runs.items()}
        if not any(np.isfinite(v).any() for _, v in series.values()):
            continue
        if key == "selfish_margin" and all(np.nanmin(v) == np.nanmax(v) for _, v in series.values() if np.isfinite(v).any()):
            continue  # a constant margin is in the report's recipe table
        present.append((key, label, series))
    if not present:
        return None
    fig = _new_figure(4.4 * len(present) + 0.4, 3.6)
    axes = fig.subplots(1, len(present), squeeze=False).ravel()
    for ax, (key, label, series) in zip(axes, present):
        for index, (arm, (steps, values)) in enumerate(series.items()):
            _draw_arm(ax, steps, values, arm, index)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("training step", fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    _legend_once(fig, list(axes))
    fig.suptitle(title or "Training curves", fontsize=11)
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------
# Per-token final NLL
# ----------------------------------------------------------------------------------------------


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
    fig = _new_figure(max(8.0, 0.13 * counts.size + 2) if labelled else 9.0, 4.5)
    ax = fig.add_subplot()
    x = _rank_x(order, labelled)
    for index, (arm, values) in enumerate(per_arm.items()):
        values = np.array([np.nan if v is None else float(v) for v in values], dtype=float)
        if values.size != counts.size:
            raise ValueError(f"per-token NLL of arm {arm!r} has {values.size} entries, expected {counts.size}")
        ax.plot(x, values[order], **_arm_style(index), marker="o", ms=3, lw=0.8, label=arm)
    if groups:
        position = {int(token_id): pos for pos, token_id in enumerate(order)}
        for name, ids in list(groups.items())[1:]:
            if name.startswith("rank_") and ids:
                start = min(position[int(i)] for i in ids)
                ax.axvline(x[start] - (0.5 if labelled else 0), color="0.6", ls=":", lw=0.8)
    _token_axis(ax, order, tokens if labelled else None)
    ax.set_ylabel("final eval NLL of the token")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "Per-token eval NLL by train frequency rank (gaps: absent from eval)")
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------
# Gradient scenarios
# ----------------------------------------------------------------------------------------------


def load_scenarios(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read ``scenarios.safetensors``: float ``[V]`` tensors ``input``, ``target``, ``non_target``."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no scenarios file at {str(path)!r}; turn scenarios on in the recipe to record them")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"cannot read scenarios file {str(path)!r}: {err}") from None
    return _check_norms(tensors, str(path))


def _check_norms(norms: Mapping[str, Any], where: str) -> dict[str, np.ndarray]:
    missing = [k for k in SCENARIO_KEYS if k not in norms]
    if missing:
        raise ValueError(f"scenarios {where!r} lack {missing}; expected tensors named {list(SCENARIO_KEYS)}")
    arrays = {k: np.asarray(norms[k], dtype=np.float64).reshape(-1) for k in SCENARIO_KEYS}
    sizes = {k: v.size for k, v in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"scenarios {where!r} have tensors of different lengths {sizes}; each must be [V]")
    return arrays


def _note_zeros(ax, arrays: Sequence[np.ndarray]) -> None:
    """Say so on the figure when some norms are 0: they are gaps on the log axis, not missing data."""
    zeros = sum(int((np.asarray(a) <= 0).sum()) for a in arrays)
    if zeros:
        ax.text(0.99, 0.01, f"{zeros} zero norm(s) not drawn (log axis)", transform=ax.transAxes,
                ha="right", va="bottom", fontsize=7, color="0.4")


def plot_scenarios(
    norms: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    tokens: Sequence[str | None] | None = None,
    order: Sequence[int] | np.ndarray | None = None,
    title: str | None = None,
) -> Path:
    """The seed's figure: summed gradient norm per token (log y) for scenarios 1, 2.1 and 2.2.

    ``norms``: ``[V]`` arrays named ``input``, ``target``, ``non_target``. ``order``: token ids by
    frequency rank (see `frequency_order`); default id order. Zeros (a token never seen as input or
    target) are gaps on the log axis.
    """
    norms = _check_norms(norms, "norms")
    size = norms["input"].size
    order = np.arange(size) if order is None else np.asarray(order)
    if sorted(order.tolist()) != list(range(size)):
        raise ValueError(f"order must be a permutation of the {size} token ids, got {order.size} entries")
    labelled = tokens is not None and size <= MAX_LABELLED_TOKENS
    fig = _new_figure(max(8.0, 0.13 * size + 2) if labelled else 9.0, 4.5)
    ax = fig.add_subplot()
    x = _rank_x(order, labelled)
    markers = {"input": "o", "target": "s", "non_target": "^"}
    for index, key in enumerate(SCENARIO_KEYS):
        ax.plot(x, _positive(norms[key][order]), color=f"C{index}", marker=markers[key], ms=3, lw=0.8, label=SCENARIO_LABELS[key])
    ax.set_yscale("log")
    _token_axis(ax, order, tokens if labelled else None)
    if not labelled and size > MAX_LABELLED_TOKENS:
        ax.set_xscale("log")
    ax.set_ylabel("summed gradient norm (log)")
    ax.grid(axis="y", which="major", alpha=0.3)
    ax.legend(fontsize=8)
    _note_zeros(ax, [norms[k] for k in SCENARIO_KEYS])
    ax.set_title(title or "Gradient reaching each token's embedding, by scenario")
    return _save(fig, path)


def plot_scenarios_comparison(
    per_arm: Mapping[str, Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    key: str = "non_target",
    tokens: Sequence[str | None] | None = None,
    order: Sequence[int] | np.ndarray | None = None,
    title: str | None = None,
) -> Path:
    """One scenario (default 2.2, the token as non-target) for every arm, log y, tokens by frequency rank."""
    if key not in SCENARIO_KEYS:
        raise ValueError(f"scenario key must be one of {list(SCENARIO_KEYS)}, got {key!r}")
    if not per_arm:
        raise ValueError("plot_scenarios_comparison needs the scenario norms of at least one arm")
    checked = {arm: _check_norms(norms, f"arm {arm}") for arm, norms in per_arm.items()}
    size = next(iter(checked.values()))[key].size
    order = np.arange(size) if order is None else np.asarray(order)
    labelled = tokens is not None and size <= MAX_LABELLED_TOKENS
    fig = _new_figure(max(8.0, 0.13 * size + 2) if labelled else 9.0, 4.5)
    ax = fig.add_subplot()
    x = _rank_x(order, labelled)
    for index, (arm, norms) in enumerate(checked.items()):
        if norms[key].size != size:
            raise ValueError(f"arm {arm!r} has {norms[key].size} tokens in its scenarios, the first arm {size}")
        ax.plot(x, _positive(norms[key][order]), **_arm_style(index), marker="o", ms=3, lw=0.8, label=arm)
    ax.set_yscale("log")
    _token_axis(ax, order, tokens if labelled else None)
    if not labelled and size > MAX_LABELLED_TOKENS:
        ax.set_xscale("log")
    ax.set_ylabel("summed gradient norm (log)")
    ax.grid(axis="y", which="major", alpha=0.3)
    ax.legend(fontsize=8)
    _note_zeros(ax, [norms[key] for norms in checked.values()])
    key_name = SCENARIO_LABELS[key].replace(": as ", " (token as ") + ")"
    ax.set_title(title or f"Scenario {key_name}: summed gradient norm per arm")
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------
# Margin sweep
# ----------------------------------------------------------------------------------------------


def plot_margin_sweep(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    stats: Sequence[str] = ("nll", "accuracy", "recall_at_5", "mrr"),
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
    stats = [s for s in stats if any(_number(r.get(s)) is not None for r in rows)]
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
        value = _number(row.get("margin_value", row.get("margin")))
        if value is None:
            raise ValueError(f"margin-sweep row {dict(row)!r} needs a numeric 'margin_value' (the margin actually used)")
        points.setdefault((str(row["group"]), value), []).append(row)
        labels[value] = f"auto\n({value:.3g})" if row.get("margin") == "auto" else format_margin(value)
    margins = sorted(labels)
    fig = _new_figure(4.0 * len(stats) + 0.6, 3.8)
    axes = fig.subplots(1, len(stats), squeeze=False).ravel()
    for ax, stat in zip(axes, stats):
        for g_index, group in enumerate(groups):
            color = f"C{g_index % 10}"
            xs, means, lows, highs = [], [], [], []
            for m in margins:
                values = [v for v in (_number(r.get(stat)) for r in points.get((group, m), [])) if v is not None]
                if values:
                    xs.append(m)
                    means.append(float(np.mean(values)))
                    lows.append(float(np.mean(values) - min(values)))
                    highs.append(float(max(values) - np.mean(values)))
            if xs:
                ax.errorbar(xs, means, yerr=[lows, highs], color=color, marker="o", ms=4, capsize=3, label=group_label(group))
            base = [v for v in (_number(r.get(stat)) for r in baseline.get(group, [])) if v is not None]
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
    _legend_once(fig, list(axes))
    fig.suptitle(title or "Group metrics against the selfish margin (dashed: plain cross-entropy)", fontsize=11)
    return _save(fig, path)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


# ----------------------------------------------------------------------------------------------
# Everything for a run dir
# ----------------------------------------------------------------------------------------------


def _train_counts(run_dir: Path, results: Mapping[str, Any]) -> tuple[list[int] | None, list[str | None] | None]:
    """Train counts and token strings: from results.json, else token_frequency.json."""
    counts, tokens = results.get("train_counts"), results.get("tokens")
    if counts is None and (run_dir / "token_frequency.json").is_file():
        try:
            record = json.loads((run_dir / "token_frequency.json").read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{str(run_dir / 'token_frequency.json')!r} is not valid JSON ({err})") from None
        counts, tokens = record.get("counts"), tokens or record.get("tokens")
    if tokens is not None and counts is not None and len(tokens) != len(counts):
        logger.warning("results.json holds %d token strings for %d counts; plotting without labels", len(tokens), len(counts))
        tokens = None
    return counts, tokens


def _arm_per_token_nll(run_dir: Path, runs: Sequence[Mapping[str, Any]], vocab_size: int) -> np.ndarray | None:
    """Mean over the arm's seeds of each token's final eval NLL from ``rank_buckets.json`` (NaN: absent)."""
    arrays = []
    for run in runs:
        path = run_dir / str(run.get("output_dir", "")) / "rank_buckets.json"
        if not run.get("output_dir") or not path.is_file():
            continue
        try:
            nll = json.loads(path.read_text())["per_token"]["nll"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            logger.warning("skipping %s: no per_token.nll (%s)", path, err)
            continue
        if len(nll) != vocab_size:
            logger.warning("skipping %s: %d per-token values for %d tokens", path, len(nll), vocab_size)
            continue
        arrays.append([np.nan if v is None else float(v) for v in nll])
    if not arrays:
        return None
    return _mean_band(np.array(arrays))[0]


def _arm_scenarios(run_dir: Path, runs: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray] | None:
    """Mean over the arm's seeds of the scenario norms (each run's sums over its logged steps)."""
    loaded = []
    for run in runs:
        relative = run.get("scenarios")
        if not relative:
            continue
        path = run_dir / relative
        if not path.is_file():
            logger.warning("run %s-seed%s lists scenarios at %s but the file is missing", run.get("arm"), run.get("seed"), path)
            continue
        loaded.append(load_scenarios(path))
    if not loaded:
        return None
    return {k: np.mean([norms[k] for norms in loaded], axis=0) for k in SCENARIO_KEYS}


def write_plots(run_dir: str | os.PathLike) -> list[Path]:
    """Every figure that applies to a comparison run dir, into ``run_dir/plots/``; returns their paths.

    Figures whose data a run did not record (scenarios, per-token NLL, language groups, training logs)
    are skipped.
    """
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    out = run_dir / PLOTS_DIRNAME
    runs = finished_runs(results)
    groups = group_names(results)
    group_ids = results.get("groups") or {}
    rank_groups = {name: ids for name, ids in group_ids.items() if name.startswith("rank_")}
    counts, tokens = _train_counts(run_dir, results)
    order = frequency_order(counts) if counts is not None else None
    paths: list[Path] = []

    if counts is not None:
        paths.append(plot_token_distribution(counts, out / "token_distribution.png", tokens=tokens, groups=rank_groups or None))
    if not any(runs.values()):
        logger.warning("no finished run in %s: only the token distribution is plotted", run_dir)
        return paths
    paths.append(plot_eval_loss(results, out / "eval_loss.png"))
    if groups:
        paths.append(plot_group_history(results, out / "eval_nll_by_group.png", stat="nll"))
        if sum(bool(r) for r in runs.values()) >= 2:
            paths.append(plot_group_delta(results, out / "eval_nll_delta_by_group.png", stat="nll"))
        for stat in RANKING_STATS:
            paths.append(plot_group_history(results, out / f"eval_{stat}_by_group.png", stat=stat))
    languages = [g for g in groups if g.startswith("lang_")]
    if languages:
        paths.append(plot_language_metrics(results, out / "language_metrics.png", groups=languages))
    training = plot_training_curves(results, out / "training_curves.png")
    if training is not None:
        paths.append(training)
    if counts is not None:
        per_token = {arm: _arm_per_token_nll(run_dir, arm_runs, len(counts)) for arm, arm_runs in runs.items()}
        per_token = {arm: values for arm, values in per_token.items() if values is not None}
        if per_token:
            paths.append(plot_token_nll(per_token, counts, out / "token_nll_final.png", tokens=tokens, groups=rank_groups))
    scenarios = {arm: _arm_scenarios(run_dir, arm_runs) for arm, arm_runs in runs.items()}
    scenarios = {arm: norms for arm, norms in scenarios.items() if norms is not None}
    for arm, norms in scenarios.items():
        n_seeds = sum(1 for r in runs[arm] if r.get("scenarios"))
        title = f"Gradient scenarios, arm {arm} (summed over logged steps" + (f", mean of {n_seeds} seeds)" if n_seeds > 1 else ")")
        paths.append(plot_scenarios(norms, out / f"scenarios_{_safe_name(arm)}.png", tokens=tokens, order=order, title=title))
    if scenarios:
        paths.append(plot_scenarios_comparison(scenarios, out / "scenarios_non_target_comparison.png", tokens=tokens, order=order))
    if is_sweep(results) and sweep_rows(results):
        paths.append(plot_margin_sweep(sweep_rows(results), out / "margin_sweep.png", groups=sweep_groups(results)))
    return paths
