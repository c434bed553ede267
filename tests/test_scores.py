"""PCMI scores: the streamed expectation against the dense matrix, on extreme instances."""
import numpy as np
from hypothesis import given

from pcmi.scores import expected_pcmi, pcmi_matrix
from pcmi.teachers import leaf_rows
from pcmi.testing import extreme_instances


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
