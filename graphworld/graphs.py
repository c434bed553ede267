"""Graph generators and loaders.

Every generator returns a ``networkx.DiGraph`` whose edges carry a float ``pref`` (the base
policy's edge preference) and whose bottleneck nodes carry ``concept`` (the route / strategy
id a path through them follows). ``graph.graph["prompts"]`` lists the (source, target) pairs
the generator was built for.
"""
from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree

import networkx as nx
import numpy as np

from .enumeration import is_fail
from .errors import GraphworldError, is_int as _is_int, is_real as _is_real
from .policy import STOP


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


def check_graph(g: nx.DiGraph) -> nx.DiGraph:
    """Validate a task graph: directed, no parallel edges, every edge `pref` a finite number,
    every node `concept` an integer, no node named STOP, FAIL or FAIL:z (rollout tokens).
    Returns g; raises GraphworldError naming the bad item."""
    if not g.is_directed():
        raise GraphworldError("graph must be directed: pcmi reads every edge as a one-way move "
                              "(node-link: \"directed\": true; GraphML: edgedefault=\"directed\")")
    if g.is_multigraph():
        raise GraphworldError("graph has parallel edges (a multigraph); give one edge per (source, target)")
    for u, v, pref in g.edges(data="pref"):
        if pref is not None and not (_is_real(pref) and np.isfinite(pref)):
            raise GraphworldError(f"edge {u!r} -> {v!r} has pref {pref!r}: it must be a finite number")
    for u in g:
        if u == STOP or is_fail(u):
            raise GraphworldError(f"node id {u!r} is reserved (a STOP/FAIL token of a rollout); rename the node")
    for u, z in g.nodes(data="concept"):
        if z is not None and not _is_int(z):
            raise GraphworldError(f"node {u!r} has concept {z!r}: it must be an integer route id")
    return g


def _node_id(node, i: int):
    if not isinstance(node, dict) or "id" not in node:
        raise GraphworldError(f"node {i} of 'nodes' is not an object with an 'id'")
    nid = node["id"]
    if not (isinstance(nid, str) or _is_int(nid)):
        raise GraphworldError(f"node {i} of 'nodes' has id {nid!r}: ids must be strings or integers")
    return nid


def graph_from_node_link(data: dict) -> nx.DiGraph:
    """Build a DiGraph from networkx node-link data (edges under "links" or "edges").

    Stricter than networkx: the graph must be directed ("directed" absent or true), node ids
    unique, and every link's endpoints listed in "nodes" (networkx would create them silently)."""
    if not isinstance(data, dict) or "nodes" not in data:
        raise GraphworldError("graph is not node-link data: expected an object with 'nodes' and 'links'")
    if "links" not in data and "edges" not in data:
        raise GraphworldError("graph is not node-link data: it has 'nodes' but no 'links' (or 'edges')")
    directed = data.get("directed", True)
    if directed is not True:
        raise GraphworldError(f"graph must be directed, got \"directed\": {json.dumps(directed)}: pcmi "
                              "reads every link as a one-way move source -> target")
    if data.get("multigraph", False) is not False:
        raise GraphworldError("graph must not be a multigraph (\"multigraph\": true); "
                              "give one link per (source, target)")
    key = "links" if "links" in data else "edges"
    nodes, links = data["nodes"], data[key]
    if not isinstance(nodes, list) or not isinstance(links, list):
        raise GraphworldError(f"graph 'nodes' and '{key}' must be lists")
    attrs = data.get("graph", {})
    if not isinstance(attrs, dict):
        raise GraphworldError("graph attributes ('graph') must be an object")
    g = nx.DiGraph()
    g.graph.update(attrs)
    for i, node in enumerate(nodes):
        nid = _node_id(node, i)
        if nid in g:
            raise GraphworldError(f"duplicate node id {nid!r} in 'nodes'")
        g.add_node(nid, **{k: v for k, v in node.items() if k != "id"})
    for i, link in enumerate(links):
        if not isinstance(link, dict):
            raise GraphworldError(f"link {i} of '{key}' is not an object")
        for end in ("source", "target"):
            if end not in link:
                raise GraphworldError(f"link {i} of '{key}' has no '{end}'")
        u, v = link["source"], link["target"]
        for end in (u, v):
            if not (isinstance(end, str) or _is_int(end)) or end not in g:
                raise GraphworldError(f"link {i} ({u!r} -> {v!r}) refers to node {end!r}, "
                                      "which is not in 'nodes'")
        if g.has_edge(u, v):
            raise GraphworldError(f"duplicate link {u!r} -> {v!r} in '{key}'")
        g.add_edge(u, v, **{k: val for k, val in link.items() if k not in ("source", "target")})
    return check_graph(g)


def _json_object_without_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise GraphworldError(f"duplicate key {k!r} in a JSON object")
        out[k] = v
    return out


def parse_json(text: str, path, what: str):
    """json.loads(text) refusing duplicate keys; GraphworldError (one line) naming `path`."""
    try:
        return json.loads(text, object_pairs_hook=_json_object_without_duplicates)
    except json.JSONDecodeError as exc:
        raise GraphworldError(f"{path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise GraphworldError(f"{path} is nested too deeply to be {what}") from None


def read_text_file(path: str | Path, what: str = "file") -> str:
    """The text of a user file; GraphworldError (one line) if missing, a folder, empty, binary or unreadable."""
    path = Path(path)
    if not path.exists():
        raise GraphworldError(f"{what} not found: {path}")
    if path.is_dir():
        raise GraphworldError(f"{path} is a directory, not a {what}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise GraphworldError(f"{path} is not a text file (not UTF-8)") from None
    except OSError as exc:
        raise GraphworldError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not text.strip():
        raise GraphworldError(f"{path} is empty")
    return text


def _check_graphml_nodes(text: str, path: Path) -> None:
    """networkx's reader silently creates nodes that an edge names but no <node> declares and
    merges duplicate <node> ids; refuse both, naming the node."""
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        raise GraphworldError(f"{path} is not valid GraphML: malformed XML ({exc})") from None
    local = lambda el: el.tag.rsplit("}", 1)[-1]  # noqa: E731
    ids = set()
    for el in root.iter():
        if local(el) == "node":
            nid = el.get("id")
            if nid in ids:
                raise GraphworldError(f"{path}: duplicate node id {nid!r}")
            ids.add(nid)
    for el in root.iter():
        if local(el) == "edge":
            for end in (el.get("source"), el.get("target")):
                if end not in ids:
                    raise GraphworldError(f"{path}: edge {el.get('source')!r} -> {el.get('target')!r} "
                                          f"refers to node {end!r}, which has no <node> element")


def load_graph(path: str | Path) -> nx.DiGraph:
    """Load a user graph from node-link JSON (.json) or GraphML (.graphml), validated by check_graph."""
    path = Path(path)
    text = read_text_file(path, "graph file")
    if path.suffix.lower() == ".graphml":
        _check_graphml_nodes(text, path)
        try:
            g = nx.parse_graphml(text)
        except (ElementTree.ParseError, nx.NetworkXError, KeyError, ValueError, TypeError) as exc:
            raise GraphworldError(f"{path} is not valid GraphML: {' '.join(str(exc).split())}") from None
        try:
            return check_graph(g)
        except GraphworldError as exc:
            raise GraphworldError(f"{path}: {exc}") from None
    return graph_from_node_link(parse_json(text, path, "a graph"))


def graph_to_node_link(g: nx.DiGraph) -> dict:
    return nx.node_link_data(g, edges="links")
