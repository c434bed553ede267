"""graphworld: enumeration is exact (sums to 1, matches sampling), tasks and loaders behave."""
import json

import networkx as nx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import logsumexp

import graphworld as gw
from pcmi.testing import edge_policies, graphs


def _task(g, extra=2):
    s, t = g.graph["prompts"][0]
    return gw.Task(g, s, t, nx.shortest_path_length(g, s, t) + extra)


@given(graphs(), edge_policies(), st.booleans())
def test_enumeration_sums_to_one(g, policy, pool):
    ro = gw.enumerate_rollouts(_task(g), policy, pool_failures=pool)
    assert abs(np.exp(logsumexp(ro.log_prob)) - 1) < 1e-12
    # every internal prefix's children sum to it (tree consistency)
    node = ro.tree.prefix_logsumexp(ro.log_prob)
    assert abs(node[0]) < 1e-12


@given(graphs(), edge_policies())
def test_pooling_keeps_correct_rollouts_and_success(g, policy):
    a = gw.enumerate_rollouts(_task(g), policy, pool_failures=True)
    b = gw.enumerate_rollouts(_task(g), policy, pool_failures=False)
    ca = {p: lp for p, lp, r in zip(a.paths, a.log_prob, a.reward) if r}
    cb = {p: lp for p, lp, r in zip(b.paths, b.log_prob, b.reward) if r}
    assert ca.keys() == cb.keys()
    assert all(abs(ca[p] - cb[p]) < 1e-10 for p in ca)
    assert len(a) <= len(b)


@given(graphs(), edge_policies())
def test_reward_matches_task_definition(g, policy):
    task = _task(g)
    ro = gw.enumerate_rollouts(task, policy, pool_failures=False)
    for path, r in zip(ro.paths, ro.reward):
        assert r == task.reward(path)
        assert gw.is_valid_path(g, path)


def test_enumeration_matches_monte_carlo():
    """Sample walks from the edge policy directly and compare frequencies with π0 (5σ)."""
    g = gw.multi_route_dag(2, 1, 2, seed=4, n_sources=1, n_targets=2)
    task, policy = _task(g), gw.EdgePolicy(stop_pref=0.5)
    ro = gw.enumerate_rollouts(task, policy, pool_failures=False)
    rng, n = np.random.default_rng(0), 20000
    counts = {}
    for _ in range(n):
        path = (task.source,)
        while True:
            d = policy.next_logprobs(task, [path])[0]
            toks = list(d)
            tok = toks[rng.choice(len(toks), p=np.exp(list(d.values())))]
            if tok == gw.STOP:
                break
            path += (tok,)
            if len(path) - 1 == task.max_len and tok != task.target:
                path = None
                break
            if g.out_degree(tok) == 0 and tok != task.target:
                break
        if path is not None:
            counts[path] = counts.get(path, 0) + 1
    for p, lp, o in zip(ro.paths, ro.log_prob, ro.outcome):
        if o in ("success", "stop_elsewhere", "dead_end"):
            q = np.exp(lp)
            assert abs(counts.get(p, 0) / n - q) < 5 * np.sqrt(q * (1 - q) / n) + 1e-4


def test_prefix_tree_aggregation_against_brute_force():
    g = gw.multi_route_dag(3, 2, 2, seed=1, n_sources=1, n_targets=2)
    ro = gw.enumerate_rollouts(_task(g), gw.EdgePolicy(stop_pref=-1.0))
    vals = np.random.default_rng(0).normal(size=len(ro))
    agg = ro.tree.prefix_logsumexp(vals)
    leaf_of_node = {c: i for i, c in enumerate(ro.tree.leaf_node)}
    for h in range(ro.tree.n_nodes):  # brute force: leaves whose ancestor chain contains h
        below = []
        for c, i in leaf_of_node.items():
            a = c
            while a != -1 and a != h:
                a = ro.tree.parent[a]
            if a == h:
                below.append(vals[i])
        assert abs(agg[h] - logsumexp(below)) < 1e-12


def test_long_paths_do_not_underflow():
    g = gw.path_star(2, 400, seed=0, pref_scale=3.0)
    s, t = g.graph["prompts"][0]
    ro = gw.enumerate_rollouts(gw.Task(g, s, t, 400), gw.EdgePolicy(stop_pref=2.0, temperature=0.2))
    assert np.isfinite(ro.log_prob).all()
    assert ro.log_prob.min() < -700  # below float64's exp range, held exactly in log space
    assert abs(logsumexp(ro.log_prob)) < 1e-9


@pytest.mark.parametrize("fmt", ["json", "graphml"])
def test_load_user_graph_roundtrip(tmp_path, fmt):
    g = gw.random_dag(10, 0.4, seed=2)
    path = tmp_path / f"g.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(gw.graph_to_node_link(g)))
    else:
        g.graph.pop("prompts")  # GraphML holds scalars only
        nx.write_graphml(g, path)
    h = gw.load_graph(path)
    assert h.number_of_edges() == g.number_of_edges()


@pytest.mark.parametrize("make, msg", [
    (lambda: gw.Task(gw.path_star(2, 2), 1, 3, 5), "unreachable"),
    (lambda: gw.Task(gw.path_star(2, 2), 0, 99, 5), "not a node"),
    (lambda: gw.Task(gw.path_star(2, 3), 0, 3, 1), "needs 3 moves"),
    (lambda: gw.require_dag(nx.DiGraph([(0, 1), (1, 0)])), "cycle"),
    (lambda: gw.multi_path_prompts(nx.DiGraph([(0, 1), (1, 2), (2, 0)])), "cycle"),
    (lambda: gw.EdgePolicy(temperature=0), "temperature"),
    (lambda: gw.graph_from_node_link({"x": 1}), "node-link"),
])
def test_bad_input_is_one_line_error(make, msg):
    with pytest.raises(gw.GraphworldError) as e:
        make()
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_generators_have_many_prompts_and_routes():
    g = gw.multi_route_dag(3, 2, 2, seed=0, n_sources=4, n_targets=3)
    assert len(g.graph["prompts"]) == 12
    ro = gw.enumerate_rollouts(gw.Task(g, *g.graph["prompts"][5], 4), gw.EdgePolicy(goal_aware=True))
    assert set(ro.route[ro.reward == 1]) == {0, 1, 2}
    assert ro.reward.all()  # goal-aware walks on a DAG always arrive
    blocked = ro.uses_edges(gw.concept_edges(g, gw.dominant_route(ro)))
    assert 0 < blocked.sum() < len(ro)


@pytest.mark.parametrize("pool", [True, False])
def test_rollout_cap_raises_early_and_names_the_fix(pool):
    """4^10 walks through 10 layers of 4 nodes: a cap of 1000 stops within a level of passing it."""
    g = nx.DiGraph()
    layers = [[0]] + [[(d, i) for i in range(4)] for d in range(1, 11)] + [["t"]]
    for a, b in zip(layers[:-1], layers[1:]):
        g.add_edges_from((u, v) for u in a for v in b)
    calls = []

    class Counting(gw.EdgePolicy):
        def next_logprobs(self, task, paths):
            calls.append(len(paths))
            return super().next_logprobs(task, paths)

    with pytest.raises(gw.GraphworldError) as e:
        gw.enumerate_rollouts(gw.Task(g, 0, "t", 11), Counting(stop_pref=0.0), pool_failures=pool,
                              max_leaves=1000)
    msg = str(e.value)
    assert "1000" in msg and "max_rollouts" in msg and "--max-rollouts" in msg and "max_len" in msg
    assert ("pooling" in msg) == (not pool) and "\n" not in msg
    assert sum(calls) < 4 ** 5  # ~340 prefixes opened up to the level where 1000 is passed


def test_summary_success_is_a_probability():
    g = gw.path_star(3, 2, seed=1)
    ro = gw.enumerate_rollouts(gw.Task(g, *g.graph["prompts"][0], 2), gw.EdgePolicy(goal_aware=True))
    ro.log_prob = ro.log_prob + 1e-15  # exp(logsumexp) of an all-correct set may exceed 1 by rounding
    assert ro.summary()["success"] == 1.0


@pytest.mark.parametrize("bad", [float("inf"), 1e400, float("nan"), "3", True, 2.5, 0, -1, None])
def test_task_refuses_a_max_len_that_is_not_a_positive_integer(bad):
    g = gw.multi_route_dag(seed=0)
    s, t = g.graph["prompts"][0]
    with pytest.raises(gw.GraphworldError, match="max_len"):
        gw.Task(g, s, t, bad)


def test_path_sum_reaches_minus_inf_without_a_warning():
    import warnings
    tree = gw.PrefixTree(np.array([-1, 0, 1]), np.array([2]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = tree.path_sum(np.array([0.0, -1e308, -1e308]))
    assert out[2] == -np.inf and out[1] == -1e308


def test_vocab_refuses_a_missing_special_or_node_in_one_line():
    g = gw.multi_route_dag(2, 1, 1, seed=0)
    v = gw.Vocab.of(g)
    s, t = g.graph["prompts"][0]
    for call, words in ((lambda: v.encode_prompt(s, t, feedback=t), "no FB token"),
                        (lambda: v.encode_prompt(s, "nowhere"), "not a node")):
        with pytest.raises(gw.GraphworldError, match=words) as e:
            call()
        assert "\n" not in str(e.value)
    assert gw.Vocab.of(g, feedback=True).encode_prompt(s, t, feedback=t)[0] == gw.Vocab.of(g, feedback=True).special("FB")
