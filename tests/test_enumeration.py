"""graphworld.enumeration: the level-wise path for Markov policies gives exactly the per-prefix answer.

Every Markov (EdgePolicy) enumeration is compared with the generic per-prefix loop, reached by hiding
the policy's `markov` flag behind a wrapper: same tree, tokens, paths, outcomes, labels and rewards,
log-probabilities to 1e-12, on hypothesis-generated graphs (multi-route DAGs, path-stars, random DAGs),
policies (STOP or not, goal-aware, temperatures) and length caps, with and without failure pooling.
"""
from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from graphworld import enumeration as E
from graphworld.enumeration import LeafPaths, PrefixTree, enumerate_rollouts
from graphworld.errors import GraphworldError
from graphworld.graphs import multi_route_dag, path_star, random_dag
from graphworld.policy import EdgePolicy
from graphworld.tasks import Task, tasks_of
from pcmi.testing import graphs


class PerPrefix:
    """The same policy without the Markov flag: enumeration takes the generic per-prefix loop."""

    def __init__(self, policy):
        self.policy, self.has_stop = policy, policy.has_stop

    def next_logprobs(self, task, paths):
        return self.policy.next_logprobs(task, paths)


def assert_same_rollouts(a, b):
    assert np.array_equal(a.tree.parent, b.tree.parent)
    assert np.array_equal(a.tree.leaf_node, b.tree.leaf_node)
    assert np.array_equal(a.tree.depth, b.tree.depth)
    assert a.token == b.token
    assert list(a.paths) == list(b.paths) and a.paths == b.paths
    assert a.outcome == b.outcome
    assert np.array_equal(a.reward, b.reward) and np.array_equal(a.route, b.route)
    np.testing.assert_allclose(a.log_cond, b.log_cond, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.log_prob, b.log_prob, rtol=0, atol=1e-12)


@st.composite
def policies(draw):
    return EdgePolicy(temperature=draw(st.sampled_from([0.25, 1.0, 3.0])),
                      stop_pref=draw(st.one_of(st.none(), st.floats(-3.0, 3.0))),
                      goal_aware=draw(st.booleans()))


@st.composite
def tasks(draw):
    kind = draw(st.sampled_from(["multi_route", "path_star", "random_dag"]))
    if kind == "multi_route":
        g = draw(graphs(max_routes=3, max_depth=2, max_branching=3))
    elif kind == "path_star":
        g = path_star(draw(st.integers(1, 4)), draw(st.integers(1, 3)), seed=draw(st.integers(0, 99)))
    else:
        g = random_dag(draw(st.integers(4, 10)), draw(st.sampled_from([0.3, 0.6])), seed=draw(st.integers(0, 99)))
    found = tasks_of(g)
    if not found:
        g = multi_route_dag(2, 1, 2, seed=0, n_sources=1)
        found = tasks_of(g)
    t = draw(st.sampled_from(found))
    return Task(t.graph, t.source, t.target, t.max_len + draw(st.integers(0, 2)))


@settings(max_examples=60, deadline=None)
@given(tasks(), policies(), st.booleans())
def test_levelwise_markov_enumeration_equals_the_per_prefix_loop(task, policy, pool):
    assert_same_rollouts(enumerate_rollouts(task, policy, pool_failures=pool),
                         enumerate_rollouts(task, PerPrefix(policy), pool_failures=pool))


@pytest.mark.parametrize("sabotage", ["depth_off_by_one", "labels_ignored"])
def test_sabotage_levelwise_path_is_caught(monkeypatch, sabotage):
    """Plausible slips in the level-wise path: the move count off by one (truncation and dead ends
    judged one move late), or a prefix's failures pooled into one leaf whatever their route label."""
    g = random_dag(10, 0.5, seed=1)
    t = max(tasks_of(g), key=lambda t: nx.shortest_path_length(g, t.source, t.target))
    task = Task(g, t.source, t.target, nx.shortest_path_length(g, t.source, t.target))  # the cap binds
    policy = EdgePolicy(stop_pref=0.0)
    right = enumerate_rollouts(task, PerPrefix(policy))
    if sabotage == "depth_off_by_one":
        real = E._outcome_codes
        monkeypatch.setattr(E, "_outcome_codes", lambda *a: real(*a[:7], a[7] - 1, *a[8:]))
    else:
        real = E._segment_logsumexp
        monkeypatch.setattr(E, "_segment_logsumexp", lambda x, starts: real(x, starts[:1]).repeat(len(starts)))
    with pytest.raises(AssertionError):
        assert_same_rollouts(enumerate_rollouts(task, policy), right)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_depths_by_pointer_doubling_equal_the_parent_recursion(data):
    n = data.draw(st.integers(1, 60))
    parent = np.array([-1] + [data.draw(st.integers(0, c - 1)) for c in range(1, n)], dtype=np.int64)
    expected = np.zeros(n, dtype=np.int64)
    for c in range(1, n):
        expected[c] = expected[parent[c]] + 1
    assert np.array_equal(E._depths(parent), expected)
    tree = PrefixTree(parent, np.array([n - 1]))
    assert np.array_equal(tree.depth, expected)
    levels = np.concatenate(tree._levels)
    assert sorted(levels.tolist()) == list(range(n))
    assert all(np.all(expected[lv] == d) for d, lv in enumerate(tree._levels))


def test_given_depths_are_checked():
    parent = np.array([-1, 0, 1, 0])
    PrefixTree(parent, np.array([2, 3]), np.array([0, 1, 2, 1]))
    with pytest.raises(GraphworldError, match="depth"):
        PrefixTree(parent, np.array([2, 3]), np.array([0, 1, 1, 1]))


def test_leaf_paths_behave_like_a_list_of_tuples():
    ro = enumerate_rollouts(tasks_of(multi_route_dag(3, 2, 2, seed=1, n_sources=1))[0], EdgePolicy(stop_pref=0.0))
    assert isinstance(ro.paths, LeafPaths)
    as_list = [ro.paths[i] for i in range(len(ro.paths))]
    assert list(ro.paths) == as_list and ro.paths == as_list and not ro.paths != as_list
    assert ro.paths[1:4] == as_list[1:4] and len(ro.paths) == len(ro)
    assert ro.paths != as_list[:-1] and ro.paths != as_list[::-1]
    assert all(isinstance(p, tuple) and p[0] == ro.task.source for p in ro.paths)
    assert {p: i for i, p in enumerate(ro.paths)}[as_list[-1]] == len(as_list) - 1


def test_rollout_cap_is_the_same_on_both_paths():
    task = tasks_of(multi_route_dag(3, 2, 2, seed=1, n_sources=1))[0]
    n = len(enumerate_rollouts(task, EdgePolicy(stop_pref=0.0)))
    assert len(enumerate_rollouts(task, EdgePolicy(stop_pref=0.0), max_leaves=n)) == n
    for policy in (EdgePolicy(stop_pref=0.0), PerPrefix(EdgePolicy(stop_pref=0.0))):
        with pytest.raises(GraphworldError, match="rollout cap"):
            enumerate_rollouts(task, policy, max_leaves=n - 1)
