"""`pcmi train`: pretrain once, post-train by RL and/or SDSD from that checkpoint, evaluate exactly,
compare with the closed-form optima, write summary.json and figures (all atomically, resumable)."""
from __future__ import annotations

import copy
import os
import platform
import time

import numpy as np
import torch

from pcmi.atomic import atomic_write_json
from pcmi.errors import PcmiInputError

from .config import PRESETS, get_config
from .data import make_world
from .evaluate import evaluate_prompt
from .train import checkpoint_matches, load_checkpoint, new_model, run_stage

#: "negative" is the null baseline: a fixed negative advantage on failures, no demonstration information
METHODS = {"rl": ["rl"], "sdsd": ["sdsd"], "negative": ["negative"], "both": ["rl", "sdsd"],
           "all": ["rl", "sdsd", "negative"]}
TRAINED = ("rl", "sdsd", "negative")
SCALARS = ("success", "pass@1", "pass@8", "pass@64", "distinct_correct@1", "distinct_correct@8",
           "distinct_correct@64", "correct_entropy", "effective_correct", "strategy_mass_entropy",
           "ood_success", "ratio_distortion")
OWN_PREDICTIONS = {"rl": ["rl"], "sdsd": ["sdsd_token", "sdsd_onpolicy"]}


def resolve_device(device) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).split(":")[0] not in ("cpu", "cuda"):
        raise PcmiInputError(f"unknown device {device!r}; expected cpu or cuda")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise PcmiInputError(f"device {device!r} requested but CUDA is not available")
    return torch.device(device)


def _jsonable(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(type(x).__name__)


def write_summary(summary: dict, path: str) -> None:
    """summary.json through pcmi.atomic (a directory at `path` is refused, nothing left behind)."""
    atomic_write_json(path, summary, indent=1, default=_jsonable)


def _check_out(out: str) -> str:
    """The output folder (created); refused before any work if it or its summary.json is unusable."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise PcmiInputError(f"--out {out} exists and is not a directory")
    summary = os.path.join(out, "summary.json")
    if os.path.isdir(summary):
        raise PcmiInputError(f"cannot write {summary}: it is a directory")
    os.makedirs(out, exist_ok=True)
    return summary


def _earlier_methods(out, requested, cfg, world, base, seed, dev, log) -> dict:
    """Post-trained models of the other method whose finished checkpoints (same config and seed) an
    earlier run left in `out`: merged into this run's summary so that, e.g., `--method rl` into a
    `both` folder keeps SDSD's results."""
    found = {}
    for m in TRAINED:
        path = os.path.join(out, f"ckpt_{m}.pt")
        if m in requested or not os.path.exists(path):
            continue
        ck = load_checkpoint(path, dev)
        if not (checkpoint_matches(ck, cfg, seed) and ck["state"]["done"]):
            _say(log, f"ignoring {path}: unfinished or from another config or seed")
            continue
        model = copy.deepcopy(base)
        model.load_state_dict(ck["model"])
        found[m] = (model.eval(), ck["state"])
        _say(log, f"keeping {m} from an earlier run in {out} ({os.path.basename(path)} finished, config, seed match)")
    return found


def _say(log, msg: str) -> None:
    if log is not None:
        log(msg)


def run_train(config="tiny", method="both", out="runs/train", seed=0, device=None, *,
              stop_after: int | None = None, progress: bool = True, figures: bool = True, log=None,
              config_name: str | None = None) -> dict:
    """Train and evaluate; returns the summary (also written to out/summary.json).
    stop_after: raise train.StageInterrupted after that many optimizer steps in this call
    (a simulated kill; call again to resume). log: a callable receiving one-line messages
    (checkpoint reuse, warnings); None is silent. torch runs on cfg.threads CPU threads
    (restored afterwards): trained numbers depend on the thread count. config_name: the name the
    summary records (default: the preset's name, or "custom" for a TrainConfig)."""
    cfg = get_config(config)
    if config_name is None:
        config_name = config if isinstance(config, str) else "custom"
    if method not in METHODS:
        raise PcmiInputError(f"unknown method {method!r}; expected {', '.join(METHODS)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise PcmiInputError(f"seed must be a non-negative integer, got {seed!r}")
    dev = resolve_device(device)
    summary_path = _check_out(out)
    if dev.type == "cpu" and cfg == PRESETS["gpu"].replace(threads=cfg.threads):
        _say(log, f"warning: the gpu config on CPU takes many hours; checkpoints every {cfg.ckpt_every} steps "
                  f"and every {cfg.ckpt_minutes:g} min in {out} let a killed run resume")
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _train_and_evaluate(cfg, config_name, method, out, summary_path, int(seed), dev,
                                   stop_after, progress, figures, log)
    finally:
        torch.set_num_threads(threads)


def _train_and_evaluate(cfg, config, method, out, summary_path, seed, dev, stop_after, progress, figures, log):
    world = make_world(cfg)
    budget = [stop_after]

    def stage(name, model, ref=None):
        st = run_stage(name, cfg, world, model, os.path.join(out, f"ckpt_{name}.pt"), seed, dev,
                       ref_model=ref, stop_after=budget[0], progress=progress, log=log)
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
    for m, (model, st) in _earlier_methods(out, METHODS[method], cfg, world, base, seed, dev, log).items():
        models[m], stages[m] = model, {**st, "resumed_from": st["step"], "from_earlier_run": True}
    models = {k: models[k] for k in ("base", *TRAINED) if k in models}

    t0 = time.perf_counter()
    prompts = [evaluate_prompt(models, world, i, cfg.beta, ks=cfg.ks, device=dev, mode=cfg.loss())
               for i in range(len(world.laws))]
    eval_s = time.perf_counter() - t0
    summary = {
        "config": cfg.to_dict(), "config_name": config,
        "method": method, "methods": [m for m in models if m != "base"], "seed": seed, "device": str(dev),
        "torch": torch.__version__, "threads": cfg.threads, "cpu_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "graph": world.graph.name, "n_prompts": len(world.laws), "vocab_size": len(world.vocab),
        "n_parameters": sum(p.numel() for p in base.parameters()),
        "stages": {k: {"steps": v["step"], "wall_s": v["wall_s"], "tokens": v["tokens"],
                       "tokens_per_s": v["tokens"] / max(v["wall_s"], 1e-9),
                       "checkpoint": _checkpoint_use(v), "history": v["history"]}
                   for k, v in stages.items()},
        "eval_wall_s": eval_s,
        "mean": mean_metrics(prompts),
        "theory_check": theory_check(prompts, list(models)),
        "prompts": prompts,
    }
    write_summary(summary, summary_path)
    if figures:
        from .figures import write_figures
        write_figures(summary, out)
    return summary


def _checkpoint_use(st: dict) -> str:
    """"trained", "reused" (a finished checkpoint), "resumed from step k" or "earlier run"."""
    if st.get("from_earlier_run"):
        return "earlier run"
    k = st.get("resumed_from")
    if k is None:
        return "trained"
    return "reused" if k == st["step"] else f"resumed from step {k}"


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
        if m not in OWN_PREDICTIONS:  # base, and the null baseline (no closed form of its own)
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


def results_table(summary: dict) -> str:
    """A short plain-text table: each trained policy and its prediction × success, pass@k,
    strategy-mass entropy, OOD success, TV to its own prediction; then the theory check."""
    k = max(summary["config"]["ks"])
    cols = (("success", "success"), ("pass@1", "pass@1"), (f"pass@{k}", f"pass@{k}"),
            ("strategy_mass_entropy", "strategy H"), ("ood_success", "OOD success"))
    head = f"{'policy':<20}" + "".join(f"{c:>12}" for _, c in cols) + "  TV to own prediction"
    lines = [head]
    rows = ["base"] + [r for m in summary["methods"] for r in (m, *(f"pred_{p}" for p in OWN_PREDICTIONS.get(m, ())))]
    for name in dict.fromkeys(rows):
        m = summary["mean"][name]
        own = ""
        if name in OWN_PREDICTIONS:
            own = ", ".join(f"{p} {m['distances'][f'tv_{p}']:.3f}" for p in OWN_PREDICTIONS[name])
        lines.append(f"{name:<20}" + "".join(f"{m[key]:>12.3f}" if key in m else f"{'—':>12}" for key, _ in cols)
                     + f"  {own}".rstrip())
    for key, v in summary["theory_check"].items():
        verdict = "closer to its own prediction than to the other method's and to the base"
        miss = "" if not v["not_closer"] else "; not on prompt(s) " + ", ".join(str(f["prompt"]) for f in v["not_closer"])
        lines.append(f"theory check {key}: {verdict} on {v['n_closer_to_own']}/{v['n_prompts']} prompts{miss}")
    return "\n".join(lines)
