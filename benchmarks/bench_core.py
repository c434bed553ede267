"""Benchmarks of the exact core (pytest-benchmark): `python -m pytest benchmarks/bench_core.py`.

The route-copying teacher's O(|Y|·K) path against the dense |Y|×|Y| kernel it replaces, and the
token-level recursion on a large prefix tree. Compare ratios measured in one run.
"""
import numpy as np
import pytest

import graphworld as gw
import pcmi
from pcmi.teachers import KernelTeacher, leaf_rows


@pytest.fixture(scope="module")
def big():
    g = gw.multi_route_dag(4, 3, 3, seed=0, n_sources=1, n_targets=2)
    inst, ro = pcmi.graph_instance(gw.Task(g, 0, g.graph["prompts"][0][1], 5), gw.EdgePolicy(stop_pref=-1.0),
                                   {"kind": "route_copying", "eps": 0.1})
    return inst


def test_sdsd_route_copying(benchmark, big):
    benchmark(pcmi.sdsd_optimum, big)


def test_sdsd_dense_kernel(benchmark, big):
    dense = big.with_teacher(KernelTeacher(leaf_rows(big.teacher, big.n)))
    out = benchmark(pcmi.sdsd_optimum, dense)
    assert np.allclose(np.exp(out), np.exp(pcmi.sdsd_optimum(big)), atol=1e-12)


def test_token_level(benchmark, big):
    benchmark(pcmi.sdsd_token_optimum, big)
