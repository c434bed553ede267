"""Optimal policies over Y(x) (theory.md §3). Each returns log π over the rollouts."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax, logsumexp

from .distributions import condition, log_normalize
from .errors import PcmiInputError
from .scores import expected_log_teacher_leaves, expected_pcmi
from .teachers import expected_log_teacher, mixture_log_teacher, token_mixture_log


def check_beta(beta) -> float:
    try:
        beta = float(beta)
    except (TypeError, ValueError):
        raise PcmiInputError(f"beta must be a number, got {beta!r}") from None
    if not np.isfinite(beta) or beta <= 0:
        raise PcmiInputError(f"beta must be a finite number > 0, got {beta!r}")
    return beta


def rl_optimum(log_base, reward, beta: float) -> np.ndarray:
    """argmax_π E_π[r] − β KL(π ‖ π0)  ⇒  π_RL ∝ π0 · exp(r / β)."""
    beta = check_beta(beta)
    r = np.asarray(reward, float)
    with np.errstate(over="ignore"):
        tilt = (r - r.max()) / beta  # ≤ 0, so tiny β sends wrong rollouts to −inf, never to NaN
    return log_normalize(np.asarray(log_base) + tilt)


def rl_limit(log_base, reward) -> np.ndarray:
    """β → 0 limit of the RL optimum: π0(· | r = 1)."""
    return condition(log_base, np.asarray(reward) == 1)


def _require_finite_somewhere(e: np.ndarray, what: str):
    if not np.isfinite(e).any():
        raise PcmiInputError(f"{what} is −inf for every rollout: each rollout has zero teacher "
                             "probability under some demonstration (eps = 0 with several strategies?), "
                             "so reverse KL is infinite for every policy")


def sdsd_optimum(inst, beta: float = 1.0) -> np.ndarray:
    """argmin_π E_D KL(π ‖ T(·|y')) ⇒ π_SD ∝ exp(E_D log T(y|y')) = π0 · exp(s) (the PCMI tilt).
    Tempered: argmax_π E_π[s] − β KL(π ‖ π0) ⇒ π ∝ π0 · exp(s / β)."""
    beta = check_beta(beta)
    if beta == 1.0:
        e = expected_log_teacher_leaves(inst)
        _require_finite_somewhere(e, "E_D log T(y | y')")
        return log_normalize(e)
    s = expected_pcmi(inst)
    _require_finite_somewhere(s, "the expected PCMI")
    return log_normalize(inst.log_base + s / beta)


@dataclass
class TokenLevel:
    """Token-level view on the prefix tree (node arrays, index 0 = root).

    g[c]       = E_D log T(a | h, y') for the node c = h·a
    log_Z[h]   = soft future value: log Σ_a exp(g[h·a]) Z(h·a), Z(leaf) = 1
    log_tok[c] = log π_tok(a | h) = g[c] − log Σ_b exp(g[h·b])
    log_seq[c] = log π_SD(a | h) = g[c] + log Z(c) − log Z(h)
    """
    g: np.ndarray
    log_Z: np.ndarray
    log_tok: np.ndarray
    log_seq: np.ndarray


def token_level(inst) -> TokenLevel:
    tree = inst.tree
    e = expected_log_teacher(inst.teacher, inst.log_demos, tree)  # E_D log T(h | y') per node
    with np.errstate(invalid="ignore"):
        g = e - e[np.maximum(tree.parent, 0)]
    g[0] = 0.0
    g = np.where(np.isnan(g), 0.0, g)  # only below prefixes every demonstration rules out
    log_Z = np.zeros(tree.n_nodes)
    internal = np.zeros(tree.n_nodes, bool)
    internal[tree.parent[1:]] = True
    for nodes in reversed(tree._levels[1:]):
        par = tree.parent[nodes]
        acc = np.full(tree.n_nodes, -np.inf)
        np.logaddexp.at(acc, par, g[nodes] + log_Z[nodes])
        upd = np.unique(par)
        log_Z[upd] = acc[upd]
    log_tok = np.full(tree.n_nodes, 0.0)
    log_tok[1:] = g[1:] - tree.children_logsumexp(g)[tree.parent[1:]]
    log_seq = np.full(tree.n_nodes, 0.0)
    with np.errstate(invalid="ignore"):
        log_seq[1:] = g[1:] + log_Z[1:] - log_Z[tree.parent[1:]]
    log_seq = np.where(np.isnan(log_seq), -np.inf, log_seq)
    return TokenLevel(g, log_Z, log_tok, log_seq)


def soft_future_value(inst) -> np.ndarray:
    """log Z(h) on every tree node: Z(h) = Σ_a exp(E_D log T(a | h, y')) Z(h·a), Z(leaf) = 1."""
    return token_level(inst).log_Z


def sdsd_token_optimum(inst) -> np.ndarray:
    """π_tok(y) = Π_t π_tok(a_t | h_t) with π_tok(a | h) ∝ exp(E_D log T(a | h, y'))."""
    tl = token_level(inst)
    return inst.tree.path_sum(tl.log_tok)[inst.tree.leaf_node]


def sdsd_sequence_from_tokens(inst) -> np.ndarray:
    """π_SD rebuilt from its factorization π_SD(a | h) ∝ exp(E_D log T(a|h,y')) · Z(h·a)."""
    tl = token_level(inst)
    return inst.tree.path_sum(tl.log_seq)[inst.tree.leaf_node]


def forward_kl_optimum(inst) -> np.ndarray:
    """argmin_π E_D KL(T(·|y') ‖ π) ⇒ π_fwd = E_D T(· | y') = π0 · E_D exp(PCMI)."""
    return log_normalize(mixture_log_teacher(inst.teacher, inst.log_demos, inst.tree)[inst.tree.leaf_node])


def forward_kl_token_optimum(inst) -> np.ndarray:
    """Token-level forward KL with demonstration weights held fixed: Π_t E_D T(a_t | h_t, y')
    (not π_fwd; its conditionals would need weights ∝ D(y') T(h | y'))."""
    tree = inst.tree
    m = token_mixture_log(inst.teacher, inst.log_demos, tree)
    cond = np.zeros(tree.n_nodes)
    cond[1:] = m[1:] - tree.children_logsumexp(m)[tree.parent[1:]]
    return tree.path_sum(cond)[tree.leaf_node]


def contrastive_optimum(inst, log_baseline_demos=None) -> np.ndarray:
    """CREDIT-style: s_c(y) = E_D log T(y|y') − E_B log T(y|y'), π ∝ π0 · exp(s_c).

    B are baseline demonstrations (other prompts' demonstrations in a batch). On a single
    prompt the default is B = π0 itself: demonstrations drawn without the success filter.
    """
    log_B = inst.log_base if log_baseline_demos is None else log_baseline_demos
    e_d = expected_log_teacher_leaves(inst)
    e_b = expected_log_teacher_leaves(inst, log_B)
    with np.errstate(invalid="ignore"):
        s_c = np.where(np.isfinite(e_b), e_d - e_b, -np.inf)
    _require_finite_somewhere(s_c, "the contrastive score")
    return log_normalize(inst.log_base + s_c)


# --- generalized Jensen–Shannon (SDPO convention) -------------------------------------------

def teacher_classes_at_leaves(inst):
    """(weights (C,), log T rows (C, n)) of the demonstration groups, at the leaves."""
    ws, rows = [], []
    for log_w, log_t in inst.teacher.demo_classes(inst.log_demos, inst.tree):
        ws.append(np.exp(log_w))
        rows.append(log_t[:, inst.tree.leaf_node])
    return np.concatenate(ws), np.concatenate(rows)


def js_divergence(log_s, log_t, alpha: float) -> float:
    """D_α(S, T): α = 1 → KL(S‖T), α = 0 → KL(T‖S), else α KL(T‖m) + (1−α) KL(S‖m), m = (1−α)S + αT."""
    from .distributions import kl
    if alpha == 1:
        return kl(log_s, log_t)
    if alpha == 0:
        return kl(log_t, log_s)
    log_m = np.logaddexp(np.log1p(-alpha) + log_s, np.log(alpha) + log_t)
    return alpha * kl(log_t, log_m) + (1 - alpha) * kl(log_s, log_m)


def js_objective(log_s, w, log_T, alpha):
    """F(S) = Σ_c w_c D_α(S, T_c) and its gradient ∂F/∂S_y = (1−α) Σ_c w_c log(S_y / m_cy)."""
    log_m = np.logaddexp(np.log1p(-alpha) + log_s[None, :], np.log(alpha) + log_T)
    f = sum(wc * js_divergence(log_s, lt, alpha) for wc, lt in zip(w, log_T))
    grad = (1 - alpha) * (w[:, None] * (log_s[None, :] - log_m)).sum(axis=0)
    return f, grad


@dataclass
class JSResult:
    log_pi: np.ndarray
    objective: float
    kkt_residual: float  # max_y |∂F/∂S_y − Σ S ∂F/∂S| on the support: 0 at the minimizer


def js_optimum(inst, alpha: float, *, tol: float = 1e-12) -> JSResult:
    """argmin_π E_D D_α(π, T(·|y')) over the simplex (jointly convex, one minimizer, no closed
    form); α = 1 is `sdsd_optimum`, α = 0 is `forward_kl_optimum`."""
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise PcmiInputError(f"alpha must be a number, got {alpha!r}") from None
    if not 0 <= alpha <= 1:
        raise PcmiInputError(f"alpha must lie in [0, 1], got {alpha!r}")
    if alpha in (0.0, 1.0):
        log_pi = forward_kl_optimum(inst) if alpha == 0 else sdsd_optimum(inst)
        return JSResult(log_pi, float("nan"), 0.0)
    w, log_T = teacher_classes_at_leaves(inst)
    w = w / w.sum()

    def fun(u):
        log_s = log_softmax(u)
        f, g = js_objective(log_s, w, log_T, alpha)
        s = np.exp(log_s)
        return f, s * (g - s @ g)

    u0 = mixture_log_teacher(inst.teacher, inst.log_demos, inst.tree)[inst.tree.leaf_node]
    u0 = np.maximum(u0, -50.0)
    res = minimize(fun, u0, jac=True, method="L-BFGS-B",
                   options={"maxiter": 20000, "ftol": 1e-16, "gtol": tol, "maxcor": 30})
    u = res.x
    # fixed-point polish S ∝ S·exp(−∇F/(1−α)) = Π_c m_c^{w_c}: reaches the low-mass coordinates
    # that L-BFGS (whose logit gradient is scaled by S) leaves unconverged
    for _ in range(20000):
        log_s = log_softmax(u)
        f, g = js_objective(log_s, w, log_T, alpha)
        s = np.exp(log_s)
        resid = float(np.max(np.abs(g - s @ g)[s > 1e-300]))
        if resid < tol:
            break
        u = log_s - g / (1 - alpha)
    return JSResult(log_s, float(f), resid)


# --- matching RL's leash to a target success ----------------------------------------------

def rl_success(p0, beta: float):
    """Success of π_RL ∝ π0·exp(r/β): p(β) = p0 / (p0 + (1 − p0)·exp(−1/β))."""
    p0 = np.asarray(p0, float)
    with np.errstate(divide="ignore"):
        return np.exp(np.log(p0) - np.logaddexp(np.log(p0), np.log1p(-p0) - 1.0 / check_beta(beta)))


def rl_beta_for_success(p0: float, p: float) -> float:
    """The β with rl_success(p0, β) = p: β = 1 / (logit p − logit p0); needs p0 < p < 1."""
    if not 0 < p0 < p < 1:
        raise PcmiInputError(f"no β > 0 gives RL success {p!r} from base success {p0!r} (need p0 < p < 1)")
    return float(1.0 / ((np.log(p) - np.log1p(-p)) - (np.log(p0) - np.log1p(-p0))))


def rl_beta_for_mean_success(p0s, p: float) -> float:
    """One β for many prompts so that the mean RL success equals p (bisection on 1/β)."""
    from scipy.optimize import brentq
    p0s = np.asarray(p0s, float)
    lo_p, hi_p = p0s.mean(), float(np.mean(p0s > 0))
    if not lo_p < p < hi_p:
        raise PcmiInputError(f"mean RL success ranges over ({lo_p:.6g}, {hi_p:.6g}); {p!r} is outside")
    inv = brentq(lambda ib: float(np.mean(rl_success(p0s, 1.0 / ib))) - p if ib > 0 else lo_p - p,
                 1e-12, 1e6, xtol=1e-14, rtol=1e-14)
    return float(1.0 / inv)
