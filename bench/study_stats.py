"""The routing study's statistics, fixed before any run: paired t intervals, Holm, verdicts, flattening.

For one comparison (arm - reference, paired by seed, differences d_1..d_n in top-1 points)::

    mean, sd (sample), se = sd / sqrt(n), df = n - 1, q = t_{0.95, df}
    90 % interval [mean - q se, mean + q se]   (its ends are the one-sided 95 % bounds)
    p_gain   = P(T_df >= mean / se)            one-sided test of "no gain" (mean <= 0)
    p_short  = P(T_df <= (mean - 2) / se)      one-sided test of "a gain of 2 points or more"

Across the comparisons of one family (one dataset), both p-values are Holm-adjusted (step-down:
sorted ascending, p_(i) x (m - i + 1), made monotone, capped at 1). Verdicts:

    supports     mean >= 2 points and Holm-adjusted p_gain < 0.05  (the 95 % lower bound > 0, corrected)
    contradicts  Holm-adjusted p_short < 0.05                     (the 90 % upper bound < 2, corrected)
    inconclusive otherwise

The t distribution is scipy.stats.t when scipy imports, else the closed form for integer degrees of
freedom (Abramowitz & Stegun 26.7.3-4), inverted by bisection.
"""

from __future__ import annotations

import math
import statistics

MIN_GAIN = 2.0  # points: the smallest gain that counts as support
ALPHA = 0.05
FLAT_SLOPE = 0.2  # points per epoch: the dense holdout curve has flattened below this
FLAT_EPOCHS = 5  # ... fitted over this many last epochs


def t_cdf(x: float, df: int) -> float:
    """P(T_df <= x)."""
    try:
        from scipy.stats import t

        return float(t.cdf(x, df))
    except ImportError:
        return t_cdf_closed_form(x, df)


def t_cdf_closed_form(x: float, df: int) -> float:
    """P(T_df <= x) for integer df >= 1, by the finite series of A&S 26.7.3 (odd) / 26.7.4 (even)."""
    if df < 1 or int(df) != df:
        raise ValueError(f"df={df}: the closed form needs an integer >= 1")
    theta = math.atan2(x, math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2:  # A = (2 / pi) (theta + s (c + 2/3 c^3 + ... + (2 4 .. (df-3)) / (1 3 .. (df-2)) c^(df-2)))
        term, total = c, (c if df > 1 else 0.0)
        for k in range(3, df - 1, 2):
            term *= (k - 1) / k * c * c
            total += term
        a = 2 / math.pi * (theta + s * total)
    else:  # A = s (1 + 1/2 c^2 + 1 3 / (2 4) c^4 + ... + (1 3 .. (df-3)) / (2 4 .. (df-2)) c^(df-2))
        term = total = 1.0
        for k in range(2, df - 1, 2):
            term *= (k - 1) / k * c * c
            total += term
        a = s * total
    return 0.5 + a / 2  # A is P(|T| <= |x|) signed by x


def t_ppf(q: float, df: int) -> float:
    """The q quantile of T_df."""
    try:
        from scipy.stats import t

        return float(t.ppf(q, df))
    except ImportError:
        lo, hi = -1e3, 1e3
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if t_cdf_closed_form(mid, df) < q else (lo, mid)
        return (lo + hi) / 2


def paired(diffs: list[float], min_gain: float = MIN_GAIN) -> dict:
    """One comparison's numbers (module docstring); needs >= 2 differences."""
    n = len(diffs)
    if n < 2:
        raise ValueError(f"{n} paired differences: a t interval needs at least 2")
    mean, sd = statistics.mean(diffs), statistics.stdev(diffs)
    se, df = sd / math.sqrt(n), n - 1
    q = t_ppf(1 - ALPHA, df)
    if se == 0:  # every seed gave the same difference
        p_gain, p_short = float(mean <= 0), float(mean >= min_gain)
    else:
        p_gain, p_short = 1 - t_cdf(mean / se, df), t_cdf((mean - min_gain) / se, df)
    return {"n": n, "diffs": list(diffs), "mean": mean, "sd": sd, "se": se, "df": df, "t95": q,
            "lower90": mean - q * se, "upper90": mean + q * se, "p_gain": p_gain, "p_short": p_short}


def holm(pvalues: list[float]) -> list[float]:
    """Holm step-down adjusted p-values, in the input order."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def verdicts(comparisons: list[dict], min_gain: float = MIN_GAIN) -> list[dict]:
    """``paired`` results of one family -> the same dicts with p_gain_holm, p_short_holm, verdict."""
    gain = holm([c["p_gain"] for c in comparisons])
    short = holm([c["p_short"] for c in comparisons])
    out = []
    for c, pg, ps in zip(comparisons, gain, short):
        if c["mean"] >= min_gain and pg < ALPHA:
            v = "supports"
        elif ps < ALPHA:
            v = "contradicts"
        else:
            v = "inconclusive"
        out.append({**c, "p_gain_holm": pg, "p_short_holm": ps, "verdict": v})
    return out


def slope(values: list[float]) -> float:
    """Least-squares slope of ``values`` against 0, 1, 2, ... (points per epoch)."""
    n = len(values)
    if n < 2:
        raise ValueError("a slope needs at least 2 values")
    xm, ym = (n - 1) / 2, statistics.mean(values)
    return sum((i - xm) * (v - ym) for i, v in enumerate(values)) / sum((i - xm) ** 2 for i in range(n))


def flattened(curve: list[float]) -> dict:
    """The validity gate on a dense holdout curve (top-1 per epoch): slope over the last FLAT_EPOCHS."""
    if len(curve) < FLAT_EPOCHS:
        return {"slope": None, "flat": False}
    s = slope(curve[-FLAT_EPOCHS:])
    return {"slope": s, "flat": s < FLAT_SLOPE}
