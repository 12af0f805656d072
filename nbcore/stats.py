"""Statistics for comparing runs, from scratch with numpy and `math` (no scipy).

- `t_cdf(t, df)`: the Student-t distribution, through the regularised incomplete beta
  function `betainc(a, b, x)` (a continued fraction evaluated by the modified Lentz method).
- `welch_test(x, y, alternative)`: Welch's unequal-variance t-test, one-sided by default, for a
  claim like "the experiment's val loss is lower than the baseline's" over seeds.
  The speedrun asks for p < 0.01 before a record counts.
- `seeds_needed(...)`: how many more seeds per group would reach p < alpha if the means and
  standard deviations stayed as they are now (a planning number, not a promise).
- `wilson_interval(successes, n)`: the 95% interval of a win rate (better than the normal
  approximation at small n and near 0 or 1).
"""
import math
from dataclasses import asdict, dataclass

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% point of the standard normal


# ---------------------------------------------------------------- special functions
def betainc(a: float, b: float, x: float, eps: float = 1e-15, max_iter: int = 10_000) -> float:
    """Regularised incomplete beta I_x(a, b) = B(x; a, b) / B(a, b), for a, b > 0 and 0 <= x <= 1.

    The continued fraction converges fast for x < (a + 1) / (a + b + 2); beyond that we use
    the symmetry I_x(a, b) = 1 - I_{1-x}(b, a).
    """
    if not (a > 0 and b > 0):
        raise ValueError(f"betainc needs a > 0 and b > 0, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc needs 0 <= x <= 1, got x={x}")
    if x == 0.0 or x == 1.0:
        return float(x)
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - betainc(b, a, 1.0 - x, eps, max_iter)
    # x^a (1-x)^b / (a B(a, b)), in logs to stay finite for large a, b
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    front = math.exp(log_front) / a
    # 1 / (1 + d1 / (1 + d2 / (1 + ...))) with
    #   d_{2m}   =  m (b - m) x / ((a + 2m - 1)(a + 2m))
    #   d_{2m+1} = -(a + m)(a + b + m) x / ((a + 2m)(a + 2m + 1))
    tiny = 1e-300
    f, c, d = 1.0, 1.0, 0.0
    for i in range(max_iter + 1):
        m = i // 2
        if i == 0:
            num = 1.0
        elif i % 2 == 0:
            num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        cd = c * d
        f *= cd
        if abs(1.0 - cd) < eps:
            return front * (f - 1.0)
    raise ArithmeticError(f"betainc({a}, {b}, {x}) did not converge in {max_iter} steps")


def normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom (df may be fractional, as in Welch's test)."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    if math.isinf(df):
        return normal_cdf(t)
    # P(|T| > |t|) = I_{df / (df + t^2)}(df / 2, 1 / 2)
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_sf(t: float, df: float) -> float:
    """P(T > t): the one-sided p-value of an observed t."""
    return t_cdf(-t, df)


def t_ppf(q: float, df: float) -> float:
    """The t with P(T <= t) = q (bisection on `t_cdf`; accurate to ~1e-12)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"t_ppf needs 0 < q < 1, got {q}")
    if q == 0.5:
        return 0.0
    lo, hi = -1.0, 1.0
    while t_cdf(lo, df) > q:
        lo *= 2.0
    while t_cdf(hi, df) < q:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, abs(mid)):
            break
    return 0.5 * (lo + hi)


# ---------------------------------------------------------------- summaries
def mean_std(values) -> tuple[float, float, int]:
    """(mean, sample standard deviation (ddof=1; 0 for one value), count), ignoring NaN."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    v = v[~np.isnan(v)]
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

    def significant(self, alpha: float = 0.01) -> bool:
        return self.p < alpha

    def to_dict(self) -> dict:
        return {**asdict(self), "diff": self.diff}


def welch_from_stats(mean_x, std_x, n_x, mean_y, std_y, n_y, alternative: str = "less") -> WelchResult:
    """Welch's test from summary numbers (means, sample standard deviations, counts)."""
    if alternative not in ("less", "greater"):
        raise ValueError(f"alternative must be 'less' or 'greater', got {alternative!r}")
    if n_x < 2 or n_y < 2:
        raise ValueError(f"Welch's test needs at least 2 seeds per group, got {n_x} and {n_y}: "
                         "run more seeds of each (e.g. -p seed 1, -p seed 2 ...)")
    vx, vy = std_x ** 2 / n_x, std_y ** 2 / n_y
    se = math.sqrt(vx + vy)
    diff = mean_x - mean_y
    sign = 1.0 if alternative == "greater" else -1.0  # p = P(sign * T >= sign * t)
    if se == 0.0:  # no spread at all: the sign of the difference decides
        t = math.copysign(math.inf, diff) if diff != 0 else 0.0
        df = float(n_x + n_y - 2)
        p = 0.0 if sign * diff > 0 else (1.0 if sign * diff < 0 else 0.5)
    else:
        t = diff / se
        df = (vx + vy) ** 2 / (vx ** 2 / (n_x - 1) + vy ** 2 / (n_y - 1)) if (vx > 0 or vy > 0) else float(n_x + n_y - 2)
        p = t_sf(sign * t, df)
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


__all__ = ["betainc", "normal_cdf", "t_cdf", "t_sf", "t_ppf", "mean_std", "mean_ci", "WelchResult",
           "welch_from_stats", "welch_test", "seeds_needed", "wilson_interval", "Z95"]
