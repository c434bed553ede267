"""Per-token divergences between student S and teacher T over the full vocabulary (theory.md §3).

Convention of the public SDPO trainers: α = 1 → KL(S ‖ T) (reverse), α = 0 → KL(T ‖ S) (forward),
0 < α < 1 → α·KL(T ‖ m) + (1−α)·KL(S ‖ m) with m = (1−α)·S + α·T.
"""
from __future__ import annotations

import math

import torch


def _kl(log_p, log_q):
    """Σ_v p_v (log p_v − log q_v) over the last axis (0·log 0 = 0)."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)


LOGIT_FLOOR = -1e30  # a masked (−inf) logit becomes this: probability exactly 0, gradients finite


def per_token_divergence(student_logits, teacher_logits, alpha: float):
    """D_α(S, T) per position: logits (B, T, V) → (B, T). Pass detached teacher logits.
    −inf logits (masked tokens) are floored at LOGIT_FLOOR, so their probability is exactly 0 and
    no gradient is NaN (0·log 0 = 0; log m of two zero masses stays finite)."""
    log_s = torch.log_softmax(student_logits.float().clamp_min(LOGIT_FLOOR), dim=-1)
    log_t = torch.log_softmax(teacher_logits.float().clamp_min(LOGIT_FLOOR), dim=-1)
    if alpha == 1.0:
        return _kl(log_s, log_t)
    if alpha == 0.0:
        return _kl(log_t, log_s)
    log_m = torch.logsumexp(torch.stack([log_s + math.log(1 - alpha), log_t + math.log(alpha)]), dim=0)
    return alpha * _kl(log_t, log_m) + (1 - alpha) * _kl(log_s, log_m)


def sequence_mean_then_batch_mean(per_token, mask, row_weight=None):
    """TRL-style reduction: each row's mean over its masked tokens, then the mean over rows;
    rows with row_weight 0 (no demonstration) count as zeros in that mean."""
    mask = mask.float()
    per_row = (per_token * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)
    if row_weight is not None:
        per_row = per_row * row_weight
    return per_row.mean()
