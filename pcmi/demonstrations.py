"""Demonstration laws D (theory.md §10): the ratio-preserving D* and label-free proxies for it.

SDSD's optimum under D is π0·exp(s)/Z with s(y) = E_{y'∼D} PCMI(y; y'), so its ratio distortion
among correct rollouts is exactly the spread max s − min s over them. D* is a law of correct
demonstrations that makes s constant on the correct set; SDSD under D* then keeps π0's ratios
among correct rollouts, like RL (proposition P9, `pcmi.propositions.check_p9`).

- Route-copying teachers, 0 < eps < 1 (and copy teachers, which are route-copying with one
  strategy per rollout and eps = 1 − lam): s(y) = log eps + d_z·log(1 + (1−eps)/(eps·w_z)) for y in
  strategy z, so d*_z ∝ 1/log(1 + (1−eps)/(eps·w_z)) (`route_copying_dstar`), spread inside z ∝ π0.
- General teachers: a linear program over D (`dstar`), and the spread-minimizing D where no D*
  exists.
- Proxies a trainer can compute without route labels (`proxy_demos`), and their on-policy rounds
  (`demo_rounds`, `compare_demo_laws`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog
from scipy.special import gammaln

from .distributions import float_array, logsumexp, probs, total_variation
from .dynamics import on_policy_instance
from .checks import number, unit
from .errors import PcmiInputError
from .instance import NO_SUCCESS, demos_from_successes, has_reachable_success
from .metrics import strategy_mass_entropy, success
from .policies import sdsd_optimum
from .scores import expected_pcmi
from .teachers import CopyTeacher, LatentStrategyTeacher

#: D is a D* when the spread of E_D PCMI over the correct rollouts, recomputed from D, is at most this
FEASIBLE_TOL = 1e-9
#: the LP of a general teacher reads the |C|×|C| PCMI block of the correct set C and has one variable
#: per class of equal PCMI columns; larger problems are refused with a one-line error
LP_MAX_CORRECT = 1000
LP_MAX_COLUMNS = 1000
METHODS = ("auto", "closed_form", "lp")
PROXY_KINDS = ("default", "inverse_prob", "self_pcmi", "least_likely")


@dataclass
class DStar:
    log_demos: np.ndarray  # log D over the rollouts (−inf off the correct set)
    spread: float          # max − min of E_D PCMI over correct rollouts with π0 > 0, recomputed from D
    feasible: bool         # spread ≤ FEASIBLE_TOL: D is a ratio-preserving D*
    method: str            # "closed_form" | "lp" | "lp_min_spread"


def correct_set(inst) -> np.ndarray:
    """Indices of the correct rollouts with π0 > 0 (where demonstrations and the spread live)."""
    if not has_reachable_success(inst.log_base, inst.reward):
        raise PcmiInputError(NO_SUCCESS + ", so there is no demonstration law on the correct rollouts")
    return np.flatnonzero((inst.reward == 1) & np.isfinite(inst.log_base))


def expected_pcmi_spread(inst, log_D) -> float:
    """max − min over correct y with π0(y) > 0 of s(y) = E_{y'∼D} PCMI(y; y'), from the teacher's
    stream (`expected_pcmi`); +inf where D rules some correct rollout out (s = −inf)."""
    c = correct_set(inst)
    s = expected_pcmi(inst, np.asarray(log_D, float))[c]
    if not np.isfinite(s).all():
        return float("inf")
    return float(s.max() - s.min())


# --- route-copying: the closed form ---------------------------------------------------------

def _log_softplus(x):
    """log log(1 + e^x), accurate for x → −∞ (≈ x) and x → +∞ (≈ log x)."""
    x = np.asarray(x, float)
    with np.errstate(divide="ignore"):
        return np.where(x < -700, x, np.log(np.logaddexp(0.0, np.maximum(x, -700.0))))


def route_copying_dstar(log_w, eps) -> np.ndarray:
    """log d*_z for route-copying teachers: d*_z ∝ 1/L_z with L_z = log(1 + (1−eps)/(eps·w_z)),
    over the strategies given (those with a correct rollout; w_z is the teacher's weight of z, its
    π0 mass including failing rollouts). Then d*_z·L_z is one constant, so E_D PCMI = log eps + d_z L_z
    is the same on every correct rollout. w_z = 0 gets −inf.
    eps = 1: T = π0, every D keeps the ratios; the eps → 1 limit d*_z ∝ w_z is returned.
    eps = 0: E_D PCMI(y) = −inf unless D sits on y's strategy, so a D* exists only for one strategy."""
    log_w = float_array(log_w, "strategy weights log w", ndim=1)
    if log_w.size == 0 or np.isnan(log_w).any() or (log_w > 1e-12).any():
        raise PcmiInputError("strategy weights log w must be a non-empty list of log-weights <= 0 (w_z <= 1), no NaN")
    eps = unit(eps, "eps")
    alive = np.isfinite(log_w)
    if not alive.any():
        raise PcmiInputError("every strategy weight is zero: no strategy to demonstrate")
    if eps == 1.0:
        out = np.where(alive, log_w, -np.inf)
    elif eps == 0.0:
        if alive.sum() > 1:
            raise PcmiInputError(f"eps = 0 with correct rollouts in {int(alive.sum())} strategies: every D gives "
                                 "E_D PCMI = −inf on some correct rollout (the teacher rules out every strategy but "
                                 "the demonstration's), so no D* exists")
        out = np.where(alive, 0.0, -np.inf)
    else:
        x = np.log1p(-eps) - np.log(eps) - log_w  # log((1−eps)/(eps·w_z))
        out = np.where(alive, -_log_softplus(x), -np.inf)  # −log L_z
    return out - logsumexp(out)


def _route_copying_view(teacher):
    """(owner strategy per rollout, log w, eps) when the teacher is route-copying, else None.
    A copy teacher T = lam·1[y = y'] + (1−lam)·π0 is route-copying with one strategy per rollout
    (w_y = π0(y), P_y = δ_y) and eps = 1 − lam."""
    if isinstance(teacher, LatentStrategyTeacher) and teacher.disjoint:
        return teacher._owner, teacher.log_w, teacher.eps  # the owner index: no (K, |Y|) law matrix
    if isinstance(teacher, CopyTeacher):
        return np.arange(teacher.n), teacher.log_base, 1.0 - teacher.lam
    return None


def _closed_form(inst, view, closed_form) -> np.ndarray:
    owner, log_w, eps = view
    c = correct_set(inst)
    zs = np.unique(owner[c])
    log_d = np.asarray(closed_form(log_w[zs], eps), float)
    log_D = np.full(inst.n, -np.inf)
    for z, ld in zip(zs, log_d):
        members = c[owner[c] == z]
        lb = inst.log_base[members]
        log_D[members] = ld + lb - logsumexp(lb)  # inside z: π0(· | z, r = 1)
    return log_D


# --- general teachers: the linear program ----------------------------------------------------

def pcmi_block(inst, idx=None, chunk: int = 256) -> np.ndarray:
    """M[i, j] = PCMI(y_i; y'_j) = log T(y_i | y'_j) − log π0(y_i) for y_i, y'_j in idx (default:
    the correct rollouts with π0 > 0), from the teacher's rows (`teacher.log_rows`, as `leaf_rows`)."""
    idx = correct_set(inst) if idx is None else np.asarray(idx)
    cols = []
    for lo in range(0, len(idx), chunk):
        rows = inst.teacher.log_rows(idx[lo:lo + chunk])  # (B, n): log T(· | y'_j)
        cols.append(rows[:, idx].T)
    with np.errstate(invalid="ignore"):
        return np.concatenate(cols, axis=1) - inst.log_base[idx][:, None]


def _classes(vectors: np.ndarray, tol: float) -> np.ndarray:
    """Label per row of `vectors`: rows within tol (max-abs) of a class's first row share its label.
    Candidates come from a sorted random projection (rows within tol project within tol·Σ weights),
    so the cost is O(n log n) plus the comparisons inside each window."""
    n = len(vectors)
    labels = np.full(n, -1)
    if n == 0:
        return labels
    weights = np.random.default_rng(0).uniform(0.5, 1.0, vectors.shape[1])
    proj = vectors @ weights
    order = np.argsort(proj, kind="stable")
    breaks = np.flatnonzero(np.diff(proj[order]) > tol * weights.sum()) + 1
    k = 0
    for run in np.split(order, breaks):
        run = np.sort(run)
        while run.size:
            same = np.max(np.abs(vectors[run] - vectors[run[0]]), axis=1) <= tol
            labels[run[same]] = k
            k += 1
            run = run[~same]
    return labels


def min_spread_lp(A: np.ndarray) -> np.ndarray:
    """argmin over the simplex of max_r (A x)_r − min_r (A x)_r: the LP in (x, u, l), minimize u − l
    with l ≤ (A x)_r ≤ u, Σ x = 1, x ≥ 0 (HiGHS dual simplex, tolerances 1e-10)."""
    R, G = A.shape
    c = np.r_[np.zeros(G), 1.0, -1.0]
    A_ub = np.block([[A, -np.ones((R, 1)), np.zeros((R, 1))], [-A, np.zeros((R, 1)), np.ones((R, 1))]])
    A_eq = np.r_[np.ones(G), 0.0, 0.0][None, :]
    bounds = [(0, None)] * G + [(None, None)] * 2
    res = linprog(c, A_ub=A_ub, b_ub=np.zeros(2 * R), A_eq=A_eq, b_eq=[1.0], bounds=bounds, method="highs-ds",
                  options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10})
    if res.status != 0:
        raise PcmiInputError(f"the D* linear program failed: {res.message}")
    return np.clip(res.x[:G], 0.0, None)


def _spread_of(A: np.ndarray, x: np.ndarray) -> float:
    s = A @ x
    return float(s.max() - s.min())


def _newton_on_support(A: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The least-norm correction δ on supp x with A δ = −A x and Σ δ = 1 − Σ x, repeated while
    x + δ stays ≥ 0 and the spread falls."""
    for _ in range(3):
        on = x > 0
        K = np.vstack([A[:, on], np.ones((1, int(on.sum())))])
        try:
            delta = np.linalg.lstsq(K, np.r_[-(A @ x), 1.0 - x.sum()], rcond=None)[0]
        except np.linalg.LinAlgError:
            break
        y = x.copy()
        y[on] += delta
        if (y < 0).any() or _spread_of(A, y) >= _spread_of(A, x):
            break
        x = y
    return x


def _polish(A: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Refine a feasible LP answer x: Newton on the equalities over supp x, or the non-negative
    least-squares solution of A x = 0, Σ x = 1 (scipy nnls, exact active set: HiGHS drops matrix
    entries below 1e-9, which can leave the LP a vertex ~1e-9 off); the candidate with the
    smallest spread wins, x itself if none improves on it."""
    from scipy.optimize import nnls
    best, best_s = x / x.sum(), _spread_of(A, x / x.sum())
    cands = [_newton_on_support(A, x)]
    try:
        cands.append(nnls(np.vstack([A, np.ones((1, A.shape[1]))]), np.r_[np.zeros(A.shape[0]), 1.0],
                          maxiter=50 * A.shape[1])[0])
    except (RuntimeError, ValueError):
        pass
    for y in cands:
        if (y >= 0).all() and y.sum() > 0:
            y = y / y.sum()
            if _spread_of(A, y) < best_s:
                best, best_s = y, _spread_of(A, y)
    return best


def _lp(inst, lp) -> tuple[np.ndarray, str]:
    c = correct_set(inst)
    if len(c) > LP_MAX_CORRECT:
        raise PcmiInputError(f"the D* linear program needs the PCMI block of {len(c)} correct rollouts (more than "
                             f"{LP_MAX_CORRECT}) for a {type(inst.teacher).__name__}: too large to solve exactly")
    M = pcmi_block(inst, c)
    ok_cols = np.isfinite(M).all(axis=0)  # a demonstration with T(y | y') = 0 at a correct y makes s(y) = −inf
    if not ok_cols.any():
        raise PcmiInputError("every correct demonstration gives some correct rollout teacher probability 0 "
                             "(PCMI = −inf), so E_D PCMI = −inf somewhere for every D: no finite spread, no D*")
    cols = np.flatnonzero(ok_cols)
    Mc = M[:, cols]
    scale = 1.0 + float(np.max(np.abs(Mc)))
    col_class = _classes(Mc.T, 1e-13 * scale)  # interchangeable demonstrations: equal PCMI columns
    n_cls = int(col_class.max()) + 1
    if n_cls > LP_MAX_COLUMNS:
        raise PcmiInputError(f"the D* linear program would have {n_cls} demonstration classes (more than "
                             f"{LP_MAX_COLUMNS}): too large to solve exactly")
    reps = np.array([np.flatnonzero(col_class == k)[0] for k in range(n_cls)])
    B = Mc[:, reps]
    row_class = _classes(B, 1e-13 * scale)  # rollouts with equal PCMI rows need one constraint
    B = B[np.array([np.flatnonzero(row_class == k)[0] for k in range(int(row_class.max()) + 1)])]
    A = B - B[:1]  # minus a reference row: adding a(y') to column y' shifts every row by a·D alike
    a_max = float(np.max(np.abs(A)))
    if a_max > 0:  # the spread scales with A: solve at unit scale, so HiGHS' tolerances are relative
        A = A / a_max
    x = np.asarray(lp(A), float)
    s = A @ x
    if float(s.max() - s.min()) <= 1e-6 and abs(x.sum() - 1) <= 1e-6 and (x >= 0).all():  # rounding only
        x = _polish(A, x)
    log_D = np.full(inst.n, -np.inf)
    with np.errstate(divide="ignore"):
        for k in range(n_cls):
            members = c[cols[col_class == k]]
            lb = inst.log_base[members]
            log_D[members] = np.log(x[k]) + lb - logsumexp(lb)  # inside a class: ∝ π0
    return log_D, "lp"


def dstar(inst, *, method: str = "auto", closed_form=route_copying_dstar, lp=min_spread_lp) -> DStar:
    """The ratio-preserving demonstration law: D on the correct rollouts (π0 > 0) with
    s(y) = E_D PCMI(y; y') the same for every correct y; where none exists, the D minimizing the
    spread max s − min s (method "lp_min_spread", feasible False).

    method "auto": the closed form (`route_copying_dstar`) for route-copying latent teachers and
    copy teachers, the LP otherwise; "closed_form" refuses other teachers; "lp" always solves the LP:
    variables D over the classes of equal PCMI columns, minimize u − l with l ≤ (M D)(y) ≤ u over
    correct y, Σ D = 1, D ≥ 0 (`min_spread_lp`), a (near-)feasible answer polished (`_polish`).
    The returned spread is recomputed from D with the teacher (`expected_pcmi_spread`)."""
    if method not in METHODS:
        raise PcmiInputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    correct_set(inst)
    view = _route_copying_view(inst.teacher)
    if method == "closed_form" and view is None:
        raise PcmiInputError(f"the D* closed form needs a route-copying or copy teacher, got {type(inst.teacher).__name__}")
    if view is not None and method != "lp":
        log_D, how = _closed_form(inst, view, closed_form), "closed_form"
    else:
        log_D, how = _lp(inst, lp)
    spread = expected_pcmi_spread(inst, log_D)
    if not np.isfinite(spread):
        raise PcmiInputError("no D with a finite spread: E_D PCMI = −inf on some correct rollout for the D found")
    feasible = spread <= FEASIBLE_TOL
    if how == "lp" and not feasible:
        how = "lp_min_spread"
    return DStar(log_D, spread, bool(feasible), how)


# --- proxies without route labels -------------------------------------------------------------

def self_pcmi(inst, idx=None, chunk: int = 256) -> np.ndarray:
    """σ(y') = PCMI(y'; y') = log T(y' | y') − log π0(y') for y' in idx (default: the correct set)."""
    idx = correct_set(inst) if idx is None else np.asarray(idx)
    out = np.empty(len(idx))
    for lo in range(0, len(idx), chunk):
        j = idx[lo:lo + chunk]
        out[lo:lo + chunk] = inst.teacher.log_rows(j)[np.arange(len(j)), j]
    return out - inst.log_base[idx]


def least_likely_demos(log_base, reward, group: int) -> np.ndarray:
    """Law of the least likely success (smallest π0; ties by lower index) of a group of G i.i.d.
    rollouts from π0, given that the group has ≥ 2 successes (the trainers' rule: a group's only
    success gets no demonstration). With the correct rollouts ordered by (π0, index), F = π0(r = 0),
    A_y = π0 mass of the correct rollouts after y: P(pick y, ≥ 2 successes) =
    G π_y Σ_{m=1}^{G−1} C(G−1, m) A_y^m F^{G−1−m}  (y once, ≥ 1 later success)
    + Σ_{k=2}^{G} C(G, k) π_y^k (F + A_y)^{G−k}  (y at least twice), every term ≥ 0, in log space."""
    if isinstance(group, bool) or not isinstance(group, (int, np.integer)) or group < 2:
        raise PcmiInputError(f"group must be an integer >= 2 (two successes are needed for a demonstration), got {group!r}")
    G = int(group)
    log_base, reward = np.asarray(log_base, float), np.asarray(reward)
    c = np.flatnonzero((reward == 1) & np.isfinite(log_base))
    if c.size == 0:
        raise PcmiInputError(NO_SUCCESS + ", so no group has a success to demonstrate")
    order = c[np.lexsort((c, log_base[c]))]  # ascending π0, ties by index
    lp = log_base[order]
    fail = ~((reward == 1) & np.isfinite(log_base))
    log_F = logsumexp(log_base[fail]) if fail.any() else -np.inf
    suffix = np.full(len(order), -np.inf)  # log A_y: mass of the correct rollouts after y
    for i in range(len(order) - 2, -1, -1):
        suffix[i] = np.logaddexp(suffix[i + 1], lp[i + 1])
    log_FA = np.logaddexp(log_F, suffix)

    def log_binom(n, k):
        return gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1)

    def xlogy(k, log_v):  # k·log v with 0·log 0 = 0
        with np.errstate(invalid="ignore"):
            return np.where(k == 0, 0.0, k * log_v)

    m = np.arange(1, G)[None, :]
    t1 = np.log(G) + lp + logsumexp(log_binom(G - 1, m) + xlogy(m, suffix[:, None])
                                    + xlogy(G - 1 - m, np.full((len(order), 1), log_F)), axis=1)
    k = np.arange(2, G + 1)[None, :]
    t2 = logsumexp(log_binom(G, k) + k * lp[:, None] + xlogy(G - k, log_FA[:, None]), axis=1)
    log_pick = np.logaddexp(t1, t2)
    if not np.isfinite(logsumexp(log_pick)):
        raise PcmiInputError("no group of rollouts has two successes (π0(r = 1) = 0 or one success only)")
    out = np.full(len(log_base), -np.inf)
    out[order] = log_pick - logsumexp(log_pick)
    return out


def proxy_demos(inst, kind: str, gamma: float = 1.0, group: int = 8) -> np.ndarray:
    """log D of a label-free proxy for D*, on the correct rollouts with π0 > 0:
    "default":      π0(· | r = 1);
    "inverse_prob": D ∝ π0(y | r = 1)·π0(y)^(−γ) (γ = 0: the default, γ = 1: uniform over correct rollouts);
    "self_pcmi":    D ∝ π0(y | r = 1)·exp(γ·σ(y)), σ(y) = log T(y|y) − log π0(y) (γ = 1: D ∝ T(y|y) on the
                    correct set; the eps → 0 and eps → 1 limits of D* for route-copying teachers, theory.md);
    "least_likely": the law of a group's least likely success (`least_likely_demos`, G = group)."""
    if kind not in PROXY_KINDS:
        raise PcmiInputError(f"unknown proxy {kind!r}; expected one of {', '.join(PROXY_KINDS)}")
    if kind == "least_likely":
        return least_likely_demos(inst.log_base, inst.reward, group)
    gamma = number(gamma, "gamma")
    c = correct_set(inst)
    if kind == "default":
        return demos_from_successes(inst.log_base, inst.reward)
    lb = inst.log_base[c]
    w = lb + (-gamma * lb if kind == "inverse_prob" else gamma * self_pcmi(inst, c))
    if np.isnan(w).any() or not np.isfinite(logsumexp(w)):
        raise PcmiInputError(f"the {kind} weights vanish (or overflow) on every correct rollout: no proxy law")
    out = np.full(inst.n, -np.inf)
    out[c] = w - logsumexp(w)
    return out


# --- on-policy rounds --------------------------------------------------------------------------

def demo_law(kind: str, gamma: float = 1.0, group: int = 8):
    """inst -> log D for kind "dstar" (D*, or its min-spread stand-in) or a `proxy_demos` kind."""
    if kind == "dstar":
        return lambda inst: dstar(inst).log_demos
    if kind not in PROXY_KINDS:
        raise PcmiInputError(f"unknown demonstration law {kind!r}; expected dstar or one of {', '.join(PROXY_KINDS)}")
    return lambda inst: proxy_demos(inst, kind, gamma, group)


@dataclass
class DemoRounds:
    log_pis: list          # π_0 = π0, π_1, … (log)
    converged: bool        # TV(π_k, π_{k−1}) ≤ tol at the last round
    residual: float        # that TV

    @property
    def one_round(self) -> np.ndarray:
        return self.log_pis[1]

    @property
    def fixed_point(self) -> np.ndarray:
        return self.log_pis[-1]


def demo_rounds(inst, kind: str = "dstar", *, gamma: float = 1.0, group: int = 8, max_rounds: int = 200,
                tol: float = 1e-12) -> DemoRounds:
    """On-policy rounds (theory.md §4) with the demonstration law recomputed each round:
    π_{k+1} = sdsd_optimum(inst_k with D_k = law(inst_k)), inst_k = `on_policy_instance` of π_k
    (base π_k, teacher rebuilt from π_k), until TV(π_{k+1}, π_k) ≤ tol or max_rounds."""
    if isinstance(max_rounds, bool) or not isinstance(max_rounds, (int, np.integer)) or max_rounds < 1:
        raise PcmiInputError(f"max_rounds must be an integer >= 1, got {max_rounds!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating)) or not np.isfinite(tol) or tol < 0:
        raise PcmiInputError(f"tol must be a finite number >= 0, got {tol!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating)) or not np.isfinite(tol) or tol < 0:
        raise PcmiInputError(f"tol must be a finite number >= 0, got {tol!r}")
    law = demo_law(kind, gamma, group)
    cur, pis, tv = inst, [inst.log_base], np.inf
    for k in range(int(max_rounds)):
        if k > 0:
            cur = on_policy_instance(cur, pis[-1], k)
        pis.append(sdsd_optimum(cur.with_demos(law(cur))))
        tv = total_variation(pis[-1], pis[-2])
        if tv <= tol and k > 0:
            break
    return DemoRounds(pis, bool(tv <= tol), float(tv))


def dstar_fixed_point(inst, kind: str = "dstar", **options) -> np.ndarray:
    """log π of the on-policy fixed point of SDSD rounds with demonstration law `kind` (`demo_rounds`)."""
    return demo_rounds(inst, kind, **options).fixed_point


def _summary(log_pi, inst) -> dict:
    out = {"success": success(log_pi, inst.reward)}
    if inst.route is not None and out["success"] > 0:
        out["strategy_mass_entropy"] = strategy_mass_entropy(log_pi, inst.reward, inst.route)
    return out


def compare_demo_laws(inst, kinds=PROXY_KINDS, *, gamma: float = 1.0, group: int = 8, max_rounds: int = 200,
                      tol: float = 1e-12) -> dict:
    """How close each proxy comes to D*: TV of its law to D* at π0, of its one-round SDSD optimum to
    D*'s, of its on-policy fixed point to D*'s; success and strategy-mass entropy of both."""
    ref = demo_rounds(inst, "dstar", max_rounds=max_rounds, tol=tol)
    d_ref = dstar(inst).log_demos
    out = {}
    for kind in ("dstar", *kinds):
        r = ref if kind == "dstar" else demo_rounds(inst, kind, gamma=gamma, group=group, max_rounds=max_rounds, tol=tol)
        law = demo_law(kind, gamma, group)(inst)
        out[kind] = {"demo_tv_to_dstar": total_variation(law, d_ref),
                     "demos": [float(x) for x in probs(law)],
                     "one_round": {**_summary(r.one_round, inst), "tv_to_dstar": total_variation(r.one_round, ref.one_round)},
                     "fixed_point": {**_summary(r.fixed_point, inst),
                                     "tv_to_dstar": total_variation(r.fixed_point, ref.fixed_point),
                                     "rounds": len(r.log_pis) - 1, "converged": r.converged, "residual": r.residual}}
    return out
