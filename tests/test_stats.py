"""nbcore.stats (on scipy) against closed forms, printed t tables, a published Welch example and the
speedrun's own published numbers (Modded-NanoGPT README and records)."""
import math

import numpy as np
import pytest

from nbcore import stats


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


# ---------------------------------------------------------------- scipy, bootstrap, effect size
def test_welch_is_scipys_welch():
    from scipy import stats as sps

    r = stats.welch_test(A1, A2, "less")
    ref = sps.ttest_ind(A1, A2, equal_var=False, alternative="less")
    assert r.t == pytest.approx(ref.statistic, rel=1e-12) and r.p == pytest.approx(ref.pvalue, rel=1e-12)
    lo, hi = r.ci()
    assert lo < r.diff < hi and (hi - lo) / 2 == pytest.approx(stats.t_ppf(0.975, r.df) * r.se)
    assert r.to_dict()["welch_ci95"] == [lo, hi]


def test_bootstrap_interval_is_seeded_and_agrees_with_welch_on_clean_data():
    rng = np.random.default_rng(0)
    x, y = rng.normal(3.20, 0.01, 40), rng.normal(3.25, 0.01, 40)
    a = stats.bootstrap_diff_ci(x, y)
    assert a == stats.bootstrap_diff_ci(x, y)                   # same seed, same interval
    assert a != stats.bootstrap_diff_ci(x, y, seed=1)
    lo, hi = a
    wlo, whi = stats.welch_test(x, y).ci()
    assert lo < np.mean(x) - np.mean(y) < hi
    assert lo == pytest.approx(wlo, abs=0.002) and hi == pytest.approx(whi, abs=0.002)
    with pytest.raises(ValueError, match="at least 2 values"):
        stats.bootstrap_diff_ci([1.0], [1.0, 2.0])


def test_effect_size_is_hedges_g():
    x, y = [3.20, 3.22, 3.21], [3.30, 3.26, 3.29, 3.31]
    sp = math.sqrt((2 * np.var(x, ddof=1) + 3 * np.var(y, ddof=1)) / 5)
    want = (np.mean(x) - np.mean(y)) / sp * (1 - 3 / (4 * 7 - 9))
    assert stats.effect_size(x, y) == pytest.approx(want, rel=1e-12) and want < -3
    with pytest.raises(ValueError, match="at least 2"):
        stats.effect_size([1.0], [1.0, 2.0])


# ---------------------------------------------------------------- the speedrun's rules
# Final val losses of a main-track record (Modded-NanoGPT, records/track_1_short/2025-01-04_SoftCap):
# the README there reports p = 0.0003 from a one-sided one-sample t-test against 3.28, mean 3.2777, std 0.0040.
SOFTCAP = [3.2759, 3.2781, 3.2791, 3.2771, 3.2838, 3.2749, 3.2793, 3.279, 3.2794, 3.2744, 3.2751,
           3.2845, 3.2736, 3.2783, 3.2793, 3.2779, 3.2756, 3.281, 3.2803, 3.2766, 3.2851, 3.275,
           3.2778, 3.2723, 3.2842, 3.2735, 3.275, 3.2796, 3.2782, 3.2758, 3.2763, 3.2751, 3.2791,
           3.2804, 3.2725, 3.2898, 3.2718, 3.2764, 3.271, 3.2745]


def test_main_track_one_sample_t_test_reproduces_the_record():
    r = stats.one_sample_test(SOFTCAP, 3.28)
    assert round(r.p, 4) == 0.0003 and r.passed and r.alpha == 0.01
    assert r.mean == pytest.approx(3.2777, abs=5e-5) and r.sigma == pytest.approx(0.0040, abs=5e-5) and r.n == 40
    assert not stats.one_sample_test(SOFTCAP[:3], 3.28).passed  # 3 runs around 3.2777 are not enough
    with pytest.raises(ValueError, match="at least 2 runs"):
        stats.one_sample_test([3.27], 3.28)


def test_optimisation_track_z_test_with_the_stated_sigma():
    # the README's examples: one run below ~3.276 passes, four runs need a mean below ~3.278
    assert stats.z_test_vs_target([3.2755], 3.28).passed and not stats.z_test_vs_target([3.2765], 3.28).passed
    assert stats.z_test_vs_target([3.2770, 3.2786, 3.2775, 3.2781], 3.28).passed        # mean 3.2778
    assert not stats.z_test_vs_target([3.2775, 3.2790, 3.2780, 3.2783], 3.28).passed    # mean 3.2782
    r = stats.z_test_vs_target([3.2760], 3.28, sigma=0.0013)
    assert r.statistic == pytest.approx(0.004 / 0.0013) and r.p == pytest.approx(0.5 * math.erfc(r.statistic / math.sqrt(2)))


def test_optimisation_track_pairwise_rule_reproduces_the_readme():
    # #12 (3.2790, n=20, 3325 steps) against #6 (3.2788, n=20, 3375 steps): 0.00648 >= 0.004, better
    r = stats.step_adjusted_z_test(3.2790, 20, 3325, 3.2788, 20, 3375)
    assert r["advantage_per_scale"] == pytest.approx(0.00648, abs=5e-6) and r["passed"]
    # #13 (3.2785, n=10, 3210) against #8 (3.2778, n=16, 3250): 0.0027, not better
    r = stats.step_adjusted_z_test(3.2785, 10, 3210, 3.2778, 16, 3250)
    assert r["advantage_per_scale"] == pytest.approx(0.0027, abs=5e-5) and not r["passed"]
    # #11 against #9: 25 fewer steps but 0.0014 more loss, worth about 31 steps
    r = stats.step_adjusted_z_test(3.2785, 16, 3225, 3.2771, 8, 3250)
    assert -r["steps_equivalent"] == pytest.approx(31, abs=0.5) and r["advantage"] < 0
