"""Teachers: the fast paths equal the dense |Y|×|Y| computation; PCMI agrees with dit."""
from types import SimpleNamespace

import numpy as np
import pytest
from dit import Distribution
from dit.multivariate.cross_mutual_information import cross_coinformation
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp

from pcmi import CopyTeacher, KernelTeacher, LatentStrategyTeacher, PcmiInputError
from pcmi import teachers as teachers_mod
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


# ---------------------------------------------------------------------------------------------
# Mutation-testing additions (issue 8 item 6): input contracts, documented closed forms on
# hand-built instances, and brute-force checks of every tree node (not only the leaves).
# ---------------------------------------------------------------------------------------------
from graphworld import PrefixTree  # noqa: E402
from pcmi.teachers import _weighted  # noqa: E402

# root 0 → prefixes a = 1, b = 2; a → rollouts y0 = 3, y1 = 4; b → rollout y2 = 5
SMALL_TREE = PrefixTree(np.array([-1, 0, 0, 1, 1, 2]), np.array([3, 4, 5]))


def _leaves_below(tree, h):
    """Rollouts whose path passes through node h (by walking up the parent links)."""
    out = []
    for y, node in enumerate(tree.leaf_node):
        while node != -1 and node != h:
            node = tree.parent[node]
        if node == h:
            out.append(y)
    return out


def _brute_node_quantities(teacher, D, tree):
    """E_D log T(h|y'), log E_D T(h|y') and log E_D T(a|h,y') (per-demonstration conditionals,
    demonstrations with T(h|y') = 0 left out) from the dense matrix, node by node in plain numpy."""
    T = np.exp(leaf_rows(teacher, teacher.n))  # T[j, y] = T(y | y'_j)
    N = tree.n_nodes
    Th = np.array([[T[j, _leaves_below(tree, h)].sum() for h in range(N)] for j in range(len(D))])
    demos = [j for j in range(len(D)) if D[j] > 0]
    with np.errstate(divide="ignore"):
        e = np.array([sum(-np.inf if Th[j, h] == 0 else D[j] * np.log(Th[j, h]) for j in demos) for h in range(N)])
        mix = np.log([sum(D[j] * Th[j, h] for j in demos) for h in range(N)])
        tok = np.log([1.0] + [sum(D[j] * Th[j, c] / Th[j, tree.parent[c]] for j in demos if Th[j, tree.parent[c]] > 0)
                              for c in range(1, N)])
    return e, mix, tok


def _small_teachers():
    lb = np.log([0.2, 0.3, 0.5])
    overlapping = LatentStrategyTeacher.from_probs([0.4, 0.6], [[0.25, 0.75, 0.0], [1 / 6, 0.0, 5 / 6]], 0.2)
    kernel = KernelTeacher.from_probs([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0], [0.1, 0.0, 0.9]])
    return [overlapping, LatentStrategyTeacher.route_copying(lb, [0, 0, 1], 0.3),
            CopyTeacher(lb, 0.6), CopyTeacher(lb, 1.0), kernel]


@pytest.mark.parametrize("k", range(5))
@pytest.mark.parametrize("D", [[0.5, 0.25, 0.25], [0.0, 0.4, 0.6], [1.0, 0.0, 0.0]])
def test_node_quantities_against_brute_force_on_a_small_tree(k, D):
    """All three streamed quantities on every node of a depth-2 tree, against a node-by-node
    plain-numpy computation from the dense teacher (root of the token mixture: exactly 0)."""
    teacher = _small_teachers()[k]
    log_D = safe_log(D)
    e, mix, tok = _brute_node_quantities(teacher, np.asarray(D), SMALL_TREE)
    _close(expected_log_teacher(teacher, log_D, SMALL_TREE), e, 1e-12)
    _close(mixture_log_teacher(teacher, log_D, SMALL_TREE), mix, 1e-12)
    got = token_mixture_log(teacher, log_D, SMALL_TREE)
    _close(got, tok, 1e-12)
    assert got[0] == 0.0


def test_streamed_quantities_raise_no_floating_point_error():
    """Zero-probability prefixes (−inf − (−inf), 0·(−inf)) are handled where they arise, so the
    results hold even under np.errstate(all='raise')."""
    t = LatentStrategyTeacher(np.log([0.5, 0.5]), safe_log([[1.0, 0, 0], [0, 1.0, 0]]), 0.0)  # π0(y2) = 0
    log_D = safe_log([0.5, 0.5, 0.0])
    with np.errstate(all="raise"):
        tok = token_mixture_log(t, log_D, SMALL_TREE)
        q = t.log_posterior([0, 1, 2])
        w = _weighted(np.array([0.0, 0.5]), np.array([-np.inf, -1.0]))
    assert not np.isnan(tok).any() and not np.isnan(q).any()
    assert np.array_equal(w, [0.0, -0.5])


def test_weighted_counts_zero_weight_as_nothing_unless_marked_present():
    """w·log t with 0·(−inf) = 0 by default (w > 0 marks presence); an explicitly present weight
    that underflowed to 0 still gives −inf where log t = −inf."""
    w, lt = np.array([0.0, 0.5, 0.5, 1.0]), np.array([-np.inf, -2.0, -np.inf, 0.0])
    assert np.array_equal(_weighted(w, lt), [0.0, -1.0, -np.inf, 0.0])
    assert np.array_equal(_weighted(np.array([0.0, 0.0]), np.array([-np.inf, -3.0]), [True, False]), [-np.inf, 0.0])


def test_latent_rows_follow_the_closed_form():
    """T(y|y') = (1−eps)·Σ_z w_z P_z(y') P_z(y) / π0(y') + eps·π0(y), computed by hand in numpy;
    from_probs and the log-space constructor build the same teacher."""
    w, P, eps = np.array([0.4, 0.6]), np.array([[0.25, 0.75, 0.0], [1 / 6, 0.0, 5 / 6]]), 0.2
    base = w @ P
    T = (1 - eps) * np.einsum("z,zj,zy->jy", w, P, P) / base[:, None] + eps * base[None, :]
    for t in (LatentStrategyTeacher.from_probs(w, P, eps), LatentStrategyTeacher(np.log(w), safe_log(P), eps)):
        assert t.eps == eps and t.n == 3 and t.n_strategies == 2
        assert np.allclose(np.exp(t.log_base), base, atol=1e-15)
        assert np.allclose(np.exp(leaf_rows(t, 3)), T, atol=1e-15)
    one = LatentStrategyTeacher.from_probs([1.0], [0.2, 0.8], 0.1)  # a single law given as a vector
    assert one.n_strategies == 1 and np.allclose(np.exp(leaf_rows(one, 2)), [[0.2, 0.8], [0.2, 0.8]])


def test_posterior_is_bayes_rule_and_a_zero_probability_demo_tells_nothing():
    """q(z|y') = w_z P_z(y') / π0(y'); q(z|y') = w_z when π0(y') = 0."""
    w, P = np.array([0.3, 0.7]), np.array([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]])
    t = LatentStrategyTeacher(np.log(w), safe_log(P), 0.1)
    q = np.exp(t.log_posterior([0, 1, 2]))
    assert np.allclose(q, [[1.0, 0.0], [0.15 / 0.85, 0.7 / 0.85], [0.3, 0.7]], atol=1e-15)


def test_from_responsibilities_reproduces_the_base_policy():
    """Soft responsibilities a_z(y): w_z = Σ_y π0(y) a_z(y), P_z ∝ π0·a_z, Σ_z w_z P_z = π0; a
    strategy with zero mass is dropped."""
    pi0 = np.array([0.2, 0.3, 0.5])
    a = np.array([[0.5, 1.0, 0.0], [0.5, 0.0, 1.0], [0.0, 0.0, 0.0]])
    t = LatentStrategyTeacher.from_responsibilities(np.log(pi0), safe_log(a), 0.0)
    assert t.n_strategies == 2 and not t.disjoint
    assert np.allclose(np.exp(t.log_w), [0.4, 0.6])
    assert np.allclose(np.exp(t.log_P), [[0.25, 0.75, 0.0], [1 / 6, 0.0, 5 / 6]])
    assert np.allclose(np.exp(t.log_base), pi0)


def test_route_copying_groups_demonstrations_by_route():
    """Disjoint strategies: one demonstration group per route with D-mass, of weight D(route);
    the route's teacher is (1−eps)·π0(·|route) + eps·π0. Overlapping laws are not disjoint; a
    zero-weight strategy does not make supports overlap."""
    pi0 = np.array([0.1, 0.3, 0.2, 0.4])
    t = LatentStrategyTeacher.route_copying(np.log(pi0), [0, 0, 1, 1], 0.25)
    assert t.disjoint and t.n_strategies == 2
    groups = list(t.demo_classes(safe_log([0.1, 0.3, 0.6, 0.0]), PrefixTree.flat(4)))
    assert len(groups) == 2 and all(len(lw) == 1 for lw, _ in groups)
    assert np.allclose(sorted(float(np.exp(lw[0])) for lw, _ in groups), [0.4, 0.6])
    for lw, lt in groups:
        route = [0, 1] if np.isclose(np.exp(lw[0]), 0.4) else [2, 3]
        cond = np.where(np.isin(np.arange(4), route), pi0 / pi0[route].sum(), 0.0)
        assert np.allclose(np.exp(lt[0, 1:]), 0.75 * cond + 0.25 * pi0)
    assert len(list(t.demo_classes(safe_log([0.0, 0.0, 0.5, 0.5]), PrefixTree.flat(4)))) == 1
    assert not LatentStrategyTeacher(np.log([0.5, 0.5]), np.log([[0.5, 0.5], [0.5, 0.5]]), 0.1).disjoint
    assert LatentStrategyTeacher(safe_log([1.0, 0.0]), safe_log([[1.0, 0.0], [0.5, 0.5]]), 0.1).disjoint


def test_rebuilt_teacher_uses_the_new_policy():
    """rebuilt(π): same P_z, weights m_z = Σ_y π(y) q(z|y) (π = π0 is a fixed point); the copy
    teacher keeps lam and takes π as its base."""
    w, P = np.array([0.4, 0.6]), np.array([[0.25, 0.75, 0.0], [1 / 6, 0.0, 5 / 6]])
    t = LatentStrategyTeacher(np.log(w), safe_log(P), 0.2)
    same = t.rebuilt(t.log_base)
    assert np.allclose(np.exp(same.log_w), w) and np.allclose(np.exp(same.log_P), P) and same.eps == 0.2
    pi = np.array([0.5, 0.25, 0.25])
    q = w[None, :] * P.T / (w @ P)[:, None]  # q[y, z]
    r = t.rebuilt(np.log(pi))
    assert np.allclose(np.exp(r.log_w), pi @ q) and np.allclose(np.exp(r.log_P), P)
    c = CopyTeacher(np.log([0.5, 0.5]), 0.3).rebuilt(np.log([0.9, 0.1]))
    assert c.lam == 0.3 and np.allclose(np.exp(c.log_base), [0.9, 0.1])


def test_unit_interval_check():
    """eps and lam must be numbers in the closed interval [0, 1]: both ends allowed, NaN, ±inf,
    non-numbers (strings and bools included) and values outside refused with a message naming the
    argument and the range (pcmi.checks.unit; its open ends are tested in tests/test_checks.py)."""
    for ok in (0, 1, 0.5, np.float64(0.25)):
        assert LatentStrategyTeacher(np.log([1.0]), np.log([[0.5, 0.5]]), ok).eps == float(ok)
        assert CopyTeacher(np.log([0.5, 0.5]), ok).lam == float(ok)
    for bad in (float("nan"), float("inf"), -float("inf"), -1e-12, 1 + 1e-12, 2.0):
        with pytest.raises(PcmiInputError, match=r"eps must lie in \[0, 1\]"):
            LatentStrategyTeacher(np.log([1.0]), np.log([[0.5, 0.5]]), bad)
        with pytest.raises(PcmiInputError, match=r"lam must lie in \[0, 1\]"):
            CopyTeacher(np.log([0.5, 0.5]), bad)
    for bad in ("abc", "0.5", True, None, [0.1, 0.2]):
        with pytest.raises(PcmiInputError, match="lam must be a number"):
            CopyTeacher(np.log([0.5, 0.5]), bad)


@pytest.mark.parametrize("make, words", [
    (lambda: LatentStrategyTeacher(np.log([0.5, 0.6]), np.log([[1.0, 0], [0, 1.0]]), 0.1), ["strategy weights w"]),
    (lambda: LatentStrategyTeacher(np.log([0.5, 0.5]), np.log([[0.5, 0.6], [0.5, 0.5]]), 0.1), ["strategy law P_z"]),
    (lambda: LatentStrategyTeacher(np.log([0.5, 0.5]), np.log([[0.2, 0.3, 0.5]]), 0.1),
     ["2 strategy weights", "1 strategy law"]),
    (lambda: LatentStrategyTeacher.from_probs([0.5, 0.5], [[0.5, 0.6], [1, 0]], 0.1), ["strategy law P_z"]),
    (lambda: LatentStrategyTeacher.from_probs([0.5, 0.6], [[1, 0], [0, 1]], 0.1), ["strategy weights w"]),
    (lambda: LatentStrategyTeacher.route_copying(np.log([0.5, 0.5]), [0, 1, 1], 0.1), ["route labels"]),
    (lambda: LatentStrategyTeacher.from_responsibilities(np.log([0.5, 0.5]), np.log([[0.5, 0.5], [0.6, 0.5]]), 0.1),
     ["responsibilities a_z(y)"]),
    (lambda: CopyTeacher(np.log([0.5, 0.6]), 0.1), ["base policy"]),
    (lambda: KernelTeacher(np.log([[0.5, 0.6], [1.0, 0.0]])), ["teacher row"]),
    (lambda: KernelTeacher.from_probs([[0.5, 0.6], [1.0, 0.0]]), ["teacher row"]),
    (lambda: KernelTeacher(np.log([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])), ["square"]),
    (lambda: KernelTeacher(np.zeros((2, 2, 2))), ["square"]),
    (lambda: KernelTeacher.from_probs(np.full((1, 2, 2), 0.5)), ["list of rows"]),
    (lambda: KernelTeacher.from_probs([0.5, 0.5]), ["list of rows"]),
    (lambda: expected_log_teacher(LatentStrategyTeacher(np.log([1.0]), safe_log([[1.0, 0.0]]), 0.0),
                                  np.log([0.5, 0.5]), PrefixTree.flat(2)), ["zero base probability", "undefined"]),
])
def test_bad_input_messages_name_the_problem(make, words):
    with pytest.raises(PcmiInputError) as e:
        make()
    assert all(w in str(e.value) for w in words) and "\n" not in str(e.value), str(e.value)


def test_kernel_teacher_accepts_arrays_and_lists_alike():
    T = [[0.5, 0.5], [0.0, 1.0]]
    for t in (KernelTeacher.from_probs(T), KernelTeacher.from_probs(np.array(T)), KernelTeacher(safe_log(T))):
        assert t.n == 2 and np.allclose(np.exp(leaf_rows(t, 2)), T)


# --- malformed arrays: one-line PcmiInputError, never numpy's ValueError --------------------
@pytest.mark.parametrize("make, names", [
    (lambda: KernelTeacher.from_probs([[0.5, 0.5], [1.0]]), "teacher matrix"),
    (lambda: KernelTeacher([[0.0, -1.0], [0.0]]), "teacher matrix"),
    (lambda: LatentStrategyTeacher.from_probs([0.5, 0.5], [[1.0, 0.0], [1.0]], 0.1), "strategy law P_z"),
    (lambda: LatentStrategyTeacher(np.log([0.5, 0.5]), [[0.0, -1.0], [0.0]], 0.1), "strategy laws P_z"),
    (lambda: LatentStrategyTeacher(np.log([0.5, 0.5]), np.zeros((2, 1, 1)), 0.1), r"strategy laws P_z .*2 dimension"),
    (lambda: LatentStrategyTeacher([[0.0]], np.zeros((1, 1)), 0.1), r"strategy weights w .*1 dimension"),
    (lambda: CopyTeacher([0.0, "a"], 0.5), "base policy"),
])
def test_malformed_arrays_are_refused_with_one_line(make, names):
    """The error names the input (its key words, case and all) in one line."""
    with pytest.raises(PcmiInputError, match=names) as e:
        make()
    assert "\n" not in str(e.value) and type(e.value) is PcmiInputError


def test_copy_teacher_counts_a_demonstration_whose_weight_underflows():
    """lam = 1: a demonstration y'_1 of weight e^−800 (0 in floating point, positive in log space)
    gives T(y_0 | y'_1) = 0, so E_D log T(y_0 | y') = −inf, exactly as the generic stream says."""
    from graphworld import PrefixTree
    t = CopyTeacher(np.log([0.5, 0.5]), 1.0)
    log_D = np.array([np.log1p(-np.exp(-800.0)), -800.0])
    tree = PrefixTree.flat(2)
    e = t.expected_log(log_D, tree)
    assert np.isneginf(e[tree.leaf_node[0]]) and np.isneginf(e[tree.leaf_node[1]])


def test_generic_stream_counts_a_demonstration_whose_weight_underflows():
    """Kernel teacher (generic demo_classes route): a demonstration of weight e^−800 under which
    rollout 0 has probability 0 makes E_D log T(y_0 | y') = −inf, though its weight rounds to 0."""
    from graphworld import PrefixTree
    from pcmi.teachers import expected_log_teacher
    t = KernelTeacher.from_probs([[0.5, 0.5], [0.0, 1.0]])
    log_D = np.array([np.log1p(-np.exp(-800.0)), -800.0])
    tree = PrefixTree.flat(2)
    e = expected_log_teacher(t, log_D, tree)[tree.leaf_node]
    assert np.isneginf(e[0]) and e[1] == pytest.approx(np.log(0.5))


# route-copying from an owner index: O(|Y|) memory, same answers ------------------------------------
def route_copying_rows_by_hand(log_base, labels, eps):
    """T(y|y') = (1−eps)·π0(y)·1[z(y) = z(y')]/π0(z(y')) + eps·π0(y), in probability space from the
    labels (a demonstration with π0(y') = 0 tells nothing: T = π0)."""
    p = np.exp(np.asarray(log_base, float))
    labels = np.asarray(labels)
    mass = {z: p[labels == z].sum() for z in np.unique(labels)}
    T = np.empty((len(p), len(p)))
    for j in range(len(p)):
        cond = np.where(labels == labels[j], p / mass[labels[j]], 0.0) if p[j] > 0 else p
        T[j] = (1 - eps) * cond + eps * p
    return safe_log(T)


@given(graph_instances(teacher={"kind": "route_copying", "eps": 0.1}), eps_closed)
def test_route_copying_on_trees_equals_the_rows_by_hand(pair, eps):
    """Every streamed quantity of the owner-indexed route-copying teacher (prefix-level strategy masses,
    shared prefixes included) equals the same computed from hand-built dense rows."""
    inst, ro = pair
    t = LatentStrategyTeacher.route_copying(inst.log_base, ro.route, eps)
    assert t._log_P is None  # nothing below needs the (K, |Y|) matrix
    by_hand = KernelTeacher(route_copying_rows_by_hand(inst.log_base, ro.route, eps))
    _close(leaf_rows(t, inst.n), by_hand.log_T, 1e-12)
    for f in (expected_log_teacher, mixture_log_teacher, token_mixture_log):
        _close(f(t, inst.log_demos, inst.tree), f(by_hand, inst.log_demos, inst.tree), 1e-9)
    assert t._log_P is None
    P = np.exp(t.log_P)  # materialized on demand: rows π0(·|z)
    assert np.allclose(P.sum(axis=1), 1.0) and np.allclose(np.exp(t.log_w) @ P, np.exp(inst.log_base), atol=1e-14)


def test_sabotage_shared_prefixes_left_out_is_caught(monkeypatch):
    """A node view that forgets the prefixes shared by several routes (the root and above the concept
    nodes) must disagree with the rows by hand."""
    import pcmi.teachers as T
    from graphworld import EdgePolicy, Task, multi_route_dag
    from pcmi import graph_instance
    g = multi_route_dag(3, 1, 2, seed=2, n_sources=1)
    inst, ro = graph_instance(Task(g, *g.graph["prompts"][0], 4), EdgePolicy(stop_pref=0.0))
    by_hand = KernelTeacher(route_copying_rows_by_hand(inst.log_base, ro.route, 0.2))
    real = T._StrategyNodes.log_p
    monkeypatch.setattr(T._StrategyNodes, "log_p", lambda self, z: np.where(self.owner == z, self.own_log_p, -np.inf))
    t = LatentStrategyTeacher.route_copying(inst.log_base, ro.route, 0.2)
    with pytest.raises(AssertionError):  # the token mixture streams the per-strategy rows log_p
        _close(token_mixture_log(t, inst.log_demos, inst.tree), token_mixture_log(by_hand, inst.log_demos, inst.tree))
    monkeypatch.setattr(T._StrategyNodes, "log_p", real)
    mixed = T._StrategyNodes(t, inst.tree)
    assert 0 in mixed.mixed  # the root is shared by every route


@given(route_copying_instances(all_correct=False))
def test_owner_teacher_rebuilt_and_reweighted_like_the_dense_one(inst):
    """rebuilt(π) and with_weights keep the laws P_z and take the new weights, as the dense teacher does."""
    t = inst.teacher
    dense = LatentStrategyTeacher(t.log_w, t.log_P, t.eps)  # built from the materialized laws
    rng = np.random.default_rng(0)
    pi = inst.log_base + 0.5 * rng.standard_normal(inst.n)
    pi = np.where(np.isfinite(pi), pi - logsumexp(pi[np.isfinite(pi)]), -np.inf)
    a, b = t.rebuilt(pi), dense.rebuilt(pi)
    _close(a.log_w, b.log_w, 1e-12)
    _close(a.log_base, b.log_base, 1e-12)
    _close(a.log_P, b.log_P, 1e-12)
    _close(leaf_rows(a, inst.n), leaf_rows(b, inst.n), 1e-12)


@pytest.mark.parametrize("owner, msg", [([0, 1], "one integer strategy index per rollout"),
                                        ([0.0, 1.0, 1.0], "one integer strategy index"),
                                        ([0, -1, 1], "index >= 0 for every rollout"),
                                        ([0, 2, 2], "every strategy of owner")])
def test_from_owner_refuses_a_bad_index(owner, msg):
    with pytest.raises(PcmiInputError, match=msg) as info:
        LatentStrategyTeacher.from_owner(np.log([0.2, 0.3, 0.5]), np.array(owner), 0.1)
    assert "\n" not in str(info.value)


# --- posterior classes, the scaled BLAS product, the copy teacher's O(|tree|) mixtures (issue 13) ------

class PreviousStream:
    """The demonstration stream before issue 13's scale work (commit 80e4de9): one log-space row per
    demonstration, for overlapping latent and copy teachers; every expectation then goes the generic way."""

    def __init__(self, teacher):
        self.t, self.n = teacher, teacher.n

    def demo_classes(self, log_D, tree, chunk=256):
        t, demos = self.t, np.flatnonzero(np.isfinite(log_D))
        base = tree.prefix_logsumexp(t.log_base)
        log_P = None if isinstance(t, CopyTeacher) else tree.prefix_logsumexp(t.log_P)
        for lo in range(0, len(demos), chunk):
            idx = demos[lo:lo + chunk]
            if log_P is None:
                onehot = np.full((len(idx), t.n), -np.inf)
                onehot[np.arange(len(idx)), idx] = 0.0
                yield log_D[idx], teachers_mod._mix(tree.prefix_logsumexp(onehot), t.lam, base[None, :], 1 - t.lam)
            else:
                inner = logsumexp(t.log_posterior(idx)[:, :, None] + log_P[None, :, :], axis=1)
                yield log_D[idx], teachers_mod._mix(inner, 1 - t.eps, base[None, :], t.eps)


def same_as_previous(teacher, log_D, tree, tol=1e-12) -> bool:
    """E_D log T, log E_D T and the token mixture equal the previous implementation's: no NaN, the same
    ±inf pattern and values to tol (relative to max(1, |value|))."""
    old = PreviousStream(teacher)
    for f in (expected_log_teacher, mixture_log_teacher, token_mixture_log):
        a = f(teacher, log_D, tree)
        b = teachers_mod.expected_log_by_classes(old, log_D, tree) if f is expected_log_teacher else f(old, log_D, tree)
        if np.isnan(a).any() or not all(np.array_equal(f(a), f(b)) for f in (np.isneginf, np.isposinf)):
            return False
        m = np.isfinite(a)
        if np.any(np.abs(a[m] - b[m]) > tol * np.maximum(1.0, np.abs(b[m]))):
            return False
    return True


def _overlapping_or_copy(inst):
    t = inst.teacher
    return isinstance(t, CopyTeacher) or (isinstance(t, LatentStrategyTeacher) and not t.disjoint)


@given(st.one_of(extreme_instances(kinds=("latent", "copy")), latent_instances(), copy_instances(),
                 graph_instances().map(lambda pair: pair[0])))
def test_fast_paths_equal_the_previous_implementation(inst):
    """Posterior classes + scaled BLAS (overlapping latent) and the closed forms (copy) against the
    previous per-demonstration stream: zeros, 1e-300 masses, eps and lam in {0, 1}, random trees."""
    if _overlapping_or_copy(inst):
        assert same_as_previous(inst.teacher, inst.log_demos, inst.tree)


def _underflow_teacher():
    """Two strategies whose laws differ by e^-1000: the posterior of y0 gives strategy 1 weight e^-1000,
    and T(y1 | y0) = e^-1000·(P_0 part) + e^-1000·(P_1 part): every probability-space factor underflows."""
    log_P = np.array([[0.0, -1000.0, -1000.0], [-1000.0, 0.0, -1000.0]])
    log_P -= logsumexp(log_P, axis=1, keepdims=True)
    return LatentStrategyTeacher(np.log([0.5, 0.5]), log_P, 0.0)


def test_underflowed_products_are_redone_in_log_space():
    t = _underflow_teacher()
    from graphworld import PrefixTree
    tree, log_D = PrefixTree.flat(3), np.log([0.5, 0.5, 0.0])
    e = expected_log_teacher(t, log_D, tree)
    assert np.all(np.isfinite(e[1:])) and same_as_previous(t, log_D, tree)


def test_sabotage_no_log_space_redo_is_caught(monkeypatch):
    monkeypatch.setattr(teachers_mod, "UNDERFLOW", 0.0)
    from graphworld import PrefixTree
    assert not same_as_previous(_underflow_teacher(), np.log([0.5, 0.5, 0.0]), PrefixTree.flat(3))


def _small_tiles(monkeypatch, rows=2, entries=6, cores=3):
    """Tiles of `rows` classes × entries/rows nodes and `cores` threads from the first entry on, so
    that the small hypothesis instances cross many node blocks, row tiles and threads."""
    monkeypatch.setattr(teachers_mod, "TILE_ROWS", rows)
    monkeypatch.setattr(teachers_mod, "TILE_ENTRIES", entries)
    monkeypatch.setattr(teachers_mod, "PARALLEL_ENTRIES", 0)
    monkeypatch.setattr(teachers_mod, "_cores", lambda: cores)


@settings(max_examples=40)
@given(st.one_of(extreme_instances(kinds=("latent",)), latent_instances(),
                 graph_instances().map(lambda pair: pair[0])))
def test_tiled_threaded_expected_log_equals_the_previous_implementation(inst):
    """The tiles of the streamed expected log (node blocks run on threads) against the previous
    per-demonstration stream, and the same bits whatever the number of threads."""
    t = inst.teacher
    if not (isinstance(t, LatentStrategyTeacher) and not t.disjoint):
        return
    with pytest.MonkeyPatch.context() as mp:
        _small_tiles(mp)
        assert same_as_previous(t, inst.log_demos, inst.tree)
        log_wc, log_qc = t.posterior_classes(inst.log_demos)
        laws = teachers_mod._ScaledLaws(inst.tree.prefix_logsumexp(t.log_P),
                                        inst.tree.prefix_logsumexp(t.log_base), t.eps)
        one = laws.expected_log(log_wc, log_qc, threads=1)
        for k in (2, 3):
            assert np.array_equal(laws.expected_log(log_wc, log_qc, threads=k), one, equal_nan=True)


def test_underflow_in_a_later_node_block_is_redone_there(monkeypatch):
    """The log-space redo of a tile in node block b reads the laws of block b's own nodes."""
    from graphworld import PrefixTree
    _small_tiles(monkeypatch, rows=1, entries=2)  # blocks of 2 nodes: y1 (node 2) lies in the second
    t, tree, log_D = _underflow_teacher(), PrefixTree.flat(3), np.log([0.5, 0.5, 0.0])
    assert same_as_previous(t, log_D, tree)


def test_sabotage_redo_without_the_block_offset_is_caught(monkeypatch):
    from graphworld import PrefixTree
    _small_tiles(monkeypatch, rows=1, entries=2)
    orig = teachers_mod._ScaledLaws.log_sums
    monkeypatch.setattr(teachers_mod._ScaledLaws, "log_sums", lambda self, s, q, r, start=0: orig(self, s, q, r, 0))
    assert not same_as_previous(_underflow_teacher(), np.log([0.5, 0.5, 0.0]), PrefixTree.flat(3))


def _zero_teacher_values():
    """eps = 0 and y' = y0 (strategy 0 only) gives T(y3..y5 | y0) = 0; y0's weight underflows
    (log D = −800) but it is present, so E_D log T must be −inf there, never 0·(−inf) = NaN."""
    from graphworld import PrefixTree
    log_P = np.log(np.array([[0.4, 0.3, 0.3, 0.0, 0.0, 0.0], [0.0, 0.2, 0.2, 0.2, 0.2, 0.2]]))
    t = LatentStrategyTeacher(np.log([0.5, 0.5]), log_P, 0.0)
    return t, PrefixTree.flat(6), np.array([-800.0, 0.0, -np.inf, -np.inf, -np.inf, -np.inf])


def test_zero_teacher_values_in_a_later_block_give_minus_inf(monkeypatch):
    t, tree, log_D = _zero_teacher_values()
    _small_tiles(monkeypatch, rows=1, entries=2)  # nodes 4–7 (y3..y5) lie in blocks 2 and 3
    e = expected_log_teacher(t, log_D, tree)
    assert np.all(np.isneginf(e[tree.leaf_node[3:]])) and np.all(np.isfinite(e[tree.leaf_node[:3]]))
    assert same_as_previous(t, log_D, tree)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the sabotage's NaN, raised on a worker thread
def test_sabotage_zero_teacher_values_left_to_the_weighted_sum_is_caught(monkeypatch):
    """A tile that skips the zero bookkeeping leaves 0·(−inf) = NaN in the weighted sum."""
    t, tree, log_D = _zero_teacher_values()
    _small_tiles(monkeypatch, rows=1, entries=2)
    orig = teachers_mod._ScaledLaws.log_sums
    monkeypatch.setattr(teachers_mod._ScaledLaws, "log_sums", lambda self, *a: orig(self, *a) and False)
    assert not same_as_previous(t, log_D, tree)


def streamed_mixture_log(teacher, log_D, tree):
    """log E_D T(h | y') the generic way: logsumexp over the teacher's stream of demonstration classes."""
    return mixture_log_teacher(SimpleNamespace(demo_classes=teacher.demo_classes), log_D, tree)


def _same(a, b, tol=1e-12) -> bool:
    m = np.isfinite(b)
    return (not np.isnan(a).any() and np.array_equal(np.isneginf(a), np.isneginf(b))
            and bool(np.all(np.abs(a[m] - b[m]) <= tol * np.maximum(1.0, np.abs(b[m])))))


@given(st.one_of(extreme_instances(kinds=("latent",)), latent_instances(), route_copying_instances(all_correct=False),
                 graph_instances().map(lambda pair: pair[0])))
def test_latent_mixture_from_strategy_masses_equals_the_stream(inst):
    """The forward-KL optimum's prefix marginals from K strategy masses m_z = Σ D(y') q(z | y') equal
    the logsumexp over the stream of demonstration rows (overlapping and route-copying teachers)."""
    t = inst.teacher
    if isinstance(t, LatentStrategyTeacher):
        assert _same(t.mixture_log(inst.log_demos, inst.tree), streamed_mixture_log(t, inst.log_demos, inst.tree))


def test_latent_mixture_without_demonstrations_is_minus_inf():
    t, _, tree = _distinct_posteriors()
    assert np.all(np.isneginf(t.mixture_log(np.full(t.n, -np.inf), tree)))


def test_sabotage_latent_mixture_from_the_prior_masses_is_caught(monkeypatch):
    """m_z = w_z (the prior, ignoring what the demonstrations say) is a plausible slip: it gives π0."""
    t, log_D, tree = _distinct_posteriors()
    log_D = np.where(np.arange(t.n) < 5, log_D, -np.inf)  # demonstrations that favour some strategies
    monkeypatch.setattr(LatentStrategyTeacher, "posterior_classes",
                        lambda self, d: (np.zeros(1), self.log_w[None, :]))
    assert not _same(t.mixture_log(log_D, tree), streamed_mixture_log(t, log_D, tree))


def test_sabotage_route_copying_mixture_without_shared_prefixes_is_caught(monkeypatch):
    """A route-copying mixture that treats the prefixes shared by several routes as owned by none,
    against the dense rows by hand."""
    from graphworld import EdgePolicy, Task, multi_route_dag
    from pcmi import graph_instance
    g = multi_route_dag(3, 1, 2, seed=2, n_sources=1)
    inst, ro = graph_instance(Task(g, *g.graph["prompts"][0], 4), EdgePolicy(stop_pref=0.0))
    t = LatentStrategyTeacher.route_copying(inst.log_base, ro.route, 0.2)
    by_hand = mixture_log_teacher(KernelTeacher(route_copying_rows_by_hand(inst.log_base, ro.route, 0.2)),
                                  inst.log_demos, inst.tree)
    assert _same(t.mixture_log(inst.log_demos, inst.tree), by_hand, 1e-9)
    real = teachers_mod._strategy_nodes

    def no_mixed(teacher, tree):
        nodes = real(teacher, tree)
        nodes.mixed = nodes.mixed[:0]
        return nodes
    monkeypatch.setattr(teachers_mod, "_strategy_nodes", no_mixed)
    assert not _same(t.mixture_log(inst.log_demos, inst.tree), by_hand, 1e-9)


def _distinct_posteriors():
    rng = np.random.default_rng(3)
    n, K = 30, 3
    t = LatentStrategyTeacher(np.log([0.5, 0.3, 0.2]), np.log(rng.dirichlet(np.ones(n), size=K)), 0.05)
    from graphworld import PrefixTree
    return t, t.log_base - logsumexp(t.log_base), PrefixTree.flat(n)


def test_sabotage_posteriors_merged_too_coarsely_are_caught(monkeypatch):
    t, log_D, tree = _distinct_posteriors()
    assert same_as_previous(t, log_D, tree)
    monkeypatch.setattr(teachers_mod, "POSTERIOR_DECIMALS", 0)  # merges posteriors that differ by < 0.5 in log q
    assert not same_as_previous(t, log_D, tree)


@given(graph_instances(teacher={"kind": "soft_route", "eps": 0.1, "sharpness": 2.0}))
def test_a_soft_route_teacher_has_one_posterior_class_per_route(pair):
    inst, rollouts = pair
    log_w, _ = inst.teacher.posterior_classes(inst.log_demos)
    routes = np.unique(rollouts.route[np.isfinite(inst.log_demos)])
    assert len(log_w) == len(routes)
    assert np.isclose(logsumexp(log_w), logsumexp(inst.log_demos[np.isfinite(inst.log_demos)]), atol=1e-12)


def _tiny_outside_mass():
    """root → a → {y0, y1}, root → y2 with π0(a) = 1e-300 and a demonstration of mass 1e-300 outside a:
    at y1 the outside term D_out(a)·π0(y1)/π0(a) is as large as the inside one."""
    from graphworld import PrefixTree
    tree = PrefixTree(np.array([-1, 0, 0, 1, 1]), np.array([3, 4, 2]))
    log_base = np.array([np.log(5e-301), np.log(5e-301), 0.0])
    return CopyTeacher(log_base, 0.5), np.array([0.0, -np.inf, np.log(1e-300)]), tree


def test_copy_token_mixture_keeps_a_1e300_demonstration_outside_the_prefix():
    t, log_D, tree = _tiny_outside_mass()
    assert same_as_previous(t, log_D, tree)


def test_sabotage_outside_mass_by_subtraction_is_caught(monkeypatch):
    def by_subtraction(tree, log_D):  # Σ D − D(h): loses the 1e-300 demonstration next to a mass of 1
        d = tree.prefix_logsumexp(log_D)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(d < d[0], d[0] + np.log1p(-np.exp(d - d[0])), -np.inf)
    monkeypatch.setattr(teachers_mod, "_mass_outside", by_subtraction)
    t, log_D, tree = _tiny_outside_mass()
    assert not same_as_previous(t, log_D, tree)


def flat_equals_general(t, log_D, tree, tol=1e-12) -> bool:
    """The flat tree's strategy nodes (no tree reductions) give what the general path gives."""
    from unittest import mock
    fs = (expected_log_teacher, mixture_log_teacher, token_mixture_log)
    t._nodes_cache = None
    fast = [f(t, log_D, tree) for f in fs]
    with mock.patch.object(teachers_mod, "_is_flat", lambda tree: False):
        t._nodes_cache = None
        slow = [f(t, log_D, tree) for f in fs]
    t._nodes_cache = None
    for a, b in zip(fast, slow):
        if not np.array_equal(np.isfinite(a), np.isfinite(b)):
            return False
        m = np.isfinite(a)
        if np.any(np.abs(a[m] - b[m]) > tol * np.maximum(1.0, np.abs(b[m]))):
            return False
    return True


@given(st.one_of(extreme_instances(kinds=("route_copying",)), route_copying_instances(all_correct=False)))
def test_flat_route_copying_path_equals_the_general_tree_path(inst):
    """On a flat tree the strategy nodes skip the tree reductions; the general path (the previous
    implementation on every tree) must agree to 1e-12."""
    assert flat_equals_general(inst.teacher, inst.log_demos, inst.tree)


def test_sabotage_flat_root_owned_by_the_first_strategy_is_caught(monkeypatch):
    """A flat path that gives the root to one strategy (not shared) fails the comparison above."""
    from graphworld import PrefixTree
    t = LatentStrategyTeacher.route_copying(np.log([0.25] * 4), np.array([0, 0, 1, 1]), 0.1)
    log_D, tree = np.log([0.5, 0.0, 0.5, 0.0]), PrefixTree.flat(4)
    assert flat_equals_general(t, log_D, tree)
    original = teachers_mod._StrategyNodes._flat

    def wrong(self, teacher, tree, K):
        original(self, teacher, tree, K)
        self.owner[0], self.mixed, self.mixed_log_p = 0, np.zeros(0, np.int64), np.full((0, K), -np.inf)
    monkeypatch.setattr(teachers_mod._StrategyNodes, "_flat", wrong)
    assert not flat_equals_general(t, log_D, tree)


@given(st.lists(st.integers(0, 50), min_size=1, max_size=40) | st.lists(st.integers(-5, 10**9), min_size=1, max_size=10))
def test_dense_labels_rank_like_unique(labels):
    labels = np.array(labels)
    assert np.array_equal(teachers_mod._dense_labels(labels), np.unique(labels, return_inverse=True)[1].reshape(-1))


def previous_disjoint_expected_log(t, log_D, tree):
    """Route-copying E_D log T before the per-strategy form (commit 80e4de9): log-space mixtures per node."""
    nodes = teachers_mod._strategy_nodes(t, tree)
    base = tree.prefix_logsumexp(t.log_base)
    lw = t._strategy_demo_mass(log_D)
    d, present = teachers_mod.prob_of(lw), np.isfinite(lw)
    off = safe_log(t.eps) + base
    own = nodes.owner
    z = np.maximum(own, 0)
    on = teachers_mod._mix(nodes.own_log_p, 1 - t.eps, base, t.eps)
    d_own = np.where(own >= 0, d[z], 0.0)
    n_other = present.sum() - np.where(own >= 0, present[z], False)
    out = teachers_mod._weighted(d_own, on, (own >= 0) & present[z]) + teachers_mod._weighted(1.0 - d_own, off, n_other > 0)
    if len(nodes.mixed):
        rows = teachers_mod._mix(nodes.mixed_log_p, 1 - t.eps, base[nodes.mixed][:, None], t.eps)
        out[nodes.mixed] = teachers_mod._weighted(d[None, :], rows, present[None, :]).sum(axis=1)
    return out


def per_strategy_form_is_previous(inst, tol=1e-12) -> bool:
    a = expected_log_teacher(inst.teacher, inst.log_demos, inst.tree)
    b = previous_disjoint_expected_log(inst.teacher, inst.log_demos, inst.tree)
    m = np.isfinite(b)
    return bool(np.array_equal(np.isfinite(a), m) and np.all(np.abs(a[m] - b[m]) <= tol * np.maximum(1, np.abs(b[m]))))


@given(st.one_of(extreme_instances(kinds=("route_copying",)), route_copying_instances(all_correct=False),
                 graph_instances(teacher={"kind": "route_copying", "eps": 0.1}).map(lambda pair: pair[0])))
def test_route_copying_per_strategy_form_equals_the_previous_implementation(inst):
    assert per_strategy_form_is_previous(inst)


def test_sabotage_per_strategy_form_without_the_outside_term_is_caught(monkeypatch):
    """Dropping log eps for demonstrations outside the strategy (as if T(h | y') = T(h | z) for all y')."""
    t = LatentStrategyTeacher.route_copying(np.log([0.25] * 4), np.array([0, 0, 1, 1]), 0.1)
    from graphworld import PrefixTree
    from pcmi.instance import Instance
    inst = Instance(t.log_base, np.ones(4, int), t, np.log([0.5, 0.0, 0.5, 0.0]), tree=PrefixTree.flat(4))
    assert per_strategy_form_is_previous(inst)
    right = LatentStrategyTeacher.expected_log

    def wrong(self, log_D, tree):  # T(h | y') = (1−eps)P_z(h) + eps π0(h) even for y' outside z
        out = right(self, log_D, tree)
        owned = teachers_mod._strategy_nodes(self, tree).owner >= 0
        base = tree.prefix_logsumexp(self.log_base)
        A = np.logaddexp(np.log1p(-self.eps) - self.log_w, np.log(self.eps))
        out[owned] = base[owned] + A[teachers_mod._strategy_nodes(self, tree).owner[owned]]
        return out
    monkeypatch.setattr(LatentStrategyTeacher, "expected_log", wrong)
    assert not per_strategy_form_is_previous(inst)
