"""pcmi.training.losses and the scoring helpers against plain numpy on hand-built tensors:
values, and gradients from torch.autograd against the analytic formulas."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pcmi  # noqa: E402
from pcmi.training.losses import per_token_divergence, sequence_mean_then_batch_mean  # noqa: E402
from pcmi.training.rollouts import sequence_logprob  # noqa: E402

ALPHAS = (0.0, 0.3, 0.5, 1.0)


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
    assert ours.shape == (3, 5) and np.all(ours >= -1e-6) and ours.max() > 0.1


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


def test_reverse_kl_gradient_is_the_analytic_one(logits):
    """∂KL(S‖T)/∂z_v = s_v·(log s_v − log t_v − KL) for student logits z; the teacher gets none."""
    s, t = logits
    z = torch.tensor(s, requires_grad=True)
    zt = torch.tensor(t, requires_grad=True)
    per_token_divergence(z, zt.detach(), 1.0).sum().backward()
    ls, lt = _np_log_softmax(s), _np_log_softmax(t)
    kl = (np.exp(ls) * (ls - lt)).sum(-1, keepdims=True)
    np.testing.assert_allclose(z.grad.numpy(), np.exp(ls) * (ls - lt - kl), rtol=1e-4, atol=1e-6)
    assert zt.grad is None


def test_forward_kl_gradient_is_the_analytic_one(logits):
    """∂KL(T‖S)/∂z_v = s_v − t_v."""
    s, t = logits
    z = torch.tensor(s, requires_grad=True)
    per_token_divergence(z, torch.tensor(t), 0.0).sum().backward()
    np.testing.assert_allclose(z.grad.numpy(), np.exp(_np_log_softmax(s)) - np.exp(_np_log_softmax(t)),
                               rtol=1e-4, atol=1e-6)


def test_reduction_ignores_padding_and_weights_rows():
    per_tok = torch.tensor([[1.0, 2.0, 30.0], [4.0, 50.0, 60.0], [7.0, 8.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    w = torch.tensor([1.0, 1.0, 0.0])
    # rows: mean over own tokens (1.5, 4, 8), weight 0 counts as a zero, then the mean over 3 rows
    assert float(sequence_mean_then_batch_mean(per_tok, mask, w)) == pytest.approx((1.5 + 4.0) / 3)
    assert float(sequence_mean_then_batch_mean(per_tok, mask)) == pytest.approx((1.5 + 4.0 + 8.0) / 3)


def test_sequence_logprob_sums_own_tokens_only():
    g = np.random.default_rng(1)
    lg = g.normal(size=(2, 4, 6)) * 3
    tokens = np.array([[1, 2, 3, 4], [5, 0, 0, 0]])
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=bool)
    ours = sequence_logprob(torch.tensor(lg), torch.tensor(tokens), torch.tensor(mask)).numpy()
    ls = _np_log_softmax(lg)
    ref = [sum(ls[i, t, tokens[i, t]] for t in range(4) if mask[i, t]) for i in range(2)]
    np.testing.assert_allclose(ours, ref, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Mutation-testing additions (issue 8 item 6): zero-probability tokens and fully padded rows.
# ---------------------------------------------------------------------------------------------
def _np_kl_with_zeros(p, q):
    """Σ_v p_v log(p_v / q_v) with 0·log 0 = 0 (plain numpy, p and q as probabilities)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0).sum(-1)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_divergence_with_zero_probability_tokens_is_finite_and_exact(alpha):
    """−inf logits (tokens of probability 0) follow 0·log 0 = 0: where only the other side of the
    KL puts mass on them, or both do not, D_α stays finite and equals the plain formula."""
    inf = float("inf")
    s = np.array([[[0.0, 1.0, -inf, 0.5], [2.0, -inf, -inf, 0.0]]])
    t = np.array([[[0.5, 0.0, 1.0, -inf], [1.0, 0.3, -inf, 0.0]]])
    if alpha == 0.0:  # KL(T ‖ S) needs S > 0 wherever T > 0: give the student full support
        s = np.where(np.isinf(s), -3.0, s)
    if alpha == 1.0:  # KL(S ‖ T) needs T > 0 wherever S > 0
        t = np.where(np.isinf(t), -3.0, t)
    ours = per_token_divergence(torch.tensor(s), torch.tensor(t), alpha).double().numpy()
    S, T = np.exp(_np_log_softmax(s)), np.exp(_np_log_softmax(t))
    if alpha in (0.0, 1.0):
        ref = _np_kl_with_zeros(S, T) if alpha == 1.0 else _np_kl_with_zeros(T, S)
    else:
        m = (1 - alpha) * S + alpha * T
        ref = alpha * _np_kl_with_zeros(T, m) + (1 - alpha) * _np_kl_with_zeros(S, m)
    assert np.all(np.isfinite(ours))
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_reduction_counts_a_fully_padded_row_as_zero():
    """A row without tokens has mean 0 (no division by zero) and still counts in the batch mean."""
    per_tok = torch.tensor([[3.0, 5.0], [7.0, 11.0]])
    mask = torch.tensor([[1, 1], [0, 0]], dtype=torch.bool)
    assert float(sequence_mean_then_batch_mean(per_tok, mask)) == pytest.approx(4.0 / 2)
    w = torch.tensor([0.5, 1.0])
    assert float(sequence_mean_then_batch_mean(per_tok, mask, w)) == pytest.approx(0.5 * 4.0 / 2)


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 1.0])
def test_masked_logits_give_finite_gradients(alpha):
    """A −inf (masked) logit in student or teacher: the divergence equals the one over the
    unmasked tokens and every gradient is finite (no NaN from 0·log 0 or log m of two zeros)."""
    s = torch.tensor([[[0.3, -float("inf"), 1.0, -0.5]]], requires_grad=True)
    t = torch.tensor([[[0.1, -float("inf"), 0.4, -float("inf")]]])
    d = per_token_divergence(s, t, alpha)
    d.sum().backward()
    assert torch.isfinite(s.grad).all()
    assert s.grad[0, 0, 1] == 0
    ls = np.log(np.exp([0.3, 1.0, -0.5]) / np.exp([0.3, 1.0, -0.5]).sum())
    lt = np.log(np.exp([0.1, 0.4]) / np.exp([0.1, 0.4]).sum())
    lt = np.r_[lt, -np.inf]
    ref = pcmi.js_divergence(ls, lt, alpha)
    if np.isfinite(ref):
        assert float(d.detach()) == pytest.approx(ref, rel=1e-5, abs=1e-6)
    else:  # reverse KL with student mass where the teacher has none: effectively infinite
        assert alpha == 1.0 and float(d.detach()) > 1e20
