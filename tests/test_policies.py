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
from pcmi.policies import js_objective, teacher_classes_at_leaves
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
