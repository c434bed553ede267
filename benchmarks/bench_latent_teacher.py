"""Overlapping latent teachers at scale: `python benchmarks/bench_latent_teacher.py [N] [K]` (default 10⁴, 8).

Times E_D log T(y | y') (`expected_log_teacher`, the input of `sdsd_optimum`) on a flat instance with N
rollouts (random π0, 70% correct, D = π0(·|r=1), eps = 0.1) for two overlapping teachers:

- soft_route: K routes, responsibilities softmax_z(κ·1[route(y) = z]) (graph_instance's "soft_route");
- dirichlet: K strategy laws drawn from a Dirichlet (every demonstration has its own posterior);

three ways, in one run: the previous implementation (log-space logsumexp over (256, K, |Y|) chunks of
demonstrations, commit 80e4de9; timed once), pcmi now (posterior classes + scaled BLAS products streamed
in cache-sized tiles, node blocks on every core; also timed on one thread), and a plain dense numpy
reference (T = (1−eps)·Q·P + eps·π0 in probability space, then D·log T); medians of 3 except the
previous one, and checks that all three agree. Then log E_D T (the forward-KL optimum's prefix
marginals) from K strategy masses against the logsumexp over the stream of teacher rows. `python -m pytest benchmarks/bench_latent_teacher.py` times N = 2000.
"""
import sys
import time
from types import SimpleNamespace

import numpy as np
from scipy.special import log_softmax

from graphworld import PrefixTree
from pcmi import teachers as teachers_mod
from pcmi.distributions import logsumexp, prob_of
from pcmi.teachers import LatentStrategyTeacher, _mix, _weighted, expected_log_teacher, mixture_log_teacher

EPS = 0.1


def teachers(n: int, K: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    lb = log_softmax(rng.standard_normal(n))
    route = rng.integers(0, K, n)
    soft = LatentStrategyTeacher.from_responsibilities(
        lb, log_softmax(2.0 * (route[None, :] == np.arange(K)[:, None]), axis=0), EPS)
    dirichlet = LatentStrategyTeacher(np.log(rng.dirichlet(np.ones(K))), np.log(rng.dirichlet(np.ones(n), size=K)), EPS)
    return {"soft_route": soft, "dirichlet": dirichlet}


def demos(teacher, n: int, seed: int = 1) -> np.ndarray:
    r = np.random.default_rng(seed).random(n) < 0.7
    return np.where(r, teacher.log_base, -np.inf) - logsumexp(np.where(r, teacher.log_base, -np.inf))


def previous_expected_log(t, log_D, tree, chunk=256) -> np.ndarray:
    """The implementation before posterior classes: one log-space row per demonstration."""
    base, log_P = tree.prefix_logsumexp(t.log_base), tree.prefix_logsumexp(t.log_P)
    total = np.zeros(tree.n_nodes)
    idx_all = np.flatnonzero(np.isfinite(log_D))
    for lo in range(0, len(idx_all), chunk):
        idx = idx_all[lo:lo + chunk]
        inner = logsumexp(t.log_posterior(idx)[:, :, None] + log_P[None, :, :], axis=1)
        log_t = _mix(inner, 1 - t.eps, base[None, :], t.eps)
        total += _weighted(prob_of(log_D[idx])[:, None], log_t).sum(axis=0)
    return total


def dense_reference(t, log_D) -> np.ndarray:
    """Plain numpy on the leaves: T = (1−eps)·Q P + eps·π0 in probability space, E = D · log T."""
    idx = np.flatnonzero(np.isfinite(log_D))
    Q = np.exp(t.log_posterior(idx))
    T = (1 - t.eps) * (Q @ np.exp(t.log_P)) + t.eps * np.exp(t.log_base)[None, :]
    return np.exp(log_D[idx]) @ np.log(T)


def timed(f, *a, repeat: int = 1):
    """(f(*a), median wall time of `repeat` calls)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = f(*a)
        times.append(time.perf_counter() - t0)
    return out, float(np.median(times))


def one_thread(f):
    def g(*a):
        saved, teachers_mod.MAX_THREADS = teachers_mod.MAX_THREADS, 1
        try:
            return f(*a)
        finally:
            teachers_mod.MAX_THREADS = saved
    return g


def compare(n: int, K: int) -> dict:
    tree = PrefixTree.flat(n)
    rows = {}
    for name, t in teachers(n, K).items():
        log_D = demos(t, n)
        new, t_new = timed(expected_log_teacher, t, log_D, tree, repeat=3)
        one, t_one = timed(one_thread(expected_log_teacher), t, log_D, tree, repeat=3)
        old, t_old = timed(previous_expected_log, t, log_D, tree)
        ref, t_ref = timed(dense_reference, t, log_D, repeat=3)
        assert np.array_equal(one, new)  # the tiles do not depend on the thread count
        leaves = tree.leaf_node
        rows[name] = {"previous_s": t_old, "now_s": t_new, "now_1_thread_s": t_one, "dense_numpy_s": t_ref,
                      "max_diff_previous": float(np.max(np.abs(new - old))),
                      "max_diff_dense": float(np.max(np.abs(new[leaves] - ref))),
                      "classes": len(t.posterior_classes(log_D)[0])}
    return rows


def compare_mixture(n: int, K: int) -> dict:
    """log E_D T (the forward-KL optimum's prefix marginals): K strategy masses vs the stream of rows."""
    tree, rows = PrefixTree.flat(n), {}
    for name, t in teachers(n, K).items():
        log_D = demos(t, n)
        new, t_new = timed(mixture_log_teacher, t, log_D, tree, repeat=3)
        old, t_old = timed(mixture_log_teacher, SimpleNamespace(demo_classes=t.demo_classes), log_D, tree)
        rows[name] = {"stream_s": t_old, "now_s": t_new, "max_diff": float(np.max(np.abs(new - old)))}
    return rows


def test_latent_teacher_2000(benchmark):
    t = teachers(2000, 8)["dirichlet"]
    tree = PrefixTree.flat(2000)
    benchmark(expected_log_teacher, t, demos(t, 2000), tree)


if __name__ == "__main__":
    n = int(float(sys.argv[1])) if len(sys.argv) > 1 else 10_000
    K = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    for name, r in compare(n, K).items():
        print(f"N={n} K={K} {name} ({r['classes']} posterior classes): previous {r['previous_s']:.3f} s, "
              f"now {r['now_s']:.4f} s ({teachers_mod._cores()} threads; one thread {r['now_1_thread_s']:.4f} s), dense numpy {r['dense_numpy_s']:.3f} s; "
              f"previous/now {r['previous_s'] / r['now_s']:.0f}x (one thread {r['previous_s'] / r['now_1_thread_s']:.0f}x), dense/now {r['dense_numpy_s'] / r['now_s']:.2f}x; "
              f"max |diff| vs previous {r['max_diff_previous']:.1e}, vs dense {r['max_diff_dense']:.1e}")
    for name, r in compare_mixture(n, K).items():
        print(f"N={n} K={K} {name} mixture log E_D T: stream of rows {r['stream_s']:.3f} s, strategy masses "
              f"{r['now_s']:.4f} s, {r['stream_s'] / r['now_s']:.0f}x; max |diff| {r['max_diff']:.1e}")
