"""Figure `rounds`: diversity under on-policy rounds (theory.md §4, P7).

SDSD rounds: π_{k+1} = π_k·exp(s_k) with D_k = π_k(· | r=1) and the teacher rebuilt from π_k.
RL rounds: π_{k+1} ∝ π_k·exp(r/β). Forward-KL rounds: π_{k+1} = E_{D_k} T_k(·|y').
Per round: strategy-mass entropy H(π(z | r=1)), effective number of correct rollouts
exp H(π(· | r=1)), success, and RL's ratio distortion (0 by P1).
"""
from __future__ import annotations

import numpy as np

from pcmi.dynamics import forward_kl_rounds, rl_rounds, sdsd_rounds
from pcmi.errors import PcmiInputError
from pcmi.metrics import effective_correct, ratio_distortion
from pcmi.policies import rl_beta_for_success

from ._common import COLORS, LABELS, graph_label, new_figure, prompt_instances

NAME = "rounds"
GRAPH = dict(k_routes=3, depth=2, branching=2, seed=0, n_sources=1, n_targets=1)
#: two settings: every rollout correct (no STOP action, one target) and with failing rollouts
SETTINGS = {"all_correct": dict(temperature=1.0), "failing": dict(temperature=1.0, stop_pref=-1.0)}
TEACHER = {"kind": "route_copying", "eps": 0.1}
N_ROUNDS = 10


def round_rows(rounds, inst) -> list[dict]:
    return [{"round": r.k, "success": r.success, "strategy_mass_entropy": r.strategy_mass_entropy,
             "effective_correct": effective_correct(r.log_pi, inst.reward),
             "strategy_masses": r.strategy_masses,
             "ratio_distortion": ratio_distortion(r.log_pi, inst.log_base, inst.reward)} for r in rounds]


def setting_data(graph, policy, teacher, n_rounds) -> dict:
    g, [(task, inst, ro)] = prompt_instances(graph, policy, teacher, prompts=1)
    sd = sdsd_rounds(inst, n_rounds)
    try:  # RL's leash: its first round reaches SDSD's first-round success
        beta = rl_beta_for_success(sd[0].success, sd[1].success)
    except PcmiInputError:
        beta = 1.0
    series = {"sdsd": round_rows(sd, inst), "forward_kl": round_rows(forward_kl_rounds(inst, n_rounds), inst),
              "rl": round_rows(rl_rounds(inst, n_rounds, beta), inst)}
    ent = [r["strategy_mass_entropy"] for r in series["sdsd"]]
    return {"prompt": [task.source, task.target], "policy": policy, "rl_beta": beta, "series": series,
            "sdsd_entropy_nonincreasing": bool(np.all(np.diff(ent) <= 1e-12)),
            "rl_max_ratio_distortion": max(r["ratio_distortion"] for r in series["rl"]),
            "forward_kl_max_ratio_distortion": max(r["ratio_distortion"] for r in series["forward_kl"])}


def compute(graph=GRAPH, settings=SETTINGS, teacher=TEACHER, n_rounds=N_ROUNDS) -> dict:
    return {"name": NAME, "graph": graph_label(graph), "teacher": teacher, "n_rounds": n_rounds,
            "settings": {k: setting_data(graph, p, teacher, n_rounds) for k, p in settings.items()}}


TITLES = {"all_correct": "every rollout correct", "failing": "with failing rollouts (STOP anywhere)"}


def draw(data):
    n = len(data["settings"])
    fig, axes = new_figure(3, n, width=4.4, height=3.4)
    axes = axes.reshape(n, 3)
    panels = (("strategy_mass_entropy", "H(π(route | correct)) [nats]", "route diversity"),
              ("effective_correct", "exp H(π(y | correct))", "effective # correct paths"),
              ("success", "success probability p", "success"))
    for row, (setting, d) in zip(axes, data["settings"].items()):
        for ax, (key, ylabel, title) in zip(row, panels):
            for k, rows in d["series"].items():
                lab = LABELS[k] + (f" (β={d['rl_beta']:.2f})" if k == "rl" and setting != "all_correct" else "")
                ax.plot([r["round"] for r in rows], [r[key] for r in rows], marker="o", ms=3.5, color=COLORS[k],
                        label=lab, ls="--" if k == "rl" else "-", lw=2.2 if k == "rl" else 1.5)
            ax.set_xlabel("on-policy round k (0 = base policy)")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{title}, {TITLES.get(setting, setting)}", fontsize=9)
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=8)
    fig.suptitle(f"On-policy rounds on {data['graph']}, first prompt\nroute-copying teacher "
                 f"eps={data['teacher']['eps']} rebuilt from each round's policy", fontsize=10)
    return fig
