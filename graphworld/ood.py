"""Out-of-distribution perturbations: blocked edges and held-out prompts (theory.md §8)."""
from __future__ import annotations

import networkx as nx
import numpy as np
from scipy.special import logsumexp

from .errors import GraphworldError


def concept_edges(g: nx.DiGraph, concept: int) -> list[tuple]:
    """Edges entering the bottleneck node(s) of `concept`: blocking them closes that route."""
    heads = [v for v, z in g.nodes(data="concept") if z is not None and int(z) == int(concept)]
    if not heads:
        raise GraphworldError(f"graph has no node with concept {concept!r}")
    return [(u, v) for v in heads for u in g.predecessors(v)]


def dominant_route(rollouts, log_pi: np.ndarray | None = None) -> int:
    """The route carrying the most correct mass under π (default: the base policy)."""
    log_pi = rollouts.log_prob if log_pi is None else log_pi
    ok = rollouts.reward == 1
    routes = sorted(set(rollouts.route[ok].tolist()))
    if not routes:
        raise GraphworldError("no correct rollout: the dominant route is undefined")
    mass = [logsumexp(log_pi[ok & (rollouts.route == z)]) for z in routes]
    return routes[int(np.argmax(mass))]


def block_edges(g: nx.DiGraph, edges) -> nx.DiGraph:
    """A copy of g without `edges` (to re-run a Markov policy on the perturbed graph)."""
    h = g.copy()
    missing = [e for e in edges if not h.has_edge(*e)]
    if missing:
        raise GraphworldError(f"cannot block {missing[0]!r}: not an edge of the graph")
    h.remove_edges_from(edges)
    return h


def split_prompts(prompts: list, held_out: float = 0.2, seed: int = 0) -> tuple[list, list]:
    """Random (train, held-out) split of (source, target) pairs."""
    if not 0 <= held_out < 1:
        raise GraphworldError(f"held_out must be in [0, 1), got {held_out}")
    idx = np.random.default_rng(seed).permutation(len(prompts))
    k = int(round(held_out * len(prompts)))
    return [prompts[i] for i in sorted(idx[k:])], [prompts[i] for i in sorted(idx[:k])]
