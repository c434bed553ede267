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
        import json
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
