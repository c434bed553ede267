"""Toy trainer end to end: exact enumeration through the network, the tiny config (SDSD and RL raise
success and each lands closer to its own closed form), config validation, the command's output,
checkpoint reuse and method merging. Unit tests: test_training_losses/_train/_evaluate.py."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pcmi.errors import PcmiInputError  # noqa: E402
from pcmi.training import PRESETS, TrainConfig, get_config  # noqa: E402
from pcmi.training.data import make_world  # noqa: E402
from pcmi.training.evaluate import data_law_on, enumerate_model  # noqa: E402
from pcmi.training.losses import per_token_divergence  # noqa: E402
from pcmi.training.rollouts import move_table, sample_rollouts  # noqa: E402
from pcmi.training.run import run_train  # noqa: E402
from pcmi.training.train import new_model  # noqa: E402


# ----------------------------------------------------------------------------- losses (vs trl, optional)
@pytest.mark.parametrize("alpha", (0.0, 0.3, 0.5, 1.0))
def test_per_token_loss_against_trl(alpha):
    sdpo = pytest.importorskip("trl.experimental.sdpo.loss_utils", reason="trl not installed (optional)")
    g = np.random.default_rng(0)
    s, t = torch.tensor(g.normal(size=(3, 5, 11)) * 2), torch.tensor(g.normal(size=(3, 5, 11)) * 2)
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
    assert all({"masked_only_success", "skipped_prompts", "groups_two_successes"} <= set(r) for r in h)
    assert all("groups_two_successes" in r for r in s["stages"]["rl"]["history"])


def test_groups_with_two_successes_counts_per_group():
    """Groups of 4: (1,1,0,0) has two successes, (1,0,0,0) one, (0,0,0,0) none, (1,1,1,1) four → 2/4."""
    from types import SimpleNamespace

    from pcmi.training.train import groups_with_two_successes
    r = torch.tensor([1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1], dtype=torch.float)
    assert groups_with_two_successes(SimpleNamespace(reward=r), 4) == 0.5
    assert groups_with_two_successes(SimpleNamespace(reward=r), 2) == 3 / 8   # pairs (1,1), (1,1), (1,1) of 8


def test_tiny_each_method_is_closer_to_its_own_closed_form(tiny_run):
    """The comparison the tiny run shows a newcomer is meaningful: on every prompt, RL is closer to
    π0·exp(r/β) and SDSD to its on-policy fixed point than to the other method's prediction and the base."""
    s, _ = tiny_run
    for key, v in s["theory_check"].items():
        assert v["n_closer_to_own"] == v["n_prompts"] == 4, (key, v["not_closer"])


def test_summary_predictions_use_the_config_beta(tiny_run):
    s, _ = tiny_run
    beta = s["config"]["beta"]
    assert beta != 1
    for p in s["prompts"]:
        lp0, r = np.array(p["log_probs"]["base"]), np.array(p["reward"])
        q = np.exp(lp0 + r / beta)
        np.testing.assert_allclose(np.exp(p["log_probs"]["pred_rl"]), q / q.sum(), atol=1e-12)


def test_tiny_records_threads_and_checkpoint_use(tiny_run):
    s, _ = tiny_run
    assert s["threads"] == s["cpu_threads"] == 1 == s["config"]["threads"]
    assert {k: v["checkpoint"] for k, v in s["stages"].items()} == {"pretrain": "trained", "rl": "trained",
                                                                    "sdsd": "trained"}


def test_rerun_reuses_checkpoints_says_so_and_keeps_the_other_method(tiny_run, tmp_path, capsys):
    s, out = tiny_run
    from pcmi.cli import main
    assert main(["train", "--out", str(out), "--method", "rl", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert f"reusing checkpoints in {out} (config, seed match)" in text
    assert "keeping sdsd from an earlier run" in text and f"results in {out}" in text
    assert "theory check rl->rl" in text and "theory check sdsd->sdsd_onpolicy" in text
    again = json.loads((out / "summary.json").read_text())
    assert again["methods"] == ["rl", "sdsd"] and again["method"] == "rl"
    assert again["mean"]["sdsd"]["success"] == s["mean"]["sdsd"]["success"]
    assert again["stages"]["rl"]["checkpoint"] == "reused" and again["stages"]["sdsd"]["checkpoint"] == "earlier run"
    assert not [f for f in out.iterdir() if "tmp" in f.name]


@pytest.mark.parametrize("field,value", [("beta", float("nan")), ("beta", float("inf")), ("prompts_per_step", 0),
                                         ("ckpt_every", 0), ("ema_rate", 5), ("p_wrong", 1.0), ("p_wrong", -0.1),
                                         ("group_size", 1), ("threads", 0), ("teacher", "live!"), ("ks", ()),
                                         ("alpha", 2.0), ("post_lr", 0.0), ("n_layer", 1.5), ("scale_adv_by_std", 1),
                                         ("ckpt_minutes", float("nan")), ("depth", True)])
def test_config_field_out_of_domain_is_refused_at_construction(field, value):
    with pytest.raises(PcmiInputError) as e:
        TrainConfig(**{field: value})
    assert f"TrainConfig.{field}" in str(e.value) and "\n" not in str(e.value)


def test_presets_are_valid_configs():
    for cfg in PRESETS.values():
        assert cfg.replace() == cfg  # re-validates


def test_bad_input_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown config"):
        run_train("huge", out=str(tmp_path))
    with pytest.raises(ValueError, match="unknown method"):
        run_train("tiny", method="ppo", out=str(tmp_path))
    (tmp_path / "d" / "summary.json").mkdir(parents=True)
    with pytest.raises(PcmiInputError, match="directory"):
        run_train("tiny", out=str(tmp_path / "d"))
    from pcmi.cli import main
    assert main(["train", "--config", "huge", "--out", str(tmp_path)]) == 2
    assert main(["train", "--threads", "0", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "threads" in err[1]
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "ckpt_pretrain.pt").write_bytes(b"")
    assert main(["train", "--out", str(tmp_path / "e"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ckpt_pretrain.pt" in err[0]


def test_report_without_arguments_is_a_usage_line(capsys):
    from pcmi.training.report import main
    assert main([]) == 2
    assert capsys.readouterr().err.strip().startswith("usage:")
    assert main(["/nonexistent/summary.json"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tiny_trains_on_cuda(tmp_path):
    cfg = get_config("tiny").replace(pretrain_steps=20, post_steps=5)
    s = run_train(cfg, method="both", out=str(tmp_path), seed=0, device="cuda", progress=False, figures=False)
    assert s["device"].startswith("cuda")


def test_pretraining_loss_mask_covers_exactly_the_completion(world):
    from pcmi.training.data import pretraining_batch
    x, y, mask = pretraining_batch(world, 32, 0.5, 0.3, np.random.default_rng(0))
    specials = {world.ids(n) for n in ("BOS", "SEP", "DEMO")}
    assert (mask.sum(1) == world.max_len + 1).all()          # L moves + STOP per sequence
    assert not any(int(t) in specials for t in y[mask])     # never a prompt or demonstration token


def test_gpu_config_runs_reduced_on_cpu(tmp_path, capsys):
    """`pcmi train --config gpu --reduced`: the gpu preset's graph world (4 routes, depth 2, branching 3,
    24 prompts) and code path, end to end on the CPU at the REDUCED size (about half a minute)."""
    import json

    from pcmi.cli import main as pcmi_main
    from pcmi.training.config import PRESETS, REDUCED
    out = tmp_path / "gpu_reduced"
    assert pcmi_main(["train", "--config", "gpu", "--reduced", "--out", str(out), "--device", "cpu"]) == 0
    assert "config gpu (reduced)" in capsys.readouterr().out
    s = json.loads((out / "summary.json").read_text())
    gpu = PRESETS["gpu"].to_dict()
    assert s["config_name"] == "gpu (reduced)" and s["device"] == "cpu"
    for k in ("k_routes", "depth", "branching", "n_sources", "n_targets"):  # the gpu world itself
        assert s["config"][k] == gpu[k]
    assert all(s["config"][k] == v for k, v in REDUCED.items())
    assert len(s["prompts"]) == gpu["n_sources"] * gpu["n_targets"]


def test_null_baseline_trains_and_is_reported_without_a_closed_form(tmp_path):
    """--method negative: the fixed-negative-advantage null baseline trains, is evaluated exactly like the
    others, logs groups_two_successes, and has no theory check of its own (it has no closed form)."""
    cfg = get_config("tiny").replace(post_steps=10)
    s = run_train(cfg, method="negative", out=str(tmp_path), seed=0, device="cpu", progress=False, figures=True)
    assert s["methods"] == ["negative"] and "negative" in s["mean"]
    h = s["stages"]["negative"]["history"]
    assert len(h) == 10 and all(0 <= r["groups_two_successes"] <= 1 for r in h)
    assert s["theory_check"] == {}
    pol = s["prompts"][0]["policies"]["negative"]
    assert abs(pol["total_prob"] - 1) < 1e-9 and "tv_rl" in pol["distances"]
    from pcmi.training.run import results_table
    assert "negative" in results_table(s)
