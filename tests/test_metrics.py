"""Metrics: exact formulas against Monte Carlo sampling and brute-force combinatorics."""
from math import comb

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import pcmi
from pcmi.testing import log_distributions, rewards


@given(st.integers(1, 30), st.data())
def test_unbiased_pass_at_k_equals_combinatorial_formula(n, data):
    c = data.draw(st.integers(0, n))
    k = data.draw(st.integers(1, n))
    expected = 1 - comb(n - c, k) / comb(n, k)
    assert abs(pcmi.pass_at_k_unbiased(n, c, k) - expected) < 1e-12


@given(st.floats(0.0, 1.0), st.integers(1, 12), st.integers(1, 12))
def test_unbiased_estimator_is_unbiased_for_exact_pass_at_k(p, k, extra):
    """E_{c ~ Bin(n, p)} [estimator] = 1 − (1 − p)^k."""
    n = k + extra
    from scipy.stats import binom
    mean = sum(binom.pmf(c, n, p) * pcmi.pass_at_k_unbiased(n, c, k) for c in range(n + 1))
    assert abs(mean - pcmi.pass_at_k(p, k)) < 1e-9


def test_pass_at_k_and_distinct_correct_match_monte_carlo():
    rng = np.random.default_rng(0)
    lp = np.log(rng.dirichlet(np.ones(8)))
    r = np.array([1, 0, 1, 1, 0, 1, 0, 1])
    p, k, trials = pcmi.success(lp, r), 5, 40000
    draws = rng.choice(8, size=(trials, k), p=np.exp(lp))
    hit = r[draws].any(axis=1)
    assert abs(hit.mean() - pcmi.pass_at_k(p, k)) < 5 * np.sqrt(0.25 / trials)
    distinct = np.array([len({y for y in row if r[y]}) for row in draws])
    assert abs(distinct.mean() - pcmi.expected_distinct_correct(lp, r, k)) < 5 * distinct.std() / np.sqrt(trials)


@given(log_distributions(max_n=6), st.data())
def test_metric_identities(lp, data):
    r = data.draw(rewards(len(lp)))
    ks = np.array([1, 2, 16, 1024])
    pk = pcmi.pass_at_k(pcmi.success(lp, r), ks)
    assert np.all(np.diff(pk) >= -1e-15) and abs(pk[0] - pcmi.success(lp, r)) < 1e-12
    assert abs(pcmi.expected_distinct_correct(lp, r, 1) - pcmi.success(lp, r)) < 1e-12
    assert 1 - 1e-9 <= pcmi.effective_correct(lp, r) <= r.sum() + 1e-9
    assert pcmi.ratio_distortion(lp, lp, r) == 0


def test_pass_at_k_long_horizon_is_stable():
    assert pcmi.pass_at_k(1e-12, 1024) == pytest.approx(1024e-12, rel=1e-6)
    assert pcmi.pass_at_k(1 - 1e-15, 3) == 1.0


def test_strategy_masses_and_ood_success():
    lp = np.log([0.4, 0.2, 0.3, 0.1])
    r, route = np.array([1, 1, 1, 0]), np.array([0, 0, 1, 1])
    m = pcmi.strategy_masses(lp, r, route)
    assert m == pytest.approx({0: 6 / 9, 1: 3 / 9})
    assert pcmi.ood_success(lp, r, route == 0) == pytest.approx(0.3)


@pytest.mark.parametrize("call", [lambda: pcmi.pass_at_k(1.2, 3), lambda: pcmi.pass_at_k(0.5, 0),
                                  lambda: pcmi.pass_at_k_unbiased(3, 4, 1)])
def test_bad_metric_input(call):
    with pytest.raises(pcmi.PcmiInputError):
        call()
