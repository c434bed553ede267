"""Prompts: a graph, a source, a target and a length cap; reward = a valid path s → t."""
from __future__ import annotations

from dataclasses import dataclass

import math
import numbers

import networkx as nx

from .errors import GraphworldError


@dataclass(frozen=True)
class Task:
    """Prompt x = (G, s, t) with rollouts capped at `max_len` moves."""
    graph: nx.DiGraph
    source: object
    target: object
    max_len: int

    def __post_init__(self):
        g = self.graph
        for name, v in (("source", self.source), ("target", self.target)):
            if v not in g:
                raise GraphworldError(f"{name} {v!r} is not a node of the graph")
        if self.source == self.target:
            raise GraphworldError("source and target must differ")
        L = self.max_len
        if isinstance(L, bool) or not isinstance(L, numbers.Real) or not math.isfinite(L) or int(L) != L or L < 1:
            raise GraphworldError(f"max_len must be a positive integer, got {L!r}")
        if not nx.has_path(g, self.source, self.target):
            raise GraphworldError(f"target {self.target!r} is unreachable from source {self.source!r}")
        d = nx.shortest_path_length(g, self.source, self.target)
        if d > self.max_len:
            raise GraphworldError(f"target {self.target!r} needs {d} moves but max_len is {self.max_len}")

    def reward(self, path) -> int:
        """r(y) = 1 iff the path starts at s, uses only edges of G and ends at t."""
        return int(is_valid_path(self.graph, path) and path[0] == self.source
                   and path[-1] == self.target and len(path) - 1 <= self.max_len)


def is_valid_path(g: nx.DiGraph, path) -> bool:
    return len(path) >= 1 and all(g.has_edge(u, v) for u, v in zip(path[:-1], path[1:]))


def route_of(g: nx.DiGraph, path) -> int:
    """Strategy label of a path: the `concept` of the first concept node it visits, else -1."""
    for v in path:
        z = g.nodes[v].get("concept")
        if z is not None:
            return int(z)
    return -1


def tasks_of(g: nx.DiGraph, max_len: int | None = None) -> list[Task]:
    """One Task per prompt listed in g.graph['prompts'] (default max_len: longest path)."""
    if max_len is None:
        max_len = nx.dag_longest_path_length(g) if nx.is_directed_acyclic_graph(g) else len(g)
    return [Task(g, s, t, max_len) for s, t in g.graph.get("prompts", [])]
