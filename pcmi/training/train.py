"""Training loops, readable top to bottom: pretraining, then RL or SDSD from the same checkpoint.

Every stage checkpoints atomically (pcmi.atomic) with the model, optimizer, step, history and RNG
states (torch generator state as a uint8 tensor, numpy generator state as a dict of ints), every
`ckpt_every` steps and every `ckpt_minutes` minutes, so a killed run resumes to the same parameters
as an uninterrupted one. Checkpoints hold only tensors, dicts, lists, numbers and strings and are
loaded with torch.load(weights_only=True): loading never executes pickled code.

RL (GRPO-style, Dr. GRPO advantages by default):
    R_i = r_i − β·(log π(y_i) − log π_ref(y_i))          (k1 KL leash in the reward, detached)
    A_i = R_i − mean_group(R)   [÷ std_group(R) if scale_adv_by_std]
    loss = −mean_i A_i · log π(y_i)
  whose expected gradient vanishes at π ∝ π_ref · exp(r/β) (pcmi.rl_optimum), std scaling off.

SDSD (self-distillation, SDPO switches: full-logit divergence, live | ema | frozen teacher):
    for rollout i of prompt x: y' ~ uniform over the group's other successes (none → masked);
    loss_i = mean_t D_α(π(·|h_t), T(·|h_t, y'))   on the student's own tokens, teacher detached;
    loss = mean_i loss_i (rows without demonstration count as 0: TRL's reduction).

Feedback-conditioned SDSD (teacher_context = "feedback", SDPO with the environment's feedback, theory.md §11):
    for rollout i of prompt x: w ~ uniform over the endpoints of the group's failures that stopped at a
    node ≠ t (WrongEndpoint(w); a group without one gives no signal: masked, `skipped_no_feedback`);
    the teacher context is "FB w SEP BOS s t", the loss the same per-token loss, teacher detached.
"""
from __future__ import annotations

import copy
import os
import time

import numpy as np
import torch

from pcmi.atomic import atomic_write
from pcmi.errors import PcmiInputError

from pcmi.objectives import LossMode, loss_mode

from .losses import per_token_loss, sequence_mean_then_batch_mean, sequence_reward_to_go_loss
from .model import GPT
from .rollouts import completion_logits, completion_path, move_table, prompt_ids, sample_rollouts, sequence_logprob


class StageInterrupted(RuntimeError):
    """Raised by `stop_after` to simulate a kill (tests of resume)."""


def new_model(cfg, world) -> GPT:
    return GPT(len(world.vocab), world.block_size, cfg.n_layer, cfg.n_head, cfg.n_embd)


CKPT_KEYS = ("model", "opt", "torch_rng", "np_rng", "state", "run", "ema")


def save_checkpoint(obj: dict, path: str) -> None:
    """torch.save through pcmi.atomic (temporary file, os.replace; a directory target is refused)."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: str, device) -> dict:
    """A checkpoint written by save_checkpoint, loaded with weights_only=True (no pickled code runs).
    A truncated, empty, corrupt or foreign file is a one-line PcmiInputError naming it."""
    try:
        ck = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # EOFError, RuntimeError (zip), UnpicklingError (weights_only) ...
        why = " ".join(str(exc).split()).split(". ")[0][:100] or type(exc).__name__
        raise PcmiInputError(f"checkpoint {path} is unreadable (truncated, empty or not a pcmi checkpoint: "
                             f"{why}); delete it to recompute that stage") from None
    if not isinstance(ck, dict) or any(k not in ck for k in CKPT_KEYS):
        raise PcmiInputError(f"checkpoint {path} is not a pcmi training checkpoint (missing fields); "
                             "delete it to recompute that stage")
    return ck


def checkpoint_matches(ck: dict, cfg, seed: int) -> bool:
    """The checkpoint's run key (config and seed) is this run's. A key written before a TrainConfig field
    existed matches when this run leaves that field at its default (a new switch does not orphan old
    checkpoints); any other difference does not."""
    key, cur = ck.get("run"), _run_key(cfg, seed)
    if key == cur:
        return True
    if not isinstance(key, dict) or key.get("seed") != cur["seed"] or not isinstance(key.get("config"), dict):
        return False
    from .config import TrainConfig
    old, new, default = key["config"], cur["config"], _run_key(TrainConfig(), seed)["config"]
    return set(old) <= set(new) and all(old.get(k, default[k]) == v for k, v in new.items())


def stage_seed(seed: int, stage: str) -> int:
    return int(np.random.SeedSequence([seed, sum(map(ord, stage))]).generate_state(1)[0])


def run_stage(stage: str, cfg, world, model, ckpt_path: str, seed: int, device, *,
              ref_model=None, stop_after: int | None = None, progress: bool = True, log=None,
              probe=None, probe_every: int = 0) -> dict:
    """Train `model` in place for the stage ("pretrain", "rl", "sdsd" or the null baseline "negative");
    resumes from ckpt_path.
    probe(model, teacher) -> dict (JSON-able), called before the first step and after every
    `probe_every` steps (teacher: the SDSD teacher network, else None); its rows, with "step", are kept in
    state["probes"] and checkpointed with it, so a resumed stage keeps the rows measured before the kill.
    Probes run outside the timed step (wall_s, tokens/s exclude them).
    Returns the stage state {"step", "history", "wall_s", "tokens", "done", "resumed_from", ...}."""
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
    resumed_from = None
    if os.path.exists(ckpt_path):  # resume
        ck = load_checkpoint(ckpt_path, device)
        if not checkpoint_matches(ck, cfg, seed):
            raise PcmiInputError(f"{ckpt_path} belongs to a run with another config or seed; "
                                 "use a fresh --out directory")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        gen.set_state(ck["torch_rng"])
        rng.bit_generator.state = ck["np_rng"]
        if ck["ema"] is not None:
            teacher.load_state_dict(ck["ema"])
        state = ck["state"]
        resumed_from = state["step"]
        if log is not None:
            what = "finished" if state["done"] else f"resuming from step {state['step']}/{n_steps}"
            log(f"reusing checkpoints in {os.path.dirname(ckpt_path) or '.'} (config, seed match): "
                f"{os.path.basename(ckpt_path)} {what}")
    state["resumed_from"] = resumed_from
    state["steps_this_call"] = 0
    if state["done"]:
        return state
    if probe is not None and probe_every > 0 and state["step"] == 0 and not state.get("probes"):
        state["probes"] = [{"step": 0, **probe(model, teacher)}]

    def save():
        save_checkpoint({"model": model.state_dict(), "opt": opt.state_dict(), "torch_rng": gen.get_state(),
                         "np_rng": rng.bit_generator.state, "state": state, "run": _run_key(cfg, seed),
                         "ema": teacher.state_dict() if cfg.teacher == "ema" and stage == "sdsd" else None},
                        ckpt_path)

    valid = move_table(world, device)
    bar = _progress(stage, n_steps, state["step"], progress)
    steps_this_call = 0
    last_save = time.monotonic()
    while state["step"] < n_steps:
        t0 = time.perf_counter()
        model.train()
        if stage == "pretrain":
            log_row, tokens = pretrain_step(model, opt, world, cfg, rng, device)
        elif stage == "rl":
            log_row, tokens = rl_step(model, ref_model, opt, world, cfg, rng, gen, valid)
        elif stage == "negative":
            log_row, tokens = negative_step(model, opt, world, cfg, rng, gen, valid)
        else:
            log_row, tokens = sdsd_step(model, teacher, opt, world, cfg, rng, gen, valid, ref_model=ref_model)
            if cfg.teacher == "ema":
                ema_update(teacher, model, cfg.ema_rate)
        state["step"] += 1
        state["tokens"] += tokens
        state["wall_s"] += time.perf_counter() - t0
        if state["step"] % cfg.log_every == 0 or state["step"] == n_steps:
            state["history"].append({"step": state["step"], **log_row})
        state["done"] = state["step"] == n_steps
        if probe is not None and probe_every > 0 and (state["step"] % probe_every == 0 or state["done"]):
            state.setdefault("probes", []).append({"step": state["step"], **probe(model, teacher)})
        if (state["step"] % cfg.ckpt_every == 0 or state["done"]
                or time.monotonic() - last_save >= 60 * cfg.ckpt_minutes):
            save()
            last_save = time.monotonic()
        if bar is not None:
            bar.update(1)
            bar.set_postfix({k: f"{v:.3g}" for k, v in log_row.items() if k in ("loss", "success")}, refresh=False)
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
    for k in ("ckpt_every", "ckpt_minutes", "log_every", "ks"):
        d.pop(k)
    d = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
    return {"config": d, "seed": int(seed)}


def _progress(stage, total, initial, enabled):
    """A tqdm bar on stderr redrawn at most once a second, off when stderr is not a terminal."""
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc=stage, leave=False, mininterval=1.0, disable=None)


# ----------------------------------------------------------------------------- pretraining
def pretrain_step(model, opt, world, cfg, rng, device):
    """Next-token cross-entropy on completion tokens of a batch from the data law."""
    from .data import pretraining_batch
    x, y, mask = pretraining_batch(world, cfg.pretrain_batch, cfg.p_demo, cfg.p_wrong, rng,
                                cfg.p_feedback)
    x, y, mask = x.to(device), y.to(device), mask.to(device)
    logits = model(x)                                                       # (B, T, V)
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="none")  # (B, T)
    loss = (nll * mask).sum() / mask.sum()
    gnorm = _optimizer_step(model, opt, loss, cfg.grad_clip)
    return {"loss": loss.item(), "grad_norm": gnorm}, int(x.numel())


def _prompts(world, cfg, rng) -> list:
    n = len(world.laws)
    return rng.choice(n, size=cfg.prompts_per_step, replace=cfg.prompts_per_step > n).tolist()


# ----------------------------------------------------------------------------- RL
def kl_leashed_reward(reward, logp, logp_ref, beta: float):
    """R_i = r_i − β·(log π(y_i) − log π_ref(y_i)): the reward with the k1 KL leash, detached."""
    return (reward - beta * (logp - logp_ref)).detach()


def group_advantages(R, group_size: int, scale_by_std: bool = False):
    """A_i = R_i − mean of R over i's group (consecutive blocks of group_size), ÷ the group std if asked."""
    R = R.view(-1, group_size)
    adv = R - R.mean(dim=1, keepdim=True)
    if scale_by_std:
        adv = adv / (R.std(dim=1, keepdim=True) + 1e-6)
    return adv.reshape(-1)


def policy_gradient_loss(adv, logp):
    """−mean_i A_i · log π(y_i) (A detached): its gradient is the REINFORCE estimator."""
    return -(adv.detach() * logp).mean()


def rl_loss(model, ref_model, world, ro, cfg):
    """(loss, stats) of one GRPO-style batch of rollouts `ro` (see module docstring)."""
    ctx = prompt_ids(world, ro.prompt.tolist(), device=ro.tokens.device)
    logp = sequence_logprob(completion_logits(model, ctx, ro.tokens), ro.tokens, ro.mask)       # (N,)
    with torch.no_grad():
        logp_ref = sequence_logprob(completion_logits(ref_model, ctx, ro.tokens), ro.tokens, ro.mask)
    R = kl_leashed_reward(ro.reward, logp.detach(), logp_ref, cfg.beta)
    adv = group_advantages(R, cfg.group_size, cfg.scale_adv_by_std)
    kl_seq = logp.detach() - logp_ref                                      # k1 estimate of KL(π‖π_ref)
    return policy_gradient_loss(adv, logp), {"kl_ref": float(kl_seq.mean()), "ctx_len": ctx.shape[1]}


def _optimizer_step(model, opt, loss, grad_clip: float) -> float:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return float(gnorm)


def rl_step(model, ref_model, opt, world, cfg, rng, gen, valid):
    """One GRPO-style step with the KL leash in the reward (see module docstring)."""
    model.eval()
    ro = sample_rollouts(model, world, _prompts(world, cfg, rng), cfg.group_size, gen, valid)
    model.train()
    loss, st = rl_loss(model, ref_model, world, ro, cfg)
    gnorm = _optimizer_step(model, opt, loss, cfg.grad_clip)
    tokens = 3 * ro.n * (st["ctx_len"] + ro.tokens.shape[1])              # sample + policy + reference
    return {"loss": loss.item(), "success": float(ro.reward.mean()), "kl_ref": st["kl_ref"],
            "grad_norm": gnorm, "groups_two_successes": groups_with_two_successes(ro, cfg.group_size)}, tokens


def groups_with_two_successes(ro, group_size: int) -> float:
    """Fraction of the step's groups with at least two successes: the groups in which SDSD has a
    demonstration for a success (a lone success gets none), logged for RL and SDSD alike."""
    r = ro.reward.view(-1, group_size) > 0                                  # (prompts, group)
    return float((r.sum(dim=1) >= 2).float().mean())


# ----------------------------------------------------------------------------- null baseline
def negative_advantages(reward, penalty: float = 1.0):
    """The null baseline's fixed advantage: −penalty on failures, 0 on successes (no reference, no
    group baseline, no demonstration: only "move away from what failed", arXiv 2608.31046)."""
    return torch.where(reward > 0, torch.zeros_like(reward), torch.full_like(reward, -penalty))


def negative_step(model, opt, world, cfg, rng, gen, valid):
    """One step of the null baseline: REINFORCE with the fixed negative advantage on failures."""
    model.eval()
    ro = sample_rollouts(model, world, _prompts(world, cfg, rng), cfg.group_size, gen, valid)
    model.train()
    ctx = prompt_ids(world, ro.prompt.tolist(), device=ro.tokens.device)
    logp = sequence_logprob(completion_logits(model, ctx, ro.tokens), ro.tokens, ro.mask)       # (N,)
    loss = policy_gradient_loss(negative_advantages(ro.reward.float()), logp)
    gnorm = _optimizer_step(model, opt, loss, cfg.grad_clip)
    tokens = 2 * ro.n * (ctx.shape[1] + ro.tokens.shape[1])                 # sample + policy
    return {"loss": loss.item(), "success": float(ro.reward.mean()), "grad_norm": gnorm,
            "groups_two_successes": groups_with_two_successes(ro, cfg.group_size)}, tokens


# ----------------------------------------------------------------------------- SDSD
def choose_demonstrations(ro, group_size: int, rng, logp=None, choice: str = "uniform", gamma: float = 1.0):
    """For each rollout, a correct sibling of its group (never itself) or −1.
    choice (theory.md §10, pcmi.demonstrations): "uniform" draws one of the other successes uniformly;
    "inverse_prob" draws it with probability ∝ π(y')^−γ (logp: the rollouts' log π, detached), so that
    in a large group D ∝ π(y'|r=1)·π(y')^−γ; "least_likely" takes the least likely other success
    (ties: the lower index).
    Returns (demo index (N,), n_only_success (masked lone successes), n_skipped_prompts)."""
    r = ro.reward.view(-1, group_size).cpu().numpy() > 0
    if choice != "uniform" and logp is None:
        raise PcmiInputError(f"demo_choice {choice} needs the rollouts' log-probabilities")
    lp = None if logp is None else np.asarray(logp, float).reshape(-1)
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
            if not len(cands):
                continue
            if choice == "uniform":
                pick = int(rng.choice(cands))
            else:
                lc = lp[p * group_size + cands]
                if choice == "least_likely":
                    pick = int(cands[np.argmin(lc)])
                else:
                    w = np.exp(-gamma * (lc - lc.min()))  # ∝ π^−γ, the largest weight 1
                    pick = int(rng.choice(cands, p=w / w.sum()))
            demo[p * group_size + g] = p * group_size + pick
    return demo, only, skipped


def teacher_contexts(world, ro, demo_idx):
    """"DEMO y'_i SEP BOS s t" for each rollout i, y'_i = rollout demo_idx[i]'s path; rows without a
    demonstration (−1) get a placeholder demonstration (they are masked out of the loss)."""
    demos = [completion_path(world, ro.prompt[j], ro.tokens[j], ro.mask[j]) if j >= 0
             else world.laws[int(ro.prompt[i])].paths[0]
             for i, j in enumerate(demo_idx)]
    return prompt_ids(world, ro.prompt.tolist(), demos, device=ro.tokens.device)


def stopped_elsewhere(world, ro) -> np.ndarray:
    """(N,) True where rollout i is a failure that stopped (its last own token STOP) at a node ≠ the target:
    the rollouts whose feedback is WrongEndpoint(their endpoint)."""
    stop = world.ids("STOP")
    last = ro.mask.long().sum(dim=1) - 1                                   # index of the terminal token
    ends_stop = ro.tokens.gather(1, last[:, None]).squeeze(1) == stop
    return (ends_stop & (ro.reward == 0)).cpu().numpy()


def choose_feedback(world, ro, group_size: int, rng):
    """For each rollout, a failure of its group that stopped at a node ≠ t (uniformly among them; it may
    be the rollout itself) whose endpoint w is the teacher's feedback WrongEndpoint(w), or −1.
    Returns (feedback rollout index (N,), n_skipped_no_feedback = groups without such a failure)."""
    bad = stopped_elsewhere(world, ro).reshape(-1, group_size)
    fb = np.full(bad.size, -1)
    skipped = 0
    for p in range(bad.shape[0]):
        cands = np.flatnonzero(bad[p])
        if not len(cands):
            skipped += 1
            continue
        for g in range(group_size):
            fb[p * group_size + g] = p * group_size + int(rng.choice(cands))
    return fb, skipped


def feedback_endpoint(world, ro, j: int):
    """The node rollout j stopped at (the w of its WrongEndpoint(w) feedback)."""
    return completion_path(world, ro.prompt[j], ro.tokens[j], ro.mask[j])[-1]


def feedback_contexts(world, ro, fb_idx):
    """"FB w_i SEP BOS s t" for each rollout i, w_i = the endpoint of rollout fb_idx[i]; rows without
    feedback (−1) get a placeholder w = s (they are masked out of the loss)."""
    v = world.vocab
    rows = []
    for i, j in enumerate(fb_idx):
        task = world.laws[int(ro.prompt[i])].task
        w = feedback_endpoint(world, ro, int(j)) if j >= 0 else task.source
        rows.append(v.encode_prompt(task.source, task.target, feedback=w))
    return torch.tensor(rows, dtype=torch.long, device=ro.tokens.device)


def sdsd_loss(model, teacher, world, ro, demo_idx, mode, teacher_ctx=None):
    """mean_i w_i · mean_t ℓ_t over rollout i's tokens, w_i = 1 iff i has a demonstration, ℓ_t the
    per-token loss of `mode` (a `pcmi.objectives.LossMode`, or a number α for full-vocabulary D_α):
    `per_token_loss`, or for mode sequence the reward-to-go surrogate. The teacher runs without
    gradient (stop-gradient, also when it is the model). teacher_ctx: the teacher's contexts (default
    `teacher_contexts`, the demonstrations demo_idx; feedback SDSD passes `feedback_contexts`)."""
    mode = LossMode("full", mode) if isinstance(mode, (int, float)) and not isinstance(mode, bool) else loss_mode(mode)
    has_demo = torch.as_tensor(np.asarray(demo_idx) >= 0, device=ro.tokens.device)
    student_ctx = prompt_ids(world, ro.prompt.tolist(), device=ro.tokens.device)
    if teacher_ctx is None:
        teacher_ctx = teacher_contexts(world, ro, demo_idx)
    with torch.no_grad():
        t_logits = completion_logits(teacher, teacher_ctx, ro.tokens)      # (N, L+1, V)
    s_logits = completion_logits(model, student_ctx, ro.tokens)            # (N, L+1, V)
    if mode.kind == "sequence":
        per_tok = sequence_reward_to_go_loss(s_logits, t_logits.detach(), ro.tokens, ro.mask)  # (N, L+1)
    else:
        per_tok = per_token_loss(s_logits, t_logits.detach(), ro.tokens, mode)                # (N, L+1)
    loss = sequence_mean_then_batch_mean(per_tok, ro.mask, has_demo.float())
    return loss, {"demo_fraction": float(has_demo.float().mean()),
                  "ctx_len": student_ctx.shape[1] + teacher_ctx.shape[1]}


def blended_with_rl(sdsd, model, ref_model, world, ro, cfg):
    """(loss, extra log fields): the SDSD loss, or with cfg.rl_weight = λ > 0 the λ-blend
    λ·rl_loss + (1 − λ)·sdsd on the same rollouts (RL leash β against ref_model = π0)."""
    if cfg.rl_weight <= 0:
        return sdsd, {}
    if ref_model is None:
        raise PcmiInputError("TrainConfig.rl_weight > 0 (the λ-blend) needs the reference model π0")
    rl, st_rl = rl_loss(model, ref_model, world, ro, cfg)
    return cfg.rl_weight * rl + (1 - cfg.rl_weight) * sdsd, {"kl_ref": st_rl["kl_ref"]}


def sdsd_step(model, teacher, opt, world, cfg, rng, gen, valid, ref_model=None):
    """One self-distillation step (see module docstring); with cfg.rl_weight = λ > 0 the λ-blend
    λ·(RL loss against ref_model, leash β) + (1 − λ)·(SDSD loss) on the same rollouts."""
    model.eval()
    ro = sample_rollouts(model, world, _prompts(world, cfg, rng), cfg.group_size, gen, valid)
    model.train()
    if cfg.teacher_context == "feedback":
        return _feedback_sdsd_step(model, teacher, opt, world, cfg, rng, ro, ref_model)
    logp = None
    if cfg.demo_choice != "uniform":
        with torch.no_grad():
            ctx = prompt_ids(world, ro.prompt.tolist(), device=ro.tokens.device)
            logp = sequence_logprob(completion_logits(model, ctx, ro.tokens), ro.tokens, ro.mask).cpu().numpy()
    demo_idx, n_only, n_skipped = choose_demonstrations(ro, cfg.group_size, rng, logp, cfg.demo_choice, cfg.demo_gamma)
    loss, st = sdsd_loss(model, teacher, world, ro, demo_idx, cfg.loss())
    loss, extra = blended_with_rl(loss, model, ref_model, world, ro, cfg)
    gnorm = _optimizer_step(model, opt, loss, cfg.grad_clip)
    tokens = ro.n * (3 + 2 * ro.tokens.shape[1] + st["ctx_len"])
    return {"loss": loss.item(), "success": float(ro.reward.mean()), "grad_norm": gnorm,
            "masked_only_success": n_only, "skipped_prompts": n_skipped,
            "demo_fraction": st["demo_fraction"],
            "groups_two_successes": groups_with_two_successes(ro, cfg.group_size), **extra}, tokens


def _feedback_sdsd_step(model, teacher, opt, world, cfg, rng, ro, ref_model):
    """The feedback-conditioned SDSD step on the sampled rollouts `ro` (teacher context "FB w SEP BOS s t")."""
    fb_idx, n_skipped = choose_feedback(world, ro, cfg.group_size, rng)
    loss, st = sdsd_loss(model, teacher, world, ro, fb_idx, cfg.loss(), feedback_contexts(world, ro, fb_idx))
    loss, extra = blended_with_rl(loss, model, ref_model, world, ro, cfg)
    gnorm = _optimizer_step(model, opt, loss, cfg.grad_clip)
    tokens = ro.n * (3 + 2 * ro.tokens.shape[1] + st["ctx_len"])
    off = sum(feedback_endpoint(world, ro, int(j)) not in world.laws[int(ro.prompt[i])].wrong_targets
              for i, j in enumerate(fb_idx) if j >= 0)
    return {"loss": loss.item(), "success": float(ro.reward.mean()), "grad_norm": gnorm,
            "skipped_no_feedback": n_skipped, "feedback_fraction": st["demo_fraction"],
            "feedback_not_wrong_target": int(off),
            "groups_two_successes": groups_with_two_successes(ro, cfg.group_size), **extra}, tokens


@torch.no_grad()
def ema_update(teacher, model, rate: float) -> None:
    """θ_T ← (1 − rate)·θ_T + rate·θ  (rate = the weight of the student, theory.md §9)."""
    for pt, p in zip(teacher.parameters(), model.parameters()):
        pt.mul_(1 - rate).add_(p, alpha=rate)
