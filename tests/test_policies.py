"""Every closed form against an independent numerical minimization of its own objective."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import minimize
from scipy.special import log_softmax, logsumexp

import pcmi
from pcmi import Instance, KernelTeacher, LatentStrategyTeacher, PcmiInputError
from pcmi.distributions import safe_log
from pcmi.instance import demos_from_successes
from pcmi.policies import check_beta, js_objective, teacher_classes_at_leaves
from pcmi.teachers import leaf_rows
from pcmi.testing import (eps_open, explicit_instances, extreme_instances, graph_instances, log_distributions,
                          rewards)

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


# --- issue 8: no NaN, +∞ contrastive scores, token-level limits, β continuity, JS at the edges --

def _public_optima(inst):
    return {"sdsd": lambda: pcmi.sdsd_optimum(inst), "sdsd_beta1": lambda: pcmi.sdsd_optimum(inst, 1.0),
            "sdsd_tempered": lambda: pcmi.sdsd_optimum(inst, 1e-3),
            "sdsd_token": lambda: pcmi.sdsd_token_optimum(inst),
            "sdsd_from_tokens": lambda: pcmi.sdsd_sequence_from_tokens(inst),
            "forward_kl": lambda: pcmi.forward_kl_optimum(inst),
            "forward_kl_token": lambda: pcmi.forward_kl_token_optimum(inst),
            "js": lambda: pcmi.js_optimum(inst, 0.3).log_pi,
            "contrastive": lambda: pcmi.contrastive_optimum(inst),
            "rl": lambda: pcmi.rl_optimum(inst.log_base, inst.reward, 1e-3),
            "rl_limit": lambda: pcmi.rl_limit(inst.log_base, inst.reward)}


@given(extreme_instances())
def test_every_optimum_is_a_distribution_or_a_clear_error(inst):
    """Over eps ∈ {0, 1}, zero-probability rollouts, 1e-300 masses, one/all correct, trees: never NaN."""
    for name, call in _public_optima(inst).items():
        try:
            lp = np.asarray(call())
        except PcmiInputError as e:
            assert "\n" not in str(e) and str(e)
            continue
        assert lp.shape == (inst.n,) and not np.isnan(lp).any() and not (lp == np.inf).any(), (name, lp)
        assert abs(logsumexp(lp)) < 1e-9, (name, lp)


@given(extreme_instances(), st.sampled_from([0.0, 1.0]))
def test_js_endpoint_objective_is_a_number(inst, alpha):
    try:
        res = pcmi.js_optimum(inst, alpha)
    except PcmiInputError:
        return
    assert np.isfinite(res.objective) and res.objective >= -1e-12


def _dense_expected_log_teacher(inst, log_D):
    """E_{y'∼D} log T(y|y') from the dense |Y|×|Y| matrix (a demonstration of weight 0: no term)."""
    rows = leaf_rows(inst.teacher, inst.n)
    D, present = np.exp(log_D), np.isfinite(log_D)[:, None]  # exact even if D underflows
    with np.errstate(invalid="ignore"):
        return np.where(present, np.where(np.isneginf(rows), -np.inf, D[:, None] * rows), 0.0).sum(axis=0)


@given(extreme_instances(trees=False))
def test_contrastive_optimum_against_a_dense_numpy_formula(inst):
    """s_c = E_D log T − E_B log T from the dense matrix; +∞ somewhere on supp π0 ⇒ π0(·|s_c = +∞)."""
    e_d, e_b = _dense_expected_log_teacher(inst, inst.log_demos), _dense_expected_log_teacher(inst, inst.log_base)
    alive = np.isfinite(inst.log_base)
    plus = alive & np.isfinite(e_d) & np.isneginf(e_b)
    finite = alive & np.isfinite(e_d) & np.isfinite(e_b)
    if plus.any():
        p0 = np.where(plus, np.exp(inst.log_base), 0.0)
        expected = p0 / p0.sum()
    elif finite.any():
        lw = np.where(finite, inst.log_base + np.where(finite, e_d - np.where(finite, e_b, 0.0), 0.0), -np.inf)
        expected = np.exp(lw - logsumexp(lw))
    else:
        with pytest.raises(PcmiInputError):
            pcmi.contrastive_optimum(inst)
        return
    assert np.max(np.abs(np.exp(pcmi.contrastive_optimum(inst)) - expected)) < 1e-9


def _one_strategy_correct(log_w, log_P, route, eps):
    """Route-copying instance whose correct rollouts all lie in strategy 0 (D concentrated there)."""
    t = LatentStrategyTeacher(log_w, log_P, eps)
    r = (route == 0).astype(int)
    return Instance(t.log_base, r, t, demos_from_successes(t.log_base, r), route=route)


def test_contrastive_plus_infinity_is_the_eps_to_zero_limit():
    """eps = 0: every baseline demonstration of another route rules y out (E_B log T = −∞) while D
    (route 0 only) does not, so s_c = +∞ on route 0; the optimum is π0(·|route 0), the eps → 0 limit."""
    lb = np.log([0.3, 0.2, 0.1, 0.25, 0.15])
    route = np.array([0, 0, 0, 1, 2])
    t0 = LatentStrategyTeacher.route_copying(lb, route, 0.0)
    limit = np.exp(pcmi.contrastive_optimum(_one_strategy_correct(t0.log_w, t0.log_P, route, 0.0)))
    assert np.allclose(limit, [0.5, 1 / 3, 1 / 6, 0, 0], atol=1e-15)
    tvs = [0.5 * np.abs(np.exp(pcmi.contrastive_optimum(_one_strategy_correct(t0.log_w, t0.log_P, route, eps)))
                        - limit).sum() for eps in (1e-4, 1e-8, 1e-16, 1e-64)]
    assert all(a > b for a, b in zip(tvs, tvs[1:])) and tvs[-1] < 1e-12, tvs


@given(st.lists(st.floats(-2.0, 0.0), min_size=2, max_size=4), st.data())
def test_contrastive_eps_zero_matches_small_eps_on_route_copying(logits, data):
    """The same limit with generated route weights and laws (bounded away from 0, so that the
    eps → 0 convergence, at rate eps^(mass of the other routes), is visible at eps = 1e-200)."""
    log_w = log_softmax(np.array(logits))
    sizes = [data.draw(st.integers(1, 3)) for _ in logits]
    route = np.repeat(np.arange(len(sizes)), sizes)
    log_P = np.full((len(sizes), len(route)), -np.inf)
    for z, m in enumerate(sizes):
        log_P[z, route == z] = log_softmax(np.array(data.draw(st.lists(st.floats(-2.0, 0.0), min_size=m, max_size=m))))
    limit = pcmi.contrastive_optimum(_one_strategy_correct(log_w, log_P, route, 0.0))
    near = pcmi.contrastive_optimum(_one_strategy_correct(log_w, log_P, route, 1e-200))
    assert pcmi.total_variation(limit, near) < 1e-12
    assert np.all(np.isneginf(limit[route != 0])) and np.all(np.isfinite(limit[route == 0]))


def _tree_instance(P, w, tree_parent, leaf_node, eps=0.0):
    from graphworld import PrefixTree
    t = LatentStrategyTeacher(np.log(w), safe_log(np.array(P)), eps)
    r = np.ones(t.n, dtype=int)
    return Instance(t.log_base, r, t, t.log_base, tree=PrefixTree(np.array(tree_parent), np.array(leaf_node)))


TREE = ([-1, 0, 0, 1, 1, 2, 2], [3, 4, 5, 6])  # root → h1 → {y0, y1}, root → h2 → {y2, y3}


def test_token_optimum_raises_where_undefined_and_is_the_limit_elsewhere():
    """eps = 0, overlapping strategies. (a) At h1 both actions are ruled out by some demonstration:
    the token optimum is undefined (raise), while the sequence optimum is the point mass on y2.
    (b) Where some action survives at every reachable prefix, the answer is the eps → 0 limit."""
    undefined = _tree_instance([[0.5, 0, 0.5, 0], [0, 0.4, 0.3, 0.3]], [0.5, 0.5], *TREE)
    with pytest.raises(PcmiInputError, match="every action"):
        pcmi.sdsd_token_optimum(undefined)
    assert np.allclose(np.exp(pcmi.sdsd_optimum(undefined)), [0, 0, 1, 0])
    assert np.allclose(np.exp(pcmi.sdsd_sequence_from_tokens(undefined)), [0, 0, 1, 0])
    P, w = [[0.3, 0.2, 0.5, 0], [0, 0.4, 0.3, 0.3]], [0.5, 0.5]
    limit = pcmi.sdsd_token_optimum(_tree_instance(P, w, *TREE))
    assert np.isneginf(limit[[0, 3]]).all() and abs(logsumexp(limit)) < 1e-12
    tvs = [pcmi.total_variation(limit, pcmi.sdsd_token_optimum(_tree_instance(P, w, *TREE, eps=eps)))
           for eps in (1e-10, 1e-40, 1e-160)]
    assert all(a > b for a, b in zip(tvs, tvs[1:])) and tvs[-1] < 1e-12, tvs


def test_sequence_from_tokens_raises_like_the_sequence_level():
    lb = np.log([0.5, 0.5])
    t = LatentStrategyTeacher.route_copying(lb, [0, 1], 0.0)
    inst = Instance(lb, [1, 1], t, lb)
    for f in (pcmi.sdsd_optimum, pcmi.sdsd_sequence_from_tokens, pcmi.sdsd_token_optimum):
        with pytest.raises(PcmiInputError, match="reverse KL is infinite"):
            f(inst)


def _kernel_outside_base():
    """π0 = 0 on y2 but the teacher puts mass there: exp(E_D log T) leaves supp π0."""
    lb = safe_log([0.6, 0.4, 0.0])
    T = np.array([[0.5, 0.2, 0.3], [0.1, 0.6, 0.3], [1 / 3, 1 / 3, 1 / 3]])
    return Instance(lb, [1, 1, 1], KernelTeacher(safe_log(T)), lb)


def test_tempered_sdsd_is_continuous_at_beta_one_and_stays_in_the_base_support():
    inst = _kernel_outside_base()
    at1 = pcmi.sdsd_optimum(inst, 1.0)
    for b in (1 - 1e-9, 1 + 1e-9):
        assert pcmi.total_variation(at1, pcmi.sdsd_optimum(inst, b)) < 1e-8
    assert np.isneginf(at1[2])
    e = _dense_expected_log_teacher(inst, inst.log_demos)
    assert np.allclose(np.exp(pcmi.sdsd_optimum(inst)), np.exp(e - logsumexp(e)))  # beta=None: the objective
    assert np.exp(pcmi.sdsd_optimum(inst))[2] > 0.2
    restricted = np.where(np.isfinite(inst.log_base), e, -np.inf)
    assert np.allclose(np.exp(at1), np.exp(restricted - logsumexp(restricted)))


@given(extreme_instances(kinds=("latent", "route_copying", "copy", "kernel")))
def test_tempered_sdsd_is_continuous_in_beta_and_equals_sdsd_inside_the_base_support(inst):
    try:
        at1 = pcmi.sdsd_optimum(inst, 1.0)
    except PcmiInputError:
        return
    for b in (1 - 1e-9, 1 + 1e-9):
        assert pcmi.total_variation(at1, pcmi.sdsd_optimum(inst, b)) < 1e-5
    rows = leaf_rows(inst.teacher, inst.n)[np.isfinite(inst.log_demos)]
    if np.all(np.isfinite(inst.log_base) | np.all(np.isneginf(rows), axis=0)):  # supp T ⊆ supp π0
        assert pcmi.total_variation(at1, pcmi.sdsd_optimum(inst)) < 1e-9


def _js_scaled_objective(p, w, T, alpha):
    """Σ_c w_c D_α(p, T_c) / (α(1−α)) in plain numpy (0·log 0 = 0): the scale at which α → 0 or 1
    does not flatten the comparison."""
    m = (1 - alpha) * p[None, :] + alpha * T
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_t = np.where(T > 0, T * np.log(T / m), 0.0).sum(axis=1)
        kl_s = np.where(p[None, :] > 0, p[None, :] * np.log(p[None, :] / m), 0.0).sum(axis=1)
    return float(w @ (alpha * kl_t + (1 - alpha) * kl_s)) / (alpha * (1 - alpha))


def _js_scaled_with_logit_gradient(u, w, T, alpha):
    """The scaled objective at p = softmax(u) and its gradient in u: ∂F/∂p_y = (1−α) Σ_c w_c log(p_y/m_cy)."""
    p = np.exp(log_softmax(u))
    m = (1 - alpha) * p[None, :] + alpha * T
    with np.errstate(divide="ignore", invalid="ignore"):
        g = np.where(p > 0, (w[:, None] * np.log(p[None, :] / m)).sum(axis=0), 0.0) / alpha
    return _js_scaled_objective(p, w, T, alpha), p * (g - p @ g)


@given(explicit_instances(), st.sampled_from([1e-6, 0.5, 1 - 1e-6]))
def test_js_optimum_is_not_beaten_by_an_independent_minimization(inst, alpha):
    res = pcmi.js_optimum(inst, alpha)
    assert res.converged and res.kkt_residual < 1e-9
    w, log_T = teacher_classes_at_leaves(inst)
    w, T = w / w.sum(), np.exp(log_T)
    ours = _js_scaled_objective(np.exp(res.log_pi), w, T, alpha)
    for start in (np.zeros(inst.n), np.maximum(res.log_pi, -700)):
        found = minimize(_js_scaled_with_logit_gradient, start, args=(w, T, alpha), jac=True,
                         method="L-BFGS-B", options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-12})
        assert ours <= found.fun + 1e-8 * (1 + abs(found.fun)), (alpha, ours, found.fun)


def test_js_residual_is_scale_free_near_alpha_one():
    """At α = 1 − 1e-6 the stationarity residual of a perturbed policy is O(1), not O(1 − α)."""
    from pcmi.policies import js_kkt_residual
    inst = worked_example()
    w, log_T = teacher_classes_at_leaves(inst)
    w = w / w.sum()
    for alpha in (0.5, 1 - 1e-6):
        res = pcmi.js_optimum(inst, alpha)
        assert res.kkt_residual < 1e-12
        assert js_kkt_residual(log_softmax(res.log_pi + np.array([0.1, 0.0, 0.0])), w, log_T, alpha) > 1e-2


# --- mutation testing (issue 8 item 6): RL's leash, β checks and error contracts ---------------

@given(log_distributions(max_n=6), moderate_beta, st.data())
def test_rl_success_is_the_success_of_the_rl_optimum(lb, beta, data):
    """p(β) = p0 / (p0 + (1 − p0) e^(−1/β)) against the mass π_RL puts on correct rollouts."""
    r = data.draw(rewards(len(lb)))
    p0 = pcmi.success(lb, r)
    p = pcmi.rl_success(p0, beta)
    assert p == pytest.approx(pcmi.success(pcmi.rl_optimum(lb, r, beta), r), abs=1e-12)
    assert p == pytest.approx(p0 / (p0 + (1 - p0) * np.exp(-1 / beta)), abs=1e-12)


def test_rl_success_at_its_edges():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # p0 ∈ {0, 1} and a subnormal β (1/β = +inf): exact, no warning
        for beta in (0.5, 5e-324):
            assert pcmi.rl_success(0.0, beta) == 0.0 and pcmi.rl_success(1.0, beta) == 1.0
        assert pcmi.rl_success(0.25, 5e-324) == 1.0
        got = pcmi.rl_success([0.0, 0.2, 1.0], 1.0)
    assert np.allclose(got, [0.0, 0.2 / (0.2 + 0.8 / np.e), 1.0], atol=1e-15)
    assert pcmi.rl_success(0.3, 1e300) == pytest.approx(0.3)


@pytest.mark.parametrize("p0", [-0.1, 1.5, float("nan"), [0.2, 2.0]])
def test_rl_success_refuses_bad_base_success(p0):
    with pytest.raises(PcmiInputError, match="p0 must lie in"):
        pcmi.rl_success(p0, 1.0)


@given(st.floats(1e-4, 1 - 1e-4), st.floats(0.01, 0.99))
def test_rl_beta_for_success_inverts_rl_success(p0, frac):
    p = p0 + frac * (1 - p0)
    if not p0 < p < 1:
        return
    beta = pcmi.rl_beta_for_success(p0, p)
    assert beta > 0 and pcmi.rl_success(p0, beta) == pytest.approx(p, abs=1e-9)


@pytest.mark.parametrize("p0, p", [(0.0, 0.5), (0.5, 0.5), (0.5, 1.0), (0.6, 0.4), (0.5, 1.5)])
def test_rl_beta_for_success_refuses_unreachable_targets(p0, p):
    with pytest.raises(PcmiInputError, match="no β > 0"):
        pcmi.rl_beta_for_success(p0, p)


@pytest.mark.parametrize("p0s, frac", [([0.2, 0.5, 0.9], 0.5), ([0.0, 0.3, 0.6], 0.9), ([0.1, 0.4], 1e-3),
                                       ([0.05], 0.999), ([0.3, 0.7], 0.2)])
def test_rl_beta_for_mean_success_hits_the_mean(p0s, frac):
    """The mean of p(β) over prompts equals the target (monotone in β: one root), between the
    base mean (β → ∞) and the share of prompts with p0 > 0 (β → 0)."""
    lo, hi = np.mean(p0s), np.mean(np.array(p0s) > 0)
    p = lo + frac * (hi - lo)
    beta = pcmi.rl_beta_for_mean_success(p0s, p)
    assert beta > 0 and np.mean(pcmi.rl_success(p0s, beta)) == pytest.approx(p, abs=1e-10)
    if len(p0s) == 1:
        assert beta == pytest.approx(pcmi.rl_beta_for_success(p0s[0], p), rel=1e-8)


@pytest.mark.parametrize("p0s, p", [([0.2, 0.5], 0.35), ([0.0, 0.5], 0.5), ([0.0, 0.5], 0.75), ([0.2, 0.5], 0.1),
                                    ([0.2, 0.5], 1.0)])
def test_rl_beta_for_mean_success_refuses_unreachable_targets(p0s, p):
    with pytest.raises(PcmiInputError, match="outside"):
        pcmi.rl_beta_for_mean_success(p0s, p)


@pytest.mark.parametrize("beta, word", [("x", "must be a number"), ([1.0, 2.0], "must be a number"),
                                        (0.0, "finite number > 0"), (-2.0, "finite number > 0"),
                                        (float("inf"), "finite number > 0")])
def test_bad_beta_message_names_the_problem(beta, word):
    for call in (lambda: pcmi.rl_optimum(np.log([0.5, 0.5]), [1, 0], beta), lambda: pcmi.rl_success(0.5, beta),
                 lambda: pcmi.sdsd_optimum(worked_example(), beta)):
        with pytest.raises(PcmiInputError, match=word):
            call()


def test_tiny_positive_beta_is_accepted():
    for beta in (1e-300, 0.5, 1.0):
        assert check_beta(beta) == beta
        assert pcmi.rl_success(0.5, beta) >= 0.5
        assert abs(logsumexp(pcmi.sdsd_optimum(worked_example(), beta))) < 1e-12


def test_rl_optimum_is_the_tilted_base():
    """π_RL ∝ π0 · exp(r/β), for rewards beyond {0, 1} too (the tilt only depends on r − max r)."""
    lb, r, beta = np.log([0.5, 0.3, 0.2]), np.array([1.0, 0.0, 0.5]), 0.7
    w = np.exp(lb) * np.exp(r / beta)
    assert np.allclose(np.exp(pcmi.rl_optimum(lb, r, beta)), w / w.sum(), atol=1e-15)
    assert np.allclose(np.exp(pcmi.rl_optimum(lb, [True, False, True], beta)),
                       np.exp(pcmi.rl_optimum(lb, [1, 0, 1], beta)), atol=1e-15)
    assert np.allclose(np.exp(pcmi.rl_limit(lb, [0, 1, 1])), [0, 0.6, 0.4], atol=1e-15)


def test_tempered_sdsd_is_the_tilted_base():
    """π ∝ π0 · exp(s/β) on the worked example, s = expected PCMI (dense numpy route)."""
    inst = worked_example()
    e = _dense_expected_log_teacher(inst, inst.log_demos)
    s = e - inst.log_base
    for beta in (0.3, 1.0, 4.0):
        w = np.exp(inst.log_base + s / beta)
        assert np.allclose(np.exp(pcmi.sdsd_optimum(inst, beta)), w / w.sum(), atol=1e-12)


def test_reverse_kl_errors_name_the_quantity():
    lb = np.log([0.5, 0.5])
    inst = Instance(lb, [1, 1], LatentStrategyTeacher.route_copying(lb, [0, 1], 0.0), lb)
    for call, word in ((lambda: pcmi.sdsd_optimum(inst), "E_D log T"),
                       (lambda: pcmi.sdsd_optimum(inst, 1.0), "the expected PCMI"),
                       (lambda: pcmi.sdsd_sequence_from_tokens(inst), "E_D log T")):
        with pytest.raises(PcmiInputError, match="reverse KL is infinite") as e:
            call()
        assert word in str(e.value) and "zero teacher probability under some demonstration" in str(e.value)


# --- mutation testing: the JS solver's pieces against mpmath and finite differences ---------

def _mp_log_softplus(x):
    import mpmath as mp
    mp.mp.dps = 50
    return float(mp.log(mp.log1p(mp.exp(x))))


def _mp_inv_softplus_of_log(log_v):
    import mpmath as mp
    mp.mp.dps = 50
    return float(mp.log(mp.expm1(mp.exp(log_v))))


def test_log_softplus_is_log_log1p_exp_over_the_whole_range():
    from pcmi.policies import _log_softplus
    xs = np.array([-800.0, -100.0, -41.0, -40.5, -40.0, -39.5, -10.0, -1.0, 0.0, 2.0, 40.0, 300.0])
    ref = np.array([_mp_log_softplus(x) for x in xs])
    assert np.allclose(_log_softplus(xs), ref, rtol=1e-14, atol=0)
    assert _log_softplus(np.array([-np.inf]))[0] == -np.inf


def test_inv_softplus_of_log_inverts_softplus_over_the_whole_range():
    """x with log(1 + e^x) = v, from log v: log v → −∞ (x ≈ log v), v ≈ 30 (x ≈ v), v → e^709."""
    import warnings
    from pcmi.policies import _inv_softplus_of_log
    lv = np.array([-800.0, -45.0, -40.5, -39.0, -5.0, 0.0, 3.0, np.log(30.5), 5.0, 100.0, 699.5, 700.5,
                   705.0, 709.5])
    ref = np.array([_mp_inv_softplus_of_log(v) for v in lv])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = _inv_softplus_of_log(lv)
        assert _inv_softplus_of_log(np.array([-np.inf]))[0] == -np.inf
    assert np.allclose(got, ref, rtol=1e-15, atol=0), (got - ref) / ref


def _stationarity_case():
    """Three classes (one of weight 0, weights unnormalized); rollout 3 only reached by the
    weight-0 class, rollout 4 by none."""
    w = np.array([0.6, 1.4, 0.0])
    log_T = safe_log(np.array([[0.5, 0.3, 0.2, 0.0, 0.0],
                               [0.1, 0.0, 0.9, 0.0, 0.0],
                               [0.2, 0.2, 0.2, 0.4, 0.0]]))
    return w, log_T


def _dense_G(w, log_T, alpha, t):
    """G_y(t) = Σ_c w_c softplus(logit α + log T_cy − t), weights normalized, in plain numpy."""
    wn = w / w.sum()
    x = np.log(alpha / (1 - alpha)) + log_T - t[None, :]  # t finite: −inf where T_cy = 0
    return (wn[:, None] * np.logaddexp(0.0, x)).sum(axis=0)


@pytest.mark.parametrize("alpha", [0.2, 0.5, 0.9])
def test_js_stationarity_pieces(alpha):
    from pcmi.policies import _JSStationarity
    w, log_T = _stationarity_case()
    s = _JSStationarity(w, log_T, alpha)
    assert s.support.tolist() == [True, True, True, False, False]
    t = np.array([-1.0, 0.3, -2.5])
    g = _dense_G(w, log_T, alpha, np.r_[t, 0.0, 0.0])[:3]
    log_g = s.log_G(t)
    assert np.allclose(log_g, np.log(g), rtol=1e-13)
    h = 1e-6
    fd = (np.log(_dense_G(w, log_T, alpha, np.r_[t + h, 0, 0])[:3]) -
          np.log(_dense_G(w, log_T, alpha, np.r_[t - h, 0, 0])[:3])) / (2 * h)
    d = s.dlog_G(t, log_g)
    assert np.allclose(d, fd, rtol=1e-6) and np.all((-1 <= d) & (d < 0))
    for log_mu in (-30.0, -2.0, 0.0, 1.5, 20.0):
        ts = s.log_s(log_mu)
        assert np.allclose(s.log_G(ts), log_mu, rtol=0, atol=1e-13 * (1 + abs(log_mu)))


def _plain_js(p, T, alpha):
    """D_α(p, T) for unnormalized p, T in plain numpy (0·log 0 = 0)."""
    m = (1 - alpha) * p + alpha * T
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_t = np.where(T > 0, T * np.log(T / m), 0.0).sum()
        kl_s = np.where(p > 0, p * np.log(p / m), 0.0).sum()
    return alpha * kl_t + (1 - alpha) * kl_s


def test_js_divergence_and_objective_gradient():
    import warnings
    from pcmi.policies import js_divergence
    p, T = np.array([0.5, 0.3, 0.2, 0.0]), np.array([0.2, 0.0, 0.5, 0.3])
    lp, lt = safe_log(p), safe_log(T)
    assert js_divergence(lp, lt, 1.0) == float("inf") and js_divergence(lt, lp, 0.0) == float("inf")
    q = np.array([0.4, 0.3, 0.2, 0.1])
    assert js_divergence(lp, np.log(q), 1.0) == pytest.approx(np.sum(p[:3] * np.log(p[:3] / q[:3])), rel=1e-13)
    assert js_divergence(np.log(q), lp, 0.0) == pytest.approx(np.sum(p[:3] * np.log(p[:3] / q[:3])), rel=1e-13)
    for alpha in (0.1, 0.5, 0.8):
        assert js_divergence(lp, lt, alpha) == pytest.approx(_plain_js(p, T, alpha), rel=1e-13)
    w, log_T = _stationarity_case()
    S = np.array([0.3, 0.25, 0.4, 0.05, 0.0])  # S_4 = 0 and T_c4 = 0 for every class
    for alpha in (0.3, 0.7):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            f, grad = js_objective(safe_log(S), w, log_T, alpha)
        assert grad.shape == (5,)
        assert f == pytest.approx(sum(wc * _plain_js(S, np.exp(lt_), alpha) for wc, lt_ in zip(w, log_T)), rel=1e-13)
        for y in range(4):  # ∂F/∂S_y on supp S (S unnormalized: F is defined for any S ≥ 0)
            e = np.zeros(5)
            e[y] = 1e-7
            fd = (js_objective(safe_log(S + e), w, log_T, alpha)[0]
                  - js_objective(safe_log(S - e), w, log_T, alpha)[0]) / 2e-7
            assert grad[y] == pytest.approx(fd, rel=1e-6, abs=1e-9), (alpha, y)


def test_js_kkt_residual_is_the_spread_of_G_on_the_support():
    from pcmi.policies import js_kkt_residual
    w, log_T = _stationarity_case()
    S = np.array([0.5, 0.2, 0.3, 0.0, 0.0])
    for alpha in (0.3, 0.6):
        g = _dense_G(w, log_T, alpha, np.log(np.where(S > 0, S, 1.0)))[:3]
        expected = np.max(np.abs(g - S[:3] @ g))
        assert expected > 1e-3
        assert js_kkt_residual(safe_log(S), w, log_T, alpha) == pytest.approx(expected, rel=1e-12)
        res = pcmi.js_optimum(worked_example(), alpha)
        ww, lT = teacher_classes_at_leaves(worked_example())
        assert js_kkt_residual(res.log_pi, 3 * ww, lT, alpha) == pytest.approx(res.kkt_residual, abs=1e-15)


def test_js_optimum_result_fields_and_bad_alpha():
    inst = worked_example()
    w, log_T = teacher_classes_at_leaves(inst)
    for alpha in (0.0, 1.0):  # closed forms: exact, objective = Σ_c w_c D_α(π, T_c)
        res = pcmi.js_optimum(inst, alpha)
        assert res.kkt_residual == 0.0 and res.converged
        expected = sum(wc * pcmi.distributions.kl(*((res.log_pi, lt) if alpha == 1 else (lt, res.log_pi)))
                       for wc, lt in zip(w / w.sum(), log_T))
        assert res.objective == pytest.approx(expected, rel=1e-12)
    res = pcmi.js_optimum(inst, 0.4)
    assert res.converged and res.kkt_residual <= 1e-12 and abs(logsumexp(res.log_pi)) < 1e-14
    assert res.objective == pytest.approx(js_objective(res.log_pi, w / w.sum(), log_T, 0.4)[0], rel=1e-14)
    for alpha, word in ((1.5, "alpha must lie in"), (-0.1, "alpha must lie in"), (float("nan"), "alpha must lie in"),
                        ("x", "alpha must be a number")):
        with pytest.raises(PcmiInputError, match=word):
            pcmi.js_optimum(inst, alpha)


# --- mutation testing: contrastive score with explicit baselines, token-level messages -------

def test_contrastive_score_with_explicit_baseline_demonstrations():
    """s_c = E_D log T − E_B log T for a given B (dense route), eps = 0: +∞ where only B rules y
    out, −∞ where D does, −∞ where both do (0/0: no evidence for y)."""
    lb = np.log([0.3, 0.2, 0.25, 0.15, 0.1])
    route = np.array([0, 0, 1, 2, 2])
    t = LatentStrategyTeacher.route_copying(lb, route, 0.0)
    inst = Instance(t.log_base, [1, 1, 1, 0, 0], t, demos_from_successes(t.log_base, [1, 1, 0, 0, 0]), route=route)
    B = safe_log([0.0, 0.0, 0.5, 0.5, 0.0])  # baseline demonstrations on routes 1 and 2 only
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # −inf − (−inf) is resolved to −inf without a warning
        s = pcmi.contrastive_score(inst, B)
    e_d, e_b = _dense_expected_log_teacher(inst, inst.log_demos), _dense_expected_log_teacher(inst, B)
    assert np.isfinite(e_d[:2]).all() and np.isneginf(e_b[:2]).all() and np.all(s[:2] == np.inf)
    assert np.isneginf(e_d[2:]).all() and np.isneginf(e_b[2:]).all() and np.isneginf(s[2:]).all()  # both: 0/0
    assert not np.isnan(s).any()
    assert np.allclose(np.exp(pcmi.contrastive_optimum(inst, B)), [0.6, 0.4, 0, 0, 0], atol=1e-15)  # π0(·|s_c = +∞)
    assert np.all(pcmi.contrastive_score(inst, np.log([0.1, 0.1, 0.2, 0.3, 0.3]))[:2] == np.inf)  # B on every route
    two = Instance(t.log_base, [1, 1, 1, 0, 0], t, demos_from_successes(t.log_base, [1, 1, 1, 0, 0]), route=route)
    assert np.isneginf(pcmi.contrastive_score(two, B)).all()  # D on two routes rules out everything at eps = 0
    with pytest.raises(PcmiInputError, match="the contrastive score is −inf for every rollout"):
        pcmi.contrastive_optimum(two, B)


def test_contrastive_score_refuses_bad_baselines():
    inst = worked_example()
    with pytest.raises(PcmiInputError, match="baseline demonstrations B have 2 entries but there are 3 rollouts"):
        pcmi.contrastive_score(inst, np.log([0.5, 0.5]))
    for bad in ([0.1, np.nan, 0.0], np.log([0.5, 0.6, 0.1])):
        with pytest.raises(PcmiInputError, match="baseline demonstrations B"):
            pcmi.contrastive_optimum(inst, bad)


def test_contrastive_score_of_an_explicit_b_differs_from_the_default():
    """The default B is π0; an explicit B is used, not ignored."""
    inst = worked_example()
    B = np.log([0.1, 0.1, 0.8])
    s_default, s_b = pcmi.contrastive_score(inst), pcmi.contrastive_score(inst, B)
    e_d = _dense_expected_log_teacher(inst, inst.log_demos)
    assert np.allclose(s_b, e_d - _dense_expected_log_teacher(inst, B))
    assert np.allclose(s_default, e_d - _dense_expected_log_teacher(inst, inst.log_base))
    assert np.max(np.abs(s_b - s_default)) > 0.1
    w = np.exp(inst.log_base + s_b)
    assert np.allclose(np.exp(pcmi.contrastive_optimum(inst, B)), w / w.sum())


def test_token_optimum_error_names_the_stuck_prefixes():
    undefined = _tree_instance([[0.5, 0, 0.5, 0], [0, 0.4, 0.3, 0.3]], [0.5, 0.5], *TREE)
    with pytest.raises(PcmiInputError) as e:
        pcmi.sdsd_token_optimum(undefined)
    msg = str(e.value)
    for word in ("at 1 reachable prefix", "zero teacher probability under some", "demonstration",
                 "token-level reverse KL", "is infinite for every policy"):
        assert word in msg, (word, msg)


def test_subnormal_beta_gives_the_limits_without_floating_point_warnings():
    """1/β overflows for β = 5e-324: the tilt goes to −inf (wrong rollouts, or every rollout
    below max s), never to NaN, and no overflow warning leaks."""
    import warnings
    lb, r = np.log([0.5, 0.3, 0.2]), np.array([1, 0, 1])
    inst = worked_example()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rl = pcmi.rl_optimum(lb, r, 5e-324)
        sd = pcmi.sdsd_optimum(inst, 5e-324)
    assert np.allclose(np.exp(rl), np.exp(pcmi.rl_limit(lb, r)), atol=0)
    s = pcmi.expected_pcmi(inst)
    assert np.allclose(np.exp(sd), np.exp(pcmi.rl_limit(inst.log_base, s == s.max())), atol=0)


@given(graph_instances())
def test_soft_future_value_is_the_leaf_mass_below_each_prefix(pair):
    """Z(h) = Σ_{y below h} exp(E_D log T(y | y') − E_D log T(h | y')) by brute force over the
    leaves (the recursion telescopes), so log Z(root) = log Σ_y exp(E_D log T(y | y'))."""
    inst, _ = pair
    tree = inst.tree
    log_Z = pcmi.soft_future_value(inst)
    e_node = pcmi.teachers.expected_log_teacher(inst.teacher, inst.log_demos, tree)
    e_leaf = e_node[tree.leaf_node]
    assert log_Z[0] == pytest.approx(logsumexp(e_leaf), abs=1e-9)
    for h in range(tree.n_nodes):
        below = []
        for i, c in enumerate(tree.leaf_node):
            while c != -1 and c != h:
                c = tree.parent[c]
            if c == h:
                below.append(i)
        if np.isfinite(e_node[h]):
            assert log_Z[h] == pytest.approx(logsumexp(e_leaf[below]) - e_node[h], abs=1e-9), h


def test_token_level_optima_on_eps_zero_trees_raise_no_floating_point_warnings():
    import warnings
    for P in ([[0.3, 0.2, 0.5, 0], [0, 0.4, 0.3, 0.3]],
              [[0.3, 0, 0.7, 0], [0, 0, 0.5, 0.5]]):  # strategy 1 rules out the prefix h1 entirely
        inst = _tree_instance(P, [0.5, 0.5], *TREE)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # −inf − (−inf) below ruled-out prefixes: −inf, not NaN + warning
            for f in (pcmi.sdsd_token_optimum, pcmi.sdsd_sequence_from_tokens, pcmi.forward_kl_token_optimum,
                      pcmi.soft_future_value):
                assert not np.isnan(f(inst)).any()
    assert np.isneginf(pcmi.sdsd_token_optimum(inst)[:2]).all()  # the second case: h1 gets no mass


def test_js_optimum_is_stationary_over_a_grid_of_alpha():
    """The root log μ moves from ≈ logit α (far below −1 for small α, above 1 for α → 1): the
    bracket search must find it on both sides."""
    inst = worked_example()
    w, log_T = teacher_classes_at_leaves(inst)
    w = w / w.sum()
    rng = np.random.default_rng(1)
    for alpha in (0.02, 0.25, 0.75, 0.98, 0.999):
        res = pcmi.js_optimum(inst, alpha)
        assert res.converged and res.kkt_residual <= 1e-12, alpha
        assert abs(logsumexp(res.log_pi)) <= 4.5e-16, alpha  # normalized to 2 ulps of 1
        for _ in range(3):
            other = log_softmax(res.log_pi + 1e-3 * rng.standard_normal(inst.n))
            assert res.objective <= js_objective(other, w, log_T, alpha)[0] + 1e-15, alpha


def test_js_converged_flag_is_the_residual_against_tol():
    """JSResult.converged means kkt_residual ≤ tol (the residual itself is a few ulps here, or 0)."""
    inst = worked_example()
    for alpha in (0.3, 0.7):
        r = pcmi.js_optimum(inst, alpha).kkt_residual
        assert 0 <= r <= 1e-12
        for tol in (0.0, r / 2, r, 1e-12):
            res = pcmi.js_optimum(inst, alpha, tol=tol)
            assert res.converged == (res.kkt_residual <= tol)



def test_js_objective_is_silent_where_student_and_teachers_are_zero():
    """A rollout with S_y = 0 that no teacher reaches: the objective and gradient stay finite,
    with no floating-point warning (log S − log m of two zeros is not evaluated as NaN)."""
    import warnings
    log_s = np.log([0.5, 0.5, 0.0])
    log_T = np.log(np.array([[0.7, 0.3, 0.0], [0.2, 0.8, 0.0]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f, g = js_objective(log_s, np.array([0.5, 0.5]), log_T, 0.5)
    assert np.isfinite(f) and np.all(np.isfinite(g)) and g[2] == 0.0


# --- review: bad input to the public functions is one line, never a traceback ---------------
@pytest.mark.parametrize("call, words", [
    (lambda inst: pcmi.contrastive_optimum(inst, np.zeros((inst.n, inst.n))), "baseline demonstrations B"),
    (lambda inst: pcmi.js_optimum(inst, 0.5, tol="x"), "tol"),
    (lambda inst: pcmi.js_optimum(inst, 0.5, tol=-1.0), "tol"),
    (lambda inst: pcmi.rl_success("abc", 1.0), "p0"),
    (lambda inst: pcmi.rl_beta_for_mean_success(["a"], 0.5), "p0s"),
    (lambda inst: pcmi.rl_beta_for_mean_success([0.2, 0.4], "0.5"), "target success p"),
    (lambda inst: pcmi.sdsd_rounds(inst, 2.5), "n_rounds"),
    (lambda inst: pcmi.rl_rounds(inst, "2", 1.0), "n_rounds"),
    (lambda inst: pcmi.forward_kl_rounds(inst, -1), "n_rounds"),
])
def test_bad_arguments_raise_one_line_input_errors(call, words):
    t = LatentStrategyTeacher.route_copying(np.log([0.5, 0.3, 0.2]), np.array([0, 1, 1]), 0.1)
    inst = Instance(t.log_base, np.array([1, 1, 0]), t, demos_from_successes(t.log_base, np.array([1, 1, 0])),
                    route=np.array([0, 1, 1]))
    with pytest.raises(PcmiInputError, match=words) as e:
        call(inst)
    assert "\n" not in str(e.value)
