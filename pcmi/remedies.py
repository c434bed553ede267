"""Remedies for SDSD's collapse, computed exactly (theory.md §10; derivations in docs/remedies.md).

Every remedy is a function `f(inst, knob, *, log_ref=None) -> log π` over Y(x): the optimum of
one round against the instance's demonstrations D and teacher T, with log_ref the KL reference
π0 of the terms that have one (default: the instance's base policy). Notation: g(y) = E_D log T(y|y')
(−inf where some demonstration rules y out), r the reward, π0 = the reference.

    rl           max E_π r − β KL(π‖π0)                          π ∝ π0·exp(r/β)
    sdsd         min E_D KL(π‖T)                                  π ∝ exp(g)
    blend        max λ(E_π r − β KL(π‖π0)) − (1−λ) E_D KL(π‖T)     π ∝ exp[(λ(r + β log π0) + (1−λ) g)/(λβ + 1 − λ)]
    split        max Σ_{r=1} π(y)[1 − β log(π/π0)] + Σ_{r=0} π(y)[g − log π]
                                                                  π = π0·e^{1/β − 1 + x/β} on r=1, e^{g − 1 + x} on r=0
    forward_kl   min E_D KL(T‖π)                                  π = E_D T(·|y')
    js           min E_D D_α(π, T)                                (solved exactly, `policies.js_optimum`)
    contrastive  max E_π s_c − β KL(π‖π0)                         π ∝ π0·exp(s_c/β)
    entropy      min E_D KL(π‖T) − η H(π)                         π ∝ exp(g/(1 + η))
    anchor       min E_D KL(π‖T) + κ KL(π‖π0)                     π ∝ exp((g + κ log π0)/(1 + κ))
    dstar        SDSD with the ratio-preserving demonstrations D* (`pcmi.demonstrations.dstar`)

`remedy_rounds` iterates any of them on-policy (theory.md §4: D_k = π_k(·|r=1), teacher rebuilt from
π_k by `next_instance`: `pcmi.dynamics.on_policy_instance` where its rebuild is exact) until the total variation between rounds is ≤ tol;
`matched_knob` finds the knob at which KL(π‖π0) equals a target (brentq on a scanned grid).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy.optimize import brentq

from .distributions import condition, kl, log_normalize, logsumexp, total_variation
from .dynamics import on_policy_instance
from .checks import count, in_range, number, positive
from .errors import PcmiInputError
from .instance import Instance, demos_from_successes, has_reachable_success
from .metrics import correct_entropy, ood_success, strategy_mass_entropy, success
from .policies import (check_beta, contrastive_optimum, contrastive_score, forward_kl_optimum, js_optimum,
                       rl_optimum, sdsd_optimum)
from .scores import expected_log_teacher_leaves
from .teachers import LatentStrategyTeacher


# --- checks ---------------------------------------------------------------------------------

def _ref(inst, log_ref) -> np.ndarray:
    if log_ref is None:
        return inst.log_base
    log_ref = np.asarray(log_ref, float)
    if log_ref.shape != (inst.n,):
        raise PcmiInputError(f"the reference π0 has {log_ref.size} entries but there are {inst.n} rollouts")
    return log_ref


def _g(inst) -> np.ndarray:
    return expected_log_teacher_leaves(inst)


def _times(c: float, log_v: np.ndarray) -> np.ndarray:
    """c·log v with 0·(−inf) = 0 (a term with weight 0 is absent)."""
    if c == 0:
        return np.zeros_like(log_v)
    return c * log_v


def _normalized(log_w: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(np.max(log_w)):
        raise PcmiInputError(f"{what}: every rollout has weight zero (each is ruled out by the teacher under "
                             "some demonstration or by the reference π0), so the objective is infinite for every policy")
    return log_normalize(log_w)


# --- the remedies (one round) ---------------------------------------------------------------

def rl_remedy(inst, beta, *, log_ref=None) -> np.ndarray:
    """max E_π r − β KL(π‖π0)  ⇒  π ∝ π0·exp(r/β) (`policies.rl_optimum`)."""
    return rl_optimum(_ref(inst, log_ref), inst.reward, beta)


def sdsd_remedy(inst, knob=None, *, log_ref=None) -> np.ndarray:
    """min E_D KL(π‖T(·|y'))  ⇒  π ∝ exp(E_D log T) (`policies.sdsd_optimum`; no knob, no reference)."""
    return sdsd_optimum(inst)


def blend_optimum(inst, lam, *, beta: float = 1.0, log_ref=None) -> np.ndarray:
    """max_π λ(E_π r − β KL(π‖π0)) − (1 − λ) E_D KL(π‖T(·|y'))
    ⇒ π ∝ exp[(λ(r + β log π0) + (1 − λ) E_D log T) / (λβ + 1 − λ)]  (0 ≤ λ ≤ 1, β > 0).
    λ = 0 is `sdsd_optimum`, λ = 1 is `rl_optimum`; for 0 < λ the support is supp π0 ∩ {g > −inf}
    (λ < 1) or supp π0 (λ = 1)."""
    lam = in_range(lam, "lambda", 0.0, 1.0)
    beta = check_beta(beta)
    log_ref, g = _ref(inst, log_ref), (_g(inst) if lam < 1 else np.zeros(inst.n))
    num = lam * inst.reward + _times(lam * beta, log_ref) + _times(1 - lam, g)
    return _normalized(num / (lam * beta + 1 - lam), "blend of RL and SDSD")


def split_optimum(inst, beta, *, log_ref=None) -> np.ndarray:
    """SDSD on failures, RL on successes: each rollout earns the integrand of the loss that applies to it,
        max_π J(π) = Σ_{y: r=1} π(y)[1 − β log(π(y)/π0(y))] + Σ_{y: r=0} π(y)[g(y) − log π(y)],
    strictly concave on the simplex. Stationarity (∂J/∂π(y) = μ on the support) gives
        log π(y) = log π0(y) + 1/β − 1 + x/β  (r = 1),   log π(y) = g(y) − 1 + x  (r = 0),
    with x = −μ the one root of logaddexp(a + 1/β − 1 + x/β, b − 1 + x) = 0, a = log π0(r=1),
    b = log Σ_{r=0} e^g (increasing in x; closed form when a or b is −inf). Ratios among correct
    rollouts are π0's."""
    beta = check_beta(beta)
    log_ref, g = _ref(inst, log_ref), _g(inst)
    ok = inst.reward == 1
    a = logsumexp(np.where(ok, log_ref, -np.inf))
    b = logsumexp(np.where(ok, -np.inf, g))
    if not np.isfinite(a) and not np.isfinite(b):
        raise PcmiInputError("SDSD on failures with RL on successes: π0 has no correct rollout and the teacher "
                             "rules out every failing rollout, so the objective is −inf for every policy")
    c = 1.0 / beta - 1.0
    if not np.isfinite(b):
        x = -beta * (a + c)
    elif not np.isfinite(a):
        x = 1.0 - b
    else:
        f = lambda x: float(np.logaddexp(a + c + x / beta, b - 1.0 + x))  # noqa: E731
        hi = max(-beta * (a + c), 1.0 - b)  # one term is e^0 there: f(hi) ≥ 0
        lo = min(-beta * (a + c + np.log(2.0)), 1.0 - b - np.log(2.0))  # both terms ≤ 1/2: f(lo) ≤ 0
        x = brentq(f, lo, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=500)
    with np.errstate(invalid="ignore"):
        out = np.where(ok, log_ref + c + x / beta, g - 1.0 + x)
    return log_normalize(out)  # removes the last rounding of the root


def forward_kl_remedy(inst, knob=None, *, log_ref=None) -> np.ndarray:
    """min E_D KL(T(·|y')‖π)  ⇒  π = E_D T(·|y') (`policies.forward_kl_optimum`; no knob)."""
    return forward_kl_optimum(inst)


def js_remedy(inst, alpha, *, log_ref=None) -> np.ndarray:
    """min E_D D_α(π, T(·|y')) (α = 1 reverse, α = 0 forward KL), exact (`policies.js_optimum`);
    raises when the KKT residual exceeds 1e-10."""
    res = js_optimum(inst, alpha)
    if res.kkt_residual > 1e-10:
        raise PcmiInputError(f"JS(α={alpha}) optimum not certified: KKT residual {res.kkt_residual:.3g} > 1e-10")
    return res.log_pi


def contrastive_remedy(inst, beta, *, log_ref=None) -> np.ndarray:
    """max E_π s_c − β KL(π‖π0) ⇒ π ∝ π0·exp(s_c/β), s_c = `policies.contrastive_score` (baseline
    B = the instance's base policy); β = 1 with π0 = the base is `policies.contrastive_optimum`.
    Where s_c = +inf on a set S the optimum is π0(· | S) for every β."""
    beta = check_beta(beta)
    if log_ref is None and beta == 1.0:
        return contrastive_optimum(inst)
    log_ref, s_c = _ref(inst, log_ref), contrastive_score(inst)
    plus = (s_c == np.inf) & np.isfinite(log_ref)
    if plus.any():
        return condition(log_ref, plus)
    with np.errstate(invalid="ignore"):
        w = np.where(np.isfinite(s_c), log_ref + s_c / beta, -np.inf)
    return _normalized(w, "contrastive score")


def entropy_bonus_optimum(inst, eta, *, log_ref=None) -> np.ndarray:
    """min_π E_D KL(π‖T(·|y')) − η H(π) = −(1 + η) H(π) − E_π g  ⇒  π ∝ exp(g / (1 + η)).
    Defined for η > −1 (η ≥ 0 is a bonus; at η ≤ −1 the objective is concave and the minimum sits at
    a vertex). η = 0 is `sdsd_optimum`; η → ∞ is uniform on {g > −inf}."""
    eta = number(eta, "eta")
    if eta <= -1:
        raise PcmiInputError(f"eta must be > −1 (the entropy weight 1 + η must stay positive), got {eta!r}")
    return _normalized(_g(inst) / (1.0 + eta), "entropy bonus")


def anchor_optimum(inst, kappa, *, log_ref=None) -> np.ndarray:
    """min_π E_D KL(π‖T(·|y')) + κ KL(π‖π0)  ⇒  π ∝ exp((g + κ log π0) / (1 + κ))  (κ ≥ 0): the
    geometric path π_SD^{1/(1+κ)}·π0^{κ/(1+κ)} from SDSD (κ = 0) to π0 (κ → ∞)."""
    kappa = number(kappa, "kappa")
    if kappa < 0:
        raise PcmiInputError(f"kappa must be >= 0, got {kappa!r}")
    log_ref = _ref(inst, log_ref)
    return _normalized((_g(inst) + _times(kappa, log_ref)) / (1.0 + kappa), "anchor toward π0")


def dstar_remedy(inst, knob=None, *, log_ref=None) -> np.ndarray:
    """SDSD with the ratio-preserving demonstration law D* (theory.md §10):
    π ∝ exp(E_{D*} log T), D* = `pcmi.demonstrations.dstar(inst).log_demos`."""
    from .demonstrations import dstar  # lazy: written by another module's author
    return sdsd_optimum(inst.with_demos(dstar(inst).log_demos))


# --- the table ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Remedy:
    function: Callable
    knob: str | None                 # name of the knob (None: a point)
    knob_range: tuple | None         # (lo, hi) of the knob that curves and matching scan
    definition: str                  # one line
    sdsd_at: float | None = None     # knob value at which the one-round optimum is SDSD's
    kl_monotone: str = ""            # what is proved about KL(π‖π0) along the knob (one round)
    scale: str = "linear"            # how the curves space the knob: linear | log | log1p

    def __iter__(self):  # (function, knob name, knob range, definition), as the table was specified
        return iter((self.function, self.knob, self.knob_range, self.definition))


#: name → Remedy(function, knob name, knob range, one-line definition, ...)
REMEDIES = {
    "sdsd": Remedy(sdsd_remedy, None, None, "reference: min E_D KL(π‖T), π ∝ exp(E_D log T)"),
    "rl": Remedy(rl_remedy, "beta", (0.05, 20.0), "reference: max E_π r − β KL(π‖π0), π ∝ π0·exp(r/β)",
                 kl_monotone="decreasing in β (proved: exponential family π0·e^{r/β})", scale="log"),
    "blend": Remedy(blend_optimum, "lambda", (0.0, 1.0),
                    "max λ(E_π r − β KL(π‖π0)) − (1−λ) E_D KL(π‖T), β = 1", sdsd_at=0.0),
    "split": Remedy(split_optimum, "beta", (0.05, 20.0),
                    "SDSD on failures, RL on successes: max Σ_{r=1} π[1 − β log π/π0] + Σ_{r=0} π[g − log π]",
                    scale="log"),
    "forward_kl": Remedy(forward_kl_remedy, None, None, "min E_D KL(T‖π), π = E_D T"),
    "js": Remedy(js_remedy, "alpha", (0.05, 1.0), "min E_D D_α(π, T), α = 1 reverse KL (α = 0 is forward_kl)",
                 sdsd_at=1.0),
    "contrastive": Remedy(contrastive_remedy, "beta", (0.05, 20.0),
                          "max E_π s_c − β KL(π‖π0), s_c = E_D log T − E_{π0} log T (CREDIT)",
                          kl_monotone="decreasing in β (proved: exponential family π0·e^{s_c/β})", scale="log"),
    "entropy": Remedy(entropy_bonus_optimum, "eta", (0.0, 10.0), "min E_D KL(π‖T) − η H(π), π ∝ exp(g/(1+η))",
                      sdsd_at=0.0, scale="log1p"),
    "anchor": Remedy(anchor_optimum, "kappa", (0.0, 10.0), "min E_D KL(π‖T) + κ KL(π‖π0)", sdsd_at=0.0,
                     kl_monotone="decreasing in κ (proved: geometric path π_SD^{1/(1+κ)} π0^{κ/(1+κ)})",
                     scale="log1p"),
    "dstar": Remedy(dstar_remedy, None, None, "SDSD with the ratio-preserving demonstration law D*"),
}


def remedy(name: str) -> Remedy:
    if name not in REMEDIES:
        raise PcmiInputError(f"unknown remedy {name!r}; choose one of: {', '.join(REMEDIES)}")
    return REMEDIES[name]


def remedy_optimum(inst, name: str, knob=None, *, log_ref=None) -> np.ndarray:
    """log π of one round of a remedy (knob ignored by the point remedies)."""
    rem = remedy(name)
    if rem.knob is not None and knob is None:
        raise PcmiInputError(f"remedy {name!r} needs its knob {rem.knob}")
    return rem.function(inst, knob, log_ref=log_ref)


def knob_grid(name: str, n: int) -> np.ndarray:
    """n knob values over the remedy's range, spaced by its scale (both ends included)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise PcmiInputError(f"the knob grid needs a positive integer number of points, got {n!r}")
    rem = remedy(name)
    if rem.knob is None:
        return np.array([np.nan])
    lo, hi = rem.knob_range
    if rem.scale == "log":
        return np.geomspace(lo, hi, n)
    if rem.scale == "log1p":
        return np.expm1(np.linspace(np.log1p(lo), np.log1p(hi), n))
    return np.linspace(lo, hi, n)


# --- on-policy rounds -----------------------------------------------------------------------

@dataclass
class RemedyRounds:
    """On-policy rounds of one remedy; `log_pi` is the last round, `one_round` the first.
    converged: TV(π_k, π_{k−1}) ≤ tol at round k = `rounds`. rate: the last ratio of successive TVs;
    `distance_bound` = tv·rate/(1 − rate) bounds the distance to the limit when the rounds contract
    at that rate (None when the rate is unknown or ≥ 0.999: no usable contraction)."""
    name: str
    knob: float | None
    reference: str
    one_round: np.ndarray
    log_pi: np.ndarray
    rounds: int
    converged: bool
    tv: float
    rate: float | None
    tol: float
    error: str | None = None
    tv_history: list = field(default_factory=list)

    @property
    def distance_bound(self) -> float | None:
        if self.rate is None or not self.rate < 0.999:
            return None
        return self.tv * self.rate / (1 - self.rate)

    def certificate(self) -> dict:
        return {"rounds": self.rounds, "converged": self.converged, "tv_last": self.tv, "tol": self.tol,
                "rate": self.rate, "distance_bound": self.distance_bound, "reference": self.reference,
                "error": self.error}


def _route_copying_labels(inst) -> bool:
    """Whether inst.teacher is the route-copying teacher of inst.route: disjoint latent strategies whose
    supports are exactly the route classes on supp π0."""
    t = inst.teacher
    if not isinstance(t, LatentStrategyTeacher) or not t.disjoint or inst.route is None:
        return False
    alive = np.isfinite(inst.log_base)
    own, lab = t._owner[alive], np.asarray(inst.route)[alive]
    pairs = set(zip(own.tolist(), lab.tolist()))
    return len(pairs) == len(set(own.tolist())) == len(set(lab.tolist()))


def next_instance(inst, log_pi, k: int | None = None):
    """The round after π_k: `dynamics.on_policy_instance` (D = π_k(·|r=1), teacher rebuilt from π_k with
    the same P_z, base π_k). That rebuild is exact only when π_k keeps π0's law inside every route; a
    remedy with a reward term (rl, blend, split, entropy with failures) reweights successes against
    failures inside a route, and then the route-copying teacher is rebuilt as the model π_k conditioned
    on the demonstration's route, T_k(y|y') = (1−eps)·π_k(y | route(y')) + eps·π_k(y)
    (`LatentStrategyTeacher.route_copying(π_k, route, eps)`, which is on_policy_instance's teacher
    whenever that one is exact)."""
    if not _route_copying_labels(inst):
        return on_policy_instance(inst, log_pi, k)
    if not has_reachable_success(log_pi, inst.reward):
        return on_policy_instance(inst, log_pi, k)  # raises its one-line error
    t = LatentStrategyTeacher.route_copying(log_pi, inst.route, inst.teacher.eps)
    return Instance(log_pi, inst.reward, t, demos_from_successes(log_pi, inst.reward), route=inst.route,
                    tree=inst.tree, name=inst.name)


REFERENCES = ("initial", "current")
MAX_ROUNDS = 5000
TOL = 1e-10


def remedy_rounds(inst, name: str, knob=None, n_rounds: int = MAX_ROUNDS, *, tol: float = TOL,
                  reference: str = "initial", teacher: str = "live") -> RemedyRounds:
    """π_{k+1} = remedy(round-k instance), the round-k instance = `next_instance`(π_k):
    D_k = π_k(·|r=1), teacher (and base) rebuilt from π_k. The KL reference π0 of rl / blend / split /
    contrastive / anchor is the initial policy (reference="initial", a frozen reference model) or the
    current one π_k (reference="current"; RL's rounds of theory.md §4). Stops at the first k with
    TV(π_k, π_{k−1}) ≤ tol (π_0 = the base); otherwise converged=False after n_rounds. A round that
    cannot be built (no correct rollout left) ends the rounds with `error` set, never silently.
    teacher="frozen": only D follows the policy; base and teacher stay π0's (a trainer whose teacher is
    the pretrained network, e.g. a `KernelTeacher` enumerated from it, which cannot be rebuilt)."""
    rem = remedy(name)
    if teacher not in ("live", "frozen"):
        raise PcmiInputError(f"teacher must be 'live' or 'frozen', got {teacher!r}")
    if reference not in REFERENCES:
        raise PcmiInputError(f"reference must be one of {', '.join(REFERENCES)}, got {reference!r}")
    n_rounds = count(n_rounds, "n_rounds", 1)
    tol = positive(tol, "tol", zero_ok=True)
    if rem.knob is not None and knob is None:
        raise PcmiInputError(f"remedy {name!r} needs its knob {rem.knob}")
    ref0 = inst.log_base
    cur, prev = inst, inst.log_base
    first, tvs, error = None, [], None
    k = 0
    for k in range(1, int(n_rounds) + 1):
        if k > 1:
            try:
                cur = (next_instance(cur, prev, k - 1) if teacher == "live"
                       else on_policy_instance(inst, prev, k - 1, teacher="frozen"))
            except PcmiInputError as e:
                error, k = str(e), k - 1
                break
        log_ref = ref0 if reference == "initial" else cur.log_base
        new = rem.function(cur, knob, log_ref=log_ref)
        if first is None:
            first = new
        tvs.append(total_variation(new, prev))
        prev = new
        if tvs[-1] <= tol:
            break
    rate = tvs[-1] / tvs[-2] if len(tvs) >= 2 and tvs[-2] > 0 else None
    return RemedyRounds(name, None if knob is None else float(knob), reference, first, prev, k,
                        bool(error is None and tvs and tvs[-1] <= tol), tvs[-1], rate, tol, error, tvs[-3:])


# --- metrics --------------------------------------------------------------------------------

def remedy_metrics(inst, log_pi, blocked=None) -> dict:
    """success, strategy-mass entropy over correct rollouts (None without a route or a success),
    OOD success with `blocked` rollouts removed (None without a mask), KL(π‖π0) to the instance's base,
    and the entropy of π(· | r = 1)."""
    ok = has_reachable_success(log_pi, inst.reward)
    return {"success": success(log_pi, inst.reward),
            "strategy_mass_entropy": strategy_mass_entropy(log_pi, inst.reward, inst.route)
            if ok and inst.route is not None else None,
            "correct_entropy": correct_entropy(log_pi, inst.reward) if ok else None,
            "ood_success": None if blocked is None else ood_success(log_pi, inst.reward, blocked),
            "kl_to_base": kl(log_pi, inst.log_base)}


# --- matched KL to π0 -----------------------------------------------------------------------

@dataclass
class MatchedKnob:
    """The knob with KL(π(knob)‖π0) = target (point: one_round or fixed_point). roots: every root
    found on the scanned grid (brentq in each bracket, grid points hitting the target exactly);
    knob: the chosen root (farthest from the knob where the remedy is SDSD, else the first); None
    when the target is not reached on the range. monotone_on_grid: KL(knob) monotone over the grid."""
    name: str
    point: str
    target: float
    knob: float | None
    kl: float | None
    residual: float | None
    roots: list
    monotone_on_grid: bool
    proved: str
    grid: list
    grid_kl: list
    note: str = ""


POINTS = ("one_round", "fixed_point")


def remedy_policy(inst, name, knob, point="one_round", *, reference="initial", n_rounds=MAX_ROUNDS, tol=TOL):
    """(log π, certificate or None) of a remedy's one-round optimum or on-policy fixed point."""
    if point not in POINTS:
        raise PcmiInputError(f"point must be one of {', '.join(POINTS)}, got {point!r}")
    if point == "one_round":
        return remedy_optimum(inst, name, knob), None
    rr = remedy_rounds(inst, name, knob, n_rounds, tol=tol, reference=reference)
    return rr.log_pi, rr


def matched_knob(inst, name: str, target_kl: float, *, point: str = "one_round", n_grid: int = 17,
                 kl_tol: float = 1e-8, reference: str = "initial", n_rounds: int = MAX_ROUNDS,
                 tol: float = TOL, scan=None) -> MatchedKnob:
    """The knob value at which KL(π‖π0) = target_kl, π = the one-round optimum or the on-policy fixed
    point. Scans `knob_grid(name, n_grid)`, then brentq in every bracket where KL − target changes sign
    (xtol 1e-14); a root counts only if |KL − target| ≤ kl_tol there. For a fixed point whose rounds do
    not converge the KL is NaN and that knob cannot bracket a root. scan=(grid, KL values) reuses a scan
    already made with the same settings instead of `knob_grid`."""
    rem = remedy(name)
    target_kl = number(target_kl, "target_kl")
    kl_tol = positive(kl_tol, "kl_tol", zero_ok=True)
    if rem.knob is None:
        raise PcmiInputError(f"remedy {name!r} has no knob to match")

    def kl_at(v):
        log_pi, rr = remedy_policy(inst, name, float(v), point, reference=reference, n_rounds=n_rounds, tol=tol)
        if rr is not None and not rr.converged:
            return np.nan
        return kl(log_pi, inst.log_base)

    if scan is None:
        grid = knob_grid(name, n_grid)
        vals = np.array([kl_at(v) for v in grid])
    else:
        grid, vals = np.asarray(scan[0], float), np.asarray(scan[1], float)
    f = vals - target_kl
    roots = [float(v) for v, fv in zip(grid, f) if np.isfinite(fv) and abs(fv) <= kl_tol]
    for i in range(len(grid) - 1):
        a, b = f[i], f[i + 1]
        if np.isfinite(a) and np.isfinite(b) and a * b < 0 and abs(a) > kl_tol and abs(b) > kl_tol:
            def h(v):
                val = kl_at(v)
                if not np.isfinite(val):
                    raise _NoRoot()
                return val - target_kl
            try:
                v = brentq(h, grid[i], grid[i + 1], xtol=1e-14, rtol=4 * np.finfo(float).eps, maxiter=200)
            except _NoRoot:
                continue
            if abs(h(v)) <= kl_tol:
                roots.append(float(v))
    roots = sorted(set(roots))
    fin = vals[np.isfinite(vals)]
    d = np.diff(fin)
    monotone = bool(fin.size == vals.size and (np.all(d <= 1e-12) or np.all(d >= -1e-12)))
    chosen, note = None, ""
    if roots:
        chosen = max(roots, key=lambda v: abs(v - rem.sdsd_at)) if rem.sdsd_at is not None else roots[0]
        if rem.sdsd_at is not None and chosen == rem.sdsd_at and point == "one_round":
            note = "the only root is the knob where the remedy is SDSD"
    else:
        note = (f"KL(π‖π0) ranges over [{np.nanmin(vals):.6g}, {np.nanmax(vals):.6g}] on the knob range; "
                f"target {target_kl:.6g} not reached") if np.isfinite(vals).any() else "no converged point"
    kl_c = None if chosen is None else kl_at(chosen)
    return MatchedKnob(name, point, target_kl, chosen, kl_c, None if kl_c is None else abs(kl_c - target_kl),
                       roots, monotone, rem.kl_monotone if point == "one_round" else "", grid.tolist(),
                       vals.tolist(), note)


class _NoRoot(Exception):
    pass
