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


# --- teacher="frozen" | "live", level="sequence" | "token" ----------------------------------------
from hypothesis import assume, settings  # noqa: E402

from pcmi.estimators import expected_gradient  # noqa: E402
from pcmi.objectives import LossMode  # noqa: E402
from pcmi.policies import sdsd_optimum, sdsd_token_optimum  # noqa: E402
from pcmi.tabular import TabularPolicy  # noqa: E402
from pcmi.testing import copy_instances, graph_instances, log_distributions, rewards, route_copying_instances  # noqa: E402


def frozen_closed_form_rounds(w, eps, n_rounds):
    """Route-copying, every rollout correct, π0's teacher held fixed (D_k = π_k): E_{D_k} log T0(y|y')
    = log π0(y) + log eps + m_k(z)·log(1 + (1 − eps)/(eps·w_z)) for y in z, so
    log m_{k+1}(z) = const + log w_z + m_k(z)·log(1 + (1 − eps)/(eps·w_z)) (w, not m_k, in the log)."""
    w = np.asarray(w, float)
    out, m = [w], w
    for _ in range(n_rounds):
        lm = np.log(w) + m * np.log1p((1 - eps) / (eps * w))
        m = np.exp(lm - logsumexp(lm))
        out.append(m)
    return out


def route_masses_of(rounds, route, K):
    return [np.array([np.exp(logsumexp(r.log_pi[route == z])) for z in range(K)]) for r in rounds]


@st.composite
def all_correct_route_copying(draw):
    """Disjoint strategies with moderate weights (π0 = Σ w_z P_z), every rollout correct, 0.05 ≤ eps ≤ 0.9."""
    K = draw(st.integers(2, 4))
    sizes = [draw(st.integers(1, 3)) for _ in range(K)]
    route = np.repeat(np.arange(K), sizes)

    def moderate(m):
        x = np.array(draw(st.lists(st.floats(-4.0, 0.0), min_size=m, max_size=m)))
        return x - logsumexp(x)
    w = np.exp(moderate(K))
    lb = np.concatenate([np.log(w[z]) + moderate(m) for z, m in enumerate(sizes)])
    eps = draw(st.floats(0.05, 0.9))
    t = LatentStrategyTeacher.route_copying(lb, route, eps)
    return Instance(lb, np.ones(len(route)), t, lb, route=route), w, eps


@given(all_correct_route_copying(), st.sampled_from(["sequence", "token"]))
def test_frozen_rounds_follow_the_frozen_closed_form(case, level):
    """teacher="frozen": only D follows the policy; the strategy masses obey the frozen recursion
    and π0's ratios inside each strategy are kept (flat tree: both levels agree)."""
    inst, w, eps = case
    rounds = pcmi.sdsd_rounds(inst, 4, teacher="frozen", level=level)
    for m, want in zip(route_masses_of(rounds, inst.route, len(w)), frozen_closed_form_rounds(w, eps, 4)):
        assert np.allclose(m, want, atol=1e-10, rtol=1e-8)
    for r in rounds:
        for z in range(len(w)):
            inside = r.log_pi[inst.route == z] - inst.log_base[inst.route == z]
            assert np.ptp(inside) < 1e-9


@given(all_correct_route_copying())
def test_sabotage_live_rounds_fail_the_frozen_closed_form(case):
    """Rebuilding the teacher (live) changes every round after the first: the frozen check rejects it
    (and the live recursion of closed_form_rounds rejects the frozen rounds)."""
    inst, w, eps = case
    live = route_masses_of(pcmi.sdsd_rounds(inst, 2, teacher="live"), inst.route, len(w))
    frozen = route_masses_of(pcmi.sdsd_rounds(inst, 2, teacher="frozen"), inst.route, len(w))
    assert np.allclose(live[1], frozen[1], atol=1e-12)                    # round 1: the same teacher
    want_f, want_l = frozen_closed_form_rounds(w, eps, 2)[2], closed_form_rounds(w, eps, 2)[2]
    if np.max(np.abs(want_f - want_l)) > 1e-6:
        assert not np.allclose(live[2], want_f, atol=1e-10, rtol=1e-8)
        assert not np.allclose(frozen[2], want_l, atol=1e-10, rtol=1e-8)


@st.composite
def tree_cases(draw, kinds=("route_copying", "soft_route", "copy")):
    kind = draw(st.sampled_from(kinds))
    spec = {"kind": kind, **({"lam": draw(st.floats(0.3, 0.95))} if kind == "copy" else {"eps": draw(st.floats(0.05, 0.7))})}
    inst, _ = draw(graph_instances(teacher=spec))
    assume(np.exp(inst.log_base).min() >= 1e-7)
    return inst


def natural_round(inst, log_pi, teacher):
    """θ ← θ − E_D v(h)/p at every prefix π reaches (GradientReport.direction), D = π(·|r=1), T = teacher:
    one full α = 1 round with λ = 1, i.e. π_tok against (D, T)."""
    pol = TabularPolicy.from_log_probs(inst.tree, log_pi)
    rep = expected_gradient(pol, teacher, pcmi.demos_from_successes(log_pi, inst.reward), LossMode("full", 1.0))
    reached = np.isfinite(pol.log_prefix[np.r_[0, inst.tree.parent[1:]]])
    return pol.with_theta(pol.theta - np.where(reached, rep.direction, 0.0)).log_seq


@settings(max_examples=20)
@given(st.one_of(tree_cases().map(lambda i: (i, "frozen")),
                 tree_cases(("route_copying", "copy")).map(lambda i: (i, "live"))))
def test_token_rounds_are_natural_gradient_rounds_of_the_full_reverse_kl_mode(case):
    """level="token": π_{k+1} = one natural round of full α = 1 from π_k with D_k = π_k(·|r=1) and the
    teacher of round k (frozen: π0's; live: rebuilt(π_k)); on the graph prefix tree."""
    inst, teacher = case
    rounds = pcmi.sdsd_rounds(inst, 3, teacher=teacher, level="token")
    for a, b in zip(rounds[:-1], rounds[1:]):
        t = inst.teacher if teacher == "frozen" else inst.teacher.rebuilt(a.log_pi)
        assert np.max(np.abs(np.exp(natural_round(inst, a.log_pi, t)) - np.exp(b.log_pi))) <= 1e-10


@settings(max_examples=20)
@given(tree_cases(("copy",)))
def test_sabotage_sequence_rounds_are_not_token_rounds_on_a_tree(inst):
    """Where P5 fails (Z(h·a) varies with a; copy teachers on a graph tree, mostly) the sequence-level
    round is not the natural round."""
    seq = pcmi.sdsd_rounds(inst, 1, teacher="frozen")[1].log_pi
    tok = pcmi.sdsd_rounds(inst, 1, teacher="frozen", level="token")[1].log_pi
    assert np.allclose(tok, sdsd_token_optimum(inst), atol=1e-12) and np.allclose(seq, sdsd_optimum(inst), atol=1e-12)
    assume(np.max(np.abs(np.exp(seq) - np.exp(tok))) > 1e-6)
    assert np.max(np.abs(np.exp(natural_round(inst, inst.log_base, inst.teacher)) - np.exp(seq))) > 1e-7


@given(st.one_of(route_copying_instances(all_correct=False), copy_instances()), st.sampled_from(["frozen", "live"]))
def test_on_a_flat_tree_token_and_sequence_rounds_agree(inst, teacher):
    a = pcmi.sdsd_rounds(inst, 3, teacher=teacher, level="token")
    b = pcmi.sdsd_rounds(inst, 3, teacher=teacher, level="sequence")
    for x, y in zip(a, b):
        assert np.allclose(np.exp(x.log_pi), np.exp(y.log_pi), atol=1e-12)


@given(st.integers(2, 5), st.data())
def test_frozen_rounds_need_no_rebuild(n, data):
    """A kernel teacher cannot be rebuilt, but frozen rounds only move D: π_{k+1} = π_SD(D = π_k(·|r=1), T)."""
    lb = data.draw(log_distributions(n=n))
    r = data.draw(rewards(n))
    K = KernelTeacher(np.stack([data.draw(log_distributions(n=n)) for _ in range(n)]))
    inst = Instance(lb, r, K, pcmi.demos_from_successes(lb, r))
    rounds = pcmi.sdsd_rounds(inst, 3, teacher="frozen")
    for a, b in zip(rounds[1:-1], rounds[2:]):
        want = sdsd_optimum(inst.with_demos(pcmi.demos_from_successes(a.log_pi, r)))
        assert np.allclose(np.exp(b.log_pi), np.exp(want), atol=1e-12)
    with pytest.raises(PcmiInputError, match="cannot be rebuilt"):
        pcmi.sdsd_rounds(inst, 2, teacher="live")


@pytest.mark.parametrize("kw,word", [({"level": "Token"}, "level"), ({"level": None}, "level"),
                                     ({"teacher": "ema"}, "teacher"), ({"teacher": None}, "teacher"),
                                     ({"level": "token", "beta": 0.5}, "beta")])
def test_rounds_refuse_bad_teacher_or_level(kw, word):
    lb = np.log([0.5, 0.3, 0.2])
    t = LatentStrategyTeacher.route_copying(lb, np.arange(3), 0.1)
    inst = Instance(lb, [1, 1, 0], t, pcmi.demos_from_successes(lb, [1, 1, 0]), route=np.arange(3))
    beta = kw.pop("beta", None)
    with pytest.raises(PcmiInputError, match=word) as e:
        pcmi.sdsd_rounds(inst, 2, beta, **kw)
    assert "\n" not in str(e.value)
