"""Every closed form against an independent numerical minimization of its own objective."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import minimize
from scipy.special import log_softmax, logsumexp

import pcmi
from pcmi import Instance, LatentStrategyTeacher, PcmiInputError
from pcmi.instance import demos_from_successes
from pcmi.policies import js_objective, teacher_classes_at_leaves
from pcmi.testing import (eps_open, explicit_instances, graph_instances, log_distributions, rewards)

moderate_logits = st.lists(st.floats(-8.0, 0.0), min_size=2, max_size=7)
moderate_beta = st.floats(0.05, 20.0)


def argmin_simplex(fun_grad, n):
    """Minimize f(π) over the simplex: L-BFGS on softmax logits from the uniform start.
    fun_grad(π) returns f and ∂f/∂π."""
    def f(u):
        s = np.exp(log_softmax(u))
        val, g = fun_grad(s)
        return val, s * (g - s @ g)
    res = minimize(f, np.zeros(n), jac=True, method="L-BFGS-B",
                   options={"maxiter": 100000, "ftol": 1e-300, "gtol": 1e-13, "maxcor": 50})
    return np.exp(log_softmax(res.x))


def xlogx(p):
    return np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)


def close(a, b, tol=1e-7):
    assert np.max(np.abs(np.exp(a) - b)) < tol, (np.exp(a), b)


@given(moderate_logits, moderate_beta, st.data())
def test_rl_optimum_maximizes_its_objective(logits, beta, data):
    lb = log_softmax(np.array(logits))
    r = data.draw(rewards(len(lb)))
    num = argmin_simplex(lambda s: (-(s @ r) + beta * (xlogx(s).sum() - s @ lb),
                                    -r + beta * (np.log(np.maximum(s, 1e-300)) + 1 - lb)), len(lb))
    close(pcmi.rl_optimum(lb, r, beta), num)


@given(explicit_instances())
def test_sdsd_optimum_minimizes_reverse_kl(inst):
    from pcmi.propositions import check_p2
    res = check_p2(inst)
    assert res.holds, res.details


def _moderate(inst):
    return np.all(inst.log_base > -10)


@given(explicit_instances(), moderate_beta)
def test_tempered_sdsd_maximizes_expected_pcmi_minus_kl(inst, beta):
    s = pcmi.expected_pcmi(inst)
    if not np.all(np.isfinite(s)) or not _moderate(inst) or np.ptp(s) > 30 * beta:
        return
    lb = inst.log_base
    num = argmin_simplex(lambda p: (-(p @ s) + beta * (xlogx(p).sum() - p @ lb),
                                    -s + beta * (np.log(np.maximum(p, 1e-300)) + 1 - lb)), inst.n)
    close(pcmi.sdsd_optimum(inst, beta), num)


@given(explicit_instances())
def test_forward_kl_optimum_minimizes_forward_kl(inst):
    w, log_T = teacher_classes_at_leaves(inst)
    w = w / w.sum()
    T = np.exp(log_T)
    target = w @ T  # cross-entropy weights: E_D KL(T‖π) = const − Σ_y (Σ_c w_c T_cy) log π_y
    num = argmin_simplex(lambda p: (-(target @ np.log(np.maximum(p, 1e-300))), -target / np.maximum(p, 1e-300)),
                         inst.n)
    close(pcmi.forward_kl_optimum(inst), num, 1e-6)


@given(explicit_instances())
def test_contrastive_optimum_maximizes_its_objective(inst):
    s_d = pcmi.scores.expected_log_teacher_leaves(inst)
    s_b = pcmi.scores.expected_log_teacher_leaves(inst, inst.log_base)
    sc = s_d - s_b
    if not np.all(np.isfinite(sc)) or not _moderate(inst) or np.ptp(sc) > 30:
        return
    lb = inst.log_base
    num = argmin_simplex(lambda p: (-(p @ sc) + xlogx(p).sum() - p @ lb,
                                    -sc + np.log(np.maximum(p, 1e-300)) + 1 - lb), inst.n)
    close(pcmi.contrastive_optimum(inst), num)


@given(explicit_instances(), st.sampled_from([0.1, 0.5, 0.9]))
def test_js_optimum_is_stationary_and_beats_the_alternatives(inst, alpha):
    res = pcmi.js_optimum(inst, alpha)
    assert res.kkt_residual < 1e-7
    w, log_T = teacher_classes_at_leaves(inst)
    w = w / w.sum()
    f = lambda lp: js_objective(lp, w, log_T, alpha)[0]  # noqa: E731
    rng = np.random.default_rng(0)
    for other in (pcmi.sdsd_optimum(inst), pcmi.forward_kl_optimum(inst), inst.log_base,
                  log_softmax(res.log_pi + 0.01 * rng.standard_normal(inst.n))):
        if np.all(np.isfinite(other)):
            assert res.objective <= f(other) + 1e-10


def test_js_endpoints_are_the_kl_optima():
    inst = worked_example()
    assert np.allclose(pcmi.js_optimum(inst, 1.0).log_pi, pcmi.sdsd_optimum(inst))
    assert np.allclose(pcmi.js_optimum(inst, 0.0).log_pi, pcmi.forward_kl_optimum(inst))
    near0, near1 = pcmi.js_optimum(inst, 1e-4).log_pi, pcmi.js_optimum(inst, 1 - 1e-4).log_pi
    assert np.max(np.abs(np.exp(near0) - np.exp(pcmi.forward_kl_optimum(inst)))) < 1e-3
    assert np.max(np.abs(np.exp(near1) - np.exp(pcmi.sdsd_optimum(inst)))) < 1e-3


@given(graph_instances())
def test_token_level_factorization_rebuilds_sequence_optimum(pair):
    inst, _ = pair
    a, b = pcmi.sdsd_optimum(inst), pcmi.sdsd_sequence_from_tokens(inst)
    assert np.max(np.abs(np.exp(a) - np.exp(b))) < 1e-9
    for lp in (pcmi.sdsd_token_optimum(inst), pcmi.forward_kl_token_optimum(inst)):
        assert abs(logsumexp(lp)) < 1e-9


@given(explicit_instances())
def test_flat_tree_token_level_equals_sequence_level(inst):
    assert np.allclose(np.exp(pcmi.sdsd_token_optimum(inst)), np.exp(pcmi.sdsd_optimum(inst)), atol=1e-12)
    assert np.allclose(np.exp(pcmi.forward_kl_token_optimum(inst)), np.exp(pcmi.forward_kl_optimum(inst)), atol=1e-12)


def test_token_forward_kl_differs_from_sequence_forward_kl_on_a_tree():
    """theory.md §3: Π_t E_D T(a_t|h_t,y') is not π_fwd in general (here: a copy teacher with
    failing rollouts, so that D ≠ π0; with D = π0 the fixed weights are the posterior ones)."""
    import graphworld as gw
    g = gw.multi_route_dag(2, 1, 2, seed=0, n_sources=1, n_targets=2)
    inst, _ = pcmi.graph_instance(gw.Task(g, 0, g.graph["prompts"][0][1], 3), gw.EdgePolicy(),
                                  {"kind": "copy", "lam": 0.6})
    assert pcmi.total_variation(pcmi.forward_kl_token_optimum(inst), pcmi.forward_kl_optimum(inst)) > 1e-4


def worked_example():
    lb = np.log([0.5, 0.3, 0.2])
    t = LatentStrategyTeacher.route_copying(lb, [0, 1, 2], 0.1)
    return Instance(lb, [1, 1, 0], t, demos_from_successes(lb, [1, 1, 0]), route=np.array([0, 1, 2]))


def test_worked_example_of_theory_md():
    """The numbers theory.md §3 fixes (given there to 4 digits)."""
    inst = worked_example()
    assert np.allclose(np.exp(inst.log_demos), [0.625, 0.375, 0], atol=1e-12)
    assert np.allclose(np.exp(pcmi.sdsd_optimum(inst)), [0.7098, 0.2451, 0.0451], atol=1e-4)
    assert np.allclose(np.exp(pcmi.forward_kl_optimum(inst)), [0.6125, 0.3675, 0.02], atol=1e-12)
    assert np.allclose(np.exp(pcmi.rl_limit(inst.log_base, inst.reward)), [0.625, 0.375, 0], atol=1e-12)
    odds = [r.log_pi[0] - r.log_pi[1] for r in pcmi.sdsd_rounds(inst, 3)[1:]]
    assert np.allclose(np.exp(odds), [2.90, 7.97, 41.8], rtol=2e-3)


def test_rl_limits_and_extreme_beta():
    lb, r = np.log([0.5, 0.3, 0.2]), np.array([1, 0, 1])
    assert np.allclose(np.exp(pcmi.rl_optimum(lb, r, 1e-300)), np.exp(pcmi.rl_limit(lb, r)), atol=0)
    assert np.allclose(pcmi.rl_optimum(lb, r, 1e300), lb)
    assert not np.isnan(pcmi.rl_optimum(lb, r, 5e-324)).any()


@given(log_distributions(), st.floats(0.01, 0.99), st.data())
def test_rl_beta_matching_hits_the_target(lb, frac, data):
    r = data.draw(rewards(len(lb)))
    p0 = pcmi.success(lb, r)
    if not 1e-6 < p0 < 1 - 1e-6:
        return
    p = p0 + frac * (1 - p0)
    beta = pcmi.rl_beta_for_success(p0, p)
    assert abs(pcmi.success(pcmi.rl_optimum(lb, r, beta), r) - p) < 1e-9


@pytest.mark.parametrize("beta", [0, -1, float("nan"), float("inf"), "x"])
def test_bad_beta(beta):
    with pytest.raises(PcmiInputError, match="beta"):
        pcmi.rl_optimum(np.log([0.5, 0.5]), [1, 0], beta)


def test_disjoint_bayesian_teachers_make_reverse_kl_infinite():
    lb = np.log([0.5, 0.5])
    t = LatentStrategyTeacher.route_copying(lb, [0, 1], 0.0)
    inst = Instance(lb, [1, 1], t, lb)
    with pytest.raises(PcmiInputError, match="reverse KL is infinite"):
        pcmi.sdsd_optimum(inst)


@given(eps_open)
def test_on_policy_forward_and_rl_rounds_keep_all_correct_policy(eps):
    lb = np.log([0.5, 0.2, 0.2, 0.1])
    t = LatentStrategyTeacher.route_copying(lb, [0, 0, 1, 2], eps)
    inst = Instance(lb, [1, 1, 1, 1], t, lb, route=np.array([0, 0, 1, 2]))
    for r in pcmi.forward_kl_rounds(inst, 3) + pcmi.rl_rounds(inst, 3, 0.5):
        assert np.allclose(np.exp(r.log_pi), np.exp(lb), atol=1e-12)
