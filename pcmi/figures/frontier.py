"""Figure `frontier`: the remedies for SDSD's collapse on success × diversity and success × OOD
(theory.md §10, issue 11; closed forms in pcmi.remedies, derivations in docs/remedies.md).

On the graph of the `rounds` figure (both settings, route-copying teacher eps = 0.1), for every
remedy of `pcmi.remedies.REMEDIES` and every knob value on its grid:

    one round     the remedy's optimum against π0's demonstrations and teacher
    fixed point   its on-policy rounds (D_k = π_k(·|r=1), teacher rebuilt from π_k, KL reference π0
                  frozen) until TV between rounds ≤ 1e-10; a point that does not get there is marked

and per point: success, strategy-mass entropy H(π(route | r = 1)), OOD success with the base
policy's dominant route blocked, KL(π‖π0). Matched points: the knob at which KL(π‖π0) equals
SDSD's one-round KL(π_SD‖π0), for the one-round optimum and for the fixed point separately
(`pcmi.remedies.matched_knob`). The Pareto sets (maximize both axes) are over the matched points.
"""
from __future__ import annotations

import json
import os

import numpy as np

from pcmi.distributions import kl
from pcmi.errors import PcmiInputError
from pcmi.remedies import REMEDIES, knob_grid, matched_knob, remedy_metrics, remedy_optimum, remedy_rounds

from . import rounds
from ._common import blocked_by_dominant_route, graph_label, new_figure, prompt_instances

NAME = "frontier"
GRAPH = rounds.GRAPH
SETTINGS = rounds.SETTINGS
TEACHER = {"kind": "route_copying", "eps": 0.1}
REMEDY_NAMES = tuple(REMEDIES)
N_KNOBS = 9
MAX_ROUNDS = 2000
PANELS = (("strategy_mass_entropy", "H(π(route | correct)) [nats]"),
          ("ood_success", "OOD success, dominant route blocked"))
COLORS = {"sdsd": "#d62728", "rl": "#1f77b4", "blend": "#17becf", "split": "#2ca02c", "forward_kl": "#bcbd22",
          "js": "#8c564b", "contrastive": "#9467bd", "entropy": "#ff7f0e", "anchor": "#e377c2", "dstar": "#7f7f7f"}
LABELS = {"sdsd": "SDSD", "rl": "RL (β)", "blend": "λ-blend RL/SDSD", "split": "SDSD on failures + RL on successes (β)",
          "forward_kl": "forward KL", "js": "JS(α)", "contrastive": "contrastive (β)", "entropy": "entropy bonus (η)",
          "anchor": "anchor to π0 (κ)", "dstar": "SDSD with D*"}


#: two metrics closer than this count as equal in the Pareto comparison (the blend and the anchor are
#: one family when every rollout is correct and β = 1: their matched points agree to ~1e-12)
PARETO_TOL = 1e-9


def pareto_set(points, tol: float = PARETO_TOL) -> list[int]:
    """Indices of the points (x, y), both maximized, that no other point dominates: j dominates i when
    x_j ≥ x_i − tol and y_j ≥ y_i − tol and x_j > x_i + tol or y_j > y_i + tol."""
    pts = np.asarray(points, float).reshape(-1, 2)
    x, y = pts[:, 0], pts[:, 1]
    ge = (x[:, None] >= x[None, :] - tol) & (y[:, None] >= y[None, :] - tol)  # [j, i]
    gt = (x[:, None] > x[None, :] + tol) | (y[:, None] > y[None, :] + tol)
    return [int(i) for i in np.flatnonzero(~np.any(ge & gt, axis=0))]


def _point(inst, blocked, log_pi, cert=None) -> dict:
    out = remedy_metrics(inst, log_pi, blocked)
    if cert is not None:
        out["certificate"] = cert
    return out


def _fixed(inst, blocked, name, knob, max_rounds) -> dict:
    rr = remedy_rounds(inst, name, knob, max_rounds)
    return _point(inst, blocked, rr.log_pi, rr.certificate()), rr


def remedy_data(inst, blocked, name, target, n_knobs, max_rounds) -> dict:
    """Curve (knob grid), matched points and, for a point remedy, its one-round and fixed point."""
    rem = REMEDIES[name]
    out = {"knob": rem.knob, "definition": rem.definition}
    try:
        if rem.knob is None:
            rr = remedy_rounds(inst, name, None, max_rounds)
            out["one_round"] = _point(inst, blocked, rr.one_round)
            out["fixed_point"] = _point(inst, blocked, rr.log_pi, rr.certificate())
            return out
        grid = knob_grid(name, n_knobs)
        curve, kls = [], {"one_round": [], "fixed_point": []}
        for v in grid:
            one = _point(inst, blocked, remedy_optimum(inst, name, float(v)))
            fp, rr = _fixed(inst, blocked, name, float(v), max_rounds)
            curve.append({"knob": float(v), "one_round": one, "fixed_point": fp})
            kls["one_round"].append(one["kl_to_base"])
            kls["fixed_point"].append(fp["kl_to_base"] if rr.converged else np.nan)
        out["curve"] = curve
        out["matched"] = {}
        for point in ("one_round", "fixed_point"):
            m = matched_knob(inst, name, target, point=point, n_rounds=max_rounds, scan=(grid, kls[point]))
            rec = {"knob": m.knob, "roots": m.roots, "kl": m.kl, "residual": m.residual,
                   "monotone_on_grid": m.monotone_on_grid, "proved": m.proved, "note": m.note}
            if m.knob is not None:
                if point == "one_round":
                    rec.update(_point(inst, blocked, remedy_optimum(inst, name, m.knob)))
                else:
                    rec.update(_fixed(inst, blocked, name, m.knob, max_rounds)[0])
            out["matched"][point] = rec
    except (PcmiInputError, ImportError) as e:  # e.g. pcmi.demonstrations not there yet: said, not hidden
        out["unavailable"] = f"{type(e).__name__}: {e}"
    return out


def pareto_of(remedies: dict, point: str) -> dict:
    """{panel key: [remedy names on the Pareto set of (metric, success)]} over the matched points."""
    names = [n for n, d in remedies.items() if d.get("matched", {}).get(point, {}).get("knob") is not None]
    out = {}
    for key, _ in PANELS:
        pts = [(remedies[n]["matched"][point][key], remedies[n]["matched"][point]["success"]) for n in names]
        out[key] = [names[i] for i in pareto_set(pts)]
    return out


def setting_data(graph, policy, teacher, remedies, n_knobs, max_rounds) -> dict:
    g, [(task, inst, ro)] = prompt_instances(graph, policy, teacher, prompts=1)
    z, blocked = blocked_by_dominant_route(g, ro)
    blocked = np.asarray(blocked, bool)
    target = kl(remedy_optimum(inst, "sdsd"), inst.log_base)
    rem = {n: remedy_data(inst, blocked, n, target, n_knobs, max_rounds) for n in remedies}
    pareto = {p: pareto_of(rem, p) for p in ("one_round", "fixed_point")}
    return {"prompt": [task.source, task.target], "policy": policy, "dominant_route": int(z),
            "target_kl": target, "base": _point(inst, blocked, inst.log_base), "remedies": rem, "pareto": pareto}


#: the trained remedies (`pcmi train --grid remedies`), drawn as a third row when the results are there
TRAINED_RUNS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                            "figures", "training", "remedies", "runs")
TRAINED_ORDER = ("sdsd_full_a1", "rl", "sdsd_inverse_prob", "sdsd_inverse_prob_0.75", "blend_0.95", "blend_0.98")
TRAINED_LABELS = {"sdsd_full_a1": "SDSD", "rl": "RL (β = 0.1)", "sdsd_inverse_prob": "SDSD, D ∝ π^−1 (γ = 1)",
                  "sdsd_inverse_prob_0.75": "SDSD, D ∝ π^−0.75", "blend_0.95": "λ-blend λ = 0.95",
                  "blend_0.98": "λ-blend λ = 0.98"}
TRAINED_COLORS = {"sdsd_full_a1": "#d62728", "rl": "#1f77b4", "sdsd_inverse_prob": "#7f7f7f",
                  "sdsd_inverse_prob_0.75": "#bcbd22", "blend_0.95": "#17becf", "blend_0.98": "#2ca02c"}


def trained_points(runs=TRAINED_RUNS) -> dict | None:
    """Per trained setting of the remedies grid: mean success, strategy-mass entropy and OOD success over
    its (seed, prompt) units, each with its 95 % bootstrap interval (pcmi.training.intervals), trained and
    predicted (the setting's own on-policy fixed point, where certified). None without the results."""
    if not os.path.isdir(runs):
        return None
    from pcmi.training.intervals import interval
    out = {}
    for name in TRAINED_ORDER:
        folder = os.path.join(runs, name)
        if not os.path.isdir(folder):
            continue
        units = []
        for f in sorted(os.listdir(folder)):
            if f.endswith(".json"):
                with open(os.path.join(folder, f)) as fh:
                    units += json.load(fh)["units"]
        row = {"n_units": len(units), "label": TRAINED_LABELS[name]}
        for key in ("success", "strategy_entropy", "ood_success"):
            row[key] = list(interval(np.array([u[key] for u in units]), "mean"))
            pred = [u["predicted"][key] for u in units if "predicted" in u]
            row["predicted_" + key] = list(interval(np.array(pred), "mean")) if pred else None
        out[name] = row
    return out or None


def compute(graph=GRAPH, settings=SETTINGS, teacher=TEACHER, remedies=REMEDY_NAMES, n_knobs=N_KNOBS,
            max_rounds=MAX_ROUNDS, trained_runs=TRAINED_RUNS) -> dict:
    for n in remedies:
        if n not in REMEDIES:
            raise PcmiInputError(f"unknown remedy {n!r}; choose from {', '.join(REMEDIES)}")
    return {"name": NAME, "graph": graph_label(graph), "teacher": teacher, "n_knobs": n_knobs,
            "max_rounds": max_rounds, "tol": 1e-10, "reference": "initial (KL terms to the frozen π0)",
            "target": "KL(π‖π0) = SDSD's one-round KL(π_SD‖π0)", "pareto_tol": PARETO_TOL,
            "settings": {k: setting_data(graph, p, teacher, remedies, n_knobs, max_rounds) for k, p in settings.items()},
            "trained": trained_points(trained_runs) if trained_runs else None,
            "trained_source": "pcmi train --grid remedies (config small, 5 seeds × 8 prompts; figures/training/remedies)"}


# --- drawing ---------------------------------------------------------------------------------

TITLES = {"all_correct": "every rollout correct", "failing": "with failing rollouts (STOP anywhere)"}


def draw(data):
    settings = data["settings"]
    trained = data.get("trained")
    fig, axes = new_figure(len(PANELS), len(settings) + bool(trained), width=5.6, height=4.4)
    axes = np.asarray(axes).reshape(len(settings) + bool(trained), len(PANELS))
    if trained:
        _draw_trained(axes[-1], trained)
    for row, (setting, d) in zip(axes, settings.items()):
        for ax, (key, xlabel) in zip(row, PANELS):
            for name, r in d["remedies"].items():
                c = COLORS.get(name, "k")
                if "curve" in r:
                    pts = [(p["fixed_point"][key], p["fixed_point"]["success"]) for p in r["curve"]
                           if p["fixed_point"]["certificate"]["converged"] and p["fixed_point"][key] is not None]
                    if pts:
                        ax.plot(*zip(*pts), "-", color=c, lw=1.4, alpha=0.8, label=LABELS.get(name, name))
                    one = [(p["one_round"][key], p["one_round"]["success"]) for p in r["curve"]
                           if p["one_round"][key] is not None]
                    ax.plot(*zip(*one), ":", color=c, lw=1.0, alpha=0.6)
                    for point, marker, fill in (("one_round", "o", "none"), ("fixed_point", "o", c)):
                        m = r["matched"][point]
                        if m.get("knob") is not None and m.get(key) is not None:
                            on = name in d["pareto"][point][key]
                            ax.plot(m[key], m["success"], marker, ms=8 if on else 6, mfc=fill, mec=c, mew=1.6)
                            if on:
                                ax.plot(m[key], m["success"], "o", ms=13, mfc="none", mec="k", mew=1.0)
                elif "fixed_point" in r:
                    for point, marker, fill in (("one_round", "s", "none"), ("fixed_point", "s", c)):
                        p = r[point]
                        if p.get(key) is not None:
                            ax.plot(p[key], p["success"], marker, ms=7, mfc=fill, mec=c, mew=1.6,
                                    label=LABELS.get(name, name) if point == "fixed_point" else None)
            b = d["base"]
            ax.plot(b[key], b["success"], "*", ms=12, color="k", label="base π0")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("success probability")
            ax.set_title(f"{TITLES.get(setting, setting)}: success vs {'route entropy' if key != 'ood_success' else 'OOD success'}",
                         fontsize=9)
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=6.5, loc="best")
    fig.suptitle(f"Remedies for SDSD's collapse on {data['graph']}, route-copying teacher eps={data['teacher']['eps']}\n"
                 "lines: on-policy fixed points over each knob (dotted: one round); at KL(π‖π0) = SDSD's one-round KL:\n"
                 "filled dot = fixed point, open dot = one round, black ring = Pareto set; squares: knob-free remedies "
                 "(filled = fixed point)", fontsize=9)
    return fig


def _draw_trained(row, trained: dict) -> None:
    """The trained remedies: mean over (seed, prompt) units with 95 % bootstrap intervals (filled), and
    each setting's predicted on-policy fixed point (open, dashed interval)."""
    for ax, (panel_key, xlabel) in zip(row, PANELS):
        key = {"strategy_mass_entropy": "strategy_entropy"}.get(panel_key, panel_key)
        for name, r in trained.items():
            c = TRAINED_COLORS.get(name, "k")
            x, y = r[key], r["success"]
            ax.errorbar(x[0], y[0], xerr=[[x[0] - x[1]], [x[2] - x[0]]], yerr=[[y[0] - y[1]], [y[2] - y[0]]],
                        fmt="o", color=c, ms=7, capsize=3, label=f"{r['label']} (trained)")
            px, py = r.get("predicted_" + key), r.get("predicted_success")
            if px and py:
                ax.errorbar(px[0], py[0], xerr=[[px[0] - px[1]], [px[2] - px[0]]], fmt="o", mfc="none", color=c,
                            ms=7, capsize=2, ls="none", alpha=0.7)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("success probability")
        ax.set_title(f"trained (config small, 40 units, 95% CI; open = predicted): success vs "
                     f"{'route entropy' if key != 'ood_success' else 'OOD'}", fontsize=8)
        ax.grid(alpha=0.3)
    row[0].legend(fontsize=6.5, loc="best")
