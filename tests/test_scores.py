"""PCMI scores: the streamed expectation against the dense matrix, on extreme instances."""
import warnings

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import logsumexp

from pcmi.scores import expected_log_teacher_leaves, expected_pcmi, pcmi_matrix
from pcmi.teachers import leaf_rows
from pcmi.testing import extreme_instances, log_distributions


@given(extreme_instances())
def test_pcmi_matrix_has_no_nan_and_is_log_t_minus_log_base_on_the_support(inst):
    M = pcmi_matrix(inst)
    assert not np.isnan(M).any() and not (M == np.inf).any()
    alive = np.isfinite(inst.log_base)
    assert np.all(np.isneginf(M[:, ~alive]))
    rows = leaf_rows(inst.teacher, inst.n)[:, alive]
    fin = np.isfinite(rows)
    assert np.array_equal(np.isfinite(M[:, alive]), fin)
    assert np.allclose(M[:, alive][fin], (rows - inst.log_base[alive][None, :])[fin])


@given(extreme_instances())
def test_expected_pcmi_is_the_demonstration_average_of_the_matrix(inst):
    """s(y) = Σ_j D_j PCMI[j, y] (D_j = 0: no term) on supp π0, −inf off it; never NaN."""
    s = expected_pcmi(inst)
    D = np.exp(inst.log_demos)
    M = pcmi_matrix(inst)
    present = np.isfinite(inst.log_demos)[:, None]  # exact: a 1e-600 demonstration still counts
    with np.errstate(invalid="ignore"):
        ref = np.where(present, np.where(np.isneginf(M), -np.inf, D[:, None] * M), 0.0).sum(axis=0)
    assert not np.isnan(s).any()
    assert np.array_equal(np.isfinite(s), np.isfinite(ref))
    fin = np.isfinite(s)
    assert np.allclose(s[fin], ref[fin], atol=1e-8 * (1 + np.abs(ref[fin]).max(initial=0)))
    assert np.all(np.isneginf(s[~np.isfinite(inst.log_base)]))


# --- mutation testing (issue 8 item 6): explicit demonstration laws, no floating-point noise ----

def _dense_average(inst, log_D):
    """Σ_j D_j PCMI[j, y] from the dense matrix (D_j = 0: no term), −inf where a present row is −inf."""
    D, present, M = np.exp(log_D), np.isfinite(log_D)[:, None], pcmi_matrix(inst)
    with np.errstate(invalid="ignore"):
        return np.where(present, np.where(np.isneginf(M), -np.inf, D[:, None] * M), 0.0).sum(axis=0)


@given(extreme_instances(), st.data())
def test_expected_pcmi_uses_the_given_demonstration_law(inst, data):
    alive = np.flatnonzero(np.isfinite(inst.log_base))  # D lives inside supp π0 (the teachers' domain)
    log_D = np.full(inst.n, -np.inf)
    log_D[alive] = data.draw(log_distributions(n=len(alive), min_n=1)) if len(alive) > 1 else 0.0
    if len(alive) > 1:
        log_D[alive[data.draw(st.integers(0, len(alive) - 1))]] = -np.inf  # a demonstration of weight 0
    log_D = log_D - logsumexp(log_D)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # −inf − (−inf) off supp π0 must not leak as a warning
        s, M = expected_pcmi(inst, log_D), pcmi_matrix(inst)
        e = expected_log_teacher_leaves(inst, log_D)
        s_default = expected_pcmi(inst)
    ref = _dense_average(inst, log_D)
    assert not np.isnan(s).any() and not np.isnan(M).any()
    assert np.array_equal(np.isfinite(s), np.isfinite(ref))
    fin = np.isfinite(s)
    assert np.allclose(s[fin], ref[fin], atol=1e-8 * (1 + np.abs(ref[fin]).max(initial=0)))
    alive = np.isfinite(inst.log_base)
    assert np.allclose(e[alive & fin], (s + inst.log_base)[alive & fin])
    assert np.array_equal(np.isfinite(s_default), np.isfinite(_dense_average(inst, inst.log_demos)))


def test_expected_pcmi_of_an_explicit_law_differs_from_the_default():
    from pcmi import Instance, LatentStrategyTeacher
    lb = np.log([0.5, 0.3, 0.2])
    t = LatentStrategyTeacher.route_copying(lb, [0, 1, 2], 0.1)
    inst = Instance(lb, [1, 1, 0], t, np.log([0.625, 0.375, 1e-300]))
    D = np.log([0.1, 0.1, 0.8])
    s, s0 = expected_pcmi(inst, D), expected_pcmi(inst)
    assert np.allclose(s, _dense_average(inst, D)) and np.allclose(s0, _dense_average(inst, inst.log_demos))
    assert np.max(np.abs(s - s0)) > 0.1
    assert np.allclose(expected_log_teacher_leaves(inst, D), s + lb)


def test_zero_probability_rollouts_give_minus_inf_without_a_warning():
    """π0(y) = 0 and T(y|y') = 0: PCMI and its expectation are −inf there (not NaN, no warning)."""
    from pcmi import Instance, KernelTeacher
    T = np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.5, 0.5, 0.0]])
    log_base = np.array([np.log(0.6), np.log(0.4), -np.inf])
    inst = Instance(log_base, np.array([1, 1, 0]), KernelTeacher.from_probs(T), log_base)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = expected_pcmi(inst)
        M = pcmi_matrix(inst)
    assert np.isneginf(s[2]) and np.isneginf(M[:, 2]).all()
    assert np.allclose(s[:2], np.log(0.5) - np.log([0.6, 0.4]))
