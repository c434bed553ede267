"""Instance.explicit: demonstrations are correct rollouts unless allowed otherwise; π0(·|r=1)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import logsumexp

from pcmi import sdsd_optimum
from pcmi.errors import PcmiInputError
from pcmi.instance import Instance, check_reward, demos_from_successes, has_reachable_success

BASE = np.array([0.5, 0.3, 0.2])
REWARD = np.array([1, 0, 1])
T = np.array([[0.8, 0.1, 0.1], [0.2, 0.6, 0.2], [0.1, 0.3, 0.6]])


def independent_sdsd(D, T):
    """π_SD(y) ∝ exp(Σ_j D_j log T(y | y'_j)), dense numpy (theory.md §3)."""
    e = np.log(T).T @ D
    return np.exp(e - logsumexp(e))


@pytest.mark.parametrize("mass", [1e-300, 1e-6, 0.5, 1.0])
def test_demos_on_failing_rollouts_are_refused_at_any_mass(mass):
    D = np.array([1 - mass, mass, 0.0])
    with pytest.raises(PcmiInputError, match="allow_failing_demos") as e:
        Instance.explicit(BASE, REWARD, T, demos=D)
    assert "rollout 1" in str(e.value)


def test_allow_failing_demos_keeps_them_exactly():
    D = np.array([0.2, 0.5, 0.3])
    inst = Instance.explicit(BASE, REWARD, T, demos=D, allow_failing_demos=True)
    assert np.allclose(np.exp(inst.log_demos), D, atol=1e-15)
    assert np.allclose(np.exp(sdsd_optimum(inst)), independent_sdsd(D, T), atol=1e-12)


def test_demos_on_correct_rollouts_need_no_flag():
    D = np.array([0.25, 0.0, 0.75])
    inst = Instance.explicit(BASE, REWARD, T, demos=D)
    assert np.allclose(np.exp(sdsd_optimum(inst)), independent_sdsd(D, T), atol=1e-12)


@pytest.mark.parametrize("flag", ["yes", 1, None])
def test_allow_failing_demos_must_be_a_bool(flag):
    with pytest.raises(PcmiInputError, match="allow_failing_demos"):
        Instance.explicit(BASE, REWARD, T, demos=[0.2, 0.5, 0.3], allow_failing_demos=flag)


probs = st.floats(min_value=0.0, max_value=1.0).map(lambda p: p if p > 1e-300 or p == 0 else 1e-300)


@given(st.lists(st.tuples(probs, st.integers(0, 1)), min_size=2, max_size=7))
def test_default_demos_are_base_conditioned_on_success(rows):
    """D = π0(·|r=1) computed in probability space; defined iff some correct rollout has π0 > 0."""
    w = np.array([p for p, _ in rows])
    w[0] += 1.0  # a normalizable base
    base, reward = w / w.sum(), np.array([r for _, r in rows])
    with np.errstate(divide="ignore"):
        log_base = np.log(base)
    correct_mass = float((base * reward).sum())
    assert has_reachable_success(log_base, reward) == (correct_mass > 0)
    if correct_mass > 0:
        got = np.exp(demos_from_successes(log_base, reward))
        assert np.allclose(got, base * reward / correct_mass, rtol=1e-9, atol=1e-300)
    else:
        with pytest.raises(PcmiInputError, match="positive base probability.*give 'demos'"):
            demos_from_successes(log_base, reward)


def test_reward_shape_messages():
    with pytest.raises(PcmiInputError, match="flat list"):
        check_reward([[1], [0]], 2)
    with pytest.raises(PcmiInputError, match="3 entries but there are 2"):
        check_reward([1, 0, 1], 2)
