"""Exact enumeration of Y(x) as a prefix tree whose leaves are rollouts (log space throughout).

Tree nodes are prefixes h; node 0 is the empty completion (the prompt). Each non-root node is
reached from its parent by one token (a graph node, STOP, or a pooled failure leaf: FAIL, or
"FAIL:z" when its walks enter the concept node of route z from an unlabelled prefix).
Leaf arrays: path, log π0, reward, route label, outcome.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np
from scipy.special import logsumexp

from .errors import GraphworldError
from .policy import STOP
from .tasks import Task

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
        with np.errstate(over="ignore"):  # a sum of log-probabilities may reach −inf: that is its value
            for nodes in self._levels[1:]:
                out[nodes] += out[self.parent[nodes]]
        return out

    def children_logsumexp(self, node_log: np.ndarray) -> np.ndarray:
        """log Σ_{c child of h} exp(node_log[c]) for every node h (−inf at leaves)."""
        out = np.full(self.n_nodes, -np.inf)
        np.logaddexp.at(out, self.parent[1:], np.asarray(node_log, dtype=float)[1:])
        return out


def fail_token(route: int, prefix_route: int):
    """Token of a pooled failure leaf: FAIL when its walks keep the prefix's route label,
    "FAIL:z" when they enter the concept node of route z (only possible from an unlabelled prefix)."""
    return FAIL if route == prefix_route else f"{FAIL}:{int(route)}"


def is_fail(tok) -> bool:
    """Whether a token is a pooled failure leaf (FAIL or FAIL:z)."""
    return isinstance(tok, str) and (tok == FAIL or tok.startswith(FAIL + ":"))


@dataclass
class RolloutSet:
    """Y(x) for one task under one policy: the tree plus leaf arrays aligned with tree.leaf_node."""
    task: Task
    tree: PrefixTree
    token: list            # token of each tree node (root: the source)
    log_cond: np.ndarray   # log π0(token | parent) for each tree node (root: 0)
    paths: list            # leaf paths (graph nodes from s; a pooled failure leaf ends with FAIL or FAIL:z)
    log_prob: np.ndarray   # log π0(y)
    reward: np.ndarray     # r(y) ∈ {0, 1}
    route: np.ndarray      # concept id of the first concept node on y, −1 if none (pooled: the walks' common id)
    outcome: list          # "success" | "stop_elsewhere" | "invalid_move" | "dead_end" | "truncated" | "fail"

    def __len__(self):
        return len(self.paths)

    def uses_edges(self, edges) -> np.ndarray:
        """Boolean mask of rollouts whose path uses any of `edges` (a pooled leaf: its prefix's edges)."""
        blocked = set(map(tuple, edges))
        return np.array([any((u, v) in blocked for u, v in zip(p[:-1], p[1:])) for p in self.paths],
                        dtype=bool)

    def summary(self) -> dict:
        ok = self.reward == 1
        p = float(np.exp(logsumexp(self.log_prob[ok]))) if ok.any() else 0.0
        return {"n_rollouts": len(self), "n_correct": int(ok.sum()), "success": min(max(p, 0.0), 1.0),
                "n_tree_nodes": self.tree.n_nodes}


def _check_cap(max_leaves) -> int:
    if isinstance(max_leaves, bool) or not isinstance(max_leaves, (int, np.integer)) or max_leaves < 1:
        raise GraphworldError(f"the rollout cap max_rollouts must be a positive integer, got {max_leaves!r}")
    return int(max_leaves)


def _cap_error(cap: int, pooled: bool) -> GraphworldError:
    hint = "" if pooled else ", or enable failure pooling"
    return GraphworldError(f"Y(x) has more than {cap} rollouts (the rollout cap); raise it with max_rollouts "
                           f"in graph_instance or --max-rollouts on the command line, or lower max_len{hint}")


def enumerate_rollouts(task: Task, policy, *, pool_failures: bool = True,
                       max_leaves: int = 1_000_000) -> RolloutSet:
    """Enumerate every rollout of `policy` on `task` exactly, breadth first.

    `policy.next_logprobs(task, paths)` gives {token: log-prob} per prefix (tokens: graph nodes,
    STOP, FAIL). Moves along non-edges are invalid; a walk that can no longer reach the target
    within max_len is doomed. With pool_failures, the failing continuations of a prefix are pooled
    by route label (the label route_of gives the unpooled walk): one failure leaf per (prefix,
    label), whose probability is their total. Teachers that see a rollout only through its route
    label (route-copying, soft-route) or never copy a failure (copy) then give exactly the
    unpooled answer. More than `max_leaves` rollouts raise as soon as that is certain
    (every open prefix ends in at least one rollout), before the work is spent.
    """
    cap = _check_cap(max_leaves)
    g, t, L = task.graph, task.target, task.max_len
    has_stop = bool(getattr(policy, "has_stop", True))
    dist = nx.single_target_shortest_path_length(g, t)
    dist = dict(dist) if not isinstance(dist, dict) else dist

    def concept(v) -> int:
        z = g.nodes[v].get("concept") if v in g else None
        return -1 if z is None else int(z)

    parent, token, log_cond, path_of = [-1], [task.source], [0.0], [(task.source,)]
    route_node = [concept(task.source)]
    leaf_of = {}  # node index -> (outcome, route label)
    frontier = [0]

    def add(par, tok, lc, path, route, outcome=None):
        parent.append(par)
        token.append(tok)
        log_cond.append(lc)
        path_of.append(path)
        route_node.append(route)
        c = len(parent) - 1
        if outcome is not None:
            leaf_of[c] = (outcome, route)
        return c

    while frontier:
        next_frontier = []
        dists = policy.next_logprobs(task, [path_of[i] for i in frontier])
        for n_done, (i, lp) in enumerate(zip(frontier, dists), 1):
            path, u, d, z_h = path_of[i], path_of[i][-1], len(path_of[i]) - 1, route_node[i]
            pooled = {}  # route label -> log-probs of the failing continuations with that label
            items = [(tok, float(v)) for tok, v in lp.items() if v > -np.inf]
            if not items:  # no action at all: the walk is stuck here
                leaf_of[i] = ("dead_end", z_h)
                continue
            for tok, lc in items:
                z = z_h if (z_h != -1 or tok in (STOP, FAIL)) else concept(tok)
                outcome = _outcome(g, dist, t, L, has_stop, u, d, tok)
                if outcome is None:
                    next_frontier.append(add(i, tok, lc, path + (tok,), z))
                elif outcome == "success" or not pool_failures:
                    add(i, tok, lc, path + (tok,) if tok != STOP else path, z, outcome)
                else:
                    pooled.setdefault(z, []).append(lc)
            for z in sorted(pooled):
                f = fail_token(z, z_h)
                add(i, f, float(logsumexp(pooled[z])), path + (f,), z, "fail")
            open_prefixes = len(next_frontier) + len(frontier) - n_done
            if len(leaf_of) + open_prefixes > cap:  # each open prefix ends in ≥ 1 rollout
                raise _cap_error(cap, pool_failures)
        frontier = next_frontier

    leaf_nodes = np.array(sorted(leaf_of), dtype=np.int64)
    tree = PrefixTree(np.array(parent), leaf_nodes)
    node_logp = tree.path_sum(np.array(log_cond))
    paths = [path_of[c] for c in leaf_nodes]
    outcome = [leaf_of[c][0] for c in leaf_nodes]
    reward = np.array([o == "success" for o in outcome], dtype=np.int64)
    route = np.array([leaf_of[c][1] for c in leaf_nodes], dtype=np.int64)
    return RolloutSet(task, tree, token, np.array(log_cond), paths, node_logp[leaf_nodes],
                      reward, route, outcome)


def _outcome(g, dist, t, L, has_stop, u, d, tok):
    """How the walk at node u after d moves ends when it emits tok (None: it goes on)."""
    if tok == STOP:
        return "success" if u == t else "stop_elsewhere"
    if tok == FAIL:
        return "fail"
    if not g.has_edge(u, tok):
        return "invalid_move"
    if d + 1 > L:
        return "truncated"
    if not has_stop and tok == t:
        return "success"
    if dist.get(tok, np.inf) > L - (d + 1) or (not has_stop and g.out_degree(tok) == 0):
        return "dead_end"
    return None
