"""graph_instance: the rollout cap and which enumeration each teacher gets."""
from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

import graphworld as gw
from pcmi.errors import PcmiInputError
from pcmi.graph_instance import graph_instance
from pcmi.policies import contrastive_optimum


def _small_task():
    g = nx.DiGraph()
    for u, v, p in ((0, 1, 0.3), (1, 2, 0.0), (0, 3, 1.0), (3, 2, -0.5), (0, 4, 0.5), (0, 5, -0.2)):
        g.add_edge(u, v, pref=p)
    g.nodes[4]["concept"] = 0
    return gw.Task(g, 0, 2, 2)


def _correct(ro, log_pi) -> dict:
    return {p: float(np.exp(lp)) for p, lp, r in zip(ro.paths, log_pi, ro.reward) if r}


def test_copy_teacher_contrastive_is_exact():
    """A copy teacher with the default contrastive baseline B = π0 copies failing demonstrations
    walk by walk, which pooled leaves cannot represent: graph_instance does not pool for it."""
    spec = {"kind": "copy", "lam": 0.6}
    a, ra = graph_instance(_small_task(), gw.EdgePolicy(stop_pref=0.0), spec)
    b, rb = graph_instance(_small_task(), gw.EdgePolicy(stop_pref=0.0), spec, pool_failures=False)
    ca, cb = _correct(ra, contrastive_optimum(a)), _correct(rb, contrastive_optimum(b))
    assert ca.keys() == cb.keys() and max(abs(ca[p] - cb[p]) for p in ca) < 1e-12


def test_route_teachers_are_pooled():
    a, ra = graph_instance(_small_task(), gw.EdgePolicy(stop_pref=0.0), {"kind": "route_copying", "eps": 0.2})
    b, rb = graph_instance(_small_task(), gw.EdgePolicy(stop_pref=0.0), {"kind": "route_copying", "eps": 0.2},
                           pool_failures=False)
    assert len(ra) < len(rb) and any(gw.is_fail(p[-1]) for p in ra.paths)


@pytest.mark.parametrize("cap", [0, -3, 2.5, True, "10", None])
def test_rollout_cap_must_be_a_positive_integer(cap):
    with pytest.raises(PcmiInputError, match="max_rollouts") as e:
        graph_instance(_small_task(), max_rollouts=cap)
    assert "\n" not in str(e.value)


def test_rollout_cap_is_passed_through():
    _, ro = graph_instance(_small_task(), gw.EdgePolicy(stop_pref=0.0))
    n = len(ro)
    assert len(graph_instance(_small_task(), gw.EdgePolicy(stop_pref=0.0), max_rollouts=n)[1]) == n
    with pytest.raises(gw.GraphworldError, match=f"more than {n - 1} rollouts"):
        graph_instance(_small_task(), gw.EdgePolicy(stop_pref=0.0), max_rollouts=n - 1)
