"""Figure `discovery`: test-time discovery on graphs (theory.md §11, `pcmi.discovery`).

For each prompt (low-prior correct arm of a path-star, low-prior correct route of a multi-route DAG,
with and without a STOP action; and one target-blind DAG where p0 is not small), the probability of
at least one success within n attempts for

    best_of_n        every attempt from π0: 1 − (1 − p0)^n
    multi_turn       attempt i from π0 conditioned on all feedback so far (ideal filter, eps = 0)
    multi_turn_eps   the same teacher with eps = EPS mixed in
    ttsd_kl          after each failure π ← argmin KL(π ‖ T_π(·|f)) + κ KL(π ‖ π_i), eps = EPS, κ = KAPPA
    ttsd_tabular     after each failure one exact expected-gradient step (full, α = 1) of the tabular
                     policy toward its live feedback teacher, eps = EPS, step size η (two values)

and the ratio (best-of-n attempts) / (method attempts) to reach a target discovery probability —
the number SDPO reports as about 3×. Exact by enumeration over attempt histories (an interval
[lower, lower + pruned]); the TTSD methods with eps > 0 cannot merge histories, so their exact
interval is computed to N_EXACT attempts and a Monte Carlo estimate (RUNS runs) carries the
curve to N_MAX; every attempt count says where it comes from. TTSD-kl with eps = 0 is multi-turn
exactly (the data records the largest difference, 0 up to rounding).
"""
from __future__ import annotations

import networkx as nx
import numpy as np

import graphworld as gw
from graphworld.enumeration import enumerate_rollouts
from pcmi.discovery import (PRUNE, attempts_to_reach, best_of_n, best_of_n_attempts, discovery_curve,
                            monte_carlo_curve, problem_from_rollouts, simulate_discovery)
from pcmi.errors import PcmiInputError

from ._common import new_figure

NAME = "discovery"
EPS, KAPPA = 0.1, 1.0
#: prompt name → how to build it (`build_prompt`)
PROMPTS = {
    "path_star": {"graph": "path_star", "degree": 6, "length": 3, "seed": 0, "stop_pref": None},
    "path_star_stop": {"graph": "path_star", "degree": 6, "length": 3, "seed": 0, "stop_pref": -1.0},
    "dag_low_route": {"graph": "dag_cut", "k_routes": 4, "depth": 2, "branching": 2, "seed": 0, "stop_pref": None},
    "dag_low_route_stop": {"graph": "dag_cut", "k_routes": 4, "depth": 2, "branching": 2, "seed": 0,
                           "stop_pref": -1.0},
    "dag_two_targets": {"graph": "dag", "k_routes": 3, "depth": 2, "branching": 2, "seed": 0, "stop_pref": None},
}
#: method name → (pcmi.discovery method, parameters); best_of_n is the closed form
METHODS = {
    "best_of_n": ("best_of_n", {}),
    "multi_turn": ("multi_turn", {"eps": 0.0}),
    "multi_turn_eps": ("multi_turn", {"eps": EPS}),
    "ttsd_kl": ("ttsd", {"eps": EPS, "kappa": KAPPA}),
    "ttsd_tabular": ("ttsd", {"eps": EPS, "step": "tabular", "eta": 1.0}),
    "ttsd_tabular_eta10": ("ttsd", {"eps": EPS, "step": "tabular", "eta": 10.0}),
}
TARGETS = (0.5, 0.9)
N_MAX, N_EXACT, RUNS, MAX_STATES = 64, 9, 2000, 20_000
COLORS = {"best_of_n": "#555555", "multi_turn": "#1f77b4", "multi_turn_eps": "#17becf", "ttsd_kl": "#d62728",
          "ttsd_tabular": "#ff7f0e", "ttsd_tabular_eta10": "#9467bd"}
LABELS = {"best_of_n": "best-of-n from π0", "multi_turn": "multi-turn, ideal filter (eps = 0)",
          "multi_turn_eps": f"multi-turn, eps = {EPS:g}", "ttsd_kl": f"TTSD, KL step (eps = {EPS:g}, κ = {KAPPA:g})",
          "ttsd_tabular": f"TTSD, tabular gradient step (eps = {EPS:g}, η = 1)",
          "ttsd_tabular_eta10": f"TTSD, tabular gradient step (eps = {EPS:g}, η = 10)"}


def _lowest_prior_task(g, policy):
    """The prompt of g whose target the base policy reaches least often, with its rollouts."""
    best = None
    for t in gw.tasks_of(g):
        ro = enumerate_rollouts(t, policy, pool_failures=False)
        p = float(np.exp(ro.log_prob[ro.reward == 1]).sum())
        if best is None or p < best[0]:
            best = (p, t, ro)
    return best[1], best[2]


def low_route_dag(k_routes, depth, branching, seed, policy):
    """multi_route_dag with one source and two targets; the edges into the first target are cut on
    every route but the one the base policy takes least often, so only that low-prior route succeeds
    (the other routes can still end at the second target)."""
    g = gw.multi_route_dag(k_routes, depth, branching, seed, n_sources=1, n_targets=2)
    t = gw.tasks_of(g)[0]
    ro = enumerate_rollouts(t, policy, pool_failures=False)
    mass = {}
    for lp, z, r in zip(ro.log_prob, ro.route, ro.reward):
        if r:
            mass[int(z)] = mass.get(int(z), 0.0) + float(np.exp(lp))
    z_low = min(mass, key=mass.get)
    for u in list(g.predecessors(t.target)):
        if g.nodes[u].get("route") != z_low:
            g.remove_edge(u, t.target)
    g.graph["name"] = f"{g.graph.get('name', 'dag')}, only route {z_low} reaches {t.target}"
    return gw.Task(g, t.source, t.target, nx.dag_longest_path_length(g)), z_low


def build_prompt(spec: dict):
    """(task, rollouts, description) of one prompt spec (rollouts unpooled, for feedback)."""
    policy = gw.EdgePolicy(stop_pref=spec.get("stop_pref"))
    kind = spec["graph"]
    if kind == "path_star":
        g = gw.path_star(spec["degree"], spec["length"], seed=spec["seed"])
        task, ro = _lowest_prior_task(g, policy)
        what = f"path_star(degree={spec['degree']}, length={spec['length']}, seed={spec['seed']}), lowest-prior arm"
    elif kind == "dag_cut":
        task, z = low_route_dag(spec["k_routes"], spec["depth"], spec["branching"], spec["seed"], policy)
        ro = enumerate_rollouts(task, policy, pool_failures=False)
        what = (f"multi_route_dag(k_routes={spec['k_routes']}, depth={spec['depth']}, branching={spec['branching']}, "
                f"seed={spec['seed']}, n_targets=2), only the lowest-prior route {z} reaches the target")
    elif kind == "dag":
        g = gw.multi_route_dag(spec["k_routes"], spec["depth"], spec["branching"], spec["seed"], n_sources=1,
                               n_targets=2)
        task = gw.tasks_of(g)[0]
        ro = enumerate_rollouts(task, policy, pool_failures=False)
        what = (f"multi_route_dag(k_routes={spec['k_routes']}, depth={spec['depth']}, branching={spec['branching']}, "
                f"seed={spec['seed']}, n_targets=2), target-blind base policy")
    else:
        raise PcmiInputError(f"unknown prompt graph {kind!r}; choose path_star, dag_cut or dag")
    if spec.get("stop_pref") is not None:
        what += f", STOP preference {spec['stop_pref']:g}"
    return task, ro, what


def _attempts(p0, curve, target, n_max):
    """Attempts to reach `target` on one method's curve: {"n", "ratio", "source", "n_range"}."""
    best = best_of_n_attempts(p0, target)
    out = {"best_of_n": best}
    if curve["kind"] == "closed_form":
        return {**out, "n": best, "ratio": 1.0 if best is not None else None, "source": "closed_form"}
    lo, hi = curve["exact"]["discovery"], curve["exact"]["upper"]
    n_hi, n_lo = attempts_to_reach(lo, target), attempts_to_reach(hi, target)
    if n_hi is not None and n_hi == n_lo:
        n, src = n_hi, "exact"
    elif "monte_carlo" in curve:
        mc = np.asarray(curve["monte_carlo"]["discovery"])
        se = np.sqrt(mc * (1 - mc) / curve["monte_carlo"]["runs"])
        n, src = attempts_to_reach(mc, target), "monte_carlo"
        # the attempts at which the ±2 SE band of the estimate crosses the target
        out["n_monte_carlo_2se"] = [attempts_to_reach(np.minimum(mc + 2 * se, 1), target),
                                    attempts_to_reach(np.maximum(mc - 2 * se, 0), target)]
    else:
        n, src = n_hi, "exact_bound"
    out.update(n=n, source=src, n_range=[n_lo, n_hi],
               ratio=None if n is None or best is None else best / n)
    if n is None and best is not None:  # not reached within n_max attempts: the ratio is below best / n_max
        out.update(not_reached_within=n_max, ratio_at_most=best / n_max)
    return out


def prompt_data(name, spec, methods, targets, n_max, n_exact, runs, max_states, seed) -> dict:
    task, ro, what = build_prompt(spec)
    P = problem_from_rollouts(ro)
    outcomes = {}
    for o, r in zip(ro.outcome, ro.reward):
        outcomes[o] = outcomes.get(o, 0) + 1
    d = {"name": name, "what": what, "prompt": [task.source, task.target], "max_len": task.max_len,
         "n_rollouts": P.n, "n_feedback_classes": P.n_classes, "outcomes": outcomes, "p0": P.p0,
         "feedback": list(P.labels), "curves": {}, "attempts": {}}
    for m in methods:
        method, kw = METHODS[m]
        if method == "best_of_n":
            d["curves"][m] = {"kind": "closed_form", "discovery": best_of_n(P.p0, n_max)}
            continue
        merged = method == "multi_turn" or kw.get("eps", 0) == 0 and kw.get("step", "kl") == "kl"
        horizon = n_max if merged else min(n_exact, n_max)
        c = discovery_curve(P, method, horizon, max_states=max_states, **kw)
        entry = {"kind": "exact" if merged else "exact+monte_carlo", "params": c.params,
                 "exact": {"discovery": c.discovery, "upper": c.upper, "pruned": c.pruned, "n_states": c.n_states}}
        if not merged:
            first = simulate_discovery(P, method, n_max, runs, seed, batched_tabular=True, **kw)
            mc = monte_carlo_curve(first, n_max)
            entry["monte_carlo"] = {"runs": runs, "seed": seed, "discovery": mc,
                                    "standard_error": np.sqrt(mc * (1 - mc) / runs),
                                    "max_z_vs_exact": _max_z(c, mc[:horizon], runs)}
        d["curves"][m] = entry
    if "multi_turn" in methods:  # TTSD-kl with an ideal filter is multi-turn (pcmi.discovery)
        tt = discovery_curve(P, "ttsd", n_max, eps=0.0, kappa=KAPPA, max_states=max_states)
        mt = d["curves"]["multi_turn"]["exact"]["discovery"]
        d["ttsd_kl_eps0_minus_multi_turn"] = float(np.max(np.abs(tt.discovery - mt)))
    for t in targets:
        d["attempts"][f"{t:g}"] = {m: _attempts(P.p0, d["curves"][m], t, n_max) for m in methods}
    return d


def _max_z(exact, mc, runs) -> float:
    """max_n |MC − exact lower end| / (SE + pruned + 1/R): how far Monte Carlo sits from the exact interval."""
    p = exact.discovery
    se = np.sqrt(p * (1 - p) / runs)
    return float(np.max(np.abs(mc - p) / (se + exact.pruned + 1.0 / runs)))


def compute(prompts=tuple(PROMPTS), methods=tuple(METHODS), targets=TARGETS, n_max=N_MAX, n_exact=N_EXACT,
            runs=RUNS, max_states=MAX_STATES, seed=0) -> dict:
    for p in prompts:
        if p not in PROMPTS:
            raise PcmiInputError(f"unknown prompt {p!r}; choose from {', '.join(PROMPTS)}")
    for m in methods:
        if m not in METHODS:
            raise PcmiInputError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    labels = {m: {"label": LABELS[m], "method": METHODS[m][0], "params": METHODS[m][1]} for m in methods}
    data = {"name": NAME, "eps": EPS, "kappa": KAPPA, "targets": list(targets), "n_max": n_max, "n_exact": n_exact,
            "runs": runs, "max_states": max_states, "prune": PRUNE, "methods": labels,
            "prompts": {p: prompt_data(p, PROMPTS[p], methods, targets, n_max, n_exact, runs, max_states, seed)
                        for p in prompts}}
    data["summary"] = summary(data)
    return data


def summary(data) -> dict:
    """Per target and method: the attempt ratio per prompt, how many prompts reach 3×, min and max."""
    out = {}
    for t in data["targets"]:
        key = f"{t:g}"
        row = {}
        for m in data["methods"]:
            if m == "best_of_n":
                continue
            ratios = {p: d["attempts"][key][m]["ratio"] for p, d in data["prompts"].items()}
            known = [r for r in ratios.values() if r is not None]
            row[m] = {"ratio": ratios, "at_least_3x": sum(r >= 3 for r in known), "prompts_with_ratio": len(known),
                      "never_reached": {p: d["attempts"][key][m].get("ratio_at_most")
                                        for p, d in data["prompts"].items() if ratios[p] is None},
                      "min": min(known) if known else None, "max": max(known) if known else None}
        out[key] = row
    return out


# --- drawing ---------------------------------------------------------------------------------

def draw(data):
    prompts = data["prompts"]
    methods = list(data["methods"])
    ncols = min(3, len(prompts) + 1)
    nrows = -(-(len(prompts) + 1) // ncols)
    fig, axes = new_figure(ncols, nrows, width=4.6, height=3.5)
    axes = np.atleast_1d(axes)
    for ax, (name, d) in zip(axes, prompts.items()):
        n = np.arange(1, data["n_max"] + 1)
        for m in methods:
            c = d["curves"][m]
            col = COLORS[m]
            if c["kind"] == "closed_form":
                ax.plot(n, c["discovery"], color=col, lw=2, label=LABELS[m])
                continue
            ex = c["exact"]
            k = np.arange(1, len(ex["discovery"]) + 1)
            ax.plot(k, ex["discovery"], color=col, lw=1.6, label=LABELS[m])
            ax.fill_between(k, ex["discovery"], ex["upper"], color=col, alpha=0.2, lw=0)
            if "monte_carlo" in c:
                ax.plot(n, c["monte_carlo"]["discovery"], color=col, lw=1.2, ls=":")
        for t in data["targets"]:
            ax.axhline(t, color="0.7", lw=0.7, ls="--")
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("attempts n")
        ax.set_ylabel("P(≥ 1 success within n)")
        nf = d["n_feedback_classes"]
        ax.set_title(f"{name}: p0 = {d['p0']:.4f}, {nf} feedback class{'es' if nf != 1 else ''}", fontsize=8.5)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 3), fontsize=7.5)
    ax = axes[len(prompts)]
    others = [m for m in methods if m != "best_of_n"]
    width = 0.8 / max(len(others) * len(data["targets"]), 1)
    x = np.arange(len(prompts))
    j = 0
    for t in data["targets"]:
        for m in others:
            vals = [d["attempts"][f"{t:g}"][m]["ratio"] for d in prompts.values()]
            h = [v if v is not None else np.nan for v in vals]
            at = x - 0.4 + width * (j + 0.5)
            first = t == data["targets"][0]
            ax.bar(at, h, width, color=COLORS[m], alpha=1.0 if first else 0.5, edgecolor="none" if first else "k",
                   lw=0.4)
            for xa, v in zip(at, vals):
                if v is None:
                    ax.text(xa, 1, "×", ha="center", va="bottom", fontsize=7, color=COLORS[m])
            j += 1
    ax.axhline(3, color="k", lw=1, ls="--")
    ax.text(len(prompts) - 0.5, 3, "3×", va="bottom", ha="right", fontsize=8)
    ax.axhline(1, color="0.5", lw=0.7)
    ax.set_yscale("log")
    ax.set_xticks(x, list(prompts), rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("best-of-n attempts / method attempts")
    ax.set_title(f"attempt ratio at target {' (solid), '.join(f'{t:g}' for t in data['targets'])} (outlined)\n"
                 "× = target not reached within n_max", fontsize=8)
    for a in axes[len(prompts) + 1:]:
        a.set_visible(False)
    fig.suptitle("Test-time discovery on graphs: exact curves (band = pruned mass), dotted = Monte Carlo "
                 f"({data['runs']} runs) for TTSD with eps > 0 beyond the exact horizon {data['n_exact']}", fontsize=9)
    return fig
