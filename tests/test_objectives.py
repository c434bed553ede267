"""The per-token divergence of the loss modes (`pcmi.objectives`, theory.md §3 and §9).

divergence_terms(log p, log q, α) returns per-token terms with Σ_a terms_a = D_α(p, q) and a
coefficient c with ∂D_α/∂θ_a = p_a (c_a − Σ_b p_b c_b) for p = softmax θ. Checked against
`policies.js_divergence` (the sum) and torch autograd of D_α(softmax θ, q) written here from the
definition (the gradient); wrong coefficients (sabotage) must fail the same checks.
LossMode validates its switches with one-line PcmiInputErrors.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pcmi.errors import PcmiInputError
from pcmi.objectives import MODES, LossMode, divergence_terms, loss_mode
from pcmi.policies import js_divergence
from pcmi.testing import extreme_log_distributions, log_distributions

torch = pytest.importorskip("torch")
F64 = torch.float64   # every tensor here is float64 (the session's default dtype is left alone)


def scaled(n: int) -> int:
    """n examples under the ci profile (40), proportionally fewer or more under mutation / dev."""
    return max(4, n * settings.default.max_examples // 40)


alphas = st.one_of(st.sampled_from([0.0, 1.0, 0.5, 1e-9, 1 - 1e-9]), st.floats(0.0, 1.0))
logits = st.floats(-20.0, 20.0, allow_nan=False)


@st.composite
def pairs(draw, extreme: bool = True):
    """(log p, log q) over the same n ≥ 2 outcomes, zeros and 1e-300 masses allowed."""
    n = draw(st.integers(2, 7))
    dist = extreme_log_distributions if extreme else log_distributions
    return draw(dist(n=n)), draw(dist(n=n))


@st.composite
def student_logits(draw, n: int, masked: bool = True):
    """θ (n,) finite in [−20, 20], with some tokens masked (−inf) if masked; one stays finite."""
    theta = np.array(draw(st.lists(logits, min_size=n, max_size=n)))
    if masked:
        mask = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
        mask[draw(st.integers(0, n - 1))] = False
        theta[mask] = -np.inf
    return theta


def log_softmax_np(theta):
    fin = np.isfinite(theta)
    m = theta[fin].max()
    return np.where(fin, theta - (m + np.log(np.sum(np.exp(theta[fin] - m)))), -np.inf)


def d_alpha_torch(theta, log_q, alpha):
    """(D_α(softmax θ, q), ∂/∂θ) by torch autograd, from the definition; None if D_α = ∞.
    Masked tokens (θ = −inf, p = 0) are constants: gradient 0."""
    on = np.isfinite(theta)
    qpos = np.isfinite(log_q)
    if (alpha == 1 and np.any(on & ~qpos)) or (alpha == 0 and np.any(qpos & ~on)):
        return None
    th = torch.tensor(theta[on], requires_grad=True)
    lp = torch.log_softmax(th, 0)
    p = lp.exp()
    lq_on = torch.tensor(log_q[on])
    if alpha == 1:
        mq = torch.tensor(qpos[on])
        D = torch.where(mq, p * (lp - torch.where(mq, lq_on, 0.0)), 0.0).sum()
    elif alpha == 0:
        idx = np.flatnonzero(qpos)        # ⊆ on
        sel = torch.tensor(np.searchsorted(np.flatnonzero(on), idx))
        q = torch.tensor(np.exp(log_q[idx]))
        D = (q * (torch.tensor(log_q[idx]) - lp[sel])).sum()
    else:
        # tokens with p > 0: both terms; tokens with p = 0 < q: α q log(q / (α q)) = −α q log α, a constant
        lm = torch.logaddexp(np.log1p(-alpha) + lp, np.log(alpha) + torch.where(torch.tensor(qpos[on]), lq_on, -1e4))
        mq = torch.tensor(qpos[on])
        q = torch.where(mq, lq_on.exp(), 0.0)
        D = (alpha * torch.where(mq, q * (torch.where(mq, lq_on, 0.0) - lm), 0.0) + (1 - alpha) * p * (lp - lm)).sum()
        off = ~on & qpos
        D = D + float(np.sum(-alpha * np.exp(log_q[off]) * np.log(alpha)))
    assert D.dtype == F64
    D.backward()
    g = np.zeros(len(theta))
    g[on] = th.grad.numpy()
    return float(D.detach()), g


def grad_from_terms(theta, log_q, alpha, terms=divergence_terms):
    """p ⊙ (c − Σ p c) with (·, c) = terms(log p, log q, α)."""
    lp = log_softmax_np(theta)
    _, coef = terms(lp, log_q, alpha)
    p = np.exp(lp)
    return np.where(p > 0, p * (coef - np.sum(np.where(p > 0, p * coef, 0.0))), 0.0)


# --- the checks (implementation as an argument) -----------------------------------------------

def check_sum(log_p, log_q, alpha, terms=divergence_terms) -> bool:
    """Σ terms = D_α(p, q) of policies.js_divergence (+inf where it is infinite)."""
    t, _ = terms(log_p, log_q, alpha)
    ref = js_divergence(log_p, log_q, alpha)
    s = float(np.sum(t))
    if np.isinf(ref):
        return s == np.inf
    return bool(np.isfinite(s) and abs(s - ref) <= 1e-10 * (1 + abs(ref)))


def check_gradient(theta, log_q, alpha, terms=divergence_terms) -> bool:
    """p ⊙ (coef − Σ p coef) = torch autograd of D_α(softmax θ, q), and Σ terms = D_α there."""
    ref = d_alpha_torch(theta, log_q, alpha)
    if ref is None:
        return True
    D, g = ref
    mine = grad_from_terms(theta, log_q, alpha, terms)
    t, _ = terms(log_softmax_np(theta), log_q, alpha)
    scale = 1 + np.abs(g).max()
    return bool(np.allclose(mine, g, rtol=1e-8, atol=1e-10 * scale) and abs(np.sum(t) - D) <= 1e-9 * (1 + abs(D)))


# --- properties ------------------------------------------------------------------------------------

@settings(max_examples=scaled(150), deadline=None)
@given(pairs(), alphas)
def test_terms_sum_to_the_generalized_js_divergence(pq, alpha):
    log_p, log_q = pq
    assert check_sum(log_p, log_q, alpha)


@settings(max_examples=scaled(150), deadline=None)
@given(pairs(), alphas)
def test_terms_are_infinite_exactly_where_the_divergence_is(pq, alpha):
    log_p, log_q = pq
    t, coef = divergence_terms(log_p, log_q, alpha)
    p_on, q_on = np.isfinite(log_p), np.isfinite(log_q)
    expected = {1.0: p_on & ~q_on, 0.0: q_on & ~p_on}.get(alpha, np.zeros_like(p_on))
    assert np.array_equal(np.isinf(t), expected)
    assert not np.isnan(t).any() and not np.isnan(coef).any()
    assert np.all(np.isfinite(t[~expected]))                        # finite elsewhere
    assert np.all(coef[~p_on] == 0)                                  # coef is multiplied by p = 0 there
    assert np.all(np.isfinite(coef[p_on & q_on]))


@settings(max_examples=scaled(150), deadline=None)
@given(st.integers(2, 7).flatmap(lambda n: st.tuples(student_logits(n), extreme_log_distributions(n))), alphas)
def test_gradient_coefficient_matches_torch_autograd(args, alpha):
    theta, log_q = args
    on, qpos = np.isfinite(theta), np.isfinite(log_q)
    if alpha == 1:
        assume(not np.any(on & ~qpos))
    if alpha == 0:
        assume(not np.any(qpos & ~on))
    assert check_gradient(theta, log_q, alpha)


@settings(max_examples=scaled(60), deadline=None)
@given(st.integers(2, 6).flatmap(lambda n: st.tuples(st.lists(extreme_log_distributions(n), min_size=3, max_size=3),
                                                      extreme_log_distributions(n))), alphas)
def test_terms_broadcast_row_by_row(args, alpha):
    rows, log_q = args
    P = np.stack(rows)
    t, c = divergence_terms(P, log_q, alpha)
    assert t.shape == c.shape == P.shape
    for i, lp in enumerate(rows):
        ti, ci = divergence_terms(lp, log_q, alpha)
        assert np.array_equal(t[i], ti) and np.array_equal(c[i], ci)


@pytest.mark.parametrize("log_p, log_q, alpha", [([0.0, -800.0], [0.0, -np.inf], 1.0),
                                                  ([0.0, -np.inf], [0.0, -800.0], 0.0)])
def test_underflowing_probabilities_give_infinite_terms(log_p, log_q, alpha):
    """log p = −800 is p = e^-800 > 0: reverse KL to q = 0 there is +inf (and forward KL likewise)."""
    t, c = divergence_terms(np.array(log_p), np.array(log_q), alpha)
    assert not np.isnan(t).any() and np.isinf(t).any()


def test_endpoints_are_the_two_kls():
    """D_1 = KL(p‖q), D_0 = KL(q‖p), D_α of identical laws = 0, D_½ ≤ log 2 (the JS bound)."""
    lp, lq = np.log([0.7, 0.2, 0.1]), np.log([0.1, 0.3, 0.6])
    kl_pq = float(np.sum(np.exp(lp) * (lp - lq)))
    kl_qp = float(np.sum(np.exp(lq) * (lq - lp)))
    assert np.sum(divergence_terms(lp, lq, 1.0)[0]) == pytest.approx(kl_pq, rel=1e-14)
    assert np.sum(divergence_terms(lp, lq, 0.0)[0]) == pytest.approx(kl_qp, rel=1e-14)
    for a in (0.0, 0.3, 1.0):
        assert np.sum(divergence_terms(lp, lp, a)[0]) == pytest.approx(0.0, abs=1e-15)
    disjoint_p, disjoint_q = np.array([0.0, -np.inf]), np.array([-np.inf, 0.0])
    assert np.sum(divergence_terms(disjoint_p, disjoint_q, 0.5)[0]) == pytest.approx(np.log(2), rel=1e-14)


# --- sabotage: plausible wrong coefficients and terms must fail ------------------------------------

def coef_without_one_minus_alpha(log_p, log_q, alpha):
    t, c = divergence_terms(log_p, log_q, alpha)
    return t, (c / (1 - alpha) if 0 < alpha < 1 else c)


def coef_log_p_over_q(log_p, log_q, alpha):
    """(1 − α) log(p/q) for the mixture case: the reverse-KL coefficient in place of log(p/m)."""
    t, c = divergence_terms(log_p, log_q, alpha)
    if 0 < alpha < 1:
        with np.errstate(invalid="ignore"):
            c = np.where(np.isfinite(log_p), (1 - alpha) * (log_p - log_q), 0.0)
    return t, c


def forward_coef_sign_flipped(log_p, log_q, alpha):
    t, c = divergence_terms(log_p, log_q, alpha)
    return t, (-c if alpha == 0 else c)


def symmetric_mixture(log_p, log_q, alpha):
    """Terms with m = (p + q)/2 whatever α (the plain JS mixture)."""
    return divergence_terms(log_p, log_q, alpha) if alpha in (0, 1) else (
        _js_terms_with_m(log_p, log_q, alpha), divergence_terms(log_p, log_q, alpha)[1])


def _js_terms_with_m(log_p, log_q, alpha):
    lm = np.logaddexp(log_p, log_q) - np.log(2)
    p, q = np.exp(log_p), np.exp(log_q)
    with np.errstate(invalid="ignore"):
        return (np.where(np.isfinite(log_q), alpha * q * (log_q - lm), 0.0)
                + np.where(np.isfinite(log_p), (1 - alpha) * p * (log_p - lm), 0.0))


def reverse_terms_without_p(log_p, log_q, alpha):
    """α = 1 terms log(p/q) without the weight p."""
    t, c = divergence_terms(log_p, log_q, alpha)
    return (c if alpha == 1 else t), c


@settings(max_examples=scaled(20), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1))
def test_sabotaged_divergences_fail(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 7))
    theta = rng.normal(0, 2, n)
    log_q = np.log(rng.dirichlet(np.ones(n)))
    lp = log_softmax_np(theta)
    assert np.abs(np.exp(lp) - np.exp(log_q)).sum() > 1e-2           # p ≠ q: there is a gradient to get wrong
    alpha = float(rng.uniform(0.1, 0.9))
    for a in (0.0, alpha, 1.0):
        assert check_gradient(theta, log_q, a) and check_sum(lp, log_q, a)
    assert not check_gradient(theta, log_q, alpha, coef_without_one_minus_alpha)
    assert not check_gradient(theta, log_q, alpha, coef_log_p_over_q)
    assert not check_gradient(theta, log_q, 0.0, forward_coef_sign_flipped)
    assert not check_gradient(theta, log_q, 1.0, reverse_terms_without_p)
    if abs(alpha - 0.5) > 0.1:
        assert not check_sum(lp, log_q, alpha, symmetric_mixture)


# --- LossMode -----------------------------------------------------------------------------------------

BAD_MODES = [
    (dict(kind="nope"), "unknown loss mode"),
    (dict(kind="full", alpha=-0.1), "alpha"),
    (dict(kind="full", alpha=1.5), "alpha"),
    (dict(kind="full", alpha=float("nan")), "alpha"),
    (dict(kind="full", alpha=float("inf")), "alpha"),
    (dict(kind="full", alpha="0.5"), "alpha"),
    (dict(kind="full", alpha=True), "alpha"),
    (dict(kind="full", alpha=None), "alpha"),
    (dict(kind="sampled", alpha=0.5), "alpha must be 1"),
    (dict(kind="sampled-baseline", alpha=0.0), "alpha must be 1"),
    (dict(kind="sequence", alpha=0.3), "alpha must be 1"),
    (dict(kind="topk"), "topk"),
    (dict(kind="topk", topk=0), "topk"),
    (dict(kind="topk", topk=-2), "topk"),
    (dict(kind="topk", topk=True), "topk"),
    (dict(kind="topk", topk=1.5), "topk"),
    (dict(kind="topk", topk="2"), "topk"),
    (dict(kind="topk", topk=2, topk_of="both"), "topk_of"),
    (dict(kind="topk", topk=2, tail="yes"), "tail"),
    (dict(kind="topk", topk=2, tail=1), "tail"),
    (dict(kind="full", tail=True), "topk only"),
    (dict(kind="full", topk=2), "topk only"),
    (dict(kind="sampled", topk=2), "topk only"),
    (dict(kind="sequence", tail=True), "topk only"),
]


@pytest.mark.parametrize("kw, word", BAD_MODES)
def test_bad_loss_modes_are_one_line_errors(kw, word):
    kind = kw.pop("kind")
    with pytest.raises(PcmiInputError) as e:
        loss_mode(kind, **kw)
    msg = str(e.value)
    assert "\n" not in msg and word in msg


def test_loss_mode_normalizes_and_labels():
    m = LossMode("topk", np.float64(0.5), np.int64(3), "teacher", np.bool_(True))
    assert type(m.alpha) is float and type(m.topk) is int and type(m.tail) is bool
    assert m.label == "topk(k=3, teacher, tail, α=0.5)" and m.per_token
    assert m.as_dict() == {"mode": "topk", "alpha": 0.5, "topk": 3, "topk_of": "teacher", "tail": True}
    assert loss_mode(m) is m
    assert LossMode().label == "full(α=1)" and LossMode("full", 0).label == "full(α=0)"
    assert LossMode("sequence").label == "sequence" and not LossMode("sequence").per_token
    assert LossMode("sampled").as_dict() == {"mode": "sampled", "alpha": 1.0}
    assert set(MODES) == {"full", "topk", "sampled", "sampled-baseline", "sequence"}
    assert all("\n" not in v for v in MODES.values())
    with pytest.raises(Exception):     # frozen: a validated mode cannot be edited into an invalid one
        m.alpha = 2.0
