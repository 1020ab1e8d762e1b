"""The Pareto figure: per arm, the change of the frequent bucket's NLL (x) against a rare group's (y)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ...metric_names import group_label
from ..pareto import ParetoPoint, pareto_front
from ._common import PathLike, new_figure, save


def _color(index: int, n: int):
    """The default colour cycle up to 10 points; above, 20 distinct colours (no two arms share one)."""
    if n <= 10:
        return f"C{index}"
    from matplotlib import colormaps

    return colormaps["tab20"](index % 20)


def _err(ci, mean: float) -> list[list[float]] | None:
    return None if ci is None else [[mean - ci.low], [ci.high - mean]]


def plot_pareto(
    panels: Mapping[str, Sequence[ParetoPoint]],
    path: PathLike,
    *,
    x_group: str,
    title: str | None = None,
    stat: str = "NLL",
    label: Callable[[str], str] = group_label,
) -> Path:
    """One panel per rare group (``panels``: y group -> points); bars: 95% intervals; dashed: the frontier.

    Both axes are changes of ``stat`` (NLL, or bits/char between languages) against the baseline (the point at
    the origin): left and down is better. ``label`` names a group or a language on the axes.
    """
    if not panels:
        raise ValueError("plot_pareto needs at least one panel")
    fig = new_figure(4.6 * len(panels) + 0.4, 4.4)
    axes = fig.subplots(1, len(panels), squeeze=False).ravel()
    for ax, (y_group, points) in zip(axes, panels.items()):
        ax.axhline(0.0, color="0.6", lw=0.8)
        ax.axvline(0.0, color="0.6", lw=0.8)
        front = pareto_front([(p.x, p.y) for p in points])
        for index, point in enumerate(points):
            color = _color(index, len(points))
            on_front = index in front
            ax.errorbar(
                point.x,
                point.y,
                xerr=_err(point.x_ci, point.x),
                yerr=_err(point.y_ci, point.y),
                color=color,
                marker="o" if on_front else "s",
                ms=6 if on_front else 4,
                mfc=color if on_front else "white",
                capsize=2,
                lw=0.9,
            )
            ax.annotate(
                point.arm, (point.x, point.y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color
            )
        if len(front) > 1:
            ax.plot([points[i].x for i in front], [points[i].y for i in front], "k--", lw=1.0, label="Pareto frontier")
            ax.legend(fontsize=7, loc="upper right")
        ax.set_xlabel(f"Δ {stat} {label(x_group)} (vs {points[0].arm})")
        ax.set_ylabel(f"Δ {stat} {label(y_group)}")
        ax.set_title(f"{label(y_group)} against {label(x_group)}", fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle(
        title or "Per-token-mean NLL change vs the baseline, mean over seeds, 95% intervals (filled: on the frontier)",
        fontsize=9,
    )
    return save(fig, path)
