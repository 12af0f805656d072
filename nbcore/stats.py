"""Statistics for comparing runs, on `scipy.stats` (06_compare derives Welch's test by hand to teach it).

- `welch_test(x, y, alternative)`: Welch's unequal-variance t-test (scipy's `ttest_ind`,
  `equal_var=False`), one-sided by default, for "the experiment's val loss is lower than the
  baseline's" over seeds.
- `bootstrap_diff_ci(x, y)`: a percentile bootstrap interval for mean(x) - mean(y), seeded,
  10,000 resamples: a second opinion next to Welch's interval that assumes no normality.
- `effect_size(x, y)`: Hedges' g, the difference of means in pooled standard deviations.
- `seeds_needed(...)`: how many more seeds per group would reach p < alpha if the means and
  standard deviations stayed as they are now (a planning number, not a promise).
- The speedrun community's rules (Modded-NanoGPT), written out here:
  * `one_sample_test(values, target)`: the main track. A record's runs must show, with a
    one-sided one-sample t-test, that their mean val loss is below the target (3.28 there):
    p < 0.01 (`SPEEDRUN_ALPHA`).
  * `z_test_vs_target(values, target, sigma)`: the optimisation track. The seed-to-seed
    standard deviation is *stated*, not estimated (sigma = 0.0013 there), and a one-sided z-test
    must reach p < 0.001, i.e. (target - mean) * sqrt(n) >= 3.09 sigma (about 0.004).
  * `step_adjusted_z_test(...)`: the optimisation track's pairwise rule. Two setups that stop at
    different step counts are compared in loss: each step saved is worth `loss_per_step` of
    val loss (0.0045 per 100 steps there), so the new setup's advantage is
    (mean_old - mean_new) + (steps_old - steps_new) * loss_per_step, tested with the same
    stated sigma over sqrt(1/n_new + 1/n_old).
- `wilson_interval(successes, n)`: the 95% interval of a win rate (better than the normal
  approximation at small n and near 0 or 1).
"""
import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps

Z95 = 1.959963984540054  # two-sided 95% point of the standard normal
SPEEDRUN_ALPHA = 0.01           # main track: one-sample t-test of the mean val loss against the target
OPT_TRACK_SIGMA = 0.0013        # optimisation track: the stated seed-to-seed std of the final val loss
OPT_TRACK_ALPHA = 0.001         # ... and its one-sided level (z >= 3.09)
OPT_TRACK_LOSS_PER_STEP = 0.0045 / 100  # ... and what one step is worth in val loss near the target
BOOTSTRAP_RESAMPLES = 10_000


# ---------------------------------------------------------------- distributions (scipy)
def normal_cdf(z: float) -> float:
    return float(sps.norm.cdf(z))


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom (fractional df allowed, as in Welch's test)."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if math.isinf(df):
        return normal_cdf(t)
    return float(sps.t.cdf(t, df))


def t_sf(t: float, df: float) -> float:
    """P(T > t): the one-sided p-value of an observed t."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    return float(sps.norm.sf(t)) if math.isinf(df) else float(sps.t.sf(t, df))


def t_ppf(q: float, df: float) -> float:
    """The t with P(T <= t) = q."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"t_ppf needs 0 < q < 1, got {q}")
    return float(sps.t.ppf(q, df))


# ---------------------------------------------------------------- summaries
def _clean(values) -> np.ndarray:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    return v[~np.isnan(v)]


def mean_std(values) -> tuple[float, float, int]:
    """(mean, sample standard deviation (ddof=1; 0 for one value), count), ignoring NaN."""
    v = _clean(values)
    if v.size == 0:
        return math.nan, math.nan, 0
    std = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return float(v.mean()), std, int(v.size)


def mean_ci(values, level: float = 0.95) -> tuple[float, float]:
    """Two-sided t interval for the mean of `values` (needs at least two)."""
    m, s, n = mean_std(values)
    if n < 2:
        raise ValueError(f"a confidence interval needs at least 2 values, got {n}")
    half = t_ppf(0.5 + level / 2.0, n - 1) * s / math.sqrt(n)
    return m - half, m + half


# ---------------------------------------------------------------- Welch's t-test
@dataclass
class WelchResult:
    """One-sided Welch test of `alternative` for mean(x) against mean(y)."""
    t: float            # (mean_x - mean_y) / se
    df: float           # Welch-Satterthwaite degrees of freedom
    p: float            # one-sided p-value for `alternative`
    alternative: str    # "less": mean(x) < mean(y); "greater": mean(x) > mean(y)
    mean_x: float
    mean_y: float
    std_x: float
    std_y: float
    n_x: int
    n_y: int

    @property
    def diff(self) -> float:
        return self.mean_x - self.mean_y

    @property
    def se(self) -> float:
        return math.sqrt(self.std_x ** 2 / self.n_x + self.std_y ** 2 / self.n_y)

    def ci(self, level: float = 0.95) -> tuple[float, float]:
        """Two-sided Welch interval for mean(x) - mean(y)."""
        if self.se == 0.0:
            return self.diff, self.diff
        half = t_ppf(0.5 + level / 2.0, self.df) * self.se
        return self.diff - half, self.diff + half

    def significant(self, alpha: float = 0.01) -> bool:
        return self.p < alpha

    def to_dict(self) -> dict:
        lo, hi = self.ci()
        return {**asdict(self), "diff": self.diff, "welch_ci95": [lo, hi]}


def welch_from_stats(mean_x, std_x, n_x, mean_y, std_y, n_y, alternative: str = "less") -> WelchResult:
    """Welch's test from summary numbers (means, sample standard deviations, counts), via scipy."""
    if alternative not in ("less", "greater"):
        raise ValueError(f"alternative must be 'less' or 'greater', got {alternative!r}")
    if n_x < 2 or n_y < 2:
        raise ValueError(f"Welch's test needs at least 2 seeds per group, got {n_x} and {n_y}: "
                         "run more seeds of each (e.g. -p seed 1, -p seed 2 ...)")
    vx, vy = std_x ** 2 / n_x, std_y ** 2 / n_y
    diff = mean_x - mean_y
    sign = 1.0 if alternative == "greater" else -1.0
    if vx + vy == 0.0:  # no spread at all: the sign of the difference decides (scipy returns NaN here)
        t = math.copysign(math.inf, diff) if diff != 0 else 0.0
        df = float(n_x + n_y - 2)
        p = 0.0 if sign * diff > 0 else (1.0 if sign * diff < 0 else 0.5)
    else:
        res = sps.ttest_ind_from_stats(mean_x, std_x, n_x, mean_y, std_y, n_y, equal_var=False,
                                       alternative=alternative)
        t, p = float(res.statistic), float(res.pvalue)
        df = (vx + vy) ** 2 / (vx ** 2 / (n_x - 1) + vy ** 2 / (n_y - 1))
    return WelchResult(t=t, df=df, p=p, alternative=alternative, mean_x=mean_x, mean_y=mean_y,
                       std_x=std_x, std_y=std_y, n_x=int(n_x), n_y=int(n_y))


def welch_test(x, y, alternative: str = "less") -> WelchResult:
    """One-sided Welch t-test on two samples (e.g. final val loss of each seed).

    alternative="less" tests the claim mean(x) < mean(y) (x = experiment, y = baseline, lower is better).
    """
    mx, sx, nx = mean_std(x)
    my, sy, ny = mean_std(y)
    return welch_from_stats(mx, sx, nx, my, sy, ny, alternative)


def seeds_needed(mean_x, std_x, n_x, mean_y, std_y, n_y, alpha: float = 0.01,
                 alternative: str = "less", max_extra: int = 10_000) -> int | None:
    """Further seeds per group (added to both) until p < alpha, if means and stds stay as they are.

    0 when the claim already holds at `alpha`; None when no number of seeds would do it
    (the difference points the wrong way or is zero) or more than `max_extra` would be needed.
    """
    def p_at(k):
        return welch_from_stats(mean_x, std_x, n_x + k, mean_y, std_y, n_y + k, alternative).p

    if n_x < 2 or n_y < 2:
        raise ValueError(f"estimating the seeds needed takes at least 2 seeds per group to measure the "
                         f"spread, got {n_x} and {n_y}")
    diff = mean_x - mean_y
    if (alternative == "less" and not diff < 0) or (alternative == "greater" and not diff > 0):
        return None
    if p_at(0) < alpha:
        return 0
    # p falls monotonically as k grows: bound it by doubling, then bisect
    hi = 1
    while p_at(hi) >= alpha:
        hi *= 2
        if hi > 2 * max_extra:
            return None
    lo = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if p_at(mid) < alpha:
            hi = mid
        else:
            lo = mid
    return hi if hi <= max_extra else None


# ---------------------------------------------------------------- bootstrap and effect size
def bootstrap_diff_ci(x, y, level: float = 0.95, n_resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval for mean(x) - mean(y): each group resampled with replacement
    on its own, `n_resamples` times, from a generator seeded with `seed` (the same call gives the
    same interval). With 2-3 seeds per group it is narrow and optimistic: read it next to Welch's."""
    x, y = _clean(x), _clean(y)
    if x.size < 2 or y.size < 2:
        raise ValueError(f"a bootstrap interval needs at least 2 values per group, got {x.size} and {y.size}")
    res = sps.bootstrap((x, y), lambda a, b, axis=-1: a.mean(axis=axis) - b.mean(axis=axis),
                        n_resamples=n_resamples, confidence_level=level, method="percentile",
                        vectorized=True, rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def effect_size(x, y) -> float:
    """Hedges' g: (mean(x) - mean(y)) / pooled std, with the small-sample correction
    1 - 3 / (4 (n_x + n_y) - 9). |g| ~ 0.2 small, 0.5 medium, 0.8 large (Cohen's rough guide)."""
    mx, sx, nx = mean_std(x)
    my, sy, ny = mean_std(y)
    if nx < 2 or ny < 2:
        raise ValueError(f"an effect size needs at least 2 values per group, got {nx} and {ny}")
    pooled = math.sqrt(((nx - 1) * sx ** 2 + (ny - 1) * sy ** 2) / (nx + ny - 2))
    if pooled == 0.0:
        return math.copysign(math.inf, mx - my) if mx != my else 0.0
    return (mx - my) / pooled * (1.0 - 3.0 / (4.0 * (nx + ny) - 9.0))


# ---------------------------------------------------------------- the speedrun's rules
@dataclass
class TargetTest:
    """A one-sided test of "the mean is below `target`" (or above, for `alternative="greater"`)."""
    rule: str
    statistic: float    # t or z
    p: float
    alpha: float
    mean: float
    n: int
    target: float
    sigma: float        # the stated sigma (z-tests) or the sample std (t-test)

    @property
    def passed(self) -> bool:
        return self.p < self.alpha

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def one_sample_test(values, target: float, alternative: str = "less", alpha: float = SPEEDRUN_ALPHA) -> TargetTest:
    """The main track's rule: one-sided one-sample t-test of mean(values) < target (scipy's ttest_1samp)."""
    m, s, n = mean_std(values)
    if n < 2:
        raise ValueError(f"a one-sample t-test needs at least 2 runs, got {n}")
    if s == 0.0:
        p = 0.0 if (m < target) == (alternative == "less") and m != target else 1.0
        stat = math.copysign(math.inf, m - target) if m != target else 0.0
    else:
        r = sps.ttest_1samp(_clean(values), target, alternative=alternative)
        stat, p = float(r.statistic), float(r.pvalue)
    return TargetTest("one-sided one-sample t-test", stat, p, alpha, m, n, target, s)


def z_test_vs_target(values, target: float, sigma: float = OPT_TRACK_SIGMA, alpha: float = OPT_TRACK_ALPHA) -> TargetTest:
    """The optimisation track's rule: z = (target - mean) sqrt(n) / sigma with a *stated* sigma;
    passes when the one-sided p < alpha (z >= 3.09 at alpha = 0.001). One run may pass alone."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 (the stated seed-to-seed std), got {sigma}")
    m, _, n = mean_std(values)
    if n < 1:
        raise ValueError("a z-test needs at least 1 run")
    z = (target - m) * math.sqrt(n) / sigma
    return TargetTest(f"one-sided z-test, stated sigma {sigma:g}", z, float(sps.norm.sf(z)), alpha, m, n, target, sigma)


def step_adjusted_z_test(mean_new, n_new, steps_new, mean_old, n_old, steps_old,
                         loss_per_step: float = OPT_TRACK_LOSS_PER_STEP, sigma: float = OPT_TRACK_SIGMA,
                         alpha: float = OPT_TRACK_ALPHA) -> dict:
    """The optimisation track's pairwise rule: is the new setup better than the old one, once the
    steps it saves are converted into val loss? Advantage in loss:
    (mean_old - mean_new) + (steps_old - steps_new) * loss_per_step; z = advantage / (sigma
    sqrt(1/n_new + 1/n_old)); better when the one-sided p < alpha."""
    if n_new < 1 or n_old < 1 or not sigma > 0:
        raise ValueError(f"need n_new, n_old >= 1 and sigma > 0, got {n_new}, {n_old}, {sigma}")
    loss_diff = mean_old - mean_new
    step_diff = (steps_old - steps_new) * loss_per_step
    adv = loss_diff + step_diff
    scale = math.sqrt(1.0 / n_new + 1.0 / n_old)
    z = adv / (sigma * scale)
    p = float(sps.norm.sf(z))
    return {"rule": "step-adjusted pairwise z-test", "loss_diff": loss_diff, "step_loss_diff": step_diff,
            "advantage": adv, "advantage_per_scale": adv / scale, "z": z, "p": p, "alpha": alpha,
            "sigma": sigma, "loss_per_step": loss_per_step, "passed": p < alpha,
            "steps_equivalent": (loss_diff / loss_per_step) if loss_per_step else math.nan}


# ---------------------------------------------------------------- win rates
def wilson_interval(successes: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion successes / n (successes may be fractional, e.g. ties as 1/2)."""
    if n <= 0:
        raise ValueError(f"a Wilson interval needs n > 0 trials, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n], got {successes} of {n}")
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


__all__ = ["normal_cdf", "t_cdf", "t_sf", "t_ppf", "mean_std", "mean_ci", "WelchResult", "welch_from_stats",
           "welch_test", "seeds_needed", "bootstrap_diff_ci", "effect_size", "TargetTest", "one_sample_test",
           "z_test_vs_target", "step_adjusted_z_test", "wilson_interval", "Z95", "SPEEDRUN_ALPHA",
           "OPT_TRACK_SIGMA", "OPT_TRACK_ALPHA", "OPT_TRACK_LOSS_PER_STEP", "BOOTSTRAP_RESAMPLES"]
