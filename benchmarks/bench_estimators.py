"""Benchmarks of the exact loss-mode gradients (pytest-benchmark):
`python -m pytest benchmarks/bench_estimators.py --benchmark-columns=min,median,max`.

Target (issue 9): every mode's exact expected gradient and variance for one policy on a tree with
10⁵ leaves in ≤ 1 s, and the whole `collapse` map in ≤ 2 min, on 2 CPU cores.
"""
import numpy as np
import pytest

import graphworld as gw
import pcmi
from pcmi.estimators import all_modes_report, expected_gradient, expected_gradients
from pcmi.objectives import LossMode
from pcmi.tabular import TabularPolicy

#: every mode of issue 9 at one setting each (α = 0.5 where α is free)
ALL_MODES = [LossMode("full", 1.0), LossMode("full", 0.5), LossMode("full", 0.0),
             LossMode("topk", 0.5, topk=2), LossMode("topk", 0.5, topk=2, tail=True),
             LossMode("topk", 0.5, topk=2, topk_of="teacher"), LossMode("topk", 0.5, topk=2, topk_of="teacher", tail=True),
             LossMode("sampled"), LossMode("sampled-baseline"), LossMode("sequence")]


@pytest.fixture(scope="module")
def big():
    """A multi-route graph prompt with 102,643 rollouts (205,286 tree nodes), route-copying eps = 0.1."""
    g = gw.multi_route_dag(6, 5, 6, seed=0, n_sources=1, n_targets=2)
    inst, _ = pcmi.graph_instance(gw.Task(g, 0, g.graph["prompts"][0][1], 8), gw.EdgePolicy(stop_pref=-1.0),
                                  {"kind": "route_copying", "eps": 0.1})
    assert inst.n > 100_000
    return inst, TabularPolicy.from_log_probs(inst.tree, inst.log_base)


def test_all_modes_1e5_leaves(benchmark, big):
    """All ten modes (gradient, per-logit second moments, loss) in one call sharing the teacher."""
    inst, pol = big
    reps = benchmark.pedantic(expected_gradients, args=(pol, inst.teacher, inst.log_demos, ALL_MODES),
                              rounds=3, iterations=1)
    assert all(np.isfinite(r.grad).all() and np.isfinite(r.variance) for r in reps)


def test_all_modes_with_bias_1e5_leaves(benchmark, big):
    inst, pol = big
    out = benchmark.pedantic(all_modes_report, args=(pol, inst.teacher, inst.log_demos, ALL_MODES),
                             rounds=3, iterations=1)
    assert len(out) == len(ALL_MODES)


@pytest.mark.parametrize("mode", ALL_MODES, ids=lambda m: m.label)
def test_one_mode_1e5_leaves(benchmark, big, mode):
    inst, pol = big
    benchmark.pedantic(expected_gradient, args=(pol, inst.teacher, inst.log_demos, mode), rounds=3, iterations=1)


def test_collapse_map(benchmark):
    """The whole `collapse` figure's data, as `pcmi figures` computes it."""
    collapse = pytest.importorskip("pcmi.figures.collapse")
    benchmark.pedantic(collapse.compute, rounds=1, iterations=1)
