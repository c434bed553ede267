"""pcmi.training remedies: the demonstration choice (uniform, inverse_prob, least_likely) and the
λ-blend with RL, each against its definition."""
from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pcmi.errors import PcmiInputError  # noqa: E402
from pcmi.training import get_config  # noqa: E402
from pcmi.training.data import make_world  # noqa: E402
from pcmi.training.rollouts import Rollouts, move_table  # noqa: E402
from pcmi.training.train import (_prompts, choose_demonstrations, new_model, rl_loss, sdsd_loss,  # noqa: E402
                                 sdsd_step)

CFG = get_config("tiny")


def _group(reward, logp):
    r = torch.tensor(reward, dtype=torch.float)
    n = len(reward)
    return Rollouts(torch.zeros(n, dtype=torch.long), torch.zeros((n, 2), dtype=torch.long),
                    torch.ones((n, 2), dtype=torch.bool), r), np.asarray(logp, float)


def test_uniform_choice_is_the_previous_rule():
    """Default: a uniform draw among the other successes, the same draws as before the switch existed."""
    ro, lp = _group([1, 0, 1, 1, 0, 1], np.log([0.1, 0.2, 0.3, 0.05, 0.15, 0.2]))
    a = choose_demonstrations(ro, 6, np.random.default_rng(5))
    b = choose_demonstrations(ro, 6, np.random.default_rng(5), lp, "uniform")
    rng = np.random.default_rng(5)  # the rule written out
    ok = np.flatnonzero(ro.reward.numpy() > 0)
    expect = [int(rng.choice(ok[ok != g])) if ro.reward[g] > -1 and len(ok[ok != g]) else -1 for g in range(6)]
    assert a[0].tolist() == b[0].tolist() == expect


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.5])
def test_inverse_prob_draws_with_probability_proportional_to_pi_to_the_minus_gamma(gamma):
    """Frequencies of the demonstration of rollout 1 (a failure) over many draws match
    π(y')^−γ / Σ π^−γ over the successes, within 5 binomial standard errors."""
    p = np.array([0.4, 0.2, 0.05, 0.1, 0.25])
    ro, lp = _group([1, 0, 1, 1, 1], np.log(p))
    rng, R = np.random.default_rng(0), 4000
    picks = np.array([choose_demonstrations(ro, 5, rng, lp, "inverse_prob", gamma)[0][1] for _ in range(R)])
    succ = np.array([0, 2, 3, 4])
    want = p[succ] ** -gamma / np.sum(p[succ] ** -gamma)
    freq = np.array([(picks == j).mean() for j in succ])
    assert np.all(np.abs(freq - want) <= 5 * np.sqrt(want * (1 - want) / R) + 1e-12)
    own = np.array([choose_demonstrations(ro, 5, rng, lp, "inverse_prob", gamma)[0][0] for _ in range(200)])
    assert not np.any(own == 0)  # never itself


def test_least_likely_takes_the_least_likely_other_success_and_masks_a_lone_one():
    p = np.log([0.4, 0.2, 0.05, 0.1, 0.25, 0.3, 0.3, 0.4, 0.5, 0.1, 0.2, 0.2])
    ro, lp = _group([1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 0, 0], p)
    demo, only, skipped = choose_demonstrations(ro, 4, np.random.default_rng(0), lp, "least_likely")
    assert demo[:4].tolist() == [2, 2, 3, 2]  # rollout 2 (the least likely) gets the next one
    assert demo[4:8].tolist() == [6, 4, 4, 4]
    assert demo[8:].tolist() == [-1, 8, 8, 8] and only == 1 and skipped == 0  # a lone success: masked
    with pytest.raises(PcmiInputError, match="log-probabilities"):
        choose_demonstrations(ro, 4, np.random.default_rng(0), None, "least_likely")


def test_blend_step_loss_is_lambda_rl_plus_one_minus_lambda_sdsd():
    """With rl_weight = λ the step's loss is λ·rl_loss + (1 − λ)·sdsd_loss on the very rollouts it drew."""
    world = make_world(CFG)
    torch.manual_seed(0)
    base = new_model(CFG, world).eval()
    model = copy.deepcopy(base)
    cfg = CFG.replace(rl_weight=0.3)
    valid = move_table(world, "cpu")
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the step leaves the model as it was
    rng, gen = np.random.default_rng(1), torch.Generator().manual_seed(2)
    row, _ = sdsd_step(model, base, opt, world, cfg, rng, gen, valid, ref_model=base)
    # replay the same draws
    rng, gen = np.random.default_rng(1), torch.Generator().manual_seed(2)
    from pcmi.training.rollouts import sample_rollouts
    model.eval()
    ro = sample_rollouts(model, world, _prompts(world, cfg, rng), cfg.group_size, gen, valid)
    demo, _, _ = choose_demonstrations(ro, cfg.group_size, rng)
    sd, _ = sdsd_loss(model, base, world, ro, demo, cfg.loss())
    rl, _ = rl_loss(model, base, world, ro, cfg)
    assert row["loss"] == pytest.approx(0.3 * rl.item() + 0.7 * sd.item(), rel=1e-6, abs=1e-9)
    assert "kl_ref" in row
    with pytest.raises(PcmiInputError, match="reference model"):
        sdsd_step(model, base, opt, world, cfg, rng, gen, valid)


@pytest.mark.parametrize("field, value", [("demo_choice", "best"), ("demo_gamma", -1.0), ("rl_weight", 1.5),
                                          ("demo_gamma", float("nan"))])
def test_remedy_switches_are_validated(field, value):
    with pytest.raises(PcmiInputError, match=f"TrainConfig.{field}"):
        CFG.replace(**{field: value})
