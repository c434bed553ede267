"""pcmi.demonstrations: D* (closed form vs LP vs plain numpy), the spread, proxies, on-policy rounds."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp

from pcmi import demonstrations as D
from pcmi import propositions as P
from pcmi.distributions import total_variation
from pcmi.errors import PcmiInputError
from pcmi.instance import Instance, demos_from_successes
from pcmi.metrics import ratio_distortion
from pcmi.policies import rl_optimum, sdsd_optimum
from pcmi.teachers import CopyTeacher, KernelTeacher, LatentStrategyTeacher, leaf_rows
from pcmi.testing import eps_open, extreme_log_distributions, kernel_instances, log_distributions

few = settings(max_examples=25, deadline=None)


# --- strategies -------------------------------------------------------------------------------
@st.composite
def route_copying_cases(draw, eps=eps_open, all_correct=None):
    """Route-copying instances with K = 1..4 strategies, zero-probability rollouts inside a strategy,
    one, some or all rollouts correct, and eps from `eps` (near 0 and 1 included)."""
    sizes = draw(st.lists(st.integers(1, 3), min_size=1, max_size=4))
    route = np.repeat(np.arange(len(sizes)), sizes)
    n = len(route)
    log_P = np.full((len(sizes), n), -np.inf)
    for z, m in enumerate(sizes):
        log_P[z, route == z] = draw(extreme_log_distributions(m)) if m > 1 else 0.0
    t = LatentStrategyTeacher(draw(log_distributions(n=len(sizes), min_n=1)) if len(sizes) > 1 else np.zeros(1),
                              log_P, draw(eps))
    alive = np.flatnonzero(np.isfinite(t.log_base))
    mode = draw(st.sampled_from(["all", "one", "some"])) if all_correct is None else ("all" if all_correct else "some")
    r = np.ones(n, dtype=np.int64) if mode == "all" else np.zeros(n, dtype=np.int64)
    if mode == "some":
        r = np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)), dtype=np.int64)
    r[draw(st.sampled_from(list(alive)))] = 1
    return Instance(t.log_base, r, t, demos_from_successes(t.log_base, r), route=route)


def as_kernel(inst):
    """The same instance with the teacher as an explicit matrix: dstar must take the LP route."""
    return Instance(inst.log_base, inst.reward, KernelTeacher(leaf_rows(inst.teacher, inst.n)), inst.log_demos,
                    route=inst.route)


def dense_spread(inst, log_D):
    """max − min over correct y with π0 > 0 of Σ_j D_j (log T(y|y'_j) − log π0(y)), plain numpy
    over the teacher's defining formula (pcmi.propositions.independent_teacher_rows)."""
    Dp = np.exp(log_D)
    rows = P.independent_teacher_rows(inst)
    c = (inst.reward == 1) & np.isfinite(inst.log_base)
    keep = Dp > 0
    s = (Dp[keep, None] * rows[keep][:, c]).sum(axis=0) - inst.log_base[c]
    return float(np.ptp(s)) if np.isfinite(s).all() else np.inf


def strategy_masses_of(log_D, owner, zs):
    p = np.exp(log_D)
    return np.array([p[owner == z].sum() for z in zs])


# --- the closed form --------------------------------------------------------------------------
@few
@given(route_copying_cases())
def test_closed_form_equals_lp(inst):
    """Route-copying, 0 < eps < 1: the closed form and the LP over the matrix teacher give one D*
    (the LP spreads each class of equal PCMI columns ∝ π0, so D* is unique) to 1e-8 in TV."""
    a = D.dstar(inst)
    b = D.dstar(as_kernel(inst))
    c = D.dstar(inst, method="lp")
    assert a.method == "closed_form" and b.method == "lp" and c.method == "lp"
    assert total_variation(a.log_demos, b.log_demos) <= 1e-8
    assert total_variation(a.log_demos, c.log_demos) <= 1e-8
    for d in (a, b, c):
        assert d.feasible and d.spread <= 1e-9
        assert dense_spread(inst, d.log_demos) <= 1e-9
        assert abs(dense_spread(inst, d.log_demos) - d.spread) <= 1e-9


@few
@given(route_copying_cases())
def test_closed_form_solves_the_linear_system(inst):
    """d*_z from numpy.linalg.solve of d_z·log1p((1−eps)/(eps·w_z)) = c, Σ d = 1 (independent of the
    log-space code), and D* inside a strategy ∝ π0 on its correct rollouts."""
    t = inst.teacher
    c = np.flatnonzero((inst.reward == 1) & np.isfinite(inst.log_base))
    owner = np.argmax(np.isfinite(t.log_P), axis=0)
    zs = np.unique(owner[c])
    w = np.exp(t.log_w[zs])
    L = np.log1p((1 - t.eps) / (t.eps * w))
    K = len(zs)
    A = np.zeros((K + 1, K + 1))
    A[:K, :K] = np.diag(L)
    A[:K, K] = -1.0
    A[K, :K] = 1.0
    sol = np.linalg.solve(A, np.r_[np.zeros(K), 1.0])
    got = D.dstar(inst).log_demos
    assert np.allclose(strategy_masses_of(got, owner, zs), sol[:K], atol=1e-9, rtol=0)
    for z in zs:
        m = c[owner[c] == z]
        p = np.exp(got[m])
        assert np.allclose(p / p.sum(), np.exp(inst.log_base[m] - logsumexp(inst.log_base[m])), atol=1e-12)
    assert np.all(np.isneginf(got[~np.isin(np.arange(inst.n), c)]))  # demonstrations are correct


@few
@given(route_copying_cases(all_correct=True, eps=st.one_of(st.sampled_from([1e-9, 1e-6]), st.floats(1e-4, 1 - 1e-4))))
def test_closed_form_is_label_free_when_all_correct(inst):
    """All correct: D*(y) ∝ π0(y)·(e^σ − eps)/(σ − log eps), σ(y) = log T(y|y) − log π0(y), since
    e^σ = eps + (1−eps)/w_z and σ − log eps = log(1 + (1−eps)/(eps·w_z)) (docs/theory.md, §D*)."""
    t = inst.teacher
    alive = np.isfinite(inst.log_base)
    sig = np.diag(P.independent_teacher_rows(inst))[alive] - inst.log_base[alive]
    wgt = np.exp(inst.log_base[alive] + sig) * -np.expm1(np.log(t.eps) - sig) / (sig - np.log(t.eps))
    expect = np.zeros(inst.n)
    expect[alive] = wgt / wgt.sum()
    assert np.allclose(np.exp(D.dstar(inst).log_demos), expect, atol=1e-9)


def test_worked_example():
    """theory.md §3's example, π0 = (0.5, 0.3, 0.2), eps = 0.1: d*_A/d*_B = log 31 / log 19, and the
    SDSD optimum under D* keeps the odds A:B at 5:3 where the default D sends them to 2.90."""
    lb = np.log([0.5, 0.3, 0.2])
    t = LatentStrategyTeacher.route_copying(lb, [0, 1, 2], 0.1)
    inst = Instance(lb, [1, 1, 0], t, demos_from_successes(lb, np.array([1, 1, 0])), route=np.array([0, 1, 2]))
    d = np.exp(D.dstar(inst).log_demos)
    assert d[2] == 0 and abs(d[0] / d[1] - np.log(31) / np.log(19)) <= 1e-12
    sd = np.exp(sdsd_optimum(inst.with_demos(D.dstar(inst).log_demos)))
    assert abs(sd[0] / sd[1] - 5 / 3) <= 1e-12
    default = np.exp(sdsd_optimum(inst))
    assert default[0] / default[1] > 2.8


@pytest.mark.parametrize("eps", [1.0, 1 - 1e-12])
def test_eps_one_gives_weights(eps):
    """eps = 1: T = π0, every D keeps the ratios; D* is the eps → 1 limit d_z ∝ w_z (continuous)."""
    lb = np.log([0.4, 0.1, 0.3, 0.2])
    route = np.array([0, 0, 1, 2])
    t = LatentStrategyTeacher.route_copying(lb, route, eps)
    r = np.array([1, 0, 1, 1])
    inst = Instance(lb, r, t, demos_from_successes(lb, r), route=route)
    d = D.dstar(inst)
    assert d.feasible and d.spread <= 1e-9
    assert np.allclose(np.exp(d.log_demos), [0.5, 0, 0.3, 0.2], atol=1e-9)


def test_eps_zero():
    """eps = 0: E_D PCMI(y) = −inf unless D sits on y's strategy. Correct rollouts in one strategy:
    D* = π0(·|r=1) with spread 0; in several: no D has a finite spread, a one-line error."""
    lb = np.log([0.4, 0.1, 0.3, 0.2])
    route = np.array([0, 0, 1, 2])
    t = LatentStrategyTeacher.route_copying(lb, route, 0.0)
    one = Instance(lb, [1, 1, 0, 0], t, demos_from_successes(lb, np.array([1, 1, 0, 0])), route=route)
    d = D.dstar(one)
    assert d.feasible and np.allclose(np.exp(d.log_demos), [0.8, 0.2, 0, 0])
    two = Instance(lb, [1, 0, 1, 0], t, demos_from_successes(lb, np.array([1, 0, 1, 0])), route=route)
    for method in ("auto", "lp"):
        with pytest.raises(PcmiInputError, match="no") as e:
            D.dstar(two, method=method)
        assert "\n" not in str(e.value)
    assert not P.check_p9(two).holds


def test_route_copying_dstar_inputs():
    with pytest.raises(PcmiInputError, match="eps"):
        D.route_copying_dstar([np.log(0.5)], 1.5)
    with pytest.raises(PcmiInputError, match="log w"):
        D.route_copying_dstar([0.3], 0.5)  # w = e^0.3 > 1
    with pytest.raises(PcmiInputError, match="zero"):
        D.route_copying_dstar([-np.inf], 0.5)
    out = D.route_copying_dstar([np.log(0.3), -np.inf, np.log(0.2)], 0.5)
    assert np.isneginf(out[1]) and abs(logsumexp(out)) <= 1e-15
    assert np.allclose(D.route_copying_dstar([np.log(0.7)], 1e-300), [0.0])  # K = 1


@few
@given(st.data())
def test_copy_teacher_closed_form(data):
    """A copy teacher is route-copying with one strategy per rollout and eps = 1 − lam: the closed
    form equals the LP on its matrix; lam = 0 gives π0(·|r=1); lam = 1 with two correct rollouts fails."""
    lb = data.draw(log_distributions(min_n=2, max_n=6))
    n = len(lb)
    r = np.array(data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)), dtype=np.int64)
    r[data.draw(st.integers(0, n - 1))] = 1
    lam = data.draw(st.one_of(st.just(0.0), st.floats(1e-6, 1 - 1e-6)))
    inst = Instance(lb, r, CopyTeacher(lb, lam), demos_from_successes(lb, r))
    a, b = D.dstar(inst), D.dstar(as_kernel(inst))
    assert a.method == "closed_form" and a.feasible and b.feasible
    assert total_variation(a.log_demos, b.log_demos) <= 1e-8
    if lam == 0:
        assert total_variation(a.log_demos, demos_from_successes(lb, r)) <= 1e-12
    if r.sum() >= 2:
        with pytest.raises(PcmiInputError, match="eps = 0"):
            D.dstar(Instance(lb, r, CopyTeacher(lb, 1.0), demos_from_successes(lb, r)))


# --- the LP on general teachers ---------------------------------------------------------------
@few
@given(kernel_instances(max_n=5), st.integers(0, 2**32 - 1))
def test_lp_minimizes_the_spread(inst, seed):
    """General teachers: the returned spread is the recomputed one, and no random demonstration law
    on the correct set (Dirichlet draws, the vertices, π0(·|r=1)) has a smaller spread."""
    d = D.dstar(inst)
    assert d.method in ("lp", "lp_min_spread")
    assert abs(dense_spread(inst, d.log_demos) - d.spread) <= 1e-9
    assert d.feasible == (d.spread <= D.FEASIBLE_TOL)
    c = np.flatnonzero((inst.reward == 1) & np.isfinite(inst.log_base))
    rng = np.random.default_rng(seed)
    trials = [rng.dirichlet(np.full(len(c), a)) for a in (0.2, 1.0, 5.0) for _ in range(30)] + list(np.eye(len(c)))
    with np.errstate(divide="ignore"):
        for x in trials:
            log_x = np.full(inst.n, -np.inf)
            log_x[c] = np.log(x)
            assert d.spread <= dense_spread(inst, log_x) + 1e-9
    assert np.isneginf(d.log_demos[(inst.reward == 0)]).all()


def test_lp_infeasible_and_two_point_optimum():
    """Two correct rollouts: the spread of D = (t, 1−t) is |a + b·t|, so the LP must find the root
    when it lies in [0, 1] and the better endpoint otherwise (checked by a grid)."""
    for T in ([[0.7, 0.2, 0.1], [0.3, 0.5, 0.2], [0.2, 0.2, 0.6]],  # the root lies inside: feasible
              [[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.2, 0.2, 0.6]]):  # both demonstrations favour y1: infeasible
        inst = Instance.explicit([0.5, 0.3, 0.2], [1, 1, 0], T)
        d = D.dstar(inst)
        grid = np.linspace(0, 1, 20001)
        with np.errstate(divide="ignore"):
            best = min(dense_spread(inst, np.log([t, 1 - t, 0.0])) for t in grid)
        assert d.spread <= best + 1e-12 and d.spread >= best - 1e-4
        assert d.feasible == (best <= 1e-4)
        assert d.method == ("lp" if d.feasible else "lp_min_spread")


def test_lp_excludes_demonstrations_that_rule_a_correct_rollout_out():
    """T(y|y') = 0 at a correct y makes s(y) = −inf for any D using y': such columns get no mass;
    where every column has such a zero there is no finite spread (one-line error)."""
    T = [[0.6, 0.4, 0.0], [0.5, 0.3, 0.2], [0.2, 0.2, 0.6]]
    inst = Instance.explicit([0.5, 0.3, 0.2], [1, 1, 1], T)
    d = D.dstar(inst)
    assert np.isneginf(d.log_demos[0]) and np.isfinite(d.spread)
    T_bad = [[0.6, 0.4, 0.0], [0.5, 0.5, 0.0], [0.0, 0.5, 0.5]]
    with pytest.raises(PcmiInputError, match="no finite spread") as e:
        D.dstar(Instance.explicit([0.5, 0.3, 0.2], [1, 1, 1], T_bad))
    assert "\n" not in str(e.value)


def test_dstar_bad_input():
    lb = np.log([0.5, 0.5])
    inst = Instance(lb, [1, 0], KernelTeacher(np.stack([lb, lb])), lb)
    with pytest.raises(PcmiInputError, match="method"):
        D.dstar(inst, method="simplex")
    with pytest.raises(PcmiInputError, match="closed form"):
        D.dstar(inst, method="closed_form")
    none = Instance(lb, [0, 0], KernelTeacher(np.stack([lb, lb])), lb)
    with pytest.raises(PcmiInputError, match="no correct rollout"):
        D.dstar(none)


def test_sdsd_under_dstar_keeps_rls_ratios():
    """The SDSD optimum under D*, computed independently (propositions.independent_sdsd), has RL's
    ratios among correct rollouts, on route-copying, copy and matrix teachers."""
    rng = np.random.default_rng(3)
    from pcmi import generate as gen
    for _ in range(20):
        inst = gen.route_copying_instance(rng, all_correct=False)
        for case in (inst, as_kernel(inst)):
            d = D.dstar(case)
            p = P.independent_sdsd(case.with_demos(d.log_demos))
            rl = np.exp(rl_optimum(case.log_base, case.reward, 0.5))
            c = case.reward == 1
            assert np.allclose(p[c] / p[c].sum(), rl[c] / rl[c].sum(), atol=1e-9)
            assert ratio_distortion(sdsd_optimum(case.with_demos(d.log_demos)), case.log_base, case.reward) <= 1e-8


# --- proxies ----------------------------------------------------------------------------------
@few
@given(route_copying_cases())
def test_proxy_definitions(inst):
    """inverse_prob γ = 0 is π0(·|r=1) and γ = 1 uniform on the correct set; self_pcmi γ = 1 is
    D ∝ T(y|y') on the correct set, γ = 0 the default; every proxy lives on the correct set."""
    c = (inst.reward == 1) & np.isfinite(inst.log_base)
    default = demos_from_successes(inst.log_base, inst.reward)
    assert total_variation(D.proxy_demos(inst, "inverse_prob", 0.0), default) <= 1e-12
    assert total_variation(D.proxy_demos(inst, "self_pcmi", 0.0), default) <= 1e-12
    uni = np.where(c, 1.0 / c.sum(), 0.0)
    assert np.allclose(np.exp(D.proxy_demos(inst, "inverse_prob", 1.0)), uni, atol=1e-12)
    diag = np.exp(np.diag(P.independent_teacher_rows(inst)))
    tt = np.where(c, diag, 0.0)
    assert np.allclose(np.exp(D.proxy_demos(inst, "self_pcmi", 1.0)), tt / tt.sum(), atol=1e-9)
    for kind in D.PROXY_KINDS:
        assert np.isneginf(D.proxy_demos(inst, kind)[~c]).all()


def test_self_pcmi_matches_dstar_in_both_eps_limits():
    """Route-copying, all correct: self_pcmi (γ = 1) → D* as eps → 1 (both → π0) and, more slowly
    (error O(log(1/w)/log(1/eps))), as eps → 0 (both → uniform over strategies)."""
    lb = np.log([0.5, 0.2, 0.2, 0.1])
    route = np.array([0, 0, 1, 2])
    tv = {}
    for eps in (1 - 1e-9, 1e-2, 1e-8, 1e-100, 1e-300):
        t = LatentStrategyTeacher.route_copying(lb, route, eps)
        inst = Instance(lb, np.ones(4, dtype=np.int64), t, lb, route=route)
        tv[eps] = total_variation(D.proxy_demos(inst, "self_pcmi"), D.dstar(inst).log_demos)
    assert tv[1 - 1e-9] <= 1e-8
    assert tv[1e-2] > tv[1e-8] > tv[1e-100] > tv[1e-300]
    assert tv[1e-300] <= 2 * np.log(10) / 690  # log(1/w_min)/log(1/eps)


def least_likely_by_enumeration(base, reward, G):
    """The law of the least likely success (ties: lower index) over all |Y|^G groups with ≥ 2 successes."""
    base, reward = np.asarray(base), np.asarray(reward)
    n = len(base)
    out = np.zeros(n)
    for g in itertools.product(range(n), repeat=G):
        succ = [y for y in g if reward[y] == 1 and base[y] > 0]
        if len(succ) < 2:
            continue
        pick = min(succ, key=lambda y: (base[y], y))
        out[pick] += np.prod(base[list(g)])
    return out / out.sum()


@few
@given(st.integers(2, 4), st.integers(2, 4), st.data())
def test_least_likely_by_enumeration(n, G, data):
    base = np.exp(data.draw(extreme_log_distributions(n)))
    base = np.where(base < 1e-100, 0.0, base)
    base = base / base.sum()
    if data.draw(st.booleans()):  # ties
        base = np.round(base * 4) / 4 + 1e-12
        base = base / base.sum()
    r = np.array(data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)), dtype=np.int64)
    r[int(np.argmax(base))] = 1
    with np.errstate(divide="ignore"):
        got = np.exp(D.least_likely_demos(np.log(base), r, G))
    assert np.allclose(got, least_likely_by_enumeration(base, r, G), atol=1e-12)


def test_least_likely_is_stable_for_rare_success_and_large_groups():
    """Monte Carlo check with a tolerance from the exact variance: p0 = 0.05, G = 64."""
    base = np.array([0.03, 0.015, 0.005, 0.95])
    r = np.array([1, 1, 1, 0])
    law = np.exp(D.least_likely_demos(np.log(base), r, 64))
    rng = np.random.default_rng(0)
    groups = rng.choice(4, size=(40000, 64), p=base)
    succ = np.where(r[groups] == 1, base[groups], np.inf)
    ok = (r[groups] == 1).sum(axis=1) >= 2
    picks = groups[np.arange(len(groups)), np.argmin(succ, axis=1)][ok]
    freq = np.bincount(picks, minlength=4) / ok.sum()
    sd = np.sqrt(law * (1 - law) / ok.sum())
    assert np.all(np.abs(freq - law) <= 5 * sd + 1e-12)
    assert law[3] == 0


def test_proxy_bad_input():
    lb = np.log([0.5, 0.5])
    inst = Instance(lb, [1, 1], KernelTeacher(np.stack([lb, lb])), lb)
    with pytest.raises(PcmiInputError, match="unknown proxy"):
        D.proxy_demos(inst, "rarest")
    with pytest.raises(PcmiInputError, match="gamma"):
        D.proxy_demos(inst, "self_pcmi", float("nan"))
    with pytest.raises(PcmiInputError, match="group"):
        D.proxy_demos(inst, "least_likely", group=1)
    with pytest.raises(PcmiInputError, match="max_rounds"):
        D.demo_rounds(inst, max_rounds=0)


# --- on-policy rounds -------------------------------------------------------------------------
@settings(max_examples=10, deadline=None)
@given(route_copying_cases(eps=st.floats(0.01, 0.99)))
def test_dstar_rounds_keep_ratios_every_round(inst):
    """D* recomputed each round from π_k (teacher rebuilt): every round keeps π0's ratios among
    correct rollouts; with every rollout correct the first round is already π0 (a fixed point)."""
    r = D.demo_rounds(inst, "dstar", max_rounds=30)
    for lp in r.log_pis:
        assert ratio_distortion(lp, inst.log_base, inst.reward) <= 1e-8
    assert total_variation(r.one_round, sdsd_optimum(inst.with_demos(D.dstar(inst).log_demos))) <= 1e-12
    if (inst.reward == 1).all():
        assert total_variation(r.one_round, inst.log_base) <= 1e-9 and r.converged


def test_compare_demo_laws_reports_the_default_collapse():
    """The default D collapses onto the heaviest strategy (P7), D* keeps π0's strategy masses."""
    lb = np.log([0.5, 0.3, 0.2])
    t = LatentStrategyTeacher.route_copying(lb, [0, 1, 2], 0.1)
    inst = Instance(lb, np.ones(3, dtype=np.int64), t, lb, route=np.array([0, 1, 2]))
    rep = D.compare_demo_laws(inst, max_rounds=100)
    assert set(rep) == {"dstar", *D.PROXY_KINDS}
    h0 = -(np.exp(lb) * lb).sum()
    assert abs(rep["dstar"]["fixed_point"]["strategy_mass_entropy"] - h0) <= 1e-9
    assert rep["default"]["fixed_point"]["strategy_mass_entropy"] <= 1e-6
    assert rep["dstar"]["fixed_point"]["tv_to_dstar"] == 0
    for kind in D.PROXY_KINDS:
        assert 0 <= rep[kind]["fixed_point"]["tv_to_dstar"] <= 1


@pytest.mark.parametrize("tol", [float("nan"), -1.0, float("inf")])
def test_demo_rounds_refuse_a_bad_tolerance(tol):
    """A NaN or negative tol would run every round and report 'not converged' instead of an error."""
    from pcmi.demonstrations import demo_rounds
    base = np.log([0.5, 0.3, 0.2])
    from pcmi.teachers import LatentStrategyTeacher
    from pcmi.instance import Instance, demos_from_successes
    inst = Instance(base, [1, 1, 1], LatentStrategyTeacher.route_copying(base, [0, 1, 2], 0.1),
                    demos_from_successes(base, np.array([1, 1, 1])), route=np.array([0, 1, 2]))
    with pytest.raises(PcmiInputError, match="tol must be"):
        demo_rounds(inst, "inverse_prob", tol=tol)


def test_route_copying_dstar_leaves_the_owner_teacher_without_its_law_matrix():
    """D* of a route-copying teacher reads its owner index: the (K, |Y|) matrix is never built."""
    from pcmi.demonstrations import dstar
    from pcmi.teachers import LatentStrategyTeacher
    from pcmi.instance import Instance, demos_from_successes
    base = np.log([0.4, 0.1, 0.3, 0.2])
    t = LatentStrategyTeacher.route_copying(base, [0, 0, 1, 2], 0.2)
    inst = Instance(base, [1, 1, 1, 1], t, demos_from_successes(base, np.ones(4, int)), route=np.array([0, 0, 1, 2]))
    d = dstar(inst)
    assert d.method == "closed_form" and t._log_P is None and d.spread < 1e-12
