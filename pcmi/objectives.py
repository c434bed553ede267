"""Per-step SDSD loss modes as practised (theory.md §9): one definition that the exact expected
gradients (`pcmi.estimators`), the flows and fixed points (`pcmi.flows`), the CLI and the figures read.

A mode is what one training step does on a student rollout y ~ π with a demonstration y' ~ D and
the detached teacher T(·|h, y'), at every prefix h_t of y:

    full              Σ_t D_α(π(·|h_t), T(·|h_t, y')) over the whole vocabulary
    topk              the same on the k most likely tokens of the student (or of the teacher),
                      renormalized, or with one tail bucket 1 − Σ_topk p added to both
    sampled           Σ_t (log π(y_t|h_t) − log T(y_t|h_t, y')) · ∇log π(y_t|h_t)     (α = 1)
    sampled-baseline  the same with the detached vOPD baseline KL(π(·|h_t) ‖ T(·|h_t, y'))
                      subtracted from the per-token log-ratio                          (α = 1)
    sequence          Σ_t R_t · ∇log π(y_t|h_t), R_t = Σ_{s≥t} log π(y_s|h_s)/T(y_s|h_s, y'):
                      the reward-to-go form, unbiased for ∇ E_D KL(π ‖ T(·|y'))        (α = 1)

The prefix law is never differentiated except through the reward-to-go of `sequence`. D_α is the
SDPO convention of theory.md §3: α = 1 reverse KL(S‖T), α = 0 forward KL(T‖S), else
α·KL(T‖m) + (1−α)·KL(S‖m) with m = (1−α)·S + α·T.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .checks import unit
from .errors import PcmiInputError

#: one-line definition of every mode (printed by `pcmi solve --help`)
MODES = {
    "full": "Σ_t D_α(π(·|h_t) ‖ T(·|h_t,y')) over the whole vocabulary; prefix law not differentiated",
    "topk": "D_α on the k most likely tokens of the student (--topk-of student) or teacher, "
            "renormalized, or with a tail bucket 1 − Σ_topk p (--tail)",
    "sampled": "per-token reward: (log π − log T)(y_t) · ∇log π(y_t|h_t) on the sampled token (reverse KL, α = 1)",
    "sampled-baseline": "sampled with the detached vOPD baseline KL(π(·|h_t) ‖ T(·|h_t,y')) subtracted "
                        "(unbiased for the same objective, lower variance; α = 1)",
    "sequence": "reward-to-go Σ_{s≥t}(log π − log T)(y_s) · ∇log π(y_t|h_t): unbiased for "
                "∇ E_D KL(π ‖ T(·|y')) (α = 1)",
}
TOPK_OF = ("student", "teacher")


@dataclass(frozen=True)
class LossMode:
    """A validated loss mode. `alpha` is the D_α weight (1 for the α-free modes); `topk`, `topk_of`
    and `tail` only matter for kind "topk"."""
    kind: str = "full"
    alpha: float = 1.0
    topk: int | None = None
    topk_of: str = "student"
    tail: bool = False

    def __post_init__(self):
        if self.kind not in MODES:
            raise PcmiInputError(f"unknown loss mode {self.kind!r}; expected one of {', '.join(MODES)}")
        a = self.alpha
        object.__setattr__(self, "alpha", unit(a, "alpha"))
        if self.kind in ("sampled", "sampled-baseline", "sequence") and self.alpha != 1:
            raise PcmiInputError(f"mode {self.kind} is a reverse-KL estimator: alpha must be 1, got {a!r}")
        if self.kind == "topk":
            k = self.topk
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
                raise PcmiInputError(f"mode topk needs a positive integer topk, got {k!r}")
            object.__setattr__(self, "topk", int(k))
            if self.topk_of not in TOPK_OF:
                raise PcmiInputError(f"topk_of must be 'student' or 'teacher', got {self.topk_of!r}")
            if not isinstance(self.tail, (bool, np.bool_)):
                raise PcmiInputError(f"tail must be true or false, got {self.tail!r}")
            object.__setattr__(self, "tail", bool(self.tail))
        elif self.topk is not None or self.tail:
            raise PcmiInputError(f"topk and tail apply to mode topk only, not {self.kind}")

    @property
    def per_token(self) -> bool:
        """Whether the mode's expected gradient is that of a per-prefix divergence (all but `sequence`)."""
        return self.kind != "sequence"

    @property
    def label(self) -> str:
        if self.kind == "topk":
            return f"topk(k={self.topk}, {self.topk_of}{', tail' if self.tail else ''}, α={self.alpha:g})"
        return f"full(α={self.alpha:g})" if self.kind == "full" else self.kind

    def as_dict(self) -> dict:
        d = {"mode": self.kind, "alpha": self.alpha}
        if self.kind == "topk":
            d.update(topk=self.topk, topk_of=self.topk_of, tail=self.tail)
        return d


def loss_mode(mode="full", *, alpha=1.0, topk=None, topk_of="student", tail=False) -> LossMode:
    """A LossMode from its parts (a LossMode passes through)."""
    if isinstance(mode, LossMode):
        return mode
    return LossMode(mode, alpha, topk, topk_of, tail)


# --- the per-token divergence and its gradient coefficient, in log space ----------------------

def divergence_terms(log_p, log_q, alpha: float):
    """Per-token terms of D_α(p, q) and the gradient coefficient ∂D_α/∂p_a (arrays broadcast).

    Returns (terms, coef): Σ_a terms_a = D_α(p, q) and, for p = softmax(θ),
    ∂D_α/∂θ_a = p_a·(coef_a − Σ_b p_b coef_b). With m = (1−α)p + αq:
      α = 1: terms = p log(p/q),                      coef = log(p/q)
      α = 0: terms = q log(q/p),                      coef = −q/p
      else : terms = α q log(q/m) + (1−α) p log(p/m), coef = (1−α) log(p/m)
    0·log 0 = 0; a term is +inf where the divergence is infinite (p > 0 = q for reverse KL,
    q > 0 = p for forward KL); coef is 0 where p = 0 (it is always multiplied by p). A finite log p counts as p > 0 even where
    exp(log p) underflows."""
    log_p, log_q = np.asarray(log_p, float), np.asarray(log_q, float)
    shape = np.broadcast_shapes(log_p.shape, log_q.shape)
    on_p, on_q = np.isfinite(log_p), np.isfinite(log_q)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        # a finite log-probability is a positive probability even where its exp underflows to 0:
        # against a zero of the other law its term is +inf, not 0·∞ (exps only on the arrays needed)
        if alpha == 1:
            diff = log_p - log_q
            terms = np.where(on_p, np.where(on_q, np.exp(log_p) * diff, np.inf), 0.0)
            coef = np.where(on_p, diff, 0.0)
        elif alpha == 0:
            diff = log_q - log_p
            terms = np.where(on_q, np.where(on_p, np.exp(log_q) * diff, np.inf), 0.0)
            coef = np.where(on_p, -np.exp(diff), 0.0)
        else:
            log_m = np.logaddexp(np.log1p(-alpha) + log_p, np.log(alpha) + log_q)
            terms = (np.where(on_q, alpha * np.exp(log_q) * (log_q - log_m), 0.0)
                     + np.where(on_p, (1 - alpha) * np.exp(log_p) * (log_p - log_m), 0.0))
            coef = np.where(on_p, (1 - alpha) * (log_p - log_m), 0.0)
    terms, coef = np.broadcast_to(terms, shape), np.broadcast_to(coef, shape)
    return terms, coef
