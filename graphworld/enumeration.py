"""Exact enumeration of Y(x) as a prefix tree whose leaves are rollouts (log space throughout).

Tree nodes are prefixes h; node 0 is the empty completion (the prompt). Each non-root node is
reached from its parent by one token (a graph node, STOP, or FAIL = a pooled failure leaf).
Leaf arrays: path, log π0, reward, route label, outcome.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np
from scipy.special import logsumexp

from .errors import GraphworldError
from .policy import STOP
from .tasks import Task, route_of

FAIL = "FAIL"


@dataclass
class PrefixTree:
    """parent[c] is the prefix c extends (−1 for the root); leaf_node[i] is the node of rollout i.

    Nodes are numbered so that parent[c] < c (breadth-first), which every recursion relies on.
    """
    parent: np.ndarray
    leaf_node: np.ndarray
    depth: np.ndarray = field(init=False)

    def __post_init__(self):
        self.parent = np.asarray(self.parent, dtype=np.int64)
        self.leaf_node = np.asarray(self.leaf_node, dtype=np.int64)
        if self.parent[0] != -1 or np.any(self.parent[1:] >= np.arange(1, len(self.parent))):
            raise GraphworldError("prefix tree nodes must be numbered parents-first")
        depth = np.zeros(len(self.parent), dtype=np.int64)
        for c in range(1, len(self.parent)):
            depth[c] = depth[self.parent[c]] + 1
        self.depth = depth
        self._levels = [np.flatnonzero(depth == d) for d in range(int(depth.max()) + 1)]

    @classmethod
    def flat(cls, n: int) -> "PrefixTree":
        """The one-step tree of an explicit instance: every rollout is a single token."""
        return cls(np.r_[-1, np.zeros(n, dtype=np.int64)], np.arange(1, n + 1))

    @property
    def n_nodes(self) -> int:
        return len(self.parent)

    @property
    def n_leaves(self) -> int:
        return len(self.leaf_node)

    def prefix_logsumexp(self, leaf_log: np.ndarray) -> np.ndarray:
        """log Σ_{y ⊒ h} exp(leaf_log[..., y]) for every node h: shape (..., n) → (..., N)."""
        leaf_log = np.asarray(leaf_log, dtype=float)
        out = np.full(leaf_log.shape[:-1] + (self.n_nodes,), -np.inf)
        out[..., self.leaf_node] = leaf_log
        out = np.moveaxis(out, -1, 0).copy()
        for nodes in reversed(self._levels[1:]):
            np.logaddexp.at(out, self.parent[nodes], out[nodes])
        return np.moveaxis(out, 0, -1)

    def path_sum(self, node_val: np.ndarray) -> np.ndarray:
        """Σ of node_val along the root→h path for every node h (root value included)."""
        out = np.array(node_val, dtype=float)
        for nodes in self._levels[1:]:
            out[nodes] += out[self.parent[nodes]]
        return out

    def children_logsumexp(self, node_log: np.ndarray) -> np.ndarray:
        """log Σ_{c child of h} exp(node_log[c]) for every node h (−inf at leaves)."""
        out = np.full(self.n_nodes, -np.inf)
        np.logaddexp.at(out, self.parent[1:], np.asarray(node_log, dtype=float)[1:])
        return out


@dataclass
class RolloutSet:
    """Y(x) for one task under one policy: the tree plus leaf arrays aligned with tree.leaf_node."""
    task: Task
    tree: PrefixTree
    token: list            # token of each tree node (root: the source)
    log_cond: np.ndarray   # log π0(token | parent) for each tree node (root: 0)
    paths: list            # leaf paths (graph nodes from s; a FAIL leaf ends with "FAIL")
    log_prob: np.ndarray   # log π0(y)
    reward: np.ndarray     # r(y) ∈ {0, 1}
    route: np.ndarray      # concept id of the first concept node on y, −1 if none
    outcome: list          # "success" | "stop_elsewhere" | "invalid_move" | "dead_end" | "truncated" | "fail"

    def __len__(self):
        return len(self.paths)

    def uses_edges(self, edges) -> np.ndarray:
        """Boolean mask of rollouts whose path uses any of `edges`."""
        blocked = set(map(tuple, edges))
        return np.array([any((u, v) in blocked for u, v in zip(p[:-1], p[1:])) for p in self.paths])

    def summary(self) -> dict:
        return {"n_rollouts": len(self), "n_correct": int(self.reward.sum()),
                "success": float(np.exp(logsumexp(self.log_prob[self.reward == 1]))) if self.reward.any() else 0.0,
                "n_tree_nodes": self.tree.n_nodes}


def enumerate_rollouts(task: Task, policy, *, pool_failures: bool = True,
                       max_leaves: int = 1_000_000) -> RolloutSet:
    """Enumerate every rollout of `policy` on `task` exactly, breadth first.

    `policy.next_logprobs(task, paths)` gives {token: log-prob} per prefix (tokens: graph nodes,
    STOP). Moves along non-edges are invalid; a walk that can no longer reach the target
    within max_len is doomed. With pool_failures, all failing continuations of a prefix are
    pooled into one FAIL leaf (exact: its probability is their total).
    """
    g, t, L = task.graph, task.target, task.max_len
    has_stop = bool(getattr(policy, "has_stop", True))
    dist = nx.single_target_shortest_path_length(g, t)
    dist = dict(dist) if not isinstance(dist, dict) else dist

    parent, token, log_cond, path_of = [-1], [task.source], [0.0], [(task.source,)]
    leaf_of = {}  # node index -> outcome
    frontier = [0]

    def add(par, tok, lc, path, outcome=None):
        parent.append(par)
        token.append(tok)
        log_cond.append(lc)
        path_of.append(path)
        c = len(parent) - 1
        if outcome is not None:
            leaf_of[c] = outcome
            if len(leaf_of) > max_leaves:
                raise GraphworldError(f"Y(x) has more than {max_leaves} rollouts; lower max_len "
                                      "or enable failure pooling")
        return c

    while frontier:
        next_frontier = []
        dists = policy.next_logprobs(task, [path_of[i] for i in frontier])
        for i, lp in zip(frontier, dists):
            path, u, d = path_of[i], path_of[i][-1], len(path_of[i]) - 1
            pooled = []
            items = [(tok, float(v)) for tok, v in lp.items() if v > -np.inf]
            if not items:  # no action at all: the walk is stuck here
                leaf_of[i] = "dead_end"
                continue
            for tok, lc in items:
                if tok == STOP:
                    outcome = "success" if u == t else "stop_elsewhere"
                elif tok == FAIL:
                    outcome = "fail"
                elif not g.has_edge(u, tok):
                    outcome = "invalid_move"
                elif d + 1 > L:
                    outcome = "truncated"
                elif not has_stop and tok == t:
                    outcome = "success"
                elif dist.get(tok, np.inf) > L - (d + 1) or (not has_stop and g.out_degree(tok) == 0):
                    outcome = "dead_end"
                else:
                    outcome = None
                if outcome is None:
                    next_frontier.append(add(i, tok, lc, path + (tok,)))
                elif outcome == "success" or not pool_failures:
                    add(i, tok, lc, path + (tok,) if tok != STOP else path, outcome)
                else:
                    pooled.append(lc)
            if pooled:
                add(i, FAIL, float(logsumexp(pooled)), path + (FAIL,), "fail")
        frontier = next_frontier

    leaf_nodes = np.array(sorted(leaf_of), dtype=np.int64)
    tree = PrefixTree(np.array(parent), leaf_nodes)
    node_logp = tree.path_sum(np.array(log_cond))
    paths = [path_of[c] for c in leaf_nodes]
    outcome = [leaf_of[c] for c in leaf_nodes]
    reward = np.array([o == "success" for o in outcome], dtype=np.int64)
    route = np.array([route_of(g, [v for v in p if v != FAIL]) for p in paths], dtype=np.int64)
    return RolloutSet(task, tree, token, np.array(log_cond), paths, node_logp[leaf_nodes],
                      reward, route, outcome)
