"""Build an Instance from a graph task: enumerate Y(x) under a base policy, attach a teacher."""
from __future__ import annotations

import numpy as np
from scipy.special import log_softmax

from graphworld import EdgePolicy, RolloutSet, Task, enumerate_rollouts

from .errors import PcmiInputError
from .instance import Instance, demos_from_successes, uniform_correct_demos
from .teachers import CopyTeacher, LatentStrategyTeacher

TEACHER_KINDS = ("route_copying", "soft_route", "copy")


def make_teacher(rollouts: RolloutSet, spec: dict | None = None, log_base=None):
    """Teacher from a spec: {"kind": "route_copying", "eps": 0.1} | {"kind": "soft_route",
    "eps": 0.1, "sharpness": 2.0} (overlapping strategies: responsibilities
    softmax_z(sharpness·1[route(y) = z])) | {"kind": "copy", "lam": 0.5}."""
    spec = dict(spec or {"kind": "route_copying", "eps": 0.1})
    kind = spec.pop("kind", "route_copying")
    log_base = rollouts.log_prob if log_base is None else log_base
    if kind == "route_copying":
        t = LatentStrategyTeacher.route_copying(log_base, rollouts.route, spec.pop("eps", 0.1))
    elif kind == "soft_route":
        kappa = spec.pop("sharpness", 2.0)
        if isinstance(kappa, bool) or not isinstance(kappa, (int, float, np.number)) or not np.isfinite(kappa):
            raise PcmiInputError(f"sharpness must be finite, got {kappa!r}")
        zs = np.unique(rollouts.route)
        log_resp = log_softmax(kappa * (rollouts.route[None, :] == zs[:, None]), axis=0)
        t = LatentStrategyTeacher.from_responsibilities(log_base, log_resp, spec.pop("eps", 0.1))
    elif kind == "copy":
        t = CopyTeacher(log_base, spec.pop("lam", 0.5))
    else:
        raise PcmiInputError(f"unknown teacher kind {kind!r}; expected one of {', '.join(TEACHER_KINDS)}")
    if spec:
        raise PcmiInputError(f"unknown teacher field(s) for {kind}: {', '.join(sorted(spec))}")
    return t


def graph_instance(task: Task, policy: EdgePolicy | None = None, teacher: dict | None = None, *,
                   demos: str = "successes", pool_failures: bool = True,
                   max_rollouts: int = 1_000_000) -> tuple[Instance, RolloutSet]:
    """(Instance, RolloutSet) of one prompt: π0 = the policy's exact rollout law on the task.

    Failing walks are pooled per (prefix, route label) unless pool_failures is False: exact for the
    route-labelled teachers, which see a rollout only through its label. A copy teacher is never
    pooled: given a failing demonstration (the contrastive baseline B = π0) it copies that very
    walk. More than max_rollouts rollouts raise before the work is done."""
    if isinstance(max_rollouts, bool) or not isinstance(max_rollouts, (int, np.integer)) or max_rollouts < 1:
        raise PcmiInputError(f"max_rollouts must be a positive integer, got {max_rollouts!r}")
    kind = (teacher or {}).get("kind", "route_copying") if isinstance(teacher, dict) else None
    rollouts = enumerate_rollouts(task, policy or EdgePolicy(), pool_failures=pool_failures and kind != "copy",
                                  max_leaves=int(max_rollouts))
    if demos == "successes":
        log_D = demos_from_successes(rollouts.log_prob, rollouts.reward)
    elif demos == "uniform":
        log_D = uniform_correct_demos(rollouts.reward)
    else:
        raise PcmiInputError(f"unknown demos {demos!r}; expected 'successes' or 'uniform'")
    t = make_teacher(rollouts, teacher)
    inst = Instance(rollouts.log_prob, rollouts.reward, t, log_D, route=rollouts.route,
                    tree=rollouts.tree, name=f"{task.graph.name}: {task.source}->{task.target}")
    return inst, rollouts
