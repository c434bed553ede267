"""Seeded random instances for `pcmi verify` and the counterexample search (numpy RNG).

The hypothesis strategies for the tests live in `pcmi.testing`; these are their plain-numpy
counterparts, so that `pcmi verify --seed S` is reproducible without hypothesis' database.
Probabilities are drawn in log space over several orders of magnitude (down to ~e^-40).
"""
from __future__ import annotations

import numpy as np
from scipy.special import log_softmax

from graphworld import EdgePolicy, Task, multi_route_dag

from .instance import Instance, demos_from_successes
from .graph_instance import graph_instance
from .teachers import LatentStrategyTeacher


def log_dist(rng, n: int, spread: float | None = None) -> np.ndarray:
    """A random log-distribution; `spread` (default random in [0.1, 40]) sets how uneven it is."""
    spread = rng.choice([0.1, 1.0, 3.0, 10.0, 40.0]) if spread is None else spread
    return log_softmax(spread * rng.standard_normal(n) / 3.0)


def eps_value(rng, lo: float = 0.0, hi: float = 1.0) -> float:
    e = rng.choice([1e-9, 1e-4, 0.01, 0.1, 0.5, 0.9, 0.999, 1 - 1e-9, rng.uniform(0, 1)])
    return float(np.clip(e, lo, hi))


def beta_value(rng) -> float:
    return float(rng.choice([1e-8, 1e-3, 0.1, 1.0, 10.0, 1e3, 1e8, 10 ** rng.uniform(-3, 3)]))


def route_copying_instance(rng, *, all_correct: bool = True, k_max: int = 5, m_max: int = 4,
                           eps: float | None = None) -> Instance:
    """Disjoint strategies z = 0..K−1, each with 1..m_max rollouts; optionally failing rollouts."""
    K = int(rng.integers(2, k_max + 1))
    sizes = rng.integers(1, m_max + 1, size=K)
    route = np.repeat(np.arange(K), sizes)
    n = len(route)
    log_w = log_dist(rng, K)
    log_P = np.full((K, n), -np.inf)
    for z in range(K):
        log_P[z, route == z] = log_dist(rng, int(sizes[z]))
    reward = np.ones(n, dtype=np.int64)
    if not all_correct:
        reward = (rng.random(n) < 0.7).astype(np.int64)
        reward[rng.integers(n)] = 1
    eps = eps_value(rng, 1e-6, 1 - 1e-6) if eps is None else eps
    teacher = LatentStrategyTeacher(log_w, log_P, eps)
    return Instance(teacher.log_base, reward, teacher, demos_from_successes(teacher.log_base, reward),
                    route=route, name=f"route_copying(K={K}, n={n}, eps={eps:.3g})")


def latent_instance(rng, *, eps: float | None = None, all_correct: bool = False, n_max: int = 7,
                    k_max: int = 4) -> Instance:
    """Overlapping strategies with full-support laws P_z (a general exchangeable joint at eps = 0)."""
    n, K = int(rng.integers(2, n_max + 1)), int(rng.integers(2, k_max + 1))
    log_P = np.stack([log_dist(rng, n) for _ in range(K)])
    log_w = log_dist(rng, K)
    teacher = LatentStrategyTeacher(log_w, log_P, eps_value(rng) if eps is None else eps)
    reward = np.ones(n, dtype=np.int64) if all_correct else (rng.random(n) < 0.7).astype(np.int64)
    reward[rng.integers(n)] = 1
    route = np.argmax(log_w[:, None] + log_P, axis=0)
    return Instance(teacher.log_base, reward, teacher, demos_from_successes(teacher.log_base, reward),
                    route=route, name=f"latent(K={K}, n={n}, eps={teacher.eps:.3g})")


def graph_case(rng, *, teacher: dict | None = None, n_targets: int | None = None) -> Instance:
    """A multi-route DAG prompt with a random base policy and teacher (small: ≤ ~100 rollouts)."""
    k, depth, b = int(rng.integers(2, 4)), int(rng.integers(1, 3)), int(rng.integers(1, 3))
    nt = int(rng.integers(1, 3)) if n_targets is None else n_targets
    g = multi_route_dag(k, depth, b, seed=int(rng.integers(1 << 30)), n_sources=1, n_targets=nt,
                        pref_scale=float(rng.choice([0.5, 1.0, 3.0])))
    s, t = g.graph["prompts"][0]
    stop = None if rng.random() < 0.5 else float(rng.normal())
    policy = EdgePolicy(temperature=float(rng.choice([0.5, 1.0, 2.0])), stop_pref=stop)
    if teacher is None:
        kind = rng.choice(["route_copying", "soft_route", "copy"])
        teacher = {"route_copying": {"kind": "route_copying", "eps": eps_value(rng, 1e-3, 0.999)},
                   "soft_route": {"kind": "soft_route", "eps": eps_value(rng, 1e-3, 0.999),
                                  "sharpness": float(rng.choice([0.5, 2.0, 8.0]))},
                   "copy": {"kind": "copy", "lam": eps_value(rng, 0.0, 0.999)}}[kind]
    inst, _ = graph_instance(Task(g, s, t, depth + 3), policy, teacher)
    return inst
