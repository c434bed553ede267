"""Graph generators and loaders.

Every generator returns a ``networkx.DiGraph`` whose edges carry a float ``pref`` (the base
policy's edge preference) and whose bottleneck nodes carry ``concept`` (the route / strategy
id a path through them follows). ``graph.graph["prompts"]`` lists the (source, target) pairs
the generator was built for.
"""
from __future__ import annotations

import json
from pathlib import Path

import networkx as nx
import numpy as np

from .errors import GraphworldError


def multi_route_dag(k_routes: int = 3, depth: int = 2, branching: int = 2, seed: int = 0, *,
                    n_sources: int = 4, n_targets: int = 1, pref_scale: float = 1.0) -> nx.DiGraph:
    """Layered DAG: sources → concept node c_z (one per route z) → `depth` layers of
    `branching` nodes inside route z (consecutive layers fully connected) → targets.

    Every (source, target) pair has k_routes·branching**depth paths, grouped by the concept
    they pass through. Edge preferences are N(0, pref_scale²), seeded; with n_targets > 1 a
    target-blind base policy also fails (it can end at the wrong target).
    """
    for name, v, lo in (("k_routes", k_routes, 1), ("depth", depth, 0), ("branching", branching, 1),
                        ("n_sources", n_sources, 1), ("n_targets", n_targets, 1)):
        if int(v) != v or v < lo:
            raise GraphworldError(f"{name} must be an integer >= {lo}, got {v!r}")
    rng = np.random.default_rng(seed)
    g = nx.DiGraph(name=f"multi_route_dag(k={k_routes},depth={depth},b={branching},seed={seed})")
    nid = iter(range(10**9))
    sources = [next(nid) for _ in range(n_sources)]
    concepts = [next(nid) for _ in range(k_routes)]
    layers = [[[next(nid) for _ in range(branching)] for _ in range(depth)] for _ in range(k_routes)]
    targets = [next(nid) for _ in range(n_targets)]
    for s in sources:
        g.add_node(s, role="source")
    for z, c in enumerate(concepts):
        g.add_node(c, role="concept", concept=z, route=z)
        for layer in layers[z]:
            for u in layer:
                g.add_node(u, role="inner", route=z)
    for t in targets:
        g.add_node(t, role="target")

    def edge(u, v):
        g.add_edge(u, v, pref=float(pref_scale * rng.standard_normal()))

    for s in sources:
        for c in concepts:
            edge(s, c)
    for z, c in enumerate(concepts):
        chain = [[c]] + layers[z] + [targets]
        for a, b in zip(chain[:-1], chain[1:]):
            for u in a:
                for v in b:
                    edge(u, v)
    g.graph["prompts"] = [(s, t) for s in sources for t in targets]
    return g


def path_star(degree: int = 3, length: int = 3, seed: int = 0, *, pref_scale: float = 1.0) -> nx.DiGraph:
    """Path-star graph (Bachmann & Nagarajan 2024): a centre with `degree` arms of `length`
    nodes. Prompts: (centre, end of arm i); exactly one arm reaches each target, each arm's
    first node is its concept."""
    if degree < 1 or length < 1:
        raise GraphworldError(f"path_star needs degree >= 1 and length >= 1, got {degree}, {length}")
    rng = np.random.default_rng(seed)
    g = nx.DiGraph(name=f"path_star(degree={degree},length={length},seed={seed})")
    g.add_node(0, role="source")
    ends, k = [], 1
    for arm in range(degree):
        prev = 0
        for i in range(length):
            attrs = {"route": arm}
            if i == 0:
                attrs["concept"] = arm
            g.add_node(k, **attrs)
            g.add_edge(prev, k, pref=float(pref_scale * rng.standard_normal()))
            prev, k = k, k + 1
        ends.append(prev)
    g.graph["prompts"] = [(0, e) for e in ends]
    return g


def random_dag(n: int = 20, p: float = 0.2, seed: int = 0, *, pref_scale: float = 1.0) -> nx.DiGraph:
    """ALPINE-style random DAG: edge i→j for i < j with probability p, preferences N(0, pref_scale²).
    Prompts: every pair (s, t) with at least two paths from s to t."""
    if n < 2 or not 0 < p <= 1:
        raise GraphworldError(f"random_dag needs n >= 2 and 0 < p <= 1, got n={n}, p={p}")
    rng = np.random.default_rng(seed)
    g = nx.DiGraph(name=f"random_dag(n={n},p={p},seed={seed})")
    g.add_nodes_from(range(n))
    for i in range(n):
        for j in range(i + 1, n):
            if rng.random() < p:
                g.add_edge(i, j, pref=float(pref_scale * rng.standard_normal()))
    g.graph["prompts"] = multi_path_prompts(g)
    return g


def multi_path_prompts(g: nx.DiGraph, min_paths: int = 2) -> list[tuple]:
    """All (s, t) pairs of a DAG joined by at least `min_paths` distinct paths."""
    require_dag(g)
    order = list(nx.topological_sort(g))
    prompts = []
    for s in order:
        count = {s: 1}
        for u in order:
            if u in count:
                for v in g.successors(u):
                    count[v] = count.get(v, 0) + count[u]
        prompts += [(s, t) for t in order if t != s and count.get(t, 0) >= min_paths]
    return prompts


def require_dag(g: nx.DiGraph) -> None:
    if not nx.is_directed_acyclic_graph(g):
        cycle = nx.find_cycle(g)
        raise GraphworldError(f"graph has a cycle ({' -> '.join(str(e[0]) for e in cycle)} -> "
                              f"{cycle[0][0]}) where a DAG is needed")


def graph_from_node_link(data: dict) -> nx.DiGraph:
    """Build a DiGraph from networkx node-link data (edges under "links" or "edges")."""
    if not isinstance(data, dict) or "nodes" not in data:
        raise GraphworldError("graph is not node-link data: expected an object with 'nodes' and 'links'")
    key = "links" if "links" in data else "edges"
    try:
        g = nx.node_link_graph({**data, "directed": True}, edges=key)
    except Exception as exc:  # networkx raises several types on malformed data
        raise GraphworldError(f"graph is not valid node-link data: {exc}") from None
    return nx.DiGraph(g)


def load_graph(path: str | Path) -> nx.DiGraph:
    """Load a user graph from node-link JSON (.json) or GraphML (.graphml)."""
    path = Path(path)
    if not path.exists():
        raise GraphworldError(f"graph file not found: {path}")
    if path.suffix.lower() == ".graphml":
        try:
            return nx.DiGraph(nx.read_graphml(path))
        except Exception as exc:
            raise GraphworldError(f"{path} is not valid GraphML: {exc}") from None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise GraphworldError(f"{path} is not valid JSON: {exc}") from None
    return graph_from_node_link(data)


def graph_to_node_link(g: nx.DiGraph) -> dict:
    return nx.node_link_data(g, edges="links")
