"""Toy trainer: a small decoder-only transformer pretrained on graphworld paths, then post-trained
by RL (GRPO-style, KL leash) or SDSD (self-distillation with a successful sibling as demonstration),
and evaluated exactly by enumerating Y(x) through the network.

This is the only part of pcmi that imports torch; `import pcmi` never imports this package.
Modules: config (presets), model (the transformer), data (pretraining law), losses (per-token
divergences), rollouts (sampling and scoring), train (pretrain / RL / SDSD loops), evaluate (exact
evaluation and closed-form predictions), run (the `pcmi train` command).
"""
from .config import PRESETS, TrainConfig, get_config

__all__ = ["PRESETS", "TrainConfig", "get_config"]
