"""nbcore.stats against closed forms, printed t tables and a published Welch example."""
import math

import numpy as np
import pytest

from nbcore import stats


# ---------------------------------------------------------------- incomplete beta
@pytest.mark.parametrize("a,b,x,want", [
    (1, 1, 0.3, 0.3),                       # uniform
    (2.5, 1, 0.4, 0.4 ** 2.5),              # I_x(a, 1) = x^a
    (1, 3.5, 0.2, 1 - 0.8 ** 3.5),          # I_x(1, b) = 1 - (1-x)^b
    (7.3, 7.3, 0.5, 0.5),                   # symmetry
    (2, 3, 0.25, 0.26171875),               # polynomial: sum_{j=2}^{4} C(4,j) x^j (1-x)^(4-j)
    (0.5, 0.5, 0.25, 1 / 3),                # arcsine law: (2/pi) asin(sqrt(x))
])
def test_betainc_closed_forms(a, b, x, want):
    assert stats.betainc(a, b, x) == pytest.approx(want, rel=1e-12, abs=1e-14)


def test_betainc_edges_and_symmetry():
    assert stats.betainc(3, 4, 0.0) == 0.0 and stats.betainc(3, 4, 1.0) == 1.0
    for a, b, x in [(0.7, 12.0, 0.05), (50, 60, 0.47), (200.5, 0.5, 0.999)]:
        assert stats.betainc(a, b, x) == pytest.approx(1 - stats.betainc(b, a, 1 - x), abs=1e-13)
    with pytest.raises(ValueError, match="a > 0 and b > 0"):
        stats.betainc(0, 1, 0.5)
    with pytest.raises(ValueError, match="0 <= x <= 1"):
        stats.betainc(1, 1, 1.5)


# ---------------------------------------------------------------- Student t
@pytest.mark.parametrize("t,df,p_one_sided", [
    (2.0, 5, 0.0510),     # the brief's check
    (2.015, 5, 0.05), (3.365, 5, 0.01), (4.032, 5, 0.005),   # t-table rows
    (1.812, 10, 0.05), (2.228, 10, 0.025), (2.764, 10, 0.01),
    (1.697, 30, 0.05), (2.457, 30, 0.01), (6.965, 2, 0.01), (31.821, 1, 0.01),
])
def test_t_table_values(t, df, p_one_sided):
    assert stats.t_sf(t, df) == pytest.approx(p_one_sided, abs=5e-5 if t != 2.0 else 5e-5)


def test_t_cdf_closed_forms():
    for t in (-3.0, -0.4, 0.0, 0.7, 5.0):
        assert stats.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-13)  # Cauchy
        assert stats.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-13)
    assert stats.t_sf(2.0, 5) == pytest.approx(0.050969739, abs=1e-9)
    assert stats.t_cdf(1.3, 1e7) == pytest.approx(stats.normal_cdf(1.3), abs=1e-6)
    assert stats.t_cdf(1.3, math.inf) == stats.normal_cdf(1.3)
    assert stats.t_cdf(math.inf, 3) == 1.0 and stats.t_cdf(-math.inf, 3) == 0.0


def test_t_cdf_fractional_df_against_numerical_integration():
    df, t = 7.3, 1.9
    xs = np.linspace(-60, t, 400_001)
    logc = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    pdf = np.exp(logc - (df + 1) / 2 * np.log1p(xs ** 2 / df))
    integral = float(np.sum((pdf[1:] + pdf[:-1]) / 2 * np.diff(xs)))
    tail = stats.t_sf(60, df)  # the part left of -60
    assert stats.t_cdf(t, df) == pytest.approx(integral + tail, abs=1e-8)


def test_t_ppf_inverts_the_cdf():
    assert stats.t_ppf(0.975, 10) == pytest.approx(2.228, abs=5e-4)
    assert stats.t_ppf(0.99, 5) == pytest.approx(3.365, abs=5e-4)
    for q, df in [(0.01, 3.5), (0.4, 12), (0.999, 2)]:
        assert stats.t_cdf(stats.t_ppf(q, df), df) == pytest.approx(q, abs=1e-10)
    with pytest.raises(ValueError):
        stats.t_ppf(1.0, 3)


# ---------------------------------------------------------------- Welch
A1 = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4]
A2 = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4]


def test_welch_matches_the_published_example():
    """Wikipedia's Welch's t-test example 1: t = -2.46, df = 24.99, two-sided p = 0.021."""
    r = stats.welch_test(A1, A2, "less")
    assert r.t == pytest.approx(-2.4554, abs=1e-4) and r.df == pytest.approx(24.9885, abs=1e-3)
    assert 2 * r.p == pytest.approx(0.0214, abs=1e-3)
    g = stats.welch_test(A1, A2, "greater")
    assert g.p == pytest.approx(1 - r.p, abs=1e-12)


def test_welch_by_hand():
    x, y = [3.20, 3.22, 3.21], [3.30, 3.26, 3.29, 3.31]
    vx, vy = np.var(x, ddof=1) / 3, np.var(y, ddof=1) / 4
    t = (np.mean(x) - np.mean(y)) / math.sqrt(vx + vy)
    df = (vx + vy) ** 2 / (vx ** 2 / 2 + vy ** 2 / 3)
    r = stats.welch_test(x, y)
    assert (r.t, r.df) == pytest.approx((t, df), rel=1e-12)
    assert r.p == pytest.approx(stats.t_cdf(t, df), rel=1e-12) and r.significant(0.01)
    assert r.to_dict()["diff"] == pytest.approx(np.mean(x) - np.mean(y))


def test_welch_edge_cases():
    assert stats.welch_test([1.0, 1.0], [2.0, 2.0]).p == 0.0       # no spread, right direction
    assert stats.welch_test([3.0, 3.0], [2.0, 2.0]).p == 1.0
    assert stats.welch_test([2.0, 2.0], [2.0, 2.0]).p == 0.5
    with pytest.raises(ValueError, match="at least 2 seeds per group"):
        stats.welch_test([1.0], [2.0, 3.0])
    with pytest.raises(ValueError, match="'less' or 'greater'"):
        stats.welch_test([1, 2], [2, 3], "two-sided")


def test_seeds_needed():
    # 3 seeds each, means 0.02 apart with std 0.01: p ~ 0.03 now
    m = dict(mean_x=3.28, std_x=0.01, mean_y=3.30, std_y=0.01)
    now = stats.welch_from_stats(m["mean_x"], 0.01, 3, m["mean_y"], 0.01, 3).p
    assert 0.01 < now < 0.05
    k = stats.seeds_needed(n_x=3, n_y=3, **m)
    assert k >= 1
    assert stats.welch_from_stats(3.28, 0.01, 3 + k, 3.30, 0.01, 3 + k).p < 0.01
    assert stats.welch_from_stats(3.28, 0.01, 3 + k - 1, 3.30, 0.01, 3 + k - 1).p >= 0.01  # the smallest
    assert stats.seeds_needed(n_x=30, n_y=30, **m) == 0
    assert stats.seeds_needed(3.30, 0.01, 3, 3.28, 0.01, 3) is None      # wrong direction
    assert stats.seeds_needed(3.28, 0.01, 3, 3.30, 0.01, 3, alternative="greater") is None
    assert stats.seeds_needed(3.2999999, 1.0, 3, 3.30, 1.0, 3, max_extra=100) is None  # hopeless
    with pytest.raises(ValueError, match="at least 2 seeds"):
        stats.seeds_needed(3.28, 0.01, 1, 3.30, 0.01, 3)


def test_mean_std_and_ci():
    assert stats.mean_std([1.0, 2.0, None, float("nan"), 3.0]) == (2.0, 1.0, 3)
    assert stats.mean_std([5.0]) == (5.0, 0.0, 1)
    lo, hi = stats.mean_ci([1.0, 2.0, 3.0])
    half = stats.t_ppf(0.975, 2) * 1.0 / math.sqrt(3)
    assert (lo, hi) == pytest.approx((2 - half, 2 + half)) and half == pytest.approx(4.303 / math.sqrt(3), abs=1e-3)


# ---------------------------------------------------------------- Wilson
def test_wilson_interval_reference_values():
    assert stats.wilson_interval(7, 10) == pytest.approx((0.3968, 0.8922), abs=1e-4)
    assert stats.wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert stats.wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    lo, hi = stats.wilson_interval(50, 100)
    assert lo == pytest.approx(1 - hi) and lo == pytest.approx(0.4038, abs=1e-4)
    lo, hi = stats.wilson_interval(2.5, 5)  # fractional successes (ties as halves) work
    assert lo == pytest.approx(1 - hi) and lo == pytest.approx(0.1704, abs=1e-4)
    with pytest.raises(ValueError, match="n > 0"):
        stats.wilson_interval(0, 0)
    with pytest.raises(ValueError, match="lie in"):
        stats.wilson_interval(11, 10)
