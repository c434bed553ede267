"""Executable propositions P1–P8 of theory.md §6.

Each `check_pN(...)` returns Result(holds, margin, details): `margin` is the slack of the
statement (≥ 0 when it holds; for equalities, tolerance minus the error), `details` the numbers
behind it. `search_counterexamples` runs a check over generated instances and reports the
fraction that hold and the smallest failing instance.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax, logsumexp

from .distributions import kl, total_variation
from .dynamics import forward_kl_rounds, on_policy_instance, rl_rounds
from .instance import Instance
from .metrics import ood_success, ratio_distortion, strategy_mass_entropy, strategy_masses, success
from .policies import (forward_kl_optimum, rl_beta_for_success, rl_optimum, sdsd_optimum,
                       sdsd_sequence_from_tokens, sdsd_token_optimum, teacher_classes_at_leaves,
                       token_level)
from .scores import pcmi_matrix
from .teachers import LatentStrategyTeacher

TOL = 1e-9  # equalities in log space / probability


@dataclass
class Result:
    holds: bool
    margin: float
    details: dict = field(default_factory=dict)


def _masses(log_pi, inst) -> np.ndarray:
    """Strategy masses π(z | r = 1), ordered by strategy id."""
    m = strategy_masses(log_pi, inst.reward, inst.route)
    return np.array([m[z] for z in sorted(m)])


# P1 ------------------------------------------------------------------------------------------
def check_p1(log_base, reward, beta: float) -> Result:
    """RL keeps ratios: π_RL(y1)/π_RL(y2) = π0(y1)/π0(y2) for every correct pair, every β > 0."""
    log_rl = rl_optimum(log_base, reward, beta)
    err = ratio_distortion(log_rl, log_base, reward)
    scale = 1 + float(np.max(np.abs(np.asarray(log_base)[np.isfinite(log_base)])))
    tol = TOL * scale
    return Result(err <= tol, tol - err, {"max_log_ratio_error": err, "beta": beta})


# P2 ------------------------------------------------------------------------------------------
def reverse_kl_objective(log_s, w, log_T) -> float:
    """F(π) = Σ_c w_c KL(π ‖ T_c) — the SDSD objective with D grouped into classes c."""
    s = np.exp(log_s)
    m = s > 0
    return float(np.sum(s[m] * (log_s[m] - (w[:, None] * log_T[:, m]).sum(axis=0))))


def numerical_reverse_kl_minimizer(inst: Instance) -> np.ndarray:
    """Minimize E_D KL(π ‖ T(·|y')) = Σ s log s − s·e (e = E_D log T) over the simplex by
    trust-region Newton on softmax logits, started from the uniform policy: an independent
    route to the closed form (it never evaluates exp(e)/Σ exp(e))."""
    w_c, log_T = teacher_classes_at_leaves(inst)
    w_c = w_c / w_c.sum()
    support = np.all(np.isfinite(log_T[w_c > 0]), axis=0)  # outside it the objective is +∞
    lt = np.where(support[None, :], log_T, 0.0)[:, support]
    e = (w_c[:, None] * lt).sum(axis=0)

    m = int(support.sum())

    def parts(v):  # logits u = (0, v): the gauge is fixed, so the Hessian is non-singular
        log_s = log_softmax(np.r_[0.0, v])
        s = np.exp(log_s)
        d = (log_s - e) - s @ (log_s - e)
        return log_s, s, d

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

    v = np.zeros(m - 1)
    for method in ("trust-exact", "trust-krylov", "L-BFGS-B"):  # each polishes the last
        if m == 1 or np.max(np.abs(jac(v))) < 1e-16:
            break
        kw = {"hess": hess, "options": {"gtol": 1e-16, "maxiter": 5000}} if method != "L-BFGS-B" else \
            {"options": {"ftol": 1e-300, "gtol": 1e-16, "maxiter": 20000}}
        try:
            v = minimize(fun, v, jac=jac, method=method, **kw).x
        except (UnboundLocalError, np.linalg.LinAlgError, ValueError):
            continue
    out = np.full(inst.n, -np.inf)
    out[support] = log_softmax(np.r_[0.0, v])
    return out


def check_p2(inst: Instance, tol: float = 1e-7) -> Result:
    """PCMI tilt: argmin_π E_D KL(π ‖ T) equals π0·exp(s)/Z (checked against numerical minimization)."""
    closed = sdsd_optimum(inst)
    numeric = numerical_reverse_kl_minimizer(inst)
    err = float(np.max(np.abs(np.exp(closed) - np.exp(numeric))))
    w, log_T = teacher_classes_at_leaves(inst)
    f_closed = reverse_kl_objective(closed, w / w.sum(), log_T)
    f_num = reverse_kl_objective(numeric, w / w.sum(), log_T)
    ok = err <= tol and f_closed <= f_num + 1e-10 * (1 + abs(f_num))
    return Result(ok, tol - err, {"max_abs_error": err, "objective_closed": f_closed, "objective_numeric": f_num})


# P3 ------------------------------------------------------------------------------------------
def check_p3(teacher: LatentStrategyTeacher) -> Result:
    """Bayesian teacher (eps = 0): PCMI symmetric and Σ_y' π0(y') T(y|y') = π0(y)."""
    if teacher.eps != 0:
        raise ValueError("P3 is about Bayesian teachers: eps must be 0")
    n = teacher.n
    inst = Instance(teacher.log_base, np.ones(n, dtype=np.int64), teacher, teacher.log_base)
    M = pcmi_matrix(inst)
    both = np.isfinite(M) & np.isfinite(M.T)
    with np.errstate(invalid="ignore"):
        sym_err = float(np.max(np.abs(M - M.T)[both])) if both.any() else 0.0
    pattern_ok = bool(np.array_equal(np.isfinite(M), np.isfinite(M.T)))
    marg = logsumexp(teacher.log_base[:, None] + (M + teacher.log_base[None, :]), axis=0)
    marg_err = float(np.max(np.abs(np.exp(marg) - np.exp(teacher.log_base))))
    err = max(sym_err, marg_err)
    return Result(pattern_ok and err <= 1e-8, 1e-8 - err, {"symmetry_error": sym_err, "marginal_error": marg_err})


# P4 ------------------------------------------------------------------------------------------
def amplification(inst: Instance, log_pi=None) -> dict:
    """For each pair of strategies with w_a > w_b (correct-conditioned base masses):
    log(mass_SD(a)/mass_SD(b)) − log(w_a/w_b); amplification means all are > 0."""
    log_pi = sdsd_optimum(inst) if log_pi is None else log_pi
    w, m = _masses(inst.log_base, inst), _masses(log_pi, inst)
    gaps = []
    for a in range(len(w)):
        for b in range(len(w)):
            if w[a] > 0 and w[b] > 0 and np.log(w[a] / w[b]) > 1e-6:
                gaps.append(np.log(m[a]) - np.log(m[b]) - np.log(w[a] / w[b]) if m[b] > 0 else np.inf)
    return {"gaps": gaps, "min_gap": float(min(gaps)) if gaps else float("inf"),
            "base_masses": w.tolist(), "sdsd_masses": m.tolist()}


def check_p4(inst: Instance) -> Result:
    """Gap amplification (route-copying, all correct, 0 < eps < 1): w_a > w_b ⇒
    mass_SD(a)/mass_SD(b) > w_a/w_b; ratios inside a strategy kept; and the closed form
    log mass_SD(z) = const + log w_z + D_z·log(1 + (1−eps)/(eps·w_z)) holds."""
    t = inst.teacher
    log_pi = sdsd_optimum(inst)
    amp = amplification(inst, log_pi)
    inside = max(ratio_distortion(log_pi, inst.log_base, inst.reward * (inst.route == z)) for z in np.unique(inst.route))
    w = _masses(inst.log_base, inst)
    D = np.array([np.exp(logsumexp(inst.log_demos[inst.route == z])) for z in sorted(np.unique(inst.route))])
    pred = np.log(w) + D * np.log1p((1 - t.eps) / (t.eps * w))
    pred = np.exp(pred - logsumexp(pred))
    cf_err = float(np.max(np.abs(pred - np.array(amp["sdsd_masses"]))))
    # the amplification predicted by the closed form, φ(w_a) − φ(w_b) > 0 with
    # φ(w) = w·log1p(c/w), is exact in floating point even where the measured log-ratio gap
    # (a difference of O(1) logs) is below double resolution: require both
    phi = w * np.log1p((1 - t.eps) / (t.eps * w))
    pred_gaps = [phi[a] - phi[b] for a in range(len(w)) for b in range(len(w)) if np.log(w[a] / w[b]) > 1e-6]
    amp["min_predicted_gap"] = float(min(pred_gaps)) if pred_gaps else float("inf")
    ok = amp["min_gap"] > -1e-12 and amp["min_predicted_gap"] > 0 and inside <= 1e-8 and cf_err <= 1e-8
    return Result(ok, min(amp["min_predicted_gap"], amp["min_gap"] + 1e-12, 1e-8 - inside, 1e-8 - cf_err),
                  {**amp, "inside_ratio_error": inside, "closed_form_error": cf_err, "eps": t.eps})


def check_p4_general(inst: Instance) -> Result:
    """The P4 statement outside its conditions (failures, overlapping strategies): a tendency."""
    amp = amplification(inst)
    return Result(amp["min_gap"] > 1e-12, amp["min_gap"], amp)


# P5 ------------------------------------------------------------------------------------------
def check_p5(inst: Instance) -> Result:
    """Token vs sequence: π_SD(a|h) ∝ exp(E_D log T(a|h,y'))·Z(h·a) exactly, and π_tok = π_SD
    iff Z(h·a) does not depend on a at every prefix h that π_SD reaches."""
    tree = inst.tree
    seq = sdsd_optimum(inst)
    rel_err = float(np.max(np.abs(np.exp(sdsd_sequence_from_tokens(inst)) - np.exp(seq))))
    tok = sdsd_token_optimum(inst)
    tv = total_variation(tok, seq)
    tl = token_level(inst)
    reach = tree.prefix_logsumexp(seq)
    live = np.isfinite(tl.g) & np.isfinite(reach)
    lo = np.full(tree.n_nodes, np.inf)
    hi = np.full(tree.n_nodes, -np.inf)
    kids = np.flatnonzero(live[1:]) + 1
    np.minimum.at(lo, tree.parent[kids], tl.log_Z[kids])
    np.maximum.at(hi, tree.parent[kids], tl.log_Z[kids])
    spread = np.where(hi >= lo, hi - lo, 0.0)
    weighted = float(np.max(np.exp(reach) * spread))  # how much Z varies where π_SD goes
    z_const = weighted <= 1e-12
    iff_ok = (tv <= 1e-9) if z_const else (tv > 0)
    return Result(rel_err <= 1e-9 and iff_ok, min(1e-9 - rel_err, (1e-9 - tv) if z_const else tv),
                  {"relation_error": rel_err, "tv_token_vs_sequence": tv, "z_spread_weighted": weighted,
                   "z_constant": bool(z_const)})


# P6 ------------------------------------------------------------------------------------------
def check_p6(inst: Instance) -> Result:
    """Bayesian teacher, D = π0 (all correct): π_fwd = π0, while π_SD may differ (reported)."""
    fwd = forward_kl_optimum(inst)
    err = float(np.max(np.abs(np.exp(fwd) - np.exp(inst.log_base))))
    sd = sdsd_optimum(inst)
    return Result(err <= 1e-9, 1e-9 - err, {"fwd_error": err, "kl_sdsd_base": kl(sd, inst.log_base),
                                            "tv_sdsd_base": total_variation(sd, inst.log_base)})


# P7 ------------------------------------------------------------------------------------------
def check_p7(inst: Instance, max_rounds: int = 400) -> Result:
    """Collapse: SDSD rounds (route-copying, all correct) lower the strategy-mass entropy
    monotonically and converge to the heaviest strategy when it is unique; forward-KL and RL
    rounds keep the ratios between strategies."""
    log_pi, cur, k = inst.log_base, inst, 0
    ent = [strategy_mass_entropy(log_pi, inst.reward, inst.route)]
    hist = [_masses(log_pi, inst)]
    while k < max_rounds and (k < 8 or hist[-1].max() < 1 - 1e-6):
        log_pi = sdsd_optimum(cur)
        cur = on_policy_instance(cur, log_pi)
        ent.append(strategy_mass_entropy(log_pi, inst.reward, inst.route))
        hist.append(_masses(log_pi, inst))
        k += 1
    a = int(np.argmax(hist[0]))
    top_rising = all(h1[a] > h0[a] or h1[a] >= 1 - 1e-12 for h0, h1 in zip(hist[:-1], hist[1:]))
    odds = [np.log(h[a]) - np.log(h) for h in hist[-3:]]
    last_gains = [(g0, g1) for g0, g1 in zip(odds[1] - odds[0], odds[2] - odds[1])] if len(odds) == 3 else []
    last_gains = [pair for b, pair in enumerate(last_gains) if b != a]
    rise = float(max(np.diff(ent).max(), 0.0))
    w = _masses(inst.log_base, inst)
    top = np.sort(w)[::-1]
    unique = len(top) < 2 or top[0] > top[1] * (1 + 1e-9)
    heaviest = int(np.argmax(w))
    final = _masses(log_pi, inst)
    reached = final[heaviest] >= 1 - 1e-6
    # Not reached within max_rounds (eps near 1 tilts slowly): certify the limit instead. The
    # log-odds gain of the top strategy a over b per round is φ(m_a) − φ(m_b) with
    # φ(m) = m·log(1 + (1−eps)/(eps·m)) increasing, so once m_a grows and every m_b shrinks the
    # gains are positive and non-decreasing, and the odds diverge.
    certified = bool(top_rising) and all(gl > 0 and gl >= g0 - 1e-12 for g0, gl in last_gains)
    converged = (not unique) or reached or certified
    keep = 0.0
    for r in forward_kl_rounds(inst, 3)[1:] + rl_rounds(inst, 3, 1.0)[1:]:
        keep = max(keep, float(np.max(np.abs(np.log(_masses(r.log_pi, inst)) - np.log(w)))))
    ok = rise <= 1e-9 and converged and keep <= 1e-8
    conv_margin = (1.0 if not unique else final[heaviest] - (1 - 1e-6) if reached
                   else min(gl for _, gl in last_gains) if certified else final[heaviest] - (1 - 1e-6))
    return Result(ok, min(1e-9 - rise, 1e-8 - keep, conv_margin),
                  {"entropy": ent[:10], "rounds": k, "final_top_mass": float(final[heaviest]),
                   "reached": bool(reached), "certified_by_rising_gains": bool(certified),
                   "max_entropy_rise": rise, "ratio_drift_fwd_rl": keep})


# P8 ------------------------------------------------------------------------------------------
def _dominant_blocked(inst: Instance) -> np.ndarray:
    w = strategy_masses(inst.log_base, inst.reward, inst.route)
    dom = max(w, key=w.get)
    return inst.route == dom


def diversity_comparison(inst: Instance, beta: float | None = None) -> dict:
    """SDSD vs RL (β given, or matched so that RL's success equals SDSD's): strategy-mass
    entropy and OOD success with the base policy's dominant route blocked."""
    sd = sdsd_optimum(inst)
    p_sd, p0 = success(sd, inst.reward), success(inst.log_base, inst.reward)
    if beta is None:
        beta = 1.0 if p0 >= 1 - 1e-12 else rl_beta_for_success(p0, p_sd)
    rl = rl_optimum(inst.log_base, inst.reward, beta)
    blocked = _dominant_blocked(inst)
    w, m_sd = _masses(rl, inst), _masses(sd, inst)
    cums = np.cumsum(np.sort(m_sd)[::-1]) - np.cumsum(np.sort(w)[::-1])
    return {"beta": beta, "success_sdsd": p_sd, "success_rl": success(rl, inst.reward),
            "H_sdsd": strategy_mass_entropy(sd, inst.reward, inst.route),
            "H_rl": strategy_mass_entropy(rl, inst.reward, inst.route),
            "ood_sdsd": ood_success(sd, inst.reward, blocked), "ood_rl": ood_success(rl, inst.reward, blocked),
            "majorization_gap": float(cums.min())}


def check_p8(inst: Instance, beta: float = 1.0) -> Result:
    """Diversity cost (route-copying, all correct): RL keeps π0's strategy masses, SDSD's
    majorize them, so SDSD's strategy-mass entropy and OOD success are at most RL's."""
    d = diversity_comparison(inst, beta)
    d["rl_mass_drift"] = float(np.max(np.abs(_masses(rl_optimum(inst.log_base, inst.reward, beta), inst)
                                              - _masses(inst.log_base, inst))))
    tol = 1e-12
    margin = min(d["majorization_gap"] + tol, d["H_rl"] - d["H_sdsd"] + tol, d["ood_rl"] - d["ood_sdsd"] + tol,
                 1e-9 - d["rl_mass_drift"])
    return Result(margin >= 0, margin, d)


def check_p8_failures(inst: Instance) -> Result | None:
    """The P8 comparison with failing rollouts and β matched to SDSD's success: a tendency.
    None when no β > 0 matches (SDSD's success not above the base's)."""
    p0, p_sd = success(inst.log_base, inst.reward), success(sdsd_optimum(inst), inst.reward)
    if not p0 < p_sd < 1:
        return None
    d = diversity_comparison(inst)
    margin = min(d["H_rl"] - d["H_sdsd"], d["ood_rl"] - d["ood_sdsd"])
    return Result(margin >= -1e-12, margin, d)


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

    @property
    def hold_rate(self) -> float:
        return self.held / self.tried if self.tried else float("nan")


def describe(inst: Instance) -> dict:
    """A small JSON-able description of an instance (for counterexample reports)."""
    return {"name": inst.name, "n": inst.n, "base": np.round(np.exp(inst.log_base), 6).tolist(),
            "reward": inst.reward.tolist(),
            "route": None if inst.route is None else inst.route.tolist()}


def search_counterexamples(name: str, kind: str, make, check, n: int, rng) -> SearchReport:
    """Run `check(make(rng))` n times; keep the smallest (fewest rollouts) failing instance."""
    held = skipped = tried = 0
    smallest, best = np.inf, None
    for _ in range(n):
        inst = make(rng)
        res = check(inst)
        if res is None:
            skipped += 1
            continue
        tried += 1
        held += bool(res.holds)
        smallest = min(smallest, res.margin)
        size = getattr(inst, "n", 0)
        if not res.holds and (best is None or (size, res.margin) < (best["instance"]["n"], best["margin"])):
            best = {"instance": describe(inst) if isinstance(inst, Instance) else {"n": size},
                    "margin": res.margin, "details": _jsonable(res.details)}
    return SearchReport(name, kind, tried, held, skipped, float(smallest), best)


def _jsonable(d):
    if isinstance(d, dict):
        return {str(k): _jsonable(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_jsonable(v) for v in d]
    if isinstance(d, (np.floating, float)):
        return float(d)
    if isinstance(d, (np.integer, int)):
        return int(d)
    if isinstance(d, np.ndarray):
        return _jsonable(d.tolist())
    return d
