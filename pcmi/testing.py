"""Hypothesis strategies for pcmi objects, composed from small pieces (like dit's `testing`).

Pieces: log-weights with extreme spreads → distributions → strategy laws → teachers →
instances; graphs → tasks → graph instances; β and eps including values near their edges.
"""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from scipy.special import log_softmax, logsumexp

from graphworld import EdgePolicy, Task, multi_route_dag

from .instance import Instance, demos_from_successes
from .teachers import CopyTeacher, KernelTeacher, LatentStrategyTeacher

# logits spanning e^-60 .. 1 relative mass: near-zero probabilities without exact zeros
logit = st.floats(min_value=-60.0, max_value=0.0, allow_nan=False, allow_infinity=False)
betas = st.one_of(st.sampled_from([1e-12, 1e-6, 1e-3, 1e3, 1e6, 1e12]),
                  st.floats(min_value=1e-3, max_value=1e3, allow_nan=False))
eps_open = st.one_of(st.sampled_from([1e-9, 1e-6, 1 - 1e-6, 1 - 1e-9]),
                     st.floats(min_value=1e-4, max_value=1 - 1e-4))
eps_closed = st.one_of(st.just(0.0), st.just(1.0), eps_open)


@st.composite
def log_distributions(draw, n=None, min_n: int = 2, max_n: int = 8):
    """A log-distribution over n outcomes (n drawn if not given)."""
    n = draw(st.integers(min_n, max_n)) if n is None else n
    return log_softmax(np.array(draw(st.lists(logit, min_size=n, max_size=n))))


@st.composite
def rewards(draw, n: int, all_correct: bool = False):
    if all_correct:
        return np.ones(n, dtype=np.int64)
    r = np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)), dtype=np.int64)
    r[draw(st.integers(0, n - 1))] = 1
    return r


@st.composite
def disjoint_laws(draw, max_k: int = 4, max_m: int = 3):
    """(log_w, log_P, route) for disjoint strategies (route-copying)."""
    sizes = draw(st.lists(st.integers(1, max_m), min_size=2, max_size=max_k))
    route = np.repeat(np.arange(len(sizes)), sizes)
    log_P = np.full((len(sizes), len(route)), -np.inf)
    for z, m in enumerate(sizes):
        log_P[z, route == z] = draw(log_distributions(n=m)) if m > 1 else 0.0
    return draw(log_distributions(n=len(sizes))), log_P, route


@st.composite
def overlapping_laws(draw, max_n: int = 6, max_k: int = 3):
    """(log_w, log_P) for strategies with full-support laws over n rollouts."""
    n, k = draw(st.integers(2, max_n)), draw(st.integers(2, max_k))
    return draw(log_distributions(n=k)), np.stack([draw(log_distributions(n=n)) for _ in range(k)])


@st.composite
def route_copying_instances(draw, all_correct: bool = True, eps=eps_open):
    log_w, log_P, route = draw(disjoint_laws())
    t = LatentStrategyTeacher(log_w, log_P, draw(eps))
    r = draw(rewards(len(route), all_correct))
    return Instance(t.log_base, r, t, demos_from_successes(t.log_base, r), route=route)


@st.composite
def latent_instances(draw, eps=eps_closed, all_correct: bool = False):
    log_w, log_P = draw(overlapping_laws())
    t = LatentStrategyTeacher(log_w, log_P, draw(eps))
    r = draw(rewards(t.n, all_correct))
    return Instance(t.log_base, r, t, demos_from_successes(t.log_base, r),
                    route=np.argmax(log_w[:, None] + log_P, axis=0))


@st.composite
def kernel_instances(draw, max_n: int = 6):
    n = draw(st.integers(2, max_n))
    lb = draw(log_distributions(n=n))
    rows = np.stack([draw(log_distributions(n=n)) for _ in range(n)])
    r = draw(rewards(n))
    return Instance(lb, r, KernelTeacher(rows), demos_from_successes(lb, r))


@st.composite
def copy_instances(draw, max_n: int = 6):
    lb = draw(log_distributions(max_n=max_n))
    r = draw(rewards(len(lb)))
    return Instance(lb, r, CopyTeacher(lb, draw(st.floats(0.0, 1 - 1e-6))), demos_from_successes(lb, r))


def explicit_instances():
    """Any finite instance: route-copying, overlapping latent, copy or explicit kernel."""
    return st.one_of(route_copying_instances(all_correct=False), latent_instances(eps=eps_open),
                     kernel_instances(), copy_instances())


@st.composite
def graphs(draw, max_routes: int = 3, max_depth: int = 2, max_branching: int = 2, n_targets=None):
    """A seeded multi-route DAG with one source (and 1–2 targets unless given)."""
    return multi_route_dag(draw(st.integers(2, max_routes)), draw(st.integers(0, max_depth)),
                           draw(st.integers(1, max_branching)), seed=draw(st.integers(0, 2**31 - 1)),
                           n_sources=1, n_targets=draw(st.integers(1, 2)) if n_targets is None else n_targets,
                           pref_scale=draw(st.sampled_from([0.5, 1.0, 4.0])))


@st.composite
def edge_policies(draw):
    return EdgePolicy(temperature=draw(st.sampled_from([0.25, 1.0, 3.0])),
                      stop_pref=draw(st.one_of(st.none(), st.floats(-3.0, 3.0))))


@st.composite
def teacher_specs(draw):
    kind = draw(st.sampled_from(["route_copying", "soft_route", "copy"]))
    if kind == "copy":
        return {"kind": "copy", "lam": draw(st.floats(0.0, 0.999))}
    spec = {"kind": kind, "eps": draw(st.floats(1e-3, 0.999))}
    if kind == "soft_route":
        spec["sharpness"] = draw(st.floats(0.0, 8.0))
    return spec


@st.composite
def graph_instances(draw, teacher=None, n_targets=None, extra_len: int = 2):
    """(Instance, RolloutSet) of one prompt of a generated graph."""
    from .graph_instance import graph_instance
    g = draw(graphs(n_targets=n_targets))
    s, t = g.graph["prompts"][0]
    import networkx as nx
    task = Task(g, s, t, nx.shortest_path_length(g, s, t) + extra_len)
    return graph_instance(task, draw(edge_policies()), draw(teacher_specs()) if teacher is None else teacher)


# --- extremes: exact zeros, 1e-300 masses, eps ∈ {0, 1}, one or all correct, prefix trees ------

LOG_TINY = float(np.log(1e-300))
extreme_logit = st.one_of(logit, st.just(-np.inf), st.just(LOG_TINY))


@st.composite
def extreme_log_distributions(draw, n: int):
    """A log-distribution over n outcomes with exact zeros (−inf) and 1e-300 masses allowed."""
    v = np.array(draw(st.lists(extreme_logit, min_size=n, max_size=n)))
    if not np.isfinite(v).any():
        v[draw(st.integers(0, n - 1))] = 0.0
    return v - logsumexp(v)


@st.composite
def prefix_trees(draw, n: int, max_depth: int = 3):
    """A prefix tree with n leaves in a random order (flat, chains and deep branches included)."""
    from graphworld.enumeration import PrefixTree
    if draw(st.booleans()):
        return PrefixTree.flat(n)
    parent, leaf_node = [-1], np.zeros(n, dtype=np.int64)

    def grow(node, leaves, depth):
        cuts = sorted(set(draw(st.lists(st.integers(1, len(leaves) - 1), max_size=3)))) if len(leaves) > 1 else []
        for group in np.split(np.asarray(leaves), cuts):
            parent.append(node)
            child = len(parent) - 1
            if len(group) == 1 and (depth >= max_depth or draw(st.booleans())):
                leaf_node[group[0]] = child
            elif depth >= max_depth:
                parent.pop()
                for y in group:
                    parent.append(node)
                    leaf_node[y] = len(parent) - 1
            else:
                grow(child, list(group), depth + 1)

    grow(0, draw(st.permutations(range(n))), 1)
    return PrefixTree(np.array(parent), leaf_node)


@st.composite
def extreme_instances(draw, max_n: int = 6, trees: bool = True, kinds=("latent", "route_copying", "copy", "kernel")):
    """Any valid instance built from extremes: zero-probability rollouts, 1e-300 masses, eps and lam
    in {0, 1}, exactly one or all rollouts correct, D = π0(·|r=1), uniform or a single correct
    rollout, on a flat or random prefix tree."""
    n = draw(st.integers(2, max_n))
    kind = draw(st.sampled_from(kinds))
    route = None
    if kind == "latent":
        k = draw(st.integers(1, 3))
        log_w, log_P = draw(extreme_log_distributions(k)), np.stack([draw(extreme_log_distributions(n)) for _ in range(k)])
        t = LatentStrategyTeacher(log_w, log_P, draw(eps_closed))
        log_base = t.log_base
        route = np.argmax(log_w[:, None] + log_P, axis=0)
    else:
        log_base = draw(extreme_log_distributions(n))
        if kind == "route_copying":
            route = np.array(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))
            t = LatentStrategyTeacher.route_copying(log_base, route, draw(eps_closed))
        elif kind == "copy":
            t = CopyTeacher(log_base, draw(st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0))))
        else:
            t = KernelTeacher(np.stack([draw(extreme_log_distributions(n)) for _ in range(n)]))
    alive = np.flatnonzero(np.isfinite(log_base))
    mode = draw(st.sampled_from(["all", "one", "some"]))
    if mode == "all":
        r = np.ones(n, dtype=np.int64)
    else:
        r = np.zeros(n, dtype=np.int64) if mode == "one" else np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
    r[draw(st.sampled_from(list(alive)))] = 1
    ok = np.flatnonzero((r == 1) & np.isfinite(log_base))
    demos = draw(st.sampled_from(["successes", "uniform", "single"]))
    if demos == "successes":
        log_D = demos_from_successes(log_base, r)
    else:
        pick = ok if demos == "uniform" else [draw(st.sampled_from(list(ok)))]
        log_D = np.full(n, -np.inf)
        log_D[pick] = -np.log(len(pick))
    tree = draw(prefix_trees(n)) if trees else None
    return Instance(log_base, r, t, log_D, route=route, tree=tree)


# --- tabular policies on prefix trees (pcmi.tabular, pcmi.estimators) -------------------------

# |θ| ≤ 4 on a 1/8 grid: exact ties among siblings happen (top-k tie-breaking is exercised), near-ties
# closer than one grid step never do, so a top-k set cannot depend on the last bit of a log-softmax
grid_logit = st.integers(-32, 32).map(lambda i: i / 8)


def children_of(tree) -> dict:
    """{internal node: [its children in node order]} by a plain loop over parent[]."""
    kids: dict = {}
    for c in range(1, tree.n_nodes):
        kids.setdefault(int(tree.parent[c]), []).append(c)
    return kids


def root_to_leaf_paths(tree) -> list:
    """[the nodes from the root to leaf i] for every rollout i, by a plain loop over parent[]."""
    paths = []
    for i in range(tree.n_leaves):
        path, v = [], int(tree.leaf_node[i])
        while v != -1:
            path.append(v)
            v = int(tree.parent[v])
        paths.append(path[::-1])
    return paths


@st.composite
def tree_logits(draw, tree, masked: bool = False, logit=grid_logit):
    """θ (one logit per tree node, root 0) for a tabular policy on `tree`. With masked=True some
    tokens are masked (−inf), at least one finite token left at every internal node."""
    theta = np.r_[0.0, draw(st.lists(logit, min_size=tree.n_nodes - 1, max_size=tree.n_nodes - 1))]
    if masked:
        for kids in children_of(tree).values():
            if len(kids) > 1:
                keep = draw(st.sampled_from(kids))
                for c in kids:
                    if c != keep and draw(st.integers(0, 3)) == 0:
                        theta[c] = -np.inf
    return theta


@st.composite
def tree_instances(draw, extreme: bool = False, max_n: int = 6):
    """An Instance on a random prefix tree: `explicit_instances()` (full-support teachers, every
    loss finite) moved onto a drawn tree, or with extreme=True `extreme_instances()` (zeros,
    1e-300 masses, eps and lam in {0, 1}: losses may be infinite)."""
    if extreme:
        return draw(extreme_instances(max_n=max_n))
    from dataclasses import replace
    inst = draw(explicit_instances())
    return replace(inst, tree=draw(prefix_trees(inst.n)))


@st.composite
def tabular_policies(draw, inst, masked: bool = False, base=None, logit=grid_logit):
    """A TabularPolicy on inst.tree: θ = the conditionals of log π0 (base=True), drawn logits
    (base=False; with masked tokens if masked=True), or either (base=None)."""
    from .tabular import TabularPolicy
    if base is None:
        base = draw(st.booleans())
    if base:
        return TabularPolicy.from_log_probs(inst.tree, inst.log_base)
    return TabularPolicy(inst.tree, draw(tree_logits(inst.tree, masked=masked, logit=logit)))


@st.composite
def tabular_problems(draw, extreme: bool = False, masked: bool = False, base=None, max_n: int = 6):
    """(inst, policy): an instance on a prefix tree with a tabular student policy on it."""
    inst = draw(tree_instances(extreme=extreme, max_n=max_n))
    return inst, draw(tabular_policies(inst, masked=masked, base=base))
