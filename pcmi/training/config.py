"""Training configuration: one plain dataclass, one docstring line per field (cleanrl style)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace


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
    # model (nanoGPT-style decoder)
    n_layer: int = 2              # transformer blocks
    n_head: int = 2               # attention heads
    n_embd: int = 32              # width C
    # pretraining
    pretrain_steps: int = 150     # optimizer steps of next-token pretraining
    pretrain_batch: int = 64      # sequences per pretraining step
    pretrain_lr: float = 3e-3     # AdamW learning rate for pretraining
    # post-training (shared by RL and SDSD)
    post_steps: int = 40          # optimizer steps of post-training
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
    ema_rate: float = 0.05        # EMA teacher update rate per step
    # evaluation / bookkeeping
    ks: tuple = (1, 8, 64)        # pass@k and distinct-correct@k
    ckpt_every: int = 20          # checkpoint every this many steps (and at the end of a stage)
    log_every: int = 1            # history entry every this many steps

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


def get_config(config) -> TrainConfig:
    """A preset name or a TrainConfig; raises ValueError with one line otherwise."""
    if isinstance(config, TrainConfig):
        cfg = config
    elif isinstance(config, str) and config in PRESETS:
        cfg = PRESETS[config]
    else:
        raise ValueError(f"unknown config {config!r}; expected one of {', '.join(PRESETS)}")
    if cfg.n_embd % cfg.n_head:
        raise ValueError(f"n_embd ({cfg.n_embd}) must be a multiple of n_head ({cfg.n_head})")
    if cfg.teacher not in ("live", "ema", "frozen"):
        raise ValueError(f"teacher must be live, ema or frozen, got {cfg.teacher!r}")
    if not 0 <= cfg.alpha <= 1:
        raise ValueError(f"alpha must lie in [0, 1], got {cfg.alpha}")
    if cfg.beta <= 0:
        raise ValueError(f"beta must be > 0, got {cfg.beta}")
    if cfg.group_size < 2:
        raise ValueError("group_size must be >= 2 (SDSD needs a sibling as demonstration)")
    return cfg
