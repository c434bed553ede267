"""pcmi.training.losses and the scoring helpers against plain numpy on hand-built tensors:
values, and gradients from torch.autograd against the analytic formulas."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

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
