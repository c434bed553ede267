"""Sabotage tests: every proposition check must FAIL when handed a plausible wrong implementation
(uniform policy, π0, a sign flip, a sharpened RL, a swapped divergence direction, token and
sequence level swapped, rounds that do not rebuild the teacher, ...), and the real
implementation must pass on the same instances. The instances are non-degenerate by
construction (distinct weights, 0 < eps < 1, failing rollouts with mass, ...) and each test
asserts it, so none of them can pass vacuously."""
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy.special import log_softmax

import graphworld as gw
from pcmi import propositions as P
from pcmi.distributions import log_normalize, total_variation
from pcmi.dynamics import on_policy_instance
from pcmi.graph_instance import graph_instance
from pcmi.instance import Instance, demos_from_successes
from pcmi.policies import (forward_kl_optimum, forward_kl_token_optimum, rl_optimum, sdsd_optimum,
                           sdsd_token_optimum)
from pcmi.scores import expected_pcmi, pcmi_matrix
from pcmi.teachers import KernelTeacher, LatentStrategyTeacher, leaf_rows
from pcmi.verify import _p4_outside

seeds = st.integers(0, 2**32 - 1)
few = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
fewer = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])  # scipy minimizer


def uniform(inst):
    return np.full(inst.n, -np.log(inst.n))


def base(inst):
    return inst.log_base


def sign_flipped(inst):
    """π0·exp(−s): the PCMI tilt the wrong way round."""
    return log_normalize(inst.log_base - expected_pcmi(inst))


def tempered(beta):
    return lambda inst: sdsd_optimum(inst, beta)


def distinct_log_dist(rng, n, step=(0.3, 1.0)):
    """A log-distribution whose log-probabilities are pairwise ≥ step[0] apart (shuffled)."""
    logits = -np.cumsum(rng.uniform(*step, size=n))
    return log_softmax(rng.permutation(logits))


def route_copying(rng, *, all_correct=True, eps=(0.05, 0.9), k=(2, 4)):
    """Disjoint strategies with distinct weights (consecutive ratio ≥ e^0.3); strategy 0 has at
    least two rollouts with distinct probabilities; failing rollouts (if any) have mass."""
    K = int(rng.integers(k[0], k[1] + 1))
    sizes = rng.integers(1, 4, size=K)
    sizes[0] = max(sizes[0], 2)
    route = np.repeat(np.arange(K), sizes)
    log_P = np.full((K, len(route)), -np.inf)
    for z in range(K):
        log_P[z, route == z] = distinct_log_dist(rng, int(sizes[z])) if sizes[z] > 1 else 0.0
    t = LatentStrategyTeacher(distinct_log_dist(rng, K), log_P, float(rng.uniform(*eps)))
    reward = np.ones(len(route), dtype=np.int64)
    if not all_correct:
        reward[rng.choice(len(route), size=max(1, len(route) // 3), replace=False)] = 0
        reward[np.argmax(route == 0)] = 1
    return Instance(t.log_base, reward, t, demos_from_successes(t.log_base, reward), route=route)


def assert_differs(inst, real, bad, by=1e-4):
    """The sabotage must show: its policy is far (in TV) from the real one on this instance."""
    assert total_variation(real(inst), bad(inst)) > by


# P1 ------------------------------------------------------------------------------------------
RL_SABOTAGE = {
    "uniform": lambda lb, r, b: np.full(len(lb), -np.log(len(lb))),
    "pi0": lambda lb, r, b: np.asarray(lb),
    "sign flip": lambda lb, r, b: log_normalize(lb - np.asarray(r) / b),
    "sharpened": lambda lb, r, b: log_normalize(1.1 * lb + np.asarray(r) / b),
    "beta doubled": lambda lb, r, b: log_normalize(lb + np.asarray(r) / (2 * b)),
}


@few
@given(seeds)
def test_p1_fails_for_wrong_rl(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 7))
    lb = distinct_log_dist(rng, n)
    r = np.ones(n, dtype=np.int64)
    r[rng.choice(n, size=int(rng.integers(1, n - 1)), replace=False)] = 0
    beta = float(rng.uniform(0.3, 3.0))
    assert (r == 1).sum() >= 2 and np.exp(lb[r == 0]).sum() > 1e-3  # ratios and a wrong mass to move
    assert P.check_p1(lb, r, beta).holds
    for name, bad in RL_SABOTAGE.items():
        assert not P.check_p1(lb, r, beta, rl=bad).holds, name


# P2 ------------------------------------------------------------------------------------------
def kernel_instance(rng):
    n = int(rng.integers(3, 6))
    lb = distinct_log_dist(rng, n)
    rows = np.stack([log_softmax(rng.normal(0, 1.5, n)) for _ in range(n)])
    r = np.ones(n, dtype=np.int64)
    r[int(rng.integers(n))] = 0
    return Instance(lb, r, KernelTeacher(rows), demos_from_successes(lb, r))


@fewer
@given(seeds, st.booleans())
def test_p2_fails_for_wrong_sdsd(seed, kernel):
    rng = np.random.default_rng(seed)
    inst = kernel_instance(rng) if kernel else route_copying(rng, all_correct=False)
    s = expected_pcmi(inst)
    assert np.ptp(s[np.isfinite(inst.log_base)]) > 1e-2  # PCMI not constant: π_SD ≠ π0
    assert P.check_p2(inst).holds
    for bad in (uniform, base, forward_kl_optimum, sign_flipped, tempered(2.0)):
        assert_differs(inst, sdsd_optimum, bad)
        assert not P.check_p2(inst, sdsd=bad).holds, bad


# P3 ------------------------------------------------------------------------------------------
def bayes_teacher(rng):
    n, K = int(rng.integers(3, 6)), int(rng.integers(2, 4))
    log_P = np.stack([log_softmax(rng.normal(0, 1.5, n)) for _ in range(K)])
    return LatentStrategyTeacher(distinct_log_dist(rng, K), log_P, 0.0)


def _pcmi_of(teacher):
    return pcmi_matrix(Instance(teacher.log_base, np.ones(teacher.n, dtype=np.int64), teacher, teacher.log_base))


PCMI_SABOTAGE = {
    "prior teacher (PCMI = 0)": lambda inst: np.zeros((inst.n, inst.n)),
    "log T without − log π0": lambda inst: leaf_rows(inst.teacher, inst.n),
    "non-Bayesian eps = 0.3": lambda inst: _pcmi_of(LatentStrategyTeacher(inst.teacher.log_w, inst.teacher.log_P, 0.3)),
    "transposed log T": lambda inst: leaf_rows(inst.teacher, inst.n).T - inst.log_base[None, :],
}


@few
@given(seeds)
def test_p3_fails_for_wrong_pcmi(seed):
    t = bayes_teacher(np.random.default_rng(seed))
    assert np.max(np.abs(_pcmi_of(t))) > 0.05  # the joint is not a product: there is PMI to get wrong
    assert P.check_p3(t).holds
    for name, bad in PCMI_SABOTAGE.items():
        assert not P.check_p3(t, pcmi=bad).holds, name


# P4 ------------------------------------------------------------------------------------------
@few
@given(seeds)
def test_p4_fails_for_wrong_sdsd(seed):
    inst = route_copying(np.random.default_rng(seed))
    res = P.check_p4(inst)
    assert res.holds and res.details["min_predicted_gap"] > 1e-4  # weights distinct, 0 < eps < 1
    sharpened = lambda i: log_normalize(2 * i.log_base)  # noqa: E731 — amplifies, but breaks inside ratios
    for bad in (uniform, base, forward_kl_optimum, tempered(2.0), tempered(0.5), sharpened):
        assert_differs(inst, sdsd_optimum, bad)
        assert not P.check_p4(inst, sdsd=bad).holds, bad


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(seeds)
def test_p4_general_fails_for_wrong_sdsd(seed):
    inst = _p4_outside(np.random.default_rng(seed))
    real = P.check_p4_general(inst)
    assume(real.holds and real.margin > 1e-6)  # the tendency holds here: only agreement can fail
    for bad in (tempered(0.5), forward_kl_optimum, lambda i: log_normalize(2 * i.log_base)):
        assume(total_variation(sdsd_optimum(inst), bad(inst)) > 1e-4)
        res = P.check_p4_general(inst, sdsd=bad)
        assert not res.holds and res.details["agrees"] is False


# P5 ------------------------------------------------------------------------------------------
def graph_case(seed, teacher):
    g = gw.multi_route_dag(2 + seed % 2, 1 + seed % 2, 2, seed=seed, n_sources=1, n_targets=1 + (seed // 2) % 2)
    s, t = g.graph["prompts"][0]
    return graph_instance(gw.Task(g, s, t, 4 + seed % 2), gw.EdgePolicy(), teacher)[0]


@few
@given(st.integers(0, 10_000), st.floats(0.2, 0.8))
def test_p5_fails_for_wrong_token_or_sequence_level(seed, lam):
    inst = graph_case(seed, {"kind": "copy", "lam": lam})
    real = P.check_p5(inst)
    assert real.holds and not real.details["z_constant"]  # Z varies: token ≠ sequence level
    assert_differs(inst, sdsd_token_optimum, sdsd_optimum)
    sabotage = {"token = uniform": {"token": uniform}, "token = π0": {"token": base},
                "token = sequence": {"token": sdsd_optimum},
                "token = forward-KL token level": {"token": forward_kl_token_optimum},
                "sequence = token": {"sequence": sdsd_token_optimum},
                "factorized = token": {"factorized": sdsd_token_optimum},
                "Z ≡ 1": {"future": lambda i: np.zeros(i.tree.n_nodes)}}
    for name, kw in sabotage.items():
        assert not P.check_p5(inst, **kw).holds, name


@few
@given(st.integers(0, 10_000), st.floats(0.05, 0.9))
def test_p5_fails_on_flat_instances_too(seed, eps):
    inst = graph_case(seed, {"kind": "route_copying", "eps": eps})
    real = P.check_p5(inst)
    assert real.holds and real.details["z_constant"]
    for bad in (uniform, base, forward_kl_token_optimum):
        assert_differs(inst, sdsd_token_optimum, bad)
        assert not P.check_p5(inst, token=bad).holds, bad


# P6 ------------------------------------------------------------------------------------------
@fewer
@given(seeds)
def test_p6_fails_for_wrong_forward_or_reverse(seed):
    t = bayes_teacher(np.random.default_rng(seed))
    inst = Instance(t.log_base, np.ones(t.n, dtype=np.int64), t, t.log_base)
    assert np.ptp(expected_pcmi(inst)) > 1e-2  # non-degenerate: PCMI not constant, so π_SD ≠ π0
    res = P.check_p6(inst)
    assert res.holds and res.details["non_degenerate"]
    for kw in ({"sdsd": base}, {"sdsd": forward_kl_optimum}, {"sdsd": uniform}, {"sdsd": tempered(2.0)},
               {"forward": sdsd_optimum}, {"forward": uniform}):
        assert not P.check_p6(inst, **kw).holds, kw


# P7 ------------------------------------------------------------------------------------------
P7_SABOTAGE = {
    "teacher not rebuilt": {"rebuild": lambda cur, lp: cur},
    "frozen teacher, new demonstrations": {"rebuild": lambda cur, lp: cur.with_demos(demos_from_successes(lp, cur.reward))},
    "tempered SDSD": {"sdsd": tempered(2.0)},
    "forward KL for SDSD": {"sdsd": forward_kl_optimum},
    "SDSD for forward KL": {"forward": sdsd_optimum},
    "sharpened RL": {"rl": lambda lp, r, b: log_normalize(1.1 * lp + np.asarray(r) / b)},
}


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seeds)
def test_p7_fails_for_wrong_rounds(seed):
    inst = route_copying(np.random.default_rng(seed), eps=(0.05, 0.4), k=(2, 3))
    w = np.sort(P._masses(inst.log_base, inst))[::-1]
    assert w[0] > 1.3 * w[1]  # a unique heaviest strategy to collapse onto
    assert P.check_p7(inst, max_rounds=60).holds
    for name, kw in P7_SABOTAGE.items():
        assert not P.check_p7(inst, max_rounds=60, **kw).holds, name


# P8 ------------------------------------------------------------------------------------------
@few
@given(seeds, st.floats(0.1, 10.0))
def test_p8_fails_for_wrong_rl_or_sdsd(seed, beta):
    inst = route_copying(np.random.default_rng(seed))
    assert P.check_p8(inst, beta).holds
    sabotage = {"sharpened RL": {"rl": lambda lb, r, b: log_normalize(1.1 * lb + np.asarray(r) / b)},
                "SDSD for RL": {"rl": lambda lb, r, b: sdsd_optimum(inst)},
                "SDSD = π0": {"sdsd": base}, "SDSD = forward KL": {"sdsd": forward_kl_optimum},
                "SDSD = uniform": {"sdsd": uniform}, "tempered SDSD": {"sdsd": tempered(2.0)}}
    assert_differs(inst, sdsd_optimum, base)
    for name, kw in sabotage.items():
        assert not P.check_p8(inst, beta, **kw).holds, name


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(seeds)
def test_p8_failures_fails_for_wrong_rl_or_sdsd(seed):
    inst = route_copying(np.random.default_rng(seed), all_correct=False)
    real = P.check_p8_failures(inst)
    assume(real is not None and real.holds and abs(real.details["beta"] - 1) > 0.05)
    assert (inst.reward == 0).any()
    sabotage = {"RL with β = 1, not matched": {"rl": lambda lb, r, b: rl_optimum(lb, r, 1.0)},
                "sharpened RL": {"rl": lambda lb, r, b: log_normalize(1.1 * lb + np.asarray(r) / b)},
                "tempered SDSD": {"sdsd": tempered(2.0)}, "SDSD = forward KL": {"sdsd": forward_kl_optimum}}
    for name, kw in sabotage.items():
        res = P.check_p8_failures(inst, **kw)
        assert res is not None and not res.holds and not res.details["agrees"], name


def test_sabotaged_on_policy_rounds_are_plausible():
    """The rebuild sabotages of P7 are valid instances (they fail on the numbers, not by crashing)."""
    inst = route_copying(np.random.default_rng(0), eps=(0.1, 0.2), k=(2, 2))
    lp = sdsd_optimum(inst)
    for kw in P7_SABOTAGE.values():
        if "rebuild" in kw:
            assert isinstance(kw["rebuild"](inst, lp), Instance)
    assert isinstance(on_policy_instance(inst, lp), Instance)


@pytest.mark.parametrize("name", list(RL_SABOTAGE))
def test_rl_sabotages_really_differ(name):
    """Each RL sabotage differs from π_RL on a plain instance (the P1 test is not vacuous)."""
    lb, r = np.log([0.5, 0.3, 0.2]), np.array([1, 1, 0])
    assert total_variation(RL_SABOTAGE[name](lb, r, 0.7), rl_optimum(lb, r, 0.7)) > 1e-3


# P9 ------------------------------------------------------------------------------------------
from pcmi import demonstrations as DEM  # noqa: E402


def _normalized(log_d):
    log_d = np.asarray(log_d, float)
    return log_d - np.logaddexp.reduce(log_d)


DSTAR_CLOSED_FORM_SABOTAGE = {
    "d* ∝ 1/w": lambda log_w, eps: _normalized(-np.asarray(log_w, float)),
    "d* ∝ log(1 + (1−eps)/(eps·w))": lambda log_w, eps: _normalized(
        np.log(np.log1p((1 - eps) / (eps * np.exp(np.asarray(log_w, float)))))),
}


def _lp_without_normalization(A):
    """The min-spread LP that forgets Σ D = 1: D = 0 has spread 0."""
    from scipy.optimize import linprog
    R, G = A.shape
    A_ub = np.block([[A, -np.ones((R, 1)), np.zeros((R, 1))], [-A, np.zeros((R, 1)), np.ones((R, 1))]])
    res = linprog(np.r_[np.zeros(G), 1.0, -1.0], A_ub=A_ub, b_ub=np.zeros(2 * R),
                  bounds=[(0, None)] * G + [(None, None)] * 2, method="highs-ds")
    return res.x[:G]


def _dstar_with_failing_demos(inst):
    """The LP with a column for every rollout π0 emits, failing ones included."""
    alive = np.flatnonzero(np.isfinite(inst.log_base))
    c = np.flatnonzero((inst.reward == 1) & np.isfinite(inst.log_base))
    M = inst.teacher.log_rows(alive)[:, c].T - inst.log_base[c][:, None]
    ok = np.isfinite(M).all(axis=0)
    A = M[:, ok] - M[:1, ok]
    x = DEM.min_spread_lp(A / np.abs(A).max())
    log_D = np.full(inst.n, -np.inf)
    with np.errstate(divide="ignore"):
        log_D[alive[ok]] = np.log(x)
    return DEM.DStar(log_D, DEM.expected_pcmi_spread(inst, log_D), True, "lp")


def _as_kernel(inst):
    return Instance(inst.log_base, inst.reward, KernelTeacher(leaf_rows(inst.teacher, inst.n)), inst.log_demos,
                    route=inst.route)


@few
@given(seeds, st.booleans())
def test_p9_fails_for_wrong_closed_form(seed, all_correct):
    """d* ∝ 1/w (the plausible 'upweight the rare strategy') and d* ∝ L instead of 1/L break P9."""
    inst = route_copying(np.random.default_rng(seed), all_correct=all_correct)
    assert P.check_p9(inst).holds
    for name, bad in DSTAR_CLOSED_FORM_SABOTAGE.items():
        wrong = DEM.dstar(inst, closed_form=bad)
        assert wrong.spread > 1e-3, name  # the sabotage really moves E_D PCMI (not vacuous)
        res = P.check_p9(inst, dstar=lambda i, bad=bad: DEM.dstar(i, closed_form=bad))
        assert not res.holds and res.details["ratio_distortion"] > 1e-3, name


@few
@given(seeds, st.booleans())
def test_p9_fails_for_an_lp_without_normalization(seed, kernel):
    inst = route_copying(np.random.default_rng(seed), all_correct=False)
    inst = _as_kernel(inst) if kernel else inst
    assert P.check_p9(inst).holds and P.check_p9(inst, dstar=lambda i: DEM.dstar(i, method="lp")).holds
    res = P.check_p9(inst, dstar=lambda i: DEM.dstar(i, method="lp", lp=_lp_without_normalization))
    assert not res.holds and res.details["normalization_error"] > 0.5


def test_p9_fails_for_an_lp_with_failing_demonstrations():
    """Wherever the LP with failing columns puts mass on a failing rollout (it finds a 'D*' of spread
    0 that way: a strategy without correct rollouts has the constant column log eps), P9 fails; the
    real D* passes on every instance; and the sabotage does put mass there on many instances."""
    caught = 0
    for seed in range(40):
        inst = route_copying(np.random.default_rng(seed), all_correct=False)
        inst = _as_kernel(inst) if seed % 2 else inst
        assert P.check_p9(inst).holds
        if not (inst.reward == 0).any():
            continue
        wrong = _dstar_with_failing_demos(inst)
        failing_mass = float(np.exp(wrong.log_demos)[inst.reward == 0].sum())
        res = P.check_p9(inst, dstar=_dstar_with_failing_demos)
        if failing_mass > 0:
            caught += 1
            assert not res.holds and res.details["mass_off_correct"] == failing_mass
    assert caught >= 10


@few
@given(seeds)
def test_p9_fails_for_wrong_sdsd(seed):
    """With D* right but the optimum wrong (uniform, the forward-KL mixture): both distort the ratios."""
    inst = route_copying(np.random.default_rng(seed), all_correct=False)
    assume(len(np.unique(inst.route[inst.reward == 1])) >= 2)  # two teachers to mix, a ratio to distort
    assert P.check_p9(inst).holds
    for bad in (uniform, forward_kl_optimum):
        res = P.check_p9(inst, sdsd=bad)
        assert not res.holds and res.details["sdsd_error"] > 1e-6 and res.details["ratio_distortion"] > 1e-6
