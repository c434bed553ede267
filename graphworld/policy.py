"""Markov edge policies: π(next | node) = softmax(pref / τ) over successors (+ optional STOP)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import networkx as nx
import numpy as np
from scipy.special import log_softmax

from .errors import GraphworldError, is_real as _is_real

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
    markov = True  # π(next | path) depends on the path's last node only: enumeration takes the level-wise path

    def __post_init__(self):
        if not _is_real(self.temperature) or not np.isfinite(self.temperature) or self.temperature <= 0:
            raise GraphworldError(f"temperature must be a finite number > 0, got {self.temperature!r}")
        if self.stop_pref is not None and not (_is_real(self.stop_pref) and np.isfinite(self.stop_pref)):
            raise GraphworldError(f"stop_pref must be a finite number or null (no STOP action), got {self.stop_pref!r}")
        if not isinstance(self.goal_aware, (bool, np.bool_)):
            raise GraphworldError(f"goal_aware must be true or false, got {self.goal_aware!r}")

    @property
    def has_stop(self) -> bool:
        return self.stop_pref is not None

    @classmethod
    def from_dict(cls, d: dict | None) -> "EdgePolicy":
        if d is not None and not isinstance(d, dict):
            raise GraphworldError(f"policy must be an object with temperature, stop_pref, goal_aware; got {d!r}")
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
            logits = [_pref(g, u, v) / self.temperature for v in succ]
            if self.has_stop:
                toks.append(STOP)
                logits.append(self.stop_pref / self.temperature)
            if not toks:
                out.append({})
                continue
            logits = np.asarray(logits, dtype=float)
            if not np.isfinite(logits).all():
                self._raise_not_finite(u, toks, logits)
            lp = log_softmax(logits)
            out.append(dict(zip(toks, lp.tolist())))
        return out


    def _raise_not_finite(self, u, toks, logits):
        v = toks[int(np.flatnonzero(~np.isfinite(logits))[0])]
        what = "stop_pref" if v == STOP else f"pref of edge {u!r} -> {v!r}"
        raise GraphworldError(f"{what} / temperature is not finite (temperature {self.temperature!r}): "
                              "use a larger temperature or smaller preferences")


def _pref(g: nx.DiGraph, u, v) -> float:
    """The edge's preference (default 0); GraphworldError naming the edge unless a finite number."""
    p = g.edges[u, v].get("pref", 0.0)
    if not _is_real(p) or not math.isfinite(p):
        raise GraphworldError(f"edge {u!r} -> {v!r} has pref {p!r}: it must be a finite number")
    return p


def _can_reach(g: nx.DiGraph, t) -> set:
    return nx.ancestors(g, t) | {t}
