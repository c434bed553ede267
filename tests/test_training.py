"""Toy trainer: losses against plain formulas, exact enumeration through the network, resume,
and the tiny config end to end (SDSD and RL raise success on the training prompts)."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pcmi.training import get_config  # noqa: E402
from pcmi.training.data import make_world  # noqa: E402
from pcmi.training.evaluate import data_law_on, enumerate_model  # noqa: E402
from pcmi.training.losses import per_token_divergence  # noqa: E402
from pcmi.training.rollouts import Rollouts, move_table, sample_rollouts  # noqa: E402
from pcmi.training.run import run_train  # noqa: E402
from pcmi.training.train import StageInterrupted, choose_demonstrations, new_model  # noqa: E402

ALPHAS = (0.0, 0.3, 0.5, 1.0)


# ----------------------------------------------------------------------------- losses
def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _np_divergence(ls, lt, alpha):
    """Plain numpy D_α of theory.md §3."""
    s, t = np.exp(ls), np.exp(lt)
    if alpha == 1:
        return (s * (ls - lt)).sum(-1)
    if alpha == 0:
        return (t * (lt - ls)).sum(-1)
    m = (1 - alpha) * s + alpha * t
    return alpha * (t * (lt - np.log(m))).sum(-1) + (1 - alpha) * (s * (ls - np.log(m))).sum(-1)


@pytest.fixture(scope="module")
def logits():
    g = np.random.default_rng(0)
    return g.normal(size=(3, 5, 11)) * 2, g.normal(size=(3, 5, 11)) * 2


@pytest.mark.parametrize("alpha", ALPHAS)
def test_per_token_loss_against_plain_numpy(logits, alpha):
    s, t = logits
    ours = per_token_divergence(torch.tensor(s), torch.tensor(t), alpha).double().numpy()
    ref = _np_divergence(_np_log_softmax(s), _np_log_softmax(t), alpha)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    assert ours.shape == (3, 5) and np.all(ours >= -1e-6)


def test_js_endpoints_are_reverse_and_forward_kl(logits):
    s, t = map(torch.tensor, logits)
    ls, lt = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    reverse = (ls.exp() * (ls - lt)).sum(-1)
    forward = (lt.exp() * (lt - ls)).sum(-1)
    torch.testing.assert_close(per_token_divergence(s, t, 1.0), reverse.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(per_token_divergence(s, t, 0.0), forward.float(), rtol=1e-5, atol=1e-6)
    # the interior of the family is symmetric under (S, T, α) → (T, S, 1 − α) and vanishes at S = T
    torch.testing.assert_close(per_token_divergence(s, t, 0.3), per_token_divergence(t, s, 0.7), rtol=1e-5, atol=1e-6)
    assert per_token_divergence(s, s, 0.5).abs().max() < 1e-6


@pytest.mark.parametrize("alpha", ALPHAS)
def test_per_token_loss_against_trl(logits, alpha):
    sdpo = pytest.importorskip("trl.experimental.sdpo.loss_utils", reason="trl not installed (optional)")
    s, t = map(torch.tensor, logits)
    theirs = sdpo.compute_full_logit_self_distillation_loss(s.float(), t.float().detach(), distillation_alpha=alpha)
    torch.testing.assert_close(per_token_divergence(s, t, alpha), theirs.float(), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- data and enumeration
@pytest.fixture(scope="module")
def world():
    return make_world(get_config("tiny"))


def test_data_law_is_normalized_with_disjoint_strategies(world):
    torch.manual_seed(0)
    model = new_model(get_config("tiny"), world).eval()
    rs = enumerate_model(model, world, 0)
    log_data, log_w, log_P = data_law_on(world, 0, rs)
    assert np.isclose(np.exp(log_data).sum(), 1.0)
    assert np.isclose(np.exp(log_data[rs.reward == 1]).sum(), 1 - world.p_wrong)
    assert np.allclose(np.exp(log_P).sum(1), 1.0)
    assert np.all(np.isfinite(log_P).sum(0) <= 1)  # routes and "wrong target" never share a rollout


@pytest.mark.parametrize("with_demo", [False, True])
def test_enumeration_through_the_network_sums_to_one(world, with_demo):
    torch.manual_seed(1)
    model = new_model(get_config("tiny"), world).eval()
    demo = world.laws[1].paths[0] if with_demo else None
    rs = enumerate_model(model, world, 1, demo=demo)
    assert abs(np.exp(rs.log_prob).sum() - 1.0) < 1e-9
    assert rs.reward.sum() == len(world.laws[1].paths)  # every correct path is a leaf


def test_sampled_success_matches_enumerated_success(world):
    torch.manual_seed(2)
    model = new_model(get_config("tiny"), world).eval()
    # sharpen the random model so success is neither 0 nor 1
    with torch.no_grad():
        model.head.weight.mul_(40)
    p = enumerate_model(model, world, 0).summary()["success"]
    n = 3000
    ro = sample_rollouts(model, world, [0], n, torch.Generator().manual_seed(0), move_table(world, "cpu"))
    freq = float(ro.reward.mean())
    assert abs(freq - p) < 4 * np.sqrt(p * (1 - p) / n) + 1e-3


def test_demonstrations_are_correct_siblings_never_self():
    reward = torch.tensor([1, 0, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0], dtype=torch.float)  # groups of 4
    ro = Rollouts(torch.zeros(12, dtype=torch.long), torch.zeros(12, 4, dtype=torch.long),
                  torch.ones(12, 4, dtype=torch.bool), reward)
    demo, only, skipped = choose_demonstrations(ro, 4, np.random.default_rng(0))
    assert (only, skipped) == (1, 1)
    for i, j in enumerate(demo):
        if j >= 0:
            assert j != i and reward[j] == 1 and j // 4 == i // 4
    assert demo[5] == -1 and all(demo[8:] == -1)  # lone success masked; group without success skipped
    assert all(demo[:4] >= 0) and demo[4] >= 0 and demo[6] >= 0


# ----------------------------------------------------------------------------- resume
def test_resume_after_kill_gives_identical_parameters(tmp_path):
    cfg = get_config("tiny").replace(pretrain_steps=8, post_steps=6, ckpt_every=3)
    kw = dict(method="both", seed=3, device="cpu", progress=False, figures=False)
    full = run_train(cfg, out=str(tmp_path / "full"), **kw)
    out = str(tmp_path / "killed")
    for stop in (5, 9, 8):  # kills inside pretraining, inside RL, inside SDSD (steps since a checkpoint are lost)
        with pytest.raises(StageInterrupted):
            run_train(cfg, out=out, stop_after=stop, **kw)
    resumed = run_train(cfg, out=out, **kw)
    for stage in ("pretrain", "rl", "sdsd"):
        a = torch.load(tmp_path / "full" / f"ckpt_{stage}.pt", weights_only=False)
        b = torch.load(tmp_path / "killed" / f"ckpt_{stage}.pt", weights_only=False)
        for k in a["model"]:
            assert torch.equal(a["model"][k], b["model"][k]), (stage, k)
        assert a["state"]["history"] == b["state"]["history"]
    assert full["mean"]["sdsd"]["success"] == resumed["mean"]["sdsd"]["success"]
    with pytest.raises(ValueError, match="another config or seed"):
        run_train(cfg.replace(beta=0.5), out=out, **kw)


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    return run_train("tiny", method="both", out=str(out), seed=0, device="cpu", progress=False), out


def test_tiny_sdsd_and_rl_raise_success(tiny_run):
    s, _ = tiny_run
    base, rl, sd = (s["mean"][k]["success"] for k in ("base", "rl", "sdsd"))
    assert sd > base + 0.15 and rl > base + 0.15
    for p in s["prompts"]:  # on every training prompt, not only on average
        assert p["policies"]["sdsd"]["success"] > p["policies"]["base"]["success"]


def test_tiny_summary_is_complete(tiny_run):
    s, out = tiny_run
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["mean"]["sdsd"]["success"] == s["mean"]["sdsd"]["success"]
    for f in ("training_curves.png", "pass_at_k.png", "theory_vs_training.png"):
        assert (out / f).stat().st_size > 1000
    for p in s["prompts"]:
        for name in ("base", "rl", "sdsd"):
            pol = p["policies"][name]
            assert abs(pol["total_prob"] - 1) < 1e-9
            assert {"pass@1", "pass@64", "distinct_correct@64", "strategy_mass_entropy", "ood_success"} <= set(pol)
            assert {"tv_sdsd_sequence", "tv_sdsd_token", "tv_sdsd_onpolicy", "tv_rl", "tv_base", "kl_rl"} <= set(pol["distances"])
        assert 0 <= p["teacher_tv"] <= 1
    assert set(s["theory_check"]) == {"rl->rl", "sdsd->sdsd_token", "sdsd->sdsd_onpolicy"}
    h = s["stages"]["sdsd"]["history"]
    assert all({"masked_only_success", "skipped_prompts"} <= set(r) for r in h)


def test_bad_input_is_a_one_line_value_error(tmp_path):
    with pytest.raises(ValueError, match="unknown config"):
        run_train("huge", out=str(tmp_path))
    with pytest.raises(ValueError, match="unknown method"):
        run_train("tiny", method="ppo", out=str(tmp_path))
    with pytest.raises(ValueError, match="alpha"):
        run_train(get_config("tiny").replace(alpha=2.0), out=str(tmp_path))
    from pcmi.cli import main
    assert main(["train", "--config", "huge", "--out", str(tmp_path)]) == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tiny_trains_on_cuda(tmp_path):
    cfg = get_config("tiny").replace(pretrain_steps=20, post_steps=5)
    s = run_train(cfg, method="both", out=str(tmp_path), seed=0, device="cuda", progress=False, figures=False)
    assert s["device"].startswith("cuda")
