"""Test-time discovery (theory.md §11): the probability of at least one success within n attempts
on one prompt, exactly, for three procedures that react to feedback on failed attempts.

A prompt is a `FeedbackProblem`: the base law π0 over the rollouts Y(x) (log, shape (n,)), the
reward r, for every failed rollout its feedback class fb(y) ∈ {0, …, F−1} (−1: a success, or a
failure that gets no feedback), and the compatibility matrix C (F, n), C[f, y] = c_f(y) ∈ {0, 1}.
The feedback teacher of a policy π (§11) is

    T_π(y | f) = (1 − eps)·π(y) c_f(y) / π(c_f) + eps·π(y)        (π(c_f) = 0: T_π = π).

Procedures (attempt i samples y_i from the current law; a success stops, a failure gives f_i):

    best_of_n    every attempt from π0:                      P(n) = 1 − (1 − p0)^n
    multi_turn   attempt i from the teacher conditioned on every feedback so far,
                 T(y | S) = (1 − eps)·π0(y) c_S(y) / π0(c_S) + eps·π0(y), c_S = Π_{f∈S} c_f
                 (S the *set* of feedback classes seen; eps = 0 is ideal filtering; a feedback that would
                 leave no rollout of π0 compatible with S contradicts what was seen and is ignored,
                 as the TTSD step ignores it: π(c_f) = 0 gives T = π)
    ttsd         test-time self-distillation: after each failure one update of the policy toward
                 its own feedback teacher T_i = T_{π_i}(· | f_i):
      step="kl"       the exact one-round optimum  argmin_π KL(π ‖ T_i) + κ·KL(π ‖ π_i)
                      ⇒ π_{i+1} ∝ exp((log T_i + κ log π_i)/(1 + κ))
      step="tabular"  one exact expected-gradient step of the tabular policy on the prefix tree,
                      θ_{i+1} = θ_i − η·G, G = `expected_gradient` of the `full` α = 1 loss with the
                      live teacher T_i and D the point mass on the demonstration "f_i" (needs
                      eps > 0: reverse KL to a teacher that rules out the failed rollout is infinite)

Exact by enumeration over the tree of attempt histories (sequences of failure classes). States
that are a function of the feedback *set* are merged (exact): multi-turn always, TTSD-kl when
eps = 0 (then log T_i = log π_i + log c_f + const, so π_{i+1} = π_i·c_f normalized for every κ:
TTSD-kl with an ideal filtering teacher *is* multi-turn). Histories whose mass falls below
`prune` (or beyond the `max_states` heaviest) are dropped and their mass reported, so the exact
answer lies in [discovery, discovery + pruned]. Masses are carried in log space.

`simulate_discovery` is an independent Monte Carlo of the same procedures (sampling, rejection
for the filter, probabilities instead of logs) for the tests.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .distributions import check_log_probs, float_array, logsumexp, safe_log
from .checks import positive, unit
from .errors import PcmiInputError

#: histories with less mass than this are dropped (their mass is reported as `pruned`)
PRUNE = 1e-15
#: at most this many histories are carried per attempt (the lightest beyond it are pruned)
MAX_STATES = 20_000
METHODS = ("best_of_n", "multi_turn", "ttsd")


# --- the problem --------------------------------------------------------------------------------

@dataclass(frozen=True)
class FeedbackProblem:
    """One prompt: log π0 (n,), reward (n,), feedback class of each rollout fb (n,) (−1: none),
    compatibility C (F, n) bool; `tree` (optional, a PrefixTree over the same leaves) for the
    tabular TTSD step."""
    log_pi0: np.ndarray
    reward: np.ndarray
    fb: np.ndarray
    compatible: np.ndarray
    tree: object = None
    labels: tuple = ()   # optional: a text per feedback class

    def __post_init__(self):
        lp = check_log_probs(float_array(self.log_pi0, "log π0", ndim=1), "π0")
        n = len(lp)
        r = np.asarray(self.reward)
        if r.shape != (n,) or not np.isin(r, (0, 1)).all():
            raise PcmiInputError(f"reward must be {n} values in {{0, 1}}, got shape {r.shape}")
        fb = np.asarray(self.fb)
        if fb.shape != (n,) or (fb.size and not np.issubdtype(fb.dtype, np.integer)):
            raise PcmiInputError(f"feedback classes fb must be {n} integers, got shape {fb.shape}")
        C = np.asarray(self.compatible)
        if C.ndim != 2 or C.shape[1] != n:
            raise PcmiInputError(f"compatibility must have shape (F, {n}), got {C.shape}")
        if not np.isin(C, (0, 1)).all():
            raise PcmiInputError("compatibility must be 0/1 (c_f(y) ∈ {0, 1})")
        F = C.shape[0]
        if fb.size and (fb.min() < -1 or fb.max() >= F):
            raise PcmiInputError(f"feedback classes must lie in −1..{F - 1} (F = {F} rows of compatibility)")
        if np.any((r == 1) & (fb != -1)):
            raise PcmiInputError("a correct rollout has a feedback class: feedback is given on failures only")
        if self.tree is not None and self.tree.n_leaves != n:
            raise PcmiInputError(f"the tree has {self.tree.n_leaves} leaves but π0 has {n} rollouts")
        object.__setattr__(self, "log_pi0", lp)
        object.__setattr__(self, "reward", r.astype(np.int64))
        object.__setattr__(self, "fb", fb.astype(np.int64))
        object.__setattr__(self, "compatible", C.astype(bool))

    @property
    def n(self) -> int:
        return len(self.log_pi0)

    @property
    def n_classes(self) -> int:
        return self.compatible.shape[0]

    @property
    def log_p0(self) -> float:
        return float(logsumexp(np.where(self.reward == 1, self.log_pi0, -np.inf)))

    @property
    def p0(self) -> float:
        return float(min(math.exp(self.log_p0), 1.0))


def problem_from_rollouts(rollouts, tree: bool = True) -> FeedbackProblem:
    """The FeedbackProblem of a graphworld RolloutSet (enumerate with pool_failures=False): one
    class per distinct feedback (`graphworld.feedback.distinct_feedback`), C from `compatibility`."""
    from graphworld.feedback import compatibility, distinct_feedback

    classes, fb = distinct_feedback(rollouts)
    C = np.asarray(compatibility(classes, rollouts), bool).reshape(len(classes), len(rollouts))
    return FeedbackProblem(rollouts.log_prob - logsumexp(rollouts.log_prob), rollouts.reward, fb, C,
                           rollouts.tree if tree else None, tuple(f.text() for f in classes))


# --- the feedback teacher and the TTSD steps ---------------------------------------------------

def feedback_teacher(log_pi, compatible, eps: float) -> np.ndarray:
    """log T_π(y | f) = log[(1 − eps)·π(y) c_f(y) / π(c_f) + eps·π(y)] for each row of log_pi (…, n)
    with the mask c_f (…, n) broadcast; a row with π(c_f) = 0 gets T = π (the feedback is ignored)."""
    log_pi = np.asarray(log_pi, float)
    c = np.asarray(compatible, bool)
    filt = np.where(c, log_pi, -np.inf)
    z = logsumexp(filt, axis=-1, keepdims=True)
    ok = np.isfinite(z)
    with np.errstate(invalid="ignore"):
        filt = np.where(ok, filt - np.where(ok, z, 0.0), log_pi)
    return np.logaddexp(safe_log(1 - eps) + filt, safe_log(eps) + log_pi)


def kl_step(log_pi, log_T, kappa: float) -> np.ndarray:
    """argmin_π KL(π ‖ T) + κ·KL(π ‖ π_i) = exp((log T + κ log π_i)/(1 + κ)) normalized (rows)."""
    with np.errstate(invalid="ignore"):
        x = (np.asarray(log_T, float) + kappa * np.asarray(log_pi, float)) / (1 + kappa)
    x = np.where(np.isnan(x), -np.inf, x)  # −inf + κ·(−inf): both zero
    return x - logsumexp(x, axis=-1, keepdims=True)


class _OneRowTeacher:
    """A `pcmi.teachers` teacher with a single demonstration class: T(· | f) given on the leaves."""

    def __init__(self, log_T_leaves, tree):
        self.row = tree.prefix_logsumexp(np.asarray(log_T_leaves, float))[None, :]

    def demo_classes(self, log_D, tree):
        yield np.array([0.0]), self.row


def tabular_step(tree, theta, compatible_row, eps: float, eta: float, siblings=None) -> np.ndarray:
    """θ − η·G: one exact expected-gradient step (`full`, α = 1) of the tabular policy toward its live
    feedback teacher T_{π_θ}(· | f), D = the point mass on that one demonstration class."""
    from .estimators import expected_gradient
    from .objectives import LossMode
    from .tabular import TabularPolicy

    pol = TabularPolicy(tree, theta, siblings)
    teacher = _OneRowTeacher(feedback_teacher(pol.log_seq, compatible_row, eps), tree)
    log_D = np.full(tree.n_leaves, -np.inf)
    log_D[0] = 0.0  # ignored by the one-row teacher: its one class has weight 1
    G = expected_gradient(pol, teacher, log_D, LossMode("full", 1.0)).grad
    return pol.theta - eta * G


# --- exact enumeration over histories ----------------------------------------------------------

@dataclass
class DiscoveryCurve:
    """P(≥ 1 success within n attempts) for n = 1..n_max, as the interval [discovery, discovery + pruned]."""
    method: str
    params: dict
    discovery: np.ndarray   # lower end: success mass of the histories carried
    pruned: np.ndarray      # mass dropped by attempt n (cumulative)
    log_miss: np.ndarray    # log P(no success within n, history carried)
    n_states: np.ndarray    # histories carried after attempt n

    @property
    def upper(self) -> np.ndarray:
        return np.minimum(self.discovery + self.pruned, 1.0)

    @property
    def n_max(self) -> int:
        return len(self.discovery)


def best_of_n(p0: float, n_max: int) -> np.ndarray:
    """1 − (1 − p0)^n for n = 1..n_max, as −expm1(n·log1p(−p0)) (exact to rounding for tiny p0)."""
    p0 = unit(p0, "p0")
    n = np.arange(1, _check_n(n_max) + 1, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p0 == 1.0, 1.0, -np.expm1(n * np.log1p(-p0)))


def _check_n(n_max) -> int:
    if isinstance(n_max, bool) or not isinstance(n_max, (int, np.integer)) or n_max < 1:
        raise PcmiInputError(f"n_max must be a positive integer, got {n_max!r}")
    return int(n_max)


def _class_matrix(problem: FeedbackProblem) -> np.ndarray:
    """One-hot (n, F + 1) of the failed rollouts' classes; column F: a failure without feedback."""
    F = problem.n_classes
    G = np.zeros((problem.n, F + 1))
    fail = problem.reward == 0
    G[np.flatnonzero(fail), np.where(problem.fb[fail] >= 0, problem.fb[fail], F)] = 1.0
    return G


def _masses(L: np.ndarray, reward: np.ndarray, G: np.ndarray):
    """log success mass (S,) and log mass of each failure class (S, F + 1) of the laws L (S, n), summed
    after shifting each row by its maximum (a mass below 1e-308 of the row's largest term is dropped)."""
    m = np.max(L, axis=1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    E = np.exp(L - m)
    with np.errstate(divide="ignore"):
        return np.log(E @ reward.astype(float)) + m[:, 0], np.log(E @ G) + m


def batched_log_seq(tree, sib, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log π(a | h) (S, N), log π(h) (S, N)) of the tabular policies θ (S, N) (masked −inf logits stay −inf)."""
    lse = sib.logsumexp(theta)
    with np.errstate(invalid="ignore"):
        lc = theta - sib.spread(lse)
    lc = np.where(np.isneginf(theta), -np.inf, lc)
    lc[:, 0] = 0.0
    return lc, tree.path_sum(lc.T).T  # log π(h) = Σ of log π(a | h') along the root → h path


def batched_tabular_step(tree, sib, theta: np.ndarray, log_T: np.ndarray, eta: float) -> np.ndarray:
    """θ − η·G for S policies at once (S, N), G the `full` α = 1 expected gradient toward the leaf
    laws log_T (S, n): G[h·a] = π(h)·p_a(ℓ_a − Σ_b p_b ℓ_b), p = π(·|h), ℓ = log p − log T(·|h)
    (`pcmi.estimators` computes the same, one policy at a time; the tests compare)."""
    lc, lpre = batched_log_seq(tree, sib, theta)
    lt = tree.prefix_logsumexp(log_T)                     # log T(h) (S, N)
    par = tree.parent[1:]
    lq = np.zeros_like(lt)
    with np.errstate(invalid="ignore"):
        lq[:, 1:] = lt[:, 1:] - lt[:, par]
    p = np.exp(lc)
    on = np.isfinite(lc)
    reached = np.isfinite(lpre[:, np.r_[0, par]])
    reached[:, 0] = False
    on &= reached
    if np.any(on & ~np.isfinite(lq)):
        raise PcmiInputError("the feedback teacher gives probability 0 to a token the policy emits: the reverse KL "
                             "is infinite (use eps > 0)")
    with np.errstate(invalid="ignore"):
        ell = np.where(on, lc - lq, 0.0)
    ell[:, 0] = 0.0
    pl = np.where(on, p * ell, 0.0)
    v = np.where(on, p * (ell - sib.spread(sib.sum(pl))), 0.0)
    mu_par = np.exp(lpre[:, np.r_[0, par]])
    G = np.where(on, mu_par * v, 0.0)
    G[:, 0] = 0.0
    return np.where(np.isneginf(theta), -np.inf, theta - eta * G)


class _MultiTurn:
    """State: the set S of feedback classes seen (key), payload c_S (n,) bool."""
    merged = True

    def __init__(self, problem, eps, remember=None):
        self.p, self.eps = problem, eps
        self.custom = remember is not None
        self.remember = remember or (lambda S, f: S | frozenset([f]))

    def initial(self):
        return frozenset(), np.ones(self.p.n, bool)

    def laws(self, payloads):
        return feedback_teacher(np.broadcast_to(self.p.log_pi0, payloads.shape), payloads, self.eps)

    def child_key(self, key, f):
        new = self.remember(key, f)
        if not self.custom and not np.isfinite(logsumexp(np.where(self.payload_of(new, None, f), self.p.log_pi0,
                                                                  -np.inf))):
            return key  # f contradicts the feedback seen (no rollout of π0 left): it is ignored, as by TTSD
        return new

    def payload_of(self, key, parent_payload, f):
        return np.logical_and.reduce([self.p.compatible[g] for g in key]) if key else np.ones(self.p.n, bool)


class _TTSDKL:
    """State: the current log-policy (n,); merged by the feedback set when eps = 0 (π_S = π0·c_S)."""

    def __init__(self, problem, eps, kappa, step=None):
        self.p, self.eps, self.kappa = problem, eps, kappa
        self.merged = eps == 0 and step is None
        self.step = step or kl_step

    def initial(self):
        return frozenset(), self.p.log_pi0.copy()

    def laws(self, payloads):
        return payloads

    def child_key(self, key, f):
        return key | frozenset([f])

    def payload_of(self, key, parent_payload, f):
        return self.children(parent_payload[None, :], np.array([f]))[0]

    def children(self, parents, f):
        return self.step(parents, feedback_teacher(parents, self.p.compatible[f], self.eps), self.kappa)


class _TTSDTabular:
    """State: the logits θ (N,) of the tabular policy on the prefix tree; never merged."""
    merged = False

    def __init__(self, problem, eps, eta):
        from .tabular import Siblings, TabularPolicy
        if problem.tree is None:
            raise PcmiInputError("the tabular TTSD step needs the problem's prefix tree (tree=None)")
        if eps == 0:
            raise PcmiInputError("the tabular TTSD step needs eps > 0: the reverse KL to a filtering teacher "
                                 "that rules out the failed rollout is infinite")
        self.p, self.eps, self.eta = problem, eps, eta
        self.sib = Siblings(problem.tree)
        self.theta0 = TabularPolicy.from_log_probs(problem.tree, problem.log_pi0, self.sib).theta

    def initial(self):
        return (), self.theta0.copy()

    def laws(self, payloads):
        _, lpre = batched_log_seq(self.p.tree, self.sib, payloads)
        L = lpre[:, self.p.tree.leaf_node]
        return L - logsumexp(L, axis=1, keepdims=True)

    def children(self, parents, f):
        T = feedback_teacher(self.laws(parents), self.p.compatible[f], self.eps)
        return batched_tabular_step(self.p.tree, self.sib, parents, T, self.eta)


def _procedure(problem, method, eps, kappa, eta, step, remember):
    if method == "multi_turn":
        return _MultiTurn(problem, eps, remember)
    if method == "ttsd":
        if step == "kl" or callable(step):
            return _TTSDKL(problem, eps, kappa, step if callable(step) else None)
        if step == "tabular":
            return _TTSDTabular(problem, eps, eta)
        raise PcmiInputError(f"unknown TTSD step {step!r}; choose 'kl' or 'tabular'")
    if method == "best_of_n":  # multi-turn that never remembers a feedback: every attempt from π0
        return _MultiTurn(problem, 1.0, lambda S, f: frozenset())
    raise PcmiInputError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def _log_sum(x) -> float:
    return float(np.exp(logsumexp(np.asarray(x, float)))) if len(x) else 0.0


def discovery_curve(problem: FeedbackProblem, method: str, n_max: int, *, eps: float = 0.0, kappa: float = 1.0,
                    eta: float = 1.0, step="kl", prune: float = PRUNE, max_states: int = MAX_STATES,
                    remember=None) -> DiscoveryCurve:
    """P(≥ 1 success within n attempts), n = 1..n_max, exactly by enumeration over the histories of
    failure classes (see the module docstring). `step` may be a callable (log π_i, log T_i, κ) → log π_{i+1}
    (rows) and `remember` a callable (S, f) → S' for multi-turn (sabotage tests); both default to the theory."""
    n_max = _check_n(n_max)
    eps = unit(eps, "eps")
    kappa = positive(kappa, "kappa", zero_ok=True)
    eta = positive(eta, "eta", zero_ok=False)
    prune = unit(prune, "prune")
    if isinstance(max_states, bool) or not isinstance(max_states, (int, np.integer)) or max_states < 1:
        raise PcmiInputError(f"max_states must be a positive integer, got {max_states!r}")
    proc = _procedure(problem, method, eps, kappa, eta, step, remember)
    G = _class_matrix(problem)
    F = problem.n_classes
    log_prune = math.log(prune) if prune > 0 else -math.inf
    key0, pay0 = proc.initial()
    keys, payloads, log_mass = [key0], pay0[None, :], np.zeros(1)
    disc, pruned, miss, n_states = (np.zeros(n_max) for _ in range(4))
    found = lost = 0.0
    for i in range(n_max):
        if len(log_mass):
            ls, lc = _masses(proc.laws(payloads), problem.reward, G)
            found += _log_sum(log_mass + ls)
            child = log_mass[:, None] + lc                           # (S, F + 1): class F = no feedback
            s_idx, f_idx = np.nonzero(np.isfinite(child))
            cm = child[s_idx, f_idx]
            small = cm < log_prune
            lost += _log_sum(cm[small])
            s_idx, f_idx, cm = s_idx[~small], f_idx[~small], cm[~small]
            if proc.merged:
                keys, payloads, log_mass, dropped = _merged_children(proc, keys, payloads, s_idx, f_idx, cm, F,
                                                                     max_states)
            else:
                keys, payloads, log_mass, dropped = _plain_children(proc, payloads, s_idx, f_idx, cm, F, max_states)
            lost += dropped
        disc[i], pruned[i] = min(found, 1.0), lost
        miss[i] = float(logsumexp(log_mass)) if len(log_mass) else -np.inf
        n_states[i] = len(log_mass)
    params = {} if method == "best_of_n" else {"eps": eps} if method == "multi_turn" else \
        {"eps": eps, "step": step if isinstance(step, str) else "custom",
         **({"eta": eta} if step == "tabular" else {"kappa": kappa})}
    return DiscoveryCurve(method, params, disc, pruned, miss, n_states.astype(np.int64))


def _merged_children(proc, keys, payloads, s_idx, f_idx, cm, F, max_states):
    """Children grouped by their key (a function of the feedback set): masses added, one payload each."""
    groups = {}
    for s, f, m in zip(s_idx.tolist(), f_idx.tolist(), cm.tolist()):
        k = keys[s] if f == F else proc.child_key(keys[s], f)
        g = groups.get(k)
        if g is None:
            groups[k] = [m, s, f]
        else:
            g[0] = float(np.logaddexp(g[0], m))
    items = sorted(groups.items(), key=lambda kv: -kv[1][0])
    dropped = _log_sum([g[0] for _, g in items[max_states:]])
    items = items[:max_states]
    new_keys = [k for k, _ in items]
    new_pay = [payloads[s] if f == F else proc.payload_of(k, payloads[s], f) for k, (m, s, f) in items]
    new_mass = np.array([m for _, (m, _, _) in items])
    return new_keys, (np.array(new_pay) if new_pay else payloads[:0]), new_mass, dropped


def _plain_children(proc, payloads, s_idx, f_idx, cm, F, max_states):
    """Every child its own state (the heaviest max_states kept); payloads computed in one batch."""
    dropped = 0.0
    if len(cm) > max_states:
        keep = np.argpartition(-cm, max_states - 1)[:max_states]
        rest = np.ones(len(cm), bool)
        rest[keep] = False
        dropped = _log_sum(cm[rest])
        s_idx, f_idx, cm = s_idx[keep], f_idx[keep], cm[keep]
    new = payloads[s_idx].copy()
    move = f_idx != F
    if move.any():
        new[move] = proc.children(payloads[s_idx[move]], f_idx[move])
    return [None] * len(cm), new, cm, dropped


# --- attempts needed ---------------------------------------------------------------------------

def attempts_to_reach(curve, target: float):
    """Smallest n (1-based) with curve[n − 1] ≥ target; None if the curve never gets there."""
    target = unit(target, "target")
    c = np.asarray(curve, float)
    hit = np.flatnonzero(c >= target)
    return int(hit[0]) + 1 if hit.size else None


def best_of_n_attempts(p0: float, target: float):
    """Smallest n with 1 − (1 − p0)^n ≥ target, without a curve (None if p0 = 0 and target > 0)."""
    p0, target = unit(p0, "p0"), unit(target, "target")
    if target == 0:
        return 1
    if p0 == 0 or target == 1 and p0 < 1:
        return None
    if p0 == 1:
        return 1
    n = max(1, math.ceil(math.log1p(-target) / math.log1p(-p0)))
    while n > 1 and -math.expm1((n - 1) * math.log1p(-p0)) >= target:  # rounding at the boundary
        n -= 1
    while -math.expm1(n * math.log1p(-p0)) < target:
        n += 1
    return n


def attempt_ratio(p0: float, curve, target: float):
    """(best-of-n attempts) / (method attempts) to reach `target`; None where either never does."""
    a, b = best_of_n_attempts(p0, target), attempts_to_reach(curve, target)
    return None if a is None or b is None else a / b


# --- Monte Carlo (an independent path: sampling, rejection, probabilities) -----------------------

def simulate_discovery(problem: FeedbackProblem, method: str, n_max: int, runs: int, seed: int = 0, *,
                       eps: float = 0.0, kappa: float = 1.0, eta: float = 1.0, step: str = "kl",
                       batched_tabular: bool = False) -> np.ndarray:
    """First successful attempt of each of `runs` independent runs (n_max + 1: none within n_max),
    all runs advanced together. Multi-turn draws from π0 by rejection until the rollout is compatible
    with every feedback seen (with probability eps: one plain draw from π0); TTSD keeps each run's
    policy in probabilities, π ← T^{1/(1+κ)} π^{κ/(1+κ)} normalized, or steps its logits with
    `tabular_step` (`pcmi.estimators.expected_gradient`; batched_tabular: the vectorized step)."""
    n_max = _check_n(n_max)
    eps = unit(eps, "eps")
    kappa = positive(kappa, "kappa", zero_ok=True)
    eta = positive(eta, "eta", zero_ok=False)
    if method == "ttsd" and step not in ("kl", "tabular"):
        raise PcmiInputError(f"unknown TTSD step {step!r}; choose 'kl' or 'tabular'")
    if isinstance(runs, bool) or not isinstance(runs, (int, np.integer)) or runs < 1:
        raise PcmiInputError(f"runs must be a positive integer, got {runs!r}")
    if method not in METHODS:
        raise PcmiInputError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise PcmiInputError(f"seed must be an integer >= 0, got {seed!r}")
    rng = np.random.default_rng(seed)
    pi0 = np.exp(problem.log_pi0)
    pi0 = pi0 / pi0.sum()
    C, r, fb, n = problem.compatible, problem.reward, problem.fb, problem.n
    out = np.full(runs, n_max + 1, dtype=np.int64)
    seen = np.zeros((runs, problem.n_classes), bool)
    pi = np.tile(pi0, (runs, 1))
    tab = step == "tabular" and method == "ttsd"
    if tab:
        _TTSDTabular(problem, eps, eta)  # the same refusals as the exact enumeration (no tree, eps = 0)
        from .tabular import Siblings, TabularPolicy
        sib = Siblings(problem.tree)
        theta = np.tile(TabularPolicy.from_log_probs(problem.tree, problem.log_pi0, sib).theta, (runs, 1))

    def draw(P):  # one rollout per row of P (rows: probabilities), inverse CDF
        cdf = np.cumsum(P, axis=1)
        u = rng.random(len(P)) * cdf[:, -1]
        return np.minimum((cdf < u[:, None]).sum(axis=1), n - 1)

    alive = np.arange(runs)
    for i in range(1, n_max + 1):
        if not len(alive):
            break
        if method == "ttsd":
            y = draw(pi[alive])
        else:
            y = draw(np.broadcast_to(pi0, (len(alive), n)))
        if method == "multi_turn":  # rejection: redraw until compatible with every feedback seen
            S = seen[alive]
            feasible = ~((S.astype(int) @ (~C).astype(int)) > 0) & (pi0 > 0)[None, :]
            todo = (rng.random(len(alive)) >= eps) & feasible.any(axis=1)
            bad = todo & (S & ~C[:, y].T).any(axis=1)
            while bad.any():
                idx = np.flatnonzero(bad)
                y[idx] = draw(np.broadcast_to(pi0, (len(idx), n)))
                bad[idx] = (S[idx] & ~C[:, y[idx]].T).any(axis=1)
        win = r[y] == 1
        out[alive[win]] = i
        fail, f = alive[~win], fb[y[~win]]
        got = f >= 0
        fail, f = fail[got], f[got]
        if len(fail):
            if method == "multi_turn":  # a feedback that leaves no rollout of π0 compatible is ignored
                trial = seen[fail].copy()
                trial[np.arange(len(fail)), f] = True
                keep = (~((trial.astype(int) @ (~C).astype(int)) > 0) & (pi0 > 0)[None, :]).any(axis=1)
                fail, f = fail[keep], f[keep]
            seen[fail, f] = True
            if method == "ttsd":
                c = C[f].astype(float)
                P = pi[fail]
                z = (P * c).sum(axis=1, keepdims=True)
                with np.errstate(invalid="ignore", divide="ignore"):
                    T = np.where(z > 0, (1 - eps) * P * c / np.where(z > 0, z, 1.0) + eps * P, P)
                if not tab:
                    new = T ** (1 / (1 + kappa)) * P ** (kappa / (1 + kappa))
                    pi[fail] = new / new.sum(axis=1, keepdims=True)
                else:
                    if batched_tabular:
                        theta[fail] = batched_tabular_step(problem.tree, sib, theta[fail], safe_log(T), eta)
                    else:
                        for j, run in enumerate(fail):
                            theta[run] = tabular_step(problem.tree, theta[run], C[f[j]], eps, eta, sib)
                    if batched_tabular:
                        q = np.exp(batched_log_seq(problem.tree, sib, theta[fail])[1][:, problem.tree.leaf_node])
                    else:
                        q = np.array([np.exp(TabularPolicy(problem.tree, theta[run], sib).log_seq) for run in fail])
                    pi[fail] = q / q.sum(axis=1, keepdims=True)
        alive = alive[~win]
    return out


def monte_carlo_curve(first: np.ndarray, n_max: int) -> np.ndarray:
    """Fraction of runs with a success within n attempts, n = 1..n_max."""
    first = np.asarray(first)
    return np.array([(first <= n).mean() for n in range(1, n_max + 1)])
