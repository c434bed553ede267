"""graphworld.feedback: the environment's feedback on failed rollouts and its compatibility c_f(y).

The brute-force reference reads each rollout as a set of events (moves with their step, visits
with their step, endpoint, length) and each feedback as a predicate over events, written apart
from the classes' `compatible`; the semantic checks are about the environment itself: every
feedback explains its own rollout's failure, every rollout it rules out fails, every correct
rollout is compatible, a DeadEnd's node is really out of reach (networkx distances)."""
import networkx as nx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphworld import EdgePolicy, GraphworldError, Task, enumerate_rollouts, multi_route_dag
from graphworld.feedback import (KEYWORDS, DeadEnd, InvalidMove, Overrun, SloppyPolicy, WrongEndpoint, compatibility,
                                 distinct_feedback, feedback_for_rollouts, feedback_of)

few = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KIND = {"invalid_move": InvalidMove, "dead_end": DeadEnd, "stop_elsewhere": WrongEndpoint, "truncated": Overrun}


def cyclic_task(seed: int, n: int = 4, p: float = 0.5, extra: int = 1) -> Task | None:
    rng = np.random.default_rng(seed)
    g = nx.DiGraph(nx.gnp_random_graph(n, p, seed=seed, directed=True))
    for u, v in g.edges:
        g.edges[u, v]["pref"] = float(rng.normal())
    if not nx.has_path(g, 0, n - 1):
        return None
    return Task(g, 0, n - 1, nx.shortest_path_length(g, 0, n - 1) + extra)


@st.composite
def rollout_sets(draw):
    """Unpooled Y(x) of a sloppy policy on a small cyclic graph or a multi-route DAG."""
    seed = draw(st.integers(0, 10**6))
    if draw(st.booleans()):
        task = cyclic_task(seed, draw(st.integers(3, 5)), draw(st.sampled_from([0.3, 0.5, 0.7])),
                           draw(st.integers(0, 2)))
        if task is None:
            task = cyclic_task(0, 3, 1.0, 1)  # complete digraph on 3 nodes
    else:
        g = multi_route_dag(draw(st.integers(2, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 2)), seed=seed,
                            n_sources=1, n_targets=draw(st.integers(1, 2)))
        s, t = g.graph["prompts"][0]
        task = Task(g, s, t, nx.dag_longest_path_length(g) + draw(st.integers(0, 1)))
    stop = draw(st.one_of(st.none(), st.floats(-2, 2)))
    slip = draw(st.sampled_from([0.0, 0.05, 0.3]))
    return enumerate_rollouts(task, SloppyPolicy(EdgePolicy(stop_pref=stop), slip), pool_failures=False)


# brute-force reference --------------------------------------------------------------------------
def events(path) -> set:
    ev = {("end", path[-1]), ("moves", len(path) - 1)}
    ev |= {("move", a, b, k) for k, (a, b) in enumerate(zip(path[:-1], path[1:]))}
    ev |= {("at", v, k) for k, v in enumerate(path)}
    return ev


def ruled_out(f, ev) -> bool:
    """Whether the events of a rollout contain the mistake f names (anywhere it can occur)."""
    if isinstance(f, InvalidMove):
        return any(e[0] == "move" and e[1:3] == (f.u, f.v) for e in ev)
    if isinstance(f, DeadEnd):
        return any(e[0] == "at" and e[1] == f.node and e[2] >= f.step for e in ev)
    if isinstance(f, WrongEndpoint):
        return ("end", f.node) in ev
    return any(e[0] == "moves" and e[1] > f.max_len for e in ev)


def brute_compatibility(fbs, ro) -> np.ndarray:
    evs = [events(p) for p in ro.paths]
    return np.array([[not ruled_out(f, ev) for ev in evs] for f in fbs], dtype=bool)


def test_every_kind_arises_and_matches_its_outcome():
    seen = set()
    for seed in range(40):
        task = cyclic_task(seed)
        if task is None:
            continue
        ro = enumerate_rollouts(task, SloppyPolicy(EdgePolicy(stop_pref=0.0), 0.2), pool_failures=False)
        for f, o in zip(feedback_for_rollouts(ro), ro.outcome):
            assert (f is None) == (o == "success")
            if f is not None:
                assert isinstance(f, KIND[o])
                seen.add(type(f))
    assert seen == set(KIND.values())


@given(rollout_sets())
@few
def test_compatibility_matches_brute_force_and_the_environment(ro):
    fbs = feedback_for_rollouts(ro)
    real = [f for f in fbs if f is not None]
    if not real:
        return
    C = compatibility(real, ro)
    assert C.shape == (len(real), len(ro)) and C.dtype == bool
    np.testing.assert_array_equal(C, brute_compatibility(real, ro))
    # semantics: a feedback rules out its own rollout, and only rollouts that fail; correct ones pass
    own = [i for i, f in enumerate(fbs) if f is not None]
    assert not C[np.arange(len(real)), own].any()
    assert np.all(ro.reward[~C.all(axis=0)] == 0)
    assert C[:, ro.reward == 1].all()
    dist = nx.single_target_shortest_path_length(ro.task.graph, ro.task.target)
    dist = dict(dist)
    for f in real:
        if isinstance(f, DeadEnd):  # a real dead end: t is out of reach with the moves left
            assert dist.get(f.node, np.inf) > ro.task.max_len - f.step or ro.task.graph.out_degree(f.node) == 0
        if isinstance(f, InvalidMove):
            assert not ro.task.graph.has_edge(f.u, f.v)


def prefix_specific(self, path):
    """The other semantics: the move u → v is ruled out only at its own step."""
    return not (len(path) > self.step + 1 and path[self.step] == self.u and path[self.step + 1] == self.v)


def test_sabotage_prefix_specific_invalid_move_is_caught(monkeypatch):
    """The same move made invalid at another step in another rollout: the brute force sees it."""
    caught = 0
    for seed in range(30):
        task = cyclic_task(seed, 4, 0.5, 2)
        if task is None:
            continue
        ro = enumerate_rollouts(task, SloppyPolicy(EdgePolicy(stop_pref=0.0), 0.3), pool_failures=False)
        real = [f for f in feedback_for_rollouts(ro) if f is not None]
        ref = brute_compatibility(real, ro)
        with monkeypatch.context() as m:
            m.setattr(InvalidMove, "compatible", prefix_specific)
            caught += not np.array_equal(compatibility(real, ro), ref)
        np.testing.assert_array_equal(compatibility(real, ro), ref)
    assert caught > 0


def test_sabotage_dead_end_anywhere_is_caught(monkeypatch):
    """A DeadEnd that ruled out every visit of its node (also early ones, with enough moves left)."""
    caught = 0
    for seed in range(40):
        task = cyclic_task(seed, 5, 0.4, 0)
        if task is None:
            continue
        ro = enumerate_rollouts(task, EdgePolicy(stop_pref=0.0), pool_failures=False)
        real = [f for f in feedback_for_rollouts(ro) if f is not None]
        if not real:
            continue
        with monkeypatch.context() as m:
            m.setattr(DeadEnd, "compatible", lambda self, p: self.node not in p)
            caught += not np.array_equal(compatibility(real, ro), brute_compatibility(real, ro))
    assert caught > 0


def test_feedback_of_each_outcome():
    g = nx.DiGraph([(0, 1), (1, 2), (1, 0), (2, 3), (0, 4)])
    task = Task(g, 0, 3, 3)
    assert feedback_of(task, (0, 1, 2, 3), "success") is None
    assert feedback_of(task, (0, 1, 3), "invalid_move") == InvalidMove(1, 1, 3)
    assert feedback_of(task, (0, 4), "dead_end") == DeadEnd(1, 4)
    assert feedback_of(task, (0, 1), "stop_elsewhere") == WrongEndpoint(1)
    assert feedback_of(task, (0, 1, 0, 1, 2), "truncated") == Overrun(3)
    f = InvalidMove(1, 1, 3)
    assert f.compatible((0, 1, 2, 3)) and not f.compatible((0, 1, 0, 1, 3)) and not f.compatible((0, 1, 3))
    d = DeadEnd(2, 1)
    assert d.compatible((0, 1, 2, 3)) and not d.compatible((0, 1, 0, 1))
    assert WrongEndpoint(1).compatible((0, 1, 2)) and not WrongEndpoint(1).compatible((0, 1, 0, 1))
    assert Overrun(3).compatible((0, 1, 2, 3)) and not Overrun(3).compatible((0, 1, 0, 1, 2))


@pytest.mark.parametrize("path,outcome,needle", [
    ((0, 1, 3), "success", "not a valid walk"),
    ((0, 1, 2), "invalid_move", "non-edge"),
    ((1, 2), "stop_elsewhere", "source"),
    ((0, 1, 2, 3), "stop_elsewhere", "target"),
    ((0, 1, 2), "truncated", "max_len"),
    ((0, 1, 3), "dead_end", "non-edge"),
    ((0, 1), "exploded", "unknown rollout outcome"),
    ((0, 1, "FAIL"), "fail", "pooled"),
    ((), "dead_end", "at least the source"),
])
def test_feedback_of_refuses_inconsistent_input(path, outcome, needle):
    g = nx.DiGraph([(0, 1), (1, 2), (1, 0), (2, 3), (0, 4)])
    with pytest.raises(GraphworldError, match=needle) as e:
        feedback_of(Task(g, 0, 3, 3), path, outcome)
    assert "\n" not in str(e.value)


def test_pooled_leaves_are_refused():
    g = multi_route_dag(2, 1, 2, seed=1, n_sources=1, n_targets=2)
    s, t = g.graph["prompts"][0]
    ro = enumerate_rollouts(Task(g, s, t, 3), EdgePolicy(stop_pref=0.0), pool_failures=True)
    assert "fail" in ro.outcome
    for call in (lambda: feedback_for_rollouts(ro), lambda: compatibility([WrongEndpoint(s)], ro),
                 lambda: WrongEndpoint(s).compatible(ro.paths[ro.outcome.index("fail")])):
        with pytest.raises(GraphworldError, match="pooled_failures=False|pool_failures=False") as e:
            call()
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("make,needle", [
    (lambda: InvalidMove(-1, 0, 1), "step"), (lambda: DeadEnd(1.5, 0), "step"), (lambda: DeadEnd(True, 0), "step"),
    (lambda: Overrun(0), "max_len"), (lambda: SloppyPolicy(EdgePolicy(), 1.0), "slip"),
    (lambda: SloppyPolicy(EdgePolicy(), float("nan")), "slip"),
])
def test_bad_constructor_input(make, needle):
    with pytest.raises(GraphworldError, match=needle):
        make()


def test_compatibility_refuses_non_feedback():
    task = cyclic_task(0, 3, 1.0, 1)
    ro = enumerate_rollouts(task, EdgePolicy(stop_pref=0.0), pool_failures=False)
    with pytest.raises(GraphworldError, match="not a feedback"):
        compatibility([None], ro)
    with pytest.raises(GraphworldError, match="RolloutSet"):
        compatibility([], ro.paths)
    assert compatibility([], ro).shape == (0, len(ro))


@given(rollout_sets())
@few
def test_text_words_and_classes(ro):
    fbs = feedback_for_rollouts(ro)
    nodes = set(ro.task.graph.nodes)
    for f in fbs:
        if f is None:
            continue
        assert isinstance(f.text(), str) and "\n" not in f.text() and f.text()
        w = f.words()
        assert w[0] in KEYWORDS and all(x in nodes for x in w[1:])
        assert hash(f) == hash(type(f)(**f.__dict__))
    classes, index = distinct_feedback(ro)
    assert len(set(classes)) == len(classes)
    for i, f in enumerate(fbs):
        assert (index[i] == -1) == (f is None)
        if f is not None:
            assert classes[index[i]] == f


@given(rollout_sets())
@few
def test_sloppy_policy_is_a_distribution(ro):
    """Each prefix's conditionals sum to 1 over its children (the enumeration keeps all of them)."""
    tree = ro.tree
    tot = np.full(tree.n_nodes, -np.inf)
    np.logaddexp.at(tot, tree.parent[1:], ro.log_cond[1:])
    internal = np.setdiff1d(np.arange(tree.n_nodes), tree.leaf_node)
    np.testing.assert_allclose(np.exp(tot[internal]), 1.0, atol=1e-12)
    assert abs(np.exp(np.logaddexp.reduce(ro.log_prob)) - 1) < 1e-9


def test_sloppy_policy_without_slip_is_the_base():
    task = cyclic_task(3, 4, 0.6, 1) or cyclic_task(0, 3, 1.0, 1)
    base = EdgePolicy(stop_pref=-0.5)
    a = enumerate_rollouts(task, base, pool_failures=False)
    b = enumerate_rollouts(task, SloppyPolicy(base, 0.0), pool_failures=False)
    assert a.paths == b.paths
    np.testing.assert_allclose(a.log_prob, b.log_prob)
