"""The tabular policy on the prefix tree (theory.md §9): one logit vector θ_h per internal prefix h,
π_θ(a | h) = softmax(θ_h)_a. In this parametrization token-level training is a gradient flow in θ.

Logits live on the tree's nodes: θ[c] is the logit of the token that leads from parent[c] to c
(θ[0], the root, is unused and 0). A logit of −inf is a masked token (probability exactly 0, and
it stays 0 under every update: its gradient is 0).
"""
from __future__ import annotations

import numpy as np

from graphworld.enumeration import PrefixTree

from .distributions import prob_of
from .errors import PcmiInputError


class Siblings:
    """The children of every internal node as contiguous segments, for vectorized per-prefix sums.

    segment s holds the children of internal node `internal[s]`; `segment[c]` is the segment of
    node c (−1 for the root). Functions take node arrays (..., N) and return segment arrays (..., S)."""

    def __init__(self, tree: PrefixTree):
        n = tree.n_nodes
        child = np.arange(1, n)
        self.order = child[np.argsort(tree.parent[1:], kind="stable")]
        par = tree.parent[self.order]
        self.starts = np.flatnonzero(np.r_[True, par[1:] != par[:-1]]) if len(par) else np.zeros(0, np.int64)
        self.internal = par[self.starts]
        self.segment = np.full(n, -1, dtype=np.int64)
        sizes = np.diff(np.r_[self.starts, len(self.order)])
        self.segment[self.order] = np.repeat(np.arange(len(self.starts)), sizes)
        self.size = sizes
        #: children already numbered parent by parent (as the enumeration makes them): no gather needed
        self.contiguous = bool(np.array_equal(self.order, child))

    def by_depth(self, tree: PrefixTree) -> list[tuple]:
        """Per depth d, deepest first: (internal nodes at depth d, their children concatenated,
        start of each node's children in that list): for bottom-up recursions over the tree."""
        if getattr(self, "_by_depth", None) is None:
            out = []
            pdep = tree.depth[tree.parent[self.order]]
            for d in range(int(pdep.max()) if len(pdep) else -1, -1, -1):
                kids = self.order[pdep == d]
                par = tree.parent[kids]
                first = np.flatnonzero(np.r_[True, par[1:] != par[:-1]])
                out.append((par[first], kids, first))
            self._by_depth = out
        return self._by_depth

    @property
    def n_segments(self) -> int:
        return len(self.starts)

    def _children(self, x):
        return x[..., 1:] if self.contiguous else x[..., self.order]

    def sum(self, x) -> np.ndarray:
        """Σ over the children of each internal node: (..., N) → (..., S) (np.bincount per row:
        twice as fast as np.add.reduceat on many short segments)."""
        x = np.asarray(x, float)
        S, seg = self.n_segments, self.segment[1:]
        rows = x.reshape(-1, x.shape[-1])
        out = np.empty((rows.shape[0], S))
        for i, r in enumerate(rows):
            out[i] = np.bincount(seg, weights=r[1:], minlength=S)
        return out.reshape(x.shape[:-1] + (S,))

    def max(self, x) -> np.ndarray:
        return np.maximum.reduceat(self._children(np.asarray(x, float)), self.starts, axis=-1)

    def logsumexp(self, x) -> np.ndarray:
        """log Σ_children exp(x): (..., N) → (..., S); −inf where every child is −inf."""
        x = np.asarray(x, float)
        m = self.max(x)
        m0 = np.where(np.isfinite(m), m, 0.0)
        with np.errstate(divide="ignore"):
            return np.log(self.sum(np.exp(x - self.spread(m0)))) + m0

    def spread(self, seg) -> np.ndarray:
        """A segment value on each of its children: (..., S) → (..., N); the root gets 0."""
        seg = np.asarray(seg, float)
        if self.contiguous:
            out = np.empty(seg.shape[:-1] + (len(self.segment),))
            out[..., 0] = 0.0
            out[..., 1:] = np.repeat(seg, self.size, axis=-1)
            return out
        out = seg[..., np.maximum(self.segment, 0)]
        out[..., 0] = 0.0
        return out

    def top_k(self, key, k: int) -> np.ndarray:
        """Mask of the k children with the largest key in every segment (ties: lower node index
        first, as `rank`); key (..., N) → bool (..., N), the root False."""
        key = np.asarray(key, float)
        out = np.zeros(key.shape, bool)
        if len(self.size) == 0:
            return out
        if k >= self.size.max():
            out[..., 1:] = True
            return out
        if k > 8:
            out = self.rank(key) < k
            out[..., 0] = False
            return out
        idx = np.broadcast_to(np.arange(key.shape[-1], dtype=float), key.shape)
        big = float(key.shape[-1])
        cur = key.copy()
        cur[..., 0] = -np.inf
        for _ in range(k):  # pick each segment's largest remaining key, lowest index among ties
            m = self.spread(self.max(cur))
            cand = (cur == m) & ~out
            cand[..., 0] = False
            first = self.spread(np.minimum.reduceat(self._children(np.where(cand, idx, big)), self.starts, axis=-1))
            pick = cand & (idx == first)
            out |= pick
            cur = np.where(pick, -np.inf, cur)
        return out

    def rank(self, key) -> np.ndarray:
        """Rank of each node among its siblings by descending key (ties: lower node index first);
        key (..., N) → int (..., N); the root gets 0."""
        key = np.asarray(key, float)
        flat = key.reshape(-1, key.shape[-1])
        out = np.zeros(flat.shape, dtype=np.int64)
        nodes = np.arange(1, key.shape[-1])
        seg = self.segment[1:]
        for i, row in enumerate(flat):
            srt = nodes[np.lexsort((nodes, -row[1:], seg))]
            out[i, srt] = np.arange(len(srt)) - self.starts[self.segment[srt]]
        return out.reshape(key.shape)


class TabularPolicy:
    """π_θ on a prefix tree. `theta` (N,) are the logits; everything else is derived from them."""

    def __init__(self, tree: PrefixTree, theta, siblings: Siblings | None = None):
        self.tree = tree
        self.sib = siblings or Siblings(tree)
        theta = np.array(theta, dtype=float)
        if theta.shape != (tree.n_nodes,):
            raise PcmiInputError(f"logits must have one entry per tree node ({tree.n_nodes}), got shape {theta.shape}")
        if np.isnan(theta).any() or np.isposinf(theta).any():
            raise PcmiInputError("logits must be finite or −inf (a masked token), not NaN or +inf")
        theta[0] = 0.0
        self.theta = theta
        lse = self.sib.logsumexp(theta)
        with np.errstate(invalid="ignore"):
            lc = theta - self.sib.spread(lse)
        lc[np.isneginf(theta)] = -np.inf
        lc[0] = 0.0
        self.log_cond = lc                                    # log π(a | h) at node h·a
        self.log_prefix = tree.path_sum(lc)                   # log π(h): the student reaches h
        if np.any(np.isneginf(lse) & np.isfinite(self.log_prefix[self.sib.internal])):
            raise PcmiInputError("every prefix the policy reaches needs at least one token with a finite logit")
        self.log_seq = self.log_prefix[tree.leaf_node]        # log π(y)

    @classmethod
    def from_log_probs(cls, tree: PrefixTree, log_pi, siblings: Siblings | None = None) -> "TabularPolicy":
        """The tabular policy whose sequence law is π (log π over the leaves): θ = log π(a | h);
        below a prefix of probability 0 the conditionals are uniform (never reached)."""
        log_pi = np.asarray(log_pi, float)
        if log_pi.shape != (tree.n_leaves,):
            raise PcmiInputError(f"policy has {log_pi.size} entries but the tree has {tree.n_leaves} leaves")
        node = tree.prefix_logsumexp(log_pi)
        par = node[tree.parent[1:]]
        theta = np.zeros(tree.n_nodes)
        with np.errstate(invalid="ignore"):
            theta[1:] = np.where(np.isfinite(par), node[1:] - par, 0.0)
        return cls(tree, theta, siblings)

    def with_theta(self, theta) -> "TabularPolicy":
        return TabularPolicy(self.tree, theta, self.sib)

    @property
    def reach(self) -> np.ndarray:
        """μ(h) = π(h), clipped to [0, 1], on every node."""
        return prob_of(self.log_prefix)

    @property
    def cond(self) -> np.ndarray:
        """π(a | h) at every node h·a (root: 1)."""
        return prob_of(self.log_cond)
