"""The environment's feedback on a failed rollout (SDPO, theory.md §11), and its compatibility.

A failed walk ends in one of four ways (graphworld.enumeration outcomes); the feedback names the
mistake:

    invalid_move    InvalidMove(step, u, v)   move `step` (0-based) tried u → v, not an edge of G
    dead_end        DeadEnd(step, node)       after `step` moves the walk is at `node`, from which
                                              t cannot be reached in the L − step moves left
    stop_elsewhere  WrongEndpoint(node)       the walk stopped at node ≠ t
    truncated       Overrun(max_len)          the walk made more than max_len moves

Each feedback states a fact about the environment of the form "every rollout with property P
fails", and c_f(y) = 1 − P(y) (`compatible`): a rollout is compatible with the feedback when it
avoids the mistake the feedback names, anywhere it could make it. Concretely

    InvalidMove(step, u, v).compatible(y)  ⇔  y never moves u → v (at any step: the graph is fixed,
                                              so the move is invalid after every prefix);
    DeadEnd(step, node).compatible(y)      ⇔  y is not at `node` after k ≥ step moves (with fewer
                                              moves left t is still out of reach; earlier visits
                                              may be fine);
    WrongEndpoint(node).compatible(y)      ⇔  y does not end at `node`;
    Overrun(max_len).compatible(y)         ⇔  y makes at most max_len moves.

So every correct rollout is compatible with every feedback the environment gives (the premise
of P10), except after a DeadEnd that a policy produced by having no action at all at a node
from which t is reachable (a property of the policy, not of G: documented in docs/feedback.md).

Pooled failure leaves (token FAIL or FAIL:z) stand for several failing walks with different
feedback: they have none, and every function here refuses them with a one-line GraphworldError.
Enumerate with `enumerate_rollouts(..., pool_failures=False)` for feedback work.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .enumeration import RolloutSet, is_fail
from .errors import GraphworldError, is_int
from .tasks import Task

#: keywords that `words()` uses besides graph nodes (a token vocabulary adds one token for each)
KEYWORDS = ("INVALID_MOVE", "DEAD_END", "WRONG_ENDPOINT", "OVERRUN")

POOLED = ("is a pooled failure leaf ({tok}): it pools several failing walks with different feedback, "
          "so it has none; enumerate with pool_failures=False for feedback work")


def _check_step(step) -> int:
    if not is_int(step) or step < 0:
        raise GraphworldError(f"feedback step must be an integer >= 0, got {step!r}")
    return int(step)


def _check_path(path) -> tuple:
    try:
        path = tuple(path)
    except TypeError:
        raise GraphworldError(f"a rollout path must be a sequence of graph nodes, got {path!r}") from None
    if not path:
        raise GraphworldError("a rollout path must contain at least the source")
    if is_fail(path[-1]):
        raise GraphworldError("the rollout path " + POOLED.format(tok=path[-1]))
    return path


@dataclass(frozen=True)
class InvalidMove:
    """Move `step` (0-based) tried u → v, which is not an edge: c_f(y) = [y never moves u → v]."""
    step: int
    u: object
    v: object

    def __post_init__(self):
        _check_step(self.step)

    def text(self) -> str:
        return f"invalid move {self.u}->{self.v} at step {self.step}"

    def words(self) -> tuple:
        return ("INVALID_MOVE", self.u, self.v)

    def compatible(self, path) -> bool:
        path = _check_path(path)
        return not any(a == self.u and b == self.v for a, b in zip(path[:-1], path[1:]))


@dataclass(frozen=True)
class DeadEnd:
    """After `step` moves the walk is at `node`, where t is out of reach in the moves left:
    c_f(y) = [y is not at node after any k ≥ step moves]."""
    step: int
    node: object

    def __post_init__(self):
        _check_step(self.step)

    def text(self) -> str:
        return f"dead end at {self.node} after step {self.step}"

    def words(self) -> tuple:
        return ("DEAD_END", self.node)

    def compatible(self, path) -> bool:
        path = _check_path(path)
        return not any(v == self.node for v in path[self.step:])


@dataclass(frozen=True)
class WrongEndpoint:
    """The walk stopped at node ≠ t: c_f(y) = [y does not end at node]."""
    node: object

    def text(self) -> str:
        return f"stopped at {self.node}, not the target"

    def words(self) -> tuple:
        return ("WRONG_ENDPOINT", self.node)

    def compatible(self, path) -> bool:
        return _check_path(path)[-1] != self.node


@dataclass(frozen=True)
class Overrun:
    """The walk made more than max_len moves: c_f(y) = [y makes ≤ max_len moves]."""
    max_len: int

    def __post_init__(self):
        if not is_int(self.max_len) or self.max_len < 1:
            raise GraphworldError(f"Overrun max_len must be a positive integer, got {self.max_len!r}")

    def text(self) -> str:
        return f"length cap {self.max_len} exceeded"

    def words(self) -> tuple:
        return ("OVERRUN",)

    def compatible(self, path) -> bool:
        return len(_check_path(path)) - 1 <= self.max_len


Feedback = InvalidMove | DeadEnd | WrongEndpoint | Overrun
FEEDBACK_TYPES = (InvalidMove, DeadEnd, WrongEndpoint, Overrun)


def feedback_of(task: Task, path, outcome: str) -> Feedback | None:
    """The environment's feedback on one rollout (None for a success); path and outcome as in
    RolloutSet.paths / RolloutSet.outcome. Raises GraphworldError when they disagree with the task."""
    if isinstance(path, (list, tuple)) and path and is_fail(path[-1]) or outcome == "fail":
        tok = path[-1] if isinstance(path, (list, tuple)) and path else "FAIL"
        raise GraphworldError("the rollout " + POOLED.format(tok=tok))
    path = _check_path(path)
    g, moves = task.graph, len(path) - 1
    if path[0] != task.source:
        raise GraphworldError(f"rollout path starts at {path[0]!r}, not at the source {task.source!r}")
    walk_ok = all(g.has_edge(a, b) for a, b in zip(path[:-1], path[1:]))
    if outcome == "success":
        if not task.reward(path):
            raise GraphworldError(f"outcome 'success' but path {path!r} is not a valid walk to the target")
        return None
    if outcome == "invalid_move":
        prefix_ok = all(g.has_edge(a, b) for a, b in zip(path[:-2], path[1:-1]))
        if moves < 1 or g.has_edge(path[-2], path[-1]) or not prefix_ok:
            raise GraphworldError(f"outcome 'invalid_move' but path {path!r} does not end with its only non-edge")
        return InvalidMove(moves - 1, path[-2], path[-1])
    if not walk_ok:
        raise GraphworldError(f"outcome {outcome!r} but path {path!r} uses a non-edge")
    if outcome == "dead_end":
        return DeadEnd(moves, path[-1])
    if outcome == "stop_elsewhere":
        if path[-1] == task.target:
            raise GraphworldError(f"outcome 'stop_elsewhere' but path {path!r} stops at the target")
        return WrongEndpoint(path[-1])
    if outcome == "truncated":
        if moves <= task.max_len:
            raise GraphworldError(f"outcome 'truncated' but path {path!r} makes {moves} <= max_len "
                                  f"{task.max_len} moves")
        return Overrun(int(task.max_len))
    raise GraphworldError(f"unknown rollout outcome {outcome!r}; expected success, invalid_move, dead_end, "
                          "stop_elsewhere or truncated")


def _check_unpooled(rollouts: RolloutSet):
    for i, (p, o) in enumerate(zip(rollouts.paths, rollouts.outcome)):
        if o == "fail" or (p and is_fail(p[-1])):
            raise GraphworldError(f"rollout {i} " + POOLED.format(tok=p[-1] if p else "FAIL"))


def feedback_for_rollouts(rollouts: RolloutSet) -> list[Feedback | None]:
    """The feedback of every leaf of Y(x) (None for successes); pooled leaves are refused."""
    if not isinstance(rollouts, RolloutSet):
        raise GraphworldError(f"feedback_for_rollouts needs a RolloutSet, got {type(rollouts).__name__}")
    _check_unpooled(rollouts)
    return [feedback_of(rollouts.task, p, o) for p, o in zip(rollouts.paths, rollouts.outcome)]


def compatibility(feedbacks, rollouts: RolloutSet) -> np.ndarray:
    """c[f, y] = c_f(y) ∈ {0, 1} for each feedback f (a Feedback; None is refused) and rollout y,
    shape (F, n) bool."""
    if not isinstance(rollouts, RolloutSet):
        raise GraphworldError(f"compatibility needs a RolloutSet, got {type(rollouts).__name__}")
    _check_unpooled(rollouts)
    feedbacks = list(feedbacks)
    for j, f in enumerate(feedbacks):
        if not isinstance(f, FEEDBACK_TYPES):
            raise GraphworldError(f"feedback {j} is {f!r}, not a feedback (InvalidMove, DeadEnd, WrongEndpoint, "
                                  "Overrun); a success has none")
    out = np.zeros((len(feedbacks), len(rollouts)), dtype=bool)
    for j, f in enumerate(feedbacks):
        out[j] = [f.compatible(p) for p in rollouts.paths]
    return out


def distinct_feedback(rollouts: RolloutSet) -> tuple[list, np.ndarray]:
    """(distinct feedbacks F_1..F_m in order of first appearance, index (n,) of each leaf's
    feedback, −1 for successes): rollouts with the same feedback share one class."""
    fbs = feedback_for_rollouts(rollouts)
    classes, index = {}, np.full(len(fbs), -1, dtype=np.int64)
    for i, f in enumerate(fbs):
        if f is not None:
            index[i] = classes.setdefault(f, len(classes))
    return list(classes), index


class SloppyPolicy:
    """A base policy that also makes invalid moves: with probability `slip` the next token is a
    uniformly chosen node that is not a successor of the current one (nor the node itself), else
    the base policy's token: π(a | h) = (1 − slip)·π_base(a | h) + slip·1[a invalid]/#invalid.
    Where the base has no action or there is no non-successor, the other part takes all the mass.
    On cyclic graphs with a short max_len it produces every feedback kind."""

    def __init__(self, base, slip: float):
        from .errors import is_real
        if not is_real(slip) or not 0 <= slip < 1:
            raise GraphworldError(f"slip must be a number in [0, 1), got {slip!r}")
        self.base, self.slip = base, float(slip)
        self.has_stop = bool(getattr(base, "has_stop", True))

    def next_logprobs(self, task, paths: list[tuple]) -> list[dict]:
        g, out = task.graph, []
        for path, lp in zip(paths, self.base.next_logprobs(task, paths)):
            u = path[-1]
            lp = {a: v for a, v in lp.items() if v > -np.inf}
            bad = [v for v in g.nodes if v != u and not g.has_edge(u, v)] if self.slip > 0 else []
            if not bad:
                out.append(lp)
                continue
            w_bad = self.slip if lp else 1.0
            row = {a: v + np.log1p(-w_bad) for a, v in lp.items()} if w_bad < 1 else {}
            for v in bad:
                row[v] = float(np.log(w_bad) - np.log(len(bad)))
            out.append(row)
        return out
