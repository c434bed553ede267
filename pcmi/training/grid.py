"""`pcmi train --grid NAME`: a documented grid of trainer switch settings, each trained from one
shared pretrained checkpoint per seed, evaluated exactly and compared with its own prediction.

Per seed the network is pretrained once (checkpoint `CKPT/seed{s}/pretrain.pt`); every setting
post-trains a copy of it. Before any post-training the pretrained model alone gives, per prompt
(exact enumeration of its base policy π0 and its in-context teacher T0):

    own prediction    SDSD, frozen teacher: the certified on-policy fixed point of the setting's loss
                      mode (`pcmi.flows.on_policy_fixed_point`); live / EMA teacher: the same frozen-
                      teacher prediction (the network's teacher cannot be rebuilt from a policy);
                      RL: π0·exp(r/β) with the setting's β; the null baseline: none
    one-round         π_tok = sdsd_token_optimum with D = π0(·|r = 1), T = T0 (full α = 1, one round)
    RL's optimum      π0·exp(r/β), β = the config's (0.1)

Per (setting, seed, prompt) — a *unit* — the trained policy is enumerated and the summary keeps
TV to each of those, KL(π‖π0), success, strategy-mass entropy, OOD success (the base's dominant
route blocked) and the predicted values of the last three, so intervals over units
(`pcmi.training.intervals`) and rank correlations can be computed from the files alone.

GRPO β-matched (setting `grpo_matched`): β* solves mean_x KL(π_RL(β)‖π0) = mean_x KL(π_SD‖π0) by
brentq on log β, where π_RL(β) = π0·exp(r/β) is the exact RL optimum and π_SD the *trained* policy
of the setting `sdsd_full_a1` of the same seed. KL(π_RL(β)‖π0) falls from −log p0 (β → 0) to 0,
so when SDSD is further from π0 than −mean log p0 no β matches: then β* = BETA_MIN and the summary
says `feasible: false`.

Live / EMA teachers: every `probe_every` steps the teacher network's in-context teacher T_c is
enumerated; the summary keeps its TV to the data's Bayesian teacher (`evaluate.teacher_fit`), its
success with a correct demonstration, and its copy strength κ = Σ_{y'} D(y')·(T(y'|y') − π_T(y'))
(D = the data law on correct rollouts, π_T = the same network without a demonstration; 0 for a
teacher that ignores the demonstration, 1 − π_T(y') for a pure copier). The measured teachers are
then fed into the exact dynamics: π̂_0 = π0 and, for segment c (steps s_c … s_{c+1}) with T_c
held, π̂_{c+1} = the token-level on-policy rounds π ← sdsd_token_optimum(D = π(·|r = 1), T_c)
started at π̂_c — run to their certified fixed point (`segment_fixed_point`, the damped rounds of
pcmi.flows) or one plain round per segment (`segment_one_round`) — and compared with the trained
trajectory at the same checkpoints.

Feedback-conditioned SDSD (setting `sdsd_feedback`, grid `feedback`, issue 12): the teacher context is a
failed sibling's feedback "FB t' SEP" (pretraining with p_feedback > 0). With a frozen teacher and one
feedback class per prompt (one wrong target t'), D is a point mass on that feedback and the own prediction is
the token-level optimum with the one row T_θ(·|FB t') (`evaluate.feedback_fixed_point`: T_θ(·|FB t') itself).
Beside it the ideal feedback teacher's prediction π0(· | not stopping at t') (`evaluate.ideal_feedback_prediction`,
P10: π0's ratios among correct rollouts kept); every unit of a feedback grid also keeps the ratio distortion
(pcmi.metrics.ratio_distortion) of the trained policy against π0 among correct rollouts.

Results are resumable: `OUT/runs/{setting}/seed{s}.json` is written when a setting finishes and a
rerun skips it; a killed setting resumes from its stage checkpoint.
"""
from __future__ import annotations

import copy
import json
import os
import platform
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import brentq

import pcmi
from graphworld import concept_edges, dominant_route
from pcmi.atomic import atomic_write_json
from pcmi.errors import PcmiInputError
from pcmi.metrics import ood_success, ratio_distortion, strategy_mass_entropy, success
from pcmi.teachers import KernelTeacher

from .config import get_config
from .data import make_world
from .evaluate import (data_law_on, enumerate_model, feedback_fixed_point, feedback_teacher, ideal_feedback_prediction,
                       model_teacher, sdsd_onpolicy_fixed_point, teacher_fit)
from .intervals import interval, spearman_interval
from .train import new_model, run_stage

BETA_MIN, BETA_MAX = 1e-3, 1e3
#: rounds of the exact fixed-point iteration at the strict tolerance (forward KL needs ~10³ on `small`)
FP_ROUNDS = 5000
#: tolerances tried in turn for the certificate of a predicted fixed point (the first reached is recorded):
#: teacher top-k stalls near ‖G‖ ~ 1e-6 on a few prompts, forward KL needs > 5000 rounds on a few
FP_TOLS = (1e-10, 1e-4, 1e-3)
#: rounds allowed at each of FP_TOLS
FP_ROUNDS_AT = (FP_ROUNDS, 20000, 20000)
#: the frozen-teacher acceptance bound on the median over units of TV(trained, own prediction)
ACCEPT_TV = 0.05


@dataclass(frozen=True)
class Setting:
    """One switch setting: the stage trained (sdsd | rl | negative) and the TrainConfig fields it sets."""
    name: str
    method: str
    overrides: tuple = ()
    doc: str = ""
    beta_matched: bool = False

    @property
    def teacher(self) -> str:
        return dict(self.overrides).get("teacher", "frozen")

    @property
    def feedback(self) -> bool:
        """The teacher reads a failed sibling's feedback ("FB w SEP"), not a demonstration."""
        return dict(self.overrides).get("teacher_context", "demo") == "feedback"

    @property
    def frozen_sdsd(self) -> bool:
        return self.method == "sdsd" and self.teacher == "frozen"


#: p_feedback of the feedback grids' data law (a feedback setting carries it so that its overrides validate on
#: any config; `run_setting` keeps the grid's own p_feedback, which must be > 0: the pretrained model read feedback)
FEEDBACK_P = 0.3


def _sd(name, doc, **kw):
    return Setting(name, "sdsd", tuple(sorted(kw.items())), doc)


SETTINGS = [
    _sd("sdsd_full_a1", "full vocabulary, reverse KL (α = 1), frozen teacher", loss_mode="full", alpha=1.0),
    _sd("sdsd_full_a0.5", "full vocabulary, JS α = 0.5 (the verl default), frozen teacher", loss_mode="full", alpha=0.5),
    _sd("sdsd_full_a0", "full vocabulary, forward KL (α = 0), frozen teacher", loss_mode="full", alpha=0.0),
    _sd("sdsd_topk2_student", "student's top-2 tokens + tail bucket, α = 1, frozen teacher", loss_mode="topk",
        distillation_topk=2, topk_of="student", distillation_add_tail=True),
    _sd("sdsd_topk2_teacher", "teacher's top-2 tokens + tail bucket, α = 1, frozen teacher", loss_mode="topk",
        distillation_topk=2, topk_of="teacher", distillation_add_tail=True),
    _sd("sdsd_sampled", "sampled token only, (log S − log T)·∇log S, frozen teacher", loss_mode="sampled"),
    _sd("sdsd_sampled_baseline", "sampled token with the vOPD baseline, frozen teacher", loss_mode="sampled-baseline"),
    _sd("sdsd_live", "full α = 1, live teacher (the current network)", loss_mode="full", teacher="live"),
    _sd("sdsd_ema", "full α = 1, EMA teacher τ = 0.05 per step from the pretrained model", loss_mode="full",
        teacher="ema", ema_rate=0.05),
    # remedies for the collapse (issue 11; docs/remedies.md): the demonstration law and the λ-blend
    _sd("sdsd_inverse_prob", "full α = 1, frozen teacher, demonstration ∝ π(y')^−1 among the other successes "
        "(the D* proxy inverse_prob, γ = 1)", loss_mode="full", demo_choice="inverse_prob", demo_gamma=1.0),
    _sd("sdsd_inverse_prob_0.75", "as sdsd_inverse_prob with γ = 0.75", loss_mode="full", demo_choice="inverse_prob",
        demo_gamma=0.75),
    _sd("sdsd_least_likely", "full α = 1, frozen teacher, the group's least likely other success as "
        "demonstration (the D* proxy least_likely; its exact rounds 2-cycle, so it has no certified prediction)",
        loss_mode="full", demo_choice="least_likely"),
    _sd("blend_0.95", "λ-blend λ = 0.95: 0.95·RL loss (β = 0.1) + 0.05·SDSD reward-to-go (sequence) loss, frozen "
        "teacher", loss_mode="sequence", rl_weight=0.95),
    _sd("blend_0.98", "λ-blend λ = 0.98: 0.98·RL loss (β = 0.1) + 0.02·SDSD reward-to-go (sequence) loss, frozen "
        "teacher", loss_mode="sequence", rl_weight=0.98),
    # feedback-conditioned SDSD (issue 12): needs a pretrained model that read feedback (p_feedback > 0)
    _sd("sdsd_feedback", "full vocabulary, reverse KL (α = 1), frozen teacher with a failed sibling's feedback "
        "WrongEndpoint(w) in context (\"FB w SEP\")", loss_mode="full", alpha=1.0, teacher_context="feedback",
        p_feedback=FEEDBACK_P),
    Setting("rl", "rl", (), "GRPO-style RL, KL leash β = 0.1 in the reward (Dr. GRPO advantages)"),
    Setting("negative", "negative", (), "null baseline: fixed advantage −1 on failures, 0 on successes"),
    Setting("grpo_matched", "rl", (), "RL with β chosen so that the exact RL optimum's KL to π0 matches "
            "the trained sdsd_full_a1's", beta_matched=True),
]
BY_NAME = {s.name: s for s in SETTINGS}
#: the setting whose trained KL to π0 the β-matched GRPO targets
MATCH_REFERENCE = "sdsd_full_a1"


@dataclass(frozen=True)
class Grid:
    name: str
    config: str
    seeds: tuple
    settings: tuple
    probe_every: int
    overrides: tuple = ()
    doc: str = ""

    def cfg(self):
        return get_config(self.config).replace(**dict(self.overrides))


#: settings outside the default grid; feedback SDSD is a remedy candidate too (P10: a filtering teacher keeps π0's
#: ratios like RL), so issue 11's criterion is reported for it in the feedback grid
REMEDY_SETTINGS = ("sdsd_inverse_prob", "sdsd_inverse_prob_0.75", "sdsd_least_likely", "blend_0.95", "blend_0.98",
                   "sdsd_feedback")
#: the remedies trained in the grid "remedies" (least_likely is left out: no prediction to compare with, and its
#: uncertified rounds cost minutes per prompt)
TRAINED_REMEDIES = ("sdsd_inverse_prob", "sdsd_inverse_prob_0.75", "blend_0.95", "blend_0.98")
GRIDS = {
    "small": Grid("small", "small", (0, 1, 2, 3, 4), tuple(s.name for s in SETTINGS
                                                        if s.name not in REMEDY_SETTINGS),
                  probe_every=10,
                  doc="the default: config small (8 prompts, 150 post-training steps), seeds 0–4, every setting"),
    "remedies": Grid("remedies", "small", (0, 1, 2, 3, 4), ("sdsd_full_a1", "rl", *TRAINED_REMEDIES), probe_every=10,
                     doc="issue 11: SDSD, RL and the remedies (D* proxies, λ-blends) on config small, seeds 0–4"),
    "tiny": Grid("tiny", "tiny", (0, 1), ("sdsd_full_a1", "sdsd_ema", "rl", "negative", "grpo_matched"),
                 probe_every=5, overrides=(("pretrain_steps", 100), ("post_steps", 10), ("group_size", 4)),
                 doc="for tests: config tiny at 100 + 10 steps, seeds 0–1, five settings (seconds; numbers mean nothing)"),
    "feedback": Grid("feedback", "small", (0, 1, 2, 3, 4), ("sdsd_full_a1", "rl", "sdsd_feedback"), probe_every=10,
                     overrides=(("p_feedback", FEEDBACK_P),),
                     doc="issue 12: demonstration SDSD, RL and feedback-conditioned SDSD on config small pretrained with "
                         "p_feedback = 0.3 (another data law and vocabulary than the other grids), seeds 0–4"),
    "feedback_tiny": Grid("feedback_tiny", "tiny", (0,), ("sdsd_full_a1", "rl", "sdsd_feedback"), probe_every=5,
                          overrides=(("p_feedback", FEEDBACK_P), ("pretrain_steps", 100), ("post_steps", 10),
                                     ("group_size", 4)),
                          doc="for tests: the feedback grid on config tiny at 100 + 10 steps, seed 0 (seconds)"),
}


def get_grid(name) -> Grid:
    if isinstance(name, Grid):
        return name
    if name not in GRIDS:
        raise PcmiInputError(f"unknown grid {name!r}; expected one of {', '.join(GRIDS)}")
    return GRIDS[name]


# ----------------------------------------------------------------------------- exact pieces
def copy_strength(log_T_rows, demos, log_wts, log_pi_T) -> float:
    """κ = Σ_j D(y'_j)·(T(y'_j | y'_j) − π_T(y'_j)); rows[i] is T(·|y'_{demos[i]}), D = exp(log_wts)."""
    rows = np.asarray(log_T_rows, float)
    demos = np.asarray(demos)
    t_self = np.exp(rows[np.arange(len(demos)), demos])
    return float(np.exp(log_wts) @ (t_self - np.exp(np.asarray(log_pi_T)[demos])))


def teacher_success(log_T_rows, reward, log_wts) -> float:
    """Σ_j D(y'_j)·Σ_y T(y|y'_j)·r(y): the teacher's success with a correct demonstration."""
    return float(np.exp(log_wts) @ (np.exp(np.asarray(log_T_rows, float)) @ np.asarray(reward, float)))


def token_round(log_pi, reward, tree, log_T) -> np.ndarray:
    """One on-policy round with the teacher held: sdsd_token_optimum with D = π(·|r = 1), T = log_T."""
    inst = pcmi.Instance(log_pi, reward, KernelTeacher(log_T), pcmi.demos_from_successes(log_pi, reward), tree=tree)
    return pcmi.sdsd_token_optimum(inst)


def segment_fixed_point(log_pi, reward, tree, log_T) -> np.ndarray:
    """The certified frozen-teacher on-policy fixed point of full α = 1 with the teacher log_T held,
    reached from π (`pcmi.flows.on_policy_fixed_point`: λ = 1 rounds are the token-level optimum,
    damped when they 2-cycle), at the first tolerance of FP_TOLS reached."""
    from pcmi.flows import FixedPointError, on_policy_fixed_point
    from pcmi.objectives import LossMode
    from pcmi.tabular import TabularPolicy
    inst = pcmi.Instance(log_pi, reward, KernelTeacher(log_T), pcmi.demos_from_successes(log_pi, reward), tree=tree)
    start = TabularPolicy.from_log_probs(inst.tree, log_pi)
    for tol, rounds in zip(FP_TOLS, FP_ROUNDS_AT):
        try:
            return on_policy_fixed_point(inst, LossMode("full"), "frozen", tol=tol, max_rounds=rounds,
                                         start=start).log_pi
        except FixedPointError:
            if tol == FP_TOLS[-1]:
                raise
    raise AssertionError("unreachable")


def measured_teacher_dynamics(log_pi0, reward, tree, teachers, rounds: int | None = None) -> list[np.ndarray]:
    """π̂_0 = π0; π̂_{c+1} from π̂_c with teachers[c] held: `rounds` plain token-level rounds
    (`token_round`), or (None) the segment's certified fixed point (`segment_fixed_point`; where none is
    certified, 100 plain rounds).
    Returns [π̂_0, …, π̂_C]."""
    out = [np.asarray(log_pi0, float)]
    for log_T in teachers:
        lp = out[-1]
        if rounds is None:
            from pcmi.flows import FixedPointError
            try:
                lp = segment_fixed_point(lp, reward, tree, log_T)
            except FixedPointError:   # no certificate at any tolerance: 100 plain rounds instead
                for _ in range(100):
                    lp = token_round(lp, reward, tree, log_T)
        else:
            for _ in range(rounds):
                lp = token_round(lp, reward, tree, log_T)
        out.append(lp)
    return out


def matched_beta(log_bases, rewards, target_kl: float) -> dict:
    """β* with mean_x KL(π0·exp(r/β*) ‖ π0) = target_kl (brentq on log β in [BETA_MIN, BETA_MAX]);
    infeasible targets (above the β = BETA_MIN value) give β* = BETA_MIN, feasible False."""
    if not np.isfinite(target_kl) or target_kl < 0:
        raise PcmiInputError(f"the KL to match must be a finite number >= 0, got {target_kl!r}")

    def kl_at(log_beta):
        b = float(np.exp(log_beta))
        return float(np.mean([pcmi.kl(pcmi.rl_optimum(lb, r, b), lb) for lb, r in zip(log_bases, rewards)]))

    lo, hi = np.log(BETA_MIN), np.log(BETA_MAX)
    kl_lo, kl_hi = kl_at(lo), kl_at(hi)
    if target_kl >= kl_lo:
        return {"beta": BETA_MIN, "feasible": False, "target_kl": target_kl, "kl_at_beta": kl_lo, "kl_sup": kl_lo}
    if target_kl <= kl_hi:
        return {"beta": BETA_MAX, "feasible": False, "target_kl": target_kl, "kl_at_beta": kl_hi, "kl_sup": kl_lo}
    lb = brentq(lambda x: kl_at(x) - target_kl, lo, hi, xtol=1e-12)
    return {"beta": float(np.exp(lb)), "feasible": True, "target_kl": target_kl, "kl_at_beta": kl_at(lb),
            "kl_sup": kl_lo}


# ----------------------------------------------------------------------------- per seed: π0, T0, predictions
@dataclass
class PromptContext:
    rs: object                 # base enumeration (graphworld Rollouts): paths, log_prob, reward, route, tree
    teacher: KernelTeacher     # T0
    inst: pcmi.Instance
    blocked: np.ndarray
    demos: np.ndarray          # correct demonstrations of the data law (indices)
    log_wts: np.ndarray        # their normalized data weights
    predictions: dict = field(default_factory=dict)   # name -> log π
    fp_tol: dict = field(default_factory=dict)        # fixed-point key -> the tolerance it was certified at
    fb_teacher: dict = field(default_factory=dict)    # feedback grids: wrong target w -> log T_θ0(·|FB w)
    ideal_fb: np.ndarray | None = None                # feedback grids: log π0(· | not stopping at t')


def prompt_context(base, world, i, dev, feedback: bool = False) -> PromptContext:
    """π0, T0 and the data's demonstrations of prompt i; with feedback also T_θ0(·|FB w) for each wrong
    target w and the ideal feedback teacher's prediction (only the grids that train a feedback setting)."""
    rs = enumerate_model(base, world, i, device=dev)
    T0 = model_teacher(base, world, i, rs, device=dev)
    inst = pcmi.Instance(rs.log_prob, rs.reward, T0, pcmi.demos_from_successes(rs.log_prob, rs.reward),
                         route=rs.route, tree=rs.tree)
    blocked = rs.uses_edges(concept_edges(world.graph, dominant_route(rs)))
    log_data = data_law_on(world, i, rs)[0]
    demos = np.flatnonzero(np.isfinite(log_data) & (rs.reward == 1))
    w = log_data[demos]
    ctx = PromptContext(rs, T0, inst, blocked, demos, w - np.logaddexp.reduce(w))
    if feedback:
        ctx.fb_teacher = {t: feedback_teacher(base, world, i, rs, t, device=dev) for t in world.laws[i].wrong_targets}
        ctx.ideal_fb = ideal_feedback_prediction(base, world, i, rs, device=dev)
    return ctx


def prediction_key(setting: Setting, cfg) -> str:
    """Which prediction is the setting's own: fp:<mode label> (SDSD), rl:<β> (RL), None (null baseline);
    remedies: blend:<λ>:<β> (the λ-blend's frozen-teacher on-policy fixed point), fp:<mode>|<demo law>:<γ>
    (the mode's fixed point with the demonstration law of the current policy); feedback SDSD: feedback:<mode>
    (the token-level optimum with the one feedback teacher row T_θ0(·|FB t'))."""
    if setting.method == "sdsd" and cfg.teacher_context == "feedback":
        return "feedback:" + cfg.loss().label
    if setting.method == "sdsd" and cfg.rl_weight > 0:
        return f"blend:{cfg.rl_weight!r}:{cfg.beta!r}"
    if setting.method == "sdsd" and cfg.demo_choice != "uniform":
        return f"fp:{cfg.loss().label}|{cfg.demo_choice}:{cfg.demo_gamma!r}"
    if setting.method == "sdsd":
        return "fp:" + cfg.loss().label
    if setting.method == "rl":
        return f"rl:{cfg.beta!r}"
    return None


def predict(ctx: PromptContext, key: str, cfg) -> np.ndarray | None:
    """The prediction `key` of the prompt (cached); None for a fixed point no tolerance of FP_TOLS
    certifies (the unit then has no own prediction and is counted as `uncertified_prediction`)."""
    from pcmi.flows import FixedPointError
    if key not in ctx.predictions:
        if key.startswith("blend:"):
            ctx.predictions[key], ctx.fp_tol[key] = blend_fixed_point(ctx.inst, cfg.rl_weight, cfg.beta)
        elif key.startswith("fp:"):
            try:
                ctx.predictions[key], ctx.fp_tol[key] = certified_fixed_point(ctx.inst, cfg.loss(), demo_law_of(cfg))
            except FixedPointError as exc:
                ctx.predictions[key], ctx.fp_tol[key] = None, str(exc)
        elif key.startswith("feedback:"):
            if len(ctx.fb_teacher) != 1:   # several feedback classes: D over them depends on the policy's failures
                ctx.predictions[key], ctx.fp_tol[key] = None, (f"{len(ctx.fb_teacher)} feedback classes (wrong "
                                                               "targets): no point-mass prediction")
            else:
                ctx.predictions[key] = feedback_fixed_point(next(iter(ctx.fb_teacher.values())), ctx.rs)
        elif key.startswith("rl:"):
            ctx.predictions[key] = pcmi.rl_optimum(ctx.rs.log_prob, ctx.rs.reward, cfg.beta)
        elif key == "one_round":
            ctx.predictions[key] = pcmi.sdsd_token_optimum(ctx.inst)
        else:
            raise KeyError(key)
    return ctx.predictions[key]


def fixed_point_from(log_pi, ctx: PromptContext, cfg, log_own) -> dict:
    """Where the exact frozen-teacher rounds of the mode go when started at the trained policy: TV of
    that fixed point to the trained policy (small: training sits at a fixed point) and to the own
    prediction reached from π0 (small: the same fixed point; large with the first small: another one).
    None where the rounds certify no fixed point within FP_ROUNDS at any tolerance of FP_TOLS."""
    from pcmi.flows import FixedPointError, on_policy_fixed_point
    from pcmi.tabular import TabularPolicy
    for tol, rounds in zip(FP_TOLS, FP_ROUNDS_AT):
        try:
            fp = on_policy_fixed_point(ctx.inst, cfg.loss(), "frozen", tol=tol, max_rounds=rounds,
                                       start=TabularPolicy.from_log_probs(ctx.rs.tree, log_pi), demos=demo_law_of(cfg))
        except FixedPointError:
            continue
        return {"tv_to_trained": pcmi.total_variation(fp.log_pi, log_pi),
                "tv_to_own": pcmi.total_variation(fp.log_pi, log_own), "rounds": fp.rounds, "tol": tol}
    return None


def demo_law_of(cfg):
    """The trainer's demonstration choice as a law of the current policy, demos(log π, r) -> log D
    (pcmi.demonstrations.proxy_demos: inverse_prob D ∝ π(·|r=1)·π^−γ, the large-group limit of drawing
    ∝ π^−γ; least_likely the exact law for groups of cfg.group_size); None for uniform (D = π(·|r=1))."""
    if cfg.demo_choice == "uniform":
        return None
    from types import SimpleNamespace
    from pcmi.demonstrations import proxy_demos

    def law(log_pi, reward):
        return proxy_demos(SimpleNamespace(log_base=log_pi, reward=reward, n=len(log_pi)), cfg.demo_choice,
                           cfg.demo_gamma, cfg.group_size)
    return law


def blend_fixed_point(inst, lam: float, beta: float, tol: float = 1e-10, max_rounds: int = FP_ROUNDS):
    """(log π*, tol or the reason): the frozen-teacher on-policy fixed point of the λ-blend,
    π* = blend_optimum(D = π*(·|r=1)) with π0's teacher and reference (pcmi.remedies.blend_optimum), by
    plain rounds; (None, reason) when TV between rounds stays above tol."""
    from pcmi.remedies import blend_optimum
    lp = inst.log_base
    for _ in range(max_rounds):
        new = blend_optimum(inst.with_demos(pcmi.demos_from_successes(lp, inst.reward)), lam, beta=beta,
                            log_ref=inst.log_base)
        tv = pcmi.total_variation(new, lp)
        lp = new
        if tv <= tol:
            return lp, tol
    return None, f"the λ-blend rounds did not settle in {max_rounds} rounds (TV {tv:.3g})"


def certified_fixed_point(inst, mode, demos=None) -> tuple[np.ndarray, float]:
    """(log π*, tol): the frozen-teacher on-policy fixed point certified at the first tolerance of
    FP_TOLS that the rounds reach within FP_ROUNDS (teacher top-k stalls near ‖G‖ ~ 1e-6 on a few
    prompts); FixedPointError if none. demos: a demonstration law of the current policy (`demo_law_of`)."""
    from pcmi.flows import FixedPointError, on_policy_fixed_point
    for tol, rounds in zip(FP_TOLS, FP_ROUNDS_AT):
        try:
            if demos is not None:
                return on_policy_fixed_point(inst, mode, "frozen", tol=tol, max_rounds=rounds, demos=demos).log_pi, tol
            return sdsd_onpolicy_fixed_point(inst, rounds=rounds, tol=tol, mode=mode), tol
        except FixedPointError:
            if tol == FP_TOLS[-1]:
                raise
    raise AssertionError("unreachable")


def outcome(log_pi, ctx: PromptContext) -> dict:
    """success, strategy-mass entropy, OOD success of π on the prompt."""
    r = ctx.rs.reward
    return {"success": success(log_pi, r), "strategy_entropy": strategy_mass_entropy(log_pi, r, ctx.rs.route),
            "ood_success": ood_success(log_pi, r, ctx.blocked)}


# ----------------------------------------------------------------------------- one setting
def _probe_fn(setting, world, ctxs, own, dev):
    """probe(model, teacher): the student's exact outcome and TV to its own prediction per prompt; for
    live / EMA the teacher network's in-context teacher (rows kept for the measured-teacher dynamics)."""
    def probe(model, teacher):
        rows = []
        for i, c in enumerate(ctxs):
            lp = enumerate_model(model, world, i, device=dev).log_prob
            row = outcome(lp, c)
            if own[i] is not None:
                row["tv_own"] = pcmi.total_variation(lp, own[i])
            if setting.method == "sdsd" and setting.teacher != "frozen":
                rt = enumerate_model(teacher, world, i, device=dev)
                T = model_teacher(teacher, world, i, rt, device=dev)
                fit = teacher_fit(T, world, i, c.rs)
                ok = np.flatnonzero(c.rs.reward == 1)
                row.update(teacher_tv=fit["teacher_tv"],
                           teacher_success=teacher_success(T.log_T[c.demos], c.rs.reward, c.log_wts),
                           copy_strength=copy_strength(T.log_T[c.demos], c.demos, c.log_wts, rt.log_prob),
                           teacher_rows=T.log_T[ok].tolist())
            rows.append(row)
        return {"prompts": rows}
    return probe


def _teacher_matrix(rows_ok, ctx) -> np.ndarray:
    """The full |Y|×|Y| log-teacher from its correct rows (other rows: π0's, never used by D)."""
    T = np.tile(ctx.rs.log_prob, (len(ctx.rs.log_prob), 1))
    T[np.flatnonzero(ctx.rs.reward == 1)] = np.asarray(rows_ok, float)
    return T


def dynamics_vs_training(probes, ctxs) -> list[dict]:
    """Per prompt: the trained trajectory at the probes beside the measured-teacher dynamics."""
    out = []
    for i, c in enumerate(ctxs):
        teachers = [_teacher_matrix(p["prompts"][i]["teacher_rows"], c) for p in probes[:-1]]
        traj = {}
        for name, rounds in (("segment_fixed_point", None), ("segment_one_round", 1)):
            pis = measured_teacher_dynamics(c.rs.log_prob, c.rs.reward, c.rs.tree, teachers, rounds=rounds)
            traj[name] = [outcome(lp, c) for lp in pis]
        out.append(traj)
    return out


def _slim_history(history) -> dict:
    keys = [k for k in ("success", "loss", "groups_two_successes", "kl_ref", "skipped_prompts", "skipped_no_feedback")
            if k in history[0]]
    return {"step": [r["step"] for r in history], **{k: [round(float(r[k]), 6) for r in history] for k in keys}}


def run_setting(setting: Setting, grid: Grid, cfg, world, base, ctxs, seed: int, ckpt_dir: str, dev,
                beta_info=None, log=None) -> dict:
    """Post-train one setting from the pretrained `base`, evaluate exactly; the result dict."""
    over = dict(setting.overrides)
    if setting.beta_matched:
        over["beta"] = beta_info["beta"]
    if setting.feedback:   # the data law (and so p_feedback) is the grid's
        over["p_feedback"] = cfg.p_feedback
    cfg_s = cfg.replace(**over)
    key = prediction_key(setting, cfg_s)
    own = [predict(c, key, cfg_s) if key else None for c in ctxs]
    for c in ctxs:
        predict(c, "one_round", cfg), predict(c, f"rl:{cfg.beta!r}", cfg)
    torch.manual_seed(seed)
    model = copy.deepcopy(base)
    t0 = time.perf_counter()
    st = run_stage(setting.method, cfg_s, world, model, os.path.join(ckpt_dir, f"{setting.name}.pt"), seed, dev,
                   ref_model=base, progress=False, log=log, probe=_probe_fn(setting, world, ctxs, own, dev),
                   probe_every=grid.probe_every)
    total_s = time.perf_counter() - t0
    model.eval()
    units = []
    for i, c in enumerate(ctxs):
        lp = enumerate_model(model, world, i, device=dev).log_prob
        u = {"prompt": i, **outcome(lp, c), "kl_to_base": pcmi.kl(lp, c.rs.log_prob),
             "tv_one_round": pcmi.total_variation(lp, c.predictions["one_round"]),
             "tv_rl": pcmi.total_variation(lp, c.predictions[f"rl:{cfg.beta!r}"])}
        if own[i] is not None:
            u["tv_own"] = pcmi.total_variation(lp, own[i])
            u["kl_own"] = pcmi.kl(lp, own[i])
            u["predicted"] = outcome(own[i], c)
            if key in c.fp_tol:
                u["fp_tol"] = c.fp_tol[key]
            if c.ideal_fb is not None:
                u["predicted_ratio_distortion"] = ratio_distortion(own[i], c.rs.log_prob, c.rs.reward)
            if setting.frozen_sdsd and not setting.feedback and cfg_s.rl_weight == 0:
                u["fp_from_trained"] = fixed_point_from(lp, c, cfg_s, own[i])
        elif key is not None:
            u["uncertified_prediction"] = c.fp_tol.get(key, "no prediction")
        if c.ideal_fb is not None:   # feedback grids: P10's quantities beside every setting
            u["ratio_distortion"] = ratio_distortion(lp, c.rs.log_prob, c.rs.reward)
            u["tv_ideal_feedback"] = pcmi.total_variation(lp, c.ideal_fb)
            u["ideal_feedback"] = {**outcome(c.ideal_fb, c),
                                   "ratio_distortion": ratio_distortion(c.ideal_fb, c.rs.log_prob, c.rs.reward)}
        units.append(u)
    t_enum = time.perf_counter()
    enumerate_model(model, world, 0, device=dev)
    enum_s = time.perf_counter() - t_enum
    probes = st.get("probes", [])
    res = {"setting": setting.name, "method": setting.method, "doc": setting.doc, "seed": seed,
           "grid": grid.name, "config": cfg_s.to_dict(), "loss_mode": cfg_s.loss().label if setting.method == "sdsd"
           else None, "teacher": setting.teacher if setting.method == "sdsd" else None, "beta": cfg_s.beta,
           "prediction": key, "units": units,
           "train": {"steps": st["step"], "wall_s": st["wall_s"], "tokens": st["tokens"],
                     "steps_per_s": st["step"] / max(st["wall_s"], 1e-9),
                     "tokens_per_s": st["tokens"] / max(st["wall_s"], 1e-9), "total_s_with_probes": total_s,
                     "resumed_from": st.get("resumed_from"), "enumerate_one_prompt_s": enum_s},
           "history": _slim_history(st["history"]),
           "probes": [{"step": p["step"], "prompts": [{k: v for k, v in q.items() if k != "teacher_rows"}
                                                      for q in p["prompts"]]} for p in probes]}
    if setting.beta_matched:
        res["beta_match"] = beta_info
    if setting.method == "sdsd" and setting.teacher != "frozen" and probes:
        res["measured_teacher_dynamics"] = dynamics_vs_training(probes, ctxs)
    return res


# ----------------------------------------------------------------------------- the grid
def _result_path(out, name, seed):
    return os.path.join(out, "runs", name, f"seed{seed}.json")


def _write_json(path, obj, indent=None) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    atomic_write_json(path, obj, indent=indent)


def run_grid(grid="small", out="runs/grid", *, ckpt_dir=None, device="cpu", threads=None, log=print,
             settings=None, seeds=None) -> dict:
    """Train every (setting, seed) of the grid not yet finished in `out`, then write `out/grid.json`
    (`summarize`). ckpt_dir: where checkpoints go (default out/checkpoints; not meant for a commit)."""
    from .run import resolve_device
    g = get_grid(grid)
    cfg = g.cfg()
    if threads is not None:
        cfg = cfg.replace(threads=threads)
    names = list(settings or g.settings)
    for n in names:
        if n not in BY_NAME:
            raise PcmiInputError(f"unknown setting {n!r}; expected one of {', '.join(BY_NAME)}")
    fb_names = [n for n in names if BY_NAME[n].feedback]
    if fb_names and cfg.p_feedback == 0:
        raise PcmiInputError(f"{', '.join(fb_names)} needs a grid pretrained with p_feedback > 0 (grid feedback), "
                             f"not grid {g.name}")
    if "grpo_matched" in names and MATCH_REFERENCE not in names:
        raise PcmiInputError(f"grpo_matched needs {MATCH_REFERENCE} in the same grid (its KL is the target)")
    names.sort(key=lambda n: n == "grpo_matched")  # after its reference
    ckpt_dir = ckpt_dir or os.path.join(out, "checkpoints")
    dev = resolve_device(device)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    t_grid = time.perf_counter()
    try:
        world = make_world(cfg)
        for seed in (seeds if seeds is not None else g.seeds):
            todo = [n for n in names if not os.path.exists(_result_path(out, n, seed))]
            if not todo:
                log(f"grid {g.name} seed {seed}: all {len(names)} settings finished, skipping")
                continue
            sdir = os.path.join(ckpt_dir, f"seed{seed}")
            os.makedirs(sdir, exist_ok=True)
            torch.manual_seed(seed)
            base = new_model(cfg, world).to(dev)
            pre = run_stage("pretrain", cfg, world, base, os.path.join(sdir, "pretrain.pt"), seed, dev,
                            progress=False, log=log)
            base.eval()
            fb = any(BY_NAME[n].feedback for n in names)
            ctxs = [prompt_context(base, world, i, dev, feedback=fb) for i in range(len(world.laws))]
            _write_seed(out, seed, cfg, world, ctxs, pre)
            for n in names:
                path = _result_path(out, n, seed)
                if os.path.exists(path):
                    log(f"grid {g.name} seed {seed} {n}: finished earlier, skipping")
                    continue
                beta_info = None
                if BY_NAME[n].beta_matched:
                    with open(_result_path(out, MATCH_REFERENCE, seed)) as f:
                        ref = json.load(f)
                    beta_info = matched_beta([c.rs.log_prob for c in ctxs], [c.rs.reward for c in ctxs],
                                             float(np.mean([u["kl_to_base"] for u in ref["units"]])))
                t0 = time.perf_counter()
                res = run_setting(BY_NAME[n], g, cfg, world, base, ctxs, seed, sdir, dev, beta_info, log=None)
                res["threads"], res["torch"], res["platform"] = cfg.threads, torch.__version__, platform.platform()
                _write_json(path, res)
                tvs = [u["tv_own"] for u in res["units"] if "tv_own" in u]
                med = np.median(tvs) if tvs else float("nan")
                log(f"grid {g.name} seed {seed} {n}: {time.perf_counter() - t0:.1f} s, success "
                    f"{np.mean([u['success'] for u in res['units']]):.3f}, median TV to own prediction {med:.3f}")
    finally:
        torch.set_num_threads(old_threads)
    results = load_results(out, names, g.seeds)
    summary = summarize(g, results, load_seeds(out, g.seeds))
    if {"sdsd_full_a1", "rl"} <= set(results):  # issue 11's criterion for every remedy in the grid
        summary["remedy_criterion"] = {n: remedy_criterion(results, n) for n in names
                                       if n in REMEDY_SETTINGS and n in results}
    summary["wall_s_this_call"] = time.perf_counter() - t_grid
    _write_json(os.path.join(out, "grid.json"), summary, indent=1)
    return summary


def _write_seed(out, seed, cfg, world, ctxs, pre) -> None:
    """OUT/seeds/seed{s}.json: the pretrained model's exact π0, its teacher fit and the prediction keys."""
    path = os.path.join(out, "seeds", f"seed{seed}.json")
    rows = []
    for i, c in enumerate(ctxs):
        rows.append({"prompt": i, "n_rollouts": len(c.rs.log_prob), "base": outcome(c.rs.log_prob, c),
                     **teacher_fit(c.teacher, world, i, c.rs),
                     "teacher_success": teacher_success(c.teacher.log_T[c.demos], c.rs.reward, c.log_wts),
                     "copy_strength": copy_strength(c.teacher.log_T[c.demos], c.demos, c.log_wts, c.rs.log_prob)})
    _write_json(path, {"seed": seed, "pretrain": {"steps": pre["step"], "wall_s": pre["wall_s"],
                                                         "tokens_per_s": pre["tokens"] / max(pre["wall_s"], 1e-9)},
                             "prompts": rows}, indent=1)


def load_results(out, names, seeds) -> dict:
    res = {}
    for n in names:
        for s in seeds:
            p = _result_path(out, n, s)
            if os.path.exists(p):
                with open(p) as f:
                    res.setdefault(n, []).append(json.load(f))
    return res


def load_seeds(out, seeds) -> list[dict]:
    """The per-seed files OUT/seeds/seed{s}.json that exist (the pretrained model's exact base outcomes)."""
    res = []
    for s in seeds:
        p = os.path.join(out, "seeds", f"seed{s}.json")
        if os.path.exists(p):
            with open(p) as f:
                res.append(json.load(f))
    return res


UNIT_METRICS = ("tv_own", "tv_one_round", "tv_rl", "kl_to_base", "success", "strategy_entropy", "ood_success",
                "ratio_distortion", "tv_ideal_feedback", "predicted_ratio_distortion")   # the last three: feedback grids
OUTCOMES = ("success", "strategy_entropy", "ood_success")


def summarize(grid: Grid, results: dict, seeds: list | None = None) -> dict:
    """Per setting: median and mean [95 % bootstrap interval] over the (seed, prompt) units of every
    unit metric; the predicted outcomes and the Spearman ρ (interval) between predicted and trained
    outcomes over units; the frozen-teacher acceptance; timing; the β match; probe trajectories
    (median over units per step) and, for live / EMA, the measured-teacher dynamics."""
    out = {"grid": grid.name, "config": grid.config, "seeds": list(grid.seeds), "doc": grid.doc,
           "accept_tv": ACCEPT_TV, "interval": "95 % percentile bootstrap over (seed, prompt) units, "
           "scipy.stats.bootstrap, 2000 resamples, seed 20261201", "settings": {}}
    for name, runs in results.items():
        units = [u for r in runs for u in r["units"]]
        s = {"doc": runs[0]["doc"], "method": runs[0]["method"], "loss_mode": runs[0]["loss_mode"],
             "teacher": runs[0]["teacher"], "prediction": runs[0]["prediction"], "seeds": [r["seed"] for r in runs],
             "n_units": len(units), "beta": [r["beta"] for r in runs]}
        s["n_uncertified_prediction"] = sum("uncertified_prediction" in u for u in units)
        pu = [u for u in units if "predicted" in u]      # units with an own (certified) prediction
        for k in UNIT_METRICS:
            v = [u[k] for u in (pu if k == "tv_own" else units) if k in u]
            if v:
                s[k] = {"median": interval(v, "median"), "mean": interval(v, "mean")}
        if pu:
            s["predicted"] = {k: {"median": interval([u["predicted"][k] for u in pu], "median"),
                                  "mean": interval([u["predicted"][k] for u in pu], "mean")} for k in OUTCOMES}
            s["spearman"] = {k: spearman_interval([u["predicted"][k] for u in pu], [u[k] for u in pu])
                             for k in OUTCOMES}
        ideal = [u["ideal_feedback"] for u in units if "ideal_feedback" in u]
        if ideal:
            s["ideal_feedback"] = {k: {"median": interval([q[k] for q in ideal], "median"),
                                       "mean": interval([q[k] for q in ideal], "mean")}
                                   for k in (*OUTCOMES, "ratio_distortion")}
        if BY_NAME[name].frozen_sdsd and not BY_NAME[name].feedback and pu:
            med = s["tv_own"]["median"]
            s["accept"] = {"median_tv_own": med, "holds": bool(med[0] <= ACCEPT_TV), "n_units": len(pu),
                           "n_units_above": int(np.sum(np.array([u["tv_own"] for u in pu]) > ACCEPT_TV))}
            s["accept"]["diagnosis"] = diagnose(pu)
        s["groups_two_successes"] = interval([np.mean(r["history"]["groups_two_successes"]) for r in runs], "mean")
        s["steps_per_s"] = float(np.mean([r["train"]["steps_per_s"] for r in runs]))
        s["tokens_per_s"] = float(np.mean([r["train"]["tokens_per_s"] for r in runs]))
        s["train_wall_s"] = float(np.sum([r["train"]["total_s_with_probes"] for r in runs]))
        s["enumerate_one_prompt_s"] = float(np.median([r["train"]["enumerate_one_prompt_s"] for r in runs]))
        if any("beta_match" in r for r in runs):
            s["beta_match"] = [r["beta_match"] for r in runs]
        s["trajectory"] = _trajectory(runs)
        if "measured_teacher_dynamics" in runs[0]:
            s["measured_teacher_dynamics"] = _dynamics(runs)
        out["settings"][name] = s
    out["wall_s_training"] = float(sum(s["train_wall_s"] for s in out["settings"].values()))
    if seeds:
        rows = [q for sd in seeds for q in sd["prompts"]]
        out["base"] = {k: {"median": interval([q["base"][k] for q in rows], "median"),
                           "mean": interval([q["base"][k] for q in rows], "mean")} for k in OUTCOMES}
        for k in ("teacher_tv", "teacher_success", "copy_strength", "base_tv_to_data"):
            out["base"][k] = {"median": interval([q[k] for q in rows], "median"),
                              "mean": interval([q[k] for q in rows], "mean")}
        out["base"]["n_units"] = len(rows)
        out["wall_s_pretraining"] = float(sum(sd["pretrain"]["wall_s"] for sd in seeds))
    return out


def diagnose(units) -> dict:
    """Why a unit is off its own prediction (TV > ACCEPT_TV), from the exact rounds started at the
    trained policy (`fixed_point_from`): "other fixed point" (they stay within ACCEPT_TV of the trained
    policy, which sits at a fixed point other than the one reached from π0), "off a fixed point"
    (they move it by more and land within ACCEPT_TV of the own prediction: the trained policy is not at a
    fixed point, the prediction is the attractor; `median_rounds` says how weak its pull is), "moving
    elsewhere" (they move it and land elsewhere), "uncertified" (the rounds certify no fixed point)."""
    out = {"other fixed point": 0, "off a fixed point": 0, "moving elsewhere": 0, "uncertified": 0}
    tv_to_trained, rounds = [], []
    for u in units:
        f = u.get("fp_from_trained")
        if f is not None:
            tv_to_trained.append(f["tv_to_trained"])
            rounds.append(f["rounds"])
        if u["tv_own"] <= ACCEPT_TV:
            continue
        if f is None:
            out["uncertified"] += 1
        elif f["tv_to_trained"] <= ACCEPT_TV:
            out["other fixed point"] += 1
        elif f["tv_to_own"] <= ACCEPT_TV:
            out["off a fixed point"] += 1
        else:
            out["moving elsewhere"] += 1
    if tv_to_trained:
        out["median_tv_trained_to_its_fixed_point"] = interval(tv_to_trained, "median")
        out["median_rounds"] = float(np.median(rounds))
    return out


def _trajectory(runs) -> dict:
    """Median over units of each probed quantity, per probe step."""
    steps = [p["step"] for p in runs[0]["probes"]]
    keys = list(dict.fromkeys(k for r in runs for q in r["probes"][0]["prompts"] for k in q)) if steps else []
    out = {"step": steps}
    for k in keys:
        out[k] = [float(np.median([q[k] for r in runs for q in r["probes"][j]["prompts"] if k in q]))
                  for j in range(len(steps))]
    return out


#: success below which a unit counts as collapsed (the first probe step below it is its collapse step)
COLLAPSE_SUCCESS = 0.5


def collapse_step(steps, success_traj) -> float:
    """The first probe step with success < COLLAPSE_SUCCESS (inf: never)."""
    below = [s for s, v in zip(steps, success_traj) if v < COLLAPSE_SUCCESS]
    return float(below[0]) if below else float("inf")


def _dynamics(runs) -> dict:
    """Median trajectories of the measured-teacher dynamics, and per unit their agreement with the
    trained trajectory: mean over probes of |success_trained − success_dynamics| and the collapse
    step (first probe with success < COLLAPSE_SUCCESS) of each, with intervals over units."""
    out = {}
    steps = [p["step"] for p in runs[0]["probes"]]
    trained = [[p["prompts"][i]["success"] for p in r["probes"]] for r in runs for i in range(len(r["units"]))]
    out["trained_collapse_step"] = [collapse_step(steps, t) for t in trained]
    for name in ("segment_fixed_point", "segment_one_round"):
        dyn = [[x["success"] for x in d[name]] for r in runs for d in r["measured_teacher_dynamics"]]
        n = len(dyn[0])
        out[name] = {k: [float(np.median([d[name][j][k] for r in runs for d in r["measured_teacher_dynamics"]]))
                         for j in range(n)] for k in OUTCOMES}
        gap = [float(np.mean(np.abs(np.array(a) - np.array(b)))) for a, b in zip(trained, dyn)]
        cs = [collapse_step(steps, d) for d in dyn]
        both = [(a, b) for a, b in zip(out["trained_collapse_step"], cs) if np.isfinite(a) and np.isfinite(b)]
        out[name]["mean_abs_success_gap"] = interval(gap, "mean")
        out[name]["collapse_step"] = [c if np.isfinite(c) else None for c in cs]
        out[name]["n_both_collapse"] = len(both)
        out[name]["n_units"] = len(cs)
        out[name]["n_trained_collapse"] = int(np.sum(np.isfinite(out["trained_collapse_step"])))
        out[name]["n_dynamics_collapse"] = int(np.sum(np.isfinite(cs)))
        if both:
            out[name]["collapse_lag_steps"] = interval([b - a for a, b in both], "median")
    out["trained_collapse_step"] = [c if np.isfinite(c) else None for c in out["trained_collapse_step"]]
    return out


# ----------------------------------------------------------------------------- issue 11's criterion
def remedy_criterion(results: dict, remedy: str, *, sdsd: str = "sdsd_full_a1", rl: str = "rl",
                     entropy_share: float = 0.8, success_slack: float = 0.02) -> dict:
    """Does a trained remedy keep strategy-mass entropy ≥ entropy_share × RL's and success ≥ SDSD's −
    success_slack? `results`: `load_results` ({setting: [one result per seed]}). Per (seed, prompt) unit, paired across the three settings (same pretrained model,
    same prompt): d_H = H_remedy − share·H_RL and d_s = s_remedy − s_SDSD + slack; each with its mean
    and 95 % bootstrap interval over the units (`interval`). The remedy passes a side when the interval's
    lower end is ≥ 0, fails it when the upper end is < 0, and is undecided otherwise."""
    def by_unit(name, key):
        return {(r["seed"], u["prompt"]): u[key] for r in results[name] for u in r["units"]}
    out = {}
    for side, key, ref, f in (("entropy", "strategy_entropy", rl, lambda x, y: x - entropy_share * y),
                              ("success", "success", sdsd, lambda x, y: x - y + success_slack)):
        mine, theirs = by_unit(remedy, key), by_unit(ref, key)
        units = sorted(set(mine) & set(theirs))
        d = np.array([f(mine[k], theirs[k]) for k in units])
        val, lo, hi = interval(d, "mean")
        out[side] = {"mean_difference": val, "interval": [lo, hi], "n_units": len(units),
                     "verdict": "holds" if lo >= 0 else "fails" if hi < 0 else "undecided",
                     "remedy": interval(np.array([mine[k] for k in units]), "mean"),
                     "reference": interval(np.array([theirs[k] for k in units]), "mean")}
    out["keeps_both"] = out["entropy"]["verdict"] == "holds" and out["success"]["verdict"] == "holds"
    return out
