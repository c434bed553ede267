"""Figure `phase`: where SDSD amplifies the gap between strategies, and where it does not (P4).

Two strategies a (heavier among correct rollouts) and b, two correct rollouts each (split
0.6/0.4 inside the strategy). Amplification gain of a policy π:

    gain = log[π(a | r=1)/π(b | r=1)] − log[π0(a | r=1)/π0(b | r=1)]   (> 0: the gap widens)

computed from `sdsd_optimum` on the instance. Panels:
1. route-copying teacher, every rollout correct, over (w_a/w_b, eps): P4 says gain > 0 everywhere;
   cross-checked against the closed form log mass_SD(z) = const + log w_z + D_z·log(1 + (1−eps)/(eps·w_z));
2. route-copying teacher, strategy a also has a failing rollout (a's success rate q_a), over
   (correct-mass ratio D_a/D_b, q_a) at eps = 0.1: a heavier but unreliable a can lose;
3. overlapping strategies (soft_route teacher, responsibilities softmax_z(κ·1[route(y) = z])),
   every rollout correct, over (w_a/w_b, κ) at eps = 0.1.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from pcmi.distributions import safe_log
from pcmi.graph_instance import make_teacher
from pcmi.instance import Instance, demos_from_successes
from pcmi.metrics import strategy_masses
from pcmi.policies import sdsd_optimum

from ._common import new_figure

NAME = "phase"
SPLIT = (0.6, 0.4)   # law of the two correct rollouts inside each strategy
EPS_FIXED = 0.1
N_GRID = 25


def two_strategy_instance(w_a: float, q_a: float = 1.0, teacher=None) -> Instance:
    """Rollouts a1, a2 (correct), [a_fail (wrong, mass w_a(1−q_a))], b1, b2 (correct)."""
    w_b = 1.0 - w_a
    p = [w_a * q_a * SPLIT[0], w_a * q_a * SPLIT[1]] + ([w_a * (1 - q_a)] if q_a < 1 else []) \
        + [w_b * SPLIT[0], w_b * SPLIT[1]]
    route = np.array([0, 0] + ([0] if q_a < 1 else []) + [1, 1])
    reward = np.array([1, 1] + ([0] if q_a < 1 else []) + [1, 1])
    log_base = safe_log(np.array(p) / np.sum(p))
    t = make_teacher(SimpleNamespace(log_prob=log_base, route=route), teacher)
    return Instance(log_base, reward, t, demos_from_successes(log_base, reward), route=route,
                    name=f"two strategies w_a={w_a:.4g} q_a={q_a:.4g} {teacher}")


def amplification_gain(inst: Instance, log_pi) -> float:
    """log odds a:b among correct rollouts under π minus the same under π0."""
    m, m0 = strategy_masses(log_pi, inst.reward, inst.route), strategy_masses(inst.log_base, inst.reward, inst.route)
    return float(np.log(m[0] / m[1]) - np.log(m0[0] / m0[1]))


def closed_form_gain(w_a: float, q_a: float, eps: float) -> float:
    """From log mass_SD(z) = const + log w_z + D_z·log(1 + (1−eps)/(eps·w_z)); ratios inside a
    strategy are kept, so correct masses carry the same factor: gain = Σ_z ±D_z·log(1 + (1−eps)/(eps·w_z))."""
    w_b = 1 - w_a
    d_a = w_a * q_a / (w_a * q_a + w_b)
    f = lambda w: np.log1p((1 - eps) / (eps * w))  # noqa: E731
    return float(d_a * f(w_a) - (1 - d_a) * f(w_b))


def grid_gain(xs, ys, make) -> np.ndarray:
    """gain[i, j] for y = ys[i], x = xs[j]; make(x, y) -> Instance."""
    out = np.empty((len(ys), len(xs)))
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            inst = make(x, y)
            out[i, j] = amplification_gain(inst, sdsd_optimum(inst))
    return out


def panel(title, xlabel, ylabel, xs, ys, gain, **extra) -> dict:
    return {"title": title, "xlabel": xlabel, "ylabel": ylabel, "x": list(map(float, xs)), "y": list(map(float, ys)),
            "gain": gain.tolist(), "fraction_amplified": float(np.mean(gain > 1e-12)),
            "n_cells": int(gain.size), "min_gain": float(gain.min()), "max_gain": float(gain.max()), **extra}


def compute(n=N_GRID) -> dict:
    ratios = np.logspace(np.log10(1.05), np.log10(20), n)
    w_of = lambda r: r / (1 + r)  # noqa: E731
    eps = np.linspace(0.02, 0.98, n)
    g1 = grid_gain(ratios, eps, lambda r, e: two_strategy_instance(w_of(r), 1.0, {"kind": "route_copying", "eps": e}))
    closed = np.array([[closed_form_gain(w_of(r), 1.0, e) for r in ratios] for e in eps])
    qs = np.linspace(0.05, 1.0, n)
    # correct-mass ratio ρ = w_a q_a / w_b  ⇒  w_a/w_b = ρ / q_a
    g2 = grid_gain(ratios, qs, lambda r, q: two_strategy_instance(w_of(r / q), q, {"kind": "route_copying", "eps": EPS_FIXED}))
    closed2 = np.array([[closed_form_gain(w_of(r / q), q, EPS_FIXED) for r in ratios] for q in qs])
    kappas = np.linspace(0.0, 8.0, n)
    g3 = grid_gain(ratios, kappas, lambda r, k: two_strategy_instance(
        w_of(r), 1.0, {"kind": "soft_route", "eps": EPS_FIXED, "sharpness": k}))
    return {"name": NAME, "instance": "two strategies a, b; two correct rollouts each, split 0.6/0.4",
            "panels": {
                "route_copying_all_correct": panel(
                    "route-copying, every rollout correct", "base odds w_a/w_b", "teacher noise eps", ratios, eps, g1,
                    closed_form_max_abs_diff=float(np.max(np.abs(g1 - closed)))),
                "route_copying_failing": panel(
                    f"route-copying, a has failing rollouts (eps={EPS_FIXED})", "correct-mass odds π0(a|r=1)/π0(b|r=1)",
                    "success rate q_a inside strategy a", ratios, qs, g2,
                    closed_form_max_abs_diff=float(np.max(np.abs(g2 - closed2)))),
                "soft_route_all_correct": panel(
                    f"overlapping strategies (soft_route, eps={EPS_FIXED}), every rollout correct", "base odds w_a/w_b",
                    "sharpness κ (0 = strategies identical)", ratios, kappas, g3)}}


def draw(data):
    panels = data["panels"]
    fig, axes = new_figure(len(panels), width=4.6, height=4.2)
    lim = max(abs(p["min_gain"]) for p in panels.values())
    lim = max(lim, max(p["max_gain"] for p in panels.values()))
    for ax, p in zip(axes, panels.values()):
        gain = np.array(p["gain"])
        m = ax.pcolormesh(p["x"], p["y"], gain, cmap="RdBu_r", vmin=-lim, vmax=lim, shading="nearest")
        if gain.min() < -1e-9 and gain.max() > 1e-9:
            ax.contour(p["x"], p["y"], gain, levels=[0.0], colors="k", linewidths=1.2)
        ax.set_xscale("log")
        ax.set_xlabel(p["xlabel"])
        ax.set_ylabel(p["ylabel"])
        ax.set_title(f"{p['title']}\namplified on {p['fraction_amplified']:.0%} of {p['n_cells']} cells", fontsize=9)
    fig.colorbar(m, ax=list(axes), label="gain in log odds a:b (red: gap widens)")
    fig.suptitle(f"Does SDSD widen the gap between two strategies? ({data['instance']}; black line: gain = 0)",
                 fontsize=10)
    return fig
