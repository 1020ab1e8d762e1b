"""Metrics along training: per-group eval statistics and their deltas, eval loss, languages, training logs.

Curves are the mean over seeds, with the min-max range over seeds shaded when an arm has several.
Missing values (a group absent from the eval data, a run without that eval step) are left out of the
curves, never drawn as 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...lab.results import finished_runs, group_names
from ...metric_names import HEADLINE_STATS, STAT_TITLES, group_label, metric_key
from ..series import metric_series, paired_delta_series
from ..summary import final_tokens
from ._common import PathLike, Results, draw_arm, focus_ylim, grid, legend_once, mark_absent, new_figure, save


def _group_panels(results: Results, groups: Sequence[str]):
    """A grid of one panel per group titled with its eval token count; returns (fig, axes, [(ax, group)]) of
    the groups present (absent ones are marked as such)."""
    fig, axes = grid(len(groups))
    panels = []
    for ax, group in zip(axes, groups):
        tokens = final_tokens(results, group)
        ax.set_title(group_label(group) + (f" ({tokens:,} eval tok)" if tokens else ""), fontsize=9)
        if tokens == 0:
            mark_absent(ax)
        else:
            panels.append((ax, group))
    return fig, axes, panels


def _finish_grid(fig, axes, path: PathLike, ylabel: str, title: str) -> Path:
    legend_once(fig, axes)
    fig.supylabel(ylabel, fontsize=9)
    fig.suptitle(title, fontsize=11)
    return save(fig, path)


def plot_group_history(
    results: Results,
    path: PathLike,
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
    fig, axes, panels = _group_panels(results, groups)
    for ax, group in panels:
        drawn, arrays, steps_list = False, [], []
        for index, (arm, arm_runs) in enumerate(runs.items()):
            steps, values = metric_series(arm_runs, metric_key(group, stat))
            if draw_arm(ax, steps, values, arm, index):
                drawn = True
                arrays.append(values)
                steps_list.append(steps)
        if not drawn:
            mark_absent(ax, "no values logged")
            continue
        if focus:
            focus_ylim(ax, arrays, steps_list)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    name = STAT_TITLES.get(stat, stat)
    return _finish_grid(fig, axes, path, f"eval {name}", title or f"Eval {name} per group along training")


def plot_group_delta(
    results: Results,
    path: PathLike,
    *,
    groups: Sequence[str] | None = None,
    stat: str = "nll",
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
    fig, axes, panels = _group_panels(results, groups)
    for ax, group in panels:
        ax.axhline(0.0, color="0.3", lw=0.8, ls="--")
        for index, arm in enumerate(arms[1:], start=1):
            steps, deltas = paired_delta_series(runs[arm], runs[baseline], metric_key(group, stat))
            draw_arm(ax, steps, deltas, f"{arm} − {baseline}", index)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    name = STAT_TITLES.get(stat, stat)
    return _finish_grid(
        fig, axes, path, f"Δ eval {name} vs {baseline}", title or f"Δ eval {name} against {baseline} (below 0: lower)"
    )


def plot_eval_loss(results: Results, path: PathLike, *, title: str | None = None) -> Path:
    """Overall ``eval_loss`` (plain CE over the full vocabulary) along training, one line per arm.

    Two panels: the whole run, and the last 3/4 of training zoomed in.
    """
    runs = finished_runs(results)
    fig = new_figure(10.0, 4.0)
    axes = fig.subplots(1, 2)
    arrays, steps_list = [], []
    for index, (arm, arm_runs) in enumerate(runs.items()):
        steps, values = metric_series(arm_runs, "eval_loss")
        for ax in axes:
            draw_arm(ax, steps, values, arm, index)
        arrays.append(values)
        steps_list.append(steps)
    focus_ylim(axes[1], arrays, steps_list)
    axes[0].set_title("whole run", fontsize=9)
    axes[1].set_title("zoom: last 3/4 of training", fontsize=9)
    for ax in axes:
        ax.set_xlabel("training step")
        ax.set_ylabel("eval loss (cross-entropy)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title or "Overall eval loss along training", fontsize=11)
    return save(fig, path)


def plot_language_metrics(
    results: Results,
    path: PathLike,
    *,
    groups: Sequence[str],
    stats: Sequence[str] = HEADLINE_STATS,
    title: str | None = None,
) -> Path:
    """Per-language metrics along training: one row per stat (NLL, accuracy, recall@5, MRR), one column
    per group (e.g. ``lang_main``, ``lang_small``), one line per arm."""
    if not groups:
        raise ValueError("plot_language_metrics needs at least one group, e.g. ['lang_main', 'lang_small']")
    runs = finished_runs(results)
    fig = new_figure(4.2 * len(groups) + 0.6, 2.6 * len(stats) + 0.8)
    axes = fig.subplots(len(stats), len(groups), squeeze=False, sharex=True)
    for c, group in enumerate(groups):
        tokens = final_tokens(results, group)
        axes[0, c].set_title(group_label(group) + (f" ({tokens:,} eval tok)" if tokens else ""), fontsize=9)
        for r, stat in enumerate(stats):
            ax = axes[r, c]
            if tokens == 0:
                mark_absent(ax)
                continue
            for index, (arm, arm_runs) in enumerate(runs.items()):
                steps, values = metric_series(arm_runs, metric_key(group, stat))
                draw_arm(ax, steps, values, arm, index)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=8)
            if c == 0:
                ax.set_ylabel(STAT_TITLES.get(stat, stat), fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("training step", fontsize=8)
    legend_once(fig, axes.ravel().tolist())
    fig.suptitle(title or "Per-language eval metrics along training", fontsize=11)
    return save(fig, path)


def plot_training_curves(results: Results, path: PathLike, *, title: str | None = None) -> Path | None:
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
        series = {arm: metric_series(arm_runs, key, "train_history") for arm, arm_runs in runs.items()}
        if not any(np.isfinite(v).any() for _, v in series.values()):
            continue
        if key == "selfish_margin" and all(
            np.nanmin(v) == np.nanmax(v) for _, v in series.values() if np.isfinite(v).any()
        ):
            continue  # a constant margin is in the report's recipe table
        present.append((key, label, series))
    if not present:
        return None
    fig = new_figure(4.4 * len(present) + 0.4, 3.6)
    axes = fig.subplots(1, len(present), squeeze=False).ravel()
    for ax, (_key, label, series) in zip(axes, present):
        for index, (arm, (steps, values)) in enumerate(series.items()):
            draw_arm(ax, steps, values, arm, index)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("training step", fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    legend_once(fig, list(axes))
    fig.suptitle(title or "Training curves", fontsize=11)
    return save(fig, path)
