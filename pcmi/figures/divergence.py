"""Figure `divergence`: which divergence, which diversity — success vs strategy-mass entropy.

On one prompt and one teacher, the optimum of each objective (theory.md §3):
reverse KL E_D KL(π ‖ T) → π0·exp(s) (`sdsd_optimum`); forward KL E_D KL(T ‖ π) → E_D T
(`forward_kl_optimum`); generalized JS E_D D_α(π, T) for α in (0, 1) (`js_optimum`, α = 1 is
reverse, α = 0 forward); contrastive π0·exp(s_c) (`contrastive_optimum`); the token-level
variants; and RL at β = 1 and at the β that matches SDSD's success. Each point: success
Σ π r and H(π(route | r = 1)).
"""
from __future__ import annotations

import numpy as np

from pcmi.errors import PcmiInputError
from pcmi.metrics import effective_correct, strategy_mass_entropy, success
from pcmi.policies import (contrastive_optimum, forward_kl_optimum, forward_kl_token_optimum, js_optimum,
                           rl_beta_for_success, rl_optimum, sdsd_optimum, sdsd_token_optimum)

from ._common import COLORS, graph_label, new_figure, prompt_instances

NAME = "divergence"
GRAPH = dict(k_routes=3, depth=2, branching=2, seed=0, n_sources=1, n_targets=1)
POLICY = dict(temperature=1.0, stop_pref=-1.0)
TEACHERS = {"route_copying": {"kind": "route_copying", "eps": 0.1},
            "copy": {"kind": "copy", "lam": 0.5}}
ALPHAS = (0.1, 0.25, 0.5, 0.75, 0.9)


def _bound(residual: float) -> float:
    """The KKT residual as the power of ten above it (at least 1e-15): its last digits are
    rounding noise that would differ between BLAS builds and make the data file churn."""
    return float(10.0 ** np.ceil(np.log10(max(float(residual), 1e-15))))


def objective_optima(inst, alphas=ALPHAS) -> list[dict]:
    """[{objective, alpha, log_pi, kkt_residual}] for every objective on one instance."""
    out = [{"objective": "base", "log_pi": inst.log_base},
           {"objective": "reverse KL (SDSD)", "alpha": 1.0, "log_pi": sdsd_optimum(inst)},
           {"objective": "forward KL", "alpha": 0.0, "log_pi": forward_kl_optimum(inst)}]
    for a in alphas:
        r = js_optimum(inst, a)
        out.append({"objective": f"JS α={a:g}", "alpha": a, "log_pi": r.log_pi, "kkt_residual": _bound(r.kkt_residual)})
    out += [{"objective": "contrastive", "log_pi": contrastive_optimum(inst)},
            {"objective": "reverse KL, token level", "log_pi": sdsd_token_optimum(inst)},
            {"objective": "forward KL, token level", "log_pi": forward_kl_token_optimum(inst)},
            {"objective": "RL β=1", "log_pi": rl_optimum(inst.log_base, inst.reward, 1.0)}]
    p0, psd = success(inst.log_base, inst.reward), success(out[1]["log_pi"], inst.reward)
    try:
        beta = rl_beta_for_success(p0, psd)
        out.append({"objective": f"RL β={beta:.3g} (success = SDSD's)", "log_pi": rl_optimum(inst.log_base, inst.reward, beta)})
    except PcmiInputError:
        pass
    return out


def compute(graph=GRAPH, policy=POLICY, teachers=TEACHERS, alphas=ALPHAS) -> dict:
    out = {"name": NAME, "graph": graph_label(graph), "policy": policy, "teachers": {}}
    for name, spec in teachers.items():
        g, [(task, inst, ro)] = prompt_instances(graph, policy, spec, prompts=1)
        rows = []
        for o in objective_optima(inst, alphas):
            lp = o.pop("log_pi")
            rows.append({**o, "success": success(lp, inst.reward),
                         "strategy_mass_entropy": strategy_mass_entropy(lp, inst.reward, inst.route),
                         "effective_correct": effective_correct(lp, inst.reward)})
        out["teachers"][name] = {"teacher": spec, "prompt": [task.source, task.target], "rows": rows}
    return out


def color_of(row) -> str:
    o = row["objective"]
    if "alpha" in row and 0 < row["alpha"] < 1:
        return matplotlib_cmap(row["alpha"])
    for key, c in (("base", "base"), ("RL", "rl"), ("token", "sdsd_token"), ("reverse", "sdsd"),
                   ("forward", "forward_kl"), ("contrastive", "contrastive")):
        if o.startswith(key) or key in o:
            return COLORS[c]
    return "k"


def matplotlib_cmap(alpha: float):
    from matplotlib import colormaps
    return colormaps["viridis"](0.15 + 0.7 * alpha)


def draw(data):
    fig, axes = new_figure(len(data["teachers"]), width=5.4, height=4.4)
    axes = np.atleast_1d(axes)
    for ax, (name, d) in zip(axes, data["teachers"].items()):
        for r in d["rows"]:
            marker = "x" if "token" in r["objective"] else ("s" if r["objective"].startswith("RL") else "o")
            ax.scatter(r["strategy_mass_entropy"], r["success"], color=color_of(r), marker=marker, s=40, zorder=3)
            ax.annotate(r["objective"], (r["strategy_mass_entropy"], r["success"]), fontsize=6.5,
                        xytext=(4, 2), textcoords="offset points")
        js = sorted([r for r in d["rows"] if "alpha" in r], key=lambda r: r["alpha"])
        ax.plot([r["strategy_mass_entropy"] for r in js], [r["success"] for r in js], color="0.6", lw=0.8, zorder=1)
        ax.set_xlabel("strategy-mass entropy H(π(route | correct)) [nats]")
        ax.set_ylabel("success probability")
        t = d["teacher"]
        ax.set_title(f"{name} teacher ({', '.join(f'{k}={v}' for k, v in t.items() if k != 'kind')})")
        ax.grid(alpha=0.3)
    fig.suptitle(f"Optima of each objective on {data['graph']}, first prompt\n"
                 "(grey line: JS family from forward α=0 to reverse α=1)", fontsize=10)
    return fig
