"""Each proposition of theory.md §6 as a hypothesis property; the tendencies as measured rates."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pcmi import LatentStrategyTeacher
from pcmi import propositions as P
from pcmi.symbolic import all_proofs, prove_p4
from pcmi.testing import (betas, eps_open, graph_instances, latent_instances, log_distributions, overlapping_laws,
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
        assert json.loads(json.dumps(rep.counterexample))["instance"]["n"] >= 2


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
