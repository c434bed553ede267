"""Optimal policies over Y(x) (theory.md §3). Each returns log π over the rollouts."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq

from .distributions import check_log_probs, condition, float_array, kl, log_normalize, prob_of, logsumexp
from .checks import number, positive, unit
from .errors import PcmiInputError
from .scores import expected_log_teacher_leaves, expected_pcmi
from .teachers import expected_log_teacher, mixture_log_teacher, token_mixture_log


def check_beta(beta) -> float:
    """The KL leash β: a finite number > 0."""
    return positive(beta, "beta")


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


def _infinite_reverse_kl(what: str) -> PcmiInputError:
    return PcmiInputError(f"{what} is −inf for every rollout: each rollout has zero teacher "
                          "probability under some demonstration (eps = 0 with several strategies?), "
                          "so reverse KL is infinite for every policy")


def _require_finite_somewhere(e: np.ndarray, what: str):
    if not np.isfinite(e).any():
        raise _infinite_reverse_kl(what)


def sdsd_optimum(inst, beta: float | None = None) -> np.ndarray:
    """beta=None: the SDSD objective argmin_π E_D KL(π ‖ T(·|y')) ⇒ π_SD ∝ exp(E_D log T(y|y'))
    (= π0 · exp(s) where π0 > 0; it may put mass where π0 = 0 if the teacher does).
    A number beta: the tempered family argmax_π E_π[s] − β KL(π ‖ π0) ⇒ π ∝ π0 · exp(s / β),
    supported inside supp π0 and continuous in β; at β = 1 it is exp(E_D log T) restricted to
    supp π0, which equals beta=None exactly when supp T(·|y') ⊆ supp π0."""
    if beta is None:
        e = expected_log_teacher_leaves(inst)
        _require_finite_somewhere(e, "E_D log T(y | y')")
        return log_normalize(e)
    beta = check_beta(beta)
    s = expected_pcmi(inst)
    _require_finite_somewhere(s, "the expected PCMI")
    with np.errstate(over="ignore"):
        tilt = (s - s.max()) / beta  # ≤ 0: a tiny β sends rollouts to −inf, never to NaN
    return log_normalize(inst.log_base + tilt)


@dataclass
class TokenLevel:
    """Token-level view on the prefix tree (node arrays, index 0 = root).

    g[c]       = E_D log T(a | h, y') for the node c = h·a (−inf below a prefix h that some
                 demonstration rules out, E_D log T(h | y') = −inf: h is unreachable there)
    log_Z[h]   = soft future value: log Σ_a exp(g[h·a]) Z(h·a), Z(leaf) = 1
    log_tok[c] = log π_tok(a | h) = g[c] − log Σ_b exp(g[h·b]) (−inf where every g[h·b] = −inf)
    log_seq[c] = log π_SD(a | h) = g[c] + log Z(c) − log Z(h) (−inf where Z(h) = 0)
    """
    g: np.ndarray
    log_Z: np.ndarray
    log_tok: np.ndarray
    log_seq: np.ndarray


def _conditional(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num − den with −inf (not NaN) where den = −inf."""
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(den), num - den, -np.inf)


def token_level(inst) -> TokenLevel:
    tree = inst.tree
    par = tree.parent[1:]
    e = expected_log_teacher(inst.teacher, inst.log_demos, tree)  # E_D log T(h | y') per node
    g = np.zeros(tree.n_nodes)
    g[1:] = _conditional(e[1:], e[par])
    log_Z = np.zeros(tree.n_nodes)
    for nodes in reversed(tree._levels[1:]):
        acc = np.full(tree.n_nodes, -np.inf)
        np.logaddexp.at(acc, tree.parent[nodes], g[nodes] + log_Z[nodes])
        upd = np.unique(tree.parent[nodes])
        log_Z[upd] = acc[upd]
    log_tok = np.zeros(tree.n_nodes)
    log_tok[1:] = _conditional(g[1:], tree.children_logsumexp(g)[par])
    log_seq = np.zeros(tree.n_nodes)
    log_seq[1:] = _conditional(g[1:] + log_Z[1:], log_Z[par])
    return TokenLevel(g, log_Z, log_tok, log_seq)


def soft_future_value(inst) -> np.ndarray:
    """log Z(h) on every tree node: Z(h) = Σ_a exp(E_D log T(a | h, y')) Z(h·a), Z(leaf) = 1."""
    return token_level(inst).log_Z


def sdsd_token_optimum(inst) -> np.ndarray:
    """π_tok(y) = Π_t π_tok(a_t | h_t) with π_tok(a | h) ∝ exp(E_D log T(a | h, y')). Actions
    with E_D log T = −inf get 0 (the eps → 0 limit); raises where every action at a prefix that
    π_tok reaches has E_D log T(a | h, y') = −inf (token-level reverse KL infinite for every policy)."""
    tree = inst.tree
    tl = token_level(inst)
    reach = tree.path_sum(tl.log_tok)
    stuck = np.isinf(tree.children_logsumexp(tl.g)) & np.isfinite(reach)
    stuck[tree.leaf_node] = False
    if stuck.any():
        raise PcmiInputError(f"E_D log T(a | h, y') is −inf for every action a at {int(stuck.sum())} reachable "
                             "prefix(es) h: each action there has zero teacher probability under some "
                             "demonstration (eps = 0 with several strategies?), so token-level reverse KL "
                             "is infinite for every policy")
    return reach[tree.leaf_node]


def sdsd_sequence_from_tokens(inst) -> np.ndarray:
    """π_SD rebuilt from its factorization π_SD(a | h) ∝ exp(E_D log T(a|h,y')) · Z(h·a)."""
    tl = token_level(inst)
    if not np.isfinite(tl.log_Z[0]):
        raise _infinite_reverse_kl("E_D log T(y | y')")
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
    cond[1:] = _conditional(m[1:], tree.children_logsumexp(m)[tree.parent[1:]])
    return tree.path_sum(cond)[tree.leaf_node]


def contrastive_score(inst, log_baseline_demos=None) -> np.ndarray:
    """s_c(y) = E_D log T(y|y') − E_B log T(y|y') on supp π0 (−inf off it). +inf where B rules y
    out and D does not; −inf where D rules y out, or both do (0/0 = no evidence for y)."""
    log_B = inst.log_base if log_baseline_demos is None else check_log_probs(
        float_array(log_baseline_demos, "baseline demonstrations B", ndim=1), "baseline demonstrations B")
    if len(log_B) != inst.n:
        raise PcmiInputError(f"baseline demonstrations B have {len(log_B)} entries but there are {inst.n} rollouts")
    e_d = expected_log_teacher_leaves(inst)
    e_b = expected_log_teacher_leaves(inst, log_B)
    with np.errstate(invalid="ignore"):
        s_c = e_d - e_b
    s_c = np.where(np.isnan(s_c), -np.inf, s_c)
    return np.where(np.isfinite(inst.log_base), s_c, -np.inf)


def contrastive_optimum(inst, log_baseline_demos=None) -> np.ndarray:
    """CREDIT-style: argmax_π E_π[s_c] − KL(π ‖ π0) ⇒ π ∝ π0 · exp(s_c), s_c = `contrastive_score`.
    Where s_c = +inf on a set S ⊆ supp π0 the optimum is the limit of s_c = M on S, M → ∞:
    π0(· | S).

    B are baseline demonstrations (other prompts' demonstrations in a batch). On a single
    prompt the default is B = π0 itself: demonstrations drawn without the success filter.
    """
    s_c = contrastive_score(inst, log_baseline_demos)
    plus = s_c == np.inf
    if plus.any():
        return condition(inst.log_base, plus)
    _require_finite_somewhere(s_c, "the contrastive score")
    return log_normalize(inst.log_base + s_c)


# --- generalized Jensen–Shannon (SDPO convention) -------------------------------------------

def teacher_classes_at_leaves(inst):
    """(weights (C,), log T rows (C, n)) of the demonstration groups, at the leaves."""
    ws, rows = [], []
    for log_w, log_t in inst.teacher.demo_classes(inst.log_demos, inst.tree):
        ws.append(prob_of(log_w))
        rows.append(log_t[:, inst.tree.leaf_node])
    return np.concatenate(ws), np.concatenate(rows)


def js_divergence(log_s, log_t, alpha: float) -> float:
    """D_α(S, T): α = 1 → KL(S‖T), α = 0 → KL(T‖S), else α KL(T‖m) + (1−α) KL(S‖m), m = (1−α)S + αT."""
    if alpha == 1:
        return kl(log_s, log_t)
    if alpha == 0:
        return kl(log_t, log_s)
    log_m = np.logaddexp(np.log1p(-alpha) + log_s, np.log(alpha) + log_t)
    return alpha * kl(log_t, log_m) + (1 - alpha) * kl(log_s, log_m)


def js_objective(log_s, w, log_T, alpha):
    """F(S) = Σ_c w_c D_α(S, T_c) and its gradient ∂F/∂S_y = (1−α) Σ_c w_c log(S_y / m_cy).
    Convention: at a y with S_y = 0 that no teacher reaches (every m_cy = 0) the gradient is set
    to 0; such a y is outside the optimum's support, which the solver fixes in advance."""
    log_m = np.logaddexp(np.log1p(-alpha) + log_s[None, :], np.log(alpha) + log_T)
    f = sum(wc * js_divergence(log_s, lt, alpha) for wc, lt in zip(w, log_T))
    with np.errstate(invalid="ignore"):
        d = np.where(np.isfinite(log_m), log_s[None, :] - log_m, 0.0)
    grad = (1 - alpha) * (w[:, None] * d).sum(axis=0)
    return f, grad


@dataclass
class JSResult:
    log_pi: np.ndarray
    objective: float
    kkt_residual: float  # max over supp π of |G_y − Σ_y π_y G_y|, G = −∇F/(1−α) − log(1−α): 0 at the minimizer
    converged: bool = True  # kkt_residual ≤ tol


def _log_softplus(x):
    """log log(1 + e^x), accurate for x → −∞ (≈ x) and x → +∞."""
    with np.errstate(divide="ignore"):
        return np.where(x < -40, x, np.log(np.logaddexp(0.0, np.maximum(x, -40))))


def _inv_softplus_of_log(log_v):
    """x with log(1 + e^x) = v, from log v (v > 0; accurate for v → 0 and v → ∞)."""
    log_v = np.asarray(log_v, float)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        v = np.exp(np.minimum(log_v, 700.0))
        mid = np.log(np.expm1(v))
        big = np.where(log_v > 700, np.exp(np.minimum(log_v, 709.0)) * np.exp(np.maximum(log_v - 709.0, 0.0)),
                       v + np.log1p(-np.exp(-v)))
        return np.where(log_v < -40, log_v, np.where(v > 30, big, mid))


class _JSStationarity:
    """Stationarity of F on the simplex, scale-free: Σ_c w_c log(S_y/m_cy) = const on the support,
    i.e. G_y(log S_y) = μ with G_y(t) = Σ_c w_c softplus(logit α + log T_cy − t) (decreasing in t).
    Rollouts no teacher reaches (T_cy = 0 for all c) have S_y = 0."""

    def __init__(self, w, log_T, alpha):
        keep = w > 0
        self.log_w = np.log(w[keep] / w[keep].sum())[:, None]
        self.support = np.isfinite(log_T[keep]).any(axis=0)
        self.a = (np.log(alpha) - np.log1p(-alpha)) + log_T[keep][:, self.support]  # (C, |A|)

    def log_G(self, t):
        return np.logaddexp.reduce(self.log_w + _log_softplus(self.a - t), axis=0)

    def dlog_G(self, t, log_g):
        x = self.a - t
        return -np.exp(np.logaddexp.reduce(self.log_w - np.logaddexp(0.0, -x), axis=0) - log_g)  # in [−1, 0)

    def log_s(self, log_mu):
        """t_y with log G_y(t_y) = log μ: safeguarded Newton inside the bracket [lo, hi]."""
        hi = np.max(self.a, axis=0) - _inv_softplus_of_log(log_mu)  # G_y(t) ≤ softplus(max_c a_cy − t)
        lo = np.max(self.a - _inv_softplus_of_log(log_mu - self.log_w), axis=0)  # G_y ≥ w_c softplus(·)
        lo = np.clip(np.where(np.isfinite(lo), lo, -1e300), -1e300, hi)
        t = hi.copy()
        for _ in range(200):
            log_g = self.log_G(t)
            f = log_g - log_mu
            lo, hi = np.where(f > 0, t, lo), np.where(f < 0, t, hi)
            with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
                step = t - f / self.dlog_G(t, log_g)
            step = np.where((step >= lo) & (step <= hi), step, 0.5 * (lo + hi))
            done = (np.abs(step - t) <= 1e-15 * (1 + np.abs(t))) | (np.abs(f) <= 1e-15 * (1 + abs(log_mu)))
            t = step
            if done.all():
                break
        return t


def js_kkt_residual(log_s, w, log_T, alpha: float) -> float:
    """Scale-free stationarity residual of F = Σ_c w_c D_α(S, T_c) at S (0 < α < 1): ∇F/(1−α) =
    Σ_c w_c log(S_y/m_cy) = −log(1−α) − G_y must be the same on supp S, so this is
    max_{y ∈ supp S} |G_y − Σ_y S_y G_y| with G_y = Σ_c w_c softplus(logit α + log T_cy − log S_y)."""
    log_s, w = np.asarray(log_s, float), np.asarray(w, float)
    on = np.isfinite(log_s)
    keep = w > 0
    a = (np.log(alpha) - np.log1p(-alpha)) + np.asarray(log_T, float)[keep][:, on]
    g = np.exp(logsumexp(np.log(w[keep] / w[keep].sum())[:, None] + _log_softplus(a - log_s[on]), axis=0))
    return float(np.max(np.abs(g - np.exp(log_s[on]) @ g)))


def js_optimum(inst, alpha: float, *, tol: float = 1e-12) -> JSResult:
    """argmin_π E_D D_α(π, T(·|y')) over the simplex (jointly convex, one minimizer, no closed
    form); α = 1 is `sdsd_optimum`, α = 0 is `forward_kl_optimum`.

    Solved exactly: on the support, Σ_c w_c log(S_y / m_cy) is the same for every y (∇F/(1−α)
    constant); for each level μ every S_y follows from a monotone 1-D equation, and μ is found by
    root-finding Σ_y S_y = 1 (to machine precision; `kkt_residual` ≤ tol is checked on the result)."""
    alpha, tol = unit(alpha, "alpha"), positive(tol, "tol", zero_ok=True)
    w, log_T = teacher_classes_at_leaves(inst)
    w = w / w.sum()
    if alpha in (0.0, 1.0):  # closed forms: exact, so the residual is 0 by construction
        log_pi = forward_kl_optimum(inst) if alpha == 0 else sdsd_optimum(inst)
        return JSResult(log_pi, float(sum(wc * js_divergence(log_pi, lt, alpha) for wc, lt in zip(w, log_T))), 0.0)
    st = _JSStationarity(w, log_T, alpha)

    def log_mass(log_mu):
        return float(np.logaddexp.reduce(st.log_s(log_mu)))

    lo, hi = -1.0, 1.0  # log μ: the total mass decreases in μ
    for _ in range(64):
        if log_mass(lo) >= 0:
            break
        lo *= 2
    for _ in range(64):
        if log_mass(hi) <= 0:
            break
        hi *= 2
    log_mu = brentq(log_mass, lo, hi, xtol=1e-15, rtol=8.9e-16, maxiter=500)
    t = st.log_s(log_mu)
    t = t - logsumexp(t)
    log_pi = np.full(inst.n, -np.inf)
    log_pi[st.support] = t
    resid = js_kkt_residual(log_pi, w, log_T, alpha)
    return JSResult(log_pi, float(js_objective(log_pi, w, log_T, alpha)[0]), resid, resid <= tol)


# --- matching RL's leash to a target success ----------------------------------------------

def rl_success(p0, beta: float):
    """Success of π_RL ∝ π0·exp(r/β): p(β) = p0 / (p0 + (1 − p0)·exp(−1/β))."""
    p0 = float_array(p0, "base success probabilities p0")
    if np.isnan(p0).any() or np.any((p0 < 0) | (p0 > 1)):
        raise PcmiInputError("base success probabilities p0 must lie in [0, 1]")
    inv_beta = 1.0 / check_beta(beta)  # may be +inf for a subnormal β
    with np.errstate(divide="ignore", invalid="ignore"):
        log_p = np.log(p0) - np.logaddexp(np.log(p0), np.log1p(-p0) - inv_beta)
    return prob_of(np.where(p0 > 0, log_p, -np.inf))


def rl_beta_for_success(p0: float, p: float) -> float:
    """The β with rl_success(p0, β) = p: β = 1 / (logit p − logit p0); needs p0 < p < 1."""
    if not 0 < p0 < p < 1:
        raise PcmiInputError(f"no β > 0 gives RL success {p!r} from base success {p0!r} (need p0 < p < 1)")
    gap = (np.log(p) - np.log1p(-p)) - (np.log(p0) - np.log1p(-p0))
    if not gap > 0 or not np.isfinite(1.0 / gap):
        raise PcmiInputError(f"RL success {p!r} is within rounding of base success {p0!r}: the matching β "
                             "exceeds the float range (RL would leave π0 unchanged)")
    return float(1.0 / gap)


def rl_beta_for_mean_success(p0s, p: float) -> float:
    """One β for many prompts so that the mean RL success equals p (bisection on 1/β)."""
    p0s = float_array(p0s, "base success probabilities p0s", ndim=1)
    if p0s.size == 0 or np.isnan(p0s).any() or np.any((p0s < 0) | (p0s > 1)):
        raise PcmiInputError("base success probabilities p0s must be a non-empty list of numbers in [0, 1]")
    p = number(p, "target success p")
    lo_p, hi_p = p0s.mean(), float(np.mean(p0s > 0))
    if not lo_p < p < hi_p:
        raise PcmiInputError(f"mean RL success ranges over ({lo_p:.6g}, {hi_p:.6g}); {p!r} is outside")
    inv = brentq(lambda ib: float(np.mean(rl_success(p0s, 1.0 / ib))) - p if ib > 0 else lo_p - p,
                 1e-12, 1e6, xtol=1e-14, rtol=1e-14)
    return float(1.0 / inv)
