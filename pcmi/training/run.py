"""`pcmi train`: pretrain once, post-train by RL and/or SDSD from that checkpoint, evaluate exactly,
compare with the closed-form optima, write summary.json and figures (all atomically, resumable)."""
from __future__ import annotations

import copy
import json
import os
import platform
import time

import numpy as np
import torch

from .config import get_config
from .data import make_world
from .evaluate import evaluate_prompt
from .train import new_model, run_stage

METHODS = {"rl": ["rl"], "sdsd": ["sdsd"], "both": ["rl", "sdsd"]}
SCALARS = ("success", "pass@1", "pass@8", "pass@64", "distinct_correct@1", "distinct_correct@8",
           "distinct_correct@64", "correct_entropy", "effective_correct", "strategy_mass_entropy",
           "ood_success", "ratio_distortion")
OWN_PREDICTIONS = {"rl": ["rl"], "sdsd": ["sdsd_token", "sdsd_onpolicy"]}


def resolve_device(device) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).split(":")[0] not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; expected cpu or cuda")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return torch.device(device)


def write_json_atomic(obj, path: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=_jsonable)
    os.replace(tmp, path)


def _jsonable(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(type(x).__name__)


def run_train(config="tiny", method="both", out="runs/train", seed=0, device=None, *,
              stop_after: int | None = None, progress: bool = True, figures: bool = True) -> dict:
    """Train and evaluate; returns the summary (also written to out/summary.json).
    stop_after: raise train.StageInterrupted after that many optimizer steps in this call
    (a simulated kill; call again to resume)."""
    cfg = get_config(config)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected rl, sdsd or both")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    dev = resolve_device(device)
    os.makedirs(out, exist_ok=True)
    world = make_world(cfg)

    budget = [stop_after]

    def stage(name, model, ref=None):
        st = run_stage(name, cfg, world, model, os.path.join(out, f"ckpt_{name}.pt"), seed, dev,
                       ref_model=ref, stop_after=budget[0], progress=progress)
        if budget[0] is not None:
            budget[0] -= st["steps_this_call"]
        return st

    torch.manual_seed(seed)
    base = new_model(cfg, world).to(dev)
    stages = {"pretrain": stage("pretrain", base)}
    base.eval()
    models = {"base": base}
    for m in METHODS[method]:
        torch.manual_seed(seed)
        model = copy.deepcopy(base)
        stages[m] = stage(m, model, ref=base)
        models[m] = model.eval()

    t0 = time.perf_counter()
    prompts = [evaluate_prompt(models, world, i, cfg.beta, ks=cfg.ks, device=dev) for i in range(len(world.laws))]
    eval_s = time.perf_counter() - t0
    summary = {
        "config": cfg.to_dict(), "config_name": config if isinstance(config, str) else "custom",
        "method": method, "seed": seed, "device": str(dev), "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
        "graph": world.graph.name, "n_prompts": len(world.laws), "vocab_size": len(world.vocab),
        "n_parameters": sum(p.numel() for p in base.parameters()),
        "stages": {k: {"steps": v["step"], "wall_s": v["wall_s"], "tokens": v["tokens"],
                       "tokens_per_s": v["tokens"] / max(v["wall_s"], 1e-9), "history": v["history"]}
                   for k, v in stages.items()},
        "eval_wall_s": eval_s,
        "mean": mean_metrics(prompts),
        "theory_check": theory_check(prompts, list(models)),
        "prompts": prompts,
    }
    write_json_atomic(summary, os.path.join(out, "summary.json"))
    if figures:
        from .figures import write_figures
        write_figures(summary, out)
    return summary


def mean_metrics(prompts: list) -> dict:
    """Mean over prompts of every scalar metric and distance, per policy."""
    out = {}
    for name in prompts[0]["policies"]:
        rows = [p["policies"][name] for p in prompts]
        m = {k: float(np.mean([r[k] for r in rows if k in r])) for k in SCALARS if any(k in r for r in rows)}
        if "distances" in rows[0]:
            m["distances"] = {k: float(np.mean([r["distances"][k] for r in rows])) for k in rows[0]["distances"]}
        out[name] = m
    out["teacher_fit"] = {k: float(np.mean([p[k] for p in prompts]))
                          for k in ("teacher_tv", "teacher_kl_exact_to_model", "base_tv_to_data", "base_kl_data_to_model")}
    return out


def theory_check(prompts: list, trained: list) -> dict:
    """Per trained method and each of its predictions (RL → rl_optimum; SDSD → sdsd_token_optimum,
    the one-round token-level optimum, and sdsd_onpolicy, its fixed point under on-policy
    demonstrations): is the trained policy closer in TV to that prediction than to the other
    method's prediction and to the base? Lists the prompts where it is not."""
    out = {}
    for m in trained:
        if m == "base":
            continue
        other = "sdsd_token" if m == "rl" else "rl"
        for own in OWN_PREDICTIONS[m]:
            fails = []
            for i, p in enumerate(prompts):
                d = p["policies"][m]["distances"]
                if not (d[f"tv_{own}"] < d[f"tv_{other}"] and d[f"tv_{own}"] < d["tv_base"]):
                    fails.append({"prompt": i, "tv_own": d[f"tv_{own}"], "tv_other": d[f"tv_{other}"],
                                  "tv_base": d["tv_base"]})
            out[f"{m}->{own}"] = {"method": m, "prediction": own, "other_prediction": other,
                                  "n_prompts": len(prompts), "n_closer_to_own": len(prompts) - len(fails),
                                  "not_closer": fails}
    return out
