"""`pcmi solve FILE.json`: every closed-form optimum of an explicit or graph instance.

Explicit: {"base": [...], "reward": [0/1...], "teacher": [[T(y_1|y'_1), ..., T(y_n|y'_1)], ...],
           "demos": [...] (optional, default π0(·|r=1)), "beta": 1.0 (optional),
           "route": [...] (optional), "allow_failing_demos": false (optional)}
Graph:    {"graph": <node-link>, "source": s, "target": t, "max_len": L, "policy": {...},
           "teacher": {"kind": "route_copying" | "soft_route" | "copy", ...}, "beta": 1.0,
           "demos": "successes" | "uniform" (optional)}

Demonstrations are correct rollouts: explicit `demos` that put mass on a rollout with reward 0 are
refused unless the instance says "allow_failing_demos": true. The graph must be directed, list
every node a link names, and have no duplicate node ids; every edge `pref` is a finite number.

With a loss mode (`pcmi.objectives`, theory.md §9) the result also holds the mode's on-policy fixed
point θ* (G_mode(θ*) = 0 with D = π*(·|r=1) and the schedule's teacher, with its certificate) and
the mode's exact expected gradient at π0 (D = π0(·|r=1), π0's teacher) against the sequence-level
gradient ∇ E_D KL(π ‖ T(·|y')). Both use on-policy demonstrations: a file's "demos" is not read there.

The result also holds the ratio-preserving demonstrations D* of theory.md §10 ("dstar", "dstar_spread",
"dstar_method", "sdsd_under_dstar"; `dstar_keys`): null with "dstar_error" where no D* can be computed.
"""
from __future__ import annotations

import json

import numpy as np

from graphworld import EdgePolicy, GraphworldError, Task, concept_edges, dominant_route, graph_from_node_link
from graphworld.errors import is_int as _is_int
from graphworld.graphs import parse_json, read_text_file

from .demonstrations import dstar
from .distributions import probs
from .errors import PcmiInputError
from .estimators import expected_gradient, gradient_bias, sequence_gradient
from .flows import on_policy_fixed_point
from .graph_instance import graph_instance
from .instance import NO_SUCCESS, Instance, demos_from_successes, has_reachable_success
from .metrics import policy_metrics
from .policies import (check_beta, contrastive_optimum, forward_kl_optimum, forward_kl_token_optimum,
                       rl_limit, rl_optimum, sdsd_optimum, sdsd_token_optimum)
from .objectives import LossMode, loss_mode
from .scores import expected_pcmi
from .tabular import TabularPolicy

EXPLICIT_KEYS = {"base", "reward", "teacher", "demos", "beta", "route", "allow_failing_demos"}
GRAPH_KEYS = {"graph", "source", "target", "max_len", "policy", "teacher", "beta", "demos"}


def _node(g, v, name: str):
    """JSON node ids arrive as JSON values; accept "3" for node 3 and 3 for node "3"."""
    if not (isinstance(v, str) or _is_int(v)):
        raise PcmiInputError(f"{name} must be a node id (a string or an integer), got {json.dumps(v)}")
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


def _positive_int(v, name: str) -> int:
    """An integer ≥ 1 from JSON (an integral float such as 2.0 is accepted, true/"2"/1e400 are not)."""
    if isinstance(v, float) and np.isfinite(v) and v == int(v):
        v = int(v)
    if not _is_int(v) or v < 1:
        raise PcmiInputError(f"{name} must be a positive integer, got {json.dumps(v)}")
    return int(v)


def _beta_of(data) -> float:
    """The file's RL leash β (default 1): a JSON number; check_beta then requires it finite and > 0."""
    b = data.get("beta", 1.0)
    if isinstance(b, bool) or not isinstance(b, (int, float)):
        raise PcmiInputError(f"beta must be a number, got {json.dumps(b)}")
    return b


def _graph_instance(data: dict, max_rollouts: int | None):
    unknown = set(data) - GRAPH_KEYS
    if unknown:
        raise PcmiInputError(f"unknown key(s) in graph instance: {', '.join(sorted(unknown))}")
    for k in ("source", "target", "max_len"):
        if k not in data:
            raise PcmiInputError(f"graph instance is missing '{k}'")
    max_len = _positive_int(data["max_len"], "max_len")
    policy, teacher = data.get("policy", {}), data.get("teacher", {})
    if not isinstance(policy, dict) or not isinstance(teacher, dict):
        raise PcmiInputError("'policy' and 'teacher' must be JSON objects")
    for k, v in teacher.items():
        if k != "kind" and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise PcmiInputError(f"teacher {k} must be a number, got {json.dumps(v)}")
    demos = data.get("demos", "successes")
    if demos not in ("successes", "uniform"):
        raise PcmiInputError(f"graph instance 'demos' must be \"successes\" or \"uniform\", got {json.dumps(demos)}")
    g = graph_from_node_link(data["graph"])
    task = Task(g, _node(g, data["source"], "source"), _node(g, data["target"], "target"), max_len)
    cap = {} if max_rollouts is None else {"max_rollouts": max_rollouts}
    return graph_instance(task, EdgePolicy.from_dict(policy), teacher or None, demos=demos, **cap)


def _explicit_instance(data: dict) -> Instance:
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
    allow = data.get("allow_failing_demos", False)
    if not isinstance(allow, bool):
        raise PcmiInputError(f"allow_failing_demos must be true or false, got {json.dumps(allow)}")
    return Instance.explicit(data["base"], data["reward"], teacher, data.get("demos"), data.get("route"),
                             allow_failing_demos=allow)


def load_instance(data: dict, max_rollouts: int | None = None) -> tuple[Instance, object]:
    """(Instance, RolloutSet or None) from parsed JSON; max_rollouts caps Y(x) of a graph instance."""
    if not isinstance(data, dict):
        raise PcmiInputError("instance must be a JSON object")
    if "graph" in data:
        return _graph_instance(data, max_rollouts)
    if max_rollouts is not None:
        raise PcmiInputError("--max-rollouts applies to graph instances only")
    return _explicit_instance(data), None


def _arr(log_p) -> list:
    return [float(x) for x in probs(log_p)]


def _finite_or_none(x):
    """x with every non-finite float (and NaN) replaced by None, for JSON (allow_nan=False)."""
    if isinstance(x, dict):
        return {k: _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite_or_none(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    return x


def _blocked(inst: Instance, rollouts):
    """Mask of the rollouts that use the dominant route's concept edges (None without labels)."""
    if rollouts is None or not (inst.reward == 1).any():
        return None
    try:
        return rollouts.uses_edges(concept_edges(rollouts.task.graph, dominant_route(rollouts)))
    except GraphworldError:  # no concept labels: no route to block
        return None


def dstar_keys(inst: Instance) -> dict:
    """The ratio-preserving demonstrations (`pcmi.demonstrations.dstar`, theory.md §10): "dstar"
    (probabilities over the rollouts), "dstar_spread" (max − min of E_D* PCMI over correct rollouts),
    "dstar_method" and "sdsd_under_dstar" (the SDSD optimum with D = D*). Where D* cannot be
    computed for this teacher all four are None and "dstar_error" holds the one-line reason."""
    try:
        d = dstar(inst)
        sd = sdsd_optimum(inst.with_demos(d.log_demos))
    except PcmiInputError as exc:
        return {"dstar": None, "dstar_spread": None, "dstar_method": None, "sdsd_under_dstar": None,
                "dstar_error": " ".join(str(exc).split())}
    return {"dstar": _arr(d.log_demos), "dstar_spread": float(d.spread), "dstar_method": d.method,
            "sdsd_under_dstar": _arr(sd)}


def gradient_at_base(inst: Instance, mode: LossMode) -> dict:
    """G_mode(θ0) = E_{y∼π0, y'∼D} g_mode exactly, D = π0(·|r=1), π0's teacher: ‖G‖, tr Cov g of one
    rollout, the expected loss, and the bias against G_seq = ∇ E_D KL(π ‖ T(·|y')) (cosine, ‖G‖/‖G_seq‖;
    None where G_seq is undefined because the sequence-level reverse KL is infinite at π0)."""
    policy = TabularPolicy.from_log_probs(inst.tree, inst.log_base)
    log_D = demos_from_successes(inst.log_base, inst.reward)
    rep = expected_gradient(policy, inst.teacher, log_D, mode)
    out = {"norm": rep.norm, "variance": rep.variance, "loss": rep.loss}
    try:
        b = gradient_bias(rep.grad, sequence_gradient(policy, inst.teacher, log_D), policy.sib)
        out["bias"] = {"cosine": b.cosine, "norm_ratio": b.norm_ratio}
    except PcmiInputError as exc:
        out["bias"] = {"cosine": None, "norm_ratio": None, "undefined": " ".join(str(exc).split())}
    return _finite_or_none(out)


def fixed_point_of(inst: Instance, mode: LossMode, teacher: str = "frozen", tau=None, *, blocked=None,
                   **fixed_point_options) -> dict:
    """The mode's on-policy fixed point (`pcmi.flows.on_policy_fixed_point`): its mode and
    schedule, π* over the rollouts, the certificate and the §5 metrics of π*."""
    fp = on_policy_fixed_point(inst, mode, teacher, tau, **fixed_point_options)
    return _finite_or_none({
        "mode": {**mode.as_dict(), "teacher": teacher, "tau": tau},
        "policy": _arr(fp.log_pi),
        "certificate": fp.certificate(),
        "metrics": policy_metrics(fp.log_pi, inst.log_base, inst.reward, inst.route, blocked)})


def solve(inst: Instance, beta: float = 1.0, rollouts=None, mode: LossMode | None = None, teacher: str = "frozen",
          tau=None, **fixed_point_options) -> dict:
    """All optima as probability arrays aligned with the rollouts, plus their metrics; with a loss
    `mode` also "fixed_point" (`fixed_point_of`, teacher schedule `teacher`/`tau`, options tol and
    max_rounds of on_policy_fixed_point) and "gradient_at_base" (`gradient_at_base`)."""
    beta = check_beta(beta)
    mode = None if mode is None else loss_mode(mode)
    if mode is None and (teacher != "frozen" or tau is not None or fixed_point_options):
        raise PcmiInputError("a teacher schedule, tau, tol or max_rounds needs a loss mode")
    if not has_reachable_success(inst.log_base, inst.reward):
        raise PcmiInputError(NO_SUCCESS + ", so the RL limit π0(·|r=1) is undefined: mark a rollout with "
                             "base probability > 0 correct")
    pols = {"base": inst.log_base,
            "rl": rl_optimum(inst.log_base, inst.reward, beta),
            "rl_limit": rl_limit(inst.log_base, inst.reward),
            "sdsd": sdsd_optimum(inst),
            "sdsd_tempered": sdsd_optimum(inst, beta),
            "sdsd_token": sdsd_token_optimum(inst),
            "forward_kl": forward_kl_optimum(inst),
            "forward_kl_token": forward_kl_token_optimum(inst),
            "contrastive": contrastive_optimum(inst)}
    blocked = _blocked(inst, rollouts)
    out = {name: _arr(lp) for name, lp in pols.items()}
    s = expected_pcmi(inst)
    out["expected_pcmi"] = [float(x) if np.isfinite(x) else None for x in s]
    out["beta"] = beta
    out["reward"] = inst.reward.tolist()
    out.update(dstar_keys(inst))
    if rollouts is not None:
        out["rollouts"] = [[str(v) for v in p] for p in rollouts.paths]
        out["route"] = rollouts.route.tolist()
    out["metrics"] = _finite_or_none({name: policy_metrics(lp, inst.log_base, inst.reward, inst.route, blocked)
                                      for name, lp in pols.items()})  # an infinite ratio distortion: null
    if mode is not None:
        out["fixed_point"] = fixed_point_of(inst, mode, teacher, tau, blocked=blocked, **fixed_point_options)
        out["gradient_at_base"] = gradient_at_base(inst, mode)
    return out


def read_instance_file(path: str) -> dict:
    """Parsed JSON of an instance file; PcmiInputError (one line) for every file problem."""
    try:
        return parse_json(read_text_file(path, "instance file"), path, "an instance")
    except GraphworldError as exc:
        raise PcmiInputError(str(exc)) from None


def solve_file(path: str, beta: float | None = None, max_rollouts: int | None = None, **mode_options) -> dict:
    """solve() of the instance in a JSON file; `beta` overrides the file's, `max_rollouts` caps Y(x);
    mode_options (mode, teacher, tau, tol, max_rounds) go to solve()."""
    data = read_instance_file(path)
    inst, rollouts = load_instance(data, max_rollouts)
    return solve(inst, beta if beta is not None else _beta_of(data), rollouts, **mode_options)
