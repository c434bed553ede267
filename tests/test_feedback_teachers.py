"""pcmi.feedback: feedback teachers computed exactly, SDPO's mixed teacher, P10.

Independent routes: teacher rows rebuilt here from the defining formula with plain loops in
probability space; the optima recomputed through a KernelTeacher holding one such row per
demonstration (no feedback classes, its own prefix sums) and by scipy's minimizer; the mixed
teacher's E_D log T by a double sum over (demonstration, failure) pairs with the posterior
q(z|y') = w_z P_z(y')/π0(y') written out. Sabotage: a teacher normalizing by π0 of the whole
set, one forgetting eps, and a tilting optimum must make check_p10 fail."""
import re
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from graphworld import EdgePolicy, Task, enumerate_rollouts, multi_route_dag
from graphworld.enumeration import PrefixTree
from graphworld.feedback import SloppyPolicy
from pcmi.distributions import condition, log_normalize, logsumexp
from pcmi.dynamics import forward_kl_rounds, rl_rounds, sdsd_rounds
from pcmi.errors import PcmiInputError
from pcmi.propositions import check_p10
from pcmi.feedback import (METHODS, DemoFeedbackTeacher, FeedbackTeacher, explicit_feedback_instance,
                           failure_demos, feedback_comparison, feedback_instance, feedback_pcmi, feedback_rounds,
                           independent_feedback_rows, p10_demo_contrast, p10_graph_instance, p10_instance,
                           p10_synthetic_instance)
from pcmi.instance import Instance
from pcmi.metrics import policy_metrics, ratio_distortion
from pcmi.policies import forward_kl_optimum, sdsd_optimum, sdsd_token_optimum
from pcmi.propositions import minimize_reverse_kl
from pcmi.scores import expected_pcmi
from pcmi.teachers import KernelTeacher, LatentStrategyTeacher, expected_log_teacher
from pcmi.testing import eps_closed, eps_open, log_distributions

few = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
fewer = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# strategies -------------------------------------------------------------------------------------
@st.composite
def feedback_parts(draw, premise: bool = True, eps=eps_closed, zeros: bool = True):
    """(log π0, reward, compat (F, n), feedback_index, eps): rollout 0 correct, rollout n−1 failing,
    both with positive mass; with `premise`, every correct rollout is compatible with every class,
    and each failure is incompatible with its own class."""
    n = draw(st.integers(2, 7))
    lb = draw(log_distributions(n=n))
    if zeros and n > 2 and draw(st.booleans()):
        dead = np.array(draw(st.lists(st.booleans(), min_size=n - 2, max_size=n - 2)))
        lb = np.r_[lb[0], np.where(dead, -np.inf, lb[1:-1]), lb[-1]]
        lb = lb - logsumexp(lb)
    r = np.r_[1, draw(st.lists(st.integers(0, 1), min_size=n - 2, max_size=n - 2)), 0].astype(np.int64)
    fails = np.flatnonzero(r == 0)
    F = draw(st.integers(1, len(fails)))
    index = np.full(n, -1, dtype=np.int64)
    index[fails] = draw(st.lists(st.integers(0, F - 1), min_size=len(fails), max_size=len(fails)))
    compat = np.array(draw(st.lists(st.lists(st.booleans(), min_size=n, max_size=n), min_size=F, max_size=F)))
    if premise:
        compat[:, r == 1] = True
        compat[index[fails], fails] = False
    else:
        compat[:, 0] = True  # π0(c_f) > 0 for every class
    return lb, r, compat, index, draw(eps)


def formula_rows(lb, compat, index, eps) -> np.ndarray:
    """Row j = T(· | f(y_j)) from the definition, by loops (row π0 for a rollout without feedback)."""
    b = np.exp(lb)
    n = len(b)
    rows = np.zeros((n, n))
    for j in range(n):
        if index[j] < 0:
            rows[j] = b
            continue
        c = compat[index[j]]
        m = sum(b[y] for y in range(n) if c[y])
        for y in range(n):
            rows[j, y] = (1 - eps) * b[y] * c[y] / m + eps * b[y]
    with np.errstate(divide="ignore"):
        return np.log(rows)


def kernel_twin(inst, lb, compat, index, eps) -> Instance:
    return Instance(inst.log_base, inst.reward, KernelTeacher(formula_rows(lb, compat, index, eps)), inst.log_demos,
                    route=inst.route, tree=inst.tree)


def small_rollouts(seed: int, slip: float, stop):
    """Unpooled Y(x) (≤ ~150 rollouts) with every feedback kind possible."""
    rng = np.random.default_rng(seed)
    for _ in range(50):
        n = int(rng.integers(3, 5))
        g = nx.DiGraph(nx.gnp_random_graph(n, 0.5, seed=int(rng.integers(1 << 30)), directed=True))
        for u, v in g.edges:
            g.edges[u, v]["pref"] = float(rng.normal())
        if not nx.has_path(g, 0, n - 1):
            continue
        task = Task(g, 0, n - 1, nx.shortest_path_length(g, 0, n - 1) + int(rng.integers(0, 2)))
        ro = enumerate_rollouts(task, SloppyPolicy(EdgePolicy(stop_pref=stop), slip), pool_failures=False)
        ok = ro.reward == 1
        if ok.any() and (~ok).any() and len(ro) <= 150:
            return ro
    g = multi_route_dag(2, 1, 2, seed=seed, n_sources=1)
    s, t = g.graph["prompts"][0]
    return enumerate_rollouts(Task(g, s, t, 3), SloppyPolicy(EdgePolicy(stop_pref=0.0), 0.05), pool_failures=False)


graph_rollouts = st.builds(small_rollouts, st.integers(0, 10**6), st.sampled_from([0.0, 0.05, 0.3]),
                           st.one_of(st.none(), st.floats(-2, 2)))


# rows, normalization, PCMI -----------------------------------------------------------------------
@given(feedback_parts(premise=False))
@few
def test_rows_follow_the_formula_and_normalize(parts):
    lb, r, compat, index, eps = parts
    t = FeedbackTeacher(lb, compat, eps, index)
    rows = t.log_rows(np.arange(len(lb)))
    np.testing.assert_allclose(np.exp(rows), np.exp(formula_rows(lb, compat, index, eps)), atol=1e-13)
    np.testing.assert_allclose(np.exp(logsumexp(rows, axis=1)), 1.0, atol=1e-12)
    np.testing.assert_allclose(np.exp(independent_feedback_rows(t)[index[index >= 0]]),
                               np.exp(rows[index >= 0]), atol=1e-13)


@given(graph_rollouts, eps_closed)
@fewer
def test_node_rows_are_prefix_sums_of_leaf_rows(ro, eps):
    """log T(h | f) on each prefix h = log Σ of the formula's leaf rows below h (leaves walked up)."""
    inst = feedback_instance(ro, eps)
    t, tree = inst.teacher, inst.tree
    first = {f: j for j, f in reversed(list(enumerate(t.index))) if f >= 0}
    leaf = formula_rows(inst.log_base, t.compat, t.index, eps)[[first[f] for f in range(t.n_classes)]]
    ref = np.zeros((t.n_classes, tree.n_nodes))
    for i, c in enumerate(tree.leaf_node):
        while c >= 0:
            ref[:, c] += np.exp(leaf[:, i])
            c = tree.parent[c]
    got = np.concatenate([rows for _, rows in t.demo_classes(np.zeros(t.n) - np.log(t.n), tree)])
    classes = [f for f in range(t.n_classes + 1) if f == t.n_classes or f in first]
    assert len(got) == len(classes)
    np.testing.assert_allclose(np.exp(got[:-1]), ref, atol=1e-12)  # the empty class (successes) comes last
    np.testing.assert_allclose(np.exp(got[-1]), np.exp(tree.prefix_logsumexp(inst.log_base)), atol=1e-12)
    assert np.all(np.abs(got[:, 0]) < 1e-12)  # each row sums to 1


@given(feedback_parts(premise=True, eps=eps_open))
@few
def test_feedback_pcmi_closed_form(parts):
    lb, r, compat, index, eps = parts
    t = FeedbackTeacher(lb, compat, eps, index)
    M = feedback_pcmi(t)
    mass = np.array([np.exp(lb)[c].sum() for c in compat])
    expect = np.log((1 - eps) * compat / mass[:, None] + eps)
    alive = np.isfinite(lb)
    np.testing.assert_allclose(M[:, alive], expect[:, alive], rtol=1e-12, atol=1e-12)
    assert np.all(np.isneginf(M[:, ~alive]))
    # expected PCMI on the correct set: the P10 constant
    inst = explicit_feedback_instance(np.exp(lb), r, compat, index, eps)
    s = expected_pcmi(inst)
    ok = (r == 1) & alive
    assert np.ptp(s[ok]) < 1e-9 * (1 + np.abs(lb[alive]).max())
    assert abs(s[ok][0] - check_p10(inst).details["constant_pcmi"]) < 1e-9 * (1 + np.abs(lb[alive]).max())


# optima against independent routes --------------------------------------------------------------
@given(feedback_parts(premise=True))
@few
def test_optima_equal_the_kernel_twin_and_scipy(parts):
    lb, r, compat, index, eps = parts
    inst = explicit_feedback_instance(np.exp(lb), r, compat, index, eps)
    twin = kernel_twin(inst, lb, compat, index, eps)
    for opt in (sdsd_optimum, forward_kl_optimum, sdsd_token_optimum):
        np.testing.assert_allclose(np.exp(opt(inst)), np.exp(opt(twin)), atol=1e-12)
    D = np.exp(inst.log_demos)
    rows = formula_rows(lb, compat, index, eps)
    np.testing.assert_allclose(np.exp(sdsd_optimum(inst)), np.exp(minimize_reverse_kl(D, rows)), atol=1e-7)


@given(graph_rollouts, eps_closed)
@fewer
def test_graph_optima_equal_the_kernel_twin(ro, eps):
    inst = feedback_instance(ro, eps)
    t = inst.teacher
    twin = kernel_twin(inst, inst.log_base, t.compat, t.index, eps)
    for opt in (sdsd_optimum, forward_kl_optimum, sdsd_token_optimum):
        np.testing.assert_allclose(np.exp(opt(inst)), np.exp(opt(twin)), atol=1e-11)
    m = policy_metrics(sdsd_optimum(inst), inst.log_base, inst.reward, route=inst.route,
                       blocked=np.zeros(inst.n, bool))
    assert np.isfinite(m["success"]) and m["ratio_distortion"] < 1e-9 * (1 + np.abs(inst.log_base).max())


@given(feedback_parts(premise=True))
@few
def test_extremes_eps(parts):
    lb, r, compat, index, _ = parts
    one = explicit_feedback_instance(np.exp(lb), r, compat, index, 1.0)
    np.testing.assert_allclose(np.exp(sdsd_optimum(one)), np.exp(lb), atol=1e-12)
    np.testing.assert_allclose(np.exp(forward_kl_optimum(one)), np.exp(lb), atol=1e-12)
    zero = explicit_feedback_instance(np.exp(lb), r, compat, index, 0.0)
    # every failure with mass is ruled out by its own feedback, which D covers: π_SD = π0(·|r=1)
    np.testing.assert_allclose(np.exp(sdsd_optimum(zero)), np.exp(condition(lb, r == 1)), atol=1e-12)


def test_one_correct_rollout_and_zero_probability_rollouts():
    base = [0.5, 0.0, 0.3, 0.2]
    inst = explicit_feedback_instance(base, [1, 1, 0, 0], [[1, 1, 0, 1], [1, 1, 1, 0]], [-1, -1, 0, 1], 0.2)
    assert check_p10(inst).holds
    lp = sdsd_optimum(inst)
    assert np.isneginf(lp[1])
    solo = explicit_feedback_instance([0.6, 0.4], [1, 0], [[1, 0]], [-1, 0], 0.3)
    res = check_p10(solo)
    assert res.holds and res.details["ratio_distortion"] == 0.0
    # closed form: π_SD(y) ∝ π0(y)((1−eps)c(y)/π0(c) + eps)
    p = np.array([0.6 * (0.7 / 0.6 + 0.3), 0.4 * 0.3])
    np.testing.assert_allclose(np.exp(sdsd_optimum(solo)), p / p.sum(), atol=1e-14)


# P10 ---------------------------------------------------------------------------------------------
@given(feedback_parts(premise=True))
@few
def test_p10_holds_on_filtering_instances(parts):
    lb, r, compat, index, eps = parts
    res = check_p10(explicit_feedback_instance(np.exp(lb), r, compat, index, eps))
    assert res.holds, res


@given(st.integers(0, 2**32 - 1))
@fewer
def test_p10_holds_on_generated_instances(seed):
    res = check_p10(p10_instance(np.random.default_rng(seed)))
    assert res.holds, res


@given(feedback_parts(premise=False, eps=st.floats(0.05, 0.95)))
@few
def test_p10_refuses_instances_outside_its_premise(parts):
    lb, r, compat, index, eps = parts
    inst = explicit_feedback_instance(np.exp(lb), r, compat, index, eps)
    D = np.exp(inst.log_demos)
    used = np.unique(index[(D > 0) & (index >= 0)])
    ok = (r == 1) & np.isfinite(lb)
    if compat[np.ix_(used, ok)].all():
        assert check_p10(inst).holds
        return
    with pytest.raises(PcmiInputError, match="compatible with every feedback") as e:
        check_p10(inst)
    assert "\n" not in str(e.value)


def test_p10_premise_is_needed():
    """A feedback that rules out one of two correct rollouts tilts their ratio."""
    inst = explicit_feedback_instance([0.4, 0.4, 0.2], [1, 1, 0], [[1, 0, 0]], [-1, -1, 0], 0.1)
    assert ratio_distortion(sdsd_optimum(inst), inst.log_base, inst.reward) > 1.0
    with pytest.raises(PcmiInputError, match="rules out correct rollout 1"):
        check_p10(inst)


def test_p10_refuses_other_teachers():
    lb = np.log([0.5, 0.3, 0.2])
    t = LatentStrategyTeacher.route_copying(lb, np.array([0, 1, 1]), 0.1)
    with pytest.raises(PcmiInputError, match="FeedbackTeacher"):
        check_p10(Instance(lb, np.array([1, 1, 0]), t, condition(lb, np.array([1, 1, 0]) == 1)))


class WholeSetTeacher(FeedbackTeacher):
    """Sabotage: normalizes the filtered part by π0 of the whole set (1) instead of π0(c_f)."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.log_mass = np.zeros_like(self.log_mass)


class NoEpsTeacher(FeedbackTeacher):
    """Sabotage: forgets the eps·π0 part (the eps = 0 teacher under the eps it reports)."""

    def _node_rows(self, classes, tree):
        eps, self.eps = self.eps, 0.0
        try:
            return super()._node_rows(classes, tree)
        finally:
            self.eps = eps


def _used_masses(inst):
    t = inst.teacher
    D = np.exp(inst.log_demos)
    used = np.unique(t.index[(D > 0) & (t.index >= 0)])
    return np.array([np.exp(inst.log_base)[t.compat[f]].sum() for f in used])


@pytest.mark.parametrize("bad", [WholeSetTeacher, NoEpsTeacher])
@given(parts=feedback_parts(premise=True, eps=st.floats(0.05, 0.95), zeros=False))
@few
def test_sabotaged_teachers_fail_p10(bad, parts):
    lb, r, compat, index, eps = parts
    inst = explicit_feedback_instance(np.exp(lb), r, compat, index, eps)
    assume(np.any(1 - _used_masses(inst) > 1e-4))  # some feedback rules out real mass: the error shows
    assert check_p10(inst).holds
    wrong = inst.with_teacher(bad(lb, compat, eps, index))
    res = check_p10(wrong)
    assert not res.holds
    assert res.details["ratio_distortion"] < 1e-9 * (1 + np.abs(lb).max())  # the ratios alone cannot tell


@given(st.integers(0, 2**32 - 1))
@fewer
def test_wrong_optimum_fails_p10(seed):
    inst = p10_synthetic_instance(np.random.default_rng(seed))
    ok = np.flatnonzero((inst.reward == 1) & np.isfinite(inst.log_base))
    assume(len(ok) >= 2)

    def tilted(i):  # a demonstration-like tilt of one correct rollout
        lp = sdsd_optimum(i).copy()
        lp[ok[0]] += 0.5
        return log_normalize(lp)

    def forward(i):
        return forward_kl_optimum(i)

    assert check_p10(inst).holds
    assert not check_p10(inst, sdsd=tilted).holds
    p_sd, p_fw = np.exp(sdsd_optimum(inst)), np.exp(forward_kl_optimum(inst))
    if np.abs(p_sd - p_fw).max() > 1e-8:
        assert not check_p10(inst, sdsd=forward).holds


@st.composite
def contrast_instances(draw):
    """Correct strategies z = 0..K−1 of distinct weights, failures labelled −1, feedback filtering."""
    K = draw(st.integers(2, 3))
    sizes = draw(st.lists(st.integers(1, 2), min_size=K, max_size=K))
    nf = draw(st.integers(1, 3))
    route = np.r_[np.repeat(np.arange(K), sizes), np.full(nf, -1)]
    n = len(route)
    lb = draw(log_distributions(n=n))
    r = (route >= 0).astype(np.int64)
    index = np.where(route < 0, np.cumsum(route < 0) - 1, -1)
    compat = np.ones((nf, n), bool)
    compat[np.arange(nf), np.flatnonzero(route < 0)] = False
    eps = draw(st.floats(0.01, 0.99))
    return Instance(lb, r, FeedbackTeacher(lb, compat, eps, index), failure_demos(lb, r), route=route)


@given(contrast_instances())
@few
def test_demonstration_teacher_tilts_where_feedback_does_not(inst):
    b, eps = np.exp(inst.log_base), inst.teacher.eps
    zs = np.unique(inst.route[inst.reward == 1])
    w = np.array([b[inst.route == z].sum() for z in zs])
    d = w / w.sum()
    assume(np.ptp(d) > 1e-3)
    out = p10_demo_contrast(inst)
    # route-copying closed form: E_D PCMI(y) = log eps + d_z log(1 + (1−eps)/(eps w_z)) for y in z
    s = np.log(eps) + d * np.log1p((1 - eps) / (eps * w))
    assert out["feedback_distortion"] < 1e-9 * (1 + np.abs(inst.log_base).max())
    assert out["demonstration_distortion"] > 0
    assert abs(out["demonstration_distortion"] - np.ptp(s)) < 1e-8 * (1 + np.abs(s).max())


# the mixed teacher -------------------------------------------------------------------------------
@st.composite
def mixed_parts(draw, eps=eps_closed):
    """A latent teacher (disjoint or overlapping strategies) plus feedback classes over failures."""
    lb, r, compat, index, _ = draw(feedback_parts(premise=True, zeros=False))
    n = len(lb)
    K = draw(st.integers(1, 3))
    if draw(st.booleans()):  # route-copying: labels
        labels = np.array(draw(st.lists(st.integers(0, K - 1), min_size=n, max_size=n)))
        latent = LatentStrategyTeacher.route_copying(lb, labels, draw(eps))
    else:
        log_P = np.stack([draw(log_distributions(n=n)) for _ in range(K)])
        latent = LatentStrategyTeacher(draw(log_distributions(n=K)) if K > 1 else np.zeros(1), log_P, draw(eps))
    return latent, r, compat, index


def brute_mixed_expected_log(latent, compat, index, log_D) -> np.ndarray:
    """Σ_{j, k} D(j | no feedback) D(k | feedback) log T(y | y'_j, f(y_k)) by loops (probabilities)."""
    w, P, eps = np.exp(latent.log_w), np.exp(latent.log_P), latent.eps
    b = w @ P
    D = np.exp(log_D)
    demos = [j for j in range(len(b)) if index[j] < 0 and D[j] > 0]
    fails = [k for k in range(len(b)) if index[k] >= 0 and D[k] > 0]
    Ds = np.array([D[j] for j in demos]) / sum(D[j] for j in demos) if demos else np.ones(1)
    Df = np.array([D[k] for k in fails]) / sum(D[k] for k in fails) if fails else np.ones(1)
    total = np.zeros(len(b))
    for a, j in enumerate(demos or [None]):
        q = w if j is None else w * P[:, j] / b[j]
        for c_, k in enumerate(fails or [None]):
            c = np.ones(len(b)) if k is None else compat[index[k]].astype(float)
            row = (1 - eps) * (q @ (P * c)) / (q @ (P * c).sum(axis=1)) + eps * b
            with np.errstate(divide="ignore"):
                total = total + Ds[a] * Df[c_] * np.log(row)
    return total


@given(mixed_parts())
@few
def test_mixed_teacher_matches_the_pair_double_sum(parts):
    latent, r, compat, index = parts
    t = DemoFeedbackTeacher(latent, compat, index)
    tree = PrefixTree.flat(t.n)
    for log_D in (latent.log_base, condition(latent.log_base, r == 1), condition(latent.log_base, r == 0)):
        got = expected_log_teacher(t, log_D, tree)[tree.leaf_node]
        ref = brute_mixed_expected_log(latent, compat, index, log_D)
        np.testing.assert_allclose(np.exp(got), np.exp(ref), rtol=1e-10, atol=1e-300)
        for log_w, rows in t.demo_classes(log_D, tree):
            assert np.all(np.abs(rows[:, 0]) < 1e-12)  # normalized
        assert abs(np.exp(logsumexp(np.concatenate([lw for lw, _ in t.demo_classes(log_D, tree)]))) - 1) < 1e-12


@given(mixed_parts())
@few
def test_mixed_teacher_limits(parts):
    latent, r, compat, index = parts
    tree = PrefixTree.flat(latent.n)
    t = DemoFeedbackTeacher(latent, compat, index)
    lb = latent.log_base
    succ, fail = condition(lb, r == 1), condition(lb, r == 0)
    # no feedback: the demonstration teacher; no demonstration: the feedback teacher
    np.testing.assert_allclose(expected_log_teacher(t, succ, tree), expected_log_teacher(latent, succ, tree),
                               rtol=1e-11, atol=1e-11)
    fb = FeedbackTeacher(lb, compat, latent.eps, index)
    np.testing.assert_allclose(expected_log_teacher(t, fail, tree), expected_log_teacher(fb, fail, tree),
                               rtol=1e-11, atol=1e-11)
    # eps = 1: π0
    t1 = DemoFeedbackTeacher(LatentStrategyTeacher(latent.log_w, latent.log_P, 1.0), compat, index)
    np.testing.assert_allclose(np.exp(sdsd_optimum(Instance(lb, r, t1, lb))), np.exp(lb), atol=1e-12)
    # a single strategy carries no information in a demonstration: mixed = feedback teacher
    one = LatentStrategyTeacher(np.zeros(1), lb[None, :], latent.eps)
    np.testing.assert_allclose(expected_log_teacher(DemoFeedbackTeacher(one, compat, index), lb, tree),
                               expected_log_teacher(fb, fail, tree), rtol=1e-11, atol=1e-11)


class PriorNormalizedMixed(DemoFeedbackTeacher):
    """Sabotage: normalizes the filtered demonstration posterior by π0(c_f) instead of Σ_z q_z P_z(c_f)."""

    def _pair_rows(self, log_q, nodes, base_nodes):
        inner = logsumexp(log_q[:, :, None] + nodes[None, :, :], axis=1)
        log_c = logsumexp(self.latent.log_w + nodes[:, 0])  # log π0(c_f)
        return np.logaddexp(np.log1p(-self.eps) + inner - log_c, np.log(self.eps) + base_nodes[None, :])


def test_sabotaged_mixed_teacher_fails_the_double_sum():
    """Two routes, each with a correct and a failing rollout; feedback rules out route 0's failure."""
    lb = np.log([0.3, 0.2, 0.3, 0.2])
    latent = LatentStrategyTeacher.route_copying(lb, np.array([0, 0, 1, 1]), 0.1)
    compat, index, r = np.array([[1, 0, 1, 1]], bool), np.array([-1, 0, -1, 0]), np.array([1, 0, 1, 0])
    tree = PrefixTree.flat(4)
    ref = brute_mixed_expected_log(latent, compat, index, lb)
    good = expected_log_teacher(DemoFeedbackTeacher(latent, compat, index), lb, tree)[1:]
    bad = expected_log_teacher(PriorNormalizedMixed(latent, compat, index), lb, tree)[1:]
    np.testing.assert_allclose(good, ref, rtol=1e-12)
    assert np.abs(bad - ref).max() > 1e-3


@given(mixed_parts(eps=st.just(0.0)))
@few
def test_mixed_pcmi_is_the_sum_of_the_two_pcmis_at_eps_zero(parts):
    """Product of evidence: log T(y|y',f) − log π0(y) = PCMI(y; y') + PCMI(y; f) + const on c_f."""
    latent, r, compat, index = parts
    t = DemoFeedbackTeacher(latent, compat, index)
    fb = FeedbackTeacher(latent.log_base, compat, 0.0, index)
    lb = latent.log_base
    j = int(np.flatnonzero((index < 0) & np.isfinite(lb))[0])
    f = int(index[index >= 0][0])
    mix = t.pair_log_rows([j], [f])[0] - lb
    demo = latent.log_rows([j])[0] - lb
    fbp = feedback_pcmi(fb)[f]
    on = compat[f] & np.isfinite(mix) & np.isfinite(demo)
    assume(on.sum() >= 2)
    gap = mix[on] - demo[on] - fbp[on]
    assert np.ptp(gap) < 1e-9 * (1 + np.abs(lb[np.isfinite(lb)]).max())
    assert np.all(np.isneginf(mix[~compat[f] & np.isfinite(lb)]))


def test_mixed_teacher_refuses_single_rollout_rows_and_empty_pairs():
    lb = np.log([0.5, 0.3, 0.2])
    latent = LatentStrategyTeacher.route_copying(lb, np.array([0, 1, 1]), 0.1)
    t = DemoFeedbackTeacher(latent, [[0, 1, 0]], [-1, -1, 0])  # rules out route 0 entirely
    with pytest.raises(PcmiInputError, match="pairs"):
        t.log_rows([0])
    with pytest.raises(PcmiInputError, match="undefined") as e:
        expected_log_teacher(t, lb, PrefixTree.flat(3))
    assert "\n" not in str(e.value)
    np.testing.assert_allclose(np.exp(t.pair_log_rows([1], [0])[0]), [0.1 * 0.5, 0.9 + 0.1 * 0.3, 0.1 * 0.2])


# instances, dynamics, metrics ------------------------------------------------------------------
def test_all_correct_rollouts_have_no_feedback_demonstrations():
    g = multi_route_dag(2, 1, 2, seed=0, n_sources=1)
    s, t = g.graph["prompts"][0]
    ro = enumerate_rollouts(Task(g, s, t, 3), EdgePolicy(), pool_failures=False)
    assert np.all(ro.reward == 1)
    with pytest.raises(PcmiInputError, match="no failing rollout") as e:
        feedback_instance(ro)
    assert "\n" not in str(e.value)


def test_pooled_rollouts_are_refused():
    g = multi_route_dag(2, 1, 2, seed=0, n_sources=1, n_targets=2)
    s, t = g.graph["prompts"][0]
    ro = enumerate_rollouts(Task(g, s, t, 3), EdgePolicy(stop_pref=0.0), pool_failures=True)
    with pytest.raises(PcmiInputError, match="pool_failures=False") as e:
        feedback_instance(ro)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("args,needle", [
    (([0.5, 0.5], [[1, 0, 1]], 0.1, [-1, 0]), "matrix"),
    (([0.5, 0.5], [[1, 2]], 0.1, [-1, 0]), "0 or 1"),
    (([0.5, 0.5], [[1, 0]], 0.1, [-1, 1]), "feedback_index"),
    (([0.5, 0.5], [[1, 0]], 0.1, [-1]), "feedback_index"),
    (([0.5, 0.5], [[1, 0]], 1.5, [-1, 0]), "eps"),
    (([0.5, 0.5], [[1, 0]], float("nan"), [-1, 0]), "eps"),
    (([0.5, 0.5], [[1, 0]], 0.1, None), "give feedback_index"),
    (([0.5, 0.5], [[1, 0]], 0.1, [-1, 0.5]), "feedback_index"),
    (([0.5, 0.5], [[1, 0], [1]], 0.1, [-1, 0]), "rows of one length"),
])
def test_bad_teacher_input(args, needle):
    base, compat, eps, index = args
    with pytest.raises(PcmiInputError, match=needle) as e:
        FeedbackTeacher(np.log(base), compat, eps, index)
    assert "\n" not in str(e.value)


def test_feedback_with_no_compatible_mass_is_refused_unless_eps_is_one():
    lb = np.array([-np.inf, np.log(0.6), np.log(0.4)])
    with pytest.raises(PcmiInputError, match="π0\\(c_f\\) = 0"):
        sdsd_optimum(Instance(lb, np.array([1, 0, 0]), FeedbackTeacher(lb, [[1, 0, 0]], 0.5, [-1, 0, 0]),
                              np.array([-np.inf, 0.0, -np.inf])))
    inst = Instance(lb, np.array([1, 0, 0]), FeedbackTeacher(lb, [[1, 0, 0]], 1.0, [-1, 0, 0]),
                    np.array([-np.inf, 0.0, -np.inf]))
    np.testing.assert_allclose(np.exp(sdsd_optimum(inst)), np.exp(lb))


def _closed_form_round(log_pi, reward, compat, index, eps):
    """π'(y) ∝ π(y)·exp(Σ_f D(f) log((1−eps)c_f(y)/π(c_f) + eps)), D = π(·|r=0), by numpy loops."""
    p = np.exp(log_pi)
    fail = reward == 0
    if p[fail].sum() == 0:
        return p
    D = np.where(fail, p, 0) / p[fail].sum()
    e = np.zeros(len(p))
    for f in range(len(compat)):
        Df = D[index == f].sum()
        if Df > 0:
            with np.errstate(divide="ignore"):
                e = e + Df * np.log((1 - eps) * compat[f] / p[compat[f]].sum() + eps)
    q = p * np.exp(e - e[np.isfinite(e)].max())
    return q / q.sum()


@given(graph_rollouts, st.floats(0.0, 1.0))
@fewer
def test_feedback_rounds_follow_the_closed_form_and_keep_ratios(ro, eps):
    inst = feedback_instance(ro, eps)
    t = inst.teacher
    rounds = feedback_rounds(inst, 4)
    p = np.exp(inst.log_base)
    scale = 1 + np.abs(inst.log_base[np.isfinite(inst.log_base)]).max()
    for prev, cur in zip(rounds[:-1], rounds[1:]):
        p = _closed_form_round(prev.log_pi, inst.reward, t.compat, t.index, eps)
        np.testing.assert_allclose(np.exp(cur.log_pi), p, atol=1e-10)
        assert ratio_distortion(cur.log_pi, inst.log_base, inst.reward) < 1e-8 * scale  # P10, every round
        assert cur.success >= prev.success - 1e-12  # failures are never tilted above successes
        assert abs(cur.strategy_mass_entropy - rounds[0].strategy_mass_entropy) < 1e-8


@given(graph_rollouts)
@fewer
def test_existing_dynamics_run_on_feedback_instances(ro):
    inst = feedback_instance(ro, 0.2)
    sd = sdsd_rounds(inst, 3)
    np.testing.assert_allclose(np.exp(sd[1].log_pi), np.exp(sdsd_optimum(inst)), atol=1e-13)
    # from round 2 on, D = π_k(·|r=1) carries the empty feedback: T = π_k, nothing moves (documented)
    np.testing.assert_allclose(np.exp(sd[3].log_pi), np.exp(sd[1].log_pi), atol=1e-12)
    fw = forward_kl_rounds(inst, 2)
    np.testing.assert_allclose(np.exp(fw[1].log_pi), np.exp(forward_kl_optimum(inst)), atol=1e-13)
    assert len(rl_rounds(inst, 2, 1.0)) == 3
    assert len(sdsd_rounds(inst, 2, level="token")) == 3


def test_feedback_rounds_refuse_teachers_without_a_demo_law():
    lb = np.log([0.5, 0.5])
    inst = Instance(lb, np.array([1, 0]), KernelTeacher(np.stack([lb, lb])), np.array([0.0, -np.inf]))
    with pytest.raises(PcmiInputError, match="next_demos"):
        feedback_rounds(inst, 2)
    with pytest.raises(PcmiInputError, match="n_rounds"):
        feedback_rounds(feedback_instance(small_rollouts(0, 0.1, 0.0)), -1)


def test_p10_graph_instances_cover_several_feedback_kinds():
    kinds = set()
    rng = np.random.default_rng(1)
    for _ in range(12):
        kinds |= {type(f).__name__ for f in p10_graph_instance(rng).teacher.feedbacks}
    assert {"InvalidMove", "WrongEndpoint"} <= kinds and len(kinds) >= 3


# where SDPO's mixed teacher falls: the numbers quoted in docs/feedback.md -------------------------
@pytest.fixture(scope="module")
def comparison():
    return feedback_comparison()


def _doc_rows():
    text = (Path(__file__).resolve().parents[1] / "docs" / "feedback.md").read_text()
    num = r" \| ([\d.]+)"
    rows = re.findall(r"^\| (\w+) \| (\w+) \| (one round|round \d+)" + num * 4 + r" \|$", text, flags=re.M)
    assert len(rows) >= 28
    return rows


def test_docs_quote_the_comparison(comparison):
    for setting, method, when, *vals in _doc_rows():
        d = comparison["settings"][setting]
        if method == "base":
            m = d["base"]
        elif method == "feedback_sdsd_token":
            m = d["feedback_token_level"]
        else:
            m = d["one_round"][method] if when == "one round" else d["rounds"][method][int(when.split()[1])]
        got = [m["success"], m["strategy_mass_entropy"], m["ood_success"], m["ratio_distortion"]]
        for g, v in zip(got, vals):
            assert abs(g - float(v)) <= 0.6 * 10 ** -(len(v.split(".")[1]) if "." in v else 0), (setting, method, when)


def test_comparison_shape(comparison):
    for d in comparison["settings"].values():
        base = d["base"]
        fb, rl, mixed, demo = (d["one_round"][m] for m in ("feedback_sdsd", "rl", "mixed_sdsd", "demo_sdsd"))
        assert set(d["one_round"]) == set(METHODS)
        # feedback SDSD and RL keep the strategy masses (P10, P1); demonstration and mixed SDSD tilt them
        for m in (fb, rl):
            assert abs(m["strategy_mass_entropy"] - base["strategy_mass_entropy"]) < 1e-9
        for m in (demo, mixed):
            assert m["strategy_mass_entropy"] < base["strategy_mass_entropy"] - 1e-3
        assert fb["success"] > base["success"]


def test_docs_usage_snippet_runs(capsys):
    text = (Path(__file__).resolve().parents[1] / "docs" / "feedback.md").read_text()
    exec(re.search(r"```python\n(.*?)```", text, re.S).group(1), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "stopped at 0, not the target" and out[2].startswith("True")


@given(st.integers(0, 2**32 - 1))
@fewer
def test_existing_checks_p2_p5_hold_on_feedback_instances(seed):
    from pcmi import propositions as P
    rng = np.random.default_rng(seed)
    inst = p10_synthetic_instance(rng)
    assert P.check_p2(inst).holds
    ro = small_rollouts(seed, 0.1, 0.0)
    assert P.check_p5(feedback_instance(ro, 0.3)).holds
