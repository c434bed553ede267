"""Enumeration of Y(x) (pytest-benchmark): `python -m pytest benchmarks/bench_enumeration.py`.

The level-wise path that Markov policies take (one numpy pass per tree level, paths as parent
pointers) against the generic per-prefix loop (one policy call and Python bookkeeping per prefix) on
the same graph and policy, in one run; and the level-wise path on a 10⁶-path graph.
`python benchmarks/bench_enumeration.py` prints the 10⁶-path time and peak traced memory (tracemalloc
peak over the whole enumerate call), the part of it the result keeps, and the load average (numbers in
docs/performance.md: 2-core Intel Xeon, shared).
"""
import os
import time
import tracemalloc

import pytest

import graphworld as gw


class PerPrefix:
    """The same policy without the Markov flag: enumeration takes the generic per-prefix loop."""

    def __init__(self, policy):
        self.policy, self.has_stop = policy, policy.has_stop

    def next_logprobs(self, task, paths):
        return self.policy.next_logprobs(task, paths)


def task_of(k_routes: int, depth: int, branching: int) -> gw.Task:
    """s → concept c_z → depth layers of `branching` → t: k_routes·branching**depth paths."""
    g = gw.multi_route_dag(k_routes, depth, branching, seed=0, n_sources=1, n_targets=1)
    s, t = g.graph["prompts"][0]
    return gw.Task(g, s, t, depth + 3)


@pytest.fixture(scope="module")
def medium():
    return task_of(10, 3, 10)  # 10⁴ paths, STOP anywhere: 4.2·10⁴ tree nodes


@pytest.mark.parametrize("path", ["levelwise", "per_prefix"])
def test_enumerate_10k_paths(benchmark, medium, path):
    policy = gw.EdgePolicy(stop_pref=0.0)
    ro = benchmark(gw.enumerate_rollouts, medium, policy if path == "levelwise" else PerPrefix(policy))
    assert ro.reward.sum() == 10_000


def test_enumerate_1m_paths_levelwise(benchmark):
    task = task_of(16, 4, 16)
    ro = benchmark.pedantic(gw.enumerate_rollouts, (task, gw.EdgePolicy(goal_aware=True)),
                            kwargs={"max_leaves": 2_000_000}, rounds=3, iterations=1)
    assert len(ro) == 16 * 16 ** 4


def main():
    task = task_of(16, 4, 16)
    t0 = time.perf_counter()
    ro = gw.enumerate_rollouts(task, gw.EdgePolicy(goal_aware=True), max_leaves=2_000_000)
    dt = time.perf_counter() - t0
    del ro
    tracemalloc.start()
    ro = gw.enumerate_rollouts(task, gw.EdgePolicy(goal_aware=True), max_leaves=2_000_000)
    kept, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"{len(ro)} paths, {ro.tree.n_nodes} tree nodes: {dt:.2f} s, peak traced memory {peak / 1e6:.0f} MB "
          f"({kept / 1e6:.0f} MB kept in the result); load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
