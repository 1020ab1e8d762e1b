"""Confidence intervals over seeds: the paired-difference t interval.

For ``n`` paired differences ``d_1..d_n`` (arm − baseline, same seed = same init and data order) the 95%
interval is ``mean(d) ± t_{0.975, n-1} · sd(d) / √n`` (sd with ``ddof=1``); it needs two seeds or more. A
difference is *significant* when its interval excludes 0. The t distribution is scipy's.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["CONFIDENCE", "Interval", "paired_interval", "t_cdf", "t_quantile"]

CONFIDENCE = 0.95


def _check_df(df: float) -> None:
    if not df > 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df!r}")


def t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t as student_t  # scipy.stats takes ~0.3 s to import: only when reporting

    _check_df(df)
    return float(student_t.cdf(t, df))


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (``t_quantile(0.975, 4)`` = 2.7764)."""
    from scipy.stats import t as student_t

    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p!r}")
    _check_df(df)
    return float(student_t.ppf(p, df))


@dataclass(frozen=True)
class Interval:
    """A mean with its two-sided confidence interval over ``n`` values."""

    mean: float
    low: float
    high: float
    n: int
    level: float = CONFIDENCE

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return self.low > 0 or self.high < 0

    @property
    def half_width(self) -> float:
        return 0.5 * (self.high - self.low)

    def to_json(self) -> dict[str, float | int | bool]:
        return {"level": self.level, "low": self.low, "high": self.high, "n": self.n, "significant": self.significant}


def paired_interval(differences: Sequence[float], level: float = CONFIDENCE) -> Interval | None:
    """The t interval of the mean of paired differences; None below two values (no spread to estimate)."""
    n = len(differences)
    if n < 2:
        return None
    mean = statistics.fmean(differences)
    half = t_quantile(0.5 + level / 2.0, n - 1) * statistics.stdev(differences) / math.sqrt(n)
    return Interval(mean=mean, low=mean - half, high=mean + half, n=n, level=level)
