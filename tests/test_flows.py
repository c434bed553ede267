"""Expected-gradient flows and on-policy fixed points (`pcmi.flows`, theory.md §9).

An on-policy fixed point of a mode is θ* with G_mode(θ*; D*, T*) = 0, where D* = π*(· | r = 1) and
T* is the schedule's teacher there (frozen: π0's; live: rebuilt from π*). The certificate is checked
from the outside: D*, T* and G are recomputed here from the returned policy. The fixed points are
then identified with the limits of the on-policy rounds of `pcmi.dynamics`:

    full α = 1, frozen   π_{k+1} = π_tok(D = π_k(·|r=1), T0)      sdsd_rounds(teacher="frozen", level="token")
    full α = 1, live     π_{k+1} = π_tok(D = π_k(·|r=1), T(π_k))  sdsd_rounds(level="token")
    sequence             π_{k+1} = π_SD(D = π_k(·|r=1), T_k)      sdsd_rounds(level="sequence")

(on a flat tree π_tok = π_SD), and the one-round closed forms are the special case of D and T held
fixed: G vanishes at π_tok (full α = 1), π_SD (sequence), Π_t E_D T(a_t|h_t, y') (full α = 0) and
at the Jensen–Shannon optimum (full 0 < α < 1, flat tree); one natural round from π0 is π_tok.
Each identity has a sabotage companion that the same check must reject.
"""
import networkx as nx
import numpy as np
import pytest
from graphworld import EdgePolicy, Task
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp

from pcmi import CopyTeacher, Instance, LatentStrategyTeacher, PcmiInputError
from pcmi.dynamics import on_policy_instance, sdsd_rounds
from pcmi.estimators import expected_gradient
from pcmi import flows as flows_mod
from pcmi.flows import FixedPointError, expected_gradient_flow, on_policy_fixed_point
from pcmi.instance import demos_from_successes
from pcmi.objectives import LossMode
from pcmi.policies import (forward_kl_token_optimum, js_optimum, sdsd_optimum, sdsd_token_optimum)
from pcmi.schedules import TeacherSchedule
from pcmi.tabular import TabularPolicy
from pcmi.graph_instance import graph_instance
from pcmi.metrics import success
from pcmi.testing import (copy_instances, extreme_instances, graph_instances, graphs, rewards,
                          route_copying_instances)

FULL, SEQ = LossMode("full", 1.0), LossMode("sequence")
TOL = 1e-10          # the solver's certificate tolerance
SAME = 1e-6          # two policies are the same fixed point: max_y |π(y) − π'(y)| ≤ SAME

few = settings(max_examples=12)
some = settings(max_examples=20)


def one_line(err) -> bool:
    return "\n" not in str(err) and len(str(err)) > 10


def probs(lp):
    return np.exp(np.asarray(lp, float))


def gap(a, b) -> float:
    """max_y |π_a(y) − π_b(y)|."""
    return float(np.max(np.abs(probs(a) - probs(b))))


# --- instances: flat and graph trees; route-copying, soft-route and copy teachers -------------------
# Masses stay moderate (every π0(y) ≥ 1e-7) and eps, lam away from the ends where the live rounds
# barely move (T ≈ π). Outside that domain ‖G‖ ≤ tol does not locate the fixed point: see
# test_the_certificate_is_not_fooled_by_a_rare_success (‖G‖ alone would certify there; step_tv does not).

MIN_MASS = 1e-7
moderate_logit = st.floats(-6.0, 0.0)


@st.composite
def moderate_log_distributions(draw, n):
    x = np.array(draw(st.lists(moderate_logit, min_size=n, max_size=n)))
    return x - logsumexp(x)


@st.composite
def route_copying_flat(draw, all_correct=False, eps=(0.02, 0.7)):
    """Disjoint strategies on a flat tree: w_z, P_z moderate, π0 = Σ_z w_z P_z."""
    sizes = draw(st.lists(st.integers(1, 3), min_size=2, max_size=4))
    route = np.repeat(np.arange(len(sizes)), sizes)
    log_P = np.full((len(sizes), len(route)), -np.inf)
    for z, m in enumerate(sizes):
        log_P[z, route == z] = draw(moderate_log_distributions(m))
    t = LatentStrategyTeacher(draw(moderate_log_distributions(len(sizes))), log_P, draw(st.floats(*eps)))
    r = draw(rewards(len(route), all_correct))
    return Instance(t.log_base, r, t, demos_from_successes(t.log_base, r), route=route)


@st.composite
def copy_flat(draw, lam=(0.3, 0.95)):
    lb = draw(moderate_log_distributions(draw(st.integers(2, 6))))
    r = draw(rewards(len(lb)))
    return Instance(lb, r, CopyTeacher(lb, draw(st.floats(*lam))), demos_from_successes(lb, r))


@st.composite
def graph_cases(draw, kinds=("route_copying", "soft_route", "copy"), eps=(0.05, 0.7), lam=(0.3, 0.95)):
    """One prompt of a generated multi-route DAG under a mild edge policy, with a teacher of `kinds`."""
    kind = draw(st.sampled_from(kinds))
    if kind == "copy":
        spec = {"kind": "copy", "lam": draw(st.floats(*lam))}
    else:
        spec = {"kind": kind, "eps": draw(st.floats(*eps))}
        if kind == "soft_route":
            spec["sharpness"] = draw(st.floats(0.0, 8.0))
    g = draw(graphs(max_depth=2))
    s, t = g.graph["prompts"][0]
    task = Task(g, s, t, nx.shortest_path_length(g, s, t) + draw(st.integers(1, 2)))
    policy = EdgePolicy(temperature=draw(st.sampled_from([1.5, 3.0])),
                        stop_pref=draw(st.one_of(st.none(), st.floats(-1.0, 1.0))))
    inst, _ = graph_instance(task, policy, spec)
    assume(np.exp(inst.log_base).min() >= MIN_MASS and success(inst.log_base, inst.reward) >= 1e-3)
    return inst


def rebuildable(inst) -> bool:
    """Live rounds rebuild exactly only route-copying (disjoint) and copy teachers."""
    return isinstance(inst.teacher, CopyTeacher) or inst.teacher.disjoint


frozen_cases = st.one_of(route_copying_flat(), copy_flat(), graph_cases())
live_cases = st.one_of(route_copying_flat(), copy_flat(), graph_cases(kinds=("route_copying", "copy")))


# --- the certificate, recomputed from the outside --------------------------------------------------

def on_policy_demos(log_pi, reward):
    """D = π(· | r = 1)."""
    lp = np.where(np.asarray(reward) == 1, log_pi, -np.inf)
    return lp - logsumexp(lp)


def live_teacher(inst, log_pi):
    """The teacher rebuilt from π (same P_z and eps, weights = π's strategy masses; copy: base π)."""
    return inst.teacher.rebuilt(log_pi)


def on_policy_residual(inst, log_pi, mode, teacher_of=lambda inst, lp: inst.teacher, policy=None) -> float:
    """‖G_mode(π; D = π(·|r=1), T = teacher_of(π))‖ for the policy with sequence law π."""
    policy = policy or TabularPolicy.from_log_probs(inst.tree, log_pi)
    return expected_gradient(policy, teacher_of(inst, log_pi), on_policy_demos(log_pi, inst.reward), mode).norm


def certified(fp, inst, mode, teacher_of) -> bool:
    """The certificate of a returned fixed point, checked here: ‖G‖ ≤ tol at the returned logits and at
    the logits rebuilt from its sequence law, with D* = π*(·|r=1) and T* = teacher_of(π*)."""
    lp = fp.policy.log_seq
    return (on_policy_residual(inst, lp, mode, teacher_of, fp.policy) <= fp.tol * (1 + 1e-6) + 1e-14
            and on_policy_residual(inst, lp, mode, teacher_of) <= 2 * fp.tol + 1e-12)


# --- the limit of the on-policy rounds ------------------------------------------------------------------

def rounds_limit(inst, teacher, level, chunk=40, max_rounds=600, step_tol=1e-13):
    """lim_k π_k of sdsd_rounds(inst, ·, teacher, level), continued chunk by chunk until a round moves
    no rollout by more than step_tol; returns (log π_limit, last step)."""
    cur, done = inst, 0
    while True:
        r = sdsd_rounds(cur, chunk, teacher=teacher, level=level)
        done += chunk
        last, step = r[-1].log_pi, gap(r[-1].log_pi, r[-2].log_pi)
        if step <= step_tol or done >= max_rounds:
            return last, step
        cur = (inst.with_demos(demos_from_successes(last, inst.reward)) if teacher == "frozen"
               else on_policy_instance(inst, last, teacher="live"))


def fixed_point_is_rounds_limit(inst, log_fp, teacher, level, limit=rounds_limit) -> bool:
    lim, step = limit(inst, teacher, level)
    assert step <= 1e-11, f"the rounds did not settle (last step {step:.3g})"
    return gap(log_fp, lim) <= SAME


def solve(inst, mode, teacher, tau=None, **kw):
    return on_policy_fixed_point(inst, mode, teacher, tau, tol=TOL, max_rounds=kw.pop("max_rounds", 1500), **kw)


# --- the certificate holds and is honest ------------------------------------------------------------------

@some
@given(frozen_cases, st.sampled_from([FULL, SEQ]))
def test_frozen_fixed_point_certificate_recomputed(inst, mode):
    fp = solve(inst, mode, "frozen")
    c = fp.certificate()
    assert c["certified"] and c["grad_norm"] <= TOL and c["teacher_gap"] == 0.0 and fp.schedule == "frozen"
    assert certified(fp, inst, mode, lambda inst, lp: inst.teacher)


@some
@given(live_cases, st.sampled_from([FULL, SEQ]))
def test_live_fixed_point_certificate_recomputed(inst, mode):
    """T* is rebuilt here from π* (rebuilt(log π*)), not read from the solver's state."""
    fp = solve(inst, mode, "live")
    assert fp.certificate()["certified"] and fp.teacher_gap <= TOL
    assert certified(fp, inst, mode, live_teacher)


@few
@given(st.one_of(route_copying_flat(), copy_flat()), st.sampled_from([0.3, 0.7, 1.0]))
def test_ema_fixed_point_is_a_live_fixed_point(inst, tau):
    """At an EMA fixed point the teacher's state is the student's own (gap ≤ tol, checked here from
    the returned state), so π* is also a fixed point of the live teacher."""
    fp = solve(inst, FULL, "ema", tau)
    sched = TeacherSchedule(inst.teacher, "live")
    mine = float(np.max(np.abs(probs(fp.state) - probs(sched.state_of(fp.log_pi)))))
    assert abs(mine - fp.teacher_gap) <= 1e-15 and mine <= TOL
    assert on_policy_residual(inst, fp.log_pi, FULL, lambda i, lp: TeacherSchedule(i.teacher, "ema", tau).teacher(fp.state),
                              fp.policy) <= TOL * (1 + 1e-6)
    assert on_policy_residual(inst, fp.log_pi, FULL, live_teacher) <= 1e-8


# --- fixed points = limits of the on-policy rounds ----------------------------------------------------------

@some
@given(frozen_cases)
def test_frozen_full_fixed_point_is_the_limit_of_frozen_token_rounds(inst):
    """A stable fixed point is the rounds' limit; one flagged unstable is left by rounds from a kick."""
    fp = solve(inst, FULL, "frozen")
    assert fp_agrees_with_rounds(inst, fp)


def kicked_demos(inst, log_pi, size=1e-4):
    """D = π(·|r=1) with log π moved by `size` along a fixed direction (the rounds' start, kicked)."""
    u = np.random.default_rng(1).standard_normal(len(log_pi))
    return demos_from_successes(log_pi + size * u, inst.reward)


def fp_agrees_with_rounds(inst, fp, teacher="frozen", level="token") -> bool:
    """Stable: fp is the limit of the rounds from π0. Unstable: the rounds started from D = π*(·|r=1)
    kicked end elsewhere (from π0 itself they may stay on it, when π0 is exactly symmetric)."""
    if fp.stable:
        return fixed_point_is_rounds_limit(inst, fp.log_pi, teacher, level)
    lim, _ = rounds_limit(inst.with_demos(kicked_demos(inst, fp.log_pi)), teacher, level)
    return gap(lim, fp.log_pi) > SAME


def _symmetric_copy(lam=0.75, asym=0.0):
    """π0 uniform on 4 rollouts, two of them correct, a copy teacher: for lam ≳ 0.6 the symmetric
    point between the two correct rollouts is an unstable fixed point of the frozen rounds."""
    x = np.array([asym, 0.0, 0.0, 0.0])
    lb, r = x - logsumexp(x), np.array([1, 0, 0, 1])
    return Instance(lb, r, CopyTeacher(lb, lam), demos_from_successes(lb, r))


def _near_symmetric_copy():
    """Two correct rollouts whose π0 differ by 1e-9 in log, a copy teacher with lam = 0.70 (the symmetric
    point between them repels): the sequence rounds sit near it, then leave it for an asymmetric point
    (found by a CI run, where the solver used to halve λ ten times on the way out and stall)."""
    x = np.array([-1e-09, -0.7804957449038064, -1e-09, -7.618488164035788e-60, -5.536709701599646, -1.759306956837916])
    lb, r = x - logsumexp(x), np.array([0, 0, 1, 1, 1, 1])
    return Instance(lb, r, CopyTeacher(lb, 0.7033301314690094), demos_from_successes(lb, r))


def test_rounds_leaving_an_unstable_point_keep_their_full_step():
    inst = _near_symmetric_copy()
    fp = solve(inst, SEQ, "frozen")
    assert fp.stable and fp_agrees_with_rounds(inst, fp, "frozen", "sequence")


def test_sabotage_step_halved_on_every_stall_is_caught(monkeypatch):
    """Halving λ whenever ‖G‖ stops falling (the rule before) stalls the escape: no fixed point in 1500 rounds."""
    monkeypatch.setattr(flows_mod, "_oscillating", lambda flips, rounds: True)
    with pytest.raises(FixedPointError):
        solve(_near_symmetric_copy(), SEQ, "frozen")


def test_an_unstable_fixed_point_is_flagged_and_can_be_left():
    inst = _symmetric_copy(asym=1e-12)
    fp = solve(inst, FULL, "frozen")
    assert not fp.stable and fp.growth > 1.05 and not fp.certificate()["stable"]
    assert fp_agrees_with_rounds(inst, fp)
    left = solve(inst, FULL, "frozen", leave_unstable=True)
    assert left.stable and len(left.passed_unstable) == 1 and gap(left.passed_unstable[0], fp.log_pi) <= SAME
    assert fixed_point_is_rounds_limit(inst, left.log_pi, "frozen", "token")  # the 1e-12 asymmetry grows
    assert probs(left.log_pi)[0] > 0.7                                          # the collapse onto y0


def test_a_stable_fixed_point_is_flagged_stable():
    fp = solve(_symmetric_copy(lam=0.5, asym=1e-12), FULL, "frozen")
    assert fp.stable and 0 < fp.growth < 1 and not fp.passed_unstable


def _live_collapse():
    lb = np.log([0.5, 0.3, 0.2])
    t = LatentStrategyTeacher.route_copying(lb, np.arange(3), 0.5)
    return Instance(lb, [1, 1, 1], t, lb, route=np.arange(3))


def test_a_collapse_vertex_is_stable():
    """The live rounds' collapse vertex still drifts in logit space; the kick's divergence from the
    unkicked trajectory (not its distance to the point) says it attracts."""
    fp = on_policy_fixed_point(_live_collapse(), FULL, "live", tol=1e-6, max_rounds=2000)  # kick measurable
    assert probs(fp.log_pi)[0] >= 1 - 1e-5 and 0 < fp.growth and fp.stable


def test_sabotage_growth_measured_against_the_point_is_caught(monkeypatch):
    """Growth as the kicked trajectory's distance to the (drifting) point itself: the vertex looks unstable."""
    import pcmi.flows as flows_mod
    from pcmi.distributions import total_variation

    def against_the_point(inst, policy, state, sched, mode, lam, reached_par, demos, step_tv):
        u = np.random.default_rng(0).standard_normal(policy.theta.shape)
        u = np.where(np.isfinite(policy.log_prefix[reached_par]) & np.isfinite(policy.theta), u, 0.0)
        u[0] = 0.0
        pol, st = policy.with_theta(policy.theta + flows_mod.KICK * u), state
        d0 = total_variation(policy.log_seq, pol.log_seq)
        for _ in range(flows_mod.GROWTH_ROUNDS):
            rep = flows_mod.on_policy_step(inst, pol, sched, st, mode, "", demos)
            pol = pol.with_theta(pol.theta - flows_mod._natural_move(pol, rep, mode, lam, reached_par))
            st = sched.update(st, pol.log_seq)
        return (total_variation(policy.log_seq, pol.log_seq) / d0) ** (1 / flows_mod.GROWTH_ROUNDS), pol, st
    monkeypatch.setattr(flows_mod, "_growth", against_the_point)
    assert not on_policy_fixed_point(_live_collapse(), FULL, "live", tol=1e-6, max_rounds=2000).stable


def test_sabotage_no_stability_check_is_caught(monkeypatch):
    """A solver that calls every certified point stable returns the symmetric point as the rounds'
    limit; the rounds from π0 leave it."""
    import pcmi.flows as flows_mod
    monkeypatch.setattr(flows_mod, "GROWTH_MARGIN", np.inf)
    inst = _symmetric_copy(asym=1e-12)
    assert not fp_agrees_with_rounds(inst, solve(inst, FULL, "frozen"))


@few
@given(st.one_of(route_copying_flat(), copy_flat()))
def test_on_a_flat_tree_the_frozen_full_fixed_point_is_the_limit_of_frozen_sequence_rounds(inst):
    fp = solve(inst, FULL, "frozen")
    assert fp_agrees_with_rounds(inst, fp, "frozen", "sequence")


@some
@given(live_cases)
def test_live_full_fixed_point_is_the_limit_of_live_token_rounds(inst):
    fp = solve(inst, FULL, "live")
    assert fp_agrees_with_rounds(inst, fp, "live", "token")


@some
@given(st.one_of(frozen_cases.map(lambda i: (i, "frozen")), live_cases.map(lambda i: (i, "live"))))
def test_sequence_fixed_point_is_the_limit_of_sequence_rounds(case):
    inst, teacher = case
    fp = solve(inst, SEQ, teacher)
    assert fp_agrees_with_rounds(inst, fp, teacher, "sequence")


@few
@given(route_copying_flat(all_correct=True))
def test_p7_live_fixed_point_puts_all_strategy_mass_on_the_unique_heaviest_strategy(inst):
    """Route-copying, every rollout correct, one heaviest strategy: the live fixed point is the
    collapse onto it (strategy mass ≥ 1 − 1e-6), with π0's ratios inside it."""
    w = np.sort(np.exp(inst.teacher.log_w))[::-1]
    assume(w[0] >= 1.2 * w[1])
    top = int(np.argmax(inst.teacher.log_w))
    fp = solve(inst, FULL, "live")
    on = inst.route == top
    assert probs(fp.log_pi)[on].sum() >= 1 - 1e-6
    inside = fp.log_pi[on] - inst.log_base[on]
    assert np.ptp(inside) <= 1e-9


def test_sabotage_p7_the_frozen_fixed_point_keeps_the_other_strategies():
    """The collapse check is not vacuous: with π0's teacher held fixed the fixed point keeps mass on
    every strategy (log m_z = c + log w_z + m_z·log(1 + (1 − eps)/(eps·w_z)), no vertex)."""
    lb = np.log([0.5, 0.3, 0.2])
    t = LatentStrategyTeacher.route_copying(lb, np.arange(3), 0.3)
    inst = Instance(lb, [1, 1, 1], t, lb, route=np.arange(3))
    fp = solve(inst, FULL, "frozen")
    m = probs(fp.log_pi)
    assert m[0] < 0.99 and m.min() > 0.01
    lhs = np.log(m) - np.log(m[0])
    rhs = (np.log(probs(lb)) + m * np.log1p(0.7 / (0.3 * probs(lb))))
    assert np.allclose(lhs, rhs - rhs[0], atol=1e-8)


# --- errors ---------------------------------------------------------------------------------------------------

@few
@given(frozen_cases, st.sampled_from(["frozen", "live"]))
def test_too_few_rounds_raise_a_one_line_fixed_point_error(inst, teacher):
    """Where the rounds still move after round 1, one round does not certify a fixed point:
    FixedPointError (a PcmiInputError) in one line, naming the residual."""
    assume(teacher == "frozen" or rebuildable(inst))
    r = sdsd_rounds(inst, 2, teacher=teacher, level="token")
    assume(gap(r[1].log_pi, r[0].log_pi) > 1e-3 and gap(r[2].log_pi, r[1].log_pi) > 1e-3)
    with pytest.raises(FixedPointError) as e:
        on_policy_fixed_point(inst, FULL, teacher, tol=TOL, max_rounds=1)
    assert isinstance(e.value, PcmiInputError) and one_line(e.value)
    assert "gradient norm" in str(e.value) and "round" in str(e.value)


def test_a_fixed_point_already_at_pi0_takes_no_round():
    """A copy teacher with lam = 0 is π0 itself: G(π0) = 0 for every D, so round 0 is certified."""
    lb = np.log([0.5, 0.3, 0.2])
    inst = Instance(lb, [1, 0, 1], CopyTeacher(lb, 0.0), demos_from_successes(lb, [1, 0, 1]))
    for mode in (FULL, SEQ, LossMode("full", 0.0), LossMode("full", 0.5)):
        fp = on_policy_fixed_point(inst, mode, "frozen", tol=TOL, max_rounds=1)
        assert fp.rounds == 0 and gap(fp.log_pi, lb) == 0


def test_the_solver_reaches_the_live_collapse_that_the_rounds_reach():
    """π0 = (0.5, 0.3, 0.2), every rollout correct, one rollout per strategy, eps = 0.5: the live
    rounds collapse onto rollout 0 at rate eps per round. ‖G‖ must rise before it falls on the way,
    so a step size that only shrinks while ‖G‖ grows stalls short of the vertex (an earlier solver did)."""
    lb = np.log([0.5, 0.3, 0.2])
    t = LatentStrategyTeacher.route_copying(lb, np.arange(3), 0.5)
    inst = Instance(lb, [1, 1, 1], t, lb, route=np.arange(3))
    fp = solve(inst, FULL, "live", max_rounds=2000)
    assert certified(fp, inst, FULL, live_teacher)
    assert probs(fp.log_pi)[0] >= 1 - 1e-6
    assert fixed_point_is_rounds_limit(inst, fp.log_pi, "live", "token")


def rare_success_instance():
    lb = np.log([1e-12, 1 - 1e-12])
    return Instance(lb, [1, 0], CopyTeacher(lb, 0.5), demos_from_successes(lb, [1, 0]))


def test_the_natural_residual_flags_a_point_stationary_only_by_its_small_mass():
    """At π0 = (1e-12, 1 − 1e-12) with D = δ_0 and T = CopyTeacher(π0, 1/2), ‖G‖ ≈ 4e-11 ≤ tol, but the
    natural step u_a = log(p_a/q_a) − KL(p ‖ q), q = T(·|y'=0), is ≈ −27.6 on rollout 0: natural_residual
    = max_a |u_a| (computed here in closed form), and π0 is not certified (the rounds move on)."""
    from pcmi.flows import natural_residual, on_policy_step, schedule_of
    inst = rare_success_instance()
    pol = TabularPolicy.from_log_probs(inst.tree, inst.log_base)
    sched = schedule_of(inst, "frozen")
    rep = on_policy_step(inst, pol, sched, sched.state0, FULL)
    p = np.array([1e-12, 1 - 1e-12])
    q = 0.5 * np.array([1.0, 0.0]) + 0.5 * p
    u = np.log(p / q) - np.sum(p * np.log(p / q))
    assert rep.norm <= TOL
    assert abs(natural_residual(pol, rep) - np.max(np.abs(u))) <= 1e-9 * np.max(np.abs(u)) and np.max(np.abs(u)) > 20
    fp = solve(inst, FULL, "frozen")
    c = fp.certificate()
    assert c["certified"] and fp.rounds > 0 and c["step_tv"] <= TOL


def test_the_certificate_is_not_fooled_by_a_rare_success():
    """π0 = (1e-12, 1 − 1e-12), only rollout 0 correct, copy teacher lam = 0.5, frozen: ‖G(π0)‖ = 4e-11 ≤ tol,
    but one natural round moves π0 to (0.5, 0.5) (step_tv 0.5), so π0 is not certified and the rounds go on."""
    inst = rare_success_instance()
    fp = solve(inst, FULL, "frozen")
    assert fixed_point_is_rounds_limit(inst, fp.log_pi, "frozen", "token")


@pytest.mark.parametrize("kw,word", [({"tol": 0}, "tol"), ({"tol": -1e-3}, "tol"), ({"tol": float("nan")}, "tol"),
                                     ({"max_rounds": 0}, "max_rounds"), ({"max_rounds": 2.5}, "max_rounds"),
                                     ({"max_rounds": True}, "max_rounds")])
def test_fixed_point_refuses_bad_controls(kw, word):
    lb = np.log([0.5, 0.3, 0.2])
    inst = Instance(lb, [1, 1, 0], CopyTeacher(lb, 0.5), demos_from_successes(lb, [1, 1, 0]))
    with pytest.raises(PcmiInputError, match=word) as e:
        on_policy_fixed_point(inst, FULL, "frozen", **kw)
    assert one_line(e.value)


# --- one-round closed forms: D and the teacher held fixed ----------------------------------------------------

def gradient_at(inst, log_pi, mode):
    """‖G_mode(π; D, T)‖ with the instance's own D and teacher held fixed."""
    return expected_gradient(TabularPolicy.from_log_probs(inst.tree, log_pi), inst.teacher, inst.log_demos, mode).norm


@some
@given(frozen_cases)
def test_the_one_round_closed_forms_are_stationary_for_their_modes(inst):
    assert gradient_at(inst, sdsd_token_optimum(inst), FULL) <= 1e-9
    assert gradient_at(inst, sdsd_optimum(inst), SEQ) <= 1e-9
    assert gradient_at(inst, forward_kl_token_optimum(inst), LossMode("full", 0.0)) <= 1e-9


@few
@given(st.one_of(route_copying_flat(), copy_flat()), st.sampled_from([0.2, 0.5, 0.9]))
def test_the_js_optimum_is_stationary_for_full_alpha_on_a_flat_tree(inst, alpha):
    assert gradient_at(inst, js_optimum(inst, alpha).log_pi, LossMode("full", alpha)) <= 1e-9


@some
@given(graph_cases())
def test_sabotage_token_and_sequence_level_closed_forms_swapped(inst):
    """Where π_tok ≠ π_SD (Z(h·a) varies with a), each is not stationary for the other's mode."""
    tok, seq = sdsd_token_optimum(inst), sdsd_optimum(inst)
    assume(gap(tok, seq) > 1e-3)
    assert gradient_at(inst, seq, FULL) > 1e-6 and gradient_at(inst, tok, SEQ) > 1e-6


def natural_round(inst, lam=1.0, use=lambda rep: rep.direction):
    """θ_1 = θ_0 − λ·(E_D v(h)/p) at every prefix π0 reaches (GradientReport.direction), D and T fixed."""
    pol = TabularPolicy.from_log_probs(inst.tree, inst.log_base)
    rep = expected_gradient(pol, inst.teacher, inst.log_demos, FULL)
    reached = np.isfinite(pol.log_prefix[np.r_[0, inst.tree.parent[1:]]])
    return pol.with_theta(pol.theta - lam * np.where(reached, use(rep), 0.0)).log_seq


@some
@given(frozen_cases)
def test_one_natural_round_of_full_reverse_kl_is_the_token_optimum(inst):
    """softmax(θ_h − E_D(log p − log q − KL)) = softmax(E_D log q(·|h, y')) = π_tok(·|h)."""
    assert gap(natural_round(inst), sdsd_token_optimum(inst)) <= 1e-12


@some
@given(frozen_cases)
def test_sabotage_a_euclidean_or_half_round_is_not_the_token_optimum(inst):
    """θ − λ·direction with λ = 1/2, or θ − G (the Euclidean gradient, scaled by μ(h)·p), is not π_tok."""
    tok = sdsd_token_optimum(inst)
    assume(gap(tok, inst.log_base) > 1e-2)
    assert gap(natural_round(inst, 0.5), tok) > 1e-6
    assert gap(natural_round(inst, use=lambda rep: rep.grad), tok) > 1e-6


# --- sabotage companions of the fixed-point and rounds-limit checks --------------------------------------------

@some
@given(frozen_cases)
def test_sabotage_a_fixed_point_that_ignores_the_on_policy_demonstrations(inst):
    """π_tok(D0): D held at π0(·|r=1) (one round, never updated). It is stationary for D0 but the
    on-policy certificate (D = π(·|r=1)) rejects it whenever D moves; the rounds limit passes."""
    stale = sdsd_token_optimum(inst)
    lim, step = rounds_limit(inst, "frozen", "token")
    assert on_policy_residual(inst, lim, FULL) <= 1e-8
    assume(gap(on_policy_demos(stale, inst.reward), inst.log_demos) > 1e-3)
    assert on_policy_residual(inst, stale, FULL) > 1e-6


class StaleSchedule(TeacherSchedule):
    """A "live" schedule that never updates its teacher and reports a zero teacher gap."""

    def update(self, state, log_pi):
        return state

    def gap(self, state, log_pi):
        return 0.0


def frozen_limit(inst, teacher, level, **kw):
    """Rounds whose teacher is never rebuilt, whatever was asked."""
    return rounds_limit(inst, "frozen", level, **kw)


def stale_demo_limit(inst, teacher, level, **kw):
    """Rounds whose demonstrations are never updated: every round is π_tok(D0)."""
    return sdsd_token_optimum(inst), 0.0


@few
@given(st.one_of(route_copying_flat(), copy_flat()))
def test_sabotage_a_teacher_that_never_updates_fails_the_live_checks(inst):
    """The stale schedule converges to the frozen fixed point and certifies itself; the live
    certificate recomputed here (T = rebuilt(π*)) and the live rounds limit reject it."""
    lim, _ = rounds_limit(inst, "live", "token")
    frozen, _ = rounds_limit(inst, "frozen", "token")
    assume(gap(lim, frozen) > 1e-3)
    fp = solve(inst, FULL, StaleSchedule(inst.teacher, "live"))
    assert fp.certificate()["certified"]                          # it certifies itself ...
    assert not certified(fp, inst, FULL, live_teacher)             # ... but not against T = rebuilt(π*)
    assert not fixed_point_is_rounds_limit(inst, fp.log_pi, "live", "token")
    assert certified(fp, inst, FULL, lambda i, lp: i.teacher)       # it is the frozen fixed point


@few
@given(live_cases)
def test_sabotage_wrong_rounds_do_not_reproduce_the_live_fixed_point(inst):
    """The rounds-limit check rejects rounds that keep π0's teacher or π0's demonstrations."""
    lim, _ = rounds_limit(inst, "live", "token")
    assert on_policy_residual(inst, lim, FULL, live_teacher) <= 1e-8
    if gap(lim, rounds_limit(inst, "frozen", "token")[0]) > 1e-3:
        assert not fixed_point_is_rounds_limit(inst, lim, "live", "token", limit=frozen_limit)
    if gap(lim, sdsd_token_optimum(inst)) > 1e-3:
        assert not fixed_point_is_rounds_limit(inst, lim, "live", "token", limit=stale_demo_limit)


# --- expected-gradient flows --------------------------------------------------------------------------------

flow_modes = st.sampled_from([FULL, SEQ, LossMode("full", 0.0), LossMode("full", 0.5), LossMode("sampled"),
                              LossMode("sampled-baseline"), LossMode("topk", 1.0, 2)])


@st.composite
def flow_cases(draw):
    inst = draw(st.one_of(frozen_cases, route_copying_flat(all_correct=True)))
    kinds = ["frozen", "live", "ema"] if rebuildable(inst) else ["frozen", "ema"]
    kind = draw(st.sampled_from(kinds))
    tau = draw(st.sampled_from([0.05, 0.5, 1.0])) if kind == "ema" else None
    return inst, kind, tau


@some
@given(flow_cases(), flow_modes, st.sampled_from([0.1, 1.0, 5.0]), st.integers(0, 12))
def test_flow_records_every_step_with_quantities_in_range(case, mode, eta, n):
    inst, kind, tau = case
    flow = expected_gradient_flow(inst, mode, kind, tau, eta=eta, n_steps=n)
    assert len(flow.records) == n + 1 and [r.step for r in flow.records] == list(range(n + 1))
    assert np.array_equal(flow.records[-1].log_pi, flow.policy.log_seq)
    n_routes = len(np.unique(inst.route[inst.reward == 1])) if inst.route is not None else 1
    for r in flow.records:
        assert not np.isnan(r.log_pi).any() and abs(logsumexp(r.log_pi)) < 1e-9
        assert 0 <= r.success <= 1 and np.isfinite(r.grad_norm) and r.grad_norm >= 0
        assert np.isfinite(r.loss) and r.loss >= -1e-12
        if inst.route is not None:
            assert -1e-12 <= r.strategy_mass_entropy <= np.log(n_routes) + 1e-9
        assert r.ood_success is None


@some
@given(flow_cases(), st.sampled_from([FULL, SEQ, LossMode("full", 0.5)]), st.integers(1, 4))
def test_a_short_flow_with_a_tiny_step_moves_by_eta_n_g(case, mode, n):
    """θ_n − θ_0 = −η·n·G(θ_0) + O((η n)²): the first-order term, to 1e-3 of its size."""
    inst, kind, tau = case
    pol = TabularPolicy.from_log_probs(inst.tree, inst.log_base)
    sched = TeacherSchedule(inst.teacher, kind, tau)
    g0 = expected_gradient(pol, sched.teacher(sched.state0), inst.log_demos, mode).grad
    assume(np.linalg.norm(g0) > 1e-4)
    eta = 1e-6
    flow = expected_gradient_flow(inst, mode, kind, tau, eta=eta, n_steps=n)
    fin = np.isfinite(pol.theta)
    moved = flow.policy.theta[fin] - pol.theta[fin]
    assert np.linalg.norm(moved + eta * n * g0[fin]) <= 1e-3 * eta * n * np.linalg.norm(g0)


@some
@given(flow_cases(), st.integers(0, 6))
def test_the_flow_teacher_follows_its_schedule(case, n):
    """After n steps the teacher's state is frozen: none; live: m(π_n); ema: m_k = (1 − τ)·m_{k−1} + τ·m(π_k)
    over the policies after each step (records 1..n), m_0 = m(π0); in probability space."""
    inst, kind, tau = case
    flow = expected_gradient_flow(inst, FULL, kind, tau, eta=1.0, n_steps=n)
    if kind == "frozen":
        assert flow.state is None
        return
    m_of = TeacherSchedule(inst.teacher, "live").state_of
    m = probs(m_of(inst.log_base))
    for r in flow.records[1:]:
        m = probs(m_of(r.log_pi)) if kind == "live" else (1 - tau) * m + tau * probs(m_of(r.log_pi))
    assert np.allclose(probs(flow.state), m, atol=1e-12)


@settings(max_examples=6)
@given(st.one_of(route_copying_flat(), copy_flat()))
def test_the_frozen_full_flow_converges_toward_the_frozen_fixed_point(inst):
    """θ ← θ − η·G(θ; π(·|r=1), T0), η = 1.5 (the logit Hessian of a flat KL has eigenvalues ≤ 1, so
    η < 2 is stable), 600 steps: at least half the distance to π* is closed and the flow is still
    closing it in the second half."""
    fp = solve(inst, FULL, "frozen")
    start = gap(inst.log_base, fp.log_pi)
    assume(start > 1e-3)
    flow = expected_gradient_flow(inst, FULL, "frozen", eta=1.5, n_steps=600)
    d = [gap(r.log_pi, fp.log_pi) for r in flow.records]
    assert d[-1] <= 0.5 * start and (d[-1] < d[300] or d[-1] <= 1e-9)
    assert flow.records[-1].grad_norm <= 0.5 * max(r.grad_norm for r in flow.records)


@some
@given(flow_cases(), st.sampled_from([0.3, 3.0]))
def test_sampled_flows_equal_the_full_reverse_kl_flow(case, eta):
    """E g is the same for sampled, sampled-baseline and full α = 1: the flows coincide."""
    inst, kind, tau = case
    ref = expected_gradient_flow(inst, FULL, kind, tau, eta=eta, n_steps=6)
    for m in ("sampled", "sampled-baseline"):
        f = expected_gradient_flow(inst, LossMode(m), kind, tau, eta=eta, n_steps=6)
        assert np.allclose(f.policy.theta, ref.policy.theta, atol=1e-12, rtol=0, equal_nan=False)
        assert np.allclose(f.series("grad_norm"), ref.series("grad_norm"), atol=1e-13)


@some
@given(st.one_of(extreme_instances(kinds=("latent", "route_copying", "copy")), graph_instances().map(lambda p: p[0]),
                 route_copying_instances(all_correct=False), copy_instances()),
       st.sampled_from(["frozen", "live", "ema"]), flow_modes)
def test_flows_and_fixed_points_on_extreme_instances_are_finite_or_one_line_errors(inst, kind, mode):
    """Zero-probability rollouts, 1e-300 masses, eps and lam in {0, 1}, one or all correct: a flow is
    finite everywhere and a fixed point is certified, or either refuses in one line (never NaN)."""
    tau = 0.5 if kind == "ema" else None
    try:
        flow = expected_gradient_flow(inst, mode, kind, tau, eta=1.0, n_steps=5)
    except PcmiInputError as e:
        assert one_line(e)
    else:
        for r in flow.records:
            assert not np.isnan(r.log_pi).any() and np.isfinite(r.grad_norm) and np.isfinite(r.loss)
            assert 0 <= r.success <= 1
    try:
        fp = on_policy_fixed_point(inst, mode, kind, tau, tol=TOL, max_rounds=200)
    except PcmiInputError as e:
        assert one_line(e)
    else:
        assert fp.certificate()["certified"] and not np.isnan(fp.log_pi).any()


def test_the_flow_refuses_bad_controls_in_one_line():
    lb = np.log([0.5, 0.3, 0.2])
    inst = Instance(lb, [1, 1, 0], CopyTeacher(lb, 0.5), demos_from_successes(lb, [1, 1, 0]))
    for kw, word in (({"eta": 0}, "eta"), ({"eta": float("inf")}, "eta"), ({"n_steps": -1}, "n_steps"),
                     ({"n_steps": 1.5}, "n_steps")):
        with pytest.raises(PcmiInputError, match=word) as e:
            expected_gradient_flow(inst, FULL, **kw)
        assert one_line(e.value)


@settings(max_examples=15, deadline=None)
@given(route_copying_instances(all_correct=False))
def test_a_fixed_demonstration_law_gives_its_one_round_optimum(inst):
    """demos = a law that does not move with π (uniform over the correct rollouts, the inverse_prob proxy
    at γ = 1): the frozen full α = 1 fixed point is π* ∝ exp(E_D log T) with that D, computed here from the
    teacher's rows; demos = π(·|r = 1) written out is the default fixed point."""
    from pcmi.instance import uniform_correct_demos
    from pcmi.teachers import leaf_rows
    log_U = uniform_correct_demos(inst.reward)
    log_U = np.where(np.isfinite(inst.log_base), log_U, -np.inf)
    log_U = log_U - logsumexp(log_U)
    fp = on_policy_fixed_point(inst, demos=lambda log_pi, r: log_U)
    rows = leaf_rows(inst.teacher, inst.n)
    U = np.exp(log_U)
    with np.errstate(invalid="ignore"):
        e = np.where(U[:, None] > 0, np.where(np.isneginf(rows), -np.inf, U[:, None] * rows), 0.0).sum(axis=0)
    want = np.exp(e - logsumexp(e))
    assert np.max(np.abs(np.exp(fp.log_pi) - want)) < 1e-8
    def successes_by_hand(log_pi, r):  # π(·|r = 1), written here
        lp = np.where(np.asarray(r) == 1, log_pi, -np.inf)
        return lp - logsumexp(lp)
    default = on_policy_fixed_point(inst)
    written = on_policy_fixed_point(inst, demos=successes_by_hand)
    assert np.max(np.abs(np.exp(default.log_pi) - np.exp(written.log_pi))) < 1e-12


def test_sabotage_demos_hook_ignored_is_caught():
    """A fixed point that ignored `demos` would return the on-policy collapse, not the uniform-D optimum."""
    from pcmi.instance import uniform_correct_demos
    base = np.log([0.5, 0.3, 0.2])
    inst = Instance(base, [1, 1, 1], LatentStrategyTeacher.route_copying(base, [0, 1, 2], 0.1),
                    demos_from_successes(base, np.array([1, 1, 1])), route=np.array([0, 1, 2]))
    log_U = uniform_correct_demos(inst.reward)
    with_hook = on_policy_fixed_point(inst, demos=lambda log_pi, r: log_U)
    without = on_policy_fixed_point(inst)
    assert np.max(np.abs(np.exp(with_hook.log_pi) - np.exp(without.log_pi))) > 0.1
