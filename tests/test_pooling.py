"""Failure pooling is exact: every optimum and every on-policy round gives each correct rollout
the same probability, and the failures the same total mass, whether the failing walks of a
prefix are pooled (per route label) or enumerated one by one.

Graphs: random DAGs with concept labels on some nodes, plus a labelled "trap" node that cannot
reach the target, so failing moves into concept nodes (the case that once lost its label) occur
in every example; a noisy policy adds invalid moves into concept nodes and a policy FAIL token.
"""
from __future__ import annotations

import networkx as nx
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp

import graphworld as gw
from pcmi import dynamics
from pcmi.errors import PcmiInputError
from pcmi.graph_instance import make_teacher
from pcmi.instance import Instance, demos_from_successes
from pcmi.policies import (contrastive_optimum, forward_kl_optimum, forward_kl_token_optimum, js_optimum,
                           rl_optimum, sdsd_optimum, sdsd_token_optimum)

TOL = 1e-12
JS_TOL = 1e-9  # js_optimum is a numerical minimizer stopped at a gradient residual of 1e-12


class NoisyPolicy:
    """An edge policy that also puts mass on every non-successor node (invalid moves) and on a
    FAIL token, like a network whose vocabulary holds every node and some special tokens."""
    has_stop = True

    def __init__(self, inner: gw.EdgePolicy, log_noise: float):
        self.inner, self.log_noise = inner, log_noise

    def next_logprobs(self, task, paths):
        out = []
        for d in self.inner.next_logprobs(task, paths):
            toks = [v for v in task.graph if v not in d] + [gw.FAIL]
            logits = np.r_[list(d.values()), np.full(len(toks), self.log_noise)]
            lp = logits - logsumexp(logits)
            out.append(dict(zip(list(d) + toks, lp.tolist())))
        return out


@st.composite
def labelled_dags(draw):
    """(graph, source, target): a DAG on 0..n−1 (0 → n−1 reachable), concepts on some nodes,
    and a concept-labelled trap n entered from the source that cannot reach n−1."""
    n = draw(st.integers(3, 6))
    g = nx.DiGraph()
    g.add_nodes_from(range(n + 1))
    pref = st.floats(-3.0, 3.0)
    for i in range(n):
        for j in range(i + 1, n):
            if j == i + 1 or draw(st.booleans()):
                g.add_edge(i, j, pref=draw(pref))
    g.add_edge(0, n, pref=draw(pref))  # the trap: labelled, a dead end
    label = st.one_of(st.none(), st.integers(0, 2))
    for v in range(1, n):
        z = draw(label)
        if z is not None:
            g.nodes[v]["concept"] = z
    g.nodes[n]["concept"] = draw(st.integers(0, 2))
    return g, 0, n - 1


@st.composite
def policies(draw):
    inner = gw.EdgePolicy(temperature=draw(st.sampled_from([0.5, 1.0, 3.0])),
                          stop_pref=draw(st.one_of(st.none(), st.floats(-3.0, 3.0))),
                          goal_aware=draw(st.booleans()))
    if draw(st.booleans()):
        stop = 0.0 if inner.stop_pref is None else inner.stop_pref
        return NoisyPolicy(gw.EdgePolicy(inner.temperature, stop), draw(st.floats(-6.0, 0.0)))
    return inner


unit_with_ends = st.one_of(st.just(0.0), st.just(1.0), st.floats(1e-3, 1 - 1e-3))


@st.composite
def teacher_specs(draw):
    kind = draw(st.sampled_from(["route_copying", "soft_route", "copy"]))
    if kind == "copy":
        return {"kind": "copy", "lam": draw(unit_with_ends)}
    spec = {"kind": kind, "eps": draw(unit_with_ends)}
    if kind == "soft_route":
        spec["sharpness"] = draw(st.one_of(st.just(0.0), st.floats(0.0, 8.0)))
    return spec


def _instance(rollouts, spec) -> Instance:
    log_D = demos_from_successes(rollouts.log_prob, rollouts.reward)
    return Instance(rollouts.log_prob, rollouts.reward, make_teacher(rollouts, spec), log_D,
                    route=rollouts.route, tree=rollouts.tree)


def _correct(rollouts, log_pi) -> dict:
    return {p: float(np.exp(lp)) for p, lp, r in zip(rollouts.paths, log_pi, rollouts.reward) if r}


def _fail_mass(rollouts, log_pi) -> float:
    bad = rollouts.reward == 0
    return float(np.exp(logsumexp(log_pi[bad]))) if bad.any() else 0.0


def _assert_same_law(a, lp_a, b, lp_b, tol, what):
    ca, cb = _correct(a, lp_a), _correct(b, lp_b)
    assert ca.keys() == cb.keys(), what
    diff = max([abs(ca[p] - cb[p]) for p in ca] + [abs(_fail_mass(a, lp_a) - _fail_mass(b, lp_b))])
    assert diff <= tol, f"{what}: pooled and unpooled differ by {diff:.3g}"


def _both(f, x, y):
    """f on both instances; both must raise the same PcmiInputError or neither."""
    out = []
    for inst in (x, y):
        try:
            out.append(f(inst))
        except PcmiInputError as exc:
            out.append(exc)
    errs = [isinstance(o, PcmiInputError) for o in out]
    assert errs[0] == errs[1], f"only one enumeration raised: {out}"
    return None if errs[0] else out


OPTIMA = {"sdsd": sdsd_optimum, "sdsd_token": sdsd_token_optimum, "forward_kl": forward_kl_optimum,
          "forward_kl_token": forward_kl_token_optimum, "rl": lambda i: rl_optimum(i.log_base, i.reward, 0.7),
          "contrastive": contrastive_optimum}
ROUNDS = {"sdsd": lambda i: dynamics.sdsd_rounds(i, 3), "forward_kl": lambda i: dynamics.forward_kl_rounds(i, 3),
          "rl": lambda i: dynamics.rl_rounds(i, 3, 0.5)}


def _pair(data):
    g, s, t = data.draw(labelled_dags())
    L = nx.shortest_path_length(g, s, t) + data.draw(st.integers(0, 2))
    task, policy = gw.Task(g, s, t, L), data.draw(policies())
    pooled = gw.enumerate_rollouts(task, policy, pool_failures=True)
    full = gw.enumerate_rollouts(task, policy, pool_failures=False)
    return pooled, full, policy


def _entered_concept_on_failure(full) -> bool:
    """Some failing walk's last move enters a concept node from an unlabelled prefix."""
    g = full.task.graph
    return any(not r and len(p) > 1 and p[-1] in g and "concept" in g.nodes[p[-1]]
               and gw.route_of(g, [v for v in p[:-1] if v != gw.FAIL]) == -1
               for p, r in zip(full.paths, full.reward))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_pooled_enumeration_keeps_every_optimum_and_round(data):
    pooled, full, policy = _pair(data)
    assert _entered_concept_on_failure(full) or getattr(policy, "goal_aware", False)  # the old bug's case
    spec = data.draw(teacher_specs())
    x, y = _instance(pooled, spec), _instance(full, spec)
    for name, f in OPTIMA.items():
        if name == "contrastive" and spec["kind"] == "copy":
            continue  # copies failing baseline demonstrations: not poolable (tests/test_graph_instance.py)
        res = _both(f, x, y)
        if res is not None:
            _assert_same_law(pooled, res[0], full, res[1], TOL, name)
    res = _both(lambda i: js_optimum(i, 0.5).log_pi, x, y)
    if res is not None:
        _assert_same_law(pooled, res[0], full, res[1], JS_TOL, "js(0.5)")
    for name, f in ROUNDS.items():
        res = _both(f, x, y)
        if res is None:
            continue
        for ra, rb in zip(*res):
            _assert_same_law(pooled, ra.log_pi, full, rb.log_pi, TOL, f"{name} round {ra.k}")
            assert abs(ra.success - rb.success) <= TOL
            assert abs(ra.correct_entropy - rb.correct_entropy) <= 1e-9
            for z in set(ra.strategy_masses) | set(rb.strategy_masses):
                assert abs(ra.strategy_masses.get(z, 0.0) - rb.strategy_masses.get(z, 0.0)) <= TOL


def _node_path(ro, c) -> tuple:
    """The graph nodes on the root → c chain of the tree (STOP and failure tokens left out)."""
    out = []
    while c != -1:
        tok = ro.token[c]
        if tok != gw.STOP and not gw.is_fail(tok):
            out.append(tok)
        c = ro.tree.parent[c]
    return tuple(reversed(out))


def _failure_groups(ro) -> dict:
    """{(prefix, route label): log mass} of the failing leaves (each leaf ends one move after its prefix)."""
    groups = {}
    log_node = ro.tree.path_sum(ro.log_cond)
    for c, r, z in zip(ro.tree.leaf_node, ro.reward, ro.route):
        if not r:
            key = (_node_path(ro, ro.tree.parent[c]), int(z))
            groups[key] = np.logaddexp(groups.get(key, -np.inf), log_node[c])
    return groups


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_pooled_leaves_carry_their_walks_label(data):
    """Each pooled failure leaf holds exactly the unpooled failing walks of one (prefix, route
    label): same total probability, same label; correct rollouts are untouched."""
    pooled, full, _ = _pair(data)
    assert all(gw.is_fail(p[-1]) and o == "fail" for p, o, r in zip(pooled.paths, pooled.outcome, pooled.reward) if not r)
    got, want = _failure_groups(pooled), _failure_groups(full)
    assert len(got) == int((pooled.reward == 0).sum())  # one leaf per (prefix, label)
    assert got.keys() == want.keys()
    assert all(abs(got[k] - want[k]) < 1e-12 for k in got)
    assert len(set(pooled.paths)) == len(pooled)  # several FAIL children of one prefix stay distinct
    ca, cb = _correct(pooled, pooled.log_prob), _correct(full, full.log_prob)
    assert ca.keys() == cb.keys() and all(abs(ca[p] - cb[p]) < 1e-12 for p in ca)
    # route labels: a pooled leaf's label is its walks' common label, whatever its prefix's label
    g = full.task.graph
    assert all(z == gw.route_of(g, [v for v in p if v != gw.FAIL]) for p, z in zip(full.paths, full.route))


def test_failing_moves_pool_per_route_label():
    """From the unlabelled source, a dead end into concept node 3 and one into plain node 4 are
    two failure leaves of one prefix, labelled 1 and −1."""
    g = nx.DiGraph([(0, 1), (1, 2), (0, 3), (0, 4)])
    g.nodes[3]["concept"] = 1
    ro = gw.enumerate_rollouts(gw.Task(g, 0, 2, 2), gw.EdgePolicy(), pool_failures=True)
    fails = sorted((ro.paths[i], int(ro.route[i])) for i in np.flatnonzero(ro.reward == 0))
    assert fails == [((0, "FAIL"), -1), ((0, "FAIL:1"), 1)]
    np.testing.assert_allclose(np.exp(ro.log_prob[ro.reward == 0]), [1 / 3, 1 / 3], atol=1e-15)
    assert [ro.token[c] for c in ro.tree.leaf_node if ro.tree.parent[c] == 0].count(gw.FAIL) == 1
    assert not ro.uses_edges([(0, 3), (0, 4)])[ro.reward == 0].any()  # a pooled leaf keeps only its prefix's edges
