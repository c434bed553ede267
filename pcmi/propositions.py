"""Executable propositions P1–P8 of theory.md §6, P9 of §10 and P10 of §11.

Each `check_pN(...)` returns Result(holds, margin, details): `margin` is the slack of the
statement (≥ 0 when it holds; for equalities, tolerance minus the error), `details` the numbers
behind it. Every check compares the implementation it verifies against an independent
computation, in every branch: the teacher's rows rebuilt from its defining formula (§1),
the optima from their definitions by brute-force numpy over those rows, minimizers by scipy,
strategy masses by the route-copying closed form. The implementations are keyword arguments
with the real ones as defaults (`check_p2(inst, sdsd=...)`), so that tests can inject wrong
ones and see the check fail. A check whose conditions an instance does not meet (no route,
wrong teacher kind, failing rollouts) raises a one-line PcmiInputError naming what is missing.
`search_counterexamples` runs a check over generated instances and reports the fraction that
hold and the smallest failing instance, as an explicit instance JSON that `pcmi solve` loads.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp

from .distributions import kl, safe_log, total_variation
from .demonstrations import dstar as dstar_law
from .dynamics import on_policy_instance
from .errors import PcmiInputError
from .feedback import FeedbackTeacher, independent_feedback_rows
from .instance import Instance
from .metrics import ood_success, ratio_distortion, strategy_mass_entropy, success
from .policies import (forward_kl_optimum, rl_beta_for_success, rl_optimum, sdsd_optimum,
                       sdsd_sequence_from_tokens, sdsd_token_optimum, soft_future_value)
from .scores import pcmi_matrix
from .teachers import CopyTeacher, KernelTeacher, LatentStrategyTeacher, leaf_rows

TOL = 1e-9  # equalities in log space / probability


@dataclass
class Result:
    holds: bool
    margin: float
    details: dict = field(default_factory=dict)


# independent computations ------------------------------------------------------------------
def independent_teacher_rows(inst) -> np.ndarray:
    """log T(y | y'_j), row j, column y, straight from the teacher's defining formula (§1):
    latent: (1−eps)·Σ_z w_z P_z(y') P_z(y) / π0(y') + eps·π0(y) with π0 = Σ_z w_z P_z;
    copy: lam·1[y = y'] + (1−lam)·π0(y); kernel: the matrix itself."""
    t = inst.teacher
    if isinstance(t, LatentStrategyTeacher):
        log_b = logsumexp(t.log_w[:, None] + t.log_P, axis=0)
        joint = logsumexp(t.log_w[:, None, None] + t.log_P[:, :, None] + t.log_P[:, None, :], axis=0)
        with np.errstate(invalid="ignore"):
            post = np.where(np.isfinite(log_b)[:, None], joint - log_b[:, None], -np.inf)
        return np.logaddexp(safe_log(1 - t.eps) + post, safe_log(t.eps) + log_b[None, :])
    if isinstance(t, CopyTeacher):
        return safe_log(t.lam * np.eye(t.n) + (1 - t.lam) * np.exp(t.log_base)[None, :])
    if isinstance(t, KernelTeacher):
        return np.array(t.log_T)
    return leaf_rows(t, inst.n)


def _demo_weights(inst):
    """(D_j, log T(·|y'_j)) for the demonstrations with D_j > 0."""
    D = np.exp(inst.log_demos)
    keep = D > 0
    return D[keep] / D[keep].sum(), independent_teacher_rows(inst)[keep]


def independent_expected_log_teacher(inst, weights=None) -> np.ndarray:
    """e(y) = Σ_j D_j log T(y | y'_j) over the demonstrations with D_j > 0 (−inf if one rules y out);
    `weights`: `_demo_weights(inst)` when the caller already has it."""
    D, rows = _demo_weights(inst) if weights is None else weights
    return (D[:, None] * rows).sum(axis=0)


def _normalized_exp(e, what: str) -> np.ndarray:
    """exp(e) / Σ exp(e) as probabilities."""
    if not np.isfinite(e).any():
        raise PcmiInputError(f"{what} is −inf for every rollout: the optimum is undefined")
    p = np.exp(e - np.max(e))
    return p / p.sum()


def independent_sdsd(inst) -> np.ndarray:
    """π_SD(y) = exp(E_D log T(y|y')) / Σ (theory.md §3), probabilities."""
    return _normalized_exp(independent_expected_log_teacher(inst), "E_D log T(y | y')")


def independent_forward(inst, weights=None) -> np.ndarray:
    """π_fwd(y) = Σ_j D_j T(y | y'_j), probabilities (`weights` as in independent_expected_log_teacher)."""
    D, rows = _demo_weights(inst) if weights is None else weights
    p = D @ np.exp(rows)
    return p / p.sum()


def independent_rl(log_base, reward, beta: float) -> np.ndarray:
    """π_RL(y) = π0(y)·e^{(r(y)−1)/β} / (p0 + (1 − p0)·e^{−1/β}), p0 = Σ_{r=1} π0 (probabilities)."""
    b, r = np.exp(np.asarray(log_base, float)), np.asarray(reward)
    if not np.any(r == 1):
        return b / b.sum()
    damp = np.exp(-1.0 / beta)
    p = np.where(r == 1, b, b * damp)
    return p / (b[r == 1].sum() + b[r != 1].sum() * damp)


def _masses_of(p, reward, route) -> np.ndarray:
    """Strategy masses π(z | r = 1) from probabilities p, ordered by strategy label."""
    p, reward, route = np.asarray(p, float), np.asarray(reward), np.asarray(route)
    c = np.where(reward == 1, p, 0.0)
    return np.array([c[route == z].sum() for z in np.unique(route[reward == 1])]) / c.sum()


def _masses(log_pi, inst) -> np.ndarray:
    """Strategy masses π(z | r = 1) of log π, ordered by strategy label."""
    return _masses_of(np.exp(log_pi), inst.reward, inst.route)


def _entropy(p) -> float:
    p = np.asarray(p, float)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def route_copying_masses(w, D, eps: float) -> np.ndarray:
    """Closed form (theory.md §3): mass_SD(z) ∝ w_z·(1 + (1−eps)/(eps·w_z))^{D_z}."""
    w, D = np.asarray(w, float), np.asarray(D, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_m = np.where(w > 0, np.log(w) + D * np.log1p((1 - eps) / (eps * w)), -np.inf)
    return _normalized_exp(log_m, "the strategy masses")


def _max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, float) - np.asarray(b, float))))


# preconditions -------------------------------------------------------------------------------
def _require_route(inst, check: str):
    if getattr(inst, "route", None) is None:
        raise PcmiInputError(f"{check} needs route labels (one strategy per rollout): the instance has no route")


def _require_all_correct(inst, check: str):
    if np.any((inst.reward != 1) & np.isfinite(inst.log_base)):
        raise PcmiInputError(f"{check} needs every rollout correct (reward 1 wherever π0 > 0)")


def _require_route_copying(inst, check: str):
    """Route labels, every rollout correct, a latent teacher whose strategies are disjoint and
    are the route classes, and 0 < eps < 1."""
    _require_route(inst, check)
    t = inst.teacher
    if not isinstance(t, LatentStrategyTeacher) or not t.disjoint:
        raise PcmiInputError(f"{check} needs a route-copying teacher (latent strategies with disjoint "
                             f"supports), got {type(t).__name__}")
    if not 0 < t.eps < 1:
        raise PcmiInputError(f"{check} needs 0 < eps < 1, got eps = {t.eps!r}")
    _require_all_correct(inst, check)
    live = np.isfinite(inst.log_base)
    owner = np.argmax(np.isfinite(t.log_P), axis=0)[live]
    pairs = set(zip(inst.route[live].tolist(), owner.tolist()))
    if len(pairs) != len({a for a, _ in pairs}) or len(pairs) != len({b for _, b in pairs}):
        raise PcmiInputError(f"{check} needs the route labels to be the teacher's strategies")


def _require_bayesian(inst, check: str):
    t = inst.teacher
    if not isinstance(t, LatentStrategyTeacher) or t.eps != 0:
        raise PcmiInputError(f"{check} needs a Bayesian teacher (latent strategies with eps = 0), "
                             f"got {type(t).__name__}{'' if not hasattr(t, 'eps') else f' with eps = {t.eps!r}'}")


# P1 ------------------------------------------------------------------------------------------
def check_p1(log_base, reward, beta: float, *, rl=rl_optimum) -> Result:
    """RL keeps ratios: π_RL(y1)/π_RL(y2) = π0(y1)/π0(y2) for every correct pair, every β > 0;
    and `rl` equals π0·exp(r/β)/Z computed directly."""
    log_base = np.asarray(log_base, float)
    log_rl = rl(log_base, reward, beta)
    err = ratio_distortion(log_rl, log_base, reward)
    scale = 1 + float(np.max(np.abs(log_base[np.isfinite(log_base)])))
    tol = TOL * scale
    direct_err = _max_abs(np.exp(log_rl), independent_rl(log_base, reward, beta))
    ok = err <= tol and direct_err <= 1e-12
    return Result(ok, min(tol - err, 1e-12 - direct_err),
                  {"max_log_ratio_error": err, "direct_error": direct_err, "beta": beta})


# P2 ------------------------------------------------------------------------------------------
def reverse_kl_objective(log_s, w, log_T) -> float:
    """F(π) = Σ_c w_c KL(π ‖ T_c) — the SDSD objective with D grouped into classes c (w_c > 0)."""
    s = np.exp(log_s)
    m = s > 0
    if np.any(~np.isfinite(log_T[:, m])):
        return float("inf")
    return float(np.sum(s[m] * (log_s[m] - (w[:, None] * log_T[:, m]).sum(axis=0))))


def minimize_reverse_kl(w, log_T) -> np.ndarray:
    """argmin_π Σ_c w_c KL(π ‖ T_c) = Σ s log s − s·e (e = Σ_c w_c log T_c) over the simplex by
    trust-region Newton on softmax logits, started from the uniform policy: an independent
    route to the closed form (it never evaluates exp(e)/Σ exp(e))."""
    w = np.asarray(w, float)
    keep = w > 0
    w, log_T = w[keep] / w[keep].sum(), np.asarray(log_T, float)[keep]
    n = log_T.shape[1]
    support = np.all(np.isfinite(log_T), axis=0)  # outside it the objective is +∞
    if not support.any():
        raise PcmiInputError("E_D KL(π ‖ T) is infinite for every policy: no rollout is in every teacher's support")
    e = (w[:, None] * log_T[:, support]).sum(axis=0)
    m = int(support.sum())

    fun, jac, hess = reverse_kl_in_logits(e)
    v = np.zeros(m - 1)
    for method in ("trust-exact", "trust-krylov", "L-BFGS-B"):  # each polishes the last
        if m == 1 or np.max(np.abs(jac(v))) < 1e-13:  # ∂F/∂v_y = π_y·(…): π is then exact to ~1e-13
            break
        kw = {"hess": hess, "options": {"gtol": 1e-15, "maxiter": 300 if method == "trust-exact" else 60}} \
            if method != "L-BFGS-B" else \
            {"options": {"ftol": 1e-300, "gtol": 1e-15, "maxiter": 5000}}
        try:
            with np.errstate(invalid="ignore", over="ignore"):
                v = minimize(fun, v, jac=jac, method=method, **kw).x
        except (UnboundLocalError, np.linalg.LinAlgError, ValueError):
            continue
    out = np.full(n, -np.inf)
    out[support] = _log_softmax_gauged(v)
    return out


def reverse_kl_in_logits(e):
    """(F, ∇F, ∇²F) of F(v) = Σ s log s − s·e with log s = log_softmax(0, v) (the gauge u_0 = 0 makes
    the Hessian non-singular): with d = (log s − e) − s·(log s − e) and a = s·d,
    ∂F/∂v_y = a_y and ∂²F/∂v_y∂v_x = 1[x = y]·(a_y + s_y) − a_y s_x − s_y a_x − s_y s_x (y, x ≥ 1).
    scipy asks for all three at the same v: the softmax parts are computed once per v."""
    e = np.asarray(e, float)
    last = {}

    def parts(v):
        key = np.asarray(v, float).tobytes()
        if last.get("key") != key:
            log_s = _log_softmax_gauged(v)
            s = np.exp(log_s)
            d = (log_s - e) - s @ (log_s - e)
            last.clear()
            last.update(key=key, out=(log_s, s, d))
        return last["out"]

    def fun(v):
        log_s, s, _ = parts(v)
        return float(s @ (log_s - e))

    def jac(v):
        _, s, d = parts(v)
        return (s * d)[1:]

    def hess(v):
        _, s, d = parts(v)
        a = s * d
        return (np.diag(a + s) - np.outer(a, s) - np.outer(s, a) - np.outer(s, s))[1:, 1:]

    return fun, jac, hess


def _log_softmax_gauged(v) -> np.ndarray:
    """log softmax(0, v) = u − max u − log Σ exp(u − max u), u = (0, v): the same operations as
    scipy.special.log_softmax on a 1-d array, without its array-API overhead (~10× faster here)."""
    u = np.empty(len(v) + 1)
    u[0] = 0.0
    u[1:] = v
    u_max = np.max(u)
    tmp = u - (u_max if np.isfinite(u_max) else 0.0)
    with np.errstate(divide="ignore"):
        return tmp - np.log(np.sum(np.exp(tmp), keepdims=True))


def numerical_reverse_kl_minimizer(inst: Instance, weights=None) -> np.ndarray:
    """The scipy minimizer of E_D KL(π ‖ T(·|y')) over the independently built teacher rows
    (`weights` as in independent_expected_log_teacher)."""
    D, rows = _demo_weights(inst) if weights is None else weights
    return minimize_reverse_kl(D, rows)


def check_p2(inst: Instance, tol: float = 1e-7, *, sdsd=sdsd_optimum) -> Result:
    """PCMI tilt: argmin_π E_D KL(π ‖ T) equals π0·exp(s)/Z = exp(E_D log T)/Z (checked against
    scipy's minimization of the objective over independently built teacher rows)."""
    closed = sdsd(inst)
    D, rows = weights = _demo_weights(inst)
    numeric = numerical_reverse_kl_minimizer(inst, weights)
    err = _max_abs(np.exp(closed), np.exp(numeric))
    f_closed = reverse_kl_objective(closed, D, rows)
    f_num = reverse_kl_objective(numeric, D, rows)
    ok = err <= tol and f_closed <= f_num + 1e-10 * (1 + abs(f_num))
    return Result(ok, tol - err, {"max_abs_error": err, "objective_closed": f_closed, "objective_numeric": f_num})


# P3 ------------------------------------------------------------------------------------------
def independent_bayes_pcmi(teacher: LatentStrategyTeacher) -> np.ndarray:
    """PCMI[j, y] = log p(y, y'_j) − log π0(y) − log π0(y'_j), p(y, y') = Σ_z w_z P_z(y) P_z(y')."""
    lw, lP = teacher.log_w, teacher.log_P
    log_b = logsumexp(lw[:, None] + lP, axis=0)
    joint = logsumexp(lw[:, None, None] + lP[:, :, None] + lP[:, None, :], axis=0)
    with np.errstate(invalid="ignore"):
        out = joint - log_b[:, None] - log_b[None, :]
    return np.where(np.isfinite(log_b)[:, None] & np.isfinite(log_b)[None, :], out, np.nan)


def check_p3(teacher: LatentStrategyTeacher, *, pcmi=pcmi_matrix) -> Result:
    """Bayesian teacher (eps = 0): PCMI symmetric, Σ_y' π0(y') T(y|y') = π0(y), and `pcmi`
    equals log p(y, y') − log π0(y) − log π0(y') of the exchangeable joint."""
    if not isinstance(teacher, LatentStrategyTeacher) or teacher.eps != 0:
        raise PcmiInputError("P3 needs a Bayesian teacher (latent strategies with eps = 0), got "
                             f"{type(teacher).__name__}{f' with eps = {teacher.eps!r}' if hasattr(teacher, 'eps') else ''}")
    n = teacher.n
    inst = Instance(teacher.log_base, np.ones(n, dtype=np.int64), teacher, teacher.log_base)
    M = pcmi(inst)
    live = np.isfinite(teacher.log_base)
    ref = independent_bayes_pcmi(teacher)
    sub, rsub = M[np.ix_(live, live)], ref[np.ix_(live, live)]
    pattern_ok = bool(np.array_equal(np.isfinite(sub), np.isfinite(rsub)))
    fin = np.isfinite(sub) & np.isfinite(rsub)
    both = np.isfinite(sub) & np.isfinite(sub.T)
    with np.errstate(invalid="ignore"):
        ref_err = float(np.max(np.abs(sub - rsub)[fin])) if fin.any() else 0.0
        sym_err = float(np.max(np.abs(sub - sub.T)[both])) if both.any() else 0.0
    pattern_ok = pattern_ok and bool(np.array_equal(np.isfinite(sub), np.isfinite(sub.T)))
    lb = teacher.log_base[live]
    marg = logsumexp(lb[:, None] + (sub + lb[None, :]), axis=0)
    marg_err = _max_abs(np.exp(marg), np.exp(lb))
    err = max(sym_err, marg_err, ref_err)
    return Result(pattern_ok and err <= 1e-8, 1e-8 - err if pattern_ok else -np.inf,
                  {"symmetry_error": sym_err, "marginal_error": marg_err, "joint_pmi_error": ref_err,
                   "pattern_ok": pattern_ok})


# P4 ------------------------------------------------------------------------------------------
def amplification(inst: Instance, log_pi=None) -> dict:
    """For each pair of strategies with w_a > w_b (correct-conditioned base masses):
    log(mass(a)/mass(b)) − log(w_a/w_b) under log π (default π_SD); amplification: all > 0."""
    _require_route(inst, "amplification")
    log_pi = sdsd_optimum(inst) if log_pi is None else log_pi
    w, m = _masses(inst.log_base, inst), _masses(log_pi, inst)
    gaps = []
    for a in range(len(w)):
        for b in range(len(w)):
            if w[a] > 0 and w[b] > 0 and np.log(w[a] / w[b]) > 1e-6:
                with np.errstate(divide="ignore"):
                    gaps.append(np.log(m[a]) - np.log(m[b]) - np.log(w[a] / w[b]) if m[b] > 0 else np.inf)
    return {"gaps": gaps, "min_gap": float(min(gaps)) if gaps else float("inf"),
            "base_masses": w.tolist(), "sdsd_masses": m.tolist()}


def _strategy_demo_mass(inst) -> np.ndarray:
    """D_z = Σ_{y in z} D(y), ordered like `_masses`."""
    D, r = np.exp(inst.log_demos), inst.reward
    return np.array([D[inst.route == z].sum() for z in np.unique(inst.route[r == 1])])


def check_p4(inst: Instance, *, sdsd=sdsd_optimum) -> Result:
    """Gap amplification (route-copying, all correct, 0 < eps < 1): w_a > w_b ⇒
    mass_SD(a)/mass_SD(b) > w_a/w_b; ratios inside a strategy kept; and `sdsd`'s masses equal
    the closed form log mass_SD(z) = const + log w_z + D_z·log(1 + (1−eps)/(eps·w_z))."""
    _require_route_copying(inst, "P4")
    t = inst.teacher
    log_pi = sdsd(inst)
    amp = amplification(inst, log_pi)
    inside = max(ratio_distortion(log_pi, inst.log_base, inst.reward * (inst.route == z)) for z in np.unique(inst.route))
    w = _masses(inst.log_base, inst)
    pred = route_copying_masses(w, _strategy_demo_mass(inst), t.eps)
    cf_err = _max_abs(pred, amp["sdsd_masses"])
    # the amplification predicted by the closed form, φ(w_a) − φ(w_b) > 0 with
    # φ(w) = w·log1p(c/w), is exact in floating point even where the measured log-ratio gap
    # (a difference of O(1) logs) is below double resolution: require both
    phi = w * np.log1p((1 - t.eps) / (t.eps * w))
    pred_gaps = [phi[a] - phi[b] for a in range(len(w)) for b in range(len(w)) if np.log(w[a] / w[b]) > 1e-6]
    amp["min_predicted_gap"] = float(min(pred_gaps)) if pred_gaps else float("inf")
    ok = amp["min_gap"] > -1e-12 and amp["min_predicted_gap"] > 0 and inside <= 1e-8 and cf_err <= 1e-8
    return Result(ok, min(amp["min_predicted_gap"], amp["min_gap"] + 1e-12, 1e-8 - inside, 1e-8 - cf_err),
                  {**amp, "inside_ratio_error": inside, "closed_form_error": cf_err, "eps": t.eps})


def check_p4_general(inst: Instance, *, sdsd=sdsd_optimum) -> Result:
    """The P4 statement outside its conditions (failures, overlapping strategies): a tendency.
    `sdsd` must equal exp(E_D log T)/Z computed from the teacher's rows (details["agrees"])."""
    _require_route(inst, "P4_general")
    log_pi = sdsd(inst)
    err = _max_abs(np.exp(log_pi), independent_sdsd(inst))
    amp = amplification(inst, log_pi)
    agrees = err <= TOL
    margin = amp["min_gap"] if agrees else min(amp["min_gap"], TOL - err)
    return Result(agrees and amp["min_gap"] > 1e-12, margin, {**amp, "agrees": agrees, "sdsd_error": err})


# P5 ------------------------------------------------------------------------------------------
def _ancestors(tree) -> np.ndarray:
    """A[i, h] = True iff prefix h lies on rollout i's root→leaf path (by walking parents)."""
    A = np.zeros((tree.n_leaves, tree.n_nodes), bool)
    for i, c in enumerate(tree.leaf_node):
        while c >= 0:
            A[i, c] = True
            c = tree.parent[c]
    return A


def _logsumexp_under(x, A) -> np.ndarray:
    """log Σ_{leaves i under h} exp x[..., i] for every prefix h, shape (..., N); −inf where all are −inf."""
    return logsumexp(np.asarray(x, float)[..., :, None] + np.where(A, 0.0, -np.inf), axis=-2)


def _logsumexp_children(g, parent) -> np.ndarray:
    """log Σ_{c : parent(c) = h} exp g(c) for every node h (−inf at a leaf); a NaN g(c) counts as 0."""
    n = len(g)
    child_of = np.zeros((n, n), bool)
    child_of[np.asarray(parent)[1:], np.arange(1, n)] = True
    return logsumexp(np.where(child_of, np.nan_to_num(np.asarray(g, float), nan=0.0)[None, :], -np.inf), axis=1)


def independent_token_level(inst) -> dict:
    """Token-level quantities by brute force over the teacher's rows, from their definitions:
    T(h | y'_j) = Σ_{y under h} T(y | y'_j); g(h·a) = Σ_j D_j log T(a | h, y'_j);
    π_tok(y) = Π_t exp g(h_t·a_t) / Σ_b exp g(h_t·b); Z(h) = Σ_{y under h} Π_{edges below h} exp g;
    π_SD's reach of h. NaN in g marks prefixes below one that a demonstration rules out.
    The sums over the rollouts under h (and over the children of h) are one masked logsumexp each."""
    tree = inst.tree
    D, rows = _demo_weights(inst)
    A = _ancestors(tree)
    node = _logsumexp_under(rows, A)                      # (J, N): log T(h | y'_j)
    par = tree.parent[1:]
    with np.errstate(invalid="ignore"):
        cond = np.where(np.isfinite(node[:, par]), node[:, 1:] - node[:, par], np.nan)
    g = np.r_[0.0, (D[:, None] * cond).sum(axis=0)]
    kids = [[] for _ in range(tree.n_nodes)]
    for c in range(1, tree.n_nodes):
        kids[tree.parent[c]].append(c)
    lse_kids = _logsumexp_children(g, tree.parent)        # used only where no child's g is NaN
    finite_kid = np.zeros(tree.n_nodes, bool)
    np.logical_or.at(finite_kid, par, np.isfinite(g[1:]))
    nan_kid = np.zeros(tree.n_nodes, bool)
    np.logical_or.at(nan_kid, par, np.isnan(g[1:]))
    reach = np.full(tree.n_nodes, -np.inf)
    reach[0] = 0.0
    for h in range(tree.n_nodes):  # parents come before their children
        if not kids[h] or not np.isfinite(reach[h]):
            continue
        if nan_kid[h] or not finite_kid[h]:
            raise PcmiInputError("the token-level SDSD optimum is undefined: at a prefix it reaches, "
                                 "every next token is ruled out by some demonstration")
        reach[kids[h]] = reach[h] + g[kids[h]] - lse_kids[h]
    e_leaf = (D[:, None] * rows).sum(axis=0)
    log_prefix = (D[:, None] * node).sum(axis=0)        # E_D log T(h | y')
    L = _logsumexp_under(e_leaf, A)                      # log Σ_{y under h} exp E_D log T(y | y')
    with np.errstate(invalid="ignore"):
        log_Z = np.where(np.isfinite(log_prefix), L - log_prefix, np.nan)
    return {"g": g, "kids": kids, "token": np.exp(reach[tree.leaf_node]), "log_Z": log_Z,
            "sdsd": _normalized_exp(e_leaf, "E_D log T(y | y')"), "log_reach_sdsd": L - logsumexp(e_leaf)}


def _z_spread(bf) -> float:
    """max_h π_SD(h)·(max_a log Z(h·a) − min_a log Z(h·a)) over the children a with exp g > 0."""
    worst = 0.0
    for h, ks in enumerate(bf["kids"]):
        if len(ks) < 2 or not np.isfinite(bf["log_reach_sdsd"][h]):
            continue
        z = bf["log_Z"][[c for c in ks if np.isfinite(bf["g"][c])]]
        if len(z) < 2:
            continue
        spread = float(np.max(z) - np.min(z)) if np.isfinite(z).all() else (0.0 if np.isneginf(z).all() else np.inf)
        worst = max(worst, float(np.exp(bf["log_reach_sdsd"][h])) * spread)
    return worst


def check_p5(inst: Instance, *, token=sdsd_token_optimum, sequence=sdsd_optimum,
             factorized=sdsd_sequence_from_tokens, future=soft_future_value) -> Result:
    """Token vs sequence: `token` equals π_tok and `sequence` π_SD, each computed by brute force
    from the teacher's rows; the relation π_SD(a|h) ∝ exp(E_D log T(a|h,y'))·Z(h·a) holds
    (`factorized` and `future` against the brute-force Z); and π_tok = π_SD iff Z(h·a) does
    not depend on a at every prefix h that π_SD reaches."""
    bf = independent_token_level(inst)
    seq, tok = sequence(inst), token(inst)
    tok_err = _max_abs(np.exp(tok), bf["token"])
    seq_err = _max_abs(np.exp(seq), bf["sdsd"])
    rel_err = _max_abs(np.exp(factorized(inst)), bf["sdsd"])
    lz, ref = np.asarray(future(inst), float), bf["log_Z"]
    live = np.isfinite(bf["log_reach_sdsd"]) & np.isfinite(ref)
    z_err = float(np.max(np.abs(lz[live] - ref[live]))) if live.any() else 0.0
    tv = total_variation(tok, seq)
    weighted = _z_spread(bf)  # how much Z varies where π_SD goes
    z_const = weighted <= 1e-12
    iff_ok = (tv <= 1e-9) if z_const else (tv > 0)
    err = max(tok_err, seq_err, rel_err, z_err)
    ok = err <= 1e-9 and iff_ok
    return Result(ok, min(1e-9 - err, (1e-9 - tv) if z_const else tv),
                  {"token_error": tok_err, "sequence_error": seq_err, "relation_error": rel_err,
                   "log_Z_error": z_err, "tv_token_vs_sequence": tv, "z_spread_weighted": weighted,
                   "z_constant": bool(z_const)})


# P6 ------------------------------------------------------------------------------------------
def pcmi_spread(inst, weights=None) -> float:
    """max − min over supp π0 of s(y) = E_D PCMI(y; y'), from the teacher's rows. The instance is
    non-degenerate when it is > 0: then π_SD = π0·exp(s)/Z ≠ π0, since log π_SD − log π0 = s − log Z
    is not constant on the support (`weights` as in independent_expected_log_teacher)."""
    live = np.isfinite(inst.log_base)
    s = independent_expected_log_teacher(inst, weights)[live] - inst.log_base[live]
    return float(np.max(s) - np.min(s)) if np.isfinite(s).all() else float("inf")


def check_p6(inst: Instance, *, forward=forward_kl_optimum, sdsd=sdsd_optimum) -> Result:
    """Bayesian teacher, D = π0 (all correct): `forward` equals π0 and Σ_j D_j T(·|y'_j);
    `sdsd` equals scipy's minimizer of E_D KL(π ‖ T); and π_SD ≠ π0 whenever the instance is
    non-degenerate (s = E_D PCMI not constant on supp π0, `pcmi_spread` > 1e-9)."""
    _require_bayesian(inst, "P6")
    _require_all_correct(inst, "P6")
    if _max_abs(np.exp(inst.log_demos), np.exp(inst.log_base)) > 1e-9:
        raise PcmiInputError("P6 needs D = π0 (demonstrations from the model's own rollouts, all correct)")
    fwd = forward(inst)
    base = np.exp(inst.log_base)
    weights = _demo_weights(inst)  # the teacher's rows, built once for the three independent routes
    fwd_err = max(_max_abs(np.exp(fwd), base), _max_abs(np.exp(fwd), independent_forward(inst, weights)))
    sd = sdsd(inst)
    numeric = numerical_reverse_kl_minimizer(inst, weights)
    sd_err = _max_abs(np.exp(sd), np.exp(numeric))
    spread = pcmi_spread(inst, weights)
    non_degenerate = spread > 1e-9
    tv = total_variation(sd, inst.log_base)
    differs = tv > 0
    ok = fwd_err <= 1e-9 and sd_err <= 1e-7 and (differs or not non_degenerate)
    margin = min(1e-9 - fwd_err, 1e-7 - sd_err, tv if non_degenerate else np.inf)
    return Result(ok, margin, {"fwd_error": fwd_err, "sdsd_error": sd_err, "pcmi_spread": spread,
                               "non_degenerate": bool(non_degenerate), "tv_sdsd_base": tv,
                               "kl_sdsd_base": kl(sd, inst.log_base)})


# P7 ------------------------------------------------------------------------------------------
def check_p7(inst: Instance, max_rounds: int = 400, *, sdsd=sdsd_optimum, rebuild=on_policy_instance,
             forward=forward_kl_optimum, rl=rl_optimum) -> Result:
    """Collapse: SDSD rounds (route-copying, all correct; each round's instance from `rebuild`)
    lower the strategy-mass entropy monotonically and converge to the heaviest strategy when it
    is unique; each round's masses equal the closed form applied to the previous round's
    (m' ∝ m·(1 + (1−eps)/(eps·m))^{D}, D = previous masses); forward-KL and RL rounds keep the
    ratios between strategies."""
    _require_route_copying(inst, "P7")
    try:
        return _p7(inst, max_rounds, sdsd, rebuild, forward, rl)
    except PcmiInputError as exc:  # the conditions hold, so an implementation broke a round
        return Result(False, -np.inf, {"error": str(exc)})


def _last_gains(hist) -> tuple[bool, list]:
    """(the top strategy a of round 0 rose every round, [(g0_b, g1_b)]): every other strategy b's log-odds
    gain against a, log(m_a/m_b), over the second-to-last and the last round ([] before three rounds)."""
    a = int(np.argmax(hist[0]))
    rising = all(h1[a] > h0[a] or h1[a] >= 1 - 1e-12 for h0, h1 in zip(hist[:-1], hist[1:]))
    if len(hist) < 3:
        return rising, []
    with np.errstate(divide="ignore"):
        odds = [np.log(h[a]) - np.log(h) for h in hist[-3:]]
    return rising, [(g0, g1) for b, (g0, g1) in enumerate(zip(odds[1] - odds[0], odds[2] - odds[1])) if b != a]


def _gains_certify(hist) -> bool:
    """The rising-gain certificate on the rounds so far: the top strategy a rose every round and, over the
    last two rounds, every other strategy's log-odds gain against a is positive and not falling. With
    φ(m) = m·log(1 + (1−eps)/(eps·m)) increasing, a round's gain of a over b is φ(m_a) − φ(m_b) > 0 while
    m_a > m_b, so the order is kept, the odds grow without bound and m_a → 1: the remaining rounds need
    not be run (their closed form is checked on every round that is)."""
    rising, gains = _last_gains(hist)
    return rising and bool(gains) and all(g1 > 0 and g1 >= g0 - 1e-12 for g0, g1 in gains)


def _p7(inst, max_rounds, sdsd, rebuild, forward, rl) -> Result:
    eps = inst.teacher.eps
    log_pi, cur, k = inst.log_base, inst, 0
    hist = [_masses(log_pi, inst)]
    demo = _strategy_demo_mass(inst)
    rec_err = 0.0
    while k < max_rounds and (k < 8 or (hist[-1].max() < 1 - 1e-6 and not _gains_certify(hist))):
        log_pi = sdsd(cur)
        m = _masses(log_pi, inst)
        rec_err = max(rec_err, _max_abs(m, route_copying_masses(hist[-1], demo, eps)))
        cur = rebuild(cur, log_pi)
        demo = m  # next round's demonstrations: π_k(· | r = 1)
        hist.append(m)
        k += 1
    ent = [_entropy(h) for h in hist]
    _, last_gains = _last_gains(hist)
    rise = float(max(np.diff(ent).max(), 0.0))
    w = hist[0]
    top = np.sort(w)[::-1]
    unique = len(top) < 2 or top[0] > top[1] * (1 + 1e-9)
    heaviest = int(np.argmax(w))
    final = hist[-1]
    reached = final[heaviest] >= 1 - 1e-6
    certified = _gains_certify(hist)  # not reached within max_rounds (eps near 1 tilts slowly): the limit
    converged = (not unique) or reached or certified
    keep = 0.0
    cur, lp_fwd, lp_rl = inst, inst.log_base, inst.log_base
    for _ in range(3):  # forward-KL rounds (teacher rebuilt) and RL rounds π ∝ π·exp(r/β)
        lp_fwd, lp_rl = forward(cur), rl(lp_rl, inst.reward, 1.0)
        keep = max(keep, _max_abs(_masses(lp_fwd, inst), w), _max_abs(_masses(lp_rl, inst), w))
        cur = rebuild(cur, lp_fwd)
    ok = rise <= 1e-9 and converged and keep <= 1e-8 and rec_err <= 1e-8
    conv_margin = (1.0 if not unique else final[heaviest] - (1 - 1e-6) if reached
                   else min(gl for _, gl in last_gains) if certified else final[heaviest] - (1 - 1e-6))
    return Result(ok, min(1e-9 - rise, 1e-8 - keep, 1e-8 - rec_err, conv_margin),
                  {"entropy": ent[:10], "rounds": k, "final_top_mass": float(final[heaviest]),
                   "reached": bool(reached), "certified_by_rising_gains": bool(certified),
                   "max_entropy_rise": rise, "ratio_drift_fwd_rl": keep, "closed_form_round_error": rec_err})


# P8 ------------------------------------------------------------------------------------------
def _dominant_blocked(inst: Instance) -> np.ndarray:
    """Mask of the rollouts of π0's heaviest strategy among the correct ones."""
    r = inst.reward
    labels = np.unique(inst.route[r == 1])
    return inst.route == labels[int(np.argmax(_masses(inst.log_base, inst)))]


def diversity_comparison(inst: Instance, beta: float | None = None, *, rl=rl_optimum, sdsd=sdsd_optimum) -> dict:
    """SDSD vs RL (β given, or matched so that RL's success equals SDSD's): strategy-mass
    entropy and OOD success with the base policy's dominant route blocked."""
    _require_route(inst, "the diversity comparison")
    sd = sdsd(inst)
    p_sd, p0 = success(sd, inst.reward), success(inst.log_base, inst.reward)
    if beta is None:
        beta = 1.0 if p0 >= 1 - 1e-12 else rl_beta_for_success(p0, p_sd)
    lrl = rl(inst.log_base, inst.reward, beta)
    blocked = _dominant_blocked(inst)
    w, m_sd = _masses(lrl, inst), _masses(sd, inst)
    cums = np.cumsum(np.sort(m_sd)[::-1]) - np.cumsum(np.sort(w)[::-1])
    return {"beta": beta, "success_sdsd": p_sd, "success_rl": success(lrl, inst.reward),
            "H_sdsd": strategy_mass_entropy(sd, inst.reward, inst.route),
            "H_rl": strategy_mass_entropy(lrl, inst.reward, inst.route),
            "ood_sdsd": ood_success(sd, inst.reward, blocked), "ood_rl": ood_success(lrl, inst.reward, blocked),
            "majorization_gap": float(cums.min()), "rl_masses": w.tolist(), "sdsd_masses": m_sd.tolist(),
            "log_rl": lrl, "log_sdsd": sd, "blocked": blocked}


def _independent_diversity(inst, d, p_rl, p_sd) -> float:
    """Largest disagreement between the comparison `d` and the same numbers from the
    independently computed policies p_rl, p_sd (probabilities)."""
    r, blocked = inst.reward, d["blocked"]
    m_rl, m_sd = _masses_of(p_rl, r, inst.route), _masses_of(p_sd, r, inst.route)
    ood = lambda p: float(np.sum(p[(r == 1) & ~blocked]))  # noqa: E731
    return max(_max_abs(np.exp(d["log_rl"]), p_rl), _max_abs(np.exp(d["log_sdsd"]), p_sd),
               abs(d["H_rl"] - _entropy(m_rl)), abs(d["H_sdsd"] - _entropy(m_sd)),
               abs(d["ood_rl"] - ood(p_rl)), abs(d["ood_sdsd"] - ood(p_sd)),
               abs(d["success_rl"] - float(np.sum(p_rl[r == 1]))), abs(d["success_sdsd"] - float(np.sum(p_sd[r == 1]))))


def _public(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in ("log_rl", "log_sdsd", "blocked")}


def check_p8(inst: Instance, beta: float = 1.0, *, rl=rl_optimum, sdsd=sdsd_optimum) -> Result:
    """Diversity cost (route-copying, all correct): RL keeps π0's strategy masses, SDSD's
    majorize them, so SDSD's strategy-mass entropy and OOD success are at most RL's. The
    policies, masses, entropies and OOD successes are checked against π_RL = π0·exp(r/β)/Z
    and the route-copying closed form for the SDSD masses."""
    _require_route_copying(inst, "P8")
    d = diversity_comparison(inst, beta, rl=rl, sdsd=sdsd)
    w = _masses(inst.log_base, inst)
    p_rl = independent_rl(inst.log_base, inst.reward, beta)
    m_cf = route_copying_masses(w, _strategy_demo_mass(inst), inst.teacher.eps)
    d["rl_mass_drift"] = _max_abs(d["rl_masses"], w)
    d["closed_form_error"] = _max_abs(d["sdsd_masses"], m_cf)
    d["independent_error"] = _independent_diversity(inst, d, p_rl, independent_sdsd(inst))
    tol = 1e-12
    margin = min(d["majorization_gap"] + tol, d["H_rl"] - d["H_sdsd"] + tol, d["ood_rl"] - d["ood_sdsd"] + tol,
                 1e-9 - d["rl_mass_drift"], 1e-9 - d["closed_form_error"], 1e-9 - d["independent_error"])
    return Result(margin >= 0, margin, _public(d))


def check_p8_failures(inst: Instance, *, rl=rl_optimum, sdsd=sdsd_optimum) -> Result | None:
    """The P8 comparison with failing rollouts and β matched to SDSD's success: a tendency.
    None when no β > 0 matches (SDSD's success not above the base's). The policies must agree
    with π_SD and π_RL computed independently (details["agrees"]), and RL's success must equal
    SDSD's."""
    _require_route(inst, "P8_failures")
    p_sd_ind = independent_sdsd(inst)
    p0 = min(float(np.exp(inst.log_base)[inst.reward == 1].sum()), 1.0)
    p_sd = float(p_sd_ind[inst.reward == 1].sum())
    if not p0 < p_sd < 1:
        return None
    beta = rl_beta_for_success(p0, p_sd)
    d = diversity_comparison(inst, beta, rl=rl, sdsd=sdsd)
    p_rl = independent_rl(inst.log_base, inst.reward, beta)
    err = _independent_diversity(inst, d, p_rl, p_sd_ind)
    err = max(err, abs(float(p_rl[inst.reward == 1].sum()) - p_sd))  # β matches the successes
    agrees = err <= TOL
    margin = min(d["H_rl"] - d["H_sdsd"], d["ood_rl"] - d["ood_sdsd"])
    out = {**_public(d), "agrees": agrees, "independent_error": err}
    return Result(agrees and margin >= -1e-12, margin if agrees else min(margin, TOL - err), out)


# P9 ------------------------------------------------------------------------------------------
P9_TOL = 1e-8  # max log-ratio distortion among correct rollouts


def _dstar_must_exist(inst) -> bool:
    """Route-copying latent teachers with 0 < eps ≤ 1 and copy teachers with lam < 1: D* exists
    (closed form, theory.md §10); also eps = 0 (lam = 1) when one strategy (rollout) holds every
    correct rollout."""
    t, live = inst.teacher, (inst.reward == 1) & np.isfinite(inst.log_base)
    if isinstance(t, LatentStrategyTeacher) and t.disjoint:
        owners = np.argmax(np.isfinite(t.log_P), axis=0)[live]
        return t.eps > 0 or len(np.unique(owners)) == 1
    if isinstance(t, CopyTeacher):
        return t.lam < 1 or int(live.sum()) == 1
    return False


def check_p9(inst: Instance, tol: float = P9_TOL, *, dstar=dstar_law, sdsd=sdsd_optimum) -> Result:
    """Ratio-preserving demonstrations: under D* = `dstar(inst)` the SDSD optimum keeps π0's ratios
    among correct rollouts (ratio distortion ≤ tol). Checked independently: D* must be a
    distribution on the correct rollouts with π0 > 0 (normalized, no mass on a failing one); the
    spread of s = E_{D*} PCMI over correct rollouts is recomputed from the teacher's defining
    formula (`independent_teacher_rows`) and must equal the reported one; `sdsd` must equal
    exp(E_{D*} log T)/Z computed from those rows. The distortion of π_SD is exactly that spread, so
    where no D* exists (the minimal spread > tol) the check fails and reports the spread: P9 is
    stated for instances where D* exists, which route-copying teachers with 0 < eps < 1 always are
    (`details["must_exist"]`)."""
    must = _dstar_must_exist(inst)
    try:
        d = dstar(inst)
    except PcmiInputError as exc:
        return Result(False, -np.inf, {"error": " ".join(str(exc).split()), "must_exist": must})
    log_D = np.asarray(d.log_demos, float)
    if log_D.shape != (inst.n,) or np.isnan(log_D).any() or (log_D == np.inf).any():
        return Result(False, -np.inf, {"error": "D* is not a log-distribution over the rollouts", "must_exist": must})
    D = np.exp(log_D)
    correct = (inst.reward == 1) & np.isfinite(inst.log_base)
    norm_err = abs(float(D.sum()) - 1.0)
    off_mass = float(D[~correct].sum())  # failing demonstrations or rollouts π0 never emits
    details = {"method": d.method, "reported_spread": float(d.spread), "feasible": bool(d.feasible),
               "must_exist": must, "normalization_error": norm_err, "mass_off_correct": off_mass}
    if norm_err > 1e-9 or off_mass > 0 or not np.isfinite(logsumexp(log_D[correct])):
        return Result(False, min(1e-9 - norm_err, -off_mass), details)
    inst_d = inst.with_demos(log_D)
    e = independent_expected_log_teacher(inst_d)
    s = e[correct] - inst.log_base[correct]
    spread = float(s.max() - s.min()) if np.isfinite(s).all() else float("inf")
    both_inf = np.isinf(spread) and np.isinf(d.spread)
    spread_err = 0.0 if both_inf else abs(spread - float(d.spread))
    sd = sdsd(inst_d)
    sdsd_err = _max_abs(np.exp(sd), _normalized_exp(e, "E_D* log T(y | y')"))
    distortion = ratio_distortion(sd, inst.log_base, inst.reward)
    details.update({"spread": spread, "spread_error": spread_err, "sdsd_error": sdsd_err,
                    "ratio_distortion": distortion})
    margin = tol - max(distortion, spread, spread_err, sdsd_err)
    return Result(bool(margin >= 0), float(margin), details)


# P10 ------------------------------------------------------------------------------------------
def check_p10(inst, *, sdsd=sdsd_optimum) -> Result:
    """P10: a pure filtering teacher under which every correct rollout is compatible with every
    feedback in D's support keeps π0's ratios among correct rollouts. For correct y,
    T(y|f) = π0(y)·((1 − eps)/π0(c_f) + eps), so E_D PCMI(y; f) = Σ_f D(f) log((1 − eps)/π0(c_f) + eps)
    is the same for every correct y. Checked: `sdsd`'s ratio distortion; `sdsd` against
    exp(E_D log T)/Z over the rows built from the formula; the teacher's rows normalized and its
    E_D PCMI on the correct set equal to that constant."""
    t = inst.teacher
    if not isinstance(t, FeedbackTeacher):
        raise PcmiInputError(f"P10 needs a pure filtering teacher (FeedbackTeacher), got {type(t).__name__}")
    base = np.exp(inst.log_base)
    correct = (inst.reward == 1) & (base > 0)
    if not correct.any():
        raise PcmiInputError("P10 needs a correct rollout with positive base probability")
    D = np.exp(inst.log_demos)
    cls = np.where(t.index < 0, t.n_classes, t.index)  # the empty feedback: last row
    D_f = np.bincount(cls[D > 0], weights=D[D > 0], minlength=t.n_classes + 1)
    D_f = D_f / D_f.sum()
    used = np.flatnonzero(D_f > 0)
    compat = np.vstack([np.asarray(t.compat, bool), np.ones((1, t.n), bool)])
    for f in used:
        bad = np.flatnonzero(correct & ~compat[f])
        if bad.size:
            raise PcmiInputError(f"P10 needs every correct rollout compatible with every feedback in D's support: "
                                 f"feedback class {int(f)} rules out correct rollout {int(bad[0])}")
    mass = compat[used].astype(float) @ base
    if t.eps < 1 and np.any(mass <= 0):
        raise PcmiInputError("P10: D puts mass on a feedback with π0(c_f) = 0, where T(·|f) is undefined")
    rows = independent_feedback_rows(t)[used]
    with np.errstate(invalid="ignore"):
        e_ind = np.where(np.isneginf(rows), -np.inf, D_f[used, None] * rows).sum(axis=0)
    p_ind = np.exp(e_ind - np.max(e_ind))
    p_ind /= p_ind.sum()
    const = float(np.sum(D_f[used] * np.log((1 - t.eps) / mass + t.eps)))
    # the implementation: the optimum, and the teacher's own rows (normalization, E_D PCMI)
    log_pi = sdsd(inst)
    e_impl, root_err = np.zeros(inst.tree.n_nodes), 0.0
    for log_w, log_t in t.demo_classes(inst.log_demos, inst.tree):
        root_err = max(root_err, float(np.max(np.abs(log_t[:, 0]))))
        w = np.exp(log_w)[:, None]
        with np.errstate(invalid="ignore"):
            e_impl += np.where(np.isneginf(log_t), -np.inf, w * log_t).sum(axis=0)
    s_corr = e_impl[inst.tree.leaf_node][correct] - inst.log_base[correct]
    const_err = float(np.max(np.abs(s_corr - const)))
    ident_err = float(np.max(np.abs(np.exp(log_pi) - p_ind)))
    dist = ratio_distortion(log_pi, inst.log_base, inst.reward)
    tol = TOL * (1 + float(np.max(np.abs(inst.log_base[np.isfinite(inst.log_base)]))))
    margin = min(tol - dist, 1e-9 - ident_err, tol - const_err, 1e-9 - root_err)
    return Result(bool(margin >= 0), float(margin),
                  {"ratio_distortion": dist, "identity_error": ident_err, "constant_pcmi": const,
                   "constant_error": const_err, "row_normalization_error": root_err, "eps": t.eps,
                   "n_feedback_classes": int(len(used))})


# counterexample search -----------------------------------------------------------------------
@dataclass
class SearchReport:
    name: str
    kind: str            # "universal" | "tendency"
    tried: int
    held: int
    skipped: int
    smallest_margin: float
    counterexample: dict | None
    disagreements: int = 0  # instances where the implementation disagreed with the independent route

    @property
    def hold_rate(self) -> float:
        return self.held / self.tried if self.tried else float("nan")


def _floats(a) -> list:
    return [float(x) for x in np.asarray(a, float)]


def instance_json(inst, beta: float | None = None) -> dict:
    """The explicit instance JSON that `pcmi solve FILE` loads (solve.load_instance): base,
    reward, the full teacher matrix (row j = T(·|y'_j)), demos and route, floats at full
    precision (json writes repr). `inst` is an Instance, or (log_base, reward, beta) for P1.
    The prefix tree is not kept: token-level quantities of a file are those of the flat tree."""
    if isinstance(inst, tuple):  # P1's (log_base, reward, β): the teacher is irrelevant, T = π0
        log_base, reward, beta = inst
        base = _floats(np.exp(log_base))
        return {"base": base, "reward": [int(r) for r in reward], "teacher": [base] * len(base),
                "beta": float(beta)}
    if not isinstance(inst, Instance):  # P3's teacher: all correct, D = π0
        inst = Instance(inst.log_base, np.ones(inst.n, dtype=np.int64), inst, inst.log_base)
    out = {"base": _floats(np.exp(inst.log_base)), "reward": [int(r) for r in inst.reward],
           "teacher": [_floats(row) for row in np.exp(leaf_rows(inst.teacher, inst.n))],
           "demos": _floats(np.exp(inst.log_demos))}
    if inst.route is not None:
        out["route"] = [x.item() if hasattr(x, "item") else x for x in inst.route]
    if beta is not None:
        out["beta"] = float(beta)
    return out


def describe(inst) -> dict:
    """Size and name of an instance (for reports); `instance_json` rebuilds it."""
    if isinstance(inst, tuple):
        return {"name": "P1 (base, reward, beta)", "n": len(inst[0])}
    return {"name": getattr(inst, "name", type(inst).__name__), "n": inst.n}


def search_counterexamples(name: str, kind: str, make, check, n: int, rng) -> SearchReport:
    """Run `check(make(rng))` n times; keep the smallest (fewest rollouts) failing instance as
    {"n", "name", "margin", "details", "instance": instance_json(...)}."""
    held = skipped = tried = disagree = 0
    smallest, best = np.inf, None
    for _ in range(n):
        inst = make(rng)
        res = check(inst)
        if res is None:
            skipped += 1
            continue
        tried += 1
        held += bool(res.holds)
        disagree += res.details.get("agrees", True) is False
        smallest = min(smallest, res.margin)
        size = describe(inst)["n"]
        if not res.holds and (best is None or (size, res.margin) < (best[0], best[1])):
            best = (size, res.margin, inst, res)
    ce = None
    if best is not None:
        size, margin, inst, res = best
        ce = {**describe(inst), "margin": float(margin), "details": _jsonable(res.details),
              "instance": instance_json(inst)}
    return SearchReport(name, kind, tried, held, skipped, float(smallest), ce, disagree)


def _jsonable(d):
    if isinstance(d, dict):
        return {str(k): _jsonable(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_jsonable(v) for v in d]
    if isinstance(d, (bool, np.bool_)):
        return bool(d)
    if isinstance(d, (np.floating, float)):
        return float(d)
    if isinstance(d, (np.integer, int)):
        return int(d)
    if isinstance(d, np.ndarray):
        return _jsonable(d.tolist())
    return d
