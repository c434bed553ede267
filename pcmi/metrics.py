"""Metrics of a policy over Y(x) (theory.md §5), computed exactly from log π."""
from __future__ import annotations

import numpy as np

from .distributions import condition, entropy, prob_of, logsumexp
from .errors import PcmiInputError


def success(log_pi, reward) -> float:
    """p = Σ_y π(y) r(y), in [0, 1]."""
    m = np.asarray(reward) == 1
    return prob_of(logsumexp(np.asarray(log_pi)[m])) if m.any() else 0.0


def _check_k(k) -> np.ndarray:
    k = np.asarray(k)
    if np.any(k < 1) or np.any(k != np.floor(k)):
        raise PcmiInputError(f"k must be a positive integer, got {k!r}")
    return k.astype(float)


def pass_at_k(p, k) -> np.ndarray | float:
    """Exact pass@k = mean over prompts of 1 − (1 − p)^k, computed as −expm1(k·log1p(−p)).
    p: one success probability or one per prompt; k: int or array (result broadcast over k)."""
    p = np.atleast_1d(np.asarray(p, float))
    if np.any((p < 0) | (p > 1)) or np.isnan(p).any():
        raise PcmiInputError("success probabilities must lie in [0, 1]")
    k = _check_k(k)
    with np.errstate(divide="ignore"):
        vals = -np.expm1(np.multiply.outer(k, np.log1p(-p)))
    out = vals.mean(axis=-1)
    return float(out) if out.ndim == 0 else out


def pass_at_k_unbiased(n: int, c: int, k: int) -> float:
    """Chen et al. 2021: 1 − C(n−c, k)/C(n, k) = 1 − Π_{i=n−c+1}^{n} (1 − k/i); 1 if n − c < k."""
    if not (0 <= c <= n) or k < 1 or k > n:
        raise PcmiInputError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    i = np.arange(n - c + 1, n + 1, dtype=float)
    return float(-np.expm1(np.sum(np.log1p(-k / i))))


def expected_distinct_correct(log_pi, reward, k) -> np.ndarray | float:
    """E[# distinct correct rollouts in k samples] = Σ_{y: r=1} [1 − (1 − π(y))^k]."""
    lp = np.asarray(log_pi)[np.asarray(reward) == 1]
    k = _check_k(k)
    with np.errstate(divide="ignore"):
        vals = -np.expm1(np.multiply.outer(k, np.log1p(-prob_of(lp))))
    out = vals.sum(axis=-1)
    return float(out) if out.ndim == 0 else out


def correct_entropy(log_pi, reward) -> float:
    """H(π(· | r = 1)) in nats."""
    return entropy(condition(log_pi, np.asarray(reward) == 1))


def effective_correct(log_pi, reward) -> float:
    """exp H(π(· | r = 1)): the effective number of correct rollouts (Hill number of order 1)."""
    return float(np.exp(correct_entropy(log_pi, reward)))


def strategy_masses(log_pi, reward, route) -> dict:
    """π(route z | r = 1) for each route z among the correct rollouts."""
    lc = condition(log_pi, np.asarray(reward) == 1)
    route = np.asarray(route)
    return {int(z): prob_of(logsumexp(lc[route == z])) for z in np.unique(route[np.asarray(reward) == 1])}


def strategy_mass_entropy(log_pi, reward, route) -> float:
    """Entropy of the strategy masses π(z | r = 1) in nats (semantic diversity)."""
    m = np.array(list(strategy_masses(log_pi, reward, route).values()))
    m = m[m > 0]
    return float(-(m * np.log(m)).sum())


def ratio_distortion(log_pi, log_base, reward) -> float:
    """max over correct pairs |log π(y1)/π(y2) − log π0(y1)/π0(y2)| (0 iff ratios are kept)."""
    ok = (np.asarray(reward) == 1) & np.isfinite(log_base)
    d = np.asarray(log_pi)[ok] - np.asarray(log_base)[ok]
    if np.isneginf(d).any():
        return float("inf")
    return float(d.max() - d.min()) if d.size else 0.0


def ood_success(log_pi, reward, blocked) -> float:
    """Mass on correct rollouts that avoid the blocked edges (blocked: mask of rollouts using them)."""
    m = (np.asarray(reward) == 1) & ~np.asarray(blocked, bool)
    return prob_of(logsumexp(np.asarray(log_pi)[m])) if m.any() else 0.0


def ood_pass_at_k(log_pi, reward, blocked, k):
    return pass_at_k(ood_success(log_pi, reward, blocked), k)


def policy_metrics(log_pi, log_base, reward, route=None, blocked=None, ks=(1, 8, 64)) -> dict:
    """Every §5 metric of one policy on one prompt, as plain floats."""
    out = {"success": success(log_pi, reward)}
    for k in ks:
        out[f"pass@{k}"] = pass_at_k(out["success"], k)
    if out["success"] > 0:
        out["correct_entropy"] = correct_entropy(log_pi, reward)
        out["effective_correct"] = float(np.exp(out["correct_entropy"]))
        out["ratio_distortion"] = ratio_distortion(log_pi, log_base, reward)
        for k in ks:
            out[f"distinct_correct@{k}"] = expected_distinct_correct(log_pi, reward, k)
        if route is not None:
            out["strategy_masses"] = strategy_masses(log_pi, reward, route)
            out["strategy_mass_entropy"] = strategy_mass_entropy(log_pi, reward, route)
    if blocked is not None:
        out["ood_success"] = ood_success(log_pi, reward, blocked)
    return out
