"""Training loops, readable top to bottom: pretraining, then RL or SDSD from the same checkpoint.

Every stage checkpoints atomically (tmp file + os.replace) with the model, optimizer, step,
history and RNG states (torch generator, numpy generator), so a killed run resumes to the same
parameters as an uninterrupted one.

RL (GRPO-style, Dr. GRPO advantages by default):
    R_i = r_i − β·(log π(y_i) − log π_ref(y_i))          (k1 KL leash in the reward, detached)
    A_i = R_i − mean_group(R)   [÷ std_group(R) if scale_adv_by_std]
    loss = −mean_i A_i · log π(y_i)
  whose expected gradient vanishes at π ∝ π_ref · exp(r/β) (pcmi.rl_optimum), std scaling off.

SDSD (self-distillation, SDPO switches: full-logit divergence, live | ema | frozen teacher):
    for rollout i of prompt x: y' ~ uniform over the group's other successes (none → masked);
    loss_i = mean_t D_α(π(·|h_t), T(·|h_t, y'))   on the student's own tokens, teacher detached;
    loss = mean_i loss_i (rows without demonstration count as 0: TRL's reduction).
"""
from __future__ import annotations

import copy
import os
import time

import numpy as np
import torch

from .losses import per_token_divergence, sequence_mean_then_batch_mean
from .model import GPT
from .rollouts import completion_logits, completion_path, move_table, prompt_ids, sample_rollouts, sequence_logprob


class StageInterrupted(RuntimeError):
    """Raised by `stop_after` to simulate a kill (tests of resume)."""


def new_model(cfg, world) -> GPT:
    return GPT(len(world.vocab), world.block_size, cfg.n_layer, cfg.n_head, cfg.n_embd)


def save_atomic(obj, path: str) -> None:
    """torch.save to a temporary file in the same directory, then os.replace (atomic on POSIX)."""
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str, device):
    return torch.load(path, map_location=device, weights_only=False)


def stage_seed(seed: int, stage: str) -> int:
    return int(np.random.SeedSequence([seed, sum(map(ord, stage))]).generate_state(1)[0])


def run_stage(stage: str, cfg, world, model, ckpt_path: str, seed: int, device, *,
              ref_model=None, stop_after: int | None = None, progress: bool = True) -> dict:
    """Train `model` in place for the stage ("pretrain", "rl" or "sdsd"); resumes from ckpt_path.
    Returns {"history": [...], "wall_s": float, "tokens": int}."""
    n_steps = cfg.pretrain_steps if stage == "pretrain" else cfg.post_steps
    if stage == "pretrain":
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.pretrain_lr, weight_decay=0.01)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.post_lr)
    gen = torch.Generator().manual_seed(stage_seed(seed, stage))
    rng = np.random.default_rng(stage_seed(seed, stage + "/np"))
    teacher = None
    if stage == "sdsd":
        teacher = {"live": model, "ema": copy.deepcopy(model), "frozen": ref_model}[cfg.teacher]
    state = {"step": 0, "history": [], "wall_s": 0.0, "tokens": 0, "done": False}
    if os.path.exists(ckpt_path):  # resume
        ck = load_checkpoint(ckpt_path, device)
        if ck.get("run") != _run_key(cfg, seed):
            raise ValueError(f"{ckpt_path} belongs to a run with another config or seed; "
                             "use a fresh --out directory")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        gen.set_state(ck["torch_rng"])
        rng.bit_generator.state = ck["np_rng"]
        if ck.get("ema") is not None:
            teacher.load_state_dict(ck["ema"])
        state = ck["state"]
    state["steps_this_call"] = 0
    if state["done"]:
        return state

    valid = move_table(world, device)
    bar = _progress(stage, n_steps, state["step"], progress)
    steps_this_call = 0
    while state["step"] < n_steps:
        t0 = time.perf_counter()
        model.train()
        if stage == "pretrain":
            log, tokens = pretrain_step(model, opt, world, cfg, rng, device)
        elif stage == "rl":
            log, tokens = rl_step(model, ref_model, opt, world, cfg, rng, gen, valid)
        else:
            log, tokens = sdsd_step(model, teacher, opt, world, cfg, rng, gen, valid)
            if cfg.teacher == "ema":
                ema_update(teacher, model, cfg.ema_rate)
        state["step"] += 1
        state["tokens"] += tokens
        state["wall_s"] += time.perf_counter() - t0
        if state["step"] % cfg.log_every == 0 or state["step"] == n_steps:
            state["history"].append({"step": state["step"], **log})
        state["done"] = state["step"] == n_steps
        if state["step"] % cfg.ckpt_every == 0 or state["done"]:
            save_atomic({"model": model.state_dict(), "opt": opt.state_dict(), "torch_rng": gen.get_state(),
                         "np_rng": rng.bit_generator.state, "state": state, "run": _run_key(cfg, seed),
                         "ema": teacher.state_dict() if cfg.teacher == "ema" and stage == "sdsd" else None},
                        ckpt_path)
        if bar is not None:
            bar.update(1)
            bar.set_postfix({k: f"{v:.3g}" for k, v in log.items() if k in ("loss", "success")})
        steps_this_call += 1
        state["steps_this_call"] = steps_this_call
        if stop_after is not None and steps_this_call >= stop_after and not state["done"]:
            raise StageInterrupted(f"{stage} stopped after {steps_this_call} steps (simulated kill)")
    if bar is not None:
        bar.close()
    return state


def _run_key(cfg, seed: int) -> dict:
    """What a checkpoint must match to be resumed: the config (bookkeeping fields aside) and seed."""
    d = cfg.to_dict()
    for k in ("ckpt_every", "log_every", "ks"):
        d.pop(k)
    return {"config": d, "seed": int(seed)}


def _progress(stage, total, initial, enabled):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, desc=stage, leave=False, mininterval=2.0)


# ----------------------------------------------------------------------------- pretraining
def pretrain_step(model, opt, world, cfg, rng, device):
    """Next-token cross-entropy on completion tokens of a batch from the data law."""
    from .data import pretraining_batch
    x, y, mask = pretraining_batch(world, cfg.pretrain_batch, cfg.p_demo, cfg.p_wrong, rng)
    x, y, mask = x.to(device), y.to(device), mask.to(device)
    logits = model(x)                                                       # (B, T, V)
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="none")  # (B, T)
    loss = (nll * mask).sum() / mask.sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    return {"loss": loss.item(), "grad_norm": float(gnorm)}, int(x.numel())


def _prompts(world, cfg, rng) -> list:
    n = len(world.laws)
    return rng.choice(n, size=cfg.prompts_per_step, replace=cfg.prompts_per_step > n).tolist()


# ----------------------------------------------------------------------------- RL
def rl_step(model, ref_model, opt, world, cfg, rng, gen, valid):
    """One GRPO-style step with the KL leash in the reward (see module docstring)."""
    model.eval()
    ro = sample_rollouts(model, world, _prompts(world, cfg, rng), cfg.group_size, gen, valid)
    model.train()
    ctx = prompt_ids(world, ro.prompt.tolist(), device=valid.device)
    logp = sequence_logprob(completion_logits(model, ctx, ro.tokens), ro.tokens, ro.mask)  # (N,)
    with torch.no_grad():
        logp_ref = sequence_logprob(completion_logits(ref_model, ctx, ro.tokens), ro.tokens, ro.mask)
        kl_seq = logp.detach() - logp_ref                                   # k1 estimate of KL(π‖π_ref)
        R = (ro.reward - cfg.beta * kl_seq).view(-1, cfg.group_size)       # (P, G)
        adv = R - R.mean(dim=1, keepdim=True)
        if cfg.scale_adv_by_std:
            adv = adv / (R.std(dim=1, keepdim=True) + 1e-6)
        adv = adv.view(-1)
    loss = -(adv * logp).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    tokens = 3 * ro.n * (ctx.shape[1] + ro.tokens.shape[1])                # sample + policy + reference
    return {"loss": loss.item(), "success": float(ro.reward.mean()), "kl_ref": float(kl_seq.mean()),
            "grad_norm": float(gnorm)}, tokens


# ----------------------------------------------------------------------------- SDSD
def choose_demonstrations(ro, group_size: int, rng):
    """For each rollout, a correct sibling of its group (never itself) or −1.
    Returns (demo index (N,), n_only_success (masked lone successes), n_skipped_prompts)."""
    r = ro.reward.view(-1, group_size).cpu().numpy() > 0
    demo = np.full(r.size, -1)
    only, skipped = 0, 0
    for p in range(r.shape[0]):
        ok = np.flatnonzero(r[p])
        if len(ok) == 0:
            skipped += 1
            continue
        only += int(len(ok) == 1)
        for g in range(group_size):
            cands = ok[ok != g]
            if len(cands):
                demo[p * group_size + g] = p * group_size + int(rng.choice(cands))
    return demo, only, skipped


def sdsd_step(model, teacher, opt, world, cfg, rng, gen, valid):
    """One self-distillation step (see module docstring)."""
    model.eval()
    ro = sample_rollouts(model, world, _prompts(world, cfg, rng), cfg.group_size, gen, valid)
    model.train()
    demo_idx, n_only, n_skipped = choose_demonstrations(ro, cfg.group_size, rng)
    has_demo = torch.as_tensor(demo_idx >= 0, device=valid.device)
    demos = [completion_path(world, ro.prompt[j], ro.tokens[j], ro.mask[j]) if j >= 0
             else world.laws[int(ro.prompt[i])].paths[0]          # placeholder, row masked out
             for i, j in enumerate(demo_idx)]
    student_ctx = prompt_ids(world, ro.prompt.tolist(), device=valid.device)
    teacher_ctx = prompt_ids(world, ro.prompt.tolist(), demos, device=valid.device)
    with torch.no_grad():
        t_logits = completion_logits(teacher, teacher_ctx, ro.tokens)      # (N, L+1, V)
    s_logits = completion_logits(model, student_ctx, ro.tokens)            # (N, L+1, V)
    per_tok = per_token_divergence(s_logits, t_logits.detach(), cfg.alpha)  # (N, L+1)
    loss = sequence_mean_then_batch_mean(per_tok, ro.mask, has_demo.float())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    tokens = ro.n * (3 + 2 * ro.tokens.shape[1] + teacher_ctx.shape[1] + student_ctx.shape[1])
    return {"loss": loss.item(), "success": float(ro.reward.mean()), "grad_norm": float(gnorm),
            "masked_only_success": n_only, "skipped_prompts": n_skipped,
            "demo_fraction": float(has_demo.float().mean())}, tokens


@torch.no_grad()
def ema_update(teacher, model, rate: float) -> None:
    """θ_T ← (1 − rate)·θ_T + rate·θ."""
    for pt, p in zip(teacher.parameters(), model.parameters()):
        pt.mul_(1 - rate).add_(p, alpha=rate)
