"""95 % bootstrap intervals over the (seed, prompt) units of a grid (scipy.stats.bootstrap).

A unit is one (seed, prompt) pair: its trained policy and its prediction. The interval of a
statistic (median or mean over units) resamples the units with replacement (percentile method,
`N_RESAMPLES` resamples, a fixed seed so that a rerun prints the same interval). Units of one seed
share a pretrained model, so they are not independent: the interval treats them as exchangeable
and is narrower than a two-level (seeds, then prompts) bootstrap would be; with 5 seeds a seed-level
bootstrap would have only 5 units, which the percentile method handles poorly.

    interval(v, "median")  →  (value, lo, hi)      value = the statistic on all units
    spearman_interval(a, b) →  (ρ, lo, hi)         paired: one resample draws the same units of a and b
"""
from __future__ import annotations

import numpy as np
from scipy import stats

from pcmi.errors import PcmiInputError

LEVEL = 0.95
N_RESAMPLES = 2000
SEED = 20261201
METHOD = "percentile"
STATISTICS = {"median": np.median, "mean": np.mean}


def _units(values, name="values") -> np.ndarray:
    v = np.asarray(values, float).ravel()
    if v.size == 0:
        raise PcmiInputError(f"{name}: no units to bootstrap")
    if not np.all(np.isfinite(v)):
        raise PcmiInputError(f"{name}: {int(np.sum(~np.isfinite(v)))} non-finite value(s) among {v.size} units")
    return v


def interval(values, statistic: str = "median", *, level: float = LEVEL, n_resamples: int = N_RESAMPLES,
             seed: int = SEED, method: str = METHOD) -> tuple[float, float, float]:
    """(statistic of the units, lower, upper): the `level` bootstrap interval over the units.
    All units equal (or one unit): the interval is that value (no resampling can move it)."""
    if statistic not in STATISTICS:
        raise PcmiInputError(f"unknown statistic {statistic!r}; expected one of {', '.join(STATISTICS)}")
    v = _units(values)
    f = STATISTICS[statistic]
    value = float(f(v))
    if v.size < 2 or np.ptp(v) == 0:
        return value, value, value
    res = stats.bootstrap((v,), lambda x, axis=-1: f(x, axis=axis), confidence_level=level,
                          n_resamples=n_resamples, method=method, vectorized=True,
                          rng=np.random.default_rng(seed))
    lo, hi = res.confidence_interval
    return value, float(lo), float(hi)


def spearman_rho(a, b, axis: int = -1):
    """Spearman ρ along `axis`: the Pearson correlation of the ranks (ties: average ranks); a constant
    side gives nan."""
    ra, rb = stats.rankdata(a, axis=axis), stats.rankdata(b, axis=axis)
    ra = ra - ra.mean(axis=axis, keepdims=True)
    rb = rb - rb.mean(axis=axis, keepdims=True)
    den = np.sqrt((ra * ra).sum(axis=axis) * (rb * rb).sum(axis=axis))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(axis=axis) / np.where(den > 0, den, 1.0), np.nan)


def spearman_interval(a, b, *, level: float = LEVEL, n_resamples: int = N_RESAMPLES,
                      seed: int = SEED) -> tuple[float, float, float]:
    """(Spearman ρ between paired units a, b, lower, upper): paired percentile bootstrap. A constant
    side has no rank correlation: (nan, nan, nan)."""
    a, b = _units(a, "a"), _units(b, "b")
    if a.size != b.size:
        raise PcmiInputError(f"spearman_interval: {a.size} units in a but {b.size} in b")
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan"), float("nan"), float("nan")
    rho = float(spearman_rho(a, b))

    def stat(x, y, axis=-1):
        return np.nan_to_num(spearman_rho(x, y, axis), nan=0.0)  # a resample with a constant side: no correlation

    res = stats.bootstrap((a, b), stat, paired=True, vectorized=True, confidence_level=level,
                          n_resamples=n_resamples, method="percentile", rng=np.random.default_rng(seed))
    lo, hi = res.confidence_interval
    return rho, float(lo), float(hi)


def fmt(v: tuple, digits: int = 3) -> str:
    """"value [lo, hi]"."""
    x, lo, hi = v
    if not np.isfinite(x):
        return "—"
    return f"{x:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
