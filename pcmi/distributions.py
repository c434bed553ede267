"""Distributions over a finite set, held as log-probability arrays (−inf for zero mass)."""
from __future__ import annotations

import numpy as np

from .errors import PcmiInputError

NORMALIZATION_TOL = 1e-6


def logsumexp(a, axis=None, keepdims: bool = False):
    """log Σ exp(a) over `axis` (scipy.special.logsumexp's values for real input, without its
    per-call overhead): −inf where every term is −inf, +inf where one is +inf, NaN propagates."""
    a = np.asarray(a, dtype=float)
    if a.size == 0:
        out = np.full(np.sum(a, axis=axis, keepdims=keepdims).shape, -np.inf)
        return out if out.ndim else float(out)
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        out = np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True)) + m
    if not keepdims:
        out = np.squeeze(out, axis=axis) if axis is not None else out.reshape(())
    return out if out.ndim else out[()]


def safe_log(x) -> np.ndarray:
    """log x with log 0 = −inf and no warning."""
    with np.errstate(divide="ignore"):
        return np.log(np.asarray(x, dtype=float))


def log_normalize(logw: np.ndarray, axis: int = -1) -> np.ndarray:
    """log(w / Σ w) from log w; raises if every weight is zero."""
    logw = np.asarray(logw, dtype=float)
    if np.isnan(logw).any():
        raise PcmiInputError("NaN in log-weights")
    z = logsumexp(logw, axis=axis, keepdims=True)
    if not np.all(np.isfinite(z)):
        raise PcmiInputError("cannot normalize: every weight is zero (or one is +inf)")
    return logw - z


def check_probs(p, name: str = "distribution", *, axis: int = -1) -> np.ndarray:
    """Validate probabilities (finite, ≥ 0, summing to 1 within 1e-6) and return their logs."""
    try:
        p = np.asarray(p, dtype=float)
    except (TypeError, ValueError):
        raise PcmiInputError(f"{name} must be an array of numbers") from None
    if p.size == 0:
        raise PcmiInputError(f"{name} is empty")
    if np.isnan(p).any():
        raise PcmiInputError(f"{name} contains NaN")
    if not np.isfinite(p).all():
        raise PcmiInputError(f"{name} contains an infinite value")
    if (p < 0).any():
        raise PcmiInputError(f"{name} has a negative probability ({p.min():g})")
    s = p.sum(axis=axis)
    bad = np.abs(s - 1) > NORMALIZATION_TOL
    if np.any(bad):
        worst = float(np.ravel(s)[np.argmax(np.ravel(np.abs(s - 1)))])
        raise PcmiInputError(f"{name} is not normalized (sums to {worst:.9g})")
    q = p / np.expand_dims(s, axis)
    with np.errstate(divide="ignore"):
        return np.log(q, out=q)


def float_array(x, name: str, ndim: int | None = None) -> np.ndarray:
    """x as a float array; PcmiInputError (one line) if it is ragged, not numeric or of another rank."""
    try:
        a = np.asarray(x, dtype=float)
    except (TypeError, ValueError):
        raise PcmiInputError(f"{name} must be a rectangular array of numbers") from None
    if ndim is not None and a.ndim != ndim:
        raise PcmiInputError(f"{name} must have {ndim} dimension(s), got shape {a.shape}")
    return a


def check_log_probs(logp, name: str = "distribution", *, axis: int = -1) -> np.ndarray:
    """Validate log-probabilities (no NaN, no +inf, normalized within 1e-6) and renormalize."""
    logp = float_array(logp, name)
    if np.isnan(logp).any():
        raise PcmiInputError(f"{name} contains NaN")
    if (logp == np.inf).any():
        raise PcmiInputError(f"{name} contains +inf")
    if logp.ndim == 2 and axis in (-1, 1):  # row blocks: temporaries of ~2^20 entries, not of the whole matrix
        step = max(1, (1 << 20) // max(logp.shape[1], 1))
        z = np.concatenate([logsumexp(logp[lo:lo + step], axis=1) for lo in range(0, len(logp), step)] or
                           [np.zeros(0)])[:, None]
    else:
        z = logsumexp(logp, axis=axis, keepdims=True)
    if np.any(np.abs(np.expm1(z)) > NORMALIZATION_TOL):
        raise PcmiInputError(f"{name} is not normalized (log-sum {float(np.ravel(z)[0]):.9g})")
    return logp - z


def prob_of(log_p):
    """p = exp(log p) clipped to [0, 1]: a probability leaving log space (exp of a logsumexp
    can round to 1 + 1e-16). A float for a scalar, an array otherwise."""
    p = np.clip(np.exp(np.asarray(log_p, dtype=float)), 0.0, 1.0)
    return float(p) if p.ndim == 0 else p


def probs(logp) -> np.ndarray:
    """exp(log p) elementwise, clipped to [0, 1]: `prob_of`, always as an array."""
    return np.asarray(prob_of(logp))


def entropy(logp) -> float:
    """H(p) = −Σ p log p in nats (0·log 0 = 0)."""
    logp = np.asarray(logp, dtype=float)
    m = np.isfinite(logp)
    return float(-np.sum(np.exp(logp[m]) * logp[m]))


def kl(logp, logq) -> float:
    """KL(p ‖ q) = Σ p (log p − log q); +inf if p puts mass where q has none."""
    logp, logq = np.asarray(logp, float), np.asarray(logq, float)
    m = np.isfinite(logp)
    if np.any(~np.isfinite(logq[m])):
        return float("inf")
    return float(np.sum(np.exp(logp[m]) * (logp[m] - logq[m])))


def total_variation(logp, logq) -> float:
    """TV(p, q) = ½ Σ |p − q|."""
    return float(0.5 * np.abs(probs(logp) - probs(logq)).sum())


def condition(logp, mask) -> np.ndarray:
    """log p(· | mask): p restricted to `mask` and renormalized."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any() or not np.isfinite(logsumexp(np.asarray(logp)[mask])):
        raise PcmiInputError("conditioning event has probability zero")
    out = np.where(mask, logp, -np.inf)
    return out - logsumexp(out)
