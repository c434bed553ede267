"""pcmi.checks: every scalar check takes the real numbers in its domain (Python, numpy, 0-d arrays,
fractions) and refuses everything else (bools, strings, None, lists, NaN, ±inf, out of range) with one
PcmiInputError line naming the argument; the public entry points that take eps, lam, beta, alpha, tol
read them through these checks."""
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pcmi import CopyTeacher, LatentStrategyTeacher, PcmiInputError
from pcmi import checks as C

NOT_NUMBERS = st.sampled_from([True, False, np.bool_(True), "0.5", b"1", None, [0.5], (0.5,), {"x": 1},
                               np.array([0.5]), np.array("0.5"), np.array(True), 1 + 0j, object()])
NON_FINITE = st.sampled_from([float("nan"), float("inf"), -float("inf"), np.float64("nan"), np.inf])


def as_kinds(x: float):
    """x as each kind of real number a user may pass."""
    with np.errstate(over="ignore"):
        f32 = np.float32(x)
    return st.sampled_from([x, np.float64(x), f32 if float(f32) == x else x, np.array(x), Fraction(x)])


def _refused(f, x, name) -> bool:
    try:
        f(x, name)
    except PcmiInputError as e:
        msg = str(e)
        return "\n" not in msg and msg.startswith(name + " ")
    return False


@given(st.floats(allow_nan=False, allow_infinity=False).flatmap(as_kinds))
def test_number_returns_every_finite_real_as_a_float(x):
    v = C.number(x, "x")
    assert type(v) is float and v == float(x)


@given(st.one_of(NOT_NUMBERS, NON_FINITE))
def test_every_check_refuses_what_is_not_a_finite_number_in_one_line(x):
    for f in (C.number, C.unit, C.positive, lambda v, n: C.positive(v, n, zero_ok=True),
              lambda v, n: C.in_range(v, n, -3.0, 3.0)):
        assert _refused(f, x, "x")


@given(st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.booleans())
def test_unit_is_the_closed_or_open_unit_interval(x, open_low, open_high):
    inside = 0 <= x <= 1 and not (open_low and x == 0) and not (open_high and x == 1)
    if inside:
        assert C.unit(x, "x", open_low=open_low, open_high=open_high) == x
    else:
        with pytest.raises(PcmiInputError, match=r"x must lie in [\[(]0, 1[\])], got"):
            C.unit(x, "x", open_low=open_low, open_high=open_high)


@given(st.floats(allow_nan=False, allow_infinity=False), st.booleans())
def test_positive_is_the_positive_half_line(x, zero_ok):
    if x > 0 or (zero_ok and x == 0):
        assert C.positive(x, "x", zero_ok=zero_ok) == x
    else:
        with pytest.raises(PcmiInputError, match=f"x must be a finite number {'>=' if zero_ok else '>'} 0"):
            C.positive(x, "x", zero_ok=zero_ok)


@given(st.integers(-10, 10), st.integers(-3, 3))
def test_count_takes_integers_at_or_above_low(k, low):
    for x in (k, np.int64(k)):
        if k >= low:
            assert C.count(x, "n", low) == k and type(C.count(x, "n", low)) is int
        else:
            assert _refused(lambda v, n: C.count(v, n, low), x, "n")


@given(st.one_of(NOT_NUMBERS, st.floats()))
def test_count_refuses_floats_even_whole_ones_and_bools(x):
    assert _refused(C.count, x, "n")


def test_sabotage_a_float_cast_check_lets_bools_and_strings_through(monkeypatch):
    """The check the modules used to write by hand, float(x), passes True as 1 and "0.5" as 0.5."""
    monkeypatch.setattr(C, "_real", lambda x: float(x))
    assert not _refused(C.unit, True, "eps") and not _refused(C.unit, "0.5", "eps")


@pytest.mark.parametrize("make", [
    lambda v: LatentStrategyTeacher(np.log([0.5, 0.5]), np.log([[0.5, 0.5], [0.5, 0.5]]), v),
    lambda v: LatentStrategyTeacher.route_copying(np.log([0.5, 0.5]), np.array([0, 1]), v),
    lambda v: CopyTeacher(np.log([0.5, 0.5]), v),
])
@pytest.mark.parametrize("bad", [True, "0.5", float("nan"), 1.5, None])
def test_teachers_refuse_a_bad_eps_or_lam_in_one_line(make, bad):
    with pytest.raises(PcmiInputError) as e:
        make(bad)
    assert "\n" not in str(e.value) and ("eps" in str(e.value) or "lam" in str(e.value))


@pytest.mark.parametrize("bad", [True, "2", float("inf"), 0.0, -1.0])
def test_beta_refused_in_one_line(bad):
    from pcmi.policies import check_beta
    with pytest.raises(PcmiInputError, match="^beta must be"):
        check_beta(bad)


@pytest.mark.parametrize("bad", [True, "0.5", float("nan"), -0.1])
def test_loss_mode_alpha_and_collapse_tau_refused_in_one_line(bad):
    from pcmi.figures.collapse import schedule_of_tau
    from pcmi.objectives import LossMode
    with pytest.raises(PcmiInputError, match="^alpha must"):
        LossMode("full", alpha=bad)
    with pytest.raises(PcmiInputError, match="^tau must"):
        schedule_of_tau(bad)
