"""Teachers: the fast paths equal the dense |Y|×|Y| computation; PCMI agrees with dit."""
import numpy as np
import pytest
from dit import Distribution
from dit.multivariate.cross_mutual_information import cross_coinformation
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import logsumexp

from pcmi import CopyTeacher, KernelTeacher, LatentStrategyTeacher, PcmiInputError
from pcmi.distributions import safe_log
from pcmi.scores import pcmi_matrix
from pcmi.teachers import expected_log_teacher, leaf_rows, mixture_log_teacher, token_mixture_log
from pcmi.testing import (copy_instances, eps_closed, extreme_instances, graph_instances, latent_instances,
                          overlapping_laws, route_copying_instances)


def dense_expectations(inst):
    """Plain route: build the dense matrix log T(y|y'_j), then E_D, mixture at the leaves."""
    rows = leaf_rows(inst.teacher, inst.n)
    D, present = np.exp(inst.log_demos), np.isfinite(inst.log_demos)[:, None]  # exact even if D underflows
    with np.errstate(invalid="ignore"):
        e = np.where(present, np.where(np.isneginf(rows), -np.inf, D[:, None] * rows), 0.0).sum(axis=0)
    return e, logsumexp(inst.log_demos[:, None] + rows, axis=0)


def _close(a, b, tol=1e-9):
    a, b = np.asarray(a), np.asarray(b)
    assert np.array_equal(np.isfinite(a), np.isfinite(b))
    m = np.isfinite(a)
    assert np.allclose(a[m], b[m], atol=tol, rtol=tol)


@given(st.one_of(route_copying_instances(all_correct=False), latent_instances(), copy_instances()))
def test_streamed_expectations_equal_dense(inst):
    e, mix = dense_expectations(inst)
    leaves = inst.tree.leaf_node
    _close(expected_log_teacher(inst.teacher, inst.log_demos, inst.tree)[leaves], e, 1e-8)
    _close(mixture_log_teacher(inst.teacher, inst.log_demos, inst.tree)[leaves], mix, 1e-9)
    dense = KernelTeacher(leaf_rows(inst.teacher, inst.n))
    _close(expected_log_teacher(dense, inst.log_demos, inst.tree)[leaves], e, 1e-8)


@given(graph_instances())
def test_prefix_marginals_equal_dense_on_trees(pair):
    """On a real prefix tree: route-copying / soft / copy fast paths vs the dense kernel."""
    inst, _ = pair
    dense = KernelTeacher(leaf_rows(inst.teacher, inst.n))
    for f in (expected_log_teacher, mixture_log_teacher, token_mixture_log):
        _close(f(inst.teacher, inst.log_demos, inst.tree), f(dense, inst.log_demos, inst.tree), 1e-8)


def test_latent_chunks_do_not_change_result():
    rng = np.random.default_rng(0)
    n, K = 40, 3
    lp = np.log(rng.dirichlet(np.ones(n), size=K))
    t = LatentStrategyTeacher(np.log([0.5, 0.3, 0.2]), lp, 0.05)
    from graphworld import PrefixTree
    tree = PrefixTree.flat(n)
    D = t.log_base - logsumexp(t.log_base)
    full = sum(np.exp(w)[:, None] * lt for w, lt in t.demo_classes(D, tree, chunk=1000)).sum(axis=0)
    small = sum((np.exp(w)[:, None] * lt).sum(axis=0) for w, lt in t.demo_classes(D, tree, chunk=3))
    assert np.allclose(full, small, atol=1e-12)


@given(overlapping_laws())
def test_pcmi_of_bayesian_teacher_matches_dit(laws):
    """PCMI(y; y') of the exchangeable joint p(y, y') = Σ_z w_z P_z(y) P_z(y') equals dit's
    pointwise mutual information (cross co-information of a point mass under p)."""
    log_w, log_P = laws
    t = LatentStrategyTeacher(log_w, log_P, 0.0)
    from pcmi import Instance
    inst = Instance(t.log_base, np.ones(t.n), t, t.log_base)
    M = pcmi_matrix(inst)  # nats
    joint = np.exp(logsumexp(log_w[:, None, None] + log_P[:, :, None] + log_P[:, None, :], axis=0))
    n = t.n
    outcomes = [(a, b) for a in range(n) for b in range(n)]
    p = Distribution(outcomes, [joint[a, b] for a, b in outcomes])
    for j, y in [(0, 0), (0, n - 1), (n - 1, 1)]:
        point = Distribution(outcomes, [1.0 if o == (j, y) else 0.0 for o in outcomes])
        assert abs(cross_coinformation(point, p) * np.log(2) - M[j, y]) < 1e-9


@given(eps=eps_closed, laws=overlapping_laws())
def test_latent_teacher_rows_are_distributions(eps, laws):
    t = LatentStrategyTeacher(laws[0], laws[1], eps)
    rows = leaf_rows(t, t.n)
    assert np.allclose(logsumexp(rows, axis=1), 0, atol=1e-12)


def test_copy_teacher_is_a_point_strategy_latent_teacher():
    lb = np.log([0.5, 0.3, 0.2])
    c = CopyTeacher(lb, 0.7)
    lt = LatentStrategyTeacher(lb, np.where(np.eye(3) > 0, 0.0, -np.inf), 0.3)
    assert np.allclose(leaf_rows(c, 3), leaf_rows(lt, 3))


@pytest.mark.parametrize("make, msg", [
    (lambda: LatentStrategyTeacher(np.log([0.5, 0.5]), np.log([[0.5, 0.5]]), 0.1), "strategy"),
    (lambda: LatentStrategyTeacher(np.log([0.5, 0.5]), np.log([[0.5, 0.5], [0.5, 0.5]]), 1.5), "eps"),
    (lambda: LatentStrategyTeacher.from_probs([0.5, 0.6], [[1, 0], [0, 1]], 0.1), "not normalized"),
    (lambda: KernelTeacher.from_probs([[0.5, 0.5, 0.0], [1, 0, 0]]), "square"),
    (lambda: KernelTeacher.from_probs([[0.5, -0.5], [1, 0]]), "negative"),
    (lambda: KernelTeacher.from_probs([[float("nan"), 1], [1, 0]]), "NaN"),
    (lambda: CopyTeacher(np.log([0.5, 0.5]), -0.1), "lam"),
])
def test_bad_teacher_input(make, msg):
    with pytest.raises(PcmiInputError) as e:
        make()
    assert msg in str(e.value) and "\n" not in str(e.value)


@given(extreme_instances())
def test_streamed_expectations_equal_dense_on_extremes(inst):
    """Zero-probability rollouts, 1e-300 demonstrations, eps and lam in {0, 1}, prefix trees: the
    fast paths keep the exact −inf pattern (a 1e-300 demonstration that rules y out makes
    E_D log T(y|y') = −inf even though 1 − D(y) rounds to 1)."""
    e, mix = dense_expectations(inst)
    leaves = inst.tree.leaf_node
    _close(expected_log_teacher(inst.teacher, inst.log_demos, inst.tree)[leaves], e, 1e-8)
    _close(mixture_log_teacher(inst.teacher, inst.log_demos, inst.tree)[leaves], mix, 1e-9)
    dense = KernelTeacher(leaf_rows(inst.teacher, inst.n))
    for f in (expected_log_teacher, mixture_log_teacher, token_mixture_log):
        _close(f(inst.teacher, inst.log_demos, inst.tree), f(dense, inst.log_demos, inst.tree), 1e-8)


def test_copy_teacher_keeps_a_tiny_demonstration_that_rules_a_rollout_out():
    lb = np.log([0.5, 0.5])
    from graphworld import PrefixTree
    e = expected_log_teacher(CopyTeacher(lb, 1.0), np.log([1e-300, 1.0]), PrefixTree.flat(2))
    assert np.isneginf(e[1:]).all()  # each rollout has teacher probability 0 under the other demonstration


def test_route_copying_with_a_zero_probability_route():
    """A route label whose rollouts all have π0 = 0 is no strategy (it used to break the
    responsibilities); rows stay normalized and rebuilding from a policy works."""
    lb = np.array([np.log(0.6), np.log(0.4), -np.inf])
    t = LatentStrategyTeacher.route_copying(lb, [0, 1, 2], 0.1)
    assert t.n_strategies == 2
    assert np.allclose(logsumexp(leaf_rows(t, 3), axis=1), 0, atol=1e-12)
    r = t.rebuilt(np.array([np.log(0.9), np.log(0.1), -np.inf]))
    assert np.allclose(np.exp(r.log_w), [0.9, 0.1]) and not np.isnan(r.log_base).any()


def test_latent_teacher_refuses_demonstrations_off_the_base_support():
    t = LatentStrategyTeacher(np.log([0.5, 0.5]), safe_log([[1.0, 0, 0], [0, 1.0, 0]]), 0.0)
    from graphworld import PrefixTree
    with pytest.raises(PcmiInputError, match="zero base probability"):
        expected_log_teacher(t, np.log([0.5, 0.25, 0.25]), PrefixTree.flat(3))
    assert not np.isnan(leaf_rows(t, 3)).any()
