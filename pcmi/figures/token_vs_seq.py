"""Figure `token_vs_seq`: token-level SDSD vs sequence-level SDSD (P5).

π_tok(a | h) ∝ exp(g(h·a)), g(h·a) = E_D log T(a | h, y'); π_SD(a | h) ∝ exp(g(h·a))·Z(h·a) with the
soft future value Z(h) = Σ_a exp(g(h·a)) Z(h·a), Z(leaf) = 1 (`token_level`). They coincide iff
Z(h·a) does not depend on a at every prefix h. Disagreement about the future is measured as the
spread of log Z among siblings, max over prefixes h of (max_a log Z(h·a) − min_a log Z(h·a)); the
distance is TV(π_tok, π_SD) over whole rollouts. Sweeps: copy-teacher lam, soft_route sharpness κ,
route-copying eps (route fixed by the first move: Z is constant among siblings, P5's equality case).
"""
from __future__ import annotations

import numpy as np

from pcmi.distributions import kl, total_variation
from pcmi.metrics import success
from pcmi.policies import sdsd_optimum, sdsd_token_optimum, token_level

from ._common import graph_label, new_figure, prompt_instances

NAME = "token_vs_seq"
GRAPH = dict(k_routes=3, depth=2, branching=2, seed=0, n_sources=1, n_targets=1)
POLICY = dict(temperature=1.0, stop_pref=-1.0)
N_SWEEP = 17
SWEEPS = {  # name -> (parameter, values, teacher spec for a value)
    "copy": ("lam", lambda n: np.linspace(0.0, 0.96, n), lambda v: {"kind": "copy", "lam": v}),
    "soft_route": ("sharpness κ", lambda n: np.linspace(0.0, 8.0, n),
                   lambda v: {"kind": "soft_route", "eps": 0.1, "sharpness": v}),
    "route_copying": ("eps", lambda n: np.linspace(0.02, 1.0, n), lambda v: {"kind": "route_copying", "eps": v}),
}


def sibling_log_z_spread(inst) -> float:
    """max over prefixes h of the spread of log Z(h·a) among the children a of h that the
    teachers allow (finite g); 0 iff Z(h·a) is constant among siblings everywhere."""
    tl, parent = token_level(inst), inst.tree.parent
    ok = np.isfinite(tl.g) & np.isfinite(tl.log_Z)
    ok[0] = False
    hi = np.full(inst.tree.n_nodes, -np.inf)
    lo = np.full(inst.tree.n_nodes, np.inf)
    np.maximum.at(hi, parent[ok], tl.log_Z[ok])
    np.minimum.at(lo, parent[ok], tl.log_Z[ok])
    spread = hi - lo
    return float(np.max(spread[np.isfinite(spread)], initial=0.0))


def sweep_rows(inst_for, values) -> list[dict]:
    rows = []
    for v in values:
        inst = inst_for(v)
        sd, tok = sdsd_optimum(inst), sdsd_token_optimum(inst)
        rows.append({"value": float(v), "log_z_spread": sibling_log_z_spread(inst),
                     "tv": total_variation(tok, sd), "kl_sd_tok": kl(sd, tok),
                     "success_sd": success(sd, inst.reward), "success_tok": success(tok, inst.reward)})
    return rows


def compute(graph=GRAPH, policy=POLICY, n=N_SWEEP) -> dict:
    sweeps = {}
    for name, (param, values, spec) in SWEEPS.items():
        def inst_for(v, spec=spec):
            return prompt_instances(graph, policy, spec(float(v)), prompts=1)[1][0][1]
        sweeps[name] = {"parameter": param, "rows": sweep_rows(inst_for, values(n))}
    all_rows = [r for s in sweeps.values() for r in s["rows"]]
    zero_spread = [r["log_z_spread"] <= 1e-10 for r in all_rows]
    zero_dist = [r["tv"] <= 1e-10 for r in all_rows]
    return {"name": NAME, "graph": graph_label(graph), "policy": policy, "sweeps": sweeps,
            "p5_iff_holds_on_every_point": bool(zero_spread == zero_dist),
            "n_points": len(all_rows), "n_zero_spread": int(sum(zero_spread))}


MARKERS = {"copy": ("o", "#1f77b4", "copy teacher, lam"), "soft_route": ("^", "#d62728", "soft_route, sharpness κ"),
           "route_copying": ("s", "#2ca02c", "route-copying, eps")}


def draw(data):
    fig, (a, b) = new_figure(2, width=5.4)
    for name, s in data["sweeps"].items():
        marker, color, lab = MARKERS[name]
        rows = s["rows"]
        a.plot([r["log_z_spread"] for r in rows], [r["tv"] for r in rows], marker=marker, color=color, ls="none",
               ms=5, alpha=0.8, label=lab)
        b.plot([r["value"] / max(r2["value"] for r2 in rows) for r in rows], [r["tv"] for r in rows],
               marker=marker, color=color, ms=4, label=f"{lab} (max {max(r['value'] for r in rows):g})")
    a.set_xlabel("teachers' disagreement about the future:\nmax spread of log Z among sibling prefixes")
    a.set_ylabel("TV distance between π_tok and π_SD")
    a.set_title("Token level = sequence level exactly where Z is flat")
    a.set_xscale("symlog", linthresh=1e-3)
    a.legend(fontsize=8)
    b.set_xlabel("teacher parameter / its largest swept value")
    b.set_ylabel("TV distance between π_tok and π_SD")
    b.set_title("Along each sweep")
    b.legend(fontsize=8)
    fig.suptitle(f"Token-level vs sequence-level SDSD on {data['graph']}, first prompt,\nSTOP preference "
                 f"{data['policy'].get('stop_pref')}", fontsize=10)
    return fig
