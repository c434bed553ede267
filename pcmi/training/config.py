"""Training configuration: one plain dataclass, one docstring line per field (cleanrl style).

Every field is validated when a TrainConfig is built (`__post_init__`): a bad value is a
PcmiInputError (a ValueError) whose one-line message names the field, before any training starts.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields, replace

from pcmi.errors import PcmiInputError


_INT_MIN = {"k_routes": 1, "depth": 1, "branching": 1, "n_sources": 1, "n_targets": 1, "graph_seed": 0,
            "n_layer": 1, "n_head": 1, "n_embd": 1, "pretrain_steps": 1, "pretrain_batch": 1,
            "post_steps": 1, "prompts_per_step": 1, "group_size": 2, "ckpt_every": 1, "log_every": 1,
            "threads": 1}
_FLOAT_RANGE = {  # name: (low, high, low_closed, high_closed)
    "pref_scale": (0.0, math.inf, True, False), "p_demo": (0.0, 1.0, True, True),
    "p_wrong": (0.0, 1.0, True, False), "p_feedback": (0.0, 1.0, True, True), "pretrain_lr": (0.0, math.inf, False, False),
    "post_lr": (0.0, math.inf, False, False), "grad_clip": (0.0, math.inf, False, False),
    "beta": (0.0, math.inf, False, False), "alpha": (0.0, 1.0, True, True),
    "ema_rate": (0.0, 1.0, True, True), "ckpt_minutes": (0.0, math.inf, False, False),
    "demo_gamma": (0.0, math.inf, True, False), "rl_weight": (0.0, 1.0, True, True)}
_WHY = {"group_size": " (SDSD needs a sibling as demonstration)"}
#: which other success of the group is a rollout's demonstration (pcmi.demonstrations names the exact laws)
DEMO_CHOICES = ("uniform", "inverse_prob", "least_likely")
#: what the SDSD teacher sees in context: a correct sibling ("DEMO y' SEP") or a failed sibling's feedback ("FB w SEP")
TEACHER_CONTEXTS = ("demo", "feedback")


def _check_field(name: str, v) -> None:
    """One field of TrainConfig; PcmiInputError naming it when the value is out of its domain."""
    if name in _INT_MIN:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < _INT_MIN[name]:
            raise PcmiInputError(f"TrainConfig.{name} must be an integer >= {_INT_MIN[name]}{_WHY.get(name, '')}, "
                                 f"got {v!r}")
    elif name in _FLOAT_RANGE:
        lo, hi, lo_c, hi_c = _FLOAT_RANGE[name]
        ok = (isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
              and (v >= lo if lo_c else v > lo) and (v <= hi if hi_c else v < hi))
        if not ok:
            dom = f"{'[' if lo_c else '('}{lo:g}, {hi:g}{']' if hi_c else ')'}".replace("inf)", "∞)")
            raise PcmiInputError(f"TrainConfig.{name} must be a finite number in {dom}, got {v!r}")
    elif name == "scale_adv_by_std":
        if not isinstance(v, bool):
            raise PcmiInputError(f"TrainConfig.scale_adv_by_std must be True or False, got {v!r}")
    elif name == "teacher":
        if v not in ("live", "ema", "frozen"):
            raise PcmiInputError(f"TrainConfig.teacher must be live, ema or frozen, got {v!r}")
    elif name == "teacher_context":
        if v not in TEACHER_CONTEXTS:
            raise PcmiInputError(f"TrainConfig.teacher_context must be demo or feedback, got {v!r}")
    elif name == "demo_choice":
        if v not in DEMO_CHOICES:
            raise PcmiInputError(f"TrainConfig.demo_choice must be one of {', '.join(DEMO_CHOICES)}, got {v!r}")
    elif name == "loss_mode":
        from pcmi.objectives import MODES
        if v not in MODES:
            raise PcmiInputError(f"TrainConfig.loss_mode must be one of {', '.join(MODES)}, got {v!r}")
    elif name == "distillation_topk":
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise PcmiInputError(f"TrainConfig.distillation_topk must be an integer >= 1, got {v!r}")
    elif name == "topk_of":
        if v not in ("student", "teacher"):
            raise PcmiInputError(f"TrainConfig.topk_of must be student or teacher, got {v!r}")
    elif name == "distillation_add_tail":
        if not isinstance(v, bool):
            raise PcmiInputError(f"TrainConfig.distillation_add_tail must be True or False, got {v!r}")
    elif name == "ks":
        if (not isinstance(v, tuple) or not v
                or any(isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1 for k in v)):
            raise PcmiInputError(f"TrainConfig.ks must be a non-empty tuple of positive integers, got {v!r}")
    else:  # a new field must get a rule here
        raise PcmiInputError(f"TrainConfig.{name} has no validation rule")


@dataclass(frozen=True)
class TrainConfig:
    # graph world (graphworld.multi_route_dag)
    k_routes: int = 3             # routes (strategies z) per prompt, each through its own concept node
    depth: int = 1                # layers inside a route
    branching: int = 2            # nodes per layer inside a route
    n_sources: int = 2            # sources; prompts = sources × targets
    n_targets: int = 2            # targets (>1: a target-blind model can end at the wrong one)
    graph_seed: int = 0           # seed of the graph's edge preferences
    pref_scale: float = 1.0       # std of the edge preferences that set the data law
    # pretraining data law: route z ~ w(x), path ~ P_z, demo ~ P_z with probability p_demo
    p_demo: float = 0.5           # probability that a pretraining sequence carries a demonstration
    p_wrong: float = 0.3          # weight of the "wrong target" strategy (base success ≈ 1 − p_wrong)
    p_feedback: float = 0.0       # probability that a pretraining sequence carries a feedback context "FB t' SEP" (adds FB)
    # model (nanoGPT-style decoder)
    n_layer: int = 2              # transformer blocks
    n_head: int = 2               # attention heads
    n_embd: int = 32              # width C
    # pretraining
    pretrain_steps: int = 150     # optimizer steps of next-token pretraining
    pretrain_batch: int = 64      # sequences per pretraining step
    pretrain_lr: float = 3e-3     # AdamW learning rate for pretraining
    # post-training (shared by RL and SDSD)
    post_steps: int = 80          # optimizer steps of post-training (tiny: 80 lets RL reach its closed form)
    prompts_per_step: int = 4     # prompts per step
    group_size: int = 8           # rollouts per prompt (the group)
    post_lr: float = 1e-3         # Adam learning rate for post-training
    grad_clip: float = 1.0        # global gradient-norm clip
    # RL
    beta: float = 0.1             # KL leash β: per-sequence reward r − β(log π − log π_ref)
    scale_adv_by_std: bool = False  # GRPO divides by the group std; False = Dr. GRPO (keeps the β optimum)
    # SDSD
    alpha: float = 1.0            # divergence: 1 reverse KL(S‖T), 0 forward KL(T‖S), else JS_α
    teacher: str = "frozen"       # "frozen" (the pretrained model = EMA rate 0), "live" (current network), "ema"
    ema_rate: float = 0.05        # EMA teacher update rate per step: θ_T ← (1 − rate)·θ_T + rate·θ (rate = student's weight)
    loss_mode: str = "full"       # per-token loss (pcmi.objectives.MODES): full | topk | sampled | sampled-baseline | sequence
    distillation_topk: int = 100  # k of loss_mode "topk" (TRL's name; k ≥ vocabulary is the full loss)
    topk_of: str = "student"      # whose top-k tokens: "student" (TRL, SDPO) or "teacher"
    distillation_add_tail: bool = True  # topk: add the tail bucket 1 − Σ_topk p to both (TRL's name; SDPO's default)
    teacher_context: str = "demo"  # SDSD teacher's context: "demo" (a correct sibling) | "feedback" (a failed sibling's WrongEndpoint)
    # remedies for the collapse (docs/remedies.md): the demonstration law and the λ-blend with RL
    demo_choice: str = "uniform"  # uniform | inverse_prob (P ∝ π(y')^−γ among the other successes) | least_likely
    demo_gamma: float = 1.0       # γ of inverse_prob (0: uniform; 1: the group's successes equally likely in D)
    rl_weight: float = 0.0        # λ-blend: loss = λ·(RL loss, KL leash β) + (1 − λ)·(SDSD loss), same rollouts
    # evaluation / bookkeeping
    ks: tuple = (1, 8, 64)        # pass@k and distinct-correct@k
    ckpt_every: int = 20          # checkpoint every this many steps (and at the end of a stage)
    ckpt_minutes: float = 5.0     # ... and whenever this many minutes passed since the last checkpoint
    log_every: int = 1            # history entry every this many steps
    threads: int = 1              # torch CPU threads (results depend on it: 1 reproduces the committed ones)

    def __post_init__(self):
        for f in fields(self):
            _check_field(f.name, getattr(self, f.name))
        if self.n_embd % self.n_head:
            raise PcmiInputError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if self.teacher_context == "feedback" and self.p_feedback == 0:
            raise PcmiInputError("TrainConfig.teacher_context feedback needs p_feedback > 0 (a pretrained model that read feedback)")
        self.loss()  # the mode and α must fit together (sampled and sequence need α = 1)

    def loss(self):
        """The SDSD loss mode as `pcmi.objectives.LossMode` (the one definition the exact theory reads)."""
        from pcmi.objectives import LossMode
        if self.loss_mode == "topk":
            return LossMode("topk", self.alpha, self.distillation_topk, self.topk_of, self.distillation_add_tail)
        try:
            return LossMode(self.loss_mode, self.alpha)
        except PcmiInputError as exc:
            raise PcmiInputError(f"TrainConfig.loss_mode {self.loss_mode} with alpha {self.alpha}: {exc}") from None

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **kw) -> "TrainConfig":
        return replace(self, **kw)


PRESETS = {
    # CPU, trains and evaluates in seconds (the test suite runs it)
    "tiny": TrainConfig(),
    # CPU, a few minutes per method on 2 cores
    "small": TrainConfig(depth=2, n_sources=4, n_targets=2, n_layer=2, n_head=4, n_embd=64,
                         pretrain_steps=300, pretrain_batch=128, post_steps=150,
                         prompts_per_step=8, group_size=8, ckpt_every=25),
    # one H100: minutes
    "gpu": TrainConfig(k_routes=4, depth=2, branching=3, n_sources=8, n_targets=3, n_layer=4,
                       n_head=8, n_embd=256, pretrain_steps=3000, pretrain_batch=512, pretrain_lr=1e-3,
                       post_steps=1000, prompts_per_step=32, group_size=16, post_lr=3e-4, ckpt_every=100),
}


#: `pcmi train --reduced`: the preset's graph world and code path at a size a CPU runs in about half a minute
#: (the gpu preset's 24 prompts on 4 routes × depth 2 × branching 3: 33 s on 2 cores), for CI and smoke tests
REDUCED = dict(n_layer=1, n_head=2, n_embd=32, pretrain_steps=30, pretrain_batch=64, post_steps=4,
               prompts_per_step=4, group_size=4)


def reduced(cfg: TrainConfig) -> TrainConfig:
    """The same graph world, teacher and loss switches with a small model and few steps (`REDUCED`)."""
    return cfg.replace(**REDUCED)


def get_config(config) -> TrainConfig:
    """A preset name or a TrainConfig (validated when built); PcmiInputError with one line otherwise."""
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, str) and config in PRESETS:
        return PRESETS[config]
    raise PcmiInputError(f"unknown config {config!r}; expected one of {', '.join(PRESETS)}")
