"""Metrics: exact formulas against Monte Carlo sampling and brute-force combinatorics."""
from math import comb

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scipy.special import logsumexp

import pcmi
from pcmi.distributions import safe_log
from pcmi.testing import extreme_instances, log_distributions, rewards


@given(st.integers(1, 30), st.data())
def test_unbiased_pass_at_k_equals_combinatorial_formula(n, data):
    c = data.draw(st.integers(0, n))
    k = data.draw(st.integers(1, n))
    expected = 1 - comb(n - c, k) / comb(n, k)
    assert abs(pcmi.pass_at_k_unbiased(n, c, k) - expected) < 1e-12


@given(st.floats(0.0, 1.0), st.integers(1, 12), st.integers(1, 12))
def test_unbiased_estimator_is_unbiased_for_exact_pass_at_k(p, k, extra):
    """E_{c ~ Bin(n, p)} [estimator] = 1 − (1 − p)^k."""
    n = k + extra
    from scipy.stats import binom
    mean = sum(binom.pmf(c, n, p) * pcmi.pass_at_k_unbiased(n, c, k) for c in range(n + 1))
    assert abs(mean - pcmi.pass_at_k(p, k)) < 1e-9


def test_pass_at_k_and_distinct_correct_match_monte_carlo():
    rng = np.random.default_rng(0)
    lp = np.log(rng.dirichlet(np.ones(8)))
    r = np.array([1, 0, 1, 1, 0, 1, 0, 1])
    p, k, trials = pcmi.success(lp, r), 5, 40000
    draws = rng.choice(8, size=(trials, k), p=np.exp(lp))
    hit = r[draws].any(axis=1)
    assert abs(hit.mean() - pcmi.pass_at_k(p, k)) < 5 * np.sqrt(0.25 / trials)
    distinct = np.array([len({y for y in row if r[y]}) for row in draws])
    assert abs(distinct.mean() - pcmi.expected_distinct_correct(lp, r, k)) < 5 * distinct.std() / np.sqrt(trials)


@given(log_distributions(max_n=6), st.data())
def test_metric_identities(lp, data):
    r = data.draw(rewards(len(lp)))
    ks = np.array([1, 2, 16, 1024])
    pk = pcmi.pass_at_k(pcmi.success(lp, r), ks)
    assert np.all(np.diff(pk) >= -1e-15) and abs(pk[0] - pcmi.success(lp, r)) < 1e-12
    assert abs(pcmi.expected_distinct_correct(lp, r, 1) - pcmi.success(lp, r)) < 1e-12
    assert 1 - 1e-9 <= pcmi.effective_correct(lp, r) <= r.sum() + 1e-9
    assert pcmi.ratio_distortion(lp, lp, r) == 0


def test_pass_at_k_long_horizon_is_stable():
    assert pcmi.pass_at_k(1e-12, 1024) == pytest.approx(1024e-12, rel=1e-6)
    assert pcmi.pass_at_k(1 - 1e-15, 3) == 1.0


def test_strategy_masses_and_ood_success():
    lp = np.log([0.4, 0.2, 0.3, 0.1])
    r, route = np.array([1, 1, 1, 0]), np.array([0, 0, 1, 1])
    m = pcmi.strategy_masses(lp, r, route)
    assert m == pytest.approx({0: 6 / 9, 1: 3 / 9})
    assert pcmi.ood_success(lp, r, route == 0) == pytest.approx(0.3)


@pytest.mark.parametrize("call", [lambda: pcmi.pass_at_k(1.2, 3), lambda: pcmi.pass_at_k(0.5, 0),
                                  lambda: pcmi.pass_at_k_unbiased(3, 4, 1)])
def test_bad_metric_input(call):
    with pytest.raises(pcmi.PcmiInputError):
        call()


# --- probabilities out of log space stay in [0, 1] (issue 8, item 1) ---------------------------

def _optima(inst):
    """Every optimum the toolkit computes, each a log-distribution or the PcmiInputError it raises."""
    calls = {"base": lambda: inst.log_base,
             "rl": lambda: pcmi.rl_optimum(inst.log_base, inst.reward, 0.3),
             "rl_limit": lambda: pcmi.rl_limit(inst.log_base, inst.reward),
             "sdsd": lambda: pcmi.sdsd_optimum(inst), "sdsd_tempered": lambda: pcmi.sdsd_optimum(inst, 1.0),
             "sdsd_token": lambda: pcmi.sdsd_token_optimum(inst),
             "forward_kl": lambda: pcmi.forward_kl_optimum(inst),
             "forward_kl_token": lambda: pcmi.forward_kl_token_optimum(inst),
             "contrastive": lambda: pcmi.contrastive_optimum(inst),
             "js": lambda: pcmi.js_optimum(inst, 0.5).log_pi}
    out = {}
    for name, call in calls.items():
        try:
            out[name] = call()
        except pcmi.PcmiInputError as e:
            out[name] = e
    return out


def _assert_valid_metrics(m, n_correct, as_json=False):
    for key, v in m.items():
        if key == "strategy_masses":
            vals = np.array(list(v.values()))
            assert np.all((0 <= vals) & (vals <= 1)) and abs(vals.sum() - 1) < 1e-9, (key, v)
        elif key in ("success", "ood_success") or key.startswith("pass@"):
            assert 0 <= v <= 1, (key, v)
        elif key.startswith("distinct_correct@"):
            assert 0 <= v <= n_correct + 1e-9, (key, v)
        elif key == "effective_correct":
            assert 1 - 1e-9 <= v <= n_correct + 1e-9, (key, v)
        elif key == "ratio_distortion":  # +inf (π kills a correct rollout that π0 has): null in solve's JSON
            assert (as_json and v is None) or (v >= 0 and not np.isnan(v)), (key, v)
        else:
            assert np.isfinite(v) and v >= -1e-12, (key, v)


@given(extreme_instances())
def test_every_metric_of_every_optimum_is_a_probability_or_finite(inst):
    blocked = np.arange(inst.n) == int(np.argmax(inst.log_base))
    for lp in _optima(inst).values():
        if not isinstance(lp, Exception):
            _assert_valid_metrics(pcmi.policy_metrics(lp, inst.log_base, inst.reward, inst.route, blocked),
                                  int(inst.reward.sum()))


@given(extreme_instances())
def test_solve_succeeds_whenever_every_optimum_is_defined(inst):
    from pcmi.solve import solve
    opts = _optima(inst)
    errors = [e for name, e in opts.items() if isinstance(e, Exception) and name != "js"]
    if errors:
        with pytest.raises(pcmi.PcmiInputError):
            solve(inst)
        return
    out = solve(inst)
    for name, m in out["metrics"].items():
        _assert_valid_metrics(m, int(inst.reward.sum()), as_json=True)
        assert all(0 <= p <= 1 for p in out[name])


def test_solve_on_random_all_correct_explicit_instances():
    """The issue's reproduction: 40 random all-correct explicit instances (exp(logsumexp) rounds to
    1 + 2e-16 on several of them, which pass@k used to refuse)."""
    from pcmi.solve import solve
    rng = np.random.default_rng(0)
    above_one = 0
    for _ in range(40):
        n = int(rng.integers(2, 6))
        inst = pcmi.Instance.explicit(rng.dirichlet(np.ones(n)), np.ones(n), rng.dirichlet(np.ones(n), size=n))
        above_one += np.exp(logsumexp(pcmi.sdsd_optimum(inst))) > 1
        out = solve(inst)
        assert all(m["success"] == pytest.approx(1.0, abs=1e-12) and m["success"] <= 1 for m in out["metrics"].values())
    assert above_one > 0  # the rounding this guards against does occur on this sample


def test_rl_limit_success_on_a_large_graph_instance_is_at_most_one():
    """benchmarks/bench_core.py's instance: exp(logsumexp) of π0(·|r=1) rounds to 1 + 4e-16."""
    import graphworld as gw
    g = gw.multi_route_dag(4, 3, 3, seed=0, n_sources=1, n_targets=2)
    inst, _ = pcmi.graph_instance(gw.Task(g, 0, g.graph["prompts"][0][1], 5), gw.EdgePolicy(stop_pref=-1.0),
                                  {"kind": "route_copying", "eps": 0.1})
    lp = pcmi.rl_limit(inst.log_base, inst.reward)
    assert np.exp(logsumexp(lp[inst.reward == 1])) > 1  # unclipped
    assert pcmi.success(lp, inst.reward) == 1.0
    assert pcmi.pass_at_k(pcmi.success(lp, inst.reward), 8) == 1.0
    assert 0 < pcmi.expected_distinct_correct(lp, inst.reward, 8) <= inst.reward.sum()



# --- mutation testing (issue 8 item 6): each metric against an independent numpy route --------

def _brute_ratio_distortion(lp, lb, r):
    """max over correct pairs (both with π0 > 0) |log π(y1)/π(y2) − log π0(y1)/π0(y2)|, by loops."""
    idx = [y for y in range(len(lp)) if r[y] == 1 and np.isfinite(lb[y])]
    best = 0.0
    for a in idx:
        for b in idx:
            if np.isneginf(lp[a]) or np.isneginf(lp[b]):
                return float("inf")
            best = max(best, abs((lp[a] - lp[b]) - (lb[a] - lb[b])))
    return best


@given(log_distributions(max_n=6), log_distributions(max_n=6), st.data())
def test_metrics_equal_their_formulas_on_random_policies(lp, lb, data):
    n = min(len(lp), len(lb))
    lp, lb = lp[:n] - logsumexp(lp[:n]), lb[:n] - logsumexp(lb[:n])
    r = data.draw(rewards(n))
    route = np.array(data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))
    blocked = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    pi, ok = np.exp(lp), r == 1
    p = pi[ok].sum()
    assert pcmi.success(lp, r) == pytest.approx(p, abs=1e-12)
    ood = pi[ok & ~blocked].sum()
    assert pcmi.ood_success(lp, r, blocked) == pytest.approx(ood, abs=1e-12)
    assert pcmi.ood_pass_at_k(lp, r, blocked, 3) == pytest.approx(1 - (1 - ood) ** 3, abs=1e-12)
    q = pi[ok] / p
    h = -np.sum(np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0))
    assert pcmi.correct_entropy(lp, r) == pytest.approx(h, abs=1e-9)
    assert pcmi.effective_correct(lp, r) == pytest.approx(np.exp(h), rel=1e-9)
    ks = [1, 3, 7]
    dc = [np.sum(1 - (1 - pi[ok]) ** k) for k in ks]
    assert np.allclose(pcmi.expected_distinct_correct(lp, r, ks), dc, atol=1e-12)
    masses = {int(z): pi[ok & (route == z)].sum() / p for z in set(route[ok])}
    got = pcmi.strategy_masses(lp, r, route)
    assert got.keys() == masses.keys() and all(abs(got[z] - masses[z]) < 1e-12 for z in masses)
    mv = np.array([v for v in masses.values() if v > 0])
    assert pcmi.strategy_mass_entropy(lp, r, route) == pytest.approx(-np.sum(mv * np.log(mv)), abs=1e-9)
    assert pcmi.ratio_distortion(lp, lb, r) == pytest.approx(_brute_ratio_distortion(lp, lb, r), abs=1e-9)


def test_metrics_at_their_edges():
    lp, lb, r = safe_log([0.5, 0.5, 0.0]), np.log([0.2, 0.3, 0.5]), np.array([0, 0, 1])
    assert pcmi.success(lp, r) == 0.0 and pcmi.success(lp, np.zeros(3)) == 0.0
    assert pcmi.ood_success(lp, np.ones(3), [True, True, False]) == 0.0  # every mass is blocked
    assert pcmi.ood_success(lp, np.ones(3), [1, 0, 0]) == pytest.approx(0.5)  # a 0/1 integer mask
    assert pcmi.ratio_distortion(lp, lb, r) == float("inf")  # π kills a correct rollout π0 has
    assert pcmi.ratio_distortion(lp, lb, np.zeros(3)) == 0.0  # no correct pair at all
    assert pcmi.ratio_distortion(lp, safe_log([0.2, 0.8, 0.0]), r) == 0.0  # the only correct one has π0 = 0
    one = safe_log([0.0, 1.0, 0.0])  # π(y) = 1 on a correct rollout: 1 − (1 − 1)^k = 1, no warning
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pcmi.pass_at_k(1.0, 4) == 1.0 and pcmi.pass_at_k(0.0, 4) == 0.0
        assert pcmi.expected_distinct_correct(one, [0, 1, 1], 5) == 1.0
    assert pcmi.strategy_mass_entropy(safe_log([0.5, 0.5, 0.0]), [1, 1, 1], [0, 0, 1]) == 0.0  # a zero-mass route
    assert pcmi.pass_at_k([0.0, 1.0], 1) == 0.5


def test_pass_at_k_is_a_float_per_k_and_an_array_over_ks():
    for f in (lambda k: pcmi.pass_at_k(0.3, k), lambda k: pcmi.pass_at_k([0.3, 0.6], k),
              lambda k: pcmi.expected_distinct_correct(np.log([0.3, 0.7]), [1, 1], k),
              lambda k: pcmi.ood_pass_at_k(np.log([0.3, 0.7]), [1, 1], [0, 1], k)):
        assert type(f(2)) is float
        assert np.shape(f([2])) == (1,) and np.shape(f([1, 2, 3])) == (3,)
        assert np.allclose(f([1, 2, 3]), [f(1), f(2), f(3)])


def test_unbiased_pass_at_k_edges():
    assert pcmi.pass_at_k_unbiased(5, 0, 5) == 0.0 and pcmi.pass_at_k_unbiased(5, 5, 1) == 1.0
    assert pcmi.pass_at_k_unbiased(5, 1, 4) == pytest.approx(0.8)  # n − c = k: C(4,4)/C(5,4) = 1/5
    assert pcmi.pass_at_k_unbiased(5, 1, 5) == 1.0  # n − c < k


@pytest.mark.parametrize("call, word", [
    (lambda: pcmi.pass_at_k_unbiased(3, 1, 4), "k=4"), (lambda: pcmi.pass_at_k_unbiased(3, 1, 0), "k=0"),
    (lambda: pcmi.pass_at_k_unbiased(3, -1, 1), "c=-1"), (lambda: pcmi.pass_at_k_unbiased(3, 4, 1), "c=4"),
    (lambda: pcmi.pass_at_k(0.5, 2.5), "positive integer"), (lambda: pcmi.pass_at_k(0.5, [1, 0]), "positive integer"),
    (lambda: pcmi.expected_distinct_correct(np.log([0.5, 0.5]), [1, 1], 0), "positive integer"),
    (lambda: pcmi.pass_at_k(-0.1, 2), "success probabilities"),
    (lambda: pcmi.pass_at_k(float("nan"), 2), "success probabilities")])
def test_bad_metric_input_names_the_problem(call, word):
    with pytest.raises(pcmi.PcmiInputError, match=word):
        call()


def test_policy_metrics_is_every_metric_as_plain_json_numbers():
    import json
    lp, lb = np.log([0.4, 0.3, 0.2, 0.1]), np.log([0.1, 0.2, 0.3, 0.4])
    r, route, blocked = np.array([1, 1, 0, 1]), np.array([0, 1, 1, 2]), np.array([1, 0, 0, 0], bool)
    m = pcmi.policy_metrics(lp, lb, r, route, blocked, ks=(1, 4))
    assert set(m) == {"success", "pass@1", "pass@4", "correct_entropy", "effective_correct", "ratio_distortion",
                      "distinct_correct@1", "distinct_correct@4", "strategy_masses", "strategy_mass_entropy",
                      "ood_success"}
    json.dumps(m)
    expected = {"success": pcmi.success(lp, r), "pass@4": pcmi.pass_at_k(pcmi.success(lp, r), 4),
                "correct_entropy": pcmi.correct_entropy(lp, r), "effective_correct": pcmi.effective_correct(lp, r),
                "ratio_distortion": pcmi.ratio_distortion(lp, lb, r),
                "distinct_correct@4": pcmi.expected_distinct_correct(lp, r, 4),
                "strategy_masses": pcmi.strategy_masses(lp, r, route),
                "strategy_mass_entropy": pcmi.strategy_mass_entropy(lp, r, route),
                "ood_success": pcmi.ood_success(lp, r, blocked)}
    assert expected["ratio_distortion"] > 0 and 0 < expected["ood_success"] < expected["success"]
    for key, v in expected.items():
        assert m[key] == pytest.approx(v, abs=1e-15), key
    assert set(pcmi.policy_metrics(lp, lb, r, ks=(2,))) == {"success", "pass@2", "correct_entropy",
                                                              "effective_correct", "ratio_distortion",
                                                              "distinct_correct@2"}
    zero = pcmi.policy_metrics(safe_log([0.0, 0.0, 1.0, 0.0]), lb, r, route, blocked, ks=(3,))  # success 0
    assert zero == {"success": 0.0, "pass@3": 0.0, "ood_success": 0.0}
