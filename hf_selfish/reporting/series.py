"""Metrics along training over seeds: per-run series, their mean and range, and paired deltas to a baseline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..metric_names import finite_or_none

__all__ = ["mean_band", "metric_series", "paired_delta_series"]


def metric_series(
    runs: Sequence[Mapping[str, Any]], key: str, history: str = "history"
) -> tuple[np.ndarray, np.ndarray]:
    """``steps [S]`` and ``values [R, S]`` of ``key`` over the runs' histories (NaN where a run lacks it)."""
    per_run = []
    for run in runs:
        points = {}
        for entry in run.get(history) or []:
            value = finite_or_none(entry.get(key))
            if entry.get("step") is not None and value is not None:
                points[entry["step"]] = value
        per_run.append(points)
    steps = np.array(sorted({s for points in per_run for s in points}), dtype=float)
    values = np.full((len(per_run), steps.size), np.nan)
    for r, points in enumerate(per_run):
        for s, step in enumerate(steps):
            values[r, s] = points.get(step, np.nan)
    return steps, values


def mean_band(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean, min, max over runs (axis 0) and the number of runs present, at each step (columns all-NaN stay NaN)."""
    present = np.isfinite(values).sum(axis=0)  # [S]
    safe = np.where(np.isfinite(values), values, 0.0)
    mean = np.where(present > 0, safe.sum(axis=0) / np.maximum(present, 1), np.nan)
    low = np.where(present > 0, np.where(np.isfinite(values), values, np.inf).min(axis=0), np.nan)
    high = np.where(present > 0, np.where(np.isfinite(values), values, -np.inf).max(axis=0), np.nan)
    return mean, low, high, present


def paired_delta_series(arm_runs: Sequence[Mapping[str, Any]], base_runs: Sequence[Mapping[str, Any]], key: str):
    """``steps [S]``, ``deltas [R, S]`` of arm - baseline: per seed when the seeds match, else of the means."""
    steps_a, values_a = metric_series(arm_runs, key)
    steps_b, values_b = metric_series(base_runs, key)
    common = np.intersect1d(steps_a, steps_b)
    a = values_a[:, np.isin(steps_a, common)]
    b = values_b[:, np.isin(steps_b, common)]
    if [r.get("seed") for r in arm_runs] == [r.get("seed") for r in base_runs]:
        return common, a - b
    return common, (mean_band(a)[0] - mean_band(b)[0])[None, :]
