"""Figure `collapse`: which loss mode, α and teacher schedule keep route diversity (theory.md §9).

On the graph of the `rounds` figure (both settings, route-copying teacher eps = 0.1), for every
loss mode, JS weight α and teacher schedule τ (τ = weight of the student in the EMA teacher,
state_k = (1 − τ)·state_{k−1} + τ·state(π_k); τ = 0 frozen, τ = 1 live):

    flow          N steps of θ ← θ − η·G_mode(θ; π(·|r=1), T_k) from π0 (`expected_gradient_flow`)
    fixed point   the on-policy fixed point G_mode = 0 reached from the flow's end
                  (`on_policy_fixed_point`, start = flow.policy, state = flow.state), with its
                  certificate (‖G‖, teacher gap, rounds); a FixedPointError is recorded, never hidden

and per point: success Σ π r, strategy-mass entropy H(π(route | r = 1)) and OOD success with the
base policy's dominant route blocked. `sampled` is not recomputed: its expected gradient is the
full α = 1 block (E_a[ℓ_a ∇log p_a] = ∇KL(p‖q)), which the data checks at π0 and at the flow's end.
"""
from __future__ import annotations

import math
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
import json
import multiprocessing

import numpy as np

from pcmi.checks import unit
from pcmi.errors import PcmiInputError
from pcmi.estimators import expected_gradient
from pcmi.flows import expected_gradient_flow, on_policy_fixed_point, on_policy_step, schedule_of
from pcmi.instance import demos_from_successes
from pcmi.metrics import ood_success, strategy_mass_entropy, strategy_masses, success
from pcmi.objectives import LossMode
from pcmi.tabular import TabularPolicy

from . import rounds
from ._common import blocked_by_dominant_route, graph_label, prompt_instances

NAME = "collapse"
GRAPH = rounds.GRAPH
SETTINGS = rounds.SETTINGS
TEACHER = {"kind": "route_copying", "eps": 0.1}
#: loss modes with a D_α weight (top-k: k = 1, of the student or of the teacher, with or without tail)
MODES = {"full": dict(kind="full"),
         "topk_student": dict(kind="topk", topk=1, topk_of="student", tail=False),
         "topk_student_tail": dict(kind="topk", topk=1, topk_of="student", tail=True),
         "topk_teacher": dict(kind="topk", topk=1, topk_of="teacher", tail=False),
         "topk_teacher_tail": dict(kind="topk", topk=1, topk_of="teacher", tail=True),
         "sequence": dict(kind="sequence")}
#: modes defined for α = 1 only
ALPHA_ONE = ("sequence",)
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
#: τ = 0 is the frozen teacher, τ = 1 the live one; 0.95 is the inverted-EMA bug (teacher keeps 5%)
TAUS = (0.0, 0.01, 0.05, 0.2, 0.95, 1.0)
N_STEPS, ETA, TOL = 100, 1.0, 1e-10
#: the public trainers' defaults (theory.md §7); SDPO's top-k 100 + tail is `full` on this graph
REFERENCES = {"sdpo": {"mode": "full", "alpha": 0.5, "tau": 0.05,
                       "what": "SDPO reference: α = 0.5, top-k 100 + tail (= full here), EMA τ = 0.05"},
              "trl": {"mode": "sampled", "alpha": 1.0, "tau": 0.05,
                      "what": "TRL: sampled-token reverse KL (α = 1), EMA τ = 0.05"}}
WORKERS = 2


def schedule_of_tau(tau: float) -> tuple[str, float | None]:
    """τ → (schedule, rate): 0 frozen, 1 live, else EMA with the student's weight τ."""
    tau = unit(tau, "tau")
    return ("frozen", None) if tau == 0 else ("live", None) if tau == 1 else ("ema", float(tau))


def default_max_rounds(tau: float) -> int:
    """Rounds allowed to the fixed point (a budget: a cell that needs more is marked not converged):
    600, plus 25/τ for an EMA teacher, whose gap to the student shrinks by the factor (1 − τ) per
    round (ln(1e10)/τ ≈ 23/τ rounds from gap 1 to the tolerance 1e-10)."""
    return 600 + (math.ceil(25 / tau) if 0 < tau < 1 else 0)


@lru_cache(maxsize=8)
def _setting(graph_json: str, policy_json: str, teacher_json: str):
    g, [(task, inst, ro)] = prompt_instances(json.loads(graph_json), json.loads(policy_json),
                                             json.loads(teacher_json), prompts=1)
    z, blocked = blocked_by_dominant_route(g, ro)
    return task, inst, int(z), np.asarray(blocked, bool)


def point_metrics(inst, blocked, log_pi) -> dict:
    """success, strategy masses and their entropy, OOD success of one policy."""
    return {"success": success(log_pi, inst.reward),
            "strategy_mass_entropy": strategy_mass_entropy(log_pi, inst.reward, inst.route),
            "strategy_masses": strategy_masses(log_pi, inst.reward, inst.route),
            "ood_success": ood_success(log_pi, inst.reward, blocked)}


def _gradient_gap(inst, sched, state, policy, mode_a, mode_b) -> float:
    """max |G_a − G_b| at one policy with its on-policy demonstrations and the schedule's teacher."""
    log_D = demos_from_successes(policy.log_seq, inst.reward)
    t = sched.teacher(state)
    return float(np.max(np.abs(expected_gradient(policy, t, log_D, mode_a).grad
                               - expected_gradient(policy, t, log_D, mode_b).grad)))


def cell(task: dict) -> dict:
    """One (setting, mode, α, τ) cell: the flow's end and the fixed point reached from it."""
    _, inst, _, blocked = _setting(task["graph"], task["policy"], task["teacher"])
    mode = LossMode(**MODES[task["mode"]], alpha=task["alpha"])
    kind, rate = schedule_of_tau(task["tau"])
    out = {"alpha": task["alpha"], "tau": task["tau"], "schedule": kind}
    pi0 = TabularPolicy.from_log_probs(inst.tree, inst.log_base)
    sched = schedule_of(inst, kind, rate)
    try:
        # G(π0) = 0 exactly: π0 is a fixed point of the step map, so the N-step flow is π0 itself
        g0 = on_policy_step(inst, pi0, sched, sched.state0, mode).norm
        steps = task["n_steps"] if g0 > 0 else 0
        flow = expected_gradient_flow(inst, mode, kind, rate, eta=task["eta"], n_steps=steps, blocked=blocked)
    except PcmiInputError as e:
        return {**out, "flow": {"error": str(e)}, "fixed_point": {"converged": False, "error": f"no flow: {e}"}}
    fin = np.isfinite(pi0.theta)
    out["flow"] = {**point_metrics(inst, blocked, flow.policy.log_seq), "grad_norm": flow.records[-1].grad_norm,
                   "grad_norm_at_pi0": g0, "steps_iterated": steps,
                   "max_logit_change": float(np.max(np.abs(flow.policy.theta[fin] - pi0.theta[fin])))}
    rounds_allowed = task["max_rounds"] or default_max_rounds(task["tau"])
    try:
        fp = on_policy_fixed_point(inst, mode, kind, rate, tol=task["tol"], max_rounds=rounds_allowed,
                                   start=flow.policy, state=flow.state)
        out["fixed_point"] = {"converged": True, **point_metrics(inst, blocked, fp.log_pi), **fp.certificate(),
                              "max_rounds": rounds_allowed}
    except PcmiInputError as e:  # FixedPointError, or a round that leaves the policy without a success
        out["fixed_point"] = {"converged": False, "error": str(e), "max_rounds": rounds_allowed,
                              "kind": type(e).__name__}
    at = {"pi0": (pi0, sched.state0),
          "flow_end": (flow.policy, flow.state)}
    if task["mode"] == "full" and task["alpha"] == 1:  # sampled's expected gradient is full α = 1's
        out["sampled_gradient_gap"] = max(_gradient_gap(inst, sched, s, p, LossMode("sampled"), mode)
                                          for p, s in at.values())
    if task["mode"] == "full" and 0 < task["alpha"] < 1:  # top-k 100 + tail is full when k ≥ the vocabulary
        k100 = LossMode("topk", task["alpha"], 100, "student", True)
        out["topk100_tail_gradient_gap"] = max(_gradient_gap(inst, sched, s, p, k100, mode) for p, s in at.values())
    return out


def _cost(task: dict) -> float:
    """Expected work of a cell (the slow EMA fixed points first, for load balance)."""
    return default_max_rounds(task["tau"]) * (0.1 if task["mode"] in ("topk_student", "topk_teacher") else 1.0)


def run_cells(tasks: list[dict], workers: int) -> list[dict]:
    """cell(task) for every task, in the order of `tasks` (ProcessPoolExecutor when workers > 1)."""
    if workers <= 1:
        return [cell(t) for t in tasks]
    order = sorted(range(len(tasks)), key=lambda i: -_cost(tasks[i]))
    # fork: the workers inherit the loaded modules and need no `if __name__ == "__main__"` guard
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as ex:
        done = list(ex.map(cell, [tasks[i] for i in order], chunksize=1))
    out = [None] * len(tasks)
    for i, r in zip(order, done):
        out[i] = r
    return out


def _alphas_of(mode: str, alphas) -> list[float]:
    return [1.0] if mode in ALPHA_ONE else [float(a) for a in alphas]


def compute(graph=GRAPH, settings=SETTINGS, teacher=TEACHER, modes=tuple(MODES), alphas=ALPHAS, taus=TAUS,
            n_steps=N_STEPS, eta=ETA, tol=TOL, max_rounds=None, workers=WORKERS) -> dict:
    """The grid of cells per setting; max_rounds=None: `default_max_rounds(τ)`."""
    for m in modes:
        if m not in MODES:
            raise PcmiInputError(f"unknown mode {m!r}; choose from {', '.join(MODES)}")
    taus = [float(t) for t in taus]
    for t in taus:
        schedule_of_tau(t)
    for m in modes:  # every (mode, α) is a valid LossMode before any work starts
        for a in _alphas_of(m, alphas):
            LossMode(**MODES[m], alpha=a)
    tasks = []
    for s, pol in settings.items():
        for m in modes:
            for t in taus:
                for a in _alphas_of(m, alphas):
                    tasks.append({"setting": s, "graph": json.dumps(graph, sort_keys=True),
                                  "policy": json.dumps(pol, sort_keys=True), "teacher": json.dumps(teacher, sort_keys=True),
                                  "mode": m, "alpha": a, "tau": t, "n_steps": n_steps, "eta": eta, "tol": tol,
                                  "max_rounds": max_rounds})
    results = iter(run_cells(tasks, workers))
    out = {"name": NAME, "graph": graph_label(graph), "teacher": teacher, "n_steps": n_steps, "eta": eta,
           "tol": tol, "max_rounds": "600 + ceil(25/τ) for EMA, 600 otherwise" if max_rounds is None else max_rounds,
           "alphas": [float(a) for a in alphas], "taus": taus,
           "tau_convention": "EMA state_k = (1 − τ)·state_{k−1} + τ·state(π_k): τ = weight of the student; "
                             "τ = 0 frozen, τ = 1 live",
           "modes": {m: {k: v for k, v in LossMode(**MODES[m]).as_dict().items() if k != "alpha"}
                     | {"alphas": _alphas_of(m, alphas)} for m in modes},
           "sampled": "not recomputed: its expected gradient is full α = 1's (checked per cell: sampled_gradient_gap)",
           "references": REFERENCES, "settings": {}}
    for s, pol in settings.items():
        task, inst, z, blocked = _setting(json.dumps(graph, sort_keys=True), json.dumps(pol, sort_keys=True),
                                          json.dumps(teacher, sort_keys=True))
        d = {"prompt": [task.source, task.target], "policy": pol, "dominant_route": z,
             "max_children": int(np.max(np.bincount(inst.tree.parent[1:]))),
             "base": point_metrics(inst, blocked, inst.log_base), "modes": {}}
        for m in modes:
            al = _alphas_of(m, alphas)
            d["modes"][m] = [[next(results) for _ in al] for _ in taus]
        d["summary"] = summary(d, taus)
        out["settings"][s] = d
    return out


def cells_of(d: dict):
    """(mode, cell) for every cell of one setting."""
    for m, grid in d["modes"].items():
        for row in grid:
            for c in row:
                yield m, c


#: a flow "moved" when some logit changed by more than this (G(π0) ≈ 1e-16 moves them by rounding only)
MOVED = 1e-6
#: a fixed point "collapsed" when its strategy-mass entropy is below this (all mass on one route; at a
#: certified collapsed point, ‖G‖ ≤ 1e-8, it is ≈ 1e-7)
COLLAPSED = 1e-4


def summary(d: dict, taus) -> dict:
    """Headline numbers of one setting: certified fixed points; the (mode, α) whose flow never moves
    from π0; among the cells that move, the largest fixed-point strategy-mass entropy for the frozen
    teacher and for τ > 0, how many τ > 0 fixed points collapsed (H < 1e-4) onto which route; and
    the checks that sampled ≡ full α = 1 and top-k 100 + tail ≡ full on this graph."""
    cells = list(cells_of(d))
    conv = [(m, c) for m, c in cells if c["fixed_point"]["converged"]]
    moves = lambda c: c["flow"].get("max_logit_change", 0) > MOVED  # noqa: E731
    static = sorted({(m, c["alpha"]) for m, c in cells} - {(m, c["alpha"]) for m, c in cells if moves(c)})
    out = {"cells": len(cells), "converged": len(conv),
           "not_converged": [[m, c["alpha"], c["tau"]] for m, c in cells if not c["fixed_point"]["converged"]],
           "static_mode_alpha": [list(x) for x in static]}
    for label, sel in (("frozen", lambda c: c["tau"] == 0), ("tau_positive", lambda c: c["tau"] > 0)):
        pool = [(m, c) for m, c in conv if sel(c) and moves(c)]
        if pool:
            m, c = max(pool, key=lambda mc: mc[1]["fixed_point"]["strategy_mass_entropy"])
            out[f"max_fixed_point_entropy_{label}"] = {"mode": m, "alpha": c["alpha"], "tau": c["tau"],
                                                       "strategy_mass_entropy": c["fixed_point"]["strategy_mass_entropy"]}
        if label == "tau_positive":
            down = [c for _, c in pool if c["fixed_point"]["strategy_mass_entropy"] < COLLAPSED]
            onto = {max(c["fixed_point"]["strategy_masses"].items(), key=lambda kv: kv[1])[0] for c in down}
            out["tau_positive_moved_certified"] = len(pool)
            out["tau_positive_collapsed"] = len(down)
            out["collapsed_onto_routes"] = sorted(int(z) for z in onto)
    gaps = [c["sampled_gradient_gap"] for _, c in cells if "sampled_gradient_gap" in c]
    if gaps:
        out["sampled_equals_full_alpha1"] = {"max_gradient_gap": max(gaps), "identical": bool(max(gaps) <= 1e-12)}
    gaps = [c["topk100_tail_gradient_gap"] for _, c in cells if "topk100_tail_gradient_gap" in c]
    if gaps:
        out["topk100_tail_equals_full"] = {"max_gradient_gap": max(gaps), "identical": bool(max(gaps) <= 1e-12)}
    return out


# --- drawing ---------------------------------------------------------------------------------

TITLES = {"all_correct": "every rollout correct", "failing": "with failing rollouts (STOP anywhere)"}
MODE_TITLES = {"full": "full vocabulary", "topk_student": "top-1 of student, renormalized",
               "topk_student_tail": "top-1 of student + tail", "topk_teacher": "top-1 of teacher, renormalized",
               "topk_teacher_tail": "top-1 of teacher + tail", "sequence": "sequence", "sampled": "sampled\n(≡ full α=1)"}
ROWS = (("flow", "strategy_mass_entropy", "H(route | correct)\nafter N steps"),
        ("fixed_point", "strategy_mass_entropy", "H(route | correct)\nat the fixed point"),
        ("fixed_point", "ood_success", "OOD success, dominant\nroute blocked, fixed point"))
REF_COLOR = "#e7298a"


def tau_label(t: float) -> str:
    return "0 frozen" if t == 0 else "1 live" if t == 1 else f"{t:g}"


def _matrix(grid, where, key):
    """(values, not converged) as τ × column arrays of one panel's grid of cells."""
    vals = np.full((len(grid), len(grid[0])), np.nan)
    nc = np.zeros(vals.shape, bool)
    for i, row in enumerate(grid):
        for j, c in enumerate(row):
            v = c[where].get(key)
            if v is None:
                nc[i, j] = True
            else:
                vals[i, j] = v
    return vals, nc


def panels(d) -> list[dict]:
    """The heatmaps of one setting: one per α mode (columns α), then one of the α = 1 modes
    (columns sequence, sampled; sampled shows full α = 1's cells, its expected flow)."""
    out = [{"title": MODE_TITLES[m], "grid": g, "columns": [f"{c['alpha']:g}" for c in g[0]],
            "modes": [m] * len(g[0])} for m, g in d["modes"].items() if m not in ALPHA_ONE]
    one = [(m, [row[0] for row in g]) for m, g in d["modes"].items() if m in ALPHA_ONE]
    if "full" in d["modes"]:
        j = next((j for j, c in enumerate(d["modes"]["full"][0]) if c["alpha"] == 1), None)
        if j is not None:
            one.append(("sampled", [row[j] for row in d["modes"]["full"]]))
    if one:
        out.append({"title": "α = 1 only", "grid": [list(cs) for cs in zip(*[col for _, col in one])],
                    "columns": [MODE_TITLES[m] for m, _ in one], "modes": [m for m, _ in one]})
    return out


def reference_cell(panel, ref) -> tuple[int, int] | None:
    """(row, column) of a trainer default in a panel, or None."""
    for j, m in enumerate(panel["modes"]):
        if m == ref["mode"] and panel["grid"][0][j]["alpha"] == ref["alpha"] or (m == ref["mode"] == "sampled"):
            for i, row in enumerate(panel["grid"]):
                if row[j]["tau"] == ref["tau"]:
                    return i, j
    return None


def _value_range(settings, key, wheres):
    vals = [d["base"][key] for d in settings.values()]
    vals += [c[w][key] for d in settings.values() for _, c in cells_of(d) for w in wheres if c[w].get(key) is not None]
    return max(vals)


def draw(data):
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    settings = data["settings"]
    layout = panels(next(iter(settings.values())))
    widths = [max(len(p["columns"]), 1.6) for p in layout]
    fig = Figure(figsize=(0.52 * sum(widths) + 2.4, 2.3 * len(ROWS) * len(settings) + 1.2), layout="constrained")
    subs = np.atleast_1d(fig.subfigures(len(settings), 1))
    norms = {"strategy_mass_entropy": Normalize(0, _value_range(settings, "strategy_mass_entropy", ("flow", "fixed_point"))),
             "ood_success": Normalize(0, _value_range(settings, "ood_success", ("fixed_point",)))}
    for sub, (setting, d) in zip(subs, settings.items()):
        axes = sub.subplots(len(ROWS), len(layout), squeeze=False, gridspec_kw={"width_ratios": widths})
        base = d["base"]
        for r, (where, key, ylabel) in enumerate(ROWS):
            norm = norms[key]
            for col, panel in enumerate(panels(d)):
                ax = axes[r, col]
                vals, nc = _matrix(panel["grid"], where, key)
                im = ax.imshow(np.ma.masked_invalid(vals), cmap="viridis", norm=norm, aspect="auto")
                ax.set_facecolor("0.85")
                for (i, j), v in np.ndenumerate(vals):
                    if nc[i, j]:
                        ax.text(j, i, "n.c.", ha="center", va="center", fontsize=6.5, color="#b2182b", fontweight="bold")
                    else:
                        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6.5,
                                color="white" if norm(v) < 0.55 else "black")
                ax.set_xticks(range(len(panel["columns"])), panel["columns"], fontsize=6.5)
                ax.set_yticks(range(len(panel["grid"])), [tau_label(row[0]["tau"]) for row in panel["grid"]]
                              if col == 0 else [], fontsize=7)
                if r == 0:
                    ax.set_title(panel["title"], fontsize=8.5)
                if r == len(ROWS) - 1 and panel["title"] != "α = 1 only":
                    ax.set_xlabel("α (0 forward, 1 reverse KL)", fontsize=7)
                if col == 0:
                    ax.set_ylabel(f"{ylabel}\n\nτ = weight of the student", fontsize=7.5)
                for name, ref in data["references"].items():  # the trainers' defaults
                    at = reference_cell(panel, ref)
                    if at is not None:
                        i, j = at
                        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec=REF_COLOR, lw=2.2))
                        ax.text(j + 0.46, i - 0.46, name.upper(), ha="right", va="top", fontsize=5.5,
                                color=REF_COLOR, fontweight="bold")
            cb = sub.colorbar(im, ax=axes[r, :].tolist(), shrink=0.9, pad=0.01)
            cb.ax.axhline(base[key], color=REF_COLOR, lw=2)
            cb.set_label(f"line: π0 = {base[key]:.3f}", fontsize=7)
        sub.suptitle(f"{TITLES.get(setting, setting)} (prompt {d['prompt'][0]}→{d['prompt'][1]}) — π0: success "
                     f"{base['success']:.3f}, H(route | correct) {base['strategy_mass_entropy']:.3f}, "
                     f"OOD success {base['ood_success']:.3f}", fontsize=10)
    fig.suptitle(f"Route diversity after N = {data['n_steps']} steps (η = {data['eta']:g}) of the exact expected-gradient "
                 f"flow and at its on-policy fixed point (‖G‖ ≤ {data['tol']:g})\n{data['graph']}, route-copying "
                 f"teacher eps = {data['teacher']['eps']}, on-policy demonstrations π(· | r = 1)\n"
                 "boxes: SDPO default (α = 0.5, top-k 100 + tail = full here, EMA τ = 0.05), TRL default "
                 "(sampled token, α = 1, EMA τ = 0.05); n.c. = no certified fixed point", fontsize=10)
    return fig
