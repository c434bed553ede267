"""Distributions in log space: probabilities that leave log space lie in [0, 1]."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import logsumexp

from pcmi import PcmiInputError
from pcmi.distributions import condition, log_normalize, prob_of, probs, total_variation
from pcmi.testing import extreme_log_distributions


def rounding_above_one(rng):
    """A normalized log-distribution whose total exp(logsumexp) rounds above 1 (exists: search)."""
    for _ in range(100000):
        lp = log_normalize(np.log(rng.dirichlet(np.ones(int(rng.integers(2, 6))))))
        if np.exp(logsumexp(lp)) > 1:
            return lp
    raise AssertionError("no rounding example found")


def test_prob_of_clips_rounding_above_one():
    lp = rounding_above_one(np.random.default_rng(0))
    assert np.exp(logsumexp(lp)) > 1  # the unclipped value this guards against
    p = prob_of(logsumexp(lp))
    assert isinstance(p, float) and p == 1.0


@given(st.floats(-800.0, 1e-12), st.lists(st.floats(-800.0, 1e-12), min_size=1, max_size=5))
def test_prob_of_is_exp_clipped_to_the_unit_interval(x, xs):
    for v, p in ((x, prob_of(x)), (xs, prob_of(xs))):
        e = np.exp(np.asarray(v))
        assert np.all((0 <= p) & (p <= 1))
        assert np.allclose(p, np.minimum(e, 1.0), rtol=0, atol=0)
    assert prob_of(-np.inf) == 0.0 and prob_of(0.0) == 1.0


@given(st.integers(2, 7).flatmap(extreme_log_distributions))
def test_extreme_distributions_are_normalized_and_probs_stay_in_range(lp):
    p = probs(lp)
    assert np.all((0 <= p) & (p <= 1)) and abs(p.sum() - 1) < 1e-12
    assert total_variation(lp, lp) == 0
    keep = np.isfinite(lp)
    assert np.allclose(probs(condition(lp, keep)), p)



def test_row_blocked_normalization_equals_the_whole_matrix_at_once():
    """check_log_probs on a matrix larger than one row block (2^20 entries) normalizes every row as
    logsumexp over the whole matrix does, and still finds a bad row in a later block."""
    from pcmi.distributions import check_log_probs, logsumexp
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1100, 1000))
    a -= logsumexp(a, axis=1, keepdims=True)
    assert np.array_equal(check_log_probs(a, axis=1), a - logsumexp(a, axis=1, keepdims=True))
    a[1090] += 0.01
    with pytest.raises(PcmiInputError, match="not normalized"):
        check_log_probs(a, axis=-1)
