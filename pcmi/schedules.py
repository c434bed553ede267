"""Teacher schedules (theory.md §9): which in-context teacher a training step distils from.

    frozen   π0's teacher throughout
    live     the teacher rebuilt from the current policy every step
    ema(τ)   the teacher rebuilt from an exponential moving average: state_k = (1 − τ)·state_{k−1}
             + τ·state(π_k), τ = the weight of the student (τ = 1 is live, τ = 0 is frozen)

A teacher's state is what "rebuilt from a policy" reads: for latent-strategy teachers the strategy
masses m_z(π) = Σ_y π(y) q0(z | y) (q0: π0's posterior; same P_z, eps), for copy teachers the
policy π itself (T = lam·1[y = y'] + (1 − lam)·π_state). Explicit matrices cannot be rebuilt.
"""
from __future__ import annotations

import numpy as np

from .distributions import log_normalize, logsumexp
from .errors import PcmiInputError
from .teachers import CopyTeacher, LatentStrategyTeacher

SCHEDULES = ("frozen", "live", "ema")


class TeacherSchedule:
    """A teacher schedule over one base teacher; `state0` is π0's state."""

    def __init__(self, base_teacher, kind: str = "frozen", tau=None):
        if kind not in SCHEDULES:
            raise PcmiInputError(f"unknown teacher schedule {kind!r}; expected one of {', '.join(SCHEDULES)}")
        if kind == "ema":
            if isinstance(tau, bool) or not isinstance(tau, (int, float, np.floating)) or not 0 < tau <= 1:
                raise PcmiInputError(f"the EMA teacher needs a rate tau in (0, 1] (the weight of the student), got {tau!r}")
            tau = float(tau)
        elif tau is not None:
            raise PcmiInputError(f"tau applies to the ema schedule only, not {kind}")
        if kind != "frozen" and not isinstance(base_teacher, (LatentStrategyTeacher, CopyTeacher)):
            raise PcmiInputError(f"the {kind} teacher is rebuilt from the policy, which needs a latent-strategy or copy "
                                 f"teacher, not {type(base_teacher).__name__}")
        self.base, self.kind, self.tau = base_teacher, kind, tau
        if isinstance(base_teacher, LatentStrategyTeacher):
            self._log_q = base_teacher.log_posterior(np.arange(base_teacher.n))  # (n, K), fixed
        self.state0 = self.state_of(base_teacher.log_base) if kind != "frozen" else None

    @property
    def label(self) -> str:
        return f"ema(τ={self.tau:g})" if self.kind == "ema" else self.kind

    def state_of(self, log_pi) -> np.ndarray:
        """The state a teacher rebuilt from π has (log strategy masses, or log π)."""
        log_pi = np.asarray(log_pi, float)
        if isinstance(self.base, LatentStrategyTeacher):
            return log_normalize(logsumexp(log_pi[:, None] + self._log_q, axis=0))
        return log_pi

    def teacher(self, state):
        """The teacher object of a state (frozen: the base teacher)."""
        if self.kind == "frozen":
            return self.base
        if isinstance(self.base, LatentStrategyTeacher):
            return self.base.with_weights(state)
        return CopyTeacher(state, self.base.lam)

    def update(self, state, log_pi):
        """state_k from state_{k−1} and the new student π_k."""
        if self.kind == "frozen":
            return state
        new = self.state_of(log_pi)
        if self.kind == "live":
            return new
        t = self.tau
        return log_normalize(np.logaddexp(np.log1p(-t) + state if t < 1 else np.full_like(state, -np.inf),
                                          np.log(t) + new))

    def gap(self, state, log_pi) -> float:
        """max |state − state(π)| in probability: 0 when the teacher is the student's own."""
        if self.kind == "frozen":
            return 0.0
        return float(np.max(np.abs(np.exp(state) - np.exp(self.state_of(log_pi)))))
