"""Our per-token losses (`pcmi.training.losses.per_token_loss`) against TRL 1.16.0's SDPO helpers
(`trl.experimental.sdpo.loss_utils`), on fixed random logits (B, T, V) in float64. Needs the optional
extra `pip install -e ".[trl]"`; skipped without it or with another TRL version (its names change).

What is compared, and the convention differences:
- full, α ∈ {0, 0.5, 1}: `compute_full_logit_self_distillation_loss` — the same D_α (α = 1 reverse KL,
  α = 0 forward KL, between them α·KL(T‖m) + (1−α)·KL(S‖m), m = (1−α)S + αT): values equal.
- top-k of the student, renormalized or with the tail bucket: `compute_topk_self_distillation_loss`.
  TRL takes the tail as log(1 − exp(logsumexp top-k)) with the top-k mass clamped at exp(−1e−7); we
  take it as the log-sum-exp of the tokens outside the top-k (no cancellation). They agree while the
  tail mass is well above 1e−7 (so k < V here). TRL has no teacher-top-k helper; its teacher-server
  path builds that loss from `add_tail_bucket` and `compute_divergence` on the teacher's top-k ids,
  and we compare our teacher top-k with that composition. Ties: TRL's torch.topk leaves them
  unspecified, we take the lower token id; random float logits have none.
- sampled token (α = 1): `compute_sampled_token_self_distillation_loss` returns the same surrogate
  [log S(y) − log T(y)]·log S(y) with the bracket detached, so values agree; the vOPD baseline and the
  reward-to-go are ours only. The value is a surrogate (its gradient is the estimator), so the
  gradients w.r.t. the student logits are compared too.
- TRL does not detach the teacher; ours detaches it inside. We pass detached teacher logits to TRL.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
trl = pytest.importorskip("trl")
if trl.__version__ != "1.16.0":
    pytest.skip(f"the cross-check is pinned to trl 1.16.0, found {trl.__version__}", allow_module_level=True)

with warnings.catch_warnings():  # the experimental-API notice is expected: the helpers are pinned
    warnings.filterwarnings("ignore", message="You are importing from 'trl.experimental'")
    from trl.experimental.sdpo import loss_utils as sdpo  # noqa: E402

from pcmi.objectives import LossMode  # noqa: E402
from pcmi.training.losses import per_token_loss  # noqa: E402

B, T, V = 3, 5, 17
TOL = dict(rtol=1e-10, atol=1e-12)


@pytest.fixture(scope="module")
def logits():
    g = np.random.default_rng(2026)
    s = torch.tensor(g.normal(size=(B, T, V)) * 2.0, dtype=torch.float64)
    t = torch.tensor(g.normal(size=(B, T, V)) * 2.0, dtype=torch.float64)
    ids = torch.tensor(g.integers(0, V, size=(B, T)))
    return s, t, ids


def report(name, ours, theirs):
    diff = float((ours - theirs).detach().abs().max())
    print(f"{name}: max |ours − trl| = {diff:.3e}")
    return diff


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_full_vocabulary_values_match_trl(logits, alpha):
    s, t, ids = logits
    ours = per_token_loss(s, t, ids, LossMode("full", alpha))
    theirs = sdpo.compute_full_logit_self_distillation_loss(s, t.detach(), distillation_alpha=alpha)
    report(f"full α={alpha}", ours, theirs)
    torch.testing.assert_close(ours, theirs, **TOL)
    assert ours.shape == (B, T) and ours.min() > 0


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("tail", [False, True])
@pytest.mark.parametrize("k", [1, 4, 16])
def test_student_topk_values_match_trl(logits, alpha, tail, k):
    s, t, ids = logits
    ours = per_token_loss(s, t, ids, LossMode("topk", alpha, k, "student", tail))
    theirs = sdpo.compute_topk_self_distillation_loss(s, t.detach(), distillation_topk=k, distillation_alpha=alpha,
                                                      distillation_add_tail=tail)
    report(f"topk k={k} tail={tail} α={alpha}", ours, theirs)
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("tail", [False, True])
def test_teacher_topk_values_match_trl_server_composition(logits, alpha, tail):
    """TRL's teacher-top-k path: student log-probs gathered at the teacher's top-k ids, then
    add_tail_bucket (or renormalize) on both, then compute_divergence."""
    s, t, ids = logits
    k = 5
    ls, lt = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    top = torch.topk(t, k, dim=-1).indices
    ls_k, lt_k = ls.gather(-1, top), lt.gather(-1, top)
    if tail:
        ls_k, lt_k = sdpo.add_tail_bucket(ls_k), sdpo.add_tail_bucket(lt_k)
    else:
        ls_k, lt_k = ls_k - ls_k.logsumexp(-1, keepdim=True), lt_k - lt_k.logsumexp(-1, keepdim=True)
    theirs = sdpo.compute_divergence(ls_k, lt_k, alpha)
    ours = per_token_loss(s, t, ids, LossMode("topk", alpha, k, "teacher", tail))
    report(f"teacher topk tail={tail} α={alpha}", ours, theirs)
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-11)


def test_sampled_token_values_and_gradients_match_trl(logits):
    s, t, ids = logits
    x, y = s.clone().requires_grad_(), s.clone().requires_grad_()
    ours = per_token_loss(x, t, ids, LossMode("sampled"))
    theirs = sdpo.compute_sampled_token_self_distillation_loss(y, t.detach(), ids, distillation_alpha=1.0)
    report("sampled value", ours, theirs)
    torch.testing.assert_close(ours, theirs, **TOL)
    ours.sum().backward()
    theirs.sum().backward()
    report("sampled gradient", x.grad, y.grad)
    torch.testing.assert_close(x.grad, y.grad, **TOL)
    with pytest.raises(ValueError):  # both refuse α ≠ 1 for the sampled token
        sdpo.compute_sampled_token_self_distillation_loss(s, t, ids, distillation_alpha=0.5)


@pytest.mark.parametrize("mode", [LossMode("full", 0.5), LossMode("topk", 0.5, 4, "student", True),
                                  LossMode("topk", 1.0, 4, "student", False)])
def test_divergence_gradients_match_trl(logits, mode):
    """The trainer uses the gradient: it agrees with TRL's for the divergence modes too."""
    s, t, ids = logits
    x, y = s.clone().requires_grad_(), s.clone().requires_grad_()
    per_token_loss(x, t, ids, mode).sum().backward()
    if mode.kind == "full":
        theirs = sdpo.compute_full_logit_self_distillation_loss(y, t.detach(), distillation_alpha=mode.alpha)
    else:
        theirs = sdpo.compute_topk_self_distillation_loss(y, t.detach(), distillation_topk=mode.topk,
                                                          distillation_alpha=mode.alpha, distillation_add_tail=mode.tail)
    theirs.sum().backward()
    report(f"{mode.label} gradient", x.grad, y.grad)
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-9, atol=1e-11)


def test_float32_logits_match_trl_to_float32_precision(logits):
    """The trainer's logits are float32: ours stay float32 and agree with TRL run in float32."""
    s, t, ids = (x.float() if x.is_floating_point() else x for x in logits)
    pairs = [(LossMode("full", 0.5), sdpo.compute_full_logit_self_distillation_loss(s, t, distillation_alpha=0.5)),
             (LossMode("topk", 1.0, 4, "student", True),
              sdpo.compute_topk_self_distillation_loss(s, t, distillation_topk=4, distillation_alpha=1.0,
                                                       distillation_add_tail=True)),
             (LossMode("sampled"), sdpo.compute_sampled_token_self_distillation_loss(s, t, ids, distillation_alpha=1.0))]
    for mode, theirs in pairs:
        ours = per_token_loss(s, t, ids, mode)
        assert ours.dtype == torch.float32
        report(f"float32 {mode.label}", ours, theirs)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
