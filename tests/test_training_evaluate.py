"""pcmi.training.evaluate and the theory check of pcmi.training.run on hand-built inputs: the model
teacher has the demonstration in context, the RL prediction uses the given β, the on-policy SDSD
fixed point is iterated to convergence, and the theory check points the right way."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pcmi  # noqa: E402
from graphworld import EdgePolicy, Task, multi_route_dag  # noqa: E402
from pcmi.training import get_config  # noqa: E402
from pcmi.training.data import make_world  # noqa: E402
from pcmi.training.evaluate import (closed_form_predictions, enumerate_model, model_teacher,  # noqa: E402
                                    sdsd_onpolicy_fixed_point)
from pcmi.training.run import theory_check  # noqa: E402


@pytest.fixture(scope="module")
def world():
    return make_world(get_config("tiny"))


@pytest.fixture(scope="module")
def sharp_model(world, sharp_model_of):
    return sharp_model_of("tiny", world)


def test_model_teacher_rows_are_enumerations_with_the_demonstration(world, sharp_model):
    base = enumerate_model(sharp_model, world, 0)
    T = model_teacher(sharp_model, world, 0, base)
    correct = np.flatnonzero(base.reward == 1)
    far = 0.0
    for j in correct:
        with_demo = enumerate_model(sharp_model, world, 0, demo=base.paths[j]).log_prob
        # float32: one batched forward over all demonstrations rounds differently from one per demonstration
        # (the matmul's result depends on the batch size); tests/test_training_kvcache.py checks 1e-12 in float64
        np.testing.assert_allclose(T.log_T[j], with_demo, rtol=0, atol=5e-5)
        far = max(far, pcmi.total_variation(T.log_T[j], base.log_prob))
    assert far > 1e-4  # the demonstration changes the network's law


def test_rl_prediction_uses_the_given_beta(world, sharp_model):
    base = enumerate_model(sharp_model, world, 1)
    T = model_teacher(sharp_model, world, 1, base)
    p0 = np.exp(base.log_prob)
    for beta in (0.1, 0.37):
        pred = np.exp(closed_form_predictions(base, T, beta)["rl"])
        ref = p0 * np.exp(base.reward / beta)
        np.testing.assert_allclose(pred, ref / ref.sum(), rtol=1e-9, atol=1e-12)
    assert base.summary()["success"] < 0.9  # β matters on this prompt


@pytest.fixture(scope="module")
def route_instance():
    g = multi_route_dag(3, 1, 2, 0)
    s, t = g.graph["prompts"][0]
    inst, _ = pcmi.graph_instance(Task(g, s, t, 3), EdgePolicy(), {"kind": "route_copying", "eps": 0.3})
    return inst


def _one_round(inst, log_pi):
    return pcmi.sdsd_token_optimum(inst.with_demos(pcmi.demos_from_successes(log_pi, inst.reward)))


def test_onpolicy_fixed_point_is_converged(route_instance):
    inst = route_instance
    fp = sdsd_onpolicy_fixed_point(inst)
    assert pcmi.total_variation(_one_round(inst, fp), fp) < 1e-8       # a fixed point of the rounds
    assert pcmi.total_variation(_one_round(inst, inst.log_base), fp) > 1e-2  # one round is not enough
    log_pi = inst.log_base
    for _ in range(1000):  # many plain rounds reach the same point
        log_pi = _one_round(inst, log_pi)
    assert pcmi.total_variation(log_pi, fp) < 1e-6


def _prompt(tv_rl_to_rl, tv_rl_to_sd, tv_sd_to_sd, tv_sd_to_rl, tv_base=0.5):
    rl = {"tv_rl": tv_rl_to_rl, "tv_sdsd_token": tv_rl_to_sd, "tv_base": tv_base}
    sd = {"tv_sdsd_token": tv_sd_to_sd, "tv_sdsd_onpolicy": tv_sd_to_sd, "tv_rl": tv_sd_to_rl, "tv_base": tv_base}
    return {"policies": {"rl": {"distances": rl}, "sdsd": {"distances": sd}}}


def test_theory_check_direction():
    prompts = [_prompt(0.05, 0.3, 0.1, 0.4),   # both closer to their own prediction
               _prompt(0.3, 0.05, 0.4, 0.1),   # both closer to the other method's
               _prompt(0.6, 0.7, 0.6, 0.7)]    # closer to own than to other, but not closer than the base
    out = theory_check(prompts, ["base", "rl", "sdsd"])
    for key in ("rl->rl", "sdsd->sdsd_token", "sdsd->sdsd_onpolicy"):
        assert out[key]["n_closer_to_own"] == 1 and [f["prompt"] for f in out[key]["not_closer"]] == [1, 2]


def test_onpolicy_prediction_follows_the_trained_loss_mode(route_instance):
    """The trainer's sdsd_onpolicy prediction is the frozen-teacher fixed point of the mode it trained
    (TrainConfig.loss()): JS α = 0.5 lands elsewhere than reverse KL, and is certified."""
    from pcmi.flows import on_policy_fixed_point
    from pcmi.objectives import LossMode
    inst = route_instance
    js = LossMode("full", 0.5)
    fp = on_policy_fixed_point(inst, js, "frozen")
    assert fp.certificate()["certified"]
    pred = sdsd_onpolicy_fixed_point(inst, mode=js)
    assert pcmi.total_variation(pred, fp.log_pi) < 1e-12
    assert pcmi.total_variation(pred, sdsd_onpolicy_fixed_point(inst)) > 1e-4
