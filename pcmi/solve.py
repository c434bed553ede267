"""`pcmi solve FILE.json`: every closed-form optimum of an explicit or graph instance.

Explicit: {"base": [...], "reward": [0/1...], "teacher": [[T(y_1|y'_1), ..., T(y_n|y'_1)], ...],
           "demos": [...] (optional, default π0(·|r=1)), "beta": 1.0 (optional)}
Graph:    {"graph": <node-link>, "source": s, "target": t, "max_len": L, "policy": {...},
           "teacher": {"kind": "route_copying" | "soft_route" | "copy", ...}, "beta": 1.0}
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from graphworld import EdgePolicy, Task, concept_edges, dominant_route, graph_from_node_link

from .errors import PcmiInputError
from .graph_instance import graph_instance
from .instance import Instance
from .metrics import policy_metrics
from .policies import (check_beta, contrastive_optimum, forward_kl_optimum, forward_kl_token_optimum,
                       rl_limit, rl_optimum, sdsd_optimum, sdsd_token_optimum)
from .scores import expected_pcmi

EXPLICIT_KEYS = {"base", "reward", "teacher", "demos", "beta", "route"}
GRAPH_KEYS = {"graph", "source", "target", "max_len", "policy", "teacher", "beta", "demos"}


def _node(g, v):
    """JSON node ids arrive as JSON values; accept "3" for node 3 and 3 for node "3"."""
    if v in g:
        return v
    for cand in (str(v), _maybe_int(v)):
        if cand in g:
            return cand
    return v


def _maybe_int(v):
    try:
        return int(v)
    except (TypeError, ValueError):
        return v


def load_instance(data: dict) -> tuple[Instance, object]:
    """(Instance, RolloutSet or None) from parsed JSON."""
    if not isinstance(data, dict):
        raise PcmiInputError("instance must be a JSON object")
    if "graph" in data:
        unknown = set(data) - GRAPH_KEYS
        if unknown:
            raise PcmiInputError(f"unknown key(s) in graph instance: {', '.join(sorted(unknown))}")
        for k in ("source", "target", "max_len"):
            if k not in data:
                raise PcmiInputError(f"graph instance is missing '{k}'")
        g = graph_from_node_link(data["graph"])
        task = Task(g, _node(g, data["source"]), _node(g, data["target"]), data["max_len"])
        if not isinstance(data.get("policy", {}), dict) or not isinstance(data.get("teacher", {}), dict):
            raise PcmiInputError("'policy' and 'teacher' must be JSON objects")
        return graph_instance(task, EdgePolicy.from_dict(data.get("policy")), data.get("teacher"),
                              demos=data.get("demos", "successes"))
    missing = [k for k in ("base", "reward", "teacher") if k not in data]
    if missing:
        raise PcmiInputError(f"instance is missing {', '.join(repr(k) for k in missing)} "
                             "(explicit instances need base, reward, teacher; graph instances need graph)")
    unknown = set(data) - EXPLICIT_KEYS
    if unknown:
        raise PcmiInputError(f"unknown key(s) in explicit instance: {', '.join(sorted(unknown))}")
    teacher = data["teacher"]
    if not isinstance(teacher, list) or not all(isinstance(r, list) for r in teacher):
        raise PcmiInputError("teacher must be a list of rows, one per demonstration y'_j")
    return Instance.explicit(data["base"], data["reward"], teacher, data.get("demos"), data.get("route")), None


def _arr(log_p) -> list:
    return [float(x) for x in np.exp(log_p)]


def solve(inst: Instance, beta: float = 1.0, rollouts=None) -> dict:
    """All optima as probability arrays aligned with the rollouts, plus their metrics."""
    beta = check_beta(beta)
    pols = {"base": inst.log_base,
            "rl": rl_optimum(inst.log_base, inst.reward, beta),
            "rl_limit": rl_limit(inst.log_base, inst.reward),
            "sdsd": sdsd_optimum(inst),
            "sdsd_tempered": sdsd_optimum(inst, beta),
            "sdsd_token": sdsd_token_optimum(inst),
            "forward_kl": forward_kl_optimum(inst),
            "forward_kl_token": forward_kl_token_optimum(inst),
            "contrastive": contrastive_optimum(inst)}
    blocked = None
    if rollouts is not None and (inst.reward == 1).any():
        try:
            blocked = rollouts.uses_edges(concept_edges(rollouts.task.graph, dominant_route(rollouts)))
        except ValueError:
            blocked = None
    out = {name: _arr(lp) for name, lp in pols.items()}
    s = expected_pcmi(inst)
    out["expected_pcmi"] = [float(x) if np.isfinite(x) else None for x in s]
    out["beta"] = beta
    out["reward"] = inst.reward.tolist()
    if rollouts is not None:
        out["rollouts"] = [[str(v) for v in p] for p in rollouts.paths]
        out["route"] = rollouts.route.tolist()
    out["metrics"] = {name: policy_metrics(lp, inst.log_base, inst.reward, inst.route, blocked)
                      for name, lp in pols.items()}
    return out


def solve_file(path: str, beta: float | None = None) -> dict:
    p = Path(path)
    if not p.exists():
        raise PcmiInputError(f"file not found: {path}")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise PcmiInputError(f"{path} is not valid JSON: {exc}") from None
    except UnicodeDecodeError:
        raise PcmiInputError(f"{path} is not a text file") from None
    inst, rollouts = load_instance(data)
    b = beta if beta is not None else (data.get("beta", 1.0) if isinstance(data, dict) else 1.0)
    return solve(inst, b, rollouts)
