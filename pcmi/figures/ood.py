"""Figure `ood`: success after blocking the dominant route (theory.md §5, P8).

For each prompt, the base policy's dominant route z* (most correct mass) is closed by blocking
the edges into its concept node; OOD success = mass on correct rollouts that avoid them, and
OOD pass@k = 1 − (1 − OOD success)^k. Two settings on the same graph family:
- every rollout correct: π_RL = π0 for every β, and P8 says SDSD's OOD success ≤ RL's always;
- with failing rollouts, RL's β matched on the mean success (as in `passk`): only a tendency.
"""
from __future__ import annotations

import numpy as np

from pcmi.metrics import pass_at_k

from ._common import COLORS, LABELS, graph_label, ks_log, new_figure
from .passk import prompt_successes

NAME = "ood"
GRAPH = dict(k_routes=3, depth=2, branching=2, seed=0, n_sources=4, n_targets=1)
SETTINGS = {"all_correct": {"graph": dict(GRAPH), "policy": dict(temperature=1.0)},
            "failing": {"graph": dict(GRAPH, n_targets=2), "policy": dict(temperature=1.0, stop_pref=-1.0)}}
TEACHER = {"kind": "route_copying", "eps": 0.1}
FAMILY_SEEDS = tuple(range(20))
POLICIES = ("base", "rl", "sdsd")


def setting_data(graph, policy, teacher, seeds, ks) -> dict:
    named = prompt_successes(graph, policy, teacher)
    mean = {key: {k: float(np.mean([p[key][k] for p in named["prompts"]])) for k in POLICIES}
            for key in ("success", "ood_success")}
    curves = {k: pass_at_k([p["ood_success"][k] for p in named["prompts"]], ks).tolist() for k in POLICIES}
    pairs = []  # (seed, prompt, RL OOD success, SDSD OOD success) over the family
    for seed in seeds:
        d = prompt_successes({**graph, "seed": seed}, policy, teacher)
        if d["rl_beta"] is not None:
            pairs += [[seed, p["prompt"], p["ood_success"]["rl"], p["ood_success"]["sdsd"]] for p in d["prompts"]]
    holds = [sd <= rl + 1e-12 for _, _, rl, sd in pairs]
    return {"graph": graph_label(graph), "policy": policy, "rl_beta": named["rl_beta"],
            "prompts": named["prompts"], "mean": mean, "ood_pass_at_k": curves,
            "family": {"seeds": list(seeds), "rl_vs_sdsd_ood_success": pairs,
                       "fraction_sdsd_ood_at_most_rl": float(np.mean(holds)) if holds else None,
                       "n_prompts": len(pairs),
                       "counterexamples": [p for p, h in zip(pairs, holds) if not h]}}


def compute(settings=SETTINGS, teacher=TEACHER, seeds=FAMILY_SEEDS, k_max=1024) -> dict:
    ks = ks_log(k_max)
    return {"name": NAME, "teacher": teacher, "k": ks.tolist(),
            "settings": {name: setting_data(s["graph"], s["policy"], teacher, seeds, ks)
                         for name, s in settings.items()}}


STYLE = {"all_correct": ("-", "o", "every rollout correct"), "failing": (":", "^", "with failing rollouts")}


def draw(data):
    fig, (a, b, c) = new_figure(3, width=4.6)
    settings = data["settings"]
    width = 0.13
    for i, (name, d) in enumerate(settings.items()):
        for j, k in enumerate(POLICIES):
            x = np.array([0, 1]) + (i * 3 + j - 2.5) * width
            a.bar(x, [d["mean"]["success"][k], d["mean"]["ood_success"][k]], width, color=COLORS[k],
                  alpha=1.0 if name == "all_correct" else 0.55, hatch=None if name == "all_correct" else "//",
                  label=f"{LABELS[k]}, {STYLE[name][2]}")
    a.set_xticks([0, 1], ["in distribution", "dominant route blocked"])
    a.set_ylabel("success probability, mean over prompts")
    a.set_title("Success before and after blocking (seed 0)")
    a.legend(fontsize=6.5)
    for name, d in settings.items():
        for k in POLICIES:
            b.plot(data["k"], d["ood_pass_at_k"][k], ls=STYLE[name][0], color=COLORS[k], lw=1.8,
                   label=f"{LABELS[k].split(' (')[0]}, {STYLE[name][2]}")
    b.set_xscale("log", base=2)
    b.set_xlabel("k (samples per prompt)")
    b.set_ylabel("OOD pass@k, mean over prompts")
    b.set_title("OOD pass@k (seed 0)")
    b.grid(alpha=0.3)
    b.legend(fontsize=6.5, loc="lower right")
    for name, d in settings.items():
        pts = np.array([[rl, sd] for _, _, rl, sd in d["family"]["rl_vs_sdsd_ood_success"]])
        frac = d["family"]["fraction_sdsd_ood_at_most_rl"]
        c.scatter(pts[:, 0], pts[:, 1], s=12, marker=STYLE[name][1], alpha=0.7,
                  label=f"{STYLE[name][2]}: SDSD ≤ RL on {frac:.0%} of {len(pts)}")
    lim = [0, max(c.get_xlim()[1], c.get_ylim()[1])]
    c.plot(lim, lim, "k-", lw=0.8)
    c.set_xlabel("RL's OOD success")
    c.set_ylabel("SDSD's OOD success")
    c.set_title(f"Every prompt of {len(data['settings']['all_correct']['family']['seeds'])} seeded graphs")
    c.legend(fontsize=7)
    g = settings["all_correct"]["graph"].replace("n_targets=1)", "n_targets=1 or 2)")
    fig.suptitle(f"Blocking the dominant route on {g}, route-copying teacher eps={data['teacher']['eps']}",
                 fontsize=10)
    return fig
