"""The torch trainer's per-token losses (`pcmi.training.losses`) against the exact theory (theory.md §9).

For a student rollout y ∼ π_θ on a prefix tree and a demonstration class c ∼ w (`teacher.demo_classes`),
the trainer's loss of that pair is L(y, c) = Σ_t ℓ_t with ℓ = `per_token_loss` (or
`sequence_reward_to_go_loss`) on the rollout's prefixes h_0 … h_{T−1}: student logits log π(·|h_t),
teacher logits log T(·|h_t, c). Its autograd gradient w.r.t. the logits, mapped back to the tree's
nodes and weighted by π(y)·w_c over every pair, must be the exact expected gradient

    Σ_{y, c} π(y) w_c ∇_θ L(y, c) = pcmi.estimators.expected_gradient(π, teacher, D, mode).grad

to 1e-9 for every mode. The link check takes the implementations as arguments, and plausible wrong
ones (sabotage) must fail it on some problem of the same strategies.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest
from hypothesis import HealthCheck, find, given, note, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from pcmi.errors import PcmiInputError  # noqa: E402
from pcmi.estimators import expected_gradient, expected_gradients  # noqa: E402
from pcmi.objectives import LossMode  # noqa: E402
from pcmi.testing import children_of, root_to_leaf_paths, tabular_problems  # noqa: E402
from pcmi.training.losses import (LOGIT_FLOOR, per_token_divergence, per_token_loss,  # noqa: E402
                                  sequence_reward_to_go_loss)

TOL = 1e-9
FULL = [LossMode("full", a) for a in (0.0, 0.3, 1.0)]
TOPK = [LossMode("topk", a, k, of, tail) for a in (0.0, 0.3, 1.0) for k in (1, 2, 3)
        for of in ("student", "teacher") for tail in (False, True)]
SAMPLED = [LossMode("sampled"), LossMode("sampled-baseline"), LossMode("sequence")]
ALL_MODES = FULL + TOPK + SAMPLED


def scaled(n: int) -> int:
    """n examples under the ci profile (40), proportionally fewer or more under mutation / dev."""
    return max(4, n * settings.default.max_examples // 40)


few = settings(max_examples=scaled(20), deadline=None, suppress_health_check=[HealthCheck.too_slow])


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py: tiny tensors, one thread


# --- the rollouts of a tabular problem as a trainer batch ----------------------------------------

@dataclass
class RolloutBatch:
    """One row per (rollout y with π(y) > 0, demonstration class c with w_c > 0), padded to the
    longest rollout: the tensors the trainer would see, and the tree node of every logit."""
    student: torch.Tensor    # (R, T, V) log π(·|h_t), −inf for padding tokens
    teacher: torch.Tensor    # (R, T, V) log T(·|h_t, c)
    ids: torch.Tensor        # (R, T) the token y_t (child index of h_t)
    mask: torch.Tensor       # (R, T) real positions
    weight: torch.Tensor     # (R,) π(y)·w_c
    node: np.ndarray         # (R, T, V) tree node of each logit, −1 for padding
    n_nodes: int


def rollout_batch(inst, policy) -> RolloutBatch:
    """Plain loops over the tree: paths root → leaf, children in node order as the vocabulary."""
    tree = inst.tree
    kids = children_of(tree)
    V = max(len(k) for k in kids.values())
    paths = root_to_leaf_paths(tree)
    ws, rows = [], []
    for log_w, log_T in inst.teacher.demo_classes(inst.log_demos, tree):
        ws.append(np.exp(np.asarray(log_w, float)))
        rows.append(np.asarray(log_T, float))
    w, log_T = np.concatenate(ws), np.concatenate(rows)
    w, log_T = w[w > 0], log_T[w > 0]
    alive = [i for i in range(tree.n_leaves) if np.isfinite(policy.log_seq[i])]
    R, T = len(alive) * len(w), max(len(paths[i]) - 1 for i in alive)
    S, Q = np.zeros((R, T, V)), np.zeros((R, T, V))
    ids, mask, weight = np.zeros((R, T), np.int64), np.zeros((R, T)), np.zeros(R)
    node = np.full((R, T, V), -1)
    r = 0
    for i in alive:
        for c in range(len(w)):
            weight[r] = np.exp(policy.log_seq[i]) * w[c]
            for t, (h, a) in enumerate(zip(paths[i][:-1], paths[i][1:])):
                ks = kids[h]
                S[r, t] = -np.inf
                Q[r, t] = -np.inf
                S[r, t, :len(ks)] = policy.log_cond[ks]
                with np.errstate(invalid="ignore"):
                    Q[r, t, :len(ks)] = log_T[c, ks] - log_T[c, h]
                node[r, t, :len(ks)] = ks
                ids[r, t], mask[r, t] = ks.index(a), 1.0
            r += 1
    as_t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    return RolloutBatch(as_t(S), as_t(Q), torch.tensor(ids), as_t(mask), as_t(weight), node, tree.n_nodes)


def trainer_expected_gradient(b: RolloutBatch, mode: LossMode, loss=per_token_loss,
                              seq_loss=sequence_reward_to_go_loss) -> np.ndarray:
    """Σ_{y,c} π(y) w_c ∇_θ Σ_t ℓ_t(y, c) by torch autograd, on the tree's nodes (index 0 unused)."""
    x = b.student.clone().requires_grad_()
    if mode.kind == "sequence":
        per_tok = seq_loss(x, b.teacher, b.ids, b.mask)
    else:
        per_tok = loss(x, b.teacher, b.ids, mode)
    assert per_tok.shape == b.mask.shape and per_tok.dtype == torch.float64
    (torch.where(b.mask > 0, per_tok, 0.0) * b.weight[:, None]).sum().backward()
    g = x.grad.numpy()
    assert not np.isnan(g).any(), f"{mode.label}: NaN gradient"
    assert np.all(g[b.node < 0] == 0), f"{mode.label}: gradient on a padding token"
    out = np.zeros(b.n_nodes)
    np.add.at(out, b.node[b.node >= 0], g[b.node >= 0])
    return out


def link_error(inst, policy, mode: LossMode, batch=None, **impl) -> float | None:
    """max |trainer's expected gradient − exact G_mode|; None where the exact loss is infinite or
    undefined (expected_gradient refuses)."""
    try:
        exact = expected_gradient(policy, inst.teacher, inst.log_demos, mode).grad
    except PcmiInputError:
        return None
    b = batch or rollout_batch(inst, policy)
    return float(np.max(np.abs(trainer_expected_gradient(b, mode, **impl) - exact)))


# --- the link: every mode, generic and extreme problems ------------------------------------------

@few
@given(tabular_problems())
def test_trainer_losses_give_the_exact_expected_gradient_of_every_mode(problem):
    inst, policy = problem
    reports = expected_gradients(policy, inst.teacher, inst.log_demos, ALL_MODES)  # full-support teachers: all finite
    b = rollout_batch(inst, policy)
    for mode, rep in zip(ALL_MODES, reports):
        np.testing.assert_allclose(trainer_expected_gradient(b, mode), rep.grad, rtol=TOL, atol=TOL, err_msg=mode.label)


@few
@given(st.one_of(tabular_problems(extreme=True), tabular_problems(masked=True, base=False)))
def test_the_link_holds_with_zeros_masked_tokens_and_extreme_teachers(problem):
    """eps, lam ∈ {0, 1}, zero-probability rollouts, 1e-300 masses, masked (−inf) logits: wherever the
    exact loss is finite the trainer's gradient is it (and never NaN)."""
    inst, policy = problem
    b = rollout_batch(inst, policy)
    checked = 0
    for mode in ALL_MODES:
        err = link_error(inst, policy, mode, batch=b)
        if err is not None:
            checked += 1
            assert err <= TOL * (1 + np.abs(expected_gradient(policy, inst.teacher, inst.log_demos, mode).grad).max()), \
                (mode.label, err)
    note(f"{checked} finite modes")


# --- values: full = per_token_divergence, topk with k ≥ V = full, no NaN at −inf ------------------

def random_logits(seed, shape=(3, 4, 7), masked=0.0, dtype=torch.float64):
    """Student and teacher logits with a fraction `masked` of −inf entries (one finite kept per row)."""
    g = np.random.default_rng(seed)
    s, t = g.normal(size=shape) * 2, g.normal(size=shape) * 2
    for x in (s, t):
        x[g.random(shape) < masked] = -np.inf
        x[..., 0] = np.where(np.isfinite(x).any(-1), x[..., 0], 0.0)
    ids = torch.tensor(g.integers(0, shape[-1], size=shape[:2]))
    return torch.tensor(s, dtype=dtype), torch.tensor(t, dtype=dtype), ids


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_full_mode_value_is_per_token_divergence(alpha):
    s, t, ids = random_logits(1, dtype=torch.float32)
    torch.testing.assert_close(per_token_loss(s, t, ids, LossMode("full", alpha)), per_token_divergence(s, t, alpha),
                               rtol=0, atol=0)
    s, t, ids = random_logits(2)  # float64 kept: agrees with the float32 divergence to its precision
    torch.testing.assert_close(per_token_loss(s, t, ids, LossMode("full", alpha)),
                               per_token_divergence(s, t, alpha).double(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("of", ["student", "teacher"])
@pytest.mark.parametrize("tail", [False, True])
def test_topk_with_k_at_least_the_vocabulary_is_full(alpha, of, tail):
    for k in (7, 8, 50):
        s, t, ids = random_logits(3)
        x, y = s.clone().requires_grad_(), s.clone().requires_grad_()
        a = per_token_loss(x, t, ids, LossMode("topk", alpha, k, of, tail))
        b = per_token_loss(y, t, ids, LossMode("full", alpha))
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        a.sum().backward()
        b.sum().backward()
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-12, atol=1e-12)


def test_topk_with_tail_is_the_divergence_of_the_k_plus_one_bucket_laws():
    """Independent route: build the (k+1)-bucket laws with numpy from the probabilities and compare."""
    s, t, ids = random_logits(4)
    ps, pt = torch.softmax(s, -1).numpy(), torch.softmax(t, -1).numpy()
    k = 3
    for of, key in (("student", ps), ("teacher", pt)):
        top = np.argsort(-key, axis=-1, kind="stable")[..., :k]
        bs = np.concatenate([np.take_along_axis(ps, top, -1), 1 - np.take_along_axis(ps, top, -1).sum(-1, keepdims=True)], -1)
        bt = np.concatenate([np.take_along_axis(pt, top, -1), 1 - np.take_along_axis(pt, top, -1).sum(-1, keepdims=True)], -1)
        ours = per_token_loss(s, t, ids, LossMode("topk", 1.0, k, of, True)).numpy()
        np.testing.assert_allclose(ours, (bs * np.log(bs / bt)).sum(-1), rtol=1e-10, atol=1e-12)
        ours = per_token_loss(s, t, ids, LossMode("topk", 0.0, k, of, False)).numpy()
        rs, rt = bs[..., :k] / bs[..., :k].sum(-1, keepdims=True), bt[..., :k] / bt[..., :k].sum(-1, keepdims=True)
        np.testing.assert_allclose(ours, (rt * np.log(rt / rs)).sum(-1), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_nan_with_masked_logits_and_masked_tokens_get_no_gradient(dtype):
    """−inf logits (student and teacher) in every mode: finite values and gradients, and for the
    reverse-KL modes a masked student token gets gradient exactly 0 (its probability stays 0)."""
    s, t, ids = random_logits(5, shape=(4, 6, 9), masked=0.4, dtype=dtype)
    s_ok = torch.isfinite(s)
    # sampled tokens are ones the student can emit
    ids = torch.where(s_ok.gather(-1, ids[..., None])[..., 0], ids, s.argmax(-1))
    t = torch.where(torch.isfinite(s) & ~torch.isfinite(t), torch.zeros_like(t), t)  # keep reverse KL finite
    mask = torch.ones(ids.shape)
    for mode in ALL_MODES:
        x = s.clone().requires_grad_()
        v = (sequence_reward_to_go_loss(x, t, ids, mask) if mode.kind == "sequence"
             else per_token_loss(x, t, ids, mode))
        v.sum().backward()
        assert not torch.isnan(v).any() and not torch.isnan(x.grad).any(), mode.label
        if mode.alpha == 1.0:
            assert torch.isfinite(v).all(), mode.label
            assert (x.grad[~s_ok] == 0).all(), mode.label


def test_sampled_surrogates_and_reward_to_go_values():
    """Values by the definitions: ℓ_t = [log S − log T](y_t)·log S(y_t); the baseline subtracts KL(S‖T)
    inside the bracket; R_t sums the masked future (a masked position contributes 0 and gets 0)."""
    s, t, ids = random_logits(6)
    ls, lt = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    a, b = ls.gather(-1, ids[..., None])[..., 0], lt.gather(-1, ids[..., None])[..., 0]
    kl = (ls.exp() * (ls - lt)).sum(-1)
    torch.testing.assert_close(per_token_loss(s, t, ids, LossMode("sampled")), (a - b) * a)
    torch.testing.assert_close(per_token_loss(s, t, ids, LossMode("sampled-baseline")), (a - b - kl) * a)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 1, 0, 1]], dtype=torch.float64)
    r = (a - b) * mask
    rtg = torch.stack([r[:, j:].sum(-1) for j in range(r.shape[1])], -1)
    torch.testing.assert_close(sequence_reward_to_go_loss(s, t, ids, mask), rtg * a * mask)


def test_the_teacher_gets_no_gradient():
    s, t, ids = random_logits(7)
    t = t.clone().requires_grad_()
    mask = torch.ones(ids.shape)
    for mode in ALL_MODES:
        x = s.clone().requires_grad_()
        v = sequence_reward_to_go_loss(x, t, ids, mask) if mode.kind == "sequence" else per_token_loss(x, t, ids, mode)
        v.sum().backward()
        assert t.grad is None, mode.label


# --- bad input: one-line PcmiInputError --------------------------------------------------------

def test_bad_input_is_refused_in_one_line():
    s, t, ids = random_logits(8)
    mask = torch.ones(ids.shape)
    bad = [
        lambda: per_token_loss(s, t, ids, LossMode("sequence")),
        lambda: per_token_loss(s, t[:, :2], ids, LossMode("full")),
        lambda: per_token_loss(s[0], t[0], ids[0], LossMode("full")),
        lambda: per_token_loss(s, t, None, LossMode("sampled")),
        lambda: per_token_loss(s, t, ids + 7, LossMode("sampled")),
        lambda: per_token_loss(s, t, ids.double(), LossMode("sampled-baseline")),
        lambda: per_token_loss(s.clone().fill_(float("nan")), t, ids, LossMode("full")),
        lambda: per_token_loss(s, t.clone().fill_(float("inf")), ids, LossMode("full")),
        lambda: per_token_loss(s, t, ids, "no-such-mode"),
        lambda: sequence_reward_to_go_loss(s, t, ids, mask[:, :2]),
        lambda: sequence_reward_to_go_loss(s, t, ids[:, :2], mask),
    ]
    for f in bad:
        with pytest.raises(PcmiInputError) as e:
            f()
        assert "\n" not in str(e.value) and len(str(e.value)) > 10
    with pytest.raises(PcmiInputError, match="sequence_reward_to_go_loss"):
        per_token_loss(s, t, ids, LossMode("sequence"))
    assert LOGIT_FLOOR < -1e20


# --- sabotage: plausible wrong implementations must fail the link --------------------------------

def topk_tail_renormalizes(s, t, ids, mode):
    return per_token_loss(s, t, ids, replace(mode, tail=False) if mode.kind == "topk" else mode)


def topk_of_the_other_side(s, t, ids, mode):
    other = {"student": "teacher", "teacher": "student"}
    return per_token_loss(s, t, ids, replace(mode, topk_of=other[mode.topk_of]) if mode.kind == "topk" else mode)


def js_weights_swapped(s, t, ids, mode):
    return per_token_loss(s, t, ids, replace(mode, alpha=1 - mode.alpha) if mode.kind == "full" else mode)


def _token_log_probs(s, t, ids):
    ls, lt = torch.log_softmax(s.clamp_min(LOGIT_FLOOR), -1), torch.log_softmax(t.clamp_min(LOGIT_FLOOR), -1)
    return ls, lt, ls.gather(-1, ids[..., None])[..., 0], lt.gather(-1, ids[..., None])[..., 0]


def baseline_not_detached(s, t, ids, mode):
    ls, lt, a, b = _token_log_probs(s, t, ids)
    kl = torch.where(ls.exp() > 0, ls.exp() * (ls - lt), 0.0).sum(-1)
    return ((a - b).detach() - kl) * a


def sampled_ratio_not_detached(s, t, ids, mode):
    _, _, a, b = _token_log_probs(s, t, ids)
    return (a - b) * a


def reward_to_go_of_the_past(s, t, ids, mask):
    _, _, a, b = _token_log_probs(s, t, ids)
    r = torch.where(mask > 0, a - b, 0.0)
    return torch.where(mask > 0, r.cumsum(-1).detach() * a, 0.0)


def reward_to_go_not_detached(s, t, ids, mask):
    _, _, a, b = _token_log_probs(s, t, ids)
    r = torch.where(mask > 0, a - b, 0.0)
    return torch.where(mask > 0, r.flip(-1).cumsum(-1).flip(-1) * a, 0.0)


SABOTAGES = {
    "topk_tail_renormalizes": (LossMode("topk", 1.0, 1, "student", True), dict(loss=topk_tail_renormalizes)),
    "topk_of_the_other_side": (LossMode("topk", 0.3, 2, "teacher", False), dict(loss=topk_of_the_other_side)),
    "js_weights_swapped": (LossMode("full", 0.3), dict(loss=js_weights_swapped)),
    "baseline_not_detached": (LossMode("sampled-baseline"), dict(loss=baseline_not_detached)),
    "sampled_ratio_not_detached": (LossMode("sampled"), dict(loss=sampled_ratio_not_detached)),
    "reward_to_go_of_the_past": (LossMode("sequence"), dict(seq_loss=reward_to_go_of_the_past)),
    "reward_to_go_not_detached": (LossMode("sequence"), dict(seq_loss=reward_to_go_not_detached)),
}


@pytest.mark.parametrize("name", list(SABOTAGES))
def test_sabotaged_losses_fail_the_link(name):
    """Some problem of the same strategy exposes each wrong implementation (error far above TOL)."""
    mode, impl = SABOTAGES[name]

    def caught(problem):
        err = link_error(*problem, mode, **impl)
        return err is not None and err > 1e-4

    find(tabular_problems(), caught, settings=settings(max_examples=200, derandomize=True, database=None,
                                                       suppress_health_check=list(HealthCheck)))
