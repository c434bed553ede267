"""Per-token losses of the SDSD loss modes between student S and teacher T (theory.md §3, §7, §9).

Convention of the public SDPO trainers: α = 1 → KL(S ‖ T) (reverse), α = 0 → KL(T ‖ S) (forward),
0 < α < 1 → α·KL(T ‖ m) + (1−α)·KL(S ‖ m) with m = (1−α)·S + α·T.

`per_token_loss` gives, for every mode of `pcmi.objectives.LossMode` except `sequence`, a (B, T)
surrogate whose autograd gradient w.r.t. the student logits is, position by position, the mode's
one-rollout estimator; `sequence_reward_to_go_loss` is the one for `sequence`. The exact expected
gradients of the same modes are `pcmi.estimators.expected_gradient` (tests/test_training_loss_modes.py
checks the two against each other; tests/test_trl_crosscheck.py checks the values against TRL).
"""
from __future__ import annotations

import math

import torch

from pcmi.errors import PcmiInputError
from pcmi.objectives import LossMode, loss_mode


def _kl(log_p, log_q):
    """Σ_v p_v (log p_v − log q_v) over the last axis (0·log 0 = 0)."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)


LOGIT_FLOOR = -1e30  # a masked (−inf) logit becomes this: probability exactly 0, gradients finite


def _divergence(log_s, log_t, alpha: float):
    """D_α(S, T) over the last axis from log-probabilities (floored, never −inf)."""
    if alpha == 1.0:
        return _kl(log_s, log_t)
    if alpha == 0.0:
        return _kl(log_t, log_s)
    log_m = torch.logsumexp(torch.stack([log_s + math.log(1 - alpha), log_t + math.log(alpha)]), dim=0)
    return alpha * _kl(log_t, log_m) + (1 - alpha) * _kl(log_s, log_m)


def per_token_divergence(student_logits, teacher_logits, alpha: float):
    """D_α(S, T) per position: logits (B, T, V) → (B, T). Pass detached teacher logits.
    −inf logits (masked tokens) are floored at LOGIT_FLOOR, so their probability is exactly 0 and
    no gradient is NaN (0·log 0 = 0; log m of two zero masses stays finite)."""
    log_s = torch.log_softmax(student_logits.float().clamp_min(LOGIT_FLOOR), dim=-1)
    log_t = torch.log_softmax(teacher_logits.float().clamp_min(LOGIT_FLOOR), dim=-1)
    return _divergence(log_s, log_t, alpha)


# --- every practised loss mode (pcmi.objectives.LossMode) ---------------------------------------

def _floored(logits):
    """Logits as float32 (float64 kept), −inf floored at LOGIT_FLOOR."""
    x = logits if logits.dtype == torch.float64 else logits.float()
    return x.clamp_min(LOGIT_FLOOR)


def _check_logits(student_logits, teacher_logits):
    for name, x in (("student", student_logits), ("teacher", teacher_logits)):
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or not x.is_floating_point():
            raise PcmiInputError(f"{name} logits must be a float tensor (B, T, V), got "
                                 f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if torch.isnan(x).any() or torch.isposinf(x).any():
            raise PcmiInputError(f"{name} logits must be finite or −inf (a masked token), not NaN or +inf")
    if student_logits.shape != teacher_logits.shape:
        raise PcmiInputError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                             f"{tuple(teacher_logits.shape)} must have the same shape (B, T, V)")


def _check_ids(completion_ids, shape, what: str):
    B, T, V = shape
    if completion_ids is None:
        raise PcmiInputError(f"{what} needs completion_ids (B, T): the sampled tokens")
    if (not isinstance(completion_ids, torch.Tensor) or completion_ids.shape != (B, T)
            or completion_ids.dtype not in (torch.int64, torch.int32)):
        got = tuple(completion_ids.shape) if isinstance(completion_ids, torch.Tensor) else type(completion_ids).__name__
        raise PcmiInputError(f"completion_ids must be an integer tensor of shape {(B, T)}, got {got}")
    if completion_ids.numel() and (completion_ids.min() < 0 or completion_ids.max() >= V):
        raise PcmiInputError(f"completion_ids must lie in [0, {V}) (the vocabulary), got "
                             f"[{int(completion_ids.min())}, {int(completion_ids.max())}]")
    return completion_ids.long()


def _topk_log_probs(log_s, log_t, key, k: int, tail: bool):
    """(log S̃, log T̃) on the k tokens with the largest `key` (ties: lower token id first), gathered
    at the same ids: renormalized, or with one tail bucket log(1 − Σ_topk p) appended to both."""
    V = log_s.shape[-1]
    idx = torch.sort(key, dim=-1, descending=True, stable=True).indices[..., :min(k, V)]  # (B, T, k)
    ls_k, lt_k = log_s.gather(-1, idx), log_t.gather(-1, idx)                             # (B, T, k)
    if not tail:
        return torch.log_softmax(ls_k, dim=-1), torch.log_softmax(lt_k, dim=-1)
    in_k = torch.zeros_like(log_s, dtype=torch.bool).scatter_(-1, idx, True)             # (B, T, V)
    # log of the mass outside the top-k, as a log-sum-exp (no 1 − Σ cancellation); an empty tail
    # is a sum of floored entries: probability exactly 0, finite
    ls_tail = torch.logsumexp(log_s.masked_fill(in_k, LOGIT_FLOOR), dim=-1, keepdim=True)  # (B, T, 1)
    lt_tail = torch.logsumexp(log_t.masked_fill(in_k, LOGIT_FLOOR), dim=-1, keepdim=True)
    return torch.cat([ls_k, ls_tail], dim=-1), torch.cat([lt_k, lt_tail], dim=-1)


def per_token_loss(student_logits, teacher_logits, completion_ids, mode: LossMode):
    """The per-token loss ℓ_t of a mode: logits (B, T, V), completion_ids (B, T) → (B, T); the teacher
    is detached here. ∂ℓ_t/∂(student logits at t) is the mode's one-rollout estimator at prefix h_t
    (S = S(·|h_t), T = T(·|h_t, y'), y_t = completion_ids[:, t]):

        full              D_α(S, T) over the whole vocabulary
        topk              D_α(S̃, T̃) on the k most likely tokens of S (topk_of "student") or of T
                          ("teacher"), ties to the lower token id, both gathered at the same ids and
                          renormalized, or (tail) with one bucket log(1 − Σ_topk p) appended to both
                          (k ≥ V: every token, = full)
        sampled           [log S(y_t) − log T(y_t)]·log S(y_t), the bracket detached: gradient
                          (log S − log T)(y_t)·∇log S(y_t)                                   (α = 1)
        sampled-baseline  [log S(y_t) − log T(y_t) − KL(S ‖ T)]·log S(y_t), the bracket detached (vOPD)

    The value of full/topk is the divergence; that of sampled(-baseline) is the surrogate, whose
    gradient (not value) is the estimator. `sequence` needs the whole rollout: `sequence_reward_to_go_loss`.
    Masked (−inf) logits are floored at LOGIT_FLOOR: probability exactly 0, no NaN.
    """
    mode = loss_mode(mode)
    if mode.kind == "sequence":
        raise PcmiInputError("mode sequence needs the whole rollout's reward-to-go: use sequence_reward_to_go_loss")
    _check_logits(student_logits, teacher_logits)
    log_s = torch.log_softmax(_floored(student_logits), dim=-1)            # (B, T, V)
    t_floored = _floored(teacher_logits.detach()).to(log_s.dtype)
    log_t = torch.log_softmax(t_floored, dim=-1)                           # (B, T, V)
    if mode.kind == "full":
        return _divergence(log_s, log_t, mode.alpha)
    if mode.kind == "topk":
        key = (_floored(student_logits) if mode.topk_of == "student" else t_floored).detach()
        return _divergence(*_topk_log_probs(log_s, log_t, key, mode.topk, mode.tail), mode.alpha)
    ids = _check_ids(completion_ids, student_logits.shape, f"mode {mode.kind}")[..., None]  # (B, T, 1)
    ls_y, lt_y = log_s.gather(-1, ids).squeeze(-1), log_t.gather(-1, ids).squeeze(-1)      # (B, T)
    reward = ls_y - lt_y
    if mode.kind == "sampled-baseline":
        reward = reward - _kl(log_s, log_t)
    return reward.detach() * ls_y


def sequence_reward_to_go_loss(student_logits, teacher_logits, completion_ids, mask):
    """The `sequence` mode's per-token surrogate: logits (B, T, V), completion_ids and mask (B, T) →
    (B, T), 0 where mask is 0; the teacher is detached here:

        ℓ_t = R_t.detach()·log S(y_t|h_t),   R_t = Σ_{s≥t, mask_s} (log S − log T)(y_s|h_s)

    Σ_t ∇ℓ_t = Σ_t R_t ∇log S(y_t|h_t) is an unbiased one-rollout estimator of ∇ KL(S ‖ T(·|y'))
    over whole sequences (reverse KL, α = 1). Masked (−inf) logits are floored at LOGIT_FLOOR."""
    _check_logits(student_logits, teacher_logits)
    ids = _check_ids(completion_ids, student_logits.shape, "mode sequence")[..., None]     # (B, T, 1)
    if not isinstance(mask, torch.Tensor) or mask.shape != ids.shape[:2]:
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise PcmiInputError(f"mask must be a tensor of shape {tuple(ids.shape[:2])}, got {got}")
    log_s = torch.log_softmax(_floored(student_logits), dim=-1)                            # (B, T, V)
    log_t = torch.log_softmax(_floored(teacher_logits.detach()).to(log_s.dtype), dim=-1)
    ls_y, lt_y = log_s.gather(-1, ids).squeeze(-1), log_t.gather(-1, ids).squeeze(-1)      # (B, T)
    m = mask.to(log_s.dtype)
    ratio = torch.where(m > 0, ls_y - lt_y, torch.zeros_like(ls_y))                        # (B, T)
    reward_to_go = ratio.flip(-1).cumsum(-1).flip(-1)                                      # R_t = Σ_{s≥t}
    return torch.where(m > 0, reward_to_go.detach() * ls_y, torch.zeros_like(ls_y))


def sequence_mean_then_batch_mean(per_token, mask, row_weight=None):
    """TRL-style reduction: each row's mean over its masked tokens, then the mean over rows;
    rows with row_weight 0 (no demonstration) count as zeros in that mean."""
    mask = mask.float()
    per_row = (per_token * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)
    if row_weight is not None:
        per_row = per_row * row_weight
    return per_row.mean()
