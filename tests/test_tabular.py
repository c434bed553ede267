"""The tabular policy on the prefix tree (`pcmi.tabular`, theory.md §9): π_θ(a | h) = softmax(θ_h)_a.

Every derived quantity is checked against a plain Python loop over the tree: the segment
operations of `Siblings` over each node's children, the conditionals, the reach μ(h) = π(h)
(a sum over the rollouts below h and a product along the path) and the sequence law. Masked
tokens (θ = −inf) have probability exactly 0 and keep it under gradient steps. Sabotaged
segment operations must fail the same checks.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graphworld.enumeration import PrefixTree
from pcmi.errors import PcmiInputError
from pcmi.estimators import expected_gradient
from pcmi.objectives import LossMode
from pcmi.tabular import Siblings, TabularPolicy
from pcmi.testing import (children_of, extreme_log_distributions, extreme_logit, prefix_trees, tree_instances,
                          tree_logits)

def scaled(n: int) -> int:
    """n examples under the ci profile (40), proportionally fewer or more under mutation / dev."""
    return max(4, n * settings.default.max_examples // 40)


trees = st.integers(2, 7).flatmap(lambda n: prefix_trees(n))
node_values = st.one_of(extreme_logit, st.floats(-1e3, 1e3), st.just(700.0), st.just(-np.inf))


@st.composite
def tree_and_values(draw, rows: int = 2):
    """A tree and node arrays x (rows, N) with −inf, 1e-300 masses and large values."""
    tree = draw(trees)
    x = np.array([draw(st.lists(node_values, min_size=tree.n_nodes, max_size=tree.n_nodes)) for _ in range(rows)])
    return tree, x


def ancestors(tree, v):
    out = []
    while v != -1:
        out.append(int(v))
        v = tree.parent[v]
    return out


# --- Siblings: segment ops against loops over children -------------------------------------------

def loop_segment_ops(tree, x):
    """{op: (rows, S) in the order of the internal nodes} by plain loops."""
    kids = children_of(tree)
    internal = sorted(kids)
    out = {"sum": [], "max": [], "logsumexp": [], "rank": np.zeros(x.shape, np.int64)}
    for row_i, row in enumerate(x):
        s, m, l = [], [], []
        for h in internal:
            vals = [row[c] for c in kids[h]]
            s.append(sum(vals))
            m.append(max(vals))
            fin = [v for v in vals if v > -np.inf]
            if not fin:
                l.append(-np.inf)
            else:
                top = max(fin)
                l.append(top + np.log(sum(np.exp(v - top) for v in fin)))
            for r, c in enumerate(sorted(kids[h], key=lambda c: (-row[c], c))):
                out["rank"][row_i, c] = r
        out["sum"].append(s)
        out["max"].append(m)
        out["logsumexp"].append(l)
    return internal, {k: np.array(v) for k, v in out.items()}


def check_segment_ops(tree, x, make=Siblings) -> bool:
    sib = make(tree)
    internal, ref = loop_segment_ops(tree, x)
    if sorted(sib.internal.tolist()) != internal or sib.n_segments != len(internal):
        return False
    order = np.argsort(sib.internal)
    fin = np.isfinite(x)
    x_sum = np.where(fin, x, 0.0)          # sums of finite values only (inf − inf is not the point here)
    _, ref_sum = loop_segment_ops(tree, x_sum)
    ok = np.allclose(sib.sum(x_sum)[:, order], ref_sum["sum"], rtol=1e-12, atol=1e-9)
    ok &= np.array_equal(sib.max(x)[:, order], ref["max"])
    lse = sib.logsumexp(x)[:, order]
    ok &= np.array_equal(np.isneginf(lse), np.isneginf(ref["logsumexp"]))
    ok &= np.allclose(np.where(np.isfinite(lse), lse, 0), np.where(np.isfinite(ref["logsumexp"]), ref["logsumexp"], 0),
                      rtol=1e-12, atol=1e-12)
    ok &= np.array_equal(sib.rank(x)[:, 1:], ref["rank"][:, 1:])
    seg = np.arange(sib.n_segments, dtype=float)[None, :] + 10.0
    spread = sib.spread(seg)
    ok &= bool(np.all(spread[:, 0] == 0))
    for c in range(1, tree.n_nodes):
        ok &= bool(spread[0, c] == seg[0, list(sib.internal).index(tree.parent[c])])
    return bool(ok)


@settings(max_examples=scaled(80), deadline=None)
@given(tree_and_values())
def test_segment_ops_match_loops_over_children(tx):
    tree, x = tx
    assert check_segment_ops(tree, x)


@settings(max_examples=scaled(40), deadline=None)
@given(trees)
def test_by_depth_visits_each_internal_node_once_deepest_first(tree):
    sib = Siblings(tree)
    kids = children_of(tree)
    seen, last_depth = [], np.inf
    for nodes, ch, first in sib.by_depth(tree):
        d = tree.depth[nodes]
        assert np.all(d == d[0]) and d[0] < last_depth
        last_depth = d[0]
        for j, h in enumerate(nodes):
            end = first[j + 1] if j + 1 < len(first) else len(ch)
            assert sorted(ch[first[j]:end].tolist()) == kids[int(h)]
        seen += nodes.tolist()
    assert sorted(seen) == sorted(kids)


class SumInNodeOrder(Siblings):
    """reduceat over the children in node order, not grouped by parent: segments mix siblings."""
    def sum(self, x):
        return np.add.reduceat(np.asarray(x, float)[..., 1:], self.starts, axis=-1)


class RankTiesHigherFirst(Siblings):
    def rank(self, key):
        return super().rank(np.asarray(key, float) + 1e-9 * np.arange(np.shape(key)[-1]))


class LogsumexpWithoutShift(Siblings):
    def logsumexp(self, x):
        with np.errstate(divide="ignore", over="ignore"):
            return np.log(self.sum(np.exp(np.asarray(x, float))))


def test_sabotaged_segment_ops_fail():
    # children of the root (1, 2) and of node 1 (3, 4) interleave with node 2's (5) in node order
    tree = PrefixTree(np.array([-1, 0, 0, 1, 2, 1]), np.array([3, 4, 5]))
    x = np.array([[0.0, 1.0, 2.0, 3.0, 4.0, 3.0], [0.0, 800.0, 799.0, -np.inf, 1.0, 5.0]])
    assert check_segment_ops(tree, x)
    for bad in (SumInNodeOrder, RankTiesHigherFirst, LogsumexpWithoutShift):
        assert not check_segment_ops(tree, x, make=bad), bad.__name__


# --- TabularPolicy: conditionals, reach, sequence law ------------------------------------------------

def loop_policy(tree, theta):
    """(log π(a|h) per node, μ(h) = Π cond along the path) by loops."""
    kids = children_of(tree)
    lc = np.zeros(tree.n_nodes)
    for h, ks in kids.items():
        fin = [c for c in ks if np.isfinite(theta[c])]
        top = max(theta[c] for c in fin) if fin else 0.0
        lse = top + np.log(sum(np.exp(theta[c] - top) for c in fin)) if fin else -np.inf
        for c in ks:
            lc[c] = theta[c] - lse if np.isfinite(theta[c]) else -np.inf
    reach = np.array([np.prod([np.exp(lc[a]) for a in ancestors(tree, v) if a != 0]) for v in range(tree.n_nodes)])
    return lc, reach


@settings(max_examples=scaled(60), deadline=None)
@given(trees.flatmap(lambda t: st.tuples(st.just(t), tree_logits(t, masked=True))))
def test_conditionals_and_reach_match_loops(args):
    tree, theta = args
    pol = TabularPolicy(tree, theta)
    lc, reach = loop_policy(tree, theta)
    assert np.allclose(pol.log_cond[np.isfinite(lc)], lc[np.isfinite(lc)], atol=1e-12)
    assert np.array_equal(np.isneginf(pol.log_cond), np.isneginf(lc))
    assert np.allclose(pol.reach, reach, rtol=1e-12, atol=1e-300)
    assert np.array_equal(pol.cond[~np.isfinite(theta)], np.zeros((~np.isfinite(theta)).sum()))   # masked: exactly 0
    assert pol.reach[0] == 1 and np.sum(np.exp(pol.log_seq)) == pytest.approx(1, abs=1e-12)
    # reach = Σ of π(y) over the rollouts below h
    pi = np.exp(pol.log_seq)
    below = np.array([sum(pi[i] for i in range(tree.n_leaves) if v in ancestors(tree, tree.leaf_node[i]))
                      for v in range(tree.n_nodes)])
    assert np.allclose(pol.reach, below, rtol=1e-10, atol=1e-14)


@settings(max_examples=scaled(80), deadline=None)
@given(st.integers(2, 7).flatmap(lambda n: st.tuples(prefix_trees(n), extreme_log_distributions(n))))
def test_from_log_probs_reproduces_the_sequence_law(args):
    tree, log_pi = args
    pol = TabularPolicy.from_log_probs(tree, log_pi)
    on = np.isfinite(log_pi)
    assert np.array_equal(np.isfinite(pol.log_seq), on)
    assert np.allclose(pol.log_seq[on], log_pi[on], rtol=1e-12, atol=1e-9)
    # reach: μ(h) = Σ_{y below h} π(y)
    pi = np.exp(log_pi)
    for v in range(tree.n_nodes):
        mass = sum(pi[i] for i in range(tree.n_leaves) if v in ancestors(tree, tree.leaf_node[i]))
        assert pol.reach[v] == pytest.approx(mass, rel=1e-10, abs=1e-300)
    # below a prefix of probability 0 the conditionals are uniform (never reached)
    for h, ks in children_of(tree).items():
        if pol.reach[h] == 0 and np.isneginf(pol.log_prefix[h]):
            assert np.allclose(pol.cond[ks], 1 / len(ks))


def theta_from_prefix_masses(tree, log_pi):
    """Sabotage: θ = π(h·a) (a probability, not its log)."""
    return TabularPolicy(tree, np.r_[0.0, np.exp(tree.prefix_logsumexp(log_pi))[1:]])


def test_sabotaged_from_log_probs_fails():
    tree = PrefixTree(np.array([-1, 0, 0, 1, 1]), np.array([3, 4, 2]))
    log_pi = np.log([0.5, 0.2, 0.3])
    assert np.allclose(TabularPolicy.from_log_probs(tree, log_pi).log_seq, log_pi)
    assert not np.allclose(theta_from_prefix_masses(tree, log_pi).log_seq, log_pi, atol=1e-3)


@settings(max_examples=scaled(40), deadline=None)
@given(tree_instances().flatmap(lambda i: st.tuples(st.just(i), tree_logits(i.tree, masked=True))),
       st.sampled_from([LossMode("full"), LossMode("full", 0.5), LossMode("sequence"), LossMode("sampled"),
                        LossMode("topk", 1.0, 1, "teacher", True)]), st.floats(0.01, 10.0))
def test_masked_tokens_stay_at_probability_zero(args, mode, lr):
    """θ = −inf: π(a|h) = 0 exactly, G = 0 there, so θ − η·G keeps the token masked."""
    inst, theta = args
    pol = TabularPolicy(inst.tree, theta)
    masked = ~np.isfinite(theta)
    try:
        G = expected_gradient(pol, inst.teacher, inst.log_demos, mode).grad
    except PcmiInputError:
        return                              # e.g. forward-type KL to a masked token the teacher emits
    assert np.all(G[masked] == 0)
    stepped = pol.with_theta(theta - lr * G)
    assert np.all(stepped.cond[masked] == 0) and np.all(np.isneginf(stepped.log_cond[masked]))
    below = [i for i in range(inst.n) if any(masked[a] for a in ancestors(inst.tree, inst.tree.leaf_node[i]))]
    assert np.all(np.isneginf(stepped.log_seq[below]))


# --- bad input --------------------------------------------------------------------------------------------

def test_bad_logits_are_one_line_errors():
    tree = PrefixTree(np.array([-1, 0, 0, 1, 1]), np.array([3, 4, 2]))
    cases = [(np.zeros(4), "one entry per tree node"),
             (np.array([0, np.nan, 0, 0, 0]), "NaN"),
             (np.array([0, np.inf, 0, 0, 0]), "+inf"),
             (np.array([0, 0, 0, -np.inf, -np.inf]), "at least one token")]   # node 1 reached, all masked
    for theta, word in cases:
        with pytest.raises(PcmiInputError) as e:
            TabularPolicy(tree, theta)
        assert "\n" not in str(e.value) and word in str(e.value)
    with pytest.raises(PcmiInputError) as e:
        TabularPolicy.from_log_probs(tree, np.log([0.5, 0.5]))
    assert "\n" not in str(e.value) and "leaves" in str(e.value)
    # a fully masked prefix that the policy never reaches is fine
    pol = TabularPolicy(tree, np.array([0, -np.inf, 0, -np.inf, -np.inf]))
    assert np.array_equal(np.exp(pol.log_seq), [0.0, 0.0, 1.0])
