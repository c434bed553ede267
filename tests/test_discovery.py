"""pcmi.discovery: exact test-time discovery curves against independent routes (closed forms,
sampling without replacement by permutations, numerical minimization, pcmi.estimators, Monte Carlo
with a tolerance from the exact binomial variance) and a sabotage companion for each identity."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize
from scipy.special import log_softmax

from graphworld.enumeration import PrefixTree
from pcmi import discovery as D
from pcmi.discovery import (FeedbackProblem, attempts_to_reach, best_of_n, best_of_n_attempts, discovery_curve,
                            feedback_teacher, kl_step, monte_carlo_curve, simulate_discovery)
from pcmi.errors import PcmiInputError
from pcmi.testing import extreme_log_distributions, log_distributions, prefix_trees

few = settings(max_examples=25, deadline=None)


# --- problems ----------------------------------------------------------------------------------

@st.composite
def problems(draw, max_n: int = 6, max_F: int = 3, trees: bool = False, extreme: bool = False):
    """A FeedbackProblem: π0 (zeros and 1e-300 masses when extreme), any rewards, F classes, each
    failure's own feedback incompatible with it, correct rollouts compatible with everything or not."""
    n = draw(st.integers(2, max_n))
    lp = draw(extreme_log_distributions(n) if extreme else log_distributions(n=n))
    r = np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)), dtype=np.int64)
    F = draw(st.integers(1, max_F))
    fb = np.array([draw(st.integers(-1, F - 1)) if r[y] == 0 else -1 for y in range(n)], dtype=np.int64)
    C = np.array(draw(st.lists(st.lists(st.booleans(), min_size=n, max_size=n), min_size=F, max_size=F)))
    for y in np.flatnonzero(fb >= 0):
        C[fb[y], y] = False
    if draw(st.booleans()):
        C[:, r == 1] = True  # the premise of P10: every correct rollout is compatible with every feedback
    tree = draw(prefix_trees(n)) if trees else None
    return FeedbackProblem(lp, r, fb, C, tree)


def informative_problem(w_success, w_classes):
    """One success rollout and one failure rollout per class; c_f(y) = [fb(y) ≠ f]: each feedback
    rules out exactly its own rollout (perfectly informative)."""
    w = np.r_[w_success, w_classes]
    F = len(w_classes)
    C = np.ones((F, F + 1), bool)
    C[np.arange(F), np.arange(1, F + 1)] = False
    return FeedbackProblem(np.log(w / w.sum()), np.r_[1, np.zeros(F, int)], np.r_[-1, np.arange(F)], C)


def random_problem(seed: int, n: int = 7, F: int = 3, tree: bool = False):
    """A seeded problem with failures of every class and a low-prior success (for Monte Carlo)."""
    rng = np.random.default_rng(seed)
    lp = log_softmax(rng.normal(size=n) * 1.2)
    r = np.zeros(n, int)
    r[rng.choice(n, 2, replace=False)] = 1
    fail = np.flatnonzero(r == 0)
    fb = np.full(n, -1)
    fb[fail] = np.r_[np.arange(F), rng.integers(0, F, len(fail) - F)][: len(fail)]
    fb[fail[-1]] = -1 if len(fail) > F else fb[fail[-1]]  # one failure without feedback
    C = rng.random((F, n)) < 0.6
    C[:, r == 1] = True
    for y in fail:
        if fb[y] >= 0:
            C[fb[y], y] = False
    if tree:
        parent = [-1, 0, 0, 1, 1, 2, 2, 2, 3, 3, 5, 5]  # 7 leaves at depths 2–3
        leaves = [4, 6, 7, 8, 9, 10, 11]
        t = PrefixTree(np.array(parent), np.array(leaves))
    return FeedbackProblem(lp, r, fb, C, t if tree else None)


# --- best-of-n --------------------------------------------------------------------------------

@few
@given(problems(extreme=True), st.sampled_from([0.0, 0.3, 1.0]), st.integers(1, 8))
def test_feedback_that_filters_nothing_gives_best_of_n(p, eps, n_max):
    """c_f ≡ 1 for every f: multi-turn and TTSD sample from π0 every time: 1 − (1 − p0)^n."""
    q = FeedbackProblem(p.log_pi0, p.reward, p.fb, np.ones_like(p.compatible))
    want = 1 - (1 - p.p0) ** np.arange(1, n_max + 1)
    for method, kw in (("best_of_n", {}), ("multi_turn", {"eps": eps}), ("ttsd", {"eps": eps, "kappa": 0.5})):
        c = discovery_curve(q, method, n_max, prune=0.0, **kw)
        np.testing.assert_allclose(c.discovery, want, atol=1e-12)
        assert np.all(c.pruned == 0)
    np.testing.assert_allclose(best_of_n(p.p0, n_max), want, atol=1e-12)
    # the engine's best_of_n ignores feedback that does filter
    np.testing.assert_allclose(discovery_curve(p, "best_of_n", n_max).discovery, want, atol=1e-12)


def naive_best_of_n(p0, n_max):
    return 1 - (1 - p0) ** np.arange(1, n_max + 1)


@pytest.mark.parametrize("impl, ok", [(best_of_n, True), (naive_best_of_n, False)])
def test_best_of_n_is_stable_for_tiny_p0(impl, ok):
    """1 − (1 − p0)^n = n·p0 (1 + O(n·p0)): the naive power rounds to 0 at p0 = 1e-20 (sabotage)."""
    got = impl(1e-20, 5)
    assert np.allclose(got, 1e-20 * np.arange(1, 6), rtol=1e-12, atol=0) == ok


@pytest.mark.parametrize("p0", [1e-12, 1e-4, 0.013, 0.3, 0.5, 0.99, 1.0])
@pytest.mark.parametrize("target", [0.0, 0.5, 0.9, 0.999])
def test_best_of_n_attempts_is_the_first_n_reaching_the_target(p0, target):
    n = best_of_n_attempts(p0, target)
    curve = 1 - (1 - p0) ** np.arange(1, n + 2) if n < 10**7 else None
    if curve is not None:
        assert curve[n - 1] >= target and (n == 1 or curve[n - 2] < target)
        assert attempts_to_reach(curve, target) == n
    else:  # too long to tabulate: check the boundary in 50-digit arithmetic
        mpmath = pytest.importorskip("mpmath")
        with mpmath.workdps(50):
            q = 1 - mpmath.mpf(p0)
            assert 1 - q ** n >= target > 1 - q ** (n - 1)
    assert best_of_n_attempts(0.0, 0.5) is None and attempts_to_reach([0.1, 0.2], 0.5) is None


# --- multi-turn ------------------------------------------------------------------------------

def miss_without_replacement(w_success, w_classes, n):
    """P(no success in n attempts) when every failure removes its class from the urn:
    Σ over ordered distinct (f_1..f_n) of Π_j w_{f_j} / (1 − Σ_{k<j} w_{f_k}) (weights normalized)."""
    total = w_success + sum(w_classes)
    w = [x / total for x in w_classes]
    out = 0.0
    for seq in itertools.permutations(range(len(w)), n):
        prob, used = 1.0, 0.0
        for f in seq:
            prob *= w[f] / (1 - used)
            used += w[f]
        out += prob
    return out


def forget(S, f):
    """Sabotage: a multi-turn that conditions on the last feedback only."""
    return frozenset([f])


@few
@given(st.floats(0.01, 0.5), st.lists(st.floats(0.05, 1.0), min_size=1, max_size=4))
def test_multi_turn_with_informative_feedback_samples_without_replacement(ws, wc):
    p = informative_problem(ws, wc)
    F = len(wc)
    c = discovery_curve(p, "multi_turn", F + 2, prune=0.0)
    want = [1 - miss_without_replacement(ws, wc, n) for n in range(1, F + 3)]
    np.testing.assert_allclose(c.discovery, want, atol=1e-12)
    assert c.discovery[F] == pytest.approx(1.0, abs=1e-12)  # F failures exhaust the urn


def test_sabotage_forgetful_multi_turn_is_not_without_replacement():
    ws, wc = 0.1, [0.5, 0.3, 0.1]
    p = informative_problem(ws, wc)
    want = [1 - miss_without_replacement(ws, wc, n) for n in range(1, 6)]
    good = discovery_curve(p, "multi_turn", 5).discovery
    bad = discovery_curve(p, "multi_turn", 5, remember=forget).discovery
    assert np.allclose(good, want, atol=1e-12)
    assert np.max(np.abs(bad - want)) > 0.05


def test_multi_turn_merges_histories_by_feedback_set():
    p = informative_problem(0.1, [0.3, 0.3, 0.2, 0.1])
    c = discovery_curve(p, "multi_turn", 5)
    assert list(c.n_states) == [math.comb(4, k) for k in range(1, 6)]  # subsets of size k, not 4·3·…


# --- TTSD ---------------------------------------------------------------------------------

def reversed_kl_step(log_pi, log_T, kappa):
    """Sabotage: argmin KL(T ‖ π) + κ KL(π_i ‖ π) = (T + κ π_i)/(1 + κ), the KL the wrong way round."""
    return np.logaddexp(log_T, np.log(kappa) + log_pi if kappa > 0 else np.full_like(log_pi, -np.inf)) - np.log1p(kappa)


def objective(lq, log_pi, log_T, kappa) -> float:
    """KL(q ‖ T) + κ·KL(q ‖ π_i) (+inf where q leaves the support)."""
    from pcmi.distributions import kl
    return kl(lq, log_T) + (kappa * kl(lq, log_pi) if kappa > 0 else 0.0)


def argmin_objective(log_pi, log_T, kappa):
    """argmin_q KL(q ‖ T) + κ KL(q ‖ π_i) by BFGS over logits on the common support, started at π_i."""
    on = np.isfinite(log_pi) & np.isfinite(log_T)
    a, b = log_pi[on], log_T[on]

    def obj(z):
        lq = log_softmax(z)
        q = np.exp(lq)
        return float(q @ (lq - b) + kappa * q @ (lq - a))

    z = minimize(obj, a.copy(), method="BFGS", options={"gtol": 1e-12}).x
    out = np.full(len(log_pi), -np.inf)
    out[on] = log_softmax(z)
    return out


@few
@given(log_distributions(min_n=2, max_n=5), st.data(), st.floats(0.0, 3.0), st.sampled_from([0.0, 0.2, 1.0]))
def test_kl_step_is_the_minimizer(log_pi, data, kappa, eps):
    """No law does better than the closed form (BFGS from π_i, random laws on the support), and the
    closed form is stationary: the objective grows along every small perturbation."""
    n = len(log_pi)
    c = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    log_T = feedback_teacher(log_pi, c, eps)
    got = kl_step(log_pi, log_T, kappa)
    best = objective(got, log_pi, log_T, kappa)
    assert best <= objective(argmin_objective(log_pi, log_T, kappa), log_pi, log_T, kappa) + 1e-9
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    on = np.isfinite(got)
    for _ in range(5):
        z = got.copy()
        z[on] = log_softmax(got[on] + 0.05 * rng.normal(size=on.sum()))
        assert best <= objective(z, log_pi, log_T, kappa) + 1e-12


def test_sabotage_reversed_kl_step_is_not_the_minimizer():
    log_pi = np.log([0.5, 0.3, 0.2])
    log_T = feedback_teacher(log_pi, np.array([False, True, True]), 0.2)
    best = objective(argmin_objective(log_pi, log_T, 1.0), log_pi, log_T, 1.0)
    assert objective(kl_step(log_pi, log_T, 1.0), log_pi, log_T, 1.0) <= best + 1e-9
    assert objective(reversed_kl_step(log_pi, log_T, 1.0), log_pi, log_T, 1.0) > best + 1e-3


@few
@given(problems(), st.sampled_from([0.0, 0.5, 2.0]), st.integers(1, 6))
def test_ttsd_with_an_ideal_filter_is_multi_turn(p, kappa, n_max):
    """eps = 0: log T_i = log π_i + log c_f + const, so π_{i+1} = π_i·c_f normalized for every κ."""
    mt = discovery_curve(p, "multi_turn", n_max, eps=0.0, prune=0.0)
    tt = discovery_curve(p, "ttsd", n_max, eps=0.0, kappa=kappa, prune=0.0)
    np.testing.assert_allclose(tt.discovery, mt.discovery, atol=1e-12)


def test_sabotage_reversed_kl_ttsd_is_not_multi_turn():
    p = informative_problem(0.05, [0.5, 0.3, 0.15])
    mt = discovery_curve(p, "multi_turn", 4).discovery
    bad = discovery_curve(p, "ttsd", 4, eps=0.0, kappa=1.0, step=reversed_kl_step).discovery
    assert np.allclose(discovery_curve(p, "ttsd", 4, eps=0.0, kappa=1.0).discovery, mt, atol=1e-12)
    assert np.max(np.abs(bad - mt)) > 0.1


@few
@given(st.data())
def test_batched_tabular_step_is_the_expected_gradient_step(data):
    """The vectorized step = θ − η·expected_gradient(full, α = 1, live feedback teacher) (pcmi.estimators)."""
    from pcmi.tabular import Siblings, TabularPolicy
    n = data.draw(st.integers(2, 6))
    tree = data.draw(prefix_trees(n))
    lp = data.draw(log_distributions(n=n))
    c = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    eps, eta = data.draw(st.sampled_from([0.05, 0.5, 1.0])), data.draw(st.sampled_from([0.3, 2.0]))
    sib = Siblings(tree)
    theta = TabularPolicy.from_log_probs(tree, lp, sib).theta
    want = D.tabular_step(tree, theta, c, eps, eta, sib)
    T = feedback_teacher(lp, c, eps)
    got = D.batched_tabular_step(tree, sib, theta[None, :], T[None, :], eta)[0]
    np.testing.assert_allclose(got, want, atol=1e-10)


def test_sabotage_tabular_step_without_the_prefix_weight_differs():
    """The practised token loss weighs prefix h by π(h); a step that drops that weight (G/π(h), a
    natural-gradient-like step) is a different update on a tree with depth ≥ 2, and the batched step
    is not that one."""
    from pcmi.tabular import Siblings, TabularPolicy
    p = random_problem(0, tree=True)
    sib = Siblings(p.tree)
    theta = TabularPolicy.from_log_probs(p.tree, p.log_pi0, sib).theta
    want = D.tabular_step(p.tree, theta, p.compatible[0], 0.2, 1.0, sib)
    _, lpre = D.batched_log_seq(p.tree, sib, theta[None, :])
    mu = np.exp(lpre[0, np.r_[0, p.tree.parent[1:]]])
    unweighted = theta - (theta - want) / mu
    T = feedback_teacher(p.log_pi0, p.compatible[0], 0.2)
    got = D.batched_tabular_step(p.tree, sib, theta[None], T[None], 1.0)[0]
    assert np.allclose(got, want, atol=1e-12)
    assert not np.allclose(unweighted[1:], want[1:], atol=1e-6)


def test_tabular_step_needs_a_tree_and_eps_above_zero():
    p = random_problem(1)
    with pytest.raises(PcmiInputError, match="prefix tree"):
        discovery_curve(p, "ttsd", 3, eps=0.1, step="tabular")
    with pytest.raises(PcmiInputError, match="eps > 0") as e:
        discovery_curve(random_problem(1, tree=True), "ttsd", 3, eps=0.0, step="tabular")
    assert "\n" not in str(e.value)


# --- exact against Monte Carlo --------------------------------------------------------------

R = 3000


def mc_mismatch(exact, mc, runs) -> float:
    """max over n of |MC − exact| in units of the allowed error 5·√(p(1−p)/R) + 2/R + pruned
    (the 2/R floor covers the binomial tail where p(1 − p) ≈ 0); ≤ 1 means agreement."""
    p = exact.discovery
    tol = 5 * np.sqrt(p * (1 - p) / runs) + 2 / runs + exact.pruned
    return float(np.max(np.abs(mc - p) / tol))


CASES = [("best_of_n", {}), ("multi_turn", {"eps": 0.0}), ("multi_turn", {"eps": 0.3}),
         ("ttsd", {"eps": 0.0, "kappa": 1.0}), ("ttsd", {"eps": 0.3, "kappa": 0.0}),
         ("ttsd", {"eps": 0.3, "kappa": 2.0})]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("method, kw", CASES)
def test_exact_agrees_with_monte_carlo(seed, method, kw):
    p = random_problem(seed)
    exact = discovery_curve(p, method, 6, **kw)
    mc = monte_carlo_curve(simulate_discovery(p, method, 6, R, seed=10 + seed, **kw), 6)
    assert mc_mismatch(exact, mc, R) <= 1


@pytest.mark.parametrize("batched", [False, True])
def test_exact_tabular_ttsd_agrees_with_monte_carlo(batched):
    p = random_problem(2, tree=True)
    kw = dict(eps=0.3, step="tabular", eta=3.0)
    runs = 600 if not batched else R
    exact = discovery_curve(p, "ttsd", 5, **kw)
    mc = monte_carlo_curve(simulate_discovery(p, "ttsd", 5, runs, seed=3, batched_tabular=batched, **kw), 5)
    assert mc_mismatch(exact, mc, runs) <= 1
    # and the tabular step does something: its curve is not best-of-n
    assert np.max(np.abs(exact.discovery - best_of_n(p.p0, 5))) > 0.02


@pytest.mark.parametrize("sabotage", ["forget", "reversed_kl"])
def test_sabotage_exact_with_a_wrong_update_disagrees_with_monte_carlo(sabotage):
    p = informative_problem(0.05, [0.5, 0.3, 0.15])
    method, kw = ("multi_turn", {"remember": forget}) if sabotage == "forget" else \
        ("ttsd", {"eps": 0.0, "kappa": 1.0, "step": reversed_kl_step})
    mc = monte_carlo_curve(simulate_discovery(p, method, 5, R, seed=5, eps=0.0, kappa=1.0), 5)
    assert mc_mismatch(discovery_curve(p, method, 5, eps=0.0, kappa=1.0), mc, R) <= 1
    assert mc_mismatch(discovery_curve(p, method, 5, **kw), mc, R) > 1


# --- pruning ------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(prune=1e-3), dict(prune=1e-15, max_states=5), dict(prune=0.05, max_states=3)])
def test_pruned_mass_is_reported_and_brackets_the_exact_answer(kw):
    p = random_problem(4)
    full = discovery_curve(p, "ttsd", 7, eps=0.3, kappa=1.0, prune=0.0)
    cut = discovery_curve(p, "ttsd", 7, eps=0.3, kappa=1.0, **kw)
    assert np.all(full.pruned == 0)
    assert cut.pruned[-1] > 0 and np.all(np.diff(cut.pruned) >= 0)
    assert np.all(cut.discovery <= full.discovery + 1e-12)
    assert np.all(full.discovery <= cut.upper + 1e-12)
    # mass is conserved: found + still alive + pruned = 1
    np.testing.assert_allclose(cut.discovery + np.exp(cut.log_miss) + cut.pruned, 1.0, atol=1e-12)
    assert np.max(cut.n_states) <= kw.get("max_states", D.MAX_STATES)


@few
@given(problems(extreme=True), st.sampled_from(["multi_turn", "ttsd"]), st.sampled_from([0.0, 0.4, 1.0]))
def test_curves_are_probabilities_nondecreasing_and_conserve_mass(p, method, eps):
    c = discovery_curve(p, method, 6, eps=eps)
    assert np.all(np.isfinite(c.discovery)) and np.all((c.discovery >= 0) & (c.upper <= 1))
    assert np.all(np.diff(c.discovery) >= -1e-15)
    assert c.discovery[0] == pytest.approx(p.p0, abs=1e-12)  # the first attempt is always from π0
    np.testing.assert_allclose(c.discovery + np.exp(c.log_miss) + c.pruned, 1.0, atol=1e-9)


# --- extremes ---------------------------------------------------------------------------------

ALL = [("best_of_n", {}), ("multi_turn", {"eps": 0.0}), ("multi_turn", {"eps": 1.0}),
       ("ttsd", {"eps": 0.0}), ("ttsd", {"eps": 0.5, "kappa": 0.0}), ("ttsd", {"eps": 0.5, "step": "tabular"})]


@pytest.mark.parametrize("method, kw", ALL)
def test_no_success_reachable_gives_zero_forever(method, kw):
    p = random_problem(3, tree=True)
    q = FeedbackProblem(p.log_pi0, np.zeros(p.n, int), np.where(p.fb >= 0, p.fb, 0), p.compatible, p.tree)
    c = discovery_curve(q, method, 8, **kw)
    assert np.all(c.discovery == 0) and np.all(np.isfinite(c.log_miss)) and c.pruned[-1] <= 1e-12
    assert np.all(monte_carlo_curve(simulate_discovery(q, method, 8, 50, **kw), 8) == 0)


@pytest.mark.parametrize("method, kw", ALL)
def test_certain_success_is_found_at_once(method, kw):
    p = random_problem(3, tree=True)
    lp = np.where(p.reward == 1, p.log_pi0, -np.inf)
    q = FeedbackProblem(lp - D.logsumexp(lp), p.reward, p.fb, p.compatible, p.tree)
    assert np.all(discovery_curve(q, method, 4, **kw).discovery == 1.0)


@few
@given(problems(trees=True), st.integers(1, 6))
def test_eps_one_ignores_feedback(p, n_max):
    """eps = 1: T = π, so neither multi-turn nor TTSD (either step) ever leaves π0."""
    want = best_of_n(p.p0, n_max)
    for kw in ({"method": "multi_turn"}, {"method": "ttsd", "kappa": 0.3}, {"method": "ttsd", "step": "tabular"}):
        np.testing.assert_allclose(discovery_curve(p, n_max=n_max, eps=1.0, **kw).discovery, want, atol=1e-12)


@few
@given(st.floats(0.01, 0.9), st.floats(0.0, 0.9), st.integers(1, 6))
def test_one_failure_class(p0, eps, n_max):
    """One class, all failures share it: multi-turn after the first failure samples from
    T = (1 − eps)·π0(·|c) + eps·π0, success eps·p0 + (1 − eps)·p0/π0(c) per attempt."""
    w = np.array([p0, (1 - p0) / 2, (1 - p0) / 2])
    C = np.array([[True, True, False]])  # the feedback rules out rollout 2, not rollout 1
    p = FeedbackProblem(np.log(w), np.array([1, 0, 0]), np.array([-1, 0, 0]), C)
    s = eps * p0 + (1 - eps) * p0 / (p0 + w[1])
    want = 1 - (1 - p0) * (1 - s) ** np.arange(0, n_max)
    np.testing.assert_allclose(discovery_curve(p, "multi_turn", n_max, eps=eps).discovery, want, atol=1e-12)


# --- inputs -------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, msg", [
    (lambda: FeedbackProblem(np.log([0.5, 0.5]), [1, 2], [-1, -1], np.ones((1, 2))), "reward"),
    (lambda: FeedbackProblem(np.log([0.5, 0.5]), [1, 0], [-1, 3], np.ones((1, 2))), "feedback classes must lie"),
    (lambda: FeedbackProblem(np.log([0.5, 0.5]), [1, 0], [0, 0], np.ones((1, 2))), "correct rollout"),
    (lambda: FeedbackProblem(np.log([0.5, 0.6]), [1, 0], [-1, 0], np.ones((1, 2))), "not normalized"),
    (lambda: FeedbackProblem([0.0, np.nan], [1, 0], [-1, 0], np.ones((1, 2))), "NaN"),
    (lambda: FeedbackProblem(np.log([0.5, 0.5]), [1, 0], [-1, 0], np.ones((1, 3))), "shape"),
    (lambda: discovery_curve(random_problem(0), "multi_turn", 0), "n_max"),
    (lambda: discovery_curve(random_problem(0), "multi_turn", 3, eps=1.5), "eps"),
    (lambda: discovery_curve(random_problem(0), "ttsd", 3, kappa=-1), "kappa"),
    (lambda: discovery_curve(random_problem(0), "ttsd", 3, step="adam"), "unknown TTSD step"),
    (lambda: discovery_curve(random_problem(0), "rl", 3), "unknown method"),
    (lambda: simulate_discovery(random_problem(0), "multi_turn", 3, 0), "runs"),
    (lambda: attempts_to_reach([0.1], 2.0), "target"),
])
def test_bad_input_is_one_line_error(make, msg):
    with pytest.raises(PcmiInputError, match=msg) as e:
        make()
    assert "\n" not in str(e.value)


# --- on graphs ---------------------------------------------------------------------------------

def test_path_star_multi_turn_needs_at_most_one_attempt_per_arm():
    """Path-star, no STOP: each failure is a dead end at the first node of a wrong arm; that feedback
    rules out the arm, so ideal multi-turn succeeds within `degree` attempts (sampling arms without
    replacement), while best-of-n needs far more."""
    import graphworld as gw
    from graphworld.enumeration import enumerate_rollouts
    g = gw.path_star(5, 2, seed=3)
    tasks = gw.tasks_of(g)
    ps = [D.problem_from_rollouts(enumerate_rollouts(t, gw.EdgePolicy(), pool_failures=False)) for t in tasks]
    p = min(ps, key=lambda q: q.p0)
    assert p.n_classes == 4 and np.all(p.compatible[:, p.reward == 1])  # P10's premise holds here
    arms = p.log_pi0[p.reward == 0]
    c = discovery_curve(p, "multi_turn", 6)
    assert c.discovery[4] == pytest.approx(1.0, abs=1e-12) and c.discovery[3] < 1
    np.testing.assert_allclose(c.discovery, [1 - miss_without_replacement(p.p0, list(np.exp(arms)), n)
                                             for n in range(1, 7)], atol=1e-12)
    assert best_of_n_attempts(p.p0, 0.9) > 5


def test_a_feedback_that_contradicts_everything_is_ignored_by_multi_turn_as_by_ttsd():
    """A feedback compatible with no rollout (here class 0) cannot be conditioned on: multi-turn ignores it
    (keeps what it knew) exactly as the eps = 0 TTSD step does (π(c_f) = 0 ⇒ T = π); the Monte Carlo agrees.
    With the feedback honoured by resetting to π0 instead, attempt 3 would succeed with 0.616, not 0.712."""
    p = FeedbackProblem(np.log(np.full(5, 0.2)), np.array([0, 0, 0, 1, 0]), np.array([0, 0, 0, -1, 1]),
                        np.array([[False] * 5, [False, False, False, True, False]]), None)
    mt = discovery_curve(p, "multi_turn", 3, eps=0.0, prune=0.0).discovery
    tt = discovery_curve(p, "ttsd", 3, eps=0.0, kappa=0.5, prune=0.0).discovery
    np.testing.assert_allclose(mt, tt, atol=1e-12)
    # by hand: attempt 1 succeeds w.p. 0.2; a class-0 failure (0.6) teaches nothing, a class-1 one (0.2) leaves
    # only the success; so P(2) = 0.2 + 0.6·0.2 + 0.2·1 = 0.52 and P(3) = 0.52 + 0.6·(0.6·0.2 + 0.2·1)
    np.testing.assert_allclose(mt, [0.2, 0.52, 0.712], atol=1e-12)
    first = simulate_discovery(p, "multi_turn", 3, runs=40000, seed=1)
    for n, q in zip((1, 2, 3), mt):
        assert abs(np.mean((first > 0) & (first <= n)) - q) < 5 * np.sqrt(q * (1 - q) / 40000)


@pytest.mark.parametrize("seed", [1.5, -1, True])
def test_simulation_seed_must_be_a_non_negative_integer(seed):
    p = informative_problem(0.2, [0.5, 0.3])
    with pytest.raises(PcmiInputError, match="seed must be an integer") as info:
        simulate_discovery(p, "best_of_n", 3, runs=10, seed=seed)
    assert "\n" not in str(info.value)
