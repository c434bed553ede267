"""Figure `atlas`: where each proposition and tendency holds over an instance space (`pcmi sweep`).

The spec below (multi-route DAGs with one or two targets, path-stars and a random DAG; a goal-aware
policy, under which every rollout of a one-target graph is correct, and a policy that may STOP
anywhere; route-copying teachers with eps ∈ {0.05, 0.3}; five graph seeds) is swept exactly as
`pcmi sweep` does (`pcmi.sweep.sweep_rows`: each prompt loaded from its `pcmi solve` instance file,
each check run through `pcmi.verify.CHECKS`). Each cell of the heatmap is the hold rate of one check on
one (graph, policy) column, over teachers and seeds; grey where the check does not apply there (its
precondition fails: e.g. P4 and P8 need every rollout correct).
"""
from __future__ import annotations

import json

import numpy as np

from pcmi.sweep import atlas_of, sweep_rows

from ._common import new_figure

NAME = "atlas"
CHECKS = ("P4", "P5", "P7", "P8", "P9", "P4_general", "P8_failures")
TENDENCIES = ("P4_general", "P8_failures")
SPEC = {"checks": list(CHECKS),
        "graphs": [{"family": "multi_route_dag", "k_routes": [2, 3], "depth": 1, "branching": 2, "n_sources": 1,
                    "n_targets": [1, 2]},
                   {"family": "path_star", "degree": [2, 3], "length": 2},
                   {"family": "random_dag", "n": 8, "p": 0.4}],
        "policies": [{"goal_aware": True}, {"stop_pref": 0.0}],
        "teachers": [{"kind": "route_copying", "eps": [0.05, 0.3]}],
        "seeds": 5}


def column_label(family: str, params: str, policy: str) -> str:
    p, pol = json.loads(params), json.loads(policy)
    short = {"multi_route_dag": lambda: f"routes k={p['k_routes']}, {p['n_targets']} target(s)",
             "path_star": lambda: f"path-star degree {p['degree']}",
             "random_dag": lambda: f"random DAG n={p['n']}"}[family]()
    return f"{short}\n{'goal-aware' if pol.get('goal_aware') else 'STOP anywhere'}"


def compute(spec=None) -> dict:
    spec = SPEC if spec is None else spec
    rows = [{k: ("" if v is None else str(v)) for k, v in r.items()} for r in sweep_rows(spec)]
    columns = sorted({(r["family"], r["params"], r["policy"]) for r in rows})
    checks = [c for c in CHECKS if c in spec["checks"]]
    held = np.zeros((len(checks), len(columns)), int)
    tried = np.zeros_like(held)
    for r in rows:
        if r["status"] in ("held", "failed"):
            i, j = checks.index(r["check"]), columns.index((r["family"], r["params"], r["policy"]))
            tried[i, j] += 1
            held[i, j] += r["status"] == "held"
    atlas = atlas_of(rows, spec)
    per_check = {}
    for c in checks:
        mine = [r for r in rows if r["check"] == c]
        fails = [r for r in mine if r["status"] == "failed"]
        smallest = min(fails, key=lambda r: (int(r["n_rollouts"]), float(r["margin"])), default=None)
        n_tried = sum(r["status"] in ("held", "failed") for r in mine)
        per_check[c] = {"tried": n_tried, "held": n_tried - len(fails),
                        "hold_rate": (n_tried - len(fails)) / n_tried if n_tried else None,
                        "kind": "tendency" if c in TENDENCIES else "universal",
                        "smallest_counterexample": None if smallest is None else {
                            "n_rollouts": int(smallest["n_rollouts"]), "margin": float(smallest["margin"]),
                            "family": smallest["family"], "params": json.loads(smallest["params"]),
                            "policy": json.loads(smallest["policy"]), "teacher": json.loads(smallest["teacher"]),
                            "seed": int(smallest["seed"]), "prompt": smallest["prompt"],
                            "instance": json.loads(smallest["instance"])}}
    return {"name": NAME, "spec": spec, "checks": checks,
            "columns": [column_label(*c) for c in columns], "held": held.tolist(), "tried": tried.tolist(),
            "per_check": per_check, "n_rows": len(rows), "groups": atlas["groups"]}


def draw(data):
    held, tried = np.array(data["held"], float), np.array(data["tried"], float)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(tried > 0, held / np.where(tried > 0, tried, 1), np.nan)
    fig, ax = new_figure(1, width=max(7.0, 1.15 * len(data["columns"])), height=1.0 + 0.55 * len(data["checks"]))
    cmap = __import__("matplotlib").colormaps["RdYlGn"].with_extremes(bad="#dddddd")
    ax.imshow(np.ma.masked_invalid(rate), cmap=cmap, vmin=0.5, vmax=1.0, aspect="auto")
    for i in range(rate.shape[0]):
        for j in range(rate.shape[1]):
            text = "n/a" if tried[i, j] == 0 else f"{int(held[i, j])}/{int(tried[i, j])}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(data["columns"])), data["columns"], fontsize=6.5, rotation=0)
    ax.set_yticks(range(len(data["checks"])),
                  [f"{c} ({data['per_check'][c]['kind']})" for c in data["checks"]], fontsize=8)
    ax.set_title(f"held / tried per (graph, policy), over teachers eps ∈ {{0.05, 0.3}} and "
                 f"{data['spec']['seeds']} seeds (grey: does not apply)", fontsize=9)
    return fig
