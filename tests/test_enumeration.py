"""graphworld.enumeration: the level-wise path for Markov policies gives exactly the per-prefix answer.

Every Markov (EdgePolicy) enumeration is compared with the generic per-prefix loop, reached by hiding
the policy's `markov` flag behind a wrapper: same tree, tokens, paths, outcomes, labels and rewards,
log-probabilities to 1e-12, on hypothesis-generated graphs (multi-route DAGs, path-stars, random DAGs),
policies (STOP or not, goal-aware, temperatures) and length caps, with and without failure pooling.
The block-wise level expansion (bounded temporaries) is compared with the whole-level one it replaced
(kept below as a reference) bit for bit, dtypes included, at block sizes down to one prefix.
"""
from __future__ import annotations

from contextlib import contextmanager
from unittest import mock

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


# --- the block-wise level expansion against the whole-level one it replaced ----------------------

class Stuck:
    """`policy` with no action at all at the `stuck` graph nodes (a walk reaching one is stuck there)."""
    markov = True

    def __init__(self, policy, stuck):
        self.policy, self.stuck, self.has_stop = policy, set(stuck), policy.has_stop

    def next_logprobs(self, task, paths):
        return [{} if p[-1] in self.stuck else lp for p, lp in zip(paths, self.policy.next_logprobs(task, paths))]


@contextmanager
def block_size(n: int):
    with mock.patch.object(E, "_BLOCK", n):
        yield


def levelwise(task, policy, pool=True, cap=1_000_000):
    return E._enumerate_markov(task, policy, E._markov_table(task, policy), pool, cap)


def reference(task, policy, pool=True, cap=1_000_000):
    return reference_enumerate_markov(task, policy, E._markov_table(task, policy), pool, cap)


def assert_identical(a, b):
    """Bit for bit and dtype for dtype: tree, tokens, paths (ids, lengths, token table), leaf arrays."""
    for x, y in [(a.tree.parent, b.tree.parent), (a.tree.leaf_node, b.tree.leaf_node), (a.tree.depth, b.tree.depth),
                 (a.log_cond, b.log_cond), (a.log_prob, b.log_prob), (a.reward, b.reward), (a.route, b.route),
                 (a.paths.ids, b.paths.ids), (a.paths.length, b.paths.length)]:
        assert x.dtype == y.dtype and np.array_equal(x, y)
    assert len(a.tree._levels) == len(b.tree._levels)
    assert all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a.tree._levels, b.tree._levels))
    assert a.token == b.token and a.outcome == b.outcome and list(a.paths) == list(b.paths)
    assert a.paths.tok_obj.tolist() == b.paths.tok_obj.tolist()


@settings(max_examples=60, deadline=None)
@given(tasks(), policies(), st.booleans(), st.sampled_from([1, 2, 3, 7, 64, 1 << 16]), st.data())
def test_blockwise_levels_equal_the_whole_level_reference(task, policy, pool, block, data):
    nodes = sorted(task.graph.nodes, key=str)
    stuck = data.draw(st.lists(st.sampled_from(nodes), max_size=2)) if data.draw(st.booleans()) else []
    policy = Stuck(policy, [v for v in stuck if v != task.target])
    with block_size(block):
        got = levelwise(task, policy, pool)
    assert_identical(got, reference(task, policy, pool))
    if stuck:  # stuck prefixes: the per-prefix loop too (its dead ends keep the prefix's label)
        assert_same_rollouts(got, enumerate_rollouts(task, PerPrefix(policy), pool_failures=pool))


def stuck_instance():
    """STOP anywhere, failures pooled, one mid-route node stuck: its level mixes STOP leaves, pooled
    failure leaves and a stuck prefix, several prefixes per block."""
    g = multi_route_dag(3, 2, 3, seed=1, n_sources=1)
    t = tasks_of(g)[0]
    task = Task(t.graph, t.source, t.target, t.max_len + 1)
    mid = [v for v in nx.descendants(g, task.source) if g.out_degree(v) and v != task.target
           and nx.shortest_path_length(g, task.source, v) == 2]
    return task, Stuck(EdgePolicy(stop_pref=0.0), sorted(mid, key=str)[:1])


def test_stuck_instance_has_what_the_sabotages_need():
    task, policy = stuck_instance()
    ro = reference(task, policy)
    assert {"success", "fail"} <= set(ro.outcome)
    stuck = [i for i, o in enumerate(ro.outcome) if o == "dead_end"]
    depth = ro.tree.depth[ro.tree.leaf_node]
    assert stuck and any(np.any(depth[i + 1:] == depth[i]) for i in stuck)  # not its level's last leaf


@pytest.mark.parametrize("block", [1, 2, 5, 16])
@pytest.mark.parametrize("pool", [True, False])
def test_blockwise_levels_on_a_medium_instance(block, pool):
    """Many prefixes per level, at block sizes that split them; the rollout cap still binds exactly
    at the number of rollouts."""
    task, stuck = stuck_instance()
    for policy in (stuck, EdgePolicy(stop_pref=0.0), EdgePolicy(goal_aware=True), EdgePolicy(temperature=3.0)):
        right = reference(task, policy, pool)
        with block_size(block):
            assert_identical(levelwise(task, policy, pool), right)
            assert len(levelwise(task, policy, pool, cap=len(right))) == len(right)
            with pytest.raises(GraphworldError, match="rollout cap"):
                levelwise(task, policy, pool, cap=len(right) - 1)


@pytest.mark.parametrize("sabotage", ["stuck_leaves_not_merged", "pooled_leaves_after_the_block",
                                      "parent_log_prob_dropped"])
def test_sabotage_blockwise_levels_are_caught(monkeypatch, sabotage):
    """Plausible slips in the block-wise path: a level's stuck prefixes appended after its other leaves
    instead of merged in node order; the pooled failure leaves of a block put after all its other
    children (not after their own prefix's); a leaf's log π0 taken as its last token's alone."""
    task, policy = stuck_instance()
    right = reference(task, policy)
    if sabotage == "stuck_leaves_not_merged":
        monkeypatch.setattr(E, "_level_leaves",
                            lambda made, stuck: tuple(np.concatenate(c) for c in zip(*(made + stuck))))
    elif sabotage == "pooled_leaves_after_the_block":
        real = E._children

        def children(w, f_cur, f_z, d):
            out = real(w, f_cur, f_z, d)
            o = np.argsort(out[4] == E._CODES.index("fail"), kind="stable")
            return tuple(x[o] for x in out)
        monkeypatch.setattr(E, "_children", children)
    else:
        real_lc = E._level_leaves
        monkeypatch.setattr(E, "_level_leaves", lambda made, stuck: real_lc(
            [(i, c, np.zeros_like(lp), z) for i, c, lp, z in made], stuck))
    with block_size(4), pytest.raises(AssertionError):
        assert_identical(levelwise(task, policy), right)


@settings(max_examples=40, deadline=None)
@given(st.data(), st.sampled_from([1, 2, 3, 1 << 16]))
def test_blockwise_tree_checks_equal_the_whole_array_checks(data, block):
    """PrefixTree's parents-first and depth checks, done block by block, reject exactly what the
    whole-array checks reject; its levels are the stable argsort's (ranges when numbered breadth first)."""
    n = data.draw(st.integers(2, 40))
    bfs = data.draw(st.booleans())
    parent = [-1] + [data.draw(st.integers(0, c - 1)) for c in range(1, n)]
    parent = np.array([-1] + sorted(parent[1:]) if bfs else parent, dtype=np.int64)
    if data.draw(st.booleans()):  # a non-parents-first pointer somewhere, or a second root
        c = data.draw(st.integers(1, n - 1))
        parent[c] = data.draw(st.integers(c, n - 1) | st.just(-1))
    depth = np.zeros(n, np.int64)
    for c in range(1, n):
        depth[c] = depth[min(parent[c], c - 1)] + 1
    if data.draw(st.booleans()):
        depth[data.draw(st.integers(1, n - 1))] += data.draw(st.sampled_from([-1, 1]))
    parents_first = bool(np.all((parent[1:] < np.arange(1, n)) & (parent[1:] >= 0)))
    depths_ok = bool(np.all(depth[1:] == depth[parent[1:]] + 1))
    with block_size(block):
        if not parents_first:
            with pytest.raises(GraphworldError, match="parents-first"):
                PrefixTree(parent, np.array([n - 1]), depth)
        elif not depths_ok:
            with pytest.raises(GraphworldError, match="depth"):
                PrefixTree(parent, np.array([n - 1]), depth)
        else:
            tree = PrefixTree(parent, np.array([n - 1]), depth)
            expected = np.split(np.argsort(depth, kind="stable"), np.cumsum(np.bincount(depth))[:-1])
            assert all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(tree._levels, expected))
            assert len(tree._levels) == len(expected)


def test_sabotage_tree_check_of_the_first_block_only_is_caught():
    """A bad depth in the second block: checking only the first block would accept it."""
    parent, depth = np.array([-1, 0, 1, 2, 3]), np.array([0, 1, 2, 3, 5])

    def first_block_only(parent, bad):
        c = np.arange(1, min(1 + E._BLOCK, len(parent)))
        return bool(np.any(bad(c, parent[c])))
    with block_size(2):
        with pytest.raises(GraphworldError, match="depth"):
            PrefixTree(parent, np.array([4]), depth)
        with mock.patch.object(E, "_any_in_blocks", first_block_only):
            PrefixTree(parent, np.array([4]), depth)  # the sabotage lets it through


def test_blocks_cover_the_frontier_in_order_within_the_bounds():
    deg = np.array([0, 5, 1, 1, 9, 0, 0, 2, 3])
    with block_size(4):
        blocks = list(E._blocks(deg))
    assert [lo for lo, _ in blocks] == [0] + [hi for _, hi in blocks[:-1]] and blocks[-1][1] == len(deg)
    assert all(hi - lo <= 4 and (deg[lo:hi].sum() <= 4 or hi - lo == 1) for lo, hi in blocks)


# The whole-level expansion before blocks: the reference for the block-wise one.

def reference_enumerate_markov(task: Task, policy, table, pool_failures: bool, cap: int):
    """The level-wise path as it was before blocks (389 MB peak at 10⁶ paths): whole levels at once."""
    g, t, L = task.graph, task.target, task.max_len
    has_stop = bool(getattr(policy, "has_stop", True))
    nodes, index, off, acts, lps = table
    V = len(nodes)
    STOP_ID, FAIL_ID = V, V + 1
    dist = nx.single_target_shortest_path_length(g, t)
    dist = dict(dist) if not isinstance(dist, dict) else dist
    # per token id (nodes, then STOP): concept label, distance to t, out-degree
    concept = np.array([-1 if g.nodes[v].get("concept") is None else int(g.nodes[v]["concept"]) for v in nodes]
                       + [-1], np.int32)
    dist_t = np.array([dist.get(v, np.inf) for v in nodes] + [np.inf])
    outdeg = np.array([g.out_degree(v) for v in nodes] + [0], np.int64)
    src = np.repeat(np.arange(V), np.diff(off))
    is_edge = np.array([a == STOP_ID or g.has_edge(nodes[u], nodes[a]) for u, a in zip(src, acts)], bool)
    t_id = index[t]

    par, tok, lcond, label = [np.array([-1])], [np.array([index[task.source]])], [np.zeros(1)], \
        [np.array([concept[index[task.source]]])]
    level = [np.zeros(1, np.int32)]
    leaf_ids, leaf_code = [], []
    f_node, f_cur, f_z = np.array([0]), np.array([index[task.source]]), label[0].copy()
    n_nodes, n_leaves, d = 1, 0, 0
    while len(f_node):
        deg = off[f_cur + 1] - off[f_cur]
        stuck = deg == 0  # no action at all: the walk is stuck here
        leaf_ids.append(f_node[stuck])
        leaf_code.append(np.full(int(stuck.sum()), E._CODES.index("dead_end")))
        rep = np.repeat(np.arange(len(f_node)), deg)
        pos = np.arange(len(rep)) - np.repeat(np.cumsum(deg) - deg, deg)
        a = off[f_cur][rep] + pos
        k, lc, zh = acts[a], lps[a], f_z[rep]
        z = np.where((zh != -1) | (k == STOP_ID), zh, concept[k])
        stop = k == STOP_ID
        code = E._outcome_codes(k, ~is_edge[a], f_cur[rep] == t_id, dist_t[k], outdeg[k], k == t_id, stop,
                                d, L, has_stop)
        pooled = (code != E._CONTINUE) & (code != 0) if pool_failures else np.zeros(len(k), bool)
        keep = ~pooled
        # pooled failures: one leaf per (prefix, label), in label order, after the prefix's other children
        pr, pz, plc = rep[pooled], z[pooled], lc[pooled]
        if len(pr):
            o = np.lexsort((pz, pr))
            pr, pz, plc = pr[o], pz[o], plc[o]
            starts = np.flatnonzero(np.r_[True, (pr[1:] != pr[:-1]) | (pz[1:] != pz[:-1])])
            plc, pr, pz = E._segment_logsumexp(plc, starts), pr[starts], pz[starts]
        new_rep = np.r_[rep[keep], pr]
        group = np.r_[np.zeros(int(keep.sum()), np.int64), np.ones(len(pr), np.int64)]
        within = np.r_[pos[keep], pz]
        order = np.lexsort((within, group, new_rep))
        n_rep = new_rep[order]
        n_tok = np.r_[k[keep], np.full(len(pr), FAIL_ID)][order]
        n_lc = np.r_[lc[keep], plc][order]
        n_z = np.r_[z[keep], pz][order]
        n_zh = f_z[n_rep]
        n_code = np.r_[code[keep], np.full(len(pr), E._CODES.index("fail"))][order]
        ids = n_nodes + np.arange(len(order))
        is_leaf = n_code != E._CONTINUE
        n_leaves += int(stuck.sum()) + int(is_leaf.sum())
        if n_leaves + int((~is_leaf).sum()) > cap:  # each open prefix ends in ≥ 1 rollout
            raise E._cap_error(cap, pool_failures)
        # a FAIL:z leaf (its walks enter route z from an unlabelled prefix) gets the token id FAIL_ID + 1 + z
        n_tok = np.where((n_tok == FAIL_ID) & (n_z != n_zh), FAIL_ID + 1 + n_z, n_tok)
        par.append(f_node[n_rep])
        tok.append(n_tok)
        lcond.append(n_lc)
        label.append(n_z)
        level.append(np.full(len(ids), d + 1, np.int32))
        leaf_ids.append(ids[is_leaf])
        leaf_code.append(n_code[is_leaf])
        n_nodes += len(ids)
        f_node, f_cur, f_z = ids[~is_leaf], n_tok[~is_leaf], n_z[~is_leaf]
        d += 1

    parent, tok, lcond, label, level = (np.concatenate(a) for a in (par, tok, lcond, label, level))
    del par, f_node, f_cur, f_z
    leaf_ids, leaf_code = np.concatenate(leaf_ids), np.concatenate(leaf_code).astype(np.int8)
    o = np.argsort(leaf_ids, kind="stable")
    leaf_nodes, leaf_code = leaf_ids[o], leaf_code[o]
    tree = PrefixTree(parent, leaf_nodes, level)
    n_labels = int(label.max(initial=-1)) + 1
    tok_obj = np.empty(V + 2 + n_labels, dtype=object)
    tok_obj[:V] = nodes
    tok_obj[STOP_ID], tok_obj[FAIL_ID] = E.STOP, E.FAIL
    tok_obj[FAIL_ID + 1:] = [E.fail_token(zz, -1) for zz in range(n_labels)]
    paths = reference_leaf_paths(tree, tok, leaf_nodes, tok_obj, STOP_ID)
    node_logp = tree.path_sum(lcond)
    outcome = np.array(E._CODES, dtype=object)[leaf_code].tolist()
    reward = (leaf_code == 0).astype(np.int64)
    return E.RolloutSet(task, tree, tok_obj[tok].tolist(), lcond, paths, node_logp[leaf_nodes], reward,
                      label[leaf_nodes].astype(np.int64), outcome)


def reference_leaf_paths(tree, tok, leaf_nodes, tok_obj, stop_id):
    """Each leaf's path: the tokens from the root to it, STOP left out (built from parent pointers)."""
    depth = tree.depth[leaf_nodes]
    D = int(depth.max(initial=0))
    ids = np.zeros((len(leaf_nodes), D + 1), np.int32)
    cur = leaf_nodes.copy()
    for col in range(D, -1, -1):  # column col: the ancestor at depth col (a row joins at its own depth)
        on = depth >= col
        ids[on, col] = tok[cur[on]]
        cur[on] = tree.parent[cur[on]]
    length = depth + 1 - (tok[leaf_nodes] == stop_id)
    return LeafPaths(ids, length.astype(np.int32), tok_obj)


