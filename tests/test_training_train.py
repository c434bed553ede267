"""pcmi.training.train: the RL and SDSD losses against an independent per-prefix computation
(values and autograd gradients), the teacher's context, the EMA update, checkpoints, and resume
after a kill inside RL and SDSD while both stages move the parameters."""
from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pcmi.errors import PcmiInputError  # noqa: E402
from pcmi.training import TrainConfig, get_config  # noqa: E402
from pcmi.training.data import make_world  # noqa: E402
from pcmi.training.rollouts import Rollouts  # noqa: E402
from pcmi.training.run import run_train  # noqa: E402
from pcmi.training.train import (StageInterrupted, choose_demonstrations, ema_update, load_checkpoint,  # noqa: E402
                                 new_model, rl_loss, save_checkpoint, sdsd_loss, teacher_contexts)

CFG = get_config("tiny")


@pytest.fixture(scope="module")
def world():
    return make_world(CFG)


def _model(world, seed, sharpen=1.0):
    torch.manual_seed(seed)
    m = new_model(CFG, world)
    with torch.no_grad():
        m.head.weight.mul_(sharpen)
    return m


def _hand_rollouts(world):
    """Two prompts × groups of 4: correct paths, a wrong-target path, and a rollout that ends at its
    first token (an invalid BOS) followed by STOP padding. Rewards are set by hand."""
    v = world.vocab
    L1 = world.max_len + 1
    rows, masks, prompts = [], [], []
    for p in (0, 1):
        law = world.laws[p]
        for g in range(4):
            if g == 3 and p == 1:
                toks, m = [v.special("BOS")] + [v.special("STOP")] * (L1 - 1), [1] + [0] * (L1 - 1)
            elif g == 3:
                toks, m = v.encode_completion(law.wrong_paths[0]), [1] * L1
            else:
                toks, m = v.encode_completion(law.paths[g % len(law.paths)]), [1] * L1
            rows.append(toks)
            masks.append(m)
            prompts.append(p)
    reward = torch.tensor([1, 1, 0, 0, 1, 0, 0, 0], dtype=torch.float)
    return Rollouts(torch.tensor(prompts), torch.tensor(rows), torch.tensor(masks, dtype=torch.bool), reward)


def _prefix_logprobs(model, ctx: list, tokens: list, n_own: int):
    """log softmax of model(ctx + tokens[:t])[-1] for t < n_own: one forward pass per prefix (V,) each."""
    out = []
    for t in range(n_own):
        ids = torch.tensor([ctx + tokens[:t]])
        out.append(torch.log_softmax(model(ids)[0, -1].float(), -1))
    return out


def _student_ctx(world, p):
    task = world.laws[p].task
    v = world.vocab
    return [v.special("BOS"), v.node_id(task.source), v.node_id(task.target)]


def _grads(model, loss):
    return torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)


def _assert_same_grads(g1, g2):
    """Equal up to float32 noise (relative to the largest entry), and not all zero."""
    g1 = [torch.zeros(1) if a is None else a for a in g1]
    g2 = [torch.zeros(1) if b is None else b for b in g2]
    scale = max(float(b.abs().max()) for b in g2)
    assert scale > 1e-6  # a non-trivial training signal
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * scale)


# ----------------------------------------------------------------------------- RL
def test_rl_loss_and_gradient_against_independent_computation(world):
    """loss = −mean_i A_i log π(y_i), A_i = R_i − group mean of R, R = r − β(log π − log π_ref)."""
    cfg = CFG.replace(beta=0.7, group_size=4)
    model, ref = _model(world, 0, 30.0), _model(world, 1, 30.0)
    ro = _hand_rollouts(world)
    logp, logp_ref = [], []
    for i in range(ro.n):
        p, toks, n_own = int(ro.prompt[i]), ro.tokens[i].tolist(), int(ro.mask[i].sum())
        ctx = _student_ctx(world, p)
        logp.append(sum(lp[toks[t]] for t, lp in enumerate(_prefix_logprobs(model, ctx, toks, n_own))))
        with torch.no_grad():
            logp_ref.append(sum(float(lp[toks[t]]) for t, lp in enumerate(_prefix_logprobs(ref, ctx, toks, n_own))))
    lp = np.array([float(x.detach()) for x in logp])
    R = ro.reward.numpy() - cfg.beta * (lp - np.array(logp_ref))
    A = (R.reshape(2, 4) - R.reshape(2, 4).mean(1, keepdims=True)).ravel()
    assert np.abs(lp - np.array(logp_ref)).max() > 0.1 and np.abs(A).min() > 1e-3
    expected = -sum(float(a) * x for a, x in zip(A, logp)) / ro.n
    loss, stats = rl_loss(model, ref, world, ro, cfg)
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-4, abs=1e-6)
    assert stats["kl_ref"] == pytest.approx(float(np.mean(lp - np.array(logp_ref))), rel=1e-4)
    _assert_same_grads(_grads(model, loss), _grads(model, expected))


# ----------------------------------------------------------------------------- SDSD
# demonstrations are correct siblings (rows 0, 1, 4, 5 hold correct paths); row 7, which ends at its
# first token and is STOP-padded, has one, so padding would enter the loss if it were not masked
DEMO_IDX = np.array([1, 0, 0, -1, 5, 4, -1, 4])


def _demo_path(world, i):
    j = DEMO_IDX[i]
    law = world.laws[j // 4]
    return law.paths[(j % 4) % len(law.paths)]


def test_teacher_context_holds_the_demonstration(world):
    ro = _hand_rollouts(world)
    ctx = teacher_contexts(world, ro, DEMO_IDX)
    v = world.vocab
    for i in (0, 1, 2, 4, 5, 7):
        demo = _demo_path(world, i)
        expected = [v.special("DEMO")] + [v.node_id(u) for u in demo[1:]] + [v.special("SEP")] + _student_ctx(world, i // 4)
        assert ctx[i].tolist() == expected
    assert ctx[0].tolist() != ctx[1].tolist()  # each row gets its own sibling's path


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_sdsd_loss_and_gradient_against_independent_computation(world, alpha):
    """loss = (1/N) Σ_i w_i mean_t D_α(S_t, T_t), T from the teacher with y'_i in context, no gradient."""
    model, teacher = _model(world, 0, 30.0), _model(world, 1, 30.0)
    ro = _hand_rollouts(world)
    v = world.vocab
    terms = []
    for i in range(ro.n):
        if DEMO_IDX[i] < 0:
            continue
        toks, n_own, p = ro.tokens[i].tolist(), int(ro.mask[i].sum()), int(ro.prompt[i])
        demo = _demo_path(world, i)
        t_ctx = [v.special("DEMO")] + [v.node_id(u) for u in demo[1:]] + [v.special("SEP")] + _student_ctx(world, p)
        s_lp = _prefix_logprobs(model, _student_ctx(world, p), toks, n_own)
        with torch.no_grad():
            t_lp = _prefix_logprobs(teacher, t_ctx, toks, n_own)
        d = []
        for ls, lt in zip(s_lp, t_lp):
            s, t = ls.exp(), lt.exp()
            if alpha == 1.0:
                d.append((s * (ls - lt)).sum())
            else:
                lm = torch.log((1 - alpha) * s + alpha * t)
                d.append(alpha * (t * (lt - lm)).sum() + (1 - alpha) * (s * (ls - lm)).sum())
        terms.append(sum(d) / n_own)
    expected = sum(terms) / ro.n
    loss, _ = sdsd_loss(model, teacher, world, ro, DEMO_IDX, alpha)
    assert float(expected.detach()) > 1e-3
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-4, abs=1e-7)
    _assert_same_grads(_grads(model, loss), _grads(model, expected))
    assert all(g is None or float(g.abs().max()) == 0 for g in _grads(teacher, loss))


def test_live_teacher_gets_a_stop_gradient(world):
    """With the model as its own teacher, the gradient is that of a constant teacher."""
    model = _model(world, 0, 30.0)
    frozen_copy = copy.deepcopy(model)
    ro = _hand_rollouts(world)
    live, _ = sdsd_loss(model, model, world, ro, DEMO_IDX, 1.0)
    const, _ = sdsd_loss(model, frozen_copy, world, ro, DEMO_IDX, 1.0)
    assert float(live.detach()) == pytest.approx(float(const.detach()), rel=1e-6)
    _assert_same_grads(_grads(model, live), _grads(model, const))


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


def test_ema_update_formula():
    """θ_T ← (1 − τ)·θ_T + τ·θ with τ the weight of the student."""
    teacher, student = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in teacher.parameters()]
    ema_update(teacher, student, 0.05)
    for b, pt, ps in zip(before, teacher.parameters(), student.parameters()):
        pt, ps = pt.detach(), ps.detach()
        torch.testing.assert_close(pt, 0.95 * b + 0.05 * ps)
        assert float((pt - b).abs().max()) > 0


# ----------------------------------------------------------------------------- checkpoints and resume
@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated", None])
def test_bad_checkpoint_is_a_one_line_error_naming_it(tmp_path, content):
    path = tmp_path / "ckpt_rl.pt"
    if content is None:  # a valid torch file that is not a checkpoint
        torch.save({"model": {}}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(PcmiInputError) as e:
        load_checkpoint(str(path), "cpu")
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    path = tmp_path / "ckpt_rl.pt"
    torch.save({k: None for k in ("model", "opt", "torch_rng", "np_rng", "state", "run")} | {"ema": TrainConfig()}, path)
    with pytest.raises(PcmiInputError, match="unreadable"):
        load_checkpoint(str(path), "cpu")


def test_checkpoint_round_trip_and_directory_target(tmp_path):
    obj = {"model": {"w": torch.arange(3.0)}, "opt": {}, "torch_rng": torch.Generator().get_state(),
           "np_rng": np.random.default_rng(1).bit_generator.state, "state": {"step": 2}, "run": {}, "ema": None}
    save_checkpoint(obj, str(tmp_path / "c.pt"))
    back = load_checkpoint(str(tmp_path / "c.pt"), "cpu")
    assert torch.equal(back["model"]["w"], obj["model"]["w"]) and back["np_rng"] == obj["np_rng"]
    (tmp_path / "d.pt").mkdir()
    with pytest.raises(PcmiInputError, match="directory"):
        save_checkpoint(obj, str(tmp_path / "d.pt"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "d.pt"]  # no temporary file left


RESUME_CFG = CFG.replace(pretrain_steps=40, post_steps=6, ckpt_every=3, prompts_per_step=2)


def _params(path):
    return load_checkpoint(str(path), "cpu")["model"]


def test_resume_after_kill_inside_rl_and_sdsd_is_bit_identical_and_training_moves(tmp_path):
    kw = dict(method="both", seed=3, device="cpu", progress=False, figures=False)
    run_train(RESUME_CFG, out=str(tmp_path / "full"), **kw)
    out = str(tmp_path / "killed")
    # kill 1: 40 pretraining steps, then RL steps 1..5; kill 2: RL steps 4..6 (resumed from its checkpoint
    # at step 3), then SDSD steps 1..5; the final call resumes SDSD from step 3
    for stop in (40 + 5, 3 + 5):
        with pytest.raises(StageInterrupted):
            run_train(RESUME_CFG, out=out, stop_after=stop, **kw)
    run_train(RESUME_CFG, out=out, **kw)
    base = _params(tmp_path / "full" / "ckpt_pretrain.pt")
    for stage in ("pretrain", "rl", "sdsd"):
        a, b = _params(tmp_path / "full" / f"ckpt_{stage}.pt"), _params(tmp_path / "killed" / f"ckpt_{stage}.pt")
        for k in a:
            assert torch.equal(a[k], b[k]), (stage, k)
        if stage != "pretrain":  # post-training actually moved the parameters away from the base
            moved = max(float((a[k] - base[k]).abs().max()) for k in a)
            assert moved > 1e-4, stage
            hist = load_checkpoint(str(tmp_path / "killed" / f"ckpt_{stage}.pt"), "cpu")["state"]["history"]
            assert all(h["grad_norm"] > 0 for h in hist), stage
    with pytest.raises(ValueError, match="another config or seed"):
        run_train(RESUME_CFG.replace(beta=0.5), out=out, **kw)


TRAINER_MODES = ["full", "sampled", "sampled-baseline", "sequence",
                 {"loss_mode": "topk", "distillation_topk": 2, "distillation_add_tail": True, "alpha": 0.5},
                 {"loss_mode": "topk", "distillation_topk": 2, "distillation_add_tail": False, "topk_of": "teacher"}]


@pytest.mark.parametrize("spec", TRAINER_MODES, ids=str)
def test_every_loss_mode_trains_with_a_stop_gradient_teacher(world, spec):
    """Each TrainConfig loss mode gives a finite loss whose gradient reaches the student only, and
    whose student gradient is that of the same loss with a constant (deep-copied) teacher."""
    from pcmi.training.config import TrainConfig
    cfg = TrainConfig(**(spec if isinstance(spec, dict) else {"loss_mode": spec}))
    model = _model(world, 0, 30.0)
    frozen_copy = copy.deepcopy(model)
    ro = _hand_rollouts(world)
    live, _ = sdsd_loss(model, model, world, ro, DEMO_IDX, cfg.loss())
    const, _ = sdsd_loss(model, frozen_copy, world, ro, DEMO_IDX, cfg.loss())
    assert torch.isfinite(live) and float(live.detach()) == pytest.approx(float(const.detach()), rel=1e-6, abs=1e-9)
    grads = _grads(model, live)
    assert any(g is not None and float(g.abs().max()) > 0 for g in grads)
    _assert_same_grads(grads, _grads(model, const))


def test_negative_advantages_are_minus_one_on_failures_only():
    from pcmi.training.train import negative_advantages
    r = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0])
    assert negative_advantages(r).tolist() == [0.0, -1.0, 0.0, -1.0, -1.0]
    assert negative_advantages(r, 0.5).tolist() == [0.0, -0.5, 0.0, -0.5, -0.5]
