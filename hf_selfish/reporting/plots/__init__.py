"""Figures of a comparison, drawn from its run directory only (never trains; re-run any time).

    from hf_selfish.reporting.plots import write_plots
    write_plots("runs/tinyshakespeare_cpu")        # -> runs/tinyshakespeare_cpu/plots/*.png

Figures are `matplotlib.figure.Figure` objects on the Agg canvas, never `pyplot`: nothing is registered
globally, no window opens, and each figure is freed once saved. Every function writes one PNG
atomically and returns its `Path`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ...frequency import frequency_order
from ...lab.results import (
    arm_names,
    finished_runs,
    group_info,
    group_names,
    load_results,
    per_token_final_nll,
    scenarios_path,
)
from ...lab.results import train_counts as read_train_counts
from ...metric_names import RANKING_STATS
from ..figures import figure_file
from ..pareto import language_pareto_points, main_language, pareto_groups, pareto_points
from ..series import mean_band
from ..subsets import subset_rows
from ..summary import headline_groups, is_sweep, summarize, sweep_rows
from ._common import display_token, safe_name
from .curves import plot_eval_loss, plot_group_delta, plot_group_history, plot_language_metrics, plot_training_curves
from .languages import plot_bits_per_char
from .pareto import plot_pareto
from .sweep import plot_margin_sweep
from .tokens import (
    SCENARIO_KEYS,
    head_non_target_share,
    load_scenarios,
    plot_head_share_comparison,
    plot_scenarios,
    plot_scenarios_comparison,
    plot_token_distribution,
    plot_token_nll,
)

logger = logging.getLogger(__name__)

__all__ = [
    "display_token",
    "frequency_order",
    "head_non_target_share",
    "load_scenarios",
    "plot_bits_per_char",
    "plot_eval_loss",
    "plot_group_delta",
    "plot_group_history",
    "plot_head_share_comparison",
    "plot_language_metrics",
    "plot_margin_sweep",
    "plot_pareto",
    "plot_scenarios",
    "plot_scenarios_comparison",
    "plot_token_distribution",
    "plot_token_nll",
    "plot_training_curves",
    "write_plots",
]


def _arm_mean(arrays: list[np.ndarray]) -> np.ndarray | None:
    return mean_band(np.array(arrays))[0] if arrays else None


def write_plots(run_dir: str | os.PathLike) -> list[Path]:
    """Every figure that applies to a comparison run dir, into ``run_dir/plots/``; returns their paths.

    Figures whose data a run did not record (scenarios, per-token NLL, language groups, training logs)
    are skipped.
    """
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    runs = finished_runs(results)
    groups = group_names(results)
    kinds = {name: meta.get("kind") for name, meta in group_info(results).items()}
    rank_groups = {name: ids for name, ids in (results.get("groups") or {}).items() if kinds.get(name) == "rank"}
    counts, tokens = read_train_counts(run_dir, results)
    order = frequency_order(counts) if counts is not None else None
    out = lambda name: figure_file(run_dir, name)  # noqa: E731
    paths: list[Path] = []

    if counts is not None:
        paths.append(
            plot_token_distribution(counts, out("token_distribution"), tokens=tokens, groups=rank_groups or None)
        )
    if not any(runs.values()):
        logger.warning("no finished run in %s: only the token distribution is plotted", run_dir)
        return paths
    paths.append(plot_eval_loss(results, out("eval_loss")))
    if groups:
        paths.append(plot_group_history(results, out("eval_nll_by_group"), stat="nll"))
        if sum(bool(r) for r in runs.values()) >= 2:
            paths.append(plot_group_delta(results, out("eval_nll_delta_by_group"), stat="nll"))
        for stat in RANKING_STATS:
            paths.append(plot_group_history(results, out(f"eval_{stat}_by_group"), stat=stat))
    if results.get("eval_subsets"):
        paths.append(plot_bits_per_char(subset_rows(results), arm_names(results), out("bits_per_char_by_language")))
    languages = [g for g in groups if kinds.get(g) == "language"]
    if languages:
        paths.append(plot_language_metrics(results, out("language_metrics"), groups=languages))
    training = plot_training_curves(results, out("training_curves"))
    if training is not None:
        paths.append(training)
    if counts is not None:
        per_token = {}
        for arm, arm_runs in runs.items():
            arrays = [v for v in (per_token_final_nll(run_dir, run, len(counts)) for run in arm_runs) if v is not None]
            if arrays:
                per_token[arm] = _arm_mean(arrays)
        if per_token:
            paths.append(plot_token_nll(per_token, counts, out("token_nll_final"), tokens=tokens, groups=rank_groups))
    scenarios = {}
    for arm, arm_runs in runs.items():
        loaded = [load_scenarios(p) for p in (scenarios_path(run_dir, run) for run in arm_runs) if p is not None]
        if loaded:
            scenarios[arm] = {k: np.mean([norms[k] for norms in loaded], axis=0) for k in SCENARIO_KEYS}
    for arm, norms in scenarios.items():
        n_seeds = sum(1 for r in runs[arm] if r.get("scenarios"))
        title = f"Gradient scenarios, arm {arm} (summed over logged steps" + (
            f", mean of {n_seeds} seeds)" if n_seeds > 1 else ")"
        )
        paths.append(plot_scenarios(norms, out(f"scenarios_{safe_name(arm)}"), tokens=tokens, order=order, title=title))
    if scenarios:
        paths.append(
            plot_scenarios_comparison(scenarios, out("scenarios_non_target_comparison"), tokens=tokens, order=order)
        )
        paths.append(plot_head_share_comparison(scenarios, out("scenarios_head_share"), tokens=tokens, order=order))
    if is_sweep(results) and sweep_rows(results):
        paths.append(plot_margin_sweep(sweep_rows(results), out("margin_sweep"), groups=headline_groups(results)))
    if sum(bool(r) for r in runs.values()) >= 3:  # a trade-off of 2+ arms against the baseline
        x_group, y_groups = pareto_groups(results)
        if x_group is not None and y_groups:
            summary = summarize(results)
            panels = {g: pareto_points(summary, x_group, g) for g in y_groups}
            paths.append(plot_pareto(panels, out("pareto"), x_group=x_group))
        paths += _language_pareto(results, out("pareto_languages"))
    return paths


def _language_pareto(results, path) -> list[Path]:
    """The trade-off between a mix's languages: per arm, the main language's Δ bits per character (x) against each
    other language's (y); none without two evaluated languages."""
    rows = subset_rows(results)
    main = main_language(results, rows)
    if main is None:
        return []
    panels = {row.name: language_pareto_points(rows, main, row.name) for row in rows if row.name != main}
    title = "Δ bits per character vs the baseline (mean over seeds, 95% intervals)"
    return [plot_pareto(panels, path, x_group=main, title=title, stat="bits/char", label=str)]
