"""Predict before training: the remedies' predicted outcomes over their knobs, from the pretrained model alone.

    python tools/remedy_knob_scan.py [--seed S] [--ckpt-dir DIR]

For config small (the remedies grid's), the pretrained network of seed S (its checkpoint DIR/seed{S}/pretrain.pt
is trained there if missing, as `pcmi train --grid remedies --ckpt-dir DIR` does) gives π0 and its in-context
teacher per prompt; each knob's own prediction (`grid.prediction_key` / `grid.predict`: the proxy law's or the
λ-blend's frozen-teacher on-policy fixed point) is printed as the mean over the 8 prompts of success,
strategy-mass entropy and OOD success. These are the numbers docs/training.md quotes for seed 0.
"""
import argparse
import os

import numpy as np
import torch

from pcmi.training import grid as G
from pcmi.training.data import make_world
from pcmi.training.train import new_model, run_stage

KNOBS = ([dict(loss_mode="full", demo_choice="inverse_prob", demo_gamma=g) for g in (0.25, 0.5, 0.75, 1.0)]
         + [dict(loss_mode="sequence", rl_weight=lam) for lam in (0.5, 0.9, 0.95, 0.98, 0.99)])


def main(argv=None):
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--ckpt-dir", default="runs/grid_ckpt")
    args = a.parse_args(argv)
    cfg = G.get_grid("remedies").cfg().replace(threads=1)
    torch.set_num_threads(1)
    world = make_world(cfg)
    sdir = os.path.join(args.ckpt_dir, f"seed{args.seed}")
    os.makedirs(sdir, exist_ok=True)
    torch.manual_seed(args.seed)
    base = new_model(cfg, world)
    run_stage("pretrain", cfg, world, base, os.path.join(sdir, "pretrain.pt"), args.seed, "cpu", progress=False)
    base.eval()
    ctxs = [G.prompt_context(base, world, i, "cpu") for i in range(len(world.laws))]
    for over in KNOBS:
        cs = cfg.replace(**over)
        key = G.prediction_key(G.Setting("scan", "sdsd", tuple(sorted(over.items()))), cs)
        outs = [G.outcome(lp, c) for c in ctxs if (lp := G.predict(c, key, cs)) is not None]
        print(f"{key:36s} prompts {len(outs)}  success {np.mean([o['success'] for o in outs]):.3f}  "
              f"H {np.mean([o['strategy_entropy'] for o in outs]):.3f}  OOD {np.mean([o['ood_success'] for o in outs]):.3f}")


if __name__ == "__main__":
    main()
