"""An instance: one prompt's rollouts Y(x) with π0, reward, teacher, demonstrations D and tree."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from graphworld.enumeration import PrefixTree

from .distributions import check_log_probs, check_probs, condition, prob_of, logsumexp
from .errors import PcmiInputError


NO_SUCCESS = "no correct rollout: reward marks no rollout correct with positive base probability"


def demos_from_successes(log_base, reward) -> np.ndarray:
    """D = π0(· | r = 1): the model's own correct rollouts."""
    reward = np.asarray(reward)
    if not has_reachable_success(log_base, reward):
        raise PcmiInputError(NO_SUCCESS + ", so the default demonstrations D = π0(·|r=1) are undefined: "
                             "give 'demos' or a correct rollout")
    return condition(log_base, reward == 1)


def has_reachable_success(log_base, reward) -> bool:
    """Whether π0(r = 1) > 0, i.e. π0(· | r = 1) is defined."""
    reward = np.asarray(reward)
    return bool(np.any(reward == 1)) and bool(np.isfinite(np.max(np.where(reward == 1, log_base, -np.inf))))


def uniform_correct_demos(reward) -> np.ndarray:
    """D uniform over the distinct correct rollouts."""
    reward = np.asarray(reward)
    if not np.any(reward == 1):
        raise PcmiInputError("no correct rollout: reward marks no rollout correct, so uniform demonstrations "
                             "over the correct rollouts are undefined")
    return condition(np.zeros(len(reward)), reward == 1)


def check_reward(reward, n: int) -> np.ndarray:
    try:
        r = np.asarray(reward, dtype=float)
    except (TypeError, ValueError):
        raise PcmiInputError("reward must be a list of 0/1 values") from None
    if r.ndim != 1:
        raise PcmiInputError(f"reward must be a flat list of 0/1 values, got shape {r.shape}")
    if r.shape != (n,):
        raise PcmiInputError(f"reward has {r.size} entries but there are {n} rollouts")
    if not np.all((r == 0) | (r == 1)):
        raise PcmiInputError("reward must be 0 or 1 for every rollout")
    return r.astype(np.int64)


def check_demos_correct(log_D, reward) -> None:
    """Refuse demonstrations D that put mass on failing rollouts (r = 0)."""
    failing = np.flatnonzero((np.asarray(reward) == 0) & np.isfinite(log_D))
    if failing.size:
        mass = prob_of(logsumexp(np.asarray(log_D)[failing]))
        raise PcmiInputError(f"demos put mass {mass:.6g} on failing rollouts (reward 0, e.g. rollout "
                             f"{int(failing[0])}); demonstrations are meant to be correct: fix 'demos' or "
                             "'reward', or set \"allow_failing_demos\": true (allow_failing_demos=True) if intended")


@dataclass
class Instance:
    """Everything the closed forms need for one prompt x."""
    log_base: np.ndarray             # log π0(y), (n,)
    reward: np.ndarray               # r(y) ∈ {0,1}, (n,)
    teacher: object                  # a pcmi.teachers teacher over the same n rollouts
    log_demos: np.ndarray            # log D(y'), (n,) — demonstrations are rollouts
    route: np.ndarray | None = None  # strategy label per rollout (graph: concept id)
    tree: PrefixTree | None = None   # prefix tree (None: the flat one-token tree)
    name: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.log_base)
        self.log_base = check_log_probs(self.log_base, "base policy π0")
        self.reward = check_reward(self.reward, n)
        if getattr(self.teacher, "n", n) != n:
            raise PcmiInputError(f"teacher rows have {self.teacher.n} entries but there are {n} rollouts")
        tb = getattr(self.teacher, "log_base", None)
        if tb is not None and not np.array_equal(tb, self.log_base) and \
                np.max(np.abs(np.exp(tb) - np.exp(self.log_base))) > 1e-6:
            raise PcmiInputError("the teacher's base policy differs from the instance's π0")
        self.log_demos = check_log_probs(self.log_demos, "demonstration distribution D")
        if len(self.log_demos) != n:
            raise PcmiInputError(f"demos has {len(self.log_demos)} entries but there are {n} rollouts")
        if self.route is not None:
            try:
                self.route = np.asarray(self.route)
            except ValueError:
                raise PcmiInputError("route must be a flat list of labels, one per rollout") from None
            if self.route.shape != (n,):
                raise PcmiInputError(f"route must be a flat list of {n} labels (one per rollout), "
                                     f"got shape {self.route.shape}")
        if self.tree is None:
            self.tree = PrefixTree.flat(n)
        elif self.tree.n_leaves != n:
            raise PcmiInputError(f"tree has {self.tree.n_leaves} leaves but there are {n} rollouts")

    @property
    def n(self) -> int:
        return len(self.log_base)

    @classmethod
    def explicit(cls, base, reward, teacher, demos=None, route=None, name="", *,
                 allow_failing_demos: bool = False) -> "Instance":
        """From probabilities: base (n,), reward (n,), a teacher object or an n×n matrix
        (row j = T(· | y'_j)), demos (n,) or None for π0(· | r = 1).

        Demonstrations are correct rollouts: demos with mass on a rollout of reward 0 are refused
        unless allow_failing_demos=True."""
        from .teachers import KernelTeacher
        log_base = check_probs(base, "base")
        reward = check_reward(reward, len(log_base))
        if not hasattr(teacher, "demo_classes"):
            t = np.asarray(teacher, dtype=object)
            if t.ndim != 2 or any(len(row) != len(log_base) for row in teacher) or len(teacher) != len(log_base):
                raise PcmiInputError(f"teacher must be a {len(log_base)}×{len(log_base)} matrix (one row per demonstration)")
            try:
                t = np.asarray(teacher, dtype=float)
            except (TypeError, ValueError):
                raise PcmiInputError("teacher must be a matrix of numbers") from None
            teacher = KernelTeacher.from_probs(t)
        if not isinstance(allow_failing_demos, (bool, np.bool_)):
            raise PcmiInputError(f"allow_failing_demos must be true or false, got {allow_failing_demos!r}")
        if demos is None:
            log_D = demos_from_successes(log_base, reward)
        else:
            log_D = check_probs(demos, "demos")
            if len(log_D) == len(log_base) and not allow_failing_demos:
                check_demos_correct(log_D, reward)
        return cls(log_base, reward, teacher, log_D, route=route, name=name)

    def with_teacher(self, teacher, log_base=None) -> "Instance":
        return replace(self, teacher=teacher,
                       log_base=self.log_base if log_base is None else log_base)

    def with_demos(self, log_demos) -> "Instance":
        return replace(self, log_demos=log_demos)
