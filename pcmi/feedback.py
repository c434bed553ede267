"""Feedback teachers (SDPO, theory.md §11), computed exactly, and proposition P10.

A feedback teacher sees, instead of a successful demonstration, the environment's feedback f on a
failed rollout y_fail (graphworld.feedback) and filters the base policy by the feedback's
compatibility c_f(y) ∈ {0, 1}:

    T(y | x, f) = (1 − eps)·π0(y)·c_f(y) / π0(c_f) + eps·π0(y),     π0(c_f) = Σ_y π0(y) c_f(y).

It fits the teacher interface of pcmi.teachers: its "demonstrations" are rollouts, D is a law
over them (normally the failures, π0(·|r = 0)), the row of a failed rollout is T(·|f(y_fail)),
rollouts with the same feedback share one class, and a correct rollout carries the empty
feedback (c ≡ 1, so its row is π0: success tells the teacher nothing).

`DemoFeedbackTeacher` is SDPO's combination: a successful demonstration y' and the feedback f of
an independent failure in one context. Its law of the pair is D(·|success) ⊗ D(·|failure) (D = π0
gives SDPO's group law π0(·|r=1) ⊗ π0(·|r=0)), and its row is the latent-strategy posterior
given y', conditioned on the feedback's event:

    T(y | y', f) = (1 − eps)·Σ_z q(z|y') P_z(y) c_f(y) / Σ_z q(z|y') P_z(c_f) + eps·π0(y).

See docs/feedback.md for the derivations, P10 and the comparison on multi-route graphs.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from graphworld import EdgePolicy, GraphworldError, RolloutSet, Task, enumerate_rollouts
from graphworld.enumeration import PrefixTree
from graphworld.feedback import compatibility, distinct_feedback

from .distributions import check_log_probs, condition, float_array, prob_of, logsumexp
from .errors import PcmiInputError
from .instance import Instance, check_reward, has_reachable_success
from .dynamics import Round
from .metrics import correct_entropy, ratio_distortion, strategy_mass_entropy, strategy_masses, success
from .policies import sdsd_optimum
from .checks import unit
from .teachers import CHUNK, LatentStrategyTeacher, _mix

NO_FAILURE = ("no failing rollout with positive probability: the feedback demonstrations D = π0(·|r=0) "
              "are undefined (every rollout is correct, so there is no feedback to give)")


def _check_compat(compat, n: int) -> np.ndarray:
    try:
        c = np.asarray(compat)
    except ValueError:  # ragged rows
        raise PcmiInputError(f"compatibility must be an (F, {n}) matrix of 0/1 with rows of one length") from None
    if c.ndim == 1:
        c = c[None, :]
    if c.ndim != 2 or c.shape[1] != n:
        raise PcmiInputError(f"compatibility must be an (F, {n}) matrix of 0/1 (one row per feedback class), "
                             f"got shape {np.shape(compat)}")
    if c.dtype != bool:
        try:
            cf = c.astype(float)
        except (TypeError, ValueError):
            raise PcmiInputError("compatibility must be a matrix of 0/1 values") from None
        if not np.all((cf == 0) | (cf == 1)):
            raise PcmiInputError("compatibility must be 0 or 1 for every (feedback, rollout) pair")
        c = cf == 1
    return c


def _check_index(index, n: int, n_classes: int) -> np.ndarray:
    try:
        idx = np.asarray(index)
    except ValueError:
        raise PcmiInputError("feedback_index must be a flat list of integers, one per rollout") from None
    if idx.shape != (n,):
        raise PcmiInputError(f"feedback_index must list {n} class indices (one per rollout, −1 for no feedback), "
                             f"got shape {idx.shape}")
    if idx.size and (not np.issubdtype(idx.dtype, np.integer) or idx.min() < -1 or idx.max() >= n_classes):
        raise PcmiInputError(f"feedback_index must be integers in [−1, {n_classes - 1}] "
                             "(−1: the rollout has no feedback)")
    return idx.astype(np.int64)


class FeedbackTeacher:
    """T(y | f) = (1 − eps)·π0(y) c_f(y)/π0(c_f) + eps·π0(y) over feedback classes f.

    log_base:       log π0 over the n rollouts
    compat:         (F, n) bool, c_f(y) for each feedback class f
    eps:            weight of the unfiltered base, in [0, 1]
    feedback_index: (n,) class of each rollout's feedback, −1 for none (a success: row π0);
                    None: one class per rollout (compat is (n, n), row j = c_{f(y_j)}).
    feedbacks:      the Feedback objects of the classes, when built from rollouts (else None)
    """

    def __init__(self, log_base, compat, eps: float, feedback_index=None):
        self.log_base = check_log_probs(float_array(log_base, "base policy", ndim=1), "base policy")
        n = len(self.log_base)
        self.compat = _check_compat(compat, n)
        self.eps = unit(eps, "eps")
        if feedback_index is None:
            if len(self.compat) != n:
                raise PcmiInputError(f"give feedback_index (the class of each rollout's feedback): compatibility has "
                                     f"{len(self.compat)} rows, not one per rollout ({n})")
            feedback_index = np.arange(n)
        self.index = _check_index(feedback_index, n, len(self.compat))
        self.feedbacks = None
        self.log_mass = logsumexp(np.where(self.compat, self.log_base[None, :], -np.inf), axis=1)  # log π0(c_f)

    @property
    def n(self) -> int:
        return len(self.log_base)

    @property
    def n_classes(self) -> int:
        return len(self.compat)

    @classmethod
    def from_rollouts(cls, rollouts: RolloutSet, eps: float, log_base=None) -> "FeedbackTeacher":
        """The environment's feedback on every failed rollout (unpooled), grouped into classes."""
        try:
            fbs, index = distinct_feedback(rollouts)
            compat = compatibility(fbs, rollouts) if fbs else np.zeros((0, len(rollouts)), bool)
        except GraphworldError as exc:
            raise PcmiInputError(str(exc)) from None
        t = cls(rollouts.log_prob if log_base is None else log_base, compat, eps, index)
        t.feedbacks = fbs
        return t

    def class_weights(self, log_D) -> np.ndarray:
        """log D(f) = log Σ_{y': f(y') = f} D(y') for each class, plus the empty class (last entry)."""
        log_D = np.asarray(log_D, float)
        out = np.full(self.n_classes + 1, -np.inf)
        np.logaddexp.at(out, self.index, log_D)  # index −1 lands on the last entry: the empty class
        return out

    def _check_classes(self, log_wf):
        bad = np.isfinite(log_wf[:-1]) & ~np.isfinite(self.log_mass)
        if self.eps < 1 and bad.any():
            raise PcmiInputError(f"D puts mass on feedback class {int(np.flatnonzero(bad)[0])}, with which no rollout "
                                 "of positive base probability is compatible (π0(c_f) = 0): T(·|f) is undefined "
                                 "for eps < 1")

    def _node_rows(self, classes, tree: PrefixTree) -> np.ndarray:
        """log T(h | f) on every tree node for the classes listed (−1: the empty feedback, T = π0)."""
        base_nodes = tree.prefix_logsumexp(self.log_base)
        rows = np.tile(base_nodes, (len(classes), 1))
        real = np.asarray(classes) >= 0
        if real.any():
            cl = np.asarray(classes)[real]
            filt = np.where(self.compat[cl], self.log_base[None, :], -np.inf)
            with np.errstate(invalid="ignore"):
                inner = tree.prefix_logsumexp(filt) - self.log_mass[cl, None]
            inner = np.where(np.isfinite(self.log_mass[cl, None]), inner, -np.inf)
            rows[real] = _mix(inner, 1 - self.eps, base_nodes[None, :], self.eps)
        return rows

    def demo_classes(self, log_D, tree: PrefixTree, chunk: int = CHUNK) -> Iterator[tuple]:
        log_wf = self.class_weights(log_D)
        self._check_classes(log_wf)
        live = np.flatnonzero(np.isfinite(log_wf))
        classes = np.where(live == self.n_classes, -1, live)
        for lo in range(0, len(live), chunk):
            yield log_wf[live[lo:lo + chunk]], self._node_rows(classes[lo:lo + chunk], tree)

    def class_log_rows(self) -> np.ndarray:
        """log T(y | f) at the leaves, one row per feedback class, shape (F, n)."""
        return self._node_rows(np.arange(self.n_classes), PrefixTree.flat(self.n))[:, 1:]

    def log_rows(self, demo_idx) -> np.ndarray:
        """log T(y | f(y'_j)) for the rollouts j (row π0 for a rollout without feedback)."""
        idx = self.index[np.asarray(demo_idx)]
        used = np.zeros(self.n_classes + 1)
        used[:-1] = np.where(np.isin(np.arange(self.n_classes), idx), 0.0, -np.inf)
        used[-1] = -np.inf
        self._check_classes(used)
        return self._node_rows(idx, PrefixTree.flat(self.n))[:, 1:]

    def rebuilt(self, log_pi) -> "FeedbackTeacher":
        """The feedback teacher of a new model π: same feedback and compatibility, base π."""
        t = FeedbackTeacher(log_pi, self.compat, self.eps, self.index)
        t.feedbacks = getattr(self, "feedbacks", None)
        return t

    def next_demos(self, log_pi, reward) -> np.ndarray:
        """On-policy demonstrations of a feedback teacher: π(·|r = 0), the policy's own failures;
        π itself once π has no failure left (the empty feedback: T = π, a fixed point)."""
        try:
            return failure_demos(log_pi, reward)
        except PcmiInputError:
            return np.asarray(log_pi, float)


class DemoFeedbackTeacher:
    """SDPO's mixed teacher over pairs (y', f): a successful demonstration and an independent
    failure's feedback. Pair law: D(·|no feedback) ⊗ D(·|feedback) read from one D over rollouts
    (an empty side means that part of the context is absent). Row of a pair:

        T(y | y', f) = (1 − eps)·Σ_z q(z|y') P_z(y) c_f(y) / Σ_z q(z|y') P_z(c_f) + eps·π0(y)

    with the latent teacher's strategies, posterior q(z | y') and eps. No feedback (c ≡ 1): the
    latent teacher's row; no demonstration (q = w): the feedback teacher's row."""

    def __init__(self, latent: LatentStrategyTeacher, compat, feedback_index, labels=None):
        if not isinstance(latent, LatentStrategyTeacher):
            raise PcmiInputError(f"the demonstration part must be a LatentStrategyTeacher, got {type(latent).__name__}")
        self.latent = latent
        self.log_base = latent.log_base
        self.compat = _check_compat(compat, latent.n)
        self.index = _check_index(feedback_index, latent.n, len(self.compat))
        self.eps = latent.eps
        self.labels = None if labels is None else np.asarray(labels)  # route-copying: rebuilt from labels
        self.feedbacks = None

    @property
    def n(self) -> int:
        return self.latent.n

    @classmethod
    def from_rollouts(cls, rollouts: RolloutSet, eps: float, log_base=None) -> "DemoFeedbackTeacher":
        """Route-copying demonstrations (strategies = route labels) + the environment's feedback."""
        fb = FeedbackTeacher.from_rollouts(rollouts, eps, log_base)
        latent = LatentStrategyTeacher.route_copying(fb.log_base, rollouts.route, eps)
        t = cls(latent, fb.compat, fb.index, labels=rollouts.route)
        t.feedbacks = fb.feedbacks
        return t

    def pair_law(self, log_D):
        """(demonstration law, feedback-class law) of the pair, each normalized or None if empty:
        D(·|no feedback) over rollouts and D(f | feedback) over the classes."""
        log_D = np.asarray(log_D, float)
        demo = np.where(self.index < 0, log_D, -np.inf)
        log_wf = np.full(len(self.compat), -np.inf)
        np.logaddexp.at(log_wf, self.index[self.index >= 0], log_D[self.index >= 0])
        norm = lambda a: a - logsumexp(a) if np.isfinite(logsumexp(a)) else None  # noqa: E731
        return norm(demo), norm(log_wf)

    def _filtered_nodes(self, cl: int, tree: PrefixTree) -> np.ndarray:
        """log P_z(h ∩ c_f) on every tree node for class cl (−1: no feedback), shape (K, N)."""
        lt = self.latent
        c = np.ones(lt.n, bool) if cl < 0 else self.compat[cl]
        return tree.prefix_logsumexp(np.where(c[None, :], lt.log_P, -np.inf))

    def _pair_rows(self, log_q, nodes, base_nodes) -> np.ndarray:
        """log T(h | y', f) on every tree node for demonstration posteriors log_q (B, K) and one
        feedback class, given its filtered strategy laws `nodes` (K, N)."""
        inner = logsumexp(log_q[:, :, None] + nodes[None, :, :], axis=1)  # (B, N)
        norm = inner[:, 0]  # log Σ_z q_z P_z(c_f): the root
        if self.eps < 1 and not np.all(np.isfinite(norm)):
            raise PcmiInputError("a (demonstration, feedback) pair of positive weight has Σ_z q(z|y') P_z(c_f) = 0: "
                                 "no strategy the demonstration supports is compatible with the feedback, so "
                                 "T(·|y', f) is undefined for eps < 1")
        with np.errstate(invalid="ignore"):
            cond = np.where(np.isfinite(norm)[:, None], inner - norm[:, None], -np.inf)
        return _mix(cond, 1 - self.eps, base_nodes[None, :], self.eps)

    def demo_classes(self, log_D, tree: PrefixTree, chunk: int = CHUNK) -> Iterator[tuple]:
        """Pair classes (demonstration class, feedback class), weight D_demo·D_feedback; a
        route-copying demonstration only tells its strategy, so its classes are the strategies."""
        demo, fb = self.pair_law(log_D)
        if demo is None and fb is None:
            raise PcmiInputError("D is empty: the mixed teacher needs a demonstration or a feedback")
        lt = self.latent
        if demo is None:  # no demonstration: the prior over strategies
            d_w, d_q = np.array([0.0]), lt.log_w[None, :]
        elif lt.disjoint:
            lt._check_demos(demo)
            d_w = lt._strategy_demo_mass(demo)
            keep = np.isfinite(d_w)
            d_w, d_q = d_w[keep], np.where(np.eye(lt.n_strategies, dtype=bool), 0.0, -np.inf)[keep]
        else:
            lt._check_demos(demo)
            d_w, d_q = lt.posterior_classes(demo)  # demonstrations grouped by their posterior
        f_cl = np.array([-1]) if fb is None else np.flatnonzero(np.isfinite(fb))
        base_nodes = tree.prefix_logsumexp(lt.log_base)
        for cl in f_cl:
            f_w = 0.0 if cl < 0 else fb[cl]
            nodes = self._filtered_nodes(int(cl), tree)
            for lo in range(0, len(d_w), chunk):
                sl = slice(lo, lo + chunk)
                yield d_w[sl] + f_w, self._pair_rows(d_q[sl], nodes, base_nodes)

    def log_rows(self, demo_idx):
        raise PcmiInputError("the mixed teacher's rows are indexed by (demonstration, feedback) pairs, not by one "
                             "rollout: use pair_log_rows, or expected_log_teacher for E_D log T")

    def pair_log_rows(self, demo_idx, classes) -> np.ndarray:
        """log T(y | y'_j, f_c) at the leaves for paired lists of rollouts j and classes c (−1: none)."""
        tree = PrefixTree.flat(self.n)
        log_q = self.latent.log_posterior(np.asarray(demo_idx))
        base = tree.prefix_logsumexp(self.latent.log_base)
        return np.concatenate([self._pair_rows(q[None, :], self._filtered_nodes(int(c), tree), base)[:, 1:]
                               for q, c in zip(log_q, np.asarray(classes))]) if len(log_q) else np.zeros((0, self.n))

    def rebuilt(self, log_pi) -> "DemoFeedbackTeacher":
        """The mixed teacher of a new model π. Route-copying (labels given): strategies = the label
        classes of π, w_z = π(z), P_z = π(·|z) — the feedback filter moves mass inside a route, so
        P_z cannot stay fixed; other latent teachers: LatentStrategyTeacher.rebuilt, which must
        reproduce π (else a one-line error)."""
        if self.labels is not None:
            latent = LatentStrategyTeacher.route_copying(log_pi, self.labels, self.eps)
        else:
            latent = self.latent.rebuilt(log_pi)
            if np.max(np.abs(prob_of(latent.log_base) - prob_of(log_pi))) > 1e-6:
                raise PcmiInputError("the rebuilt latent teacher's base Σ_z m_z P_z differs from π: give route "
                                     "labels (route-copying) for on-policy rounds of the mixed teacher")
        t = DemoFeedbackTeacher(latent, self.compat, self.index, labels=self.labels)
        t.feedbacks = getattr(self, "feedbacks", None)
        return t

    def next_demos(self, log_pi, reward) -> np.ndarray:
        """On-policy pair law: π itself, read as π(·|r=1) ⊗ π(·|r=0)."""
        return np.asarray(log_pi, float)


# --- instances ---------------------------------------------------------------------------------

def failure_demos(log_base, reward) -> np.ndarray:
    """D = π(· | r = 0): the feedback comes from the model's own failures."""
    reward = np.asarray(reward)
    lb = np.asarray(log_base, float)
    if not np.any(reward == 0) or not np.isfinite(np.max(np.where(reward == 0, lb, -np.inf))):
        raise PcmiInputError(NO_FAILURE)
    return condition(lb, reward == 0)


def feedback_instance(rollouts: RolloutSet, eps: float = 0.1, *, mixed: bool = False, name: str = "") -> Instance:
    """Instance of the environment's feedback teacher on unpooled rollouts: D = π0(·|r=0)
    (mixed=True: the DemoFeedbackTeacher with route-copying demonstrations and D = π0, the pair
    law π0(·|r=1) ⊗ π0(·|r=0))."""
    if not isinstance(rollouts, RolloutSet):
        raise PcmiInputError(f"feedback_instance needs a RolloutSet, got {type(rollouts).__name__}")
    lb = rollouts.log_prob
    log_D = failure_demos(lb, rollouts.reward)
    if mixed:
        if not has_reachable_success(lb, rollouts.reward):
            raise PcmiInputError("no correct rollout: the mixed teacher's demonstrations π0(·|r=1) are undefined")
        teacher, log_D = DemoFeedbackTeacher.from_rollouts(rollouts, eps), lb
    else:
        teacher = FeedbackTeacher.from_rollouts(rollouts, eps)
    task = rollouts.task
    return Instance(lb, rollouts.reward, teacher, log_D, route=rollouts.route, tree=rollouts.tree,
                    name=name or f"{task.graph.name}: {task.source}->{task.target} (feedback"
                                 f"{' + demo' if mixed else ''}, eps={eps:g})")


def explicit_feedback_instance(base, reward, compat, feedback_index, eps: float, demos=None, route=None,
                               name: str = "") -> Instance:
    """Synthetic instance from probabilities: D = demos or π0(·|r=0)."""
    from .distributions import check_probs
    lb = check_probs(base, "base")
    r = check_reward(reward, len(lb))
    t = FeedbackTeacher(lb, compat, eps, feedback_index)
    log_D = failure_demos(lb, r) if demos is None else check_probs(demos, "demos")
    if len(log_D) != len(lb):
        raise PcmiInputError(f"demos has {len(log_D)} entries but there are {len(lb)} rollouts")
    return Instance(lb, r, t, log_D, route=route, name=name or f"feedback(n={len(lb)}, eps={t.eps:g})")


# --- scores ------------------------------------------------------------------------------------

def feedback_pcmi(teacher: FeedbackTeacher) -> np.ndarray:
    """PCMI(y; f | x) = log T(y|f) − log π0(y) = log((1 − eps)·c_f(y)/π0(c_f) + eps), one row per
    feedback class, shape (F, n); −inf where π0(y) = 0 (as pcmi.scores.pcmi_matrix)."""
    if not isinstance(teacher, FeedbackTeacher):
        raise PcmiInputError(f"feedback_pcmi needs a FeedbackTeacher, got {type(teacher).__name__}")
    alive = np.isfinite(teacher.log_base)[None, :]
    with np.errstate(invalid="ignore"):
        m = teacher.class_log_rows() - teacher.log_base[None, :]
    return np.where(alive, m, -np.inf)


# --- on-policy rounds --------------------------------------------------------------------------

def feedback_rounds(inst: Instance, n_rounds: int, *, optimum=sdsd_optimum) -> list:
    """On-policy rounds for teachers with `next_demos`: π_{k+1} = optimum of round k with the
    teacher rebuilt from π_k and D_k = teacher.next_demos(π_k) (feedback: π_k(·|r=0); mixed:
    π_k(·|r=1) ⊗ π_k(·|r=0)). pcmi.dynamics.sdsd_rounds would feed D_k = π_k(·|r=1), the empty
    feedback, under which a feedback teacher is π_k and nothing moves."""
    if not hasattr(inst.teacher, "next_demos"):
        raise PcmiInputError(f"{type(inst.teacher).__name__} has no on-policy demonstration law (next_demos): "
                             "use pcmi.dynamics.sdsd_rounds")
    if isinstance(n_rounds, bool) or not isinstance(n_rounds, (int, np.integer)) or n_rounds < 0:
        raise PcmiInputError(f"n_rounds must be a non-negative integer, got {n_rounds!r}")
    rounds, cur = [_round(0, inst.log_base, inst)], inst
    for k in range(1, int(n_rounds) + 1):
        if k > 1:
            log_pi = rounds[-1].log_pi
            teacher = cur.teacher.rebuilt(log_pi)
            cur = Instance(log_pi, inst.reward, teacher, teacher.next_demos(log_pi, inst.reward),
                           route=inst.route, tree=inst.tree, name=inst.name)
        rounds.append(_round(k, optimum(cur), inst))
    return rounds


def _round(k, log_pi, inst) -> Round:
    """pcmi.dynamics.Round of one policy: success, correct entropy, strategy masses."""
    r = inst.reward
    if not has_reachable_success(log_pi, r):
        return Round(k, log_pi, success(log_pi, r), None, None, None)
    masses = ent = None
    if inst.route is not None:
        masses, ent = strategy_masses(log_pi, r, inst.route), strategy_mass_entropy(log_pi, r, inst.route)
    return Round(k, log_pi, success(log_pi, r), correct_entropy(log_pi, r), masses, ent)


# --- P10 (the check itself is pcmi.propositions.check_p10) ---------------------------------------

def independent_feedback_rows(teacher) -> np.ndarray:
    """log T(y | f) straight from the defining formula in probability space, one row per class
    plus a last row for the empty feedback (π0): (1 − eps)·π0(y)c_f(y)/Σ_y π0(y)c_f(y) + eps·π0(y)."""
    b = np.exp(np.asarray(teacher.log_base, float))
    c = np.asarray(teacher.compat, float)
    mass = c @ b
    with np.errstate(divide="ignore", invalid="ignore"):
        rows = (1 - teacher.eps) * c * b[None, :] / mass[:, None] + teacher.eps * b[None, :]
        return np.log(np.vstack([rows, b[None, :]]))


def p10_demo_contrast(inst, *, sdsd=sdsd_optimum, eps: float | None = None) -> dict:
    """Ratio distortion among correct rollouts of the SDSD optimum under the feedback teacher
    (0 by P10) and under a route-copying demonstration teacher on the same rollouts (strategies =
    inst.route, D = π0(·|r=1), eps = the feedback teacher's when in (0, 1), else 0.1)."""
    from .instance import demos_from_successes
    if inst.route is None:
        raise PcmiInputError("the demonstration contrast needs route labels (one strategy per rollout)")
    if eps is None:
        e = getattr(inst.teacher, "eps", 0.1)
        eps = e if 0 < e < 1 else 0.1
    demo = Instance(inst.log_base, inst.reward, LatentStrategyTeacher.route_copying(inst.log_base, inst.route, eps),
                    demos_from_successes(inst.log_base, inst.reward), route=inst.route, tree=inst.tree)
    fb_pi, demo_pi = sdsd(inst), sdsd(demo)
    return {"feedback_distortion": ratio_distortion(fb_pi, inst.log_base, inst.reward),
            "demonstration_distortion": ratio_distortion(demo_pi, inst.log_base, inst.reward),
            "demo_eps": float(eps), "feedback_success": success(fb_pi, inst.reward),
            "demonstration_success": success(demo_pi, inst.reward)}


def _random_cyclic_task(rng):
    """A small random digraph with cycles and a reachable target, max_len ≥ the distance."""
    import networkx as nx
    while True:
        n = int(rng.integers(3, 6))
        g = nx.gnp_random_graph(n, float(rng.uniform(0.3, 0.6)), seed=int(rng.integers(1 << 30)), directed=True)
        g = nx.DiGraph(g, name=f"gnp(n={n})")
        for u, v in g.edges:
            g.edges[u, v]["pref"] = float(rng.normal())
        if nx.has_path(g, 0, n - 1):
            d = nx.shortest_path_length(g, 0, n - 1)
            return Task(g, 0, n - 1, d + int(rng.integers(0, 3)))


def p10_graph_instance(rng, *, max_rollouts: int = 3000) -> Instance:
    """A graph P10 instance: a multi-route DAG or a small cyclic graph, a base policy that may
    slip into invalid moves and stop anywhere, unpooled failures, the environment's feedback, and
    D = π0(·|r=0). Redrawn until there are both successes and failures."""
    from graphworld import multi_route_dag
    from graphworld.feedback import SloppyPolicy
    from . import generate as gen
    while True:
        if rng.random() < 0.5:
            k, depth, b = int(rng.integers(2, 4)), int(rng.integers(1, 3)), int(rng.integers(1, 3))
            g = multi_route_dag(k, depth, b, seed=int(rng.integers(1 << 30)), n_sources=1,
                                n_targets=int(rng.integers(1, 3)), pref_scale=float(rng.choice([0.5, 1.0, 3.0])))
            s, t = g.graph["prompts"][0]
            task = Task(g, s, t, depth + 2 + int(rng.integers(0, 2)))
        else:
            task = _random_cyclic_task(rng)
        stop = None if rng.random() < 0.4 else float(rng.normal())
        policy = EdgePolicy(temperature=float(rng.choice([0.5, 1.0, 2.0])), stop_pref=stop)
        slip = float(rng.choice([0.0, 0.02, 0.2]))
        try:
            ro = enumerate_rollouts(task, SloppyPolicy(policy, slip), pool_failures=False, max_leaves=max_rollouts)
        except GraphworldError:
            continue
        ok = ro.reward == 1
        if ok.any() and (~ok).any() and np.isfinite(ro.log_prob[ok]).any() and np.isfinite(ro.log_prob[~ok]).any():
            return feedback_instance(ro, gen.eps_value(rng))


def p10_synthetic_instance(rng) -> Instance:
    """n ≤ 8 rollouts, some correct, F feedback classes over the failures; every correct rollout is
    compatible with every class, each failure incompatible with its own, the rest random."""
    from . import generate as gen
    n = int(rng.integers(2, 9))
    r = (rng.random(n) < 0.5).astype(np.int64)
    r[0], r[-1] = 1, 0
    fails = np.flatnonzero(r == 0)
    F = int(rng.integers(1, len(fails) + 1))
    index = np.full(n, -1, dtype=np.int64)
    index[fails] = rng.integers(0, F, size=len(fails))
    compat = rng.random((F, n)) < 0.5
    compat[:, r == 1] = True
    compat[index[fails], fails] = False
    lb = gen.log_dist(rng, n)
    route = np.where(r == 1, rng.integers(0, 3, size=n), -1)
    t = FeedbackTeacher(lb, compat, gen.eps_value(rng), index)
    return Instance(lb, r, t, failure_demos(lb, r), route=route, name=f"feedback(n={n}, F={F}, eps={t.eps:.3g})")


def p10_instance(rng) -> Instance:
    """For the verify table: half graph instances (p10_graph_instance), half synthetic."""
    return p10_graph_instance(rng) if rng.random() < 0.5 else p10_synthetic_instance(rng)


# --- where SDPO's mixed teacher falls --------------------------------------------------------------

#: the rounds figure's graph (pcmi.figures.rounds.GRAPH) and its failing setting, plus one with slips
COMPARISON_GRAPH = dict(k_routes=3, depth=2, branching=2, seed=0, n_sources=1, n_targets=1)
COMPARISON_SETTINGS = {"failing": dict(temperature=1.0, stop_pref=-1.0),
                       "failing_invalid": dict(temperature=1.0, stop_pref=-1.0, slip=0.1)}
METHODS = ("rl", "demo_sdsd", "feedback_sdsd", "mixed_sdsd")


def _metrics(log_pi, inst, blocked) -> dict:
    from .metrics import ood_success
    r = inst.reward
    return {"success": success(log_pi, r), "strategy_mass_entropy": strategy_mass_entropy(log_pi, r, inst.route),
            "ood_success": ood_success(log_pi, r, blocked),
            "ratio_distortion": ratio_distortion(log_pi, inst.log_base, r)}


def comparison_instances(graph: dict = COMPARISON_GRAPH, setting: dict | None = None, eps: float = 0.1):
    """(demonstration, feedback, mixed) instances on the first prompt of multi_route_dag(**graph),
    unpooled rollouts, and the mask of rollouts entering π0's dominant concept."""
    from graphworld import concept_edges, dominant_route, multi_route_dag, tasks_of
    from graphworld.feedback import SloppyPolicy
    from .graph_instance import make_teacher
    from .instance import demos_from_successes
    setting = dict(COMPARISON_SETTINGS["failing"] if setting is None else setting)
    slip = setting.pop("slip", 0.0)
    g = multi_route_dag(**graph)
    task = tasks_of(g)[0]
    policy = EdgePolicy(**setting)
    ro = enumerate_rollouts(task, SloppyPolicy(policy, slip) if slip else policy, pool_failures=False)
    demo = Instance(ro.log_prob, ro.reward, make_teacher(ro, {"kind": "route_copying", "eps": eps}),
                    demos_from_successes(ro.log_prob, ro.reward), route=ro.route, tree=ro.tree)
    blocked = ro.uses_edges(concept_edges(g, dominant_route(ro)))
    return demo, feedback_instance(ro, eps), feedback_instance(ro, eps, mixed=True), blocked


def feedback_comparison(graph: dict = COMPARISON_GRAPH, settings: dict = COMPARISON_SETTINGS, eps: float = 0.1,
                        n_rounds: int = 10) -> dict:
    """Success, strategy-mass entropy, OOD success (π0's dominant route blocked) and ratio
    distortion for RL (β matched to demonstration SDSD's one-round success), demonstration SDSD,
    feedback SDSD and mixed SDSD: the one-round optimum and `n_rounds` on-policy rounds (rounds[m][k],
    k = 0 the base; one_round[m] = rounds[m][1]); plus the token-level feedback optimum π_tok."""
    from .dynamics import rl_rounds, sdsd_rounds
    from .policies import rl_beta_for_success
    out = {"graph": dict(graph), "eps": eps, "n_rounds": n_rounds, "settings": {}}
    for name, setting in settings.items():
        demo, fb, mixed, blocked = comparison_instances(graph, setting, eps)
        p0 = success(demo.log_base, demo.reward)
        series = {"demo_sdsd": sdsd_rounds(demo, n_rounds), "feedback_sdsd": feedback_rounds(fb, n_rounds),
                  "mixed_sdsd": feedback_rounds(mixed, n_rounds)}
        beta = rl_beta_for_success(p0, series["demo_sdsd"][1].success)
        series["rl"] = rl_rounds(demo, n_rounds, beta)
        rows = {m: [_metrics(r.log_pi, demo, blocked) for r in series[m]] for m in METHODS}
        from .policies import sdsd_token_optimum
        out["settings"][name] = {"n_rollouts": demo.n, "base": rows["rl"][0], "rl_beta": beta,
                                 "feedback_token_level": _metrics(sdsd_token_optimum(fb), demo, blocked),
                                 "one_round": {m: rows[m][1] for m in METHODS},
                                 "rounds": rows}
    return out
