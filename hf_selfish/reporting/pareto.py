"""The trade-off between frequent and rare tokens, one point per arm: the Pareto figure's numbers.

x = the change of the most frequent rank bucket's per-token-mean NLL against the baseline arm, y = the change
of a rare group's (paired by seed, with 95% t intervals over seeds); both lower is better. The baseline is the
point (0, 0). The Pareto frontier is the set of points that no other point dominates (another point at most as
high on both axes and lower on one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..lab.results import group_info
from ..metric_names import MAIN_STAT
from .stats import Interval
from .subsets import SubsetRow
from .summary import Summary, final_tokens, headline_groups

__all__ = ["ParetoPoint", "language_pareto_points", "main_language", "pareto_front", "pareto_groups", "pareto_points"]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points (both coordinates: lower is better), in increasing x.

    A point is dominated when another is ``<=`` on both coordinates and ``<`` on at least one; of identical
    points, all are kept.
    """
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((ox <= x and oy <= y) and (ox < x or oy < y) for j, (ox, oy) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], points[i][1]))


@dataclass(frozen=True)
class ParetoPoint:
    """One arm: its mean change on both axes and their 95% intervals (None below two paired seeds)."""

    arm: str
    x: float
    y: float
    x_ci: Interval | None = None
    y_ci: Interval | None = None


def pareto_points(summary: Summary, x_group: str, y_group: str, stat: str = MAIN_STAT) -> list[ParetoPoint]:
    """The baseline at (0, 0) and every other arm with a delta on both groups, in the summary's arm order."""
    rows = {row.group: row for row in summary.groups}
    for group in (x_group, y_group):
        if group not in rows:
            raise ValueError(f"no group {group!r} in the comparison; its groups are {sorted(rows)}")
    points = [ParetoPoint(summary.baseline, 0.0, 0.0)]
    for arm in summary.others:
        dx, dy = rows[x_group].arms[arm].delta.get(stat), rows[y_group].arms[arm].delta.get(stat)
        if dx is None or dy is None or not dx.n or not dy.n:
            continue
        points.append(ParetoPoint(arm, dx.mean, dy.mean, dx.ci, dy.ci))
    return points


# The rare buckets of the figure (buckets of ten, as in every character-level recipe), when present.
PREFERRED_RARE = ("rank_41-50", "rank_51-60")


def pareto_groups(results: Mapping[str, Any]) -> tuple[str | None, list[str]]:
    """The x group (the most frequent rank bucket) and the y groups: ranks 41-50 and 51-60 when both have eval
    tokens, else the rare headline bucket and the next rarer rank bucket that has eval tokens; then every
    language but the largest (the simulation's small language)."""
    info = group_info(results)
    ranks = [name for name, meta in info.items() if meta.get("kind") == "rank"]
    if not ranks:
        return None, []
    present = [g for g in ranks[1:] if (final_tokens(results, g) or 0) > 0]
    if all(g in present for g in PREFERRED_RARE):
        y_groups = list(PREFERRED_RARE)
    else:
        rare = [g for g in headline_groups(results) if g in ranks[1:]]
        y_groups = rare + [g for g in present[present.index(rare[0]) + 1 :]][:1] if rare else []
    languages = [name for name, meta in info.items() if meta.get("kind") == "language"]
    if len(languages) > 1:
        sizes = {g: final_tokens(results, g) or 0 for g in languages}
        largest = max(languages, key=lambda g: sizes[g])
        y_groups += [g for g in languages if g != largest]
    return ranks[0], y_groups


def main_language(results: Mapping[str, Any], rows: Sequence[SubsetRow]) -> str | None:
    """The main language of a mix: the recipe's ``bible_main`` when it is an evaluated language, else the language
    with the most eval tokens; ``None`` below two languages (no trade-off between languages)."""
    if len(rows) < 2:
        return None
    names = [row.name for row in rows]
    main = (results.get("recipe") or {}).get("bible_main")
    return main if main in names else max(rows, key=lambda row: row.tokens or 0).name


def language_pareto_points(rows: Sequence[SubsetRow], x_language: str, y_language: str) -> list[ParetoPoint]:
    """The trade-off between languages, one point per arm: x = the change of ``x_language``'s bits per character
    against the rows' reference arm, y = ``y_language``'s (paired by seed, 95% intervals); the reference arm at
    (0, 0). ``rows``: :func:`~hf_selfish.reporting.subsets.subset_rows` of one comparison."""
    by_name = {row.name: row for row in rows}
    for name in (x_language, y_language):
        if name not in by_name:
            raise ValueError(f"no language {name!r} in the comparison; its languages are {sorted(by_name)}")
    x_row, y_row = by_name[x_language], by_name[y_language]
    arms = list(x_row.arms)  # the reference arm first
    points = [ParetoPoint(arms[0], 0.0, 0.0)]
    for arm in arms[1:]:
        dx, dy = x_row.delta[arm]["bits_per_char"], y_row.delta[arm]["bits_per_char"]
        if dx.n and dy.n:
            points.append(ParetoPoint(arm, dx.mean, dy.mean, dx.ci, dy.ci))
    return points
