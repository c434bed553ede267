"""Benchmarks of the toy trainer (pytest-benchmark): `python -m pytest benchmarks/bench_training.py`.

One RL step, one SDSD step and one exact enumeration of Y(x) through the network, `small` preset, CPU.
"""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pcmi.training import get_config  # noqa: E402
from pcmi.training.data import make_world  # noqa: E402
from pcmi.training.evaluate import enumerate_model, model_teacher  # noqa: E402
from pcmi.training.rollouts import move_table  # noqa: E402
from pcmi.training.train import new_model, rl_step, sdsd_step  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    cfg = get_config("small")
    world = make_world(cfg)
    torch.manual_seed(0)
    model = new_model(cfg, world)
    return cfg, world, model, copy.deepcopy(model), move_table(world, "cpu")


def test_rl_step(benchmark, setup):
    cfg, world, model, ref, valid = setup
    opt = torch.optim.Adam(model.parameters(), lr=0.0)
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    benchmark(rl_step, model, ref, opt, world, cfg, rng, gen, valid)


def test_sdsd_step(benchmark, setup):
    cfg, world, model, ref, valid = setup
    opt = torch.optim.Adam(model.parameters(), lr=0.0)
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    benchmark(sdsd_step, model, ref, opt, world, cfg, rng, gen, valid)


def test_enumerate_policy_and_teacher(benchmark, setup):
    cfg, world, model, ref, valid = setup

    def run():
        base = enumerate_model(model, world, 0)
        return model_teacher(model, world, 0, base)

    benchmark(run)
