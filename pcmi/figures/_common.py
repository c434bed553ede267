"""Shared plumbing for the figure modules: reproducible JSON data files and pictures, named instances.

Figures are drawn on `matplotlib.figure.Figure` objects (no pyplot state) with the Agg backend.
Every file is written with `pcmi.atomic.atomic_write` (a reader never sees half a file; the
file gets the umask's permissions). Output bytes do not depend on the run: floats in the JSON
are rounded to 12 significant digits (so last-digit noise from BLAS threading does not show),
and the PNG/PDF metadata carry no timestamp or version.
"""
from __future__ import annotations

import json
import math

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402
import numpy as np  # noqa: E402

from graphworld import EdgePolicy, multi_route_dag, tasks_of  # noqa: E402
from pcmi.atomic import atomic_write, atomic_write_text  # noqa: E402
from pcmi.graph_instance import graph_instance  # noqa: E402

#: significant digits kept for floats in the figure data (float64 noise sits near the 16th)
DIGITS = 12

#: one colour per policy, used by every figure
COLORS = {"base": "#555555", "rl": "#1f77b4", "sdsd": "#d62728", "sdsd_token": "#ff7f0e",
          "forward_kl": "#2ca02c", "contrastive": "#9467bd", "js": "#8c564b"}
LABELS = {"base": "base π0", "rl": "RL (KL leash β)", "sdsd": "SDSD, sequence level",
          "sdsd_token": "SDSD, token level", "forward_kl": "forward KL", "contrastive": "contrastive"}
ROUTE_COLORS = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02"]


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 5.2, height: float = 4.0):
    """A Figure with an (nrows × ncols) grid of axes (squeezed like pyplot.subplots)."""
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, (axes[0, 0] if axes.size == 1 else axes.ravel())


def jsonable(x):
    """numpy → plain Python; non-finite floats → None (JSON has no inf/NaN)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return round_sig(x) if math.isfinite(x) else None
    return x


def round_sig(x: float, digits: int = DIGITS) -> float:
    """x rounded to `digits` significant digits (−0.0 → 0.0)."""
    return float(f"{x:.{digits}g}") + 0.0


def write_json(path: str, data: dict) -> None:
    atomic_write_text(path, json.dumps(jsonable(data), indent=1, allow_nan=False) + "\n")


def write_figure(fig: Figure, stem: str) -> list[str]:
    """stem.png (150 dpi) and stem.pdf, both without timestamps or versions (reproducible bytes)."""
    out = []
    for ext, meta in (("png", {"Software": "pcmi figures"}),
                      ("pdf", {"Creator": "pcmi figures", "Producer": "pcmi figures", "CreationDate": None})):
        path = f"{stem}.{ext}"
        atomic_write(path, lambda tmp, ext=ext, meta=meta: fig.savefig(tmp, format=ext, dpi=150, metadata=meta))
        out.append(path)
    return out


def prompt_instances(graph: dict, policy: dict, teacher: dict, prompts=None):
    """[(task, Instance, RolloutSet)] for the prompts of multi_route_dag(**graph)."""
    g = multi_route_dag(**graph)
    tasks = tasks_of(g)
    if prompts is not None:
        tasks = tasks[:prompts]
    out = []
    for task in tasks:
        inst, ro = graph_instance(task, EdgePolicy(**policy), dict(teacher))
        out.append((task, inst, ro))
    return g, out


def graph_label(graph: dict) -> str:
    keys = ("k_routes", "depth", "branching", "seed", "n_sources", "n_targets")
    return "multi_route_dag(" + ", ".join(f"{k}={graph[k]}" for k in keys if k in graph) + ")"


from pcmi.distributions import probs  # noqa: E402,F401  (clipped to [0, 1]; re-exported for the figures)


def blocked_by_dominant_route(g, rollouts) -> tuple[int, np.ndarray]:
    """(z*, mask): the base policy's dominant route z* and the rollouts that enter its concept node."""
    from graphworld import concept_edges, dominant_route
    z = dominant_route(rollouts)
    return z, rollouts.uses_edges(concept_edges(g, z))


def ks_log(k_max: int = 1024, n: int = 41) -> np.ndarray:
    """Integers 1..k_max spaced evenly on a log axis (1 and k_max included)."""
    return np.unique(np.round(np.logspace(0, np.log10(k_max), n)).astype(int))


def higher(a: float, b: float, names=("sdsd", "rl"), tol: float = 1e-12) -> str:
    """Which of two numbers is larger ('tie' within tol)."""
    return "tie" if abs(a - b) <= tol else (names[0] if a > b else names[1])
