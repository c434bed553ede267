"""Figure `tilt`: the PCMI tilt, rollout by rollout.

For each correct rollout y of one prompt: π0(y), π_RL(y) ∝ π0·exp(r/β) (β matched so RL's
success equals SDSD's), π_SD(y) ∝ π0·exp(s(y)) and the token-level π_tok(y). Right panel:
log π(y | r=1) − log π0(y | r=1), flat (= 0) for RL (P1), stepped by route for SDSD (P4).
"""
from __future__ import annotations

import numpy as np

from pcmi.distributions import condition, probs
from pcmi.errors import PcmiInputError
from pcmi.metrics import ratio_distortion, strategy_masses, success
from pcmi.policies import rl_beta_for_success, rl_optimum, sdsd_optimum, sdsd_token_optimum

from ._common import COLORS, LABELS, ROUTE_COLORS, graph_label, new_figure, prompt_instances

NAME = "tilt"
GRAPH = dict(k_routes=3, depth=2, branching=2, seed=0, n_sources=1, n_targets=1)
POLICY = dict(temperature=1.0, stop_pref=-1.0)
TEACHER = {"kind": "route_copying", "eps": 0.1}
POLICIES = ("base", "rl", "sdsd", "sdsd_token")


def policy_logs(inst) -> tuple[dict, float | None]:
    """log π over Y(x) for base, RL (β matched to SDSD's success when possible), SDSD, token SDSD."""
    sd = sdsd_optimum(inst)
    p0, psd = success(inst.log_base, inst.reward), success(sd, inst.reward)
    try:
        beta = rl_beta_for_success(p0, psd)
    except PcmiInputError:  # SDSD did not raise success: no RL leash matches it; use β = 1
        beta = None
    rl = rl_optimum(inst.log_base, inst.reward, beta or 1.0)
    return {"base": inst.log_base, "rl": rl, "sdsd": sd, "sdsd_token": sdsd_token_optimum(inst)}, beta


def compute(graph=GRAPH, policy=POLICY, teacher=TEACHER) -> dict:
    g, [(task, inst, ro)] = prompt_instances(graph, policy, teacher, prompts=1)
    logs, beta = policy_logs(inst)
    ok = inst.reward == 1
    idx = np.flatnonzero(ok)
    idx = idx[np.argsort(-inst.log_base[idx], kind="stable")]
    cond = {k: condition(v, ok) for k, v in logs.items()}
    rows = [{"rank": i + 1, "path": "-".join(map(str, ro.paths[j])), "route": int(ro.route[j]),
             **{f"p_{k}": float(probs(logs[k][j])) for k in POLICIES},
             **{f"log_ratio_{k}": float(cond[k][j] - cond["base"][j]) for k in POLICIES}}
            for i, j in enumerate(idx)]
    summary = {k: {"success": success(v, inst.reward),
                   "ratio_distortion": ratio_distortion(v, inst.log_base, inst.reward),
                   "strategy_masses": strategy_masses(v, inst.reward, inst.route)} for k, v in logs.items()}
    return {"name": NAME, "graph": graph_label(graph), "prompt": [task.source, task.target],
            "max_len": task.max_len, "policy": policy, "teacher": teacher,
            "rl_beta": beta, "n_rollouts": len(ro), "n_correct": int(ok.sum()),
            "rows": rows, "summary": summary}


def draw(data):
    fig, (a, b) = new_figure(2, width=5.6)
    rows = data["rows"]
    x = np.array([r["rank"] for r in rows])
    for k in POLICIES:
        a.plot(x, [r[f"p_{k}"] for r in rows], "o-" if k != "sdsd_token" else "x--", ms=4,
               color=COLORS[k], label=LABELS[k] + (f" (β={data['rl_beta']:.2f})" if k == "rl" and data["rl_beta"] else ""))
    a.set_yscale("log")
    a.set_xlabel("correct rollout, ranked by base probability π0(y)")
    a.set_ylabel("probability of the rollout π(y)")
    a.set_title("Each correct path under each policy")
    a.legend(fontsize=8)
    routes = sorted({r["route"] for r in rows})
    for k, marker, dx in (("rl", "s", -0.15), ("sdsd", "o", 0.15)):
        for z in routes:
            sel = [r for r in rows if r["route"] == z]
            color = ROUTE_COLORS[z % len(ROUTE_COLORS)]
            b.scatter([r["rank"] + dx for r in sel], [r[f"log_ratio_{k}"] for r in sel], marker=marker, s=30,
                      facecolors="none" if k == "rl" else color, edgecolors=color,
                      label=f"{'RL' if k == 'rl' else 'SDSD'}, route {z}")
    b.axhline(0, color="k", lw=0.8)
    b.set_xlabel("correct rollout, ranked by base probability π0(y)")
    b.set_ylabel("log π(y | correct) − log π0(y | correct)")
    b.set_title("Tilt among correct paths (RL: open squares, SDSD: dots)")
    b.legend(fontsize=7, ncol=2)
    fig.suptitle(f"PCMI tilt on {data['graph']}, prompt {data['prompt'][0]}→{data['prompt'][1]},\n"
                 f"route-copying teacher eps={data['teacher']['eps']}", fontsize=10)
    return fig
