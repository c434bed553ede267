"""Figure `passk`: exact pass@k, k = 1…1024, averaged over the prompts of one graph.

pass@k of one prompt = 1 − (1 − p)^k, with p its exact success; the curve over prompts is the mean.
Policies: base π0, SDSD (π0·exp(s)), and RL (π0·exp(r/β)) with one β for all prompts chosen so
that RL's mean pass@1 equals SDSD's (`rl_beta_for_mean_success`). In distribution and with
each prompt's dominant route blocked (OOD: mass on correct rollouts avoiding its concept node).

Per prompt, pass@k is increasing in p for every k, so which of two policies is higher cannot
change with k; only the prompt-averaged curves can cross. The data states per prompt and over a
family of seeded graphs which curve is higher, at k = 1 and at k = 1024.
"""
from __future__ import annotations

import numpy as np

from pcmi.errors import PcmiInputError
from pcmi.metrics import ood_success, pass_at_k, success
from pcmi.policies import rl_beta_for_mean_success, rl_optimum, sdsd_optimum

from ._common import COLORS, LABELS, blocked_by_dominant_route, graph_label, higher, ks_log, new_figure, prompt_instances

NAME = "passk"
GRAPH = dict(k_routes=3, depth=2, branching=2, seed=0, n_sources=4, n_targets=2)
POLICY = dict(temperature=1.0, stop_pref=-1.0)
TEACHER = {"kind": "route_copying", "eps": 0.1}
K_MAX = 1024
FAMILY_SEEDS = tuple(range(20))


def prompt_successes(graph=GRAPH, policy=POLICY, teacher=TEACHER) -> dict:
    """Per prompt: exact success of base / SDSD / RL (β matched on the mean), in and out of distribution."""
    g, items = prompt_instances(graph, policy, teacher)
    log_pis = []
    for task, inst, ro in items:
        z, blocked = blocked_by_dominant_route(g, ro)
        log_pis.append((task, inst, z, blocked, sdsd_optimum(inst)))
    p0 = np.array([success(inst.log_base, inst.reward) for _, inst, _, _, _ in log_pis])
    psd = np.array([success(sd, inst.reward) for _, inst, _, _, sd in log_pis])
    if np.all(p0 >= 1 - 1e-12):
        beta = 1.0  # every rollout correct: π_RL = π0 for every β (P1 with r ≡ 1)
    else:
        try:
            beta = rl_beta_for_mean_success(p0, float(psd.mean()))
        except PcmiInputError:  # SDSD's mean success is not reachable by any RL leash
            beta = None
    prompts = []
    for (task, inst, z, blocked, sd), a, b in zip(log_pis, p0, psd):
        rl = rl_optimum(inst.log_base, inst.reward, beta) if beta else None
        prompts.append({
            "prompt": [task.source, task.target], "dominant_route": z,
            "success": {"base": a, "sdsd": b, "rl": success(rl, inst.reward) if beta else None},
            "ood_success": {"base": ood_success(inst.log_base, inst.reward, blocked),
                            "sdsd": ood_success(sd, inst.reward, blocked),
                            "rl": ood_success(rl, inst.reward, blocked) if beta else None}})
    return {"graph": graph_label(graph), "rl_beta": beta, "prompts": prompts}


def curves(prompts: list, key: str, ks) -> dict:
    """Mean pass@k over prompts for each policy, from the stored successes."""
    return {k: pass_at_k([p[key][k] for p in prompts], ks).tolist()
            for k in ("base", "sdsd", "rl") if prompts[0][key][k] is not None}


def comparison(prompts: list, key: str, k: int) -> list[str]:
    """Per prompt: which of SDSD and RL has the higher pass@k ('sdsd' | 'rl' | 'tie')."""
    return [higher(pass_at_k(p[key]["sdsd"], k), pass_at_k(p[key]["rl"], k)) for p in prompts]


def family_summary(seeds, graph=GRAPH, policy=POLICY, teacher=TEACHER) -> dict:
    """Over seeded graphs: how often RL's pass@k is above SDSD's, per prompt and for the mean curve."""
    counts = {f"{key}@{k}": {"sdsd": 0, "rl": 0, "tie": 0} for key in ("in", "ood") for k in (1, K_MAX)}
    mean_counts = {f"{key}@{k}": {"sdsd": 0, "rl": 0, "tie": 0} for key in ("in", "ood") for k in (1, 8, 64, K_MAX)}
    unmatched = []
    for seed in seeds:
        d = prompt_successes({**graph, "seed": seed}, policy, teacher)
        if d["rl_beta"] is None:
            unmatched.append(seed)
            continue
        for key, field in (("in", "success"), ("ood", "ood_success")):
            for k in (1, K_MAX):
                for h in comparison(d["prompts"], field, k):
                    counts[f"{key}@{k}"][h] += 1
            for k in (1, 8, 64, K_MAX):
                c = curves(d["prompts"], field, [k])
                mean_counts[f"{key}@{k}"][higher(c["sdsd"][0], c["rl"][0], tol=1e-9)] += 1
    return {"seeds": list(seeds), "seeds_without_matching_beta": unmatched,
            "prompts_higher": counts, "mean_curve_higher": mean_counts}


def compute(graph=GRAPH, policy=POLICY, teacher=TEACHER, seeds=FAMILY_SEEDS, k_max=K_MAX) -> dict:
    d = prompt_successes(graph, policy, teacher)
    ks = ks_log(k_max)
    out = {"name": NAME, **d, "policy": policy, "teacher": teacher, "k": ks.tolist(),
           "pass_at_k": curves(d["prompts"], "success", ks),
           "ood_pass_at_k": curves(d["prompts"], "ood_success", ks)}
    if d["rl_beta"] is not None:
        out["per_prompt_higher"] = {f"{key}@{k}": comparison(d["prompts"], field, k)
                                    for key, field in (("in", "success"), ("ood", "ood_success")) for k in (1, k_max)}
    out["family"] = family_summary(seeds, graph, policy, teacher)
    return out


def draw(data):
    fig, axes = new_figure(2, width=5.4)
    ks = data["k"]
    for ax, key, where in ((axes[0], "pass_at_k", "in distribution"),
                           (axes[1], "ood_pass_at_k", "dominant route blocked (OOD)")):
        for k, ys in data[key].items():
            lab = LABELS[k] + (f" (β={data['rl_beta']:.2f}, mean pass@1 = SDSD's)" if k == "rl" else "")
            ax.plot(ks, ys, color=COLORS[k], label=lab, lw=1.8, ls="--" if k == "rl" else "-")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k (samples per prompt)")
        ax.set_ylabel(f"pass@k, mean over {len(data['prompts'])} prompts")
        ax.set_title(f"pass@k, {where}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fam = data["family"]["mean_curve_higher"]
    n = sum(fam["in@8"].values())
    fig.suptitle(f"{data['graph']}, route-copying teacher eps={data['teacher']['eps']}\nover {n} seeded graphs "
                 f"RL's mean pass@8 is above SDSD's on {fam['in@8']['rl']} in distribution, "
                 f"{fam['ood@8']['rl']} OOD", fontsize=9)
    return fig
