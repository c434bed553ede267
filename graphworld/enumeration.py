"""Exact enumeration of Y(x) as a prefix tree whose leaves are rollouts (log space throughout).

Tree nodes are prefixes h; node 0 is the empty completion (the prompt). Each non-root node is
reached from its parent by one token (a graph node, STOP, or a pooled failure leaf: FAIL, or
"FAIL:z" when its walks enter the concept node of route z from an unlabelled prefix).
Leaf arrays: path, log π0, reward, route label, outcome.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
    depth: np.ndarray | None = None  # computed when not given; checked (one pass) when given

    def __post_init__(self):
        self.parent = np.asarray(self.parent, dtype=np.int64)
        self.leaf_node = np.asarray(self.leaf_node, dtype=np.int64)
        if self.parent[0] != -1 or _any_in_blocks(self.parent, lambda c, p: (p >= c) | (p < 0)):
            raise GraphworldError("prefix tree nodes must be numbered parents-first")
        if self.depth is None:
            self.depth = _depths(self.parent)
        else:
            self.depth = np.asarray(self.depth, dtype=np.int64)
            depth = self.depth
            if depth.shape != self.parent.shape or depth[0] != 0 or \
                    _any_in_blocks(self.parent, lambda c, p: depth[c] != depth[p] + 1):
                raise GraphworldError("prefix tree depths must be 0 at the root and parent's depth + 1 elsewhere")
        depth = self.depth
        if np.all(depth[1:] >= depth[:-1]):  # breadth-first numbering: the levels are ranges
            order = np.arange(len(depth))
        else:
            order = np.argsort(depth, kind="stable")
        self._levels = np.split(order, np.cumsum(np.bincount(depth))[:-1])

    @classmethod
    def flat(cls, n: int) -> "PrefixTree":
        """The one-step tree of an explicit instance: every rollout is a single token."""
        return cls(np.r_[-1, np.zeros(n, dtype=np.int64)], np.arange(1, n + 1), np.r_[0, np.ones(n, dtype=np.int64)])

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
        for d in range(len(self._levels) - 1, 0, -1):
            nodes = self._levels[d]
            seg = self.level_segments(d)
            if seg is None:
                np.logaddexp.at(out, self.parent[nodes], out[nodes])
                continue
            parents, starts = seg
            vals = out[nodes]
            m = np.maximum.reduceat(vals, starts, axis=0)
            shift = np.where(np.isfinite(m), m, 0.0)
            with np.errstate(divide="ignore"):
                total = shift + np.log(np.add.reduceat(np.exp(vals - np.repeat(shift, np.diff(np.r_[starts, len(nodes)]),
                                                                                  axis=0)), starts, axis=0))
            out[parents] = np.logaddexp(out[parents], np.where(np.isfinite(m), total, -np.inf))
        return np.moveaxis(out, 0, -1)

    def level_segments(self, d: int):
        """(parents, starts) of level d when its nodes are grouped by parent (breadth-first numbering
        makes them so): the children of parents[i] are level[starts[i]:starts[i+1]]; None otherwise."""
        cache = self.__dict__.setdefault("_segments", {})
        if d not in cache:
            par = self.parent[self._levels[d]]
            if len(par) and np.all(par[1:] >= par[:-1]):
                starts = np.flatnonzero(np.r_[True, par[1:] != par[:-1]])
                cache[d] = (par[starts], starts)
            else:
                cache[d] = None
        return cache[d]

    def reduce_to_parents(self, node_val: np.ndarray, ufunc) -> np.ndarray:
        """node_val combined bottom-up with `ufunc` (np.minimum, np.maximum, …): every node gets
        ufunc over its own value and its whole subtree's."""
        out = np.array(node_val)
        for d in range(len(self._levels) - 1, 0, -1):
            nodes = self._levels[d]
            seg = self.level_segments(d)
            if seg is None:
                ufunc.at(out, self.parent[nodes], out[nodes])
            else:
                parents, starts = seg
                out[parents] = ufunc(out[parents], ufunc.reduceat(out[nodes], starts))
        return out

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


_BLOCK = 1 << 16  # nodes handled at once where a whole-tree temporary is not needed


def _any_in_blocks(parent: np.ndarray, bad) -> bool:
    """Whether bad(c, parent[c]) holds for any non-root node c, judged _BLOCK nodes at a time."""
    for lo in range(1, len(parent), _BLOCK):
        c = np.arange(lo, min(lo + _BLOCK, len(parent)))
        if np.any(bad(c, parent[c])):
            return True
    return False


def _depths(parent: np.ndarray) -> np.ndarray:
    """Depth of every node by pointer doubling: O(N log depth), no Python loop over nodes."""
    depth = (parent >= 0).astype(np.int64)
    anc = parent.copy()
    while True:
        up = anc >= 0
        up[up] = anc[anc[up]] >= 0  # nodes whose ancestor still has an ancestor
        if not up.any():
            return depth
        depth[up] += depth[anc[up]]
        anc[up] = anc[anc[up]]


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
    if getattr(policy, "markov", False):
        table = _markov_table(task, policy)
        if table is not None:
            return _enumerate_markov(task, policy, table, pool_failures, cap)
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


# ----------------------------------------------------------------------------------------------
# Markov policies (π(next | path) depends on the last node only, e.g. EdgePolicy): one level of
# the tree at a time with numpy, paths kept as parent pointers and built once for the leaves.

_CODES = ("success", "stop_elsewhere", "invalid_move", "dead_end", "truncated", "fail")
_CONTINUE = -1


def _markov_table(task: Task, policy):
    """Per graph node u (index), its actions: token ids (nodes 0..V−1, STOP = V) and log-probs,
    as CSR arrays (offsets, tokens, log-probs), from one call of the policy; None if a token is
    neither a graph node nor STOP (the generic enumeration handles it)."""
    g = task.graph
    nodes = list(g.nodes)
    index = {v: i for i, v in enumerate(nodes)}
    V = len(nodes)
    dists = policy.next_logprobs(task, [(v,) for v in nodes])
    offsets, toks, lps = [0], [], []
    for lp in dists:
        for tok, v in lp.items():
            v = float(v)
            if not v > -np.inf:
                continue
            if tok == STOP:
                toks.append(V)
            elif tok in index and tok != FAIL:
                toks.append(index[tok])
            else:
                return None
            lps.append(v)
        offsets.append(len(toks))
    return nodes, index, np.array(offsets, np.int64), np.array(toks, np.int32), np.array(lps, float)


def _segment_logsumexp(x: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """log Σ exp(x) over the segments x[starts[i]:starts[i+1]] (finite x)."""
    m = np.maximum.reduceat(x, starts)
    seg = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(x)]))
    return m + np.log(np.add.reduceat(np.exp(x - m[seg]), starts))


@dataclass
class _MarkovWorld:
    """Per token id (graph nodes 0..V−1, then STOP = V) what a level needs: the policy's CSR action
    table (off, acts, lps), is_edge per action, and concept label, distance to t, out-degree per token."""
    off: np.ndarray
    acts: np.ndarray
    lps: np.ndarray
    is_edge: np.ndarray
    concept: np.ndarray
    dist_t: np.ndarray
    outdeg: np.ndarray
    t_id: int
    stop_id: int
    L: int
    has_stop: bool
    pool_failures: bool


def _children(w: _MarkovWorld, f_cur: np.ndarray, f_z: np.ndarray, d: int):
    """The children of the open prefixes (last token f_cur, route label f_z, d moves made), numbered
    as the per-prefix loop numbers them: per prefix its continuing and successful moves in action
    order, then one pooled failure leaf per route label in label order.
    Returns (rep, tok, log_cond, label, code): the child's prefix (index into f_cur), token id
    (FAIL = stop_id + 1, FAIL:z = stop_id + 2 + z), log π0(tok | prefix), route label, outcome code."""
    off = w.off
    deg = off[f_cur + 1] - off[f_cur]
    rep = np.repeat(np.arange(len(f_cur)), deg)
    pos = np.arange(len(rep)) - np.repeat(np.cumsum(deg) - deg, deg)
    a = off[f_cur][rep] + pos
    k, lc, zh = w.acts[a], w.lps[a], f_z[rep]
    stop = k == w.stop_id
    z = np.where((zh != -1) | stop, zh, w.concept[k])
    code = _outcome_codes(k, ~w.is_edge[a], f_cur[rep] == w.t_id, w.dist_t[k], w.outdeg[k], k == w.t_id, stop,
                          d, w.L, w.has_stop)
    if not w.pool_failures:
        return rep, k, lc, z, code
    pooled = (code != _CONTINUE) & (code != 0)
    if not pooled.any():  # (rep, pos) already increase lexicographically: the order below is the identity
        return rep, k, lc, z, code
    keep = ~pooled
    # pooled failures: one leaf per (prefix, label), in label order, after the prefix's other children
    pr, pz, plc = rep[pooled], z[pooled], lc[pooled]
    o = np.lexsort((pz, pr))
    pr, pz, plc = pr[o], pz[o], plc[o]
    starts = np.flatnonzero(np.r_[True, (pr[1:] != pr[:-1]) | (pz[1:] != pz[:-1])])
    plc, pr, pz = _segment_logsumexp(plc, starts), pr[starts], pz[starts]
    new_rep = np.r_[rep[keep], pr]
    group = np.r_[np.zeros(int(keep.sum()), np.int64), np.ones(len(pr), np.int64)]
    within = np.r_[pos[keep], pz]
    order = np.lexsort((within, group, new_rep))
    fail_id = w.stop_id + 1
    n_rep = new_rep[order]
    n_tok = np.r_[k[keep], np.full(len(pr), fail_id, k.dtype)][order]
    n_lc = np.r_[lc[keep], plc][order]
    n_z = np.r_[z[keep], pz][order]
    n_code = np.r_[code[keep], np.full(len(pr), _CODES.index("fail"), code.dtype)][order]
    # a FAIL:z leaf (its walks enter route z from an unlabelled prefix) gets the token id FAIL_ID + 1 + z
    n_tok = np.where((n_tok == fail_id) & (n_z != f_z[n_rep]), fail_id + 1 + n_z, n_tok).astype(k.dtype)
    return n_rep, n_tok, n_lc, n_z, n_code


def _blocks(deg: np.ndarray):
    """Consecutive ranges [lo, hi) of the open prefixes, each with at most _BLOCK prefixes and
    (unless one prefix alone has more) at most _BLOCK actions in all: deg[i] actions at prefix i."""
    cum = np.cumsum(deg)
    lo = 0
    while lo < len(deg):
        base = int(cum[lo - 1]) if lo else 0
        hi = int(np.searchsorted(cum, base + _BLOCK, side="right"))
        hi = min(max(hi, lo + 1), lo + _BLOCK)
        yield lo, hi
        lo = hi


def _level_leaves(made: list, stuck: list) -> tuple:
    """One tree level's leaves (node ids, outcome codes, log π0, route labels) in node order: the
    leaves made with the level (parts in node order) merged with its stuck prefixes (likewise)."""
    cols = [np.concatenate(c) for c in zip(*(made + stuck))]
    if stuck:
        o = np.argsort(cols[0], kind="stable")
        cols = [c[o] for c in cols]
    return tuple(cols)


def _object_list(table: np.ndarray, idx: np.ndarray) -> list:
    """table[idx].tolist(), _BLOCK entries at a time (no object array of len(idx) at once)."""
    out = [None] * len(idx)
    for lo in range(0, len(idx), _BLOCK):
        out[lo:lo + _BLOCK] = table[idx[lo:lo + _BLOCK]].tolist()
    return out


def _enumerate_markov(task: Task, policy, table, pool_failures: bool, cap: int) -> RolloutSet:
    """Breadth first, one level at a time and _BLOCK open prefixes at a time (which bounds the
    temporaries); a leaf's log π0 is its parent's plus log π0(token | parent), the sum path_sum makes."""
    g, t, L = task.graph, task.target, task.max_len
    nodes, index, off, acts, lps = table
    V = len(nodes)
    STOP_ID, FAIL_ID = V, V + 1
    dist = nx.single_target_shortest_path_length(g, t)
    dist = dict(dist) if not isinstance(dist, dict) else dist
    # per token id (nodes, then STOP): concept label, distance to t, out-degree
    concept = np.array([-1 if g.nodes[v].get("concept") is None else int(g.nodes[v]["concept"]) for v in nodes]
                       + [-1], np.int32)
    src = np.repeat(np.arange(V), np.diff(off))
    w = _MarkovWorld(off, acts, lps,
                     np.array([a == STOP_ID or g.has_edge(nodes[u], nodes[a]) for u, a in zip(src, acts)], bool),
                     concept, np.array([dist.get(v, np.inf) for v in nodes] + [np.inf]),
                     np.array([g.out_degree(v) for v in nodes] + [0], np.int64), index[t], STOP_ID, L,
                     bool(getattr(policy, "has_stop", True)), pool_failures)

    s_id = index[task.source]
    # per node, in node order (chunks): parent, token id, log π0(token | parent); nodes per level
    par, tok, lcond, level_size = [np.array([-1])], [np.array([s_id], np.int32)], [np.zeros(1)], [1]
    leaves = []      # per level (node order): (node ids, outcome codes, log π0, route labels)
    made = []        # the leaves made with the level being expanded (they join its stuck prefixes)
    # the open prefixes of the level being expanded: node id, last token, route label, log π0
    f_node, f_cur, f_z, f_logp = np.array([0]), np.array([s_id], np.int32), concept[[s_id]], np.zeros(1)
    max_label = int(f_z[0])
    n_nodes, n_leaves, d = 1, 0, 0
    dead_end = _CODES.index("dead_end")
    while len(f_node):
        nxt, made_next, stuck_leaves, n_open, n_level = [], [], [], 0, 0
        for lo, hi in _blocks(off[f_cur + 1] - off[f_cur]):
            fn, fc, fz, flp = (x[lo:hi] for x in (f_node, f_cur, f_z, f_logp))
            stuck = off[fc + 1] == off[fc]  # no action at all: the walk is stuck here
            if stuck.any():
                stuck_leaves.append((fn[stuck], np.full(int(stuck.sum()), dead_end, np.int8), flp[stuck], fz[stuck]))
            rep, k, lc, z, code = _children(w, fc, fz, d)
            ids = n_nodes + np.arange(len(rep))
            with np.errstate(over="ignore"):  # as in path_sum: a sum of log-probabilities may reach −inf
                logp = lc + flp[rep]
            is_leaf = code != _CONTINUE
            n_nodes += len(rep)
            n_level += len(rep)
            n_leaves += int(stuck.sum()) + int(is_leaf.sum())
            n_open += len(rep) - int(is_leaf.sum())
            # each open prefix, expanded or not yet, ends in ≥ 1 rollout
            if n_leaves + n_open + (len(f_node) - hi) > cap:
                raise _cap_error(cap, pool_failures)
            par.append(fn[rep])
            tok.append(k)
            lcond.append(lc)
            if len(z):
                max_label = max(max_label, int(z.max()))
            made_next.append((ids[is_leaf], code[is_leaf], logp[is_leaf], z[is_leaf]))
            op = ~is_leaf
            nxt.append((ids[op], k[op], z[op], logp[op]))
            del fn, fc, fz, flp, stuck, rep, k, lc, z, code, ids, logp, is_leaf, op  # views pin the frontier
        if made or stuck_leaves:
            leaves.append(_level_leaves(made, stuck_leaves))
        made = made_next
        f_node, f_cur, f_z, f_logp = (np.concatenate(c) for c in zip(*nxt))
        del nxt
        level_size.append(n_level)
        d += 1
    leaves.append(_level_leaves(made, []))
    del made, made_next, f_node, f_cur, f_z, f_logp

    leaf_nodes, leaf_code, log_prob, route = (np.concatenate(c) for c in zip(*leaves))
    del leaves
    route = route.astype(np.int64)
    parent = np.concatenate(par)
    del par
    lcond = np.concatenate(lcond)
    tok = np.concatenate(tok)
    depth = np.repeat(np.arange(len(level_size), dtype=np.int64), level_size)
    tree = PrefixTree(parent, leaf_nodes, depth)
    del depth
    n_labels = max_label + 1
    tok_obj = np.empty(V + 2 + n_labels, dtype=object)
    tok_obj[:V] = nodes
    tok_obj[STOP_ID], tok_obj[FAIL_ID] = STOP, FAIL
    tok_obj[FAIL_ID + 1:] = [fail_token(zz, -1) for zz in range(n_labels)]
    paths = _leaf_paths(tree, tok, leaf_nodes, tok_obj, STOP_ID)
    token = _object_list(tok_obj, tok)
    del tok
    outcome = _object_list(np.array(_CODES, dtype=object), leaf_code)
    reward = (leaf_code == 0).astype(np.int64)
    return RolloutSet(task, tree, token, lcond, paths, log_prob, reward, route, outcome)


def _leaf_paths(tree: PrefixTree, tok: np.ndarray, leaf_nodes: np.ndarray, tok_obj, stop_id: int) -> "LeafPaths":
    """Each leaf's path: the tokens from the root to it, STOP left out (built from parent pointers)."""
    n = len(leaf_nodes)
    D = int(tree.depth[leaf_nodes].max(initial=0))
    ids = np.zeros((n, D + 1), np.int32)
    length = np.empty(n, np.int32)
    for lo in range(0, n, _BLOCK):  # _BLOCK leaves at a time
        cur = leaf_nodes[lo:lo + _BLOCK]
        depth, rows = tree.depth[cur], ids[lo:lo + _BLOCK]
        length[lo:lo + _BLOCK] = depth + 1 - (tok[cur] == stop_id)
        # column col: the ancestor at depth col (a row joins at its own depth)
        for col in range(int(depth.max()), -1, -1):
            on = depth >= col
            rows[on, col] = tok[cur[on]]
            cur = np.where(on, tree.parent[cur], cur)
    return LeafPaths(ids, length, tok_obj)


class LeafPaths(Sequence):
    """The leaves' paths as one (n, depth + 1) array of token ids and a length per leaf; indexing
    gives the same tuples a list of paths would (graph nodes from s, then FAIL or FAIL:z if pooled)."""

    def __init__(self, ids: np.ndarray, length: np.ndarray, tok_obj: np.ndarray):
        self.ids, self.length, self.tok_obj = ids, length, tok_obj

    def __len__(self) -> int:
        return len(self.length)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return tuple(self.tok_obj[self.ids[i, :self.length[i]]].tolist())

    def __iter__(self):
        rows = self.tok_obj[self.ids].tolist() if len(self) <= 4096 else None
        for i in range(len(self)):
            yield tuple(rows[i][:self.length[i]]) if rows is not None else self[i]

    def __eq__(self, other):
        if isinstance(other, LeafPaths):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        if isinstance(other, (list, tuple)):
            return len(self) == len(other) and all(a == tuple(b) for a, b in zip(self, other))
        return NotImplemented

    def __repr__(self) -> str:
        return f"LeafPaths({len(self)} paths)"


def _outcome_codes(k, invalid, at_target, dist_k, outdeg_k, k_is_target, stop, d, L, has_stop) -> np.ndarray:
    """`_outcome` for a whole level at once: index into _CODES per action, _CONTINUE if the walk goes on."""
    conds = [(stop & at_target, "success"), (stop, "stop_elsewhere"), (invalid, "invalid_move"),
             (np.full(len(k), d + 1 > L), "truncated")]
    if not has_stop:
        conds.append((k_is_target, "success"))
    conds.append(((dist_k > L - (d + 1)) | ((not has_stop) & (outdeg_k == 0)), "dead_end"))
    code = np.full(len(k), _CONTINUE, np.int8)
    for where, name in reversed(conds):  # the first condition that holds wins
        code[where] = _CODES.index(name)
    return code
