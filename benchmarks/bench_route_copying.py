"""Route-copying SDSD at scale: `python benchmarks/bench_route_copying.py [N] [K]` (default 10⁶, 32).

A flat instance with N rollouts in K routes (random π0, 70% correct, D = π0(·|r=1)); prints the time to
build the teacher (`LatentStrategyTeacher.route_copying`, owner index) and to solve `sdsd_optimum`, and
the process's peak resident memory. `python -m pytest benchmarks/bench_route_copying.py` times 10⁵.
"""
import resource
import sys
import time

import numpy as np

from pcmi.instance import Instance, demos_from_successes
from pcmi.policies import sdsd_optimum
from pcmi.teachers import LatentStrategyTeacher


def instance_parts(n: int, K: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    lb = rng.standard_normal(n)
    lb -= np.log(np.exp(lb).sum())
    return lb, rng.integers(0, K, n), (rng.random(n) < 0.7).astype(int)


def build_and_solve(n: int, K: int):
    lb, labels, reward = instance_parts(n, K)
    t0 = time.perf_counter()
    t = LatentStrategyTeacher.route_copying(lb, labels, 0.1)
    t1 = time.perf_counter()
    inst = Instance(lb, reward, t, demos_from_successes(lb, reward), route=labels)
    t2 = time.perf_counter()
    sdsd_optimum(inst)
    return t1 - t0, time.perf_counter() - t2


def test_route_copying_sdsd_1e5(benchmark):
    lb, labels, reward = instance_parts(100_000, 32)
    inst = Instance(lb, reward, LatentStrategyTeacher.route_copying(lb, labels, 0.1), demos_from_successes(lb, reward),
                    route=labels)
    benchmark(sdsd_optimum, inst)


def torch_vs_numpy(n: int, K: int, device=None):
    """(numpy solve s, torch solve s, max |diff|) on one instance: `pcmi.torch_exact` against sdsd_optimum."""
    from pcmi.torch_exact import sdsd_optimum_on_device
    lb, labels, reward = instance_parts(n, K)
    inst = Instance(lb, reward, LatentStrategyTeacher.route_copying(lb, labels, 0.1), demos_from_successes(lb, reward),
                    route=labels)
    t0 = time.perf_counter()
    a = sdsd_optimum(inst)
    t1 = time.perf_counter()
    b = sdsd_optimum_on_device(inst, device)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, float(np.max(np.abs(a - b)))


if __name__ == "__main__":
    n = int(float(sys.argv[1])) if len(sys.argv) > 1 else 1_000_000
    K = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    if "torch" in sys.argv[3:]:  # python benchmarks/bench_route_copying.py N K torch [device]
        dev = sys.argv[4] if len(sys.argv) > 4 else None
        a, b, diff = torch_vs_numpy(n, K, dev)
        print(f"N={n} K={K}: sdsd_optimum {a:.2f} s, torch_exact ({dev or 'auto'}) {b:.2f} s, max |diff| {diff:.1e}")
        sys.exit(0)
    build, solve = build_and_solve(n, K)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
    print(f"N={n} K={K}: build {build:.2f} s, solve {solve:.2f} s, peak RSS {rss:.0f} MB")
