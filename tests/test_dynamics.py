"""On-policy rounds: against the route-copying closed form, and never NaN on extreme instances."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import logsumexp

import pcmi
from pcmi import Instance, KernelTeacher, LatentStrategyTeacher, PcmiInputError
from pcmi.distributions import safe_log
from pcmi.testing import eps_open, extreme_instances


def closed_form_rounds(w, eps, n_rounds):
    """Route-copying, every rollout correct (D_k = π_k): theory.md §3 gives
    log m_{k+1}(z) = const + log m_k(z) + m_k(z)·log(1 + (1 − eps)/(eps·m_k(z)))."""
    out, m = [np.asarray(w, float)], np.asarray(w, float)
    for _ in range(n_rounds):
        lm = np.log(m) + m * np.log1p((1 - eps) / (eps * m))
        m = np.exp(lm - logsumexp(lm))
        out.append(m)
    return out


@given(st.lists(st.floats(-3.0, 0.0), min_size=2, max_size=4), eps_open, st.data())
def test_sdsd_rounds_follow_the_closed_form_with_zero_probability_rollouts(logits, eps, data):
    """Each route also holds a zero-probability rollout (π0 = 0), which used to turn the rebuilt
    teacher's posterior into NaN."""
    w = np.exp(logits) / np.exp(logits).sum()
    sizes = [data.draw(st.integers(1, 2)) for _ in w]
    route = np.repeat(np.arange(len(w)), [s + 1 for s in sizes])
    lb = np.full(len(route), -np.inf)
    for z, m in enumerate(sizes):
        inner = np.flatnonzero(route == z)[:m]
        lb[inner] = np.log(w[z]) - np.log(m)  # uniform inside the route; the last one has π0 = 0
    t = LatentStrategyTeacher.route_copying(lb, route, eps)
    inst = Instance(lb, np.ones(len(route)), t, lb, route=route)
    rounds = pcmi.sdsd_rounds(inst, 3)
    for r, m in zip(rounds, closed_form_rounds(w, eps, 3)):
        masses = np.array([r.strategy_masses[z] for z in range(len(w))])
        assert np.allclose(masses, m, atol=1e-9, rtol=1e-7), (masses, m)
        assert np.all(np.isneginf(r.log_pi[~np.isfinite(lb)]))


def test_rounds_need_no_rebuild_after_the_last_round_and_allow_zero_success():
    """One SDSD round with a teacher that puts no mass on correct rollouts: round 1 has success 0
    (no entropy over correct rollouts); nothing is rebuilt after the last round."""
    lb = np.log([0.5, 0.3, 0.2])
    T = safe_log([[0.0, 0.0, 1.0]] * 3)
    inst = Instance(lb, [1, 1, 0], KernelTeacher(T), pcmi.demos_from_successes(lb, [1, 1, 0]))
    rounds = pcmi.sdsd_rounds(inst, 1)
    assert rounds[1].success == 0 and rounds[1].correct_entropy is None
    with pytest.raises(PcmiInputError, match="cannot be rebuilt"):
        pcmi.sdsd_rounds(inst, 2)


@given(extreme_instances(kinds=("latent", "route_copying", "copy")), st.sampled_from([None, 0.5]))
def test_rounds_are_distributions_or_clear_errors(inst, beta):
    for run in (lambda: pcmi.sdsd_rounds(inst, 3, beta), lambda: pcmi.forward_kl_rounds(inst, 3),
                lambda: pcmi.rl_rounds(inst, 3, 0.5)):
        try:
            rounds = run()
        except PcmiInputError as e:
            assert "\n" not in str(e)
            continue
        for r in rounds:
            assert not np.isnan(r.log_pi).any() and abs(logsumexp(r.log_pi)) < 1e-9
            assert 0 <= r.success <= 1
            if r.success > 0:
                assert np.isfinite(r.correct_entropy) and r.correct_entropy >= -1e-12
            if r.strategy_masses is not None:
                assert all(0 <= v <= 1 for v in r.strategy_masses.values())
