"""Markov edge policies: π(next | node) = softmax(pref / τ) over successors (+ optional STOP)."""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np
from scipy.special import log_softmax

from .errors import GraphworldError

STOP = "STOP"


@dataclass(frozen=True)
class EdgePolicy:
    """Base policy on a graph.

    temperature: τ > 0 in softmax(pref/τ).
    stop_pref:   None → no STOP action, the rollout ends on reaching the target (or a dead end);
                 a float → STOP is an action at every node with preference stop_pref, and a
                 rollout succeeds only by stopping at the target.
    goal_aware:  restrict moves to successors from which the target is reachable (ALPINE's walk).
    """
    temperature: float = 1.0
    stop_pref: float | None = None
    goal_aware: bool = False

    def __post_init__(self):
        if not np.isfinite(self.temperature) or self.temperature <= 0:
            raise GraphworldError(f"temperature must be > 0, got {self.temperature!r}")
        if self.stop_pref is not None and not np.isfinite(self.stop_pref):
            raise GraphworldError(f"stop_pref must be finite, got {self.stop_pref!r}")

    @property
    def has_stop(self) -> bool:
        return self.stop_pref is not None

    @classmethod
    def from_dict(cls, d: dict | None) -> "EdgePolicy":
        d = dict(d or {})
        unknown = set(d) - {"temperature", "stop_pref", "goal_aware"}
        if unknown:
            raise GraphworldError(f"unknown policy field(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def next_logprobs(self, task, paths: list[tuple]) -> list[dict]:
        """For each prefix path, {token: log π(token | path)} with tokens = nodes or STOP."""
        g = task.graph
        reach = _can_reach(g, task.target) if self.goal_aware else None
        out = []
        for path in paths:
            u = path[-1]
            succ = [v for v in g.successors(u) if reach is None or v in reach]
            toks = list(succ)
            logits = [g.edges[u, v].get("pref", 0.0) / self.temperature for v in succ]
            if self.has_stop:
                toks.append(STOP)
                logits.append(self.stop_pref / self.temperature)
            if not toks:
                out.append({})
                continue
            lp = log_softmax(np.asarray(logits, dtype=float))
            out.append(dict(zip(toks, lp.tolist())))
        return out


def _can_reach(g: nx.DiGraph, t) -> set:
    return nx.ancestors(g, t) | {t}
