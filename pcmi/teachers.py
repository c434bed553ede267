"""Teachers T(y | x, y'): the model with a demonstration y' in its context (theory.md §1).

Every teacher answers one question, `demo_classes(log_D, tree)`: it streams groups of
demonstrations as (log weight of the group under D, log T(h | y') on every prefix h of the
tree) in chunks. Demonstrations that induce the same teacher share one group: a route-copying
teacher has one per strategy, a general latent teacher one per distinct posterior q(· | y')
(a soft-route teacher: one per route), each chunk computed as one scaled BLAS product in
probability space; no |Y|×|Y| matrix is built except by KernelTeacher, which is one by nature.
All expectations over D (`expected_log_teacher`, `mixture_log_teacher`, `token_mixture_log`)
come from that stream unless the teacher has a closed form or a faster route for them:
route-copying `expected_log` and `mixture_log`, O(|tree|); copy `expected_log`, `mixture_log`,
`token_mixture_log`, O(|tree|); overlapping latent `mixture_log` from K strategy masses,
O(K·|tree|), and `expected_log` streamed in cache-sized tiles of classes × nodes (`_ScaledLaws`).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
from threadpoolctl import threadpool_limits

from graphworld.enumeration import PrefixTree

from .distributions import check_log_probs, check_probs, float_array, log_normalize, prob_of, safe_log, logsumexp
from .checks import unit
from .errors import PcmiInputError

CHUNK = 256
_CHUNK_ENTRIES = 1 << 22   # at most ~4M teacher entries (32 MB) per streamed chunk
POSTERIOR_DECIMALS = 13    # posteriors equal to this many decimals of log q share a demonstration class
UNDERFLOW = 1e-200         # a probability-space sum below this is redone in log space
TILE_ENTRIES = 1 << 16     # teacher entries per tile of the streamed expected log (512 kB: stays in cache)
TILE_ROWS = 64             # demonstration classes per tile (tile: 64 × 1024 nodes)
MAX_THREADS = 8            # node blocks of the expected log run on at most this many cores
PARALLEL_ENTRIES = 1 << 22  # below this many entries (classes × nodes) the expected log stays on one thread


def _mix(log_a: np.ndarray, a_weight: float, log_b: np.ndarray, b_weight: float) -> np.ndarray:
    """log(a_weight·exp(log_a) + b_weight·exp(log_b))."""
    return np.logaddexp(safe_log(a_weight) + log_a, safe_log(b_weight) + log_b)


class LatentStrategyTeacher:
    """T(y|y') = (1−eps)·Σ_z w_z P_z(y') P_z(y) / π0(y') + eps·π0(y), with π0 = Σ_z w_z P_z.

    eps = 0 is the posterior predictive of an exchangeable joint (Bayesian in-context learning).
    Strategies with disjoint supports ("route-copying") take the exact O(|Y|·K) path.
    """

    def __init__(self, log_w, log_P, eps: float):
        self.log_w = check_log_probs(float_array(log_w, "strategy weights w", ndim=1), "strategy weights w")
        log_P = float_array(log_P, "strategy laws P_z")
        log_P = float_array(np.atleast_2d(log_P), "strategy laws P_z (one row per strategy)", ndim=2)
        if log_P.shape[0] != len(self.log_w):
            raise PcmiInputError(f"got {len(self.log_w)} strategy weights but {log_P.shape[0]} strategy laws P_z")
        self._log_P = check_log_probs(log_P, "strategy law P_z", axis=1)
        self.eps = unit(eps, "eps")
        self.log_base = logsumexp(self.log_w[:, None] + self._log_P, axis=0)
        support = np.isfinite(self._log_P) & np.isfinite(self.log_w)[:, None]
        self.disjoint = bool(np.all(support.sum(axis=0) <= 1))
        self._owner = np.where(support.any(axis=0), support.argmax(axis=0), -1)
        self._n = self._log_P.shape[1]

    @classmethod
    def from_owner(cls, log_base, owner, eps: float) -> "LatentStrategyTeacher":
        """Disjoint strategies given by an owner index (route-copying): rollout y belongs to strategy
        owner[y] ∈ {0, …, K−1} (−1: to none, only where π0(y) = 0); w_z = π0(z), P_z = π0(· | z).
        O(|Y| + K) memory: the (K, |Y|) law matrix `log_P` is built only if something asks for it."""
        log_base = check_log_probs(float_array(log_base, "base policy", ndim=1), "base policy")
        owner = np.asarray(owner)
        if owner.shape != log_base.shape or not np.issubdtype(owner.dtype, np.integer):
            raise PcmiInputError(f"owner must be one integer strategy index per rollout ({len(log_base)}), "
                                 f"got shape {owner.shape}")
        K = int(owner.max(initial=-1)) + 1
        if np.any(owner < -1) or np.any(np.isfinite(log_base) & (owner < 0)):
            raise PcmiInputError("owner must be a strategy index >= 0 for every rollout with π0(y) > 0 (-1 elsewhere)")
        log_w = _group_logsumexp(np.where(owner >= 0, log_base, -np.inf), np.maximum(owner, 0), K)
        if not np.all(np.isfinite(log_w)):
            raise PcmiInputError("every strategy of owner must hold base probability > 0 (renumber the strategies)")
        t = cls.__new__(cls)
        t.log_w, t.eps, t._log_P, t._n = log_w, unit(eps, "eps"), None, len(log_base)
        t.log_base = np.where(owner >= 0, log_base, -np.inf)
        t.disjoint, t._owner = True, owner.astype(np.int64)
        return t

    @property
    def log_P(self) -> np.ndarray:
        """log P_z(y), shape (K, |Y|) (for a teacher built from an owner index: materialized on demand)."""
        if self._log_P is None:
            P = np.full((self.n_strategies, self._n), -np.inf)
            on = np.flatnonzero(self._owner >= 0)
            P[self._owner[on], on] = self._log_p_own()[on]
            self._log_P = P
        return self._log_P

    def _log_p_own(self) -> np.ndarray:
        """log P_{z(y)}(y) for each rollout y of a disjoint teacher (−inf where it has no strategy)."""
        if self._log_P is not None:
            on = self._owner >= 0
            return np.where(on, self._log_P[np.maximum(self._owner, 0), np.arange(self._n)], -np.inf)
        with np.errstate(invalid="ignore"):
            return np.where(self._owner >= 0, self.log_base - self.log_w[np.maximum(self._owner, 0)], -np.inf)

    def with_weights(self, log_w) -> "LatentStrategyTeacher":
        """The same strategy laws P_z with new weights (zero weights drop their strategy)."""
        log_w = np.asarray(log_w, float)
        keep = np.isfinite(log_w)
        if not self.disjoint:
            return LatentStrategyTeacher(log_normalize(log_w[keep]), self.log_P[keep], self.eps)
        new = np.where(keep, np.cumsum(keep) - 1, -1)
        owner = np.where(self._owner >= 0, new[np.maximum(self._owner, 0)], -1)
        lw = log_normalize(log_w[keep])
        with np.errstate(invalid="ignore"):
            log_base = np.where(owner >= 0, lw[np.maximum(owner, 0)] + self._log_p_own(), -np.inf)
        return LatentStrategyTeacher.from_owner(log_normalize(log_base), owner, self.eps)

    @property
    def n(self) -> int:
        return self._n

    @property
    def n_strategies(self) -> int:
        return len(self.log_w)

    @classmethod
    def from_probs(cls, w, P, eps: float) -> "LatentStrategyTeacher":
        return cls(check_probs(w, "strategy weights w"), check_probs(np.atleast_2d(float_array(P, "strategy law P_z")), "strategy law P_z", axis=1), eps)

    @classmethod
    def route_copying(cls, log_base, labels, eps: float) -> "LatentStrategyTeacher":
        """Disjoint strategies = the label classes of the rollouts: w_z = π0(z), P_z = π0(· | z)."""
        log_base, labels = np.asarray(log_base, float), np.asarray(labels)
        if labels.shape != log_base.shape:
            raise PcmiInputError(f"got {len(labels)} route labels for {len(log_base)} rollouts")
        label_idx = _dense_labels(labels)
        mass = _group_logsumexp(log_base, label_idx, int(label_idx.max(initial=-1)) + 1)
        keep = np.isfinite(mass)  # a label class with zero mass is no strategy
        new = np.where(keep, np.cumsum(keep) - 1, -1)
        return cls.from_owner(log_base, new[label_idx], eps)

    @classmethod
    def from_responsibilities(cls, log_base, log_resp, eps: float) -> "LatentStrategyTeacher":
        """Strategies from responsibilities a_z(y) (Σ_z a_z(y) = 1): w_z = Σ_y π0(y) a_z(y),
        P_z(y) = π0(y) a_z(y) / w_z, so that Σ_z w_z P_z = π0 exactly."""
        log_base = np.asarray(log_base, float)
        log_resp = check_log_probs(np.atleast_2d(log_resp), "responsibilities a_z(y)", axis=0)
        joint = log_base[None, :] + log_resp
        log_w = logsumexp(joint, axis=1)
        keep = np.isfinite(log_w)
        return cls(log_w[keep], joint[keep] - log_w[keep, None], eps)

    def log_posterior(self, demo_idx) -> np.ndarray:
        """log q(z | y') = log w_z + log P_z(y') − log π0(y'), shape (B, K); a demonstration
        with π0(y') = 0 tells nothing: q(z | y') = w_z (never NaN)."""
        demo_idx = np.asarray(demo_idx)
        lb = self.log_base[demo_idx, None]
        if self.disjoint:  # q(z | y') = 1[z = owner(y')]
            log_q = np.where(np.arange(self.n_strategies)[None, :] == self._owner[demo_idx, None], 0.0, -np.inf)
        else:
            with np.errstate(invalid="ignore"):
                log_q = (self.log_w[None, :] + self.log_P[:, demo_idx].T) - lb
        return np.where(np.isfinite(lb), log_q, self.log_w[None, :])

    def _check_demos(self, log_D):
        if np.any(np.isfinite(log_D) & ~np.isfinite(self.log_base)):
            raise PcmiInputError("demonstrations D put mass on a rollout with zero base probability, "
                                 "where the latent-strategy teacher T(·|y') is undefined")

    def log_rows(self, demo_idx) -> np.ndarray:
        """log T(y | y'_j) for the demonstrations j in demo_idx, shape (B, |Y|)."""
        if not self.disjoint:
            return self._log_teacher(self.log_posterior(demo_idx), self.log_P, self.log_base)
        demo_idx = np.asarray(demo_idx)
        z = np.where(np.isfinite(self.log_base[demo_idx]), self._owner[demo_idx], -2)  # −2: π0(y') = 0, q = w
        inner = np.where(self._owner[None, :] == z[:, None], self._log_p_own()[None, :], -np.inf)
        inner = np.where((z == -2)[:, None], self.log_base[None, :], inner)
        return _mix(inner, 1 - self.eps, self.log_base[None, :], self.eps)

    def _log_teacher(self, log_q, log_P_nodes, log_base_nodes):
        inner = logsumexp(log_q[:, :, None] + log_P_nodes[None, :, :], axis=1)
        return _mix(inner, 1 - self.eps, log_base_nodes[None, :], self.eps)

    def demo_classes(self, log_D, tree: PrefixTree, chunk: int = CHUNK) -> Iterator[tuple]:
        self._check_demos(log_D)
        log_base_nodes = tree.prefix_logsumexp(self.log_base)
        if self.disjoint:  # route-copying: a demonstration only tells its strategy z; one row of O(|tree|) per z
            nodes = _strategy_nodes(self, tree)
            lw = self._strategy_demo_mass(log_D)
            for z in np.flatnonzero(np.isfinite(lw)):
                yield lw[z:z + 1], _mix(nodes.log_p(z), 1 - self.eps, log_base_nodes, self.eps)[None, :]
            return
        log_wc, log_qc = self.posterior_classes(log_D)
        nodes = _ScaledLaws(tree.prefix_logsumexp(self.log_P), log_base_nodes, self.eps)
        rows = min(chunk, _chunk_rows(tree))
        for lo in range(0, len(log_wc), rows):
            yield log_wc[lo:lo + rows], nodes.log_teacher(log_qc[lo:lo + rows])

    def posterior_classes(self, log_D) -> tuple[np.ndarray, np.ndarray]:
        """The demonstrations grouped by their posterior q(· | y'): (log D(c), log q(· | c)), shape (C,),
        (C, K). T(· | y') depends on y' only through q(· | y'), so a class is one demonstration as far as
        every expectation over D goes. Posteriors equal to POSTERIOR_DECIMALS decimals in log space
        share a class (they change log T by < 1e-13): a soft-route teacher has one class per route."""
        demos = np.flatnonzero(np.isfinite(log_D))
        log_q = self.log_posterior(demos)
        if len(demos) == 0:
            return np.zeros(0), log_q
        _, first, inv = np.unique(np.round(log_q, POSTERIOR_DECIMALS), axis=0, return_index=True, return_inverse=True)
        return _group_logsumexp(log_D[demos], inv.reshape(-1), len(first)), log_q[first]

    def _strategy_demo_mass(self, log_D) -> np.ndarray:
        """log D(z) = log Σ_{y' ∈ z} D(y') per strategy (disjoint teachers)."""
        on = self._owner >= 0
        return _group_logsumexp(np.where(on, log_D, -np.inf), np.maximum(self._owner, 0), self.n_strategies)

    def expected_log(self, log_D, tree: PrefixTree) -> np.ndarray:
        """E_D log T(h | y') on every node. Disjoint strategies: a prefix h below which only strategy z has
        mass has P_z(h) = π0(h)/w_z, so

            E_D log T(h | y') = D(z)·[log π0(h) + A_z] + (1 − D(z))·[log π0(h) + log eps],
            A_z = log((1−eps)/w_z + eps)

        (each term only where D has mass inside / outside z; = log π0(h) + log eps + D(z)·log(1 + (1−eps)/
        (eps·w_z)) for 0 < eps, theory.md's closed form); a prefix shared by several strategies takes
        Σ_z D(z)·log((1−eps)P_z(h) + eps·π0(h)): O(|tree| + K·#shared prefixes). Overlapping strategies:
        one term per posterior class, by `_ScaledLaws.expected_log`."""
        self._check_demos(log_D)
        if not self.disjoint:  # one class per distinct posterior, one scaled BLAS product per chunk
            log_wc, log_qc = self.posterior_classes(log_D)
            laws = _ScaledLaws(tree.prefix_logsumexp(self.log_P), tree.prefix_logsumexp(self.log_base), self.eps)
            return laws.expected_log(log_wc, log_qc)
        nodes = _strategy_nodes(self, tree)
        base = tree.prefix_logsumexp(self.log_base)
        lw = self._strategy_demo_mass(log_D)
        d = prob_of(lw)
        present = np.isfinite(lw)
        # a prefix h owned by z has P_z(h) = π0(h)/w_z, so log T(h | y') = log π0(h) + A_z for y' ∈ z,
        # A_z = log((1−eps)/w_z + eps), and log π0(h) + log eps for y' outside z:
        # E_D log T(h | y') = α_z·log π0(h) + β_z, two numbers per strategy
        with np.errstate(divide="ignore"):
            A = np.logaddexp(np.log1p(-self.eps) - self.log_w, np.log(self.eps))
        others = present.sum() - present > 0                                # D has mass outside z
        alpha = np.where(present, d, 0.0) + np.where(others, 1.0 - d, 0.0)
        beta = _weighted(d, A, present) + _weighted(1.0 - d, np.full_like(d, safe_log(self.eps)), others)
        own = nodes.owner
        z = np.maximum(own, 0)
        with np.errstate(invalid="ignore"):
            out = np.where((own >= 0) & np.isfinite(base), alpha[z] * base + beta[z], -np.inf)
        if len(nodes.mixed):  # prefixes shared by several strategies: the full sum over z
            rows = _mix(nodes.mixed_log_p, 1 - self.eps, base[nodes.mixed][:, None], self.eps)  # (M, K)
            out[nodes.mixed] = _weighted(d[None, :], rows, present[None, :]).sum(axis=1)
        return out

    def mixture_log(self, log_D, tree: PrefixTree) -> np.ndarray:
        """log E_D T(h | y') = log[(1−eps)·Σ_z m_z P_z(h) + eps·π0(h)·Σ D], m_z = Σ_{y'} D(y') q(z | y'):
        T is linear in the posterior, so the forward-KL optimum's prefix marginals need only the K
        strategy masses m, in O(K·|tree|) (route-copying: m_z = D(z), and a prefix owned by z has
        Σ_z m_z P_z(h) = D(z)·P_z(h), O(|tree|))."""
        self._check_demos(log_D)
        log_total = logsumexp(log_D)
        if not np.isfinite(log_total):  # no demonstration: E_D T = 0 everywhere
            return np.full(tree.n_nodes, -np.inf)
        if self.disjoint:
            nodes, lw = _strategy_nodes(self, tree), self._strategy_demo_mass(log_D)
            inner = np.where(nodes.owner >= 0, lw[np.maximum(nodes.owner, 0)] + nodes.own_log_p, -np.inf)
            if len(nodes.mixed):
                inner[nodes.mixed] = logsumexp(lw[None, :] + nodes.mixed_log_p, axis=1)
        else:
            log_wc, log_qc = self.posterior_classes(log_D)
            log_m = logsumexp(log_wc[:, None] + log_qc, axis=0)                       # (K,)
            inner = logsumexp(log_m[:, None] + tree.prefix_logsumexp(self.log_P), axis=0)
        return _mix(inner - log_total, 1 - self.eps, tree.prefix_logsumexp(self.log_base), self.eps) + log_total

    def rebuilt(self, log_pi) -> "LatentStrategyTeacher":
        """The teacher of a new model π (theory.md §4): same P_z, weights = π's strategy masses
        m_z = Σ_y π(y) q(z | y) (exact for route-copying, where π = Σ_z m_z P_z stays true)."""
        log_pi = np.asarray(log_pi, float)
        if self.disjoint:
            on = self._owner >= 0
            log_m = _group_logsumexp(np.where(on, log_pi, -np.inf), np.maximum(self._owner, 0), self.n_strategies)
            return self.with_weights(log_m)
        log_q = self.log_posterior(np.arange(self.n))  # (n, K)
        log_m = logsumexp(log_pi[:, None] + log_q, axis=0)
        return self.with_weights(log_m)


class CopyTeacher:
    """T(y|y') = lam·1[y = y'] + (1−lam)·π0(y): copies the demonstration with probability lam."""

    def __init__(self, log_base, lam: float):
        self.log_base = check_log_probs(float_array(log_base, "base policy", ndim=1), "base policy")
        self.lam = unit(lam, "lam")

    @property
    def n(self) -> int:
        return len(self.log_base)

    def log_rows(self, demo_idx) -> np.ndarray:
        demo_idx = np.asarray(demo_idx)
        rows = np.tile(safe_log(1 - self.lam) + self.log_base, (len(demo_idx), 1))
        rows[np.arange(len(demo_idx)), demo_idx] = np.logaddexp(
            safe_log(self.lam), rows[np.arange(len(demo_idx)), demo_idx])
        return rows

    def demo_classes(self, log_D, tree: PrefixTree, chunk: int = CHUNK) -> Iterator[tuple]:
        log_base_nodes = tree.prefix_logsumexp(self.log_base)
        demos = np.flatnonzero(np.isfinite(log_D))
        for lo in range(0, len(demos), chunk):
            idx = demos[lo:lo + chunk]
            onehot = np.full((len(idx), self.n), -np.inf)
            onehot[np.arange(len(idx)), idx] = 0.0
            under = tree.prefix_logsumexp(onehot)  # 0 on the prefixes of y'_j, −inf elsewhere
            yield log_D[idx], _mix(under, self.lam, log_base_nodes[None, :], 1 - self.lam)

    def expected_log(self, log_D, tree: PrefixTree) -> np.ndarray:
        """E_D log T(h|y') = D(h)·log(lam + (1−lam)π0(h)) + (1−D(h))·log((1−lam)π0(h)),
        with D(h) the demonstration mass below h: O(|tree|), no per-demonstration work."""
        base = tree.prefix_logsumexp(self.log_base)
        d_in = prob_of(tree.prefix_logsumexp(log_D))
        d_out = 1.0 - d_in
        demos = np.isfinite(log_D)
        n_in = np.rint(np.exp(tree.prefix_logsumexp(np.where(demos, 0.0, -np.inf))))  # demonstrations below h
        on = _mix(np.zeros_like(base), self.lam, base, 1 - self.lam)
        off = safe_log(1 - self.lam) + base
        # which side carries mass is decided exactly (a 1e-300 demonstration outside h still rules h out
        # when off = −inf, though 1 − D(h) rounds to 0)
        return _weighted(d_in, on, n_in > 0) + _weighted(d_out, off, n_in < demos.sum())

    def mixture_log(self, log_D, tree: PrefixTree) -> np.ndarray:
        """log E_D T(h | y') = log(lam·D(h) + (1−lam)·π0(h)·Σ D), with D(h) the demonstration mass
        below h: the forward-KL optimum's prefix marginals in O(|tree|)."""
        base = tree.prefix_logsumexp(self.log_base)
        return _mix(tree.prefix_logsumexp(log_D), self.lam, base + logsumexp(log_D), 1 - self.lam)

    def token_mixture_log(self, log_D, tree: PrefixTree) -> np.ndarray:
        """log E_D T(a | h, y') at every non-root node c = h·a, in O(|tree|): a demonstration below h
        has T(h | y') = A(h) = lam + (1−lam)·π0(h), one outside has (1−lam)·π0(h), so

            E_D T(a | h, y') = (lam·D(c) + (1−lam)·π0(c)·D(h)) / A(h) + D_out(h)·π0(c) / π0(h),

        each term only where its T(h | y') > 0; D_out(h), the mass outside h, is summed top-down
        from the siblings (no subtraction that could lose a 1e-300 demonstration)."""
        par = tree.parent[1:]
        base = tree.prefix_logsumexp(self.log_base)
        d_in = tree.prefix_logsumexp(log_D)
        log_a = _mix(np.zeros_like(base), self.lam, base, 1 - self.lam)          # log A(h)
        inside = _mix(d_in[1:], self.lam, base[1:] + d_in[par], 1 - self.lam)
        with np.errstate(invalid="ignore"):
            inside = np.where(np.isfinite(log_a[par]), inside - log_a[par], -np.inf)
            outside = _mass_outside(tree, log_D)[par] + base[1:] - base[par]
        outside = np.where((self.lam < 1) & np.isfinite(base[par]), outside, -np.inf)
        return np.r_[0.0, np.logaddexp(inside, outside)]

    def rebuilt(self, log_pi) -> "CopyTeacher":
        return CopyTeacher(log_pi, self.lam)


class KernelTeacher:
    """An explicit row-stochastic matrix: row j is T(· | y'_j). |Y|×|Y|: small instances only."""

    def __init__(self, log_T):
        log_T = np.atleast_2d(float_array(log_T, "teacher matrix"))
        if log_T.ndim != 2 or log_T.shape[0] != log_T.shape[1]:
            raise PcmiInputError(f"teacher must be a square |Y|×|Y| matrix, got shape {log_T.shape}")
        self.log_T = check_log_probs(log_T, "teacher row", axis=1)

    @classmethod
    def from_probs(cls, T) -> "KernelTeacher":
        T = float_array(T, "teacher matrix")
        if T.ndim != 2:
            raise PcmiInputError("teacher must be a list of rows (a |Y|×|Y| matrix)")
        return cls(check_probs(T, "teacher row", axis=1))

    @property
    def n(self) -> int:
        return self.log_T.shape[1]

    def log_rows(self, demo_idx) -> np.ndarray:
        return self.log_T[np.asarray(demo_idx)]

    def demo_classes(self, log_D, tree: PrefixTree, chunk: int = CHUNK) -> Iterator[tuple]:
        demos = np.flatnonzero(np.isfinite(log_D))
        for lo in range(0, len(demos), chunk):
            idx = demos[lo:lo + chunk]
            yield log_D[idx], tree.prefix_logsumexp(self.log_T[idx])


class _ScaledLaws:
    """T(h | q) = (1−eps)·Σ_z q_z P_z(h) + eps·π0(h) for many posteriors q at once, as one BLAS product in
    probability space: P_z(h) is scaled by its node maximum M(h) = max_z P_z(h) (≥ π0(h)) and q by its
    largest entry, so every factor lies in [0, 1]. A sum that comes out below UNDERFLOW (its terms
    underflowed) is redone in log space, so the result equals the log-space sum to rounding."""

    def __init__(self, log_P_nodes: np.ndarray, log_base_nodes: np.ndarray, eps: float):
        self.log_P, self.log_base, self.eps = log_P_nodes, log_base_nodes, eps
        top = log_P_nodes.max(axis=0)
        self.shift = np.where(np.isfinite(top), top, 0.0)                         # log M(h)
        self.scaled = np.exp(np.vstack([log_P_nodes, log_base_nodes[None, :]]) - self.shift)  # (K + 1, |tree|)

    def coefficients(self, log_q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(c, r): the rows c_b = [(1−eps)·q_b / max q_b, eps / max q_b] (entries in [0, 1]) of the scaled
        product and r_b = log max q_b (≥ −log K: q sums to 1), for the rows q_b of log_q (B, K)."""
        row = log_q.max(axis=1)
        coef = np.hstack([(1 - self.eps) * np.exp(log_q - row[:, None]), self.eps * np.exp(-row)[:, None]])
        return coef, row

    def log_sums(self, s: np.ndarray, log_q: np.ndarray, row: np.ndarray, start: int = 0) -> bool:
        """s = coef @ scaled[:, start:start + width] replaced in place by its log, L = log T − r − log M;
        sums below UNDERFLOW are redone in log space. Returns whether any was (only then can L be −inf)."""
        if s.size == 0 or s.min() >= UNDERFLOW:
            np.log(s, out=s)
            return False
        b, h = np.nonzero(s < UNDERFLOW)
        with np.errstate(divide="ignore"):
            np.log(s, out=s)
        h_all = h + start
        inner = logsumexp(log_q[b] + self.log_P[:, h_all].T, axis=1)
        s[b, h] = _mix(inner, 1 - self.eps, self.log_base[h_all], self.eps) - row[b] - self.shift[h_all]
        return True

    def log_scaled(self, log_q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(L, r) with log T(h | q_b) = L[b, h] + r[b] + log M(h), for the rows q_b of log_q (B, K)."""
        coef, row = self.coefficients(log_q)
        s = coef @ self.scaled
        self.log_sums(s, log_q, row)
        return s, row

    def log_teacher(self, log_q: np.ndarray) -> np.ndarray:
        """log T(h | q) for each row q of log_q (B, K): shape (B, |tree|)."""
        out, row = self.log_scaled(log_q)
        out += row[:, None]
        out += self.shift
        return out

    def expected_log(self, log_w: np.ndarray, log_q: np.ndarray, threads: int | None = None) -> np.ndarray:
        """Σ_c w_c log T(h | q_c) over classes c of weight w_c (all present: one with T(h | q_c) = 0 makes
        h −inf even if w_c underflows), as Σ_c w_c L_c(h) + Σ_c w_c r_c + (Σ_c w_c)·log M(h).

        Streamed in tiles of TILE_ENTRIES entries (TILE_ROWS classes × a block of nodes) that stay in
        cache: one BLAS product, one log and one weighted row sum per tile, into one reused buffer. Node
        blocks are independent, so `threads` (default: the cores, at most MAX_THREADS) run them in
        parallel with single-threaded BLAS; the tiles do not depend on the thread count, so neither
        does the result, to the last bit."""
        w = prob_of(log_w)
        n = self.scaled.shape[1]
        total, dead = np.zeros(n), np.zeros(n, bool)
        coef, row = self.coefficients(log_q)
        rows = TILE_ROWS
        width = max(1, TILE_ENTRIES // rows)
        floor = self.scaled[-1]  # s ≥ coef[:, −1]·π0(h)/M(h): a tile above UNDERFLOW by this bound needs no check

        def block(c0: int) -> None:
            laws, acc = self.scaled[:, c0:c0 + width], total[c0:c0 + width]
            low = floor[c0:c0 + width].min()
            buf = np.empty(rows * laws.shape[1])
            for r0 in range(0, len(w), rows):
                c = coef[r0:r0 + rows]
                s = buf[:len(c) * laws.shape[1]].reshape(len(c), laws.shape[1])
                np.matmul(c, laws, out=s)
                if c[:, -1].min() * low >= UNDERFLOW:
                    np.log(s, out=s)
                elif self.log_sums(s, log_q[r0:r0 + rows], row[r0:r0 + rows], c0):
                    zero = np.isneginf(s)
                    dead[c0:c0 + laws.shape[1]] |= zero.any(axis=0)
                    s[zero] = 0.0
                acc += w[r0:r0 + rows] @ s

        starts = range(0, n, width)
        threads = min(len(starts), _cores() if threads is None else max(1, int(threads)))
        if threads > 1 and len(w) * n >= PARALLEL_ENTRIES:
            with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(threads) as pool:
                list(pool.map(block, starts))
        else:
            for c0 in starts:
                block(c0)
        total += w @ row
        total += w.sum() * self.shift
        total[dead] = -np.inf
        return total


def _cores() -> int:
    """The cores this process may run on, at most MAX_THREADS."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(n, MAX_THREADS))


def _chunk_rows(tree: PrefixTree) -> int:
    """Rows of teacher values per chunk: about _CHUNK_ENTRIES entries on this tree."""
    return max(1, _CHUNK_ENTRIES // max(tree.n_nodes, 1))


def _mass_outside(tree: PrefixTree, log_D) -> np.ndarray:
    """log Σ_{y' not below h} D(y') for every node h, top-down: outside(c) = outside(h) ⊕ D at h itself
    ⊕ the mass of c's siblings. The siblings' sum is S(h) − D(c) where that is well conditioned
    (D(c) ≤ S(h)/2) and summed directly for the one child that may hold more than half of S(h)."""
    n = tree.n_nodes
    d = tree.prefix_logsumexp(log_D)
    own = _group_logsumexp(np.asarray(log_D, float), tree.leaf_node, n)        # D of the rollouts ending at h
    child, par = np.arange(1, n), tree.parent[1:]
    total = _group_logsumexp(d[1:], par, n)                                    # S(h): mass of h's children
    top = np.full(n, -np.inf)
    np.maximum.at(top, par, d[1:])
    cand = np.flatnonzero(np.isfinite(d[1:]) & (d[1:] == top[par]))
    big = np.full(n, -1, np.int64)
    big[par[cand[::-1]]] = child[cand[::-1]]                                   # the first child holding the max
    is_big = big[par] == child
    rest = _group_logsumexp(np.where(is_big, -np.inf, d[1:]), par, n)          # S(h) without that child
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = total[par] + np.log1p(-np.exp(d[1:] - total[par]))
    sib = np.where(is_big, rest[par], np.where(np.isfinite(total[par]), diff, -np.inf))
    out = np.full(n, -np.inf)
    depth = tree.depth
    order = np.argsort(depth[1:], kind="stable") + 1
    bounds = np.cumsum(np.bincount(depth[1:] - 1))
    for nodes in np.split(order, bounds[:-1]):
        p = tree.parent[nodes]
        out[nodes] = np.logaddexp(np.logaddexp(out[p], own[p]), sib[nodes - 1])
    return out


def _weighted(w: np.ndarray, log_t: np.ndarray, present=None) -> np.ndarray:
    """w·log_t with 0·(−inf) = 0 (a demonstration of weight 0 costs nothing); `present` marks the
    weights that are exactly positive (default w > 0), so that an underflowed weight still gives −inf."""
    present = w > 0 if present is None else np.asarray(present, bool)
    shape = np.broadcast_shapes(np.shape(w), np.shape(log_t), present.shape)
    zero = np.isneginf(log_t)
    out = np.zeros(shape)
    np.multiply(w, log_t, out=out, where=present & ~zero)
    out[np.broadcast_to(present & zero, shape)] = -np.inf
    return out


def expected_log_teacher(teacher, log_D, tree: PrefixTree) -> np.ndarray:
    """E_{y'∼D} log T(h | y') on every tree node h (leaves: E_D log T(y | y'))."""
    if hasattr(teacher, "expected_log"):
        return teacher.expected_log(log_D, tree)
    return expected_log_by_classes(teacher, log_D, tree)


def expected_log_by_classes(teacher, log_D, tree: PrefixTree) -> np.ndarray:
    """E_D log T(h | y') from the teacher's stream of demonstration classes (the generic route)."""
    total = np.zeros(tree.n_nodes)
    for log_w, log_t in teacher.demo_classes(log_D, tree):
        total += _weighted(prob_of(log_w)[:, None], log_t, np.isfinite(log_w)[:, None]).sum(axis=0)
    return total


def mixture_log_teacher(teacher, log_D, tree: PrefixTree) -> np.ndarray:
    """log E_{y'∼D} T(h | y') on every tree node (leaves: the forward-KL optimum)."""
    if hasattr(teacher, "mixture_log"):
        return teacher.mixture_log(log_D, tree)
    acc = np.full(tree.n_nodes, -np.inf)
    for log_w, log_t in teacher.demo_classes(log_D, tree):
        acc = np.logaddexp(acc, logsumexp(log_w[:, None] + log_t, axis=0))
    return acc


def token_mixture_log(teacher, log_D, tree: PrefixTree) -> np.ndarray:
    """log E_{y'∼D} T(a | h, y') for every non-root node h·a (demonstration weights held fixed);
    a demonstration under which h has probability 0 contributes nothing at h."""
    if hasattr(teacher, "token_mixture_log"):
        return teacher.token_mixture_log(log_D, tree)
    acc = np.full(tree.n_nodes, -np.inf)
    par = tree.parent[1:]
    for log_w, log_t in teacher.demo_classes(log_D, tree):
        cond = np.full_like(log_t, -np.inf)
        with np.errstate(invalid="ignore"):
            c = log_t[:, 1:] - log_t[:, par]
        cond[:, 1:] = np.where(np.isfinite(log_t[:, par]), c, -np.inf)
        acc = np.logaddexp(acc, logsumexp(log_w[:, None] + cond, axis=0))
    acc[0] = 0.0
    return acc


def leaf_rows(teacher, n: int) -> np.ndarray:
    """The full |Y|×|Y| matrix log T(y | y'_j): for small instances and cross-checks only."""
    return teacher.log_rows(np.arange(n))


def _group_logsumexp(values: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """log Σ_{i: groups[i] = g} exp(values[i]) for g < n_groups (−inf for an empty or zero group).
    One bincount shifted by the global maximum; groups that underflow there are redone with their own."""
    finite = np.isfinite(values)
    if not finite.any():
        return np.full(n_groups, -np.inf)
    if finite.all():
        g, v = groups, values
    else:
        g, v = groups[finite], values[finite]
    top = v.max()
    s = np.bincount(g, weights=np.exp(v - top), minlength=n_groups)
    present = np.bincount(g, minlength=n_groups) > 0
    low = present & (s < 1e-250)  # far below the global maximum: shift these by their own maximum
    with np.errstate(divide="ignore"):
        out = np.where(present, top + np.log(s), -np.inf)
    if low.any():
        pick = finite & low[groups]
        m = np.full(n_groups, -np.inf)
        np.maximum.at(m, groups[pick], values[pick])
        s_low = np.bincount(groups[pick], weights=np.exp(values[pick] - m[groups[pick]]), minlength=n_groups)
        out[low] = m[low] + np.log(s_low[low])
    return out


class _StrategyNodes:
    """P_z(h) on the prefixes of a disjoint teacher without a (K, |tree|) array: `owner[h]` is the one
    strategy with mass below h (−1: none, −2: several); `own_log_p[h]` = log P_{owner(h)}(h); the shared
    prefixes `mixed` carry their full row `mixed_log_p` (M, K)."""

    def __init__(self, teacher, tree: PrefixTree):
        K = teacher.n_strategies
        leaf_owner = teacher._owner
        if _is_flat(tree):  # one token per rollout: the root is the only prefix that can be shared
            self._flat(teacher, tree, K)
            return
        lo = np.full(tree.n_nodes, K, np.int64)
        hi = np.full(tree.n_nodes, -1, np.int64)
        lo[tree.leaf_node] = np.where(leaf_owner >= 0, leaf_owner, K)
        hi[tree.leaf_node] = leaf_owner
        lo, hi = tree.reduce_to_parents(lo, np.minimum), tree.reduce_to_parents(hi, np.maximum)
        self.owner = np.where(hi < 0, -1, np.where(lo == hi, hi, -2))
        self.own_log_p = tree.prefix_logsumexp(teacher._log_p_own())  # exact where owner >= 0
        self.mixed = np.flatnonzero(self.owner == -2)
        acc = np.full((len(self.mixed), K), -np.inf)
        if len(self.mixed):
            pos = np.full(tree.n_nodes, -1, np.int64)
            pos[self.mixed] = np.arange(len(self.mixed))
            child = np.arange(1, tree.n_nodes)
            par = tree.parent[1:]
            single = child[(pos[par] >= 0) & (self.owner[child] >= 0)]
            np.logaddexp.at(acc, (pos[tree.parent[single]], self.owner[single]), self.own_log_p[single])
            depth = tree.depth[self.mixed]
            for d in range(int(depth.max()), 0, -1):  # shared prefixes, deepest first, into their parents
                cs = self.mixed[depth == d]
                np.logaddexp.at(acc, pos[tree.parent[cs]], acc[pos[cs]])
        self.mixed_log_p = acc

    def _flat(self, teacher, tree: PrefixTree, K: int):
        leaf_owner, leaf_log_p = teacher._owner, teacher._log_p_own()
        self.owner = np.empty(tree.n_nodes, np.int64)
        self.owner[tree.leaf_node] = leaf_owner
        used = np.flatnonzero(np.bincount(leaf_owner[leaf_owner >= 0], minlength=K))
        self.owner[0] = -1 if len(used) == 0 else (used[0] if len(used) == 1 else -2)
        self.own_log_p = np.empty(tree.n_nodes)
        self.own_log_p[tree.leaf_node] = leaf_log_p
        self.own_log_p[0] = logsumexp(leaf_log_p) if self.owner[0] >= 0 else -np.inf  # used only where owned
        self.mixed = np.flatnonzero(self.owner[:1] == -2)
        on = leaf_owner >= 0
        self.mixed_log_p = _group_logsumexp(leaf_log_p[on], leaf_owner[on], K)[None, :] if len(self.mixed) \
            else np.full((0, K), -np.inf)

    def log_p(self, z: int) -> np.ndarray:
        """log P_z(h) on every node."""
        out = np.where(self.owner == z, self.own_log_p, -np.inf)
        out[self.mixed] = self.mixed_log_p[:, z]
        return out


def _dense_labels(labels: np.ndarray) -> np.ndarray:
    """The rank of each label among the distinct labels (np.unique's inverse), in O(n) for small
    non-negative integer labels."""
    if np.issubdtype(labels.dtype, np.integer) and labels.size and labels.min() >= 0 and labels.max() < 4 * labels.size:
        used = np.bincount(labels.reshape(-1)) > 0
        return (np.cumsum(used) - 1)[labels.reshape(-1)]
    return np.unique(labels, return_inverse=True)[1].reshape(-1)


def _is_flat(tree: PrefixTree) -> bool:
    """Every rollout is one token below the root, and every node but the root is a rollout."""
    return tree.n_nodes == tree.n_leaves + 1 and int(tree.depth.max(initial=0)) <= 1 and \
        bool(np.all(np.bincount(tree.leaf_node, minlength=tree.n_nodes)[1:] == 1))


def _strategy_nodes(teacher, tree: PrefixTree) -> _StrategyNodes:
    """The node view of a disjoint teacher on a tree, cached on the teacher for that tree."""
    cache = getattr(teacher, "_nodes_cache", None)
    if cache is None or cache[0] is not tree:
        teacher._nodes_cache = (tree, _StrategyNodes(teacher, tree))
    return teacher._nodes_cache[1]
