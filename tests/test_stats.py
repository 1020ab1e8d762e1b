"""t quantiles and paired intervals (hf_selfish.reporting.stats) against printed tables and hand computation."""

from __future__ import annotations

import math

import pytest

from hf_selfish.reporting.stats import paired_interval, t_cdf, t_quantile

# Student's t, two-sided 95% and 99% critical values (any printed t table, e.g. NIST/SEMATECH e-Handbook 1.3.6.7.2)
T_TABLE = {
    1: (12.706, 63.657),
    2: (4.303, 9.925),
    3: (3.182, 5.841),
    4: (2.776, 4.604),
    5: (2.571, 4.032),
    9: (2.262, 3.250),
    10: (2.228, 3.169),
    20: (2.086, 2.845),
    30: (2.042, 2.750),
    100: (1.984, 2.626),
}


@pytest.mark.parametrize("df", sorted(T_TABLE))
def test_t_quantile_matches_the_table(df):
    q95, q99 = T_TABLE[df]
    assert t_quantile(0.975, df) == pytest.approx(q95, abs=6e-4)
    assert t_quantile(0.995, df) == pytest.approx(q99, abs=6e-4)


def test_t_quantile_closed_forms_and_symmetry():
    # df = 1 is the Cauchy distribution: quantile tan(pi (p - 1/2)); df = 2: (2p - 1) sqrt(2 / (4p(1 - p)))
    for p in (0.6, 0.9, 0.975, 0.999):
        assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)
        assert t_quantile(p, 2) == pytest.approx((2 * p - 1) * math.sqrt(2 / (4 * p * (1 - p))), rel=1e-9)
        assert t_quantile(1 - p, 7) == pytest.approx(-t_quantile(p, 7), rel=1e-12)
    assert t_quantile(0.5, 5) == pytest.approx(0.0, abs=1e-9)
    assert t_quantile(0.975, 1e6) == pytest.approx(1.959964, abs=1e-5)  # the normal limit
    assert t_cdf(0.0, 3) == pytest.approx(0.5)


@pytest.mark.parametrize("bad", [(0.0, 3), (1.0, 3), (0.5, 0), (0.975, -1)])
def test_t_quantile_refuses_bad_arguments(bad):
    with pytest.raises(ValueError):
        t_quantile(*bad)


def test_paired_interval_by_hand():
    # d = 1, 2, 3, 4, 5: mean 3, sd sqrt(2.5) = 1.5811; t(0.975, 4) = 2.7764 -> half width 2.7764 * 1.5811 / sqrt(5)
    ci = paired_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.776445 * math.sqrt(2.5) / math.sqrt(5)
    assert (ci.mean, ci.n) == (3.0, 5)
    assert ci.low == pytest.approx(3.0 - half, abs=1e-5) and ci.high == pytest.approx(3.0 + half, abs=1e-5)
    assert ci.low == pytest.approx(1.0367, abs=1e-4)  # 3 - 1.9633
    assert ci.significant
    # an interval across 0 is not significant, one entirely below 0 is
    assert not paired_interval([-1.0, 1.0, 0.5]).significant
    assert paired_interval([-0.5, -0.6, -0.55]).significant


def test_paired_interval_needs_two_values():
    assert paired_interval([]) is None
    assert paired_interval([0.3]) is None
    ci = paired_interval([0.2, 0.2])  # no spread: a point interval
    assert ci.low == ci.high == pytest.approx(0.2) and ci.significant
