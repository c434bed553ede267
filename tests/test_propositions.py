"""Each proposition of theory.md §6 as a hypothesis property; the tendencies as measured rates."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pcmi import LatentStrategyTeacher
from pcmi import propositions as P
from pcmi.symbolic import all_proofs, prove_p4
from pcmi.testing import (betas, graph_instances, latent_instances, log_distributions, overlapping_laws,
                          rewards, route_copying_instances)


@given(log_distributions(), betas, st.data())
def test_p1_rl_keeps_ratios(lb, beta, data):
    r = data.draw(rewards(len(lb)))
    assert P.check_p1(lb, r, beta).holds


@given(route_copying_instances(all_correct=False))
def test_p2_pcmi_tilt(inst):
    res = P.check_p2(inst)
    assert res.holds, res.details


@given(overlapping_laws())
def test_p3_bayesian_teacher(laws):
    assert P.check_p3(LatentStrategyTeacher(laws[0], laws[1], 0.0)).holds


@given(route_copying_instances(all_correct=True))
def test_p4_gap_amplification(inst):
    res = P.check_p4(inst)
    assert res.holds, res.details


@given(graph_instances())
def test_p5_token_vs_sequence(pair):
    inst, _ = pair
    res = P.check_p5(inst)
    assert res.holds, res.details


def test_p5_both_directions_occur():
    """The copy teacher on a branching graph makes Z vary (π_tok ≠ π_SD); route-copying keeps it flat."""
    import graphworld as gw
    from pcmi import graph_instance
    g = gw.multi_route_dag(2, 2, 2, seed=0, n_sources=1, n_targets=2)
    task = gw.Task(g, 0, g.graph["prompts"][0][1], 4)
    varied = P.check_p5(graph_instance(task, gw.EdgePolicy(), {"kind": "copy", "lam": 0.7})[0])
    flat = P.check_p5(graph_instance(task, gw.EdgePolicy(), {"kind": "route_copying", "eps": 0.2})[0])
    assert varied.holds and not varied.details["z_constant"] and varied.details["tv_token_vs_sequence"] > 1e-3
    assert flat.holds and flat.details["z_constant"]


@given(latent_instances(eps=st.just(0.0), all_correct=True))
def test_p6_forward_vs_reverse(inst):
    res = P.check_p6(inst)
    assert res.holds, res.details


@settings(max_examples=15)
@given(route_copying_instances(all_correct=True, eps=st.floats(0.01, 0.9)))
def test_p7_collapse(inst):
    w = np.sort(P._masses(inst.log_base, inst))[::-1]
    if w[0] < 1.1 * w[1]:
        return
    res = P.check_p7(inst)
    assert res.holds, res.details


@given(route_copying_instances(all_correct=True), betas)
def test_p8_diversity_cost(inst, beta):
    res = P.check_p8(inst, beta)
    assert res.holds, res.details


def test_tendencies_are_measured_not_assumed():
    """P4 outside its conditions and P8 with failures: the search reports rates and a real
    counterexample (theory.md says P8 fails on a few percent of random small instances)."""
    from pcmi.verify import ROWS
    rows = {name: (make, check) for name, _, _, make, check in ROWS}
    for name in ("P4-outside", "P8-failures"):
        make, check = rows[name]
        rep = P.search_counterexamples(name, "tendency", make, check, 150, np.random.default_rng(1))
        assert 0.5 < rep.hold_rate < 1.0, rep
        assert rep.counterexample is not None and rep.counterexample["margin"] < 0
        ce = json.loads(json.dumps(rep.counterexample))
        assert ce["n"] >= 2 and len(ce["instance"]["base"]) == ce["n"]


def test_symbolic_proofs_go_through():
    proofs = all_proofs()
    assert len(proofs) == 6 and all(p.proved for p in proofs), [(p.name, p.steps) for p in proofs]


def test_symbolic_checker_rejects_a_false_identity():
    """The identity checker is not vacuous: a false identity is not reduced to 0."""
    import sympy as sp
    import pcmi.symbolic as S
    wa = sp.Symbol("w_a", positive=True)
    assert prove_p4(2).proved
    assert not S._zero(sp.log(wa) - sp.log(2 * wa))


def _explicit(route=None):
    from pcmi import Instance
    return Instance.explicit([0.5, 0.3, 0.2], [1, 1, 1], [[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4]],
                             route=route)


def test_checks_name_missing_preconditions():
    """A check whose conditions the instance lacks raises a one-line PcmiInputError naming them."""
    import pytest
    from pcmi.errors import PcmiInputError
    no_route = _explicit()
    for check, what in ((P.check_p8, "route"), (P.check_p4, "route"), (P.check_p7, "route"),
                        (P.check_p4_general, "route"), (P.check_p8_failures, "route"),
                        (P.check_p6, "Bayesian")):
        with pytest.raises(PcmiInputError, match=what) as err:
            check(no_route)
        assert "\n" not in str(err.value)
    kernel = _explicit(route=[0, 0, 1])
    for check in (P.check_p4, P.check_p7, P.check_p8):
        with pytest.raises(PcmiInputError, match="route-copying"):
            check(kernel)
    with pytest.raises(PcmiInputError, match="eps = 0"):
        P.check_p3(LatentStrategyTeacher(np.log([0.5, 0.5]), np.log([[0.9, 0.1], [0.2, 0.8]]), 0.3))
    gen_rng = np.random.default_rng(0)
    from pcmi import generate as gen
    failing = gen.route_copying_instance(gen_rng, all_correct=False)
    failing.reward[0] = 0
    with pytest.raises(PcmiInputError, match="every rollout correct"):
        P.check_p4(failing)


def test_p4_general_and_p8_failures_run_on_explicit_instances():
    """The tendency checks need only a route: they run on a plain teacher matrix."""
    inst = _explicit(route=[0, 0, 1])
    assert P.check_p4_general(inst).details["agrees"]
    res = P.check_p8_failures(inst)
    assert res is None  # all correct: no β matches SDSD's success


@given(latent_instances(eps=st.just(0.0), all_correct=True))
def test_p6_non_degenerate_means_sdsd_moves(inst):
    """P6's second half: when E_D PCMI is not constant on supp π0, π_SD ≠ π0 (and it is checked)."""
    res = P.check_p6(inst)
    assert res.holds
    if res.details["pcmi_spread"] > 1e-6:
        assert res.details["non_degenerate"] and res.details["tv_sdsd_base"] > 0


# Helpers and reported details on tiny fixed instances (mutation testing, issue 8) -----------
# Every expected value below is rebuilt by hand or by direct numpy from the defining formula
# (theory.md §1, §3, §6), never copied from the implementation's output.
import json
import math
from types import SimpleNamespace

import pytest

from pcmi import CopyTeacher, Instance
from pcmi.errors import PcmiInputError
from pcmi.instance import demos_from_successes
from pcmi.policies import rl_optimum, sdsd_optimum, sdsd_token_optimum

EPS = 0.2
W = np.array([0.7, 0.3])                        # strategy weights
PZ = np.array([[0.6, 0.4, 0.0], [0.0, 0.0, 1.0]])  # disjoint strategy laws, route = [0, 0, 1]
BASE = W @ PZ                                   # π0 = [0.42, 0.28, 0.30]
PZ_B = np.array([[0.6, 0.3, 0.1], [0.2, 0.3, 0.5]])  # overlapping laws (Bayesian teacher, w = ½, ½)


def _rc(eps=EPS):
    """Route-copying, all correct, D = π0: T(y|y'_j) = (1−eps)·P_{z(j)}(y) + eps·π0(y)."""
    with np.errstate(divide="ignore"):
        t = LatentStrategyTeacher(np.log(W), np.log(PZ), eps)
    return Instance(t.log_base, np.ones(3, dtype=np.int64), t, t.log_base, route=np.array([0, 0, 1]))


def _rc_rows(eps=EPS):
    return (1 - eps) * PZ[[0, 0, 1]] + eps * BASE[None, :]


def _rc_sdsd(eps=EPS):
    """π_SD(y) ∝ Π_j T(y | y'_j)^{D_j} with D = π0, by direct numpy."""
    p = np.prod(_rc_rows(eps) ** BASE[:, None], axis=0)
    return p / p.sum()


def _ent(p):
    return -sum(x * math.log(x) for x in p if x > 0)


def test_independent_rows_and_sdsd_match_the_hand_built_teacher():
    inst = _rc()
    assert np.allclose(np.exp(P.independent_teacher_rows(inst)), _rc_rows(), atol=1e-14)
    assert np.allclose(P.independent_sdsd(inst), _rc_sdsd(), atol=1e-14)
    assert np.allclose(P.independent_forward(inst), BASE @ _rc_rows(), atol=1e-14)
    copy = CopyTeacher(np.log(BASE), 0.5)
    cinst = Instance(copy.log_base, np.ones(3, dtype=np.int64), copy, copy.log_base)
    assert np.allclose(np.exp(P.independent_teacher_rows(cinst)), 0.5 * np.eye(3) + 0.5 * BASE[None, :], atol=1e-14)


def test_independent_rl_closed_form_by_hand():
    lb, r, beta = np.log([0.5, 0.3, 0.2]), np.array([1, 0, 1]), 0.5
    d = math.exp(-1 / beta)
    want = np.array([0.5, 0.3 * d, 0.2]) / (0.7 + 0.3 * d)
    assert np.allclose(P.independent_rl(lb, r, beta), want, atol=1e-15)
    assert np.allclose(P.independent_rl(lb, np.zeros(3, int), beta), [0.5, 0.3, 0.2], atol=1e-15)  # no correct rollout


def test_masses_entropy_and_max_abs_by_hand():
    p, reward, route = [0.1, 0.2, 0.3, 0.4], np.array([1, 0, 1, 1]), np.array([5, 0, 1, 1])
    # strategies present among the correct rollouts, ordered by label: 1 → 0.7, 5 → 0.1
    assert np.allclose(P._masses_of(p, reward, route), [0.7 / 0.8, 0.1 / 0.8], atol=1e-15)
    inst = SimpleNamespace(reward=reward, route=route)
    assert np.allclose(P._masses(np.log(p), inst), [0.7 / 0.8, 0.1 / 0.8], atol=1e-15)
    assert P._entropy([0.5, 0.5, 0.0]) == pytest.approx(math.log(2), abs=1e-15)
    assert P._max_abs([1.0, 2.0], [1.0, 2.5]) == pytest.approx(0.5)
    assert P._max_abs([1.0, 2.0], [1.0, 2.0]) == 0.0


def test_route_copying_masses_equal_the_sdsd_masses_by_hand():
    sd = _rc_sdsd()
    want = [sd[0] + sd[1], sd[2]]
    assert np.allclose(P.route_copying_masses(W, [0.7, 0.3], EPS), want, atol=1e-13)
    m = P.route_copying_masses([0.7, 0.0, 0.3], [0.7, 0.0, 0.3], EPS)  # a weightless strategy keeps mass 0
    assert m[1] == 0.0 and np.allclose(m[[0, 2]], want, atol=1e-13)


def test_reverse_kl_objective_and_minimizer_by_hand():
    T = np.array([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])
    w = np.array([0.25, 0.75])
    s = np.array([0.6, 0.4, 0.0])
    with np.errstate(divide="ignore"):
        log_s = np.log(s)
    kl_c = [sum(s[i] * math.log(s[i] / T[c, i]) for i in range(2)) for c in range(2)]
    assert P.reverse_kl_objective(log_s, w, np.log(T)) == pytest.approx(w @ kl_c, abs=1e-14)
    zero = T.copy()
    zero[1, 0] = 0.0
    with np.errstate(divide="ignore"):
        assert P.reverse_kl_objective(log_s, w, np.log(zero)) == math.inf  # π puts mass where T_c has none
    g = np.exp(w @ np.log(T))
    assert np.allclose(np.exp(P.minimize_reverse_kl(w, np.log(T))), g / g.sum(), atol=1e-9)
    with np.errstate(divide="ignore"):
        sparse = np.log([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]])
    out = P.minimize_reverse_kl(w, sparse)  # only rollout 1 lies in every teacher's support
    assert out[0] == out[2] == -np.inf and out[1] == pytest.approx(0.0, abs=1e-15)
    with np.errstate(divide="ignore"):
        disjoint = np.log([[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(PcmiInputError, match="infinite"):
        P.minimize_reverse_kl([0.5, 0.5], disjoint)


def test_p1_details_measure_a_wrong_rl():
    lb, r, beta = np.log([0.5, 0.3, 0.2]), np.array([1, 1, 0]), 0.7
    bad = lambda lb_, r_, b_: np.log(np.array([0.6, 0.3, 0.1]))  # noqa: E731
    res = P.check_p1(lb, r, beta, rl=bad)
    d = math.exp(-1 / beta)
    want = np.array([0.5, 0.3, 0.2 * d]) / (0.8 + 0.2 * d)
    assert not res.holds
    assert res.details["max_log_ratio_error"] == pytest.approx(abs(math.log(2) - math.log(5 / 3)), abs=1e-12)
    assert res.details["direct_error"] == pytest.approx(np.max(np.abs(want - [0.6, 0.3, 0.1])), abs=1e-12)
    assert res.details["beta"] == beta
    tol = 1e-9 * (1 + math.log(5))
    assert res.margin == pytest.approx(min(tol - res.details["max_log_ratio_error"], 1e-12 - res.details["direct_error"]),
                                       abs=1e-12)


def test_p3_handles_a_zero_probability_rollout_and_names_its_conditions():
    with np.errstate(divide="ignore"):
        t = LatentStrategyTeacher(np.log([0.5, 0.5]), np.log([[0.6, 0.4, 0.0], [0.3, 0.7, 0.0]]), 0.0)
    res = P.check_p3(t)
    assert res.holds and res.details["pattern_ok"], res.details
    bad_t = LatentStrategyTeacher(np.log([0.5, 0.5]), np.log([[0.9, 0.1], [0.2, 0.8]]), 0.3)
    with pytest.raises(PcmiInputError, match="Bayesian") as err:
        P.check_p3(bad_t)
    assert "eps = 0.3" in str(err.value)


def test_p3_blames_an_asymmetric_support_on_the_pattern():
    """A PCMI that is −inf on (0, 1) but finite on (1, 0) fails on its pattern; the symmetry
    error is measured over the entries finite both ways, so it stays that of the real values."""
    t = LatentStrategyTeacher(np.log([0.5, 0.5]), np.log([[0.6, 0.3, 0.1], [0.2, 0.3, 0.5]]), 0.0)

    def holed(inst):
        from pcmi.scores import pcmi_matrix
        M = pcmi_matrix(inst).copy()
        M[0, 1] = -np.inf
        return M
    res = P.check_p3(t, pcmi=holed)
    assert not res.holds and res.details["pattern_ok"] is False
    assert res.details["symmetry_error"] <= 1e-8


def test_p4_details_are_the_hand_computed_gaps():
    res = P.check_p4(_rc())
    sd = _rc_sdsd()
    m = [sd[0] + sd[1], sd[2]]
    phi = W * np.log1p((1 - EPS) / (EPS * W))
    assert res.holds
    assert np.allclose(res.details["base_masses"], W, atol=1e-14)
    assert np.allclose(res.details["sdsd_masses"], m, atol=1e-12)
    assert res.details["gaps"] == pytest.approx([math.log(m[0] / m[1]) - math.log(0.7 / 0.3)], abs=1e-10)
    assert res.details["min_gap"] == pytest.approx(res.details["gaps"][0])
    assert res.details["min_predicted_gap"] == pytest.approx(phi[0] - phi[1], abs=1e-12)
    assert res.details["closed_form_error"] <= 1e-12 and res.details["inside_ratio_error"] <= 1e-9
    assert res.details["eps"] == EPS
    # a policy that keeps π0 has no amplification: its gap is 0 and P4 fails on it
    amp = P.amplification(_rc(), _rc().log_base)
    assert amp["min_gap"] == pytest.approx(0.0, abs=1e-12)
    assert P.amplification(_rc())["sdsd_masses"] == pytest.approx(m, abs=1e-12)  # default: π_SD


def test_p4_general_names_its_check_and_reports_agreement():
    with pytest.raises(PcmiInputError, match="P4_general"):
        P.check_p4_general(_explicit())
    res = P.check_p4_general(_rc(), sdsd=lambda i: i.log_base)
    assert not res.holds and res.details["agrees"] is False
    assert res.details["sdsd_error"] == pytest.approx(np.max(np.abs(_rc_sdsd() - BASE)), abs=1e-12)
    assert res.margin == pytest.approx(min(res.details["min_gap"], P.TOL - res.details["sdsd_error"]), abs=1e-15)


def test_p6_names_its_conditions_and_accepts_a_degenerate_instance():
    with pytest.raises(PcmiInputError, match="P6"):
        P.check_p6(_explicit())
    t = LatentStrategyTeacher(np.log([0.5, 0.5]), np.log([[0.6, 0.3, 0.1], [0.2, 0.3, 0.5]]), 0.0)
    failing = Instance(t.log_base, np.array([1, 1, 0]), t, demos_from_successes(t.log_base, np.array([1, 1, 0])))
    with pytest.raises(PcmiInputError, match="P6"):
        P.check_p6(failing)
    # one strategy: PCMI ≡ 0, π_SD = π0 exactly, so π0 is a correct answer
    one = LatentStrategyTeacher([0.0], np.log([[0.5, 0.3, 0.2]]), 0.0)
    inst = Instance(one.log_base, np.ones(3, dtype=np.int64), one, one.log_base)
    res = P.check_p6(inst, sdsd=lambda i: i.log_base)
    assert res.holds and not res.details["non_degenerate"] and res.details["pcmi_spread"] <= 1e-12


def test_p6_details_measure_a_wrong_forward_optimum():
    t = LatentStrategyTeacher(np.log([0.5, 0.5]), np.log(PZ_B), 0.0)
    inst = Instance(t.log_base, np.ones(3, dtype=np.int64), t, t.log_base)
    b = np.exp(t.log_base)
    res = P.check_p6(inst, forward=lambda i: np.full(3, -np.log(3)))
    assert not res.holds and res.details["fwd_error"] == pytest.approx(np.max(np.abs(b - 1 / 3)), abs=1e-12)
    assert res.details["sdsd_error"] <= 1e-7
    T = 0.5 * (PZ_B[0][:, None] * PZ_B[0][None, :] + PZ_B[1][:, None] * PZ_B[1][None, :]) / b[:, None]
    s = b @ np.log(T) - np.log(b)  # E_D PCMI(y; y') with D = π0
    assert res.details["pcmi_spread"] == pytest.approx(s.max() - s.min(), abs=1e-12)
    assert res.details["non_degenerate"] and res.details["tv_sdsd_base"] > 0


def test_p7_details_on_a_fast_collapse():
    res = P.check_p7(_rc(0.1), max_rounds=40)
    assert res.holds, res.details
    d = res.details
    assert d["entropy"][0] == pytest.approx(_ent(W), abs=1e-12)
    assert d["rounds"] >= 8 and d["reached"] and d["final_top_mass"] >= 1 - 1e-6
    assert d["max_entropy_rise"] <= 1e-9 and d["ratio_drift_fwd_rl"] <= 1e-8 and d["closed_form_round_error"] <= 1e-8
    swapped = P.check_p7(_rc(0.1), max_rounds=40, forward=sdsd_optimum)  # "forward-KL" rounds that amplify
    assert not swapped.holds and swapped.details["ratio_drift_fwd_rl"] > 0.1


def test_p7_certifies_the_limit_when_rounds_run_out():
    """Three rounds at eps = 0.8 do not reach the heaviest strategy: the rising log-odds gains certify it."""
    res = P.check_p7(_rc(0.8), max_rounds=3)
    assert res.holds, res.details
    assert res.details["rounds"] == 3 and not res.details["reached"]
    assert res.details["certified_by_rising_gains"] and res.margin > 0


def test_p8_details_by_hand():
    beta = 0.5
    res = P.check_p8(_rc(), beta)
    sd = _rc_sdsd()
    m = [sd[0] + sd[1], sd[2]]
    d = res.details
    assert res.holds
    assert np.allclose(d["rl_masses"], W, atol=1e-12) and np.allclose(d["sdsd_masses"], m, atol=1e-12)
    assert d["H_rl"] == pytest.approx(_ent(W), abs=1e-12) and d["H_sdsd"] == pytest.approx(_ent(m), abs=1e-12)
    assert d["ood_rl"] == pytest.approx(0.3, abs=1e-12) and d["ood_sdsd"] == pytest.approx(m[1], abs=1e-12)  # strategy 0 blocked
    assert d["success_rl"] == pytest.approx(1.0) and d["success_sdsd"] == pytest.approx(1.0)
    assert d["beta"] == beta
    assert d["rl_mass_drift"] <= 1e-12 and d["closed_form_error"] <= 1e-12 and d["independent_error"] <= 1e-12
    assert not {"log_rl", "log_sdsd", "blocked"} & set(d)  # no per-rollout arrays in the public details
    json.dumps(P._jsonable(d))
    bad = P.check_p8(_rc(), beta, sdsd=lambda i: i.log_base)
    assert not bad.holds and bad.details["closed_form_error"] == pytest.approx(abs(m[0] - 0.7), abs=1e-12)


def _rc_failing():
    """Route-copying with a failing rollout (index 0, mass 0.42): SDSD's success 0.642 > p0 = 0.58."""
    with np.errstate(divide="ignore"):
        t = LatentStrategyTeacher(np.log(W), np.log(PZ), EPS)
    r = np.array([0, 1, 1])
    return Instance(t.log_base, r, t, demos_from_successes(t.log_base, r), route=np.array([0, 0, 1]))


def test_p8_failures_matches_successes_and_names_its_check():
    with pytest.raises(PcmiInputError, match="P8_failures"):
        P.check_p8_failures(_explicit())
    inst = _rc_failing()
    res = P.check_p8_failures(inst)
    p0 = 0.58
    D = np.array([0.0, 0.28, 0.30]) / 0.58
    g = np.prod(_rc_rows() ** D[:, None], axis=0)
    p_sd = float(g[1:].sum() / g.sum())
    assert res is not None and p0 < p_sd < 1
    d = res.details
    assert d["agrees"] and d["independent_error"] <= 1e-9
    assert d["success_rl"] == pytest.approx(p_sd, abs=1e-9) and d["success_sdsd"] == pytest.approx(p_sd, abs=1e-12)
    # β matched: π0·exp(r/β)/Z has success p_sd, i.e. p0 / (p0 + (1 − p0)·e^{−1/β}) = p_sd
    assert p0 / (p0 + (1 - p0) * math.exp(-1 / d["beta"])) == pytest.approx(p_sd, abs=1e-9)
    want_margin = min(d["H_rl"] - d["H_sdsd"], d["ood_rl"] - d["ood_sdsd"])
    assert res.margin == pytest.approx(want_margin, abs=1e-15) and res.holds == (want_margin >= -1e-12)
    bad = P.check_p8_failures(inst, rl=lambda lb, r, b: rl_optimum(lb, r, 1.0))
    assert not bad.holds and not bad.details["agrees"] and bad.margin <= P.TOL - bad.details["independent_error"]


def test_z_spread_formula_on_a_hand_built_tree():
    """max_h π_SD(h)·(max_a log Z(h·a) − min_a log Z(h·a)) over children a with finite g, at reached h."""
    bf = {"kids": [[1, 2], [3, 4, 5], [6, 7], [], [], [], [], []],
          "log_reach_sdsd": np.array([0.0, np.log(0.5), -np.inf, np.log(0.25), np.log(0.25), -np.inf, -np.inf, -np.inf]),
          "log_Z": np.array([0.0, 0.0, 0.8, 0.0, 0.6, 9.0, 0.0, 5.0]),
          "g": np.array([0.0, 0.0, 0.0, 0.0, 0.0, -np.inf, 0.0, 0.0])}
    # root: 1·|0.8 − 0| = 0.8; node 1: 0.5·|0.6 − 0| = 0.3 (child 5 has g = −inf); node 2 unreached
    assert P._z_spread(bf) == pytest.approx(0.8)
    bf["log_Z"][2] = 0.1
    assert P._z_spread(bf) == pytest.approx(0.3)
    bf["log_Z"][4] = 0.0
    assert P._z_spread(bf) == pytest.approx(0.1)


def test_instance_json_round_trips():
    inst = _rc()
    js = json.loads(json.dumps(P.instance_json(inst, beta=0.5)))
    assert js["beta"] == 0.5 and js["route"] == [0, 0, 1] and js["reward"] == [1, 1, 1]
    assert np.allclose(js["base"], BASE) and np.allclose(js["demos"], BASE) and np.allclose(js["teacher"], _rc_rows())
    back = Instance.explicit(js["base"], js["reward"], js["teacher"], js["demos"], route=js["route"])
    assert np.allclose(P.independent_sdsd(back), _rc_sdsd(), atol=1e-12)
    assert "beta" not in P.instance_json(inst)
    lb = np.log([0.5, 0.3, 0.2])
    p1 = P.instance_json((lb, np.array([1, 0, 1]), 0.7))
    assert np.allclose(p1["base"], [0.5, 0.3, 0.2]) and p1["reward"] == [1, 0, 1] and p1["beta"] == 0.7
    assert np.allclose(p1["teacher"], [[0.5, 0.3, 0.2]] * 3)
    t = LatentStrategyTeacher(np.log([0.5, 0.5]), np.log(PZ_B), 0.0)
    p3 = P.instance_json(t)  # P3's teacher: all correct, D = π0
    b = 0.5 * PZ_B.sum(axis=0)
    assert np.allclose(p3["base"], b) and np.allclose(p3["demos"], b) and p3["reward"] == [1, 1, 1]
    assert np.allclose(p3["teacher"], np.exp(P.independent_teacher_rows(Instance(t.log_base, np.ones(3, int), t, t.log_base))))


def test_describe_and_jsonable():
    named = Instance(np.log(BASE), np.ones(3, dtype=np.int64), _rc().teacher, np.log(BASE), name="tiny")
    assert P.describe(named) == {"name": "tiny", "n": 3}
    assert P.describe((np.zeros(4), None, 1.0))["n"] == 4
    out = P._jsonable({1: np.float64(1.5), "b": np.int64(2), "c": np.array([1.0, 2.0]), "d": (np.bool_(True), None)})
    assert out == {"1": 1.5, "b": 2, "c": [1.0, 2.0], "d": [True, None]}
    assert type(out["1"]) is float and type(out["b"]) is int and type(out["d"][0]) is bool
    assert P._floats(np.array([1, 2])) == [1.0, 2.0]


def test_search_counterexamples_counts_and_keeps_the_smallest_failure():
    """Scripted checks: None is skipped (the loop goes on), failures keep the fewest rollouts."""
    script = iter([None, P.Result(True, 0.5), P.Result(False, -0.1), None, P.Result(False, -0.2, {"agrees": False}),
                   P.Result(True, 0.1)])
    sizes = iter([3, 3, 4, 3, 2, 5])

    def make(rng):
        n = next(sizes)
        return (np.log(np.full(n, 1 / n)), np.ones(n, dtype=np.int64), 1.0)
    rep = P.search_counterexamples("demo", "tendency", make, lambda inst: next(script), 6, None)
    assert (rep.name, rep.kind, rep.tried, rep.held, rep.skipped, rep.disagreements) == ("demo", "tendency", 4, 2, 2, 1)
    assert rep.smallest_margin == pytest.approx(-0.2) and rep.hold_rate == 0.5
    ce = rep.counterexample
    assert ce["n"] == 2 and ce["margin"] == pytest.approx(-0.2) and ce["details"] == {"agrees": False}
    assert len(ce["instance"]["base"]) == 2
    empty = P.search_counterexamples("none", "universal", make, lambda inst: None, 0, None)
    assert empty.tried == 0 and empty.counterexample is None and math.isnan(empty.hold_rate)


def test_undefined_optima_and_unmet_conditions_are_named():
    """Two demonstrations that each rule the other's rollout out: no optimum exists."""
    clash = Instance.explicit([0.5, 0.5], [1, 1], [[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(PcmiInputError, match=r"E_D log T\(y \| y'\) is −inf for every rollout"):
        P.independent_sdsd(clash)
    with pytest.raises(PcmiInputError, match="every next token is ruled out by some demonstration"):
        P.independent_token_level(clash)
    kernel = _explicit(route=[0, 0, 1])
    with pytest.raises(PcmiInputError, match="KernelTeacher"):
        P.check_p8(kernel)
    with np.errstate(divide="ignore"):
        sure = LatentStrategyTeacher(np.log(W), np.log(PZ), 1.0)
    with pytest.raises(PcmiInputError, match="0 < eps < 1"):
        P.check_p4(Instance(sure.log_base, np.ones(3, dtype=np.int64), sure, sure.log_base, route=np.array([0, 0, 1])))
    merged = Instance(_rc().log_base, np.ones(3, dtype=np.int64), _rc().teacher, _rc().log_base, route=np.array([0, 0, 0]))
    with pytest.raises(PcmiInputError, match="route labels to be the teacher's strategies"):
        P.check_p4(merged)  # one label for two strategies
    split = Instance(_rc().log_base, np.ones(3, dtype=np.int64), _rc().teacher, _rc().log_base, route=np.array([0, 1, 2]))
    with pytest.raises(PcmiInputError, match="route labels to be the teacher's strategies"):
        P.check_p4(split)  # two labels for one strategy


def _kernel_rows():
    return np.array([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6]])


def test_p2_details_by_hand():
    inst = Instance.explicit(BASE, [1, 1, 1], _kernel_rows())
    g = np.prod(_kernel_rows() ** BASE[:, None], axis=0)
    sd = g / g.sum()
    real = P.check_p2(inst)
    f = lambda p: float(sum(BASE[j] * np.sum(p * np.log(p / _kernel_rows()[j])) for j in range(3)))  # noqa: E731
    assert real.holds and real.details["max_abs_error"] <= 1e-9
    assert real.details["objective_closed"] == pytest.approx(f(sd), abs=1e-12)
    assert real.details["objective_numeric"] == pytest.approx(f(sd), abs=1e-12)
    bad = P.check_p2(inst, sdsd=lambda i: np.full(3, -np.log(3)))
    assert not bad.holds
    assert bad.details["max_abs_error"] == pytest.approx(np.max(np.abs(sd - 1 / 3)), abs=1e-9)
    assert bad.details["objective_closed"] == pytest.approx(f(np.full(3, 1 / 3)), abs=1e-12)
    assert bad.margin == pytest.approx(1e-7 - bad.details["max_abs_error"], abs=1e-15)


def test_p5_details_name_each_disagreement():
    import graphworld as gw
    from pcmi import graph_instance
    from pcmi.distributions import total_variation
    g = gw.multi_route_dag(2, 2, 2, seed=0, n_sources=1, n_targets=2)
    inst = graph_instance(gw.Task(g, 0, g.graph["prompts"][0][1], 4), gw.EdgePolicy(), {"kind": "copy", "lam": 0.7})[0]
    real = P.check_p5(inst)
    d = real.details
    assert real.holds and max(d["token_error"], d["sequence_error"], d["relation_error"], d["log_Z_error"]) <= 1e-9
    uni = lambda i: np.full(i.n, -np.log(i.n))  # noqa: E731
    far = np.max(np.abs(P.independent_sdsd(inst) - 1 / inst.n))
    assert d["tv_token_vs_sequence"] == pytest.approx(
        total_variation(sdsd_token_optimum(inst), sdsd_optimum(inst)), abs=1e-15)
    for kw, key in (({"token": uni}, "token_error"), ({"sequence": uni}, "sequence_error"),
                    ({"factorized": uni}, "relation_error")):
        bad = P.check_p5(inst, **kw)
        assert not bad.holds and bad.details[key] > 1e-3, kw
    assert P.check_p5(inst, factorized=uni).details["relation_error"] == pytest.approx(far, abs=1e-12)
    flat = P.check_p5(inst, future=lambda i: np.zeros(i.tree.n_nodes))
    assert not flat.holds and flat.details["log_Z_error"] > 1e-3


def test_p4_margin_is_the_smallest_slack():
    """margin = min(predicted gap, measured gap + 1e-12, 1e-8 − inside-ratio error, 1e-8 − closed-form error)."""
    inst = _rc()
    phi = W * np.log1p((1 - EPS) / (EPS * W))
    reversed_ = P.check_p4(inst, sdsd=lambda i: np.log([0.2, 0.1, 0.7]))  # strategy 1 made the heavier
    assert not reversed_.holds
    assert reversed_.margin == pytest.approx(math.log(0.3 / 0.7) - math.log(0.7 / 0.3), abs=1e-9)
    sd = _rc_sdsd()
    m0 = sd[0] + sd[1]
    skewed = P.check_p4(inst, sdsd=lambda i: np.log([0.99 * m0, 0.01 * m0, sd[2]]))  # masses right, inside wrong
    assert not skewed.holds and skewed.details["closed_form_error"] <= 1e-12
    assert skewed.margin == pytest.approx(1e-8 - abs(math.log(99) - math.log(1.5)), abs=1e-9)
    assert P.check_p4(inst).margin == pytest.approx(min(phi[0] - phi[1], P.check_p4(inst).details["min_gap"] + 1e-12,
                                                        1e-8 - P.check_p4(inst).details["inside_ratio_error"],
                                                        1e-8 - P.check_p4(inst).details["closed_form_error"]))


def test_p8_margin_counts_the_rl_mass_drift():
    """Three strategies, two rollouts in each of the light ones: an RL policy that moves 0.06
    of mass between strategies but at most 0.04 in any other reported number."""
    with np.errstate(divide="ignore"):
        t = LatentStrategyTeacher(np.log([0.5, 0.3, 0.2]),
                                  np.log([[1, 0, 0, 0, 0], [0, 0.5, 0.5, 0, 0], [0, 0, 0, 0.5, 0.5]]), EPS)
    inst = Instance(t.log_base, np.ones(5, dtype=np.int64), t, t.log_base, route=np.array([0, 1, 1, 2, 2]))
    res = P.check_p8(inst, 1.0, rl=lambda lb, r, b: np.log([0.5, 0.18, 0.18, 0.07, 0.07]))
    assert not res.holds
    assert res.details["rl_mass_drift"] == pytest.approx(0.06, abs=1e-12)
    assert res.details["independent_error"] < 0.05
    assert res.margin == pytest.approx(1e-9 - 0.06, abs=1e-12)


def _rc_w(w, eps=EPS):
    """_rc with strategy weights w (strategy 0 on rollouts 0, 1; strategy 1 on rollout 2)."""
    with np.errstate(divide="ignore"):
        t = LatentStrategyTeacher(np.log(w), np.log(PZ), eps)
    return Instance(t.log_base, np.ones(3, dtype=np.int64), t, t.log_base, route=np.array([0, 0, 1]))


def _rc_w_masses(w, eps=EPS):
    """SDSD strategy masses of _rc_w by direct numpy: Π_j T(y|y'_j)^{π0(y'_j)}, T = (1−eps)·P_{z(j)} + eps·π0."""
    b = np.asarray(w) @ PZ
    p = np.prod(((1 - eps) * PZ[[0, 0, 1]] + eps * b[None, :]) ** b[:, None], axis=0)
    p /= p.sum()
    return np.array([p[0] + p[1], p[2]])


def test_p8_catches_wrong_ratios_inside_a_strategy():
    """Masses right, ratios inside strategy 0 wrong: entropy, OOD and closed form agree; only the
    policy comparison can see it."""
    sd = _rc_sdsd()
    m0 = sd[0] + sd[1]
    skew = np.array([0.99 * m0, 0.01 * m0, sd[2]])
    res = P.check_p8(_rc(), 1.0, sdsd=lambda i: np.log(skew))
    assert not res.holds and res.details["closed_form_error"] <= 1e-12
    assert res.details["independent_error"] == pytest.approx(np.max(np.abs(skew - sd)), abs=1e-12)


def test_p7_one_round_cannot_certify_the_limit():
    res = P.check_p7(_rc(0.8), max_rounds=1)
    assert not res.holds and res.details["rounds"] == 1
    assert not res.details["reached"] and not res.details["certified_by_rising_gains"]
    assert res.margin == pytest.approx(res.details["final_top_mass"] - (1 - 1e-6), abs=1e-15)


def test_p7_details_measure_a_round_that_spreads_mass():
    """One sabotaged round from w = (0.99, 0.01) to masses (0.9, 0.1): the entropy rises by
    H(0.9, 0.1) − H(0.99, 0.01), the closed-form error is |0.9 − m_SD(0)|, and the margin is the
    most negative slack (here the entropy rise)."""
    w = [0.99, 0.01]
    inst = _rc_w(w)
    res = P.check_p7(inst, max_rounds=1, sdsd=lambda cur: np.log([0.9 * 0.6, 0.9 * 0.4, 0.1]))
    rise = _ent([0.9, 0.1]) - _ent(w)
    assert not res.holds
    assert res.details["max_entropy_rise"] == pytest.approx(rise, abs=1e-12)
    assert res.details["closed_form_round_error"] == pytest.approx(abs(0.9 - _rc_w_masses(w)[0]), abs=1e-12)
    assert res.details["ratio_drift_fwd_rl"] <= 1e-8
    assert res.margin == pytest.approx(1e-9 - rise, abs=1e-12)


def test_p7_reports_an_implementation_that_raises():
    def broken(cur):
        raise PcmiInputError("broken round")
    res = P.check_p7(_rc(), sdsd=broken)
    assert not res.holds and res.margin == -np.inf and "broken round" in res.details["error"]


def test_amplification_edge_cases():
    """Equal weights: no pair to compare (min gap +inf); a policy on one strategy only: gaps +inf, never NaN."""
    even = P.amplification(_rc_w([0.5, 0.5]))
    assert even["gaps"] == [] and even["min_gap"] == math.inf
    with np.errstate(divide="ignore"):
        t = LatentStrategyTeacher(np.log([0.5, 0.3, 0.2]), np.log(np.eye(3)), EPS)
    inst = Instance(t.log_base, np.ones(3, dtype=np.int64), t, t.log_base, route=np.array([0, 1, 2]))
    with np.errstate(divide="ignore"):
        amp = P.amplification(inst, np.log([1.0, 0.0, 0.0]))
    assert len(amp["gaps"]) == 3 and all(g == math.inf for g in amp["gaps"]), amp["gaps"]


def test_p6_requires_d_equal_pi0_and_reports_its_margin():
    t = LatentStrategyTeacher(np.log([0.5, 0.5]), np.log(PZ_B), 0.0)
    other = Instance(t.log_base, np.ones(3, dtype=np.int64), t, np.log([0.6, 0.2, 0.2]))
    with pytest.raises(PcmiInputError, match="D = π0"):
        P.check_p6(other)
    inst = Instance(t.log_base, np.ones(3, dtype=np.int64), t, t.log_base)
    bad = P.check_p6(inst, forward=lambda i: np.full(3, -np.log(3)))
    assert bad.margin == pytest.approx(1e-9 - bad.details["fwd_error"], abs=1e-15)
    real = P.check_p6(inst)
    assert real.margin == pytest.approx(min(1e-9 - real.details["fwd_error"], 1e-7 - real.details["sdsd_error"],
                                            real.details["tv_sdsd_base"]), abs=1e-15)


def test_pcmi_spread_is_infinite_where_a_demonstration_rules_a_rollout_out():
    clash = Instance.explicit([0.5, 0.5], [1, 1], [[1.0, 0.0], [0.0, 1.0]])
    assert P.pcmi_spread(clash) == math.inf


def _one_strategy_failing():
    """One strategy (route ≡ 0) and a failing rollout: H and OOD are 0 under every policy."""
    inst = Instance.explicit([0.5, 0.3, 0.2], [1, 1, 0], [[0.6, 0.3, 0.1], [0.4, 0.5, 0.1], [0.3, 0.3, 0.4]],
                             route=[0, 0, 0])
    return inst


def test_p8_failures_holds_with_zero_margin_and_matches_beta_to_the_independent_success():
    inst = _one_strategy_failing()
    rows = np.array([[0.6, 0.3, 0.1], [0.4, 0.5, 0.1], [0.3, 0.3, 0.4]])
    g = np.exp(np.array([0.625, 0.375, 0.0]) @ np.log(rows))
    p_sd = g[:2].sum() / g.sum()
    assert 0.8 < p_sd < 1  # p0 = 0.8
    res = P.check_p8_failures(inst)
    assert res.holds and res.margin == 0.0
    bad = P.check_p8_failures(inst, sdsd=lambda i: i.log_base)  # SDSD's success would be p0: no β
    assert not bad.holds and not bad.details["agrees"]
    assert 0.8 / (0.8 + 0.2 * math.exp(-1 / bad.details["beta"])) == pytest.approx(p_sd, abs=1e-9)


def test_diversity_comparison_matches_beta_by_default():
    d = P.diversity_comparison(_rc_failing())
    assert d["success_rl"] == pytest.approx(d["success_sdsd"], abs=1e-9) and d["success_sdsd"] > 0.58
    full = P.diversity_comparison(_rc())  # all correct: every β gives success 1; β = 1 is used
    assert full["beta"] == 1.0 and full["success_rl"] == pytest.approx(1.0) and full["success_sdsd"] == pytest.approx(1.0)
    assert np.allclose(full["rl_masses"], W, atol=1e-12)


# P9 ------------------------------------------------------------------------------------------
from pcmi.testing import copy_instances, extreme_instances  # noqa: E402


def _kernel_of(inst):
    from pcmi.teachers import KernelTeacher, leaf_rows
    return Instance(inst.log_base, inst.reward, KernelTeacher(leaf_rows(inst.teacher, inst.n)), inst.log_demos,
                    route=inst.route)


@given(route_copying_instances(all_correct=False))
def test_p9_dstar_keeps_ratios_route_copying(inst):
    """Route-copying, 0 < eps < 1: universal, by the closed form and by the LP on the same matrix."""
    for case, method in ((inst, "closed_form"), (_kernel_of(inst), "lp")):
        res = P.check_p9(case)
        assert res.holds and res.details["method"] == method, res.details
        assert res.margin > 0


@given(copy_instances())
def test_p9_dstar_keeps_ratios_copy_teacher(inst):
    res = P.check_p9(inst)
    assert res.holds, res.details


@settings(max_examples=30)
@given(extreme_instances(kinds=("route_copying", "copy")))
def test_p9_extremes(inst):
    """Zero-probability rollouts, 1e-300 masses, eps and lam in {0, 1}, one or all correct, prefix trees:
    where D* must exist P9 holds; where it cannot (eps = 0 with correct rollouts in two strategies) the
    check fails and names the reason in one line."""
    res = P.check_p9(inst)
    if res.details["must_exist"]:
        assert res.holds, res.details
    elif not res.holds:
        assert "error" in res.details and "\n" not in res.details["error"]


@given(latent_instances())
def test_p9_general_holds_exactly_where_a_dstar_is_found(inst):
    """Overlapping strategies: D* exists on some instances only; P9 holds iff the LP's D has spread
    within the tolerance, and the spread it reports is the one recomputed from the teacher's rows."""
    res = P.check_p9(inst)
    if "error" in res.details:
        return
    assert res.details["spread_error"] <= 1e-9 and res.details["sdsd_error"] <= 1e-9
    assert res.holds == (res.details["spread"] <= P.P9_TOL)
    assert abs(res.details["ratio_distortion"] - res.details["spread"]) <= 1e-9  # distortion = spread


# the faster P2/P6 minimizer and P5 brute force against the previous implementations ---------------
from scipy.optimize import minimize as scipy_minimize  # noqa: E402
from scipy.special import log_softmax, logsumexp  # noqa: E402

from pcmi.testing import explicit_instances  # noqa: E402


def _reference_minimize_reverse_kl(w, log_T):
    """The previous P.minimize_reverse_kl (as of 80e4de9, stopping rules included), verbatim: scipy's log_softmax, fun/jac/hess recomputed per call."""
    w = np.asarray(w, float)
    keep = w > 0
    w, log_T = w[keep] / w[keep].sum(), np.asarray(log_T, float)[keep]
    n = log_T.shape[1]
    support = np.all(np.isfinite(log_T), axis=0)
    e = (w[:, None] * log_T[:, support]).sum(axis=0)
    m = int(support.sum())
    fun, jac, hess = _reference_logit_parts(e)
    v = np.zeros(m - 1)
    for method in ("trust-exact", "trust-krylov", "L-BFGS-B"):
        if m == 1 or np.max(np.abs(jac(v))) < 1e-13:
            break
        kw = {"hess": hess, "options": {"gtol": 1e-15, "maxiter": 300 if method == "trust-exact" else 60}} \
            if method != "L-BFGS-B" else \
            {"options": {"ftol": 1e-300, "gtol": 1e-15, "maxiter": 5000}}
        try:
            with np.errstate(invalid="ignore", over="ignore"):
                v = scipy_minimize(fun, v, jac=jac, method=method, **kw).x
        except (UnboundLocalError, np.linalg.LinAlgError, ValueError):
            continue
    out = np.full(n, -np.inf)
    out[support] = log_softmax(np.r_[0.0, v])
    return out


def _reference_logit_parts(e):
    def parts(v):
        log_s = log_softmax(np.r_[0.0, v])
        s = np.exp(log_s)
        return log_s, s, (log_s - e) - s @ (log_s - e)

    def fun(v):
        log_s, s, _ = parts(v)
        return float(s @ (log_s - e))

    def jac(v):
        _, s, d = parts(v)
        return (s * d)[1:]

    def hess(v):
        _, s, d = parts(v)
        a = s * d
        return (np.diag(a + s) - np.outer(a, s) - np.outer(s, a) - np.outer(s, s))[1:, 1:]
    return fun, jac, hess


def _reference_independent_token_level(inst) -> dict:
    """The previous P.independent_token_level, verbatim: one logsumexp per prefix."""
    tree = inst.tree
    D, rows = P._demo_weights(inst)
    A = P._ancestors(tree)
    node = np.stack([logsumexp(rows[:, A[:, h]], axis=1) for h in range(tree.n_nodes)], axis=1)
    par = tree.parent[1:]
    with np.errstate(invalid="ignore"):
        cond = np.where(np.isfinite(node[:, par]), node[:, 1:] - node[:, par], np.nan)
    g = np.r_[0.0, (D[:, None] * cond).sum(axis=0)]
    kids = [[] for _ in range(tree.n_nodes)]
    for c in range(1, tree.n_nodes):
        kids[tree.parent[c]].append(c)
    reach = np.full(tree.n_nodes, -np.inf)
    reach[0] = 0.0
    for h in range(tree.n_nodes):
        if not kids[h] or not np.isfinite(reach[h]):
            continue
        gk = g[kids[h]]
        if np.isnan(gk).any() or not np.isfinite(gk).any():
            raise PcmiInputError("the token-level SDSD optimum is undefined: at a prefix it reaches, "
                                 "every next token is ruled out by some demonstration")
        reach[kids[h]] = reach[h] + gk - logsumexp(gk)
    e_leaf = (D[:, None] * rows).sum(axis=0)
    log_prefix = (D[:, None] * node).sum(axis=0)
    L = np.array([logsumexp(e_leaf[A[:, h]]) for h in range(tree.n_nodes)])
    with np.errstate(invalid="ignore"):
        log_Z = np.where(np.isfinite(log_prefix), L - log_prefix, np.nan)
    return {"g": g, "kids": kids, "token": np.exp(reach[tree.leaf_node]), "log_Z": log_Z,
            "sdsd": P._normalized_exp(e_leaf, "E_D log T(y | y')"), "log_reach_sdsd": L - logsumexp(e_leaf)}


def _same_pattern_max_diff(a, b) -> float:
    """max |a − b| where both are finite; inf unless NaN and ±inf sit at the same places with the same signs."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or not np.array_equal(np.isfinite(a), np.isfinite(b)):
        return np.inf
    if not np.array_equal(a[~np.isfinite(a)], b[~np.isfinite(b)], equal_nan=True):
        return np.inf
    fin = np.isfinite(a)
    return float(np.max(np.abs(a[fin] - b[fin]), initial=0.0))


def _token_level_max_diff(inst, token_level=P.independent_token_level) -> float:
    """Largest disagreement of `token_level` with the previous implementation (inf if only one raises)."""
    try:
        ref = _reference_independent_token_level(inst)
    except PcmiInputError:
        try:
            token_level(inst)
        except PcmiInputError:
            return 0.0
        return np.inf
    try:
        new = token_level(inst)
    except PcmiInputError:
        return np.inf
    if new["kids"] != ref["kids"]:
        return np.inf
    return max(_same_pattern_max_diff(new[k], ref[k]) for k in ("g", "token", "log_Z", "sdsd", "log_reach_sdsd"))


logit_vectors = st.lists(st.one_of(st.floats(-50, 50), st.floats(-800, 800), st.just(0.0)), min_size=0, max_size=12)


@given(logit_vectors)
def test_log_softmax_gauged_equals_scipys(v):
    v = np.array(v, float)
    assert np.max(np.abs(P._log_softmax_gauged(v) - log_softmax(np.r_[0.0, v]))) <= 1e-12


def cached_parts_agree(make_parts, e, v) -> bool:
    """make_parts(e)'s (F, ∇F, ∇²F) equal the previous uncached ones at v, v, v/2, v, and when v is
    changed in place between calls (a cache keyed by the array's identity would answer with old parts)."""
    new, ref = make_parts(e), _reference_logit_parts(e)
    for x in (v, v, v * 0.5, v):
        if abs(new[0](x) - ref[0](x)) > 1e-12 * (1 + abs(ref[0](x))) or \
                np.max(np.abs(new[1](x) - ref[1](x))) > 1e-12 or np.max(np.abs(new[2](x) - ref[2](x))) > 1e-12:
            return False
    x = v.copy()
    new[0](x)
    x += 1.0
    return bool(np.max(np.abs(new[1](x) - ref[1](x))) <= 1e-12)


@given(logit_vectors.filter(len), st.data())
def test_reverse_kl_in_logits_equals_the_recomputed_parts(v, data):
    v = np.array(v, float)
    e = np.array(data.draw(st.lists(st.floats(-30, 0), min_size=len(v) + 1, max_size=len(v) + 1)))
    assert cached_parts_agree(P.reverse_kl_in_logits, e, v)


def test_a_stale_logit_cache_is_caught():
    """Sabotage: a cache keyed on the array's identity answers a moved v with the old parts."""
    def id_keyed(e):
        ref, seen = _reference_logit_parts(e), {}

        def cached(i):
            def f(v):
                if (i, id(v)) not in seen:
                    seen[(i, id(v))] = ref[i](v)
                return seen[(i, id(v))]
            return f
        return cached(0), cached(1), cached(2)
    e = np.log([0.5, 0.3, 0.2])
    assert cached_parts_agree(P.reverse_kl_in_logits, e, np.array([0.3, -0.2]))
    assert not cached_parts_agree(id_keyed, e, np.array([0.3, -0.2]))


@settings(max_examples=60, deadline=None)
@given(explicit_instances())
def test_minimize_reverse_kl_equals_the_previous_implementation(inst):
    """Same trust-region path, same stopping rules: the minimizer is the previous one's. Both are exact to
    ~1e-13 in the gradient; on ill-conditioned instances (probabilities near 1e-300) neither is
    reproducible below ~1e-10 from one call to the next (SIMD summation order), hence 1e-9 there."""
    D, rows = P._demo_weights(inst)
    new, ref = P.minimize_reverse_kl(D, rows), _reference_minimize_reverse_kl(D, rows)
    assert np.array_equal(np.isfinite(new), np.isfinite(ref))
    err = float(np.max(np.abs(np.exp(new) - np.exp(ref))))
    well_conditioned = float(np.min(np.exp(ref[np.isfinite(ref)]))) > 1e-6
    assert err <= (1e-12 if well_conditioned else 1e-9), err


def test_a_minimizer_that_stops_early_is_caught():
    """Sabotage of the comparison above: one trust-exact iteration is far from the previous optimum."""
    T = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]))
    w = np.array([0.3, 0.7])
    e = w @ T
    fun, jac, hess = P.reverse_kl_in_logits(e)
    v = scipy_minimize(fun, np.zeros(2), jac=jac, hess=hess, method="trust-exact", options={"maxiter": 1}).x
    early = np.exp(P._log_softmax_gauged(v))
    assert np.max(np.abs(early - np.exp(_reference_minimize_reverse_kl(w, T)))) > 1e-6
    assert np.max(np.abs(np.exp(P.minimize_reverse_kl(w, T)) - np.exp(_reference_minimize_reverse_kl(w, T)))) <= 1e-12


@settings(max_examples=60, deadline=None)
@given(graph_instances())
def test_independent_token_level_equals_the_previous_implementation(pair):
    assert _token_level_max_diff(pair[0]) <= 1e-12


@settings(max_examples=40, deadline=None)
@given(extreme_instances(trees=True))
def test_independent_token_level_equals_the_previous_implementation_on_extremes(inst):
    """Zero-probability rollouts, 1e-300 masses and prefix trees: same values, same −inf/NaN pattern,
    the same PcmiInputError where a reached prefix has every next token ruled out."""
    assert _token_level_max_diff(inst) <= 1e-12


def test_the_clash_raises_in_both_token_level_implementations():
    clash = Instance.explicit([0.5, 0.5], [1, 1], [[1.0, 0.0], [0.0, 1.0]])
    assert _token_level_max_diff(clash) == 0.0
    with pytest.raises(PcmiInputError, match="every next token is ruled out"):
        P.independent_token_level(clash)


@pytest.mark.parametrize("helper, wrong", [
    ("_logsumexp_under", lambda x, A: np.max(np.asarray(x, float)[..., :, None] + np.where(A, 0.0, -np.inf), axis=-2)),
    ("_logsumexp_under", lambda x, A: logsumexp(np.asarray(x, float)[..., :, None] + np.where(A, -np.inf, 0.0), axis=-2)),
    ("_logsumexp_children", lambda g, parent: np.full(len(g), logsumexp(np.nan_to_num(g[1:], nan=0.0)))),
])
def test_a_wrong_vectorized_sum_is_caught(helper, wrong, monkeypatch):
    """Sabotage: max instead of logsumexp over the rollouts under h; the mask inverted (the rollouts
    not under h); or normalizing every prefix over all nodes instead of its children. The comparison
    with the previous implementation must fail."""
    import graphworld as gw
    from pcmi import graph_instance
    g = gw.multi_route_dag(2, 2, 2, seed=0, n_sources=1, n_targets=2)
    inst = graph_instance(gw.Task(g, 0, g.graph["prompts"][0][1], 4), gw.EdgePolicy(), {"kind": "copy", "lam": 0.7})[0]
    assert _token_level_max_diff(inst) <= 1e-12
    monkeypatch.setattr(P, helper, wrong)
    assert _token_level_max_diff(inst) > 1e-6
