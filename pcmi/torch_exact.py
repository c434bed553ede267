"""The route-copying SDSD optimum in torch, on a GPU when one is present (optional: torch is imported
when called). The same closed form as `pcmi.policies.sdsd_optimum` with a route-copying teacher:

    w_z = π0(z),  D(z) = Σ_{y' ∈ z} D(y'),  A_z = log((1−eps)/w_z + eps)
    E_D log T(y | y') = α_z·log π0(y) + β_z  for y in strategy z,
        α_z = D(z)·[D(z) > 0] + (1 − D(z))·[D has mass outside z]
        β_z = D(z)·A_z·[D(z) > 0] + (1 − D(z))·log eps·[D has mass outside z]
    log π_SD = log_normalize(E_D log T(y | y'))

The rollouts are streamed through the device in chunks, two passes (strategy sums, then the tilt), so
|Y| is bounded by host memory, not by the device's. Float64 throughout.
"""
from __future__ import annotations

import numpy as np

from .distributions import check_log_probs, float_array
from .errors import PcmiInputError
from .checks import unit

CHUNK = 1 << 24  # rollouts per chunk on the device


def _group_logsumexp(torch, values, groups, K, device):
    """log Σ_{i ∈ g} exp(values_i) per group g < K over chunks: two passes (group max, shifted sums)."""
    top = torch.full((K,), -torch.inf, dtype=torch.float64, device=device)
    for lo in range(0, len(values), CHUNK):
        v = torch.as_tensor(values[lo:lo + CHUNK], device=device)
        g = torch.as_tensor(groups[lo:lo + CHUNK], device=device)
        top = top.scatter_reduce(0, g, v, reduce="amax")
    shift = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = torch.zeros(K, dtype=torch.float64, device=device)
    for lo in range(0, len(values), CHUNK):
        v = torch.as_tensor(values[lo:lo + CHUNK], device=device)
        g = torch.as_tensor(groups[lo:lo + CHUNK], device=device)
        total = total.scatter_add(0, g, torch.exp(v - shift[g]))
    return torch.where(torch.isfinite(top), shift + torch.log(total), top)


def route_copying_sdsd_optimum(log_base, owner, log_D, eps: float, device=None) -> np.ndarray:
    """log π_SD(y) for a route-copying teacher (rollout y in strategy owner[y] ≥ 0; −1 only where
    π0(y) = 0) and demonstrations D, computed in torch on `device` (default: CUDA if present, else CPU)."""
    import torch
    log_base = check_log_probs(float_array(log_base, "base policy", ndim=1), "base policy")
    log_D = check_log_probs(float_array(log_D, "demonstration distribution D", ndim=1), "demonstration distribution D")
    owner = np.asarray(owner)
    if not (log_base.shape == log_D.shape == owner.shape):
        raise PcmiInputError("log_base, owner and log_D must be flat arrays of one length (one entry per rollout)")
    if not np.issubdtype(owner.dtype, np.integer) or np.any(np.isfinite(log_base) & (owner < 0)):
        raise PcmiInputError("owner must be an integer strategy index >= 0 for every rollout with π0(y) > 0")
    if np.any(np.isfinite(log_D) & ~np.isfinite(log_base)):
        raise PcmiInputError("demonstrations D put mass on a rollout with zero base probability, "
                             "where the route-copying teacher T(·|y') is undefined")
    eps = unit(eps, "eps")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    K = int(owner.max(initial=-1)) + 1
    groups = np.maximum(owner, 0).astype(np.int64)
    on = owner >= 0
    log_w = _group_logsumexp(torch, np.where(on, log_base, -np.inf), groups, K, device)
    log_d = _group_logsumexp(torch, np.where(on, log_D, -np.inf), groups, K, device)
    present = torch.isfinite(log_d)
    d = torch.exp(log_d).clamp(0.0, 1.0)
    others = (present.sum() - present.long()) > 0
    log_eps = torch.log(torch.tensor(eps, dtype=torch.float64, device=device))
    A = torch.logaddexp(torch.log1p(torch.tensor(-eps, dtype=torch.float64, device=device)) - log_w, log_eps)
    zero = torch.zeros_like(d)
    alpha = torch.where(present, d, zero) + torch.where(others, 1.0 - d, zero)
    in_term = torch.where(present, torch.where(torch.isneginf(A), -torch.inf, d * A), zero)
    out_term = torch.where(others, torch.where(torch.isneginf(log_eps), -torch.inf, (1.0 - d) * log_eps), zero)
    beta = in_term + out_term
    out = np.empty(len(log_base))
    for lo in range(0, len(log_base), CHUNK):
        b = torch.as_tensor(log_base[lo:lo + CHUNK], device=device)
        z = torch.as_tensor(groups[lo:lo + CHUNK], device=device)
        keep = torch.as_tensor(on[lo:lo + CHUNK], device=device) & torch.isfinite(b)
        e = torch.where(keep, alpha[z] * torch.where(keep, b, zero[:1]) + beta[z], -torch.inf)
        out[lo:lo + CHUNK] = e.cpu().numpy()
    if not np.isfinite(out).any():
        raise PcmiInputError("E_D log T(y | y') is -inf on every rollout (eps = 0 and demonstrations in several "
                             "strategies): the reverse KL is infinite for every policy")
    m = out.max()
    return out - (m + np.log(np.sum(np.exp(out - m))))


def sdsd_optimum_on_device(inst, device=None) -> np.ndarray:
    """`sdsd_optimum(inst)` (β = None) for an instance with a route-copying teacher, computed in torch."""
    t = inst.teacher
    if not getattr(t, "disjoint", False) or not hasattr(t, "_owner"):
        raise PcmiInputError("sdsd_optimum_on_device needs a route-copying (disjoint latent-strategy) teacher")
    return route_copying_sdsd_optimum(inst.log_base, t._owner, inst.log_demos, t.eps, device)
