"""Teacher schedules (`pcmi.schedules`, theory.md §9) against teachers written out by hand.

A schedule's state is what "the teacher rebuilt from π" reads: the strategy masses
m_z(π) = Σ_y π(y) q0(z | y) for latent-strategy teachers (route-copying: m_z = π(route z)) and π
itself for copy teachers. With that state m:

    route-copying   T_m(y | y') = (1 − eps)·1[z(y) = z(y')]·P_{z(y')}(y) + eps·m_{z(y)}·P_{z(y)}(y)
    latent          T_m(y | y') = (1 − eps)·Σ_z m_z P_z(y') P_z(y) / π_m(y') + eps·π_m(y), π_m = Σ_z m_z P_z
    copy            T_m(y | y') = lam·1[y = y'] + (1 − lam)·m(y)

    frozen  the base teacher throughout; live  m = m(π_k); ema(τ)  m_k = (1 − τ)·m_{k−1} + τ·m(π_k)

τ is the weight of the STUDENT (τ = 1 is live; a small τ stays near frozen). The inverted EMA
(the teacher keeps τ, the student gets 1 − τ) must fail the direction checks below.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pcmi import CopyTeacher, KernelTeacher, LatentStrategyTeacher, PcmiInputError
from pcmi.distributions import safe_log
from pcmi.flows import expected_gradient_flow, on_policy_fixed_point
from pcmi.instance import Instance, demos_from_successes
from pcmi.schedules import TeacherSchedule
from pcmi.teachers import leaf_rows
from pcmi.testing import (copy_instances, extreme_log_distributions, graph_instances, latent_instances,
                          log_distributions, route_copying_instances)

taus = st.one_of(st.sampled_from([1e-9, 1e-3, 0.05, 0.5, 1.0]), st.floats(1e-6, 1.0))


def one_line(err) -> bool:
    return "\n" not in str(err) and len(str(err)) > 10


# --- the state m(π) and the teacher of a state, written out in probability space ---------------

def route_masses(pi, route, labels):
    """m_z(π) = Σ_{y: route(y) = z} π(y) for each strategy label z."""
    return np.array([pi[route == z].sum() for z in labels])


def latent_masses(pi, w, P):
    """m_z(π) = Σ_y π(y)·q0(z | y), q0(z | y) = w_z P_z(y) / π0(y) (a y with π0(y) = 0 tells nothing: w)."""
    base = w @ P
    with np.errstate(invalid="ignore", divide="ignore"):
        q0 = np.where(base > 0, w[:, None] * P / base, w[:, None])
    return q0 @ pi


def state_of(t, pi):
    """The state of the teacher rebuilt from π: strategy masses (latent) or π (copy)."""
    if isinstance(t, CopyTeacher):
        return pi
    return latent_masses(pi, np.exp(t.log_w), np.exp(t.log_P))


def latent_rows(w_state, P, eps):
    """T_m(y | y') for every y' (rows) of a latent teacher with weights m and laws P (disjoint or not)."""
    base = w_state @ P
    joint = (w_state[:, None, None] * P[:, :, None] * P[:, None, :]).sum(axis=0)    # Σ_z m_z P_z(y') P_z(y)
    with np.errstate(invalid="ignore", divide="ignore"):
        post = np.where(base[:, None] > 0, joint / base[:, None], np.nan)            # undefined for π_m(y') = 0
    return (1 - eps) * post + eps * base[None, :]


def route_copying_rows(m, route, labels, log_base, eps):
    """T_m(y | y') = (1 − eps)·1[z(y) = z(y')]·P_{z(y')}(y) + eps·m_{z(y)}·P_{z(y)}(y), P_z = π0(· | z)."""
    pi0 = np.exp(log_base)
    w = route_masses(pi0, route, labels)
    idx = np.searchsorted(labels, route)
    P_own = pi0 / w[idx]                                                             # P_{z(y)}(y)
    same = route[:, None] == route[None, :]
    return (1 - eps) * same * P_own[None, :] + eps * (m[idx] * P_own)[None, :]


def copy_rows(m, lam):
    return lam * np.eye(len(m)) + (1 - lam) * m[None, :]


def rows_of(teacher, n):
    return np.exp(leaf_rows(teacher, n))


def ema_state(states, tau):
    """m_k = (1 − τ)·m_{k−1} + τ·m(π_k) from m_0 and the students' states, in probability."""
    m = states[0]
    for s in states[1:]:
        m = (1 - tau) * m + tau * s
    return m


def inverted_ema_update(sched):
    """The EMA the wrong way round: the teacher keeps τ and the student gets 1 − τ."""
    def update(state, log_pi):
        new = np.exp(sched.state_of(log_pi))
        return safe_log(sched.tau * np.exp(state) + (1 - sched.tau) * new)
    return update


def ema_direction_error(update, sched, log_pi) -> float:
    """max |m_1 − ((1 − τ)·m_0 + τ·m(π))| after one update from π0's state: 0 for an EMA whose τ
    is the weight of the student."""
    m0, student = np.exp(sched.state0), state_of(sched.base, np.exp(log_pi))
    return float(np.max(np.abs(np.exp(update(sched.state0, log_pi)) - ((1 - sched.tau) * m0 + sched.tau * student))))


def distance_from_frozen(update, sched, log_pi) -> float:
    """max_{y, y'} |T_1(y | y') − T_0(y | y')| after one update (prob. space): ≤ τ for an EMA teacher,
    since T is affine in the state with coefficients in [0, 1] and |m(π) − m0| ≤ 1."""
    t1 = sched.teacher(update(sched.state0, log_pi))
    return float(np.nanmax(np.abs(rows_of(t1, sched.base.n) - rows_of(sched.base, sched.base.n))))


# --- instances ----------------------------------------------------------------------------------

@st.composite
def with_policy(draw, instances, extreme: bool = True):
    """An instance and a student policy π over its rollouts (exact zeros and 1e-300 masses allowed)."""
    inst = draw(instances)
    n = inst.n
    lp = draw(extreme_log_distributions(n)) if extreme and draw(st.booleans()) else draw(log_distributions(n=n))
    return inst, lp


rebuildable = st.one_of(route_copying_instances(all_correct=False), copy_instances(), latent_instances())
affine = st.one_of(route_copying_instances(all_correct=False), copy_instances())  # T affine in the state


# --- frozen ---------------------------------------------------------------------------------------

@given(with_policy(rebuildable))
def test_frozen_schedule_is_the_base_teacher_throughout(pair):
    """frozen: T_k = the base teacher whatever the student does; the state never moves; gap 0."""
    inst, lp = pair
    s = TeacherSchedule(inst.teacher, "frozen")
    assert s.state0 is None and s.label == "frozen"
    state = s.update(s.state0, lp)
    assert state is None and s.teacher(state) is inst.teacher and s.gap(state, lp) == 0.0


def test_frozen_schedule_takes_any_teacher():
    T = KernelTeacher(safe_log([[0.5, 0.5], [0.1, 0.9]]))
    s = TeacherSchedule(T, "frozen")
    assert s.teacher(s.update(s.state0, np.log([0.3, 0.7]))) is T


# --- live -----------------------------------------------------------------------------------------

@given(with_policy(route_copying_instances(all_correct=False)))
def test_live_route_copying_teacher_is_rebuilt_from_the_student(pair):
    """live, route-copying: state = π's route masses; T = T_m (formula above) = teacher.rebuilt(log π)."""
    inst, lp = pair
    s = TeacherSchedule(inst.teacher, "live")
    labels = np.unique(inst.route)
    state = s.update(s.state0, lp)
    m = route_masses(np.exp(lp), inst.route, labels)
    assert np.allclose(np.exp(state), m, atol=1e-12)
    got = rows_of(s.teacher(state), inst.n)
    assert np.allclose(got, rows_of(inst.teacher.rebuilt(lp), inst.n), atol=1e-12)
    alive = m[np.searchsorted(labels, inst.route)] > 0                      # demonstrations π can show
    want = route_copying_rows(m, inst.route, labels, inst.log_base, inst.teacher.eps)
    assert np.allclose(got[alive], want[alive], atol=1e-12)
    assert s.gap(state, lp) == 0.0


@given(with_policy(latent_instances(), extreme=False))
def test_live_latent_teacher_reweights_the_strategies_by_the_students_posterior_masses(pair):
    """live, overlapping strategies: m_z = Σ_y π(y) q0(z | y), same P_z and eps: = rebuilt(log π)."""
    inst, lp = pair
    t = inst.teacher
    s = TeacherSchedule(t, "live")
    state = s.update(s.state0, lp)
    m = latent_masses(np.exp(lp), np.exp(t.log_w), np.exp(t.log_P))
    assert np.allclose(np.exp(state), m, atol=1e-12)
    got = rows_of(s.teacher(state), inst.n)
    assert np.allclose(got, rows_of(t.rebuilt(lp), inst.n), atol=1e-12)
    want = latent_rows(m, np.exp(t.log_P), t.eps)
    ok = ~np.isnan(want)
    assert np.allclose(got[ok], want[ok], atol=1e-10)


@given(with_policy(copy_instances()))
def test_live_copy_teacher_copies_with_the_student_as_base(pair):
    """live, copy: T(y | y') = lam·1[y = y'] + (1 − lam)·π(y) = CopyTeacher(π, lam)."""
    inst, lp = pair
    s = TeacherSchedule(inst.teacher, "live")
    t = s.teacher(s.update(s.state0, lp))
    assert isinstance(t, CopyTeacher) and t.lam == inst.teacher.lam
    assert np.allclose(rows_of(t, inst.n), copy_rows(np.exp(lp), inst.teacher.lam), atol=1e-12)
    assert np.allclose(rows_of(t, inst.n), rows_of(CopyTeacher(lp, inst.teacher.lam), inst.n), atol=1e-12)


@settings(max_examples=15)
@given(graph_instances(teacher={"kind": "route_copying", "eps": 0.2}), st.data())
def test_live_teacher_on_a_graph_equals_the_rebuilt_teacher(pair, data):
    """On a graph prompt (route labels = concept ids, −1 for none): the live teacher of π = rebuilt(π)."""
    inst, _ = pair
    lp = data.draw(log_distributions(n=inst.n))
    s = TeacherSchedule(inst.teacher, "live")
    labels = np.unique(inst.route)
    got = rows_of(s.teacher(s.update(s.state0, lp)), inst.n)
    assert np.allclose(got, rows_of(inst.teacher.rebuilt(lp), inst.n), atol=1e-12)
    m = route_masses(np.exp(lp), inst.route, labels)
    assert np.allclose(got, route_copying_rows(m, inst.route, labels, inst.log_base, 0.2), atol=1e-12)


@given(log_distributions(max_n=6), st.floats(0.05, 0.95), st.data())
def test_copy_and_singleton_route_copying_schedules_agree(lb, lam, data):
    """On a flat tree, CopyTeacher(π0, lam) is route-copying with one rollout per strategy and
    eps = 1 − lam; both rebuild to the same teacher of π, so every schedule gives the same rows."""
    route = np.arange(len(lb))
    copy, rc = CopyTeacher(lb, lam), LatentStrategyTeacher.route_copying(lb, route, 1 - lam)
    assert np.allclose(rows_of(copy, len(lb)), rows_of(rc, len(lb)), atol=1e-12)
    lps = [data.draw(log_distributions(n=len(lb))) for _ in range(2)]
    for kind, tau in (("live", None), ("ema", 0.3)):
        a, b = TeacherSchedule(copy, kind, tau), TeacherSchedule(rc, kind, tau)
        sa, sb = a.state0, b.state0
        for lp in lps:
            sa, sb = a.update(sa, lp), b.update(sb, lp)
        assert np.allclose(rows_of(a.teacher(sa), len(lb)), rows_of(b.teacher(sb), len(lb)), atol=1e-12)


# --- ema --------------------------------------------------------------------------------------------

@given(with_policy(rebuildable), taus, st.data())
def test_ema_state_is_the_probability_space_average_weighted_by_tau_for_the_student(pair, tau, data):
    """m_k = (1 − τ)·m_{k−1} + τ·m(π_k) over three students; T_k is the teacher of m_k; gap = max|m_k − m(π_k)|."""
    inst, lp = pair
    t = inst.teacher
    s = TeacherSchedule(t, "ema", tau)
    assert s.tau == tau and s.label.startswith("ema")
    students = [lp] + [data.draw(log_distributions(n=inst.n)) for _ in range(2)]
    m0 = state_of(t, np.exp(inst.log_base))
    assert np.allclose(np.exp(s.state0), m0, atol=1e-12)
    state = s.state0
    for lpk in students:
        state = s.update(state, lpk)
    want = ema_state([m0] + [state_of(t, np.exp(x)) for x in students], tau)
    assert np.allclose(np.exp(state), want, atol=1e-11)
    assert abs(s.gap(state, students[-1]) - np.max(np.abs(want - state_of(t, np.exp(students[-1]))))) < 1e-11
    got = rows_of(s.teacher(state), inst.n)
    if isinstance(t, CopyTeacher):
        assert np.allclose(got, copy_rows(want, t.lam), atol=1e-11)
    else:
        ref = latent_rows(want, np.exp(t.log_P), t.eps)
        ok = ~np.isnan(ref)
        assert np.allclose(got[ok], ref[ok], atol=1e-9)


@given(with_policy(rebuildable))
def test_ema_starts_at_the_frozen_teacher_and_tau_one_is_live(pair):
    """ema's T_0 is π0's teacher (the base); with τ = 1 every update is the live one."""
    inst, lp = pair
    ema, live = TeacherSchedule(inst.teacher, "ema", 1.0), TeacherSchedule(inst.teacher, "live")
    assert np.allclose(rows_of(ema.teacher(ema.state0), inst.n), rows_of(inst.teacher, inst.n), atol=1e-12)
    a, b = ema.update(ema.state0, lp), live.update(live.state0, lp)
    assert np.allclose(np.exp(a), np.exp(b), atol=1e-15)
    assert np.allclose(rows_of(ema.teacher(a), inst.n), rows_of(live.teacher(b), inst.n), atol=1e-12)


def far_student(inst, data):
    """A student whose state is far from π0's (so that the direction of the EMA shows)."""
    lp = data.draw(log_distributions(n=inst.n))
    s = TeacherSchedule(inst.teacher, "live")
    return lp, float(np.max(np.abs(np.exp(s.update(s.state0, lp)) - np.exp(s.state0))))


@given(rebuildable, st.sampled_from([1e-3, 0.05, 0.2, 0.8]), st.data())
def test_ema_moves_towards_the_student_by_tau_and_stays_near_frozen_for_small_tau(inst, tau, data):
    """One update: m_1 − m_0 = τ·(m(π) − m_0); where T is affine in the state (route-copying, copy)
    the rows move by at most τ from the frozen teacher."""
    lp, far = far_student(inst, data)
    s = TeacherSchedule(inst.teacher, "ema", tau)
    assert ema_direction_error(s.update, s, lp) < 1e-12
    if isinstance(inst.teacher, CopyTeacher) or inst.teacher.disjoint:
        assert distance_from_frozen(s.update, s, lp) <= tau + 1e-12


@settings(max_examples=25)
@given(affine, st.sampled_from([1e-3, 0.05, 0.2]), st.data())
def test_sabotage_inverted_ema_fails_the_direction_checks(inst, tau, data):
    """The inverted EMA (teacher keeps τ, student 1 − τ) moves the state by (1 − τ)·(m(π) − m_0): it
    fails the direction check whenever m(π) is away from m_0, and with small τ it is near live, not frozen."""
    lp, far = far_student(inst, data)
    s = TeacherSchedule(inst.teacher, "ema", tau)
    bad = inverted_ema_update(s)
    if far > 1e-3:
        assert ema_direction_error(bad, s, lp) > 0.5 * far
    live = rows_of(TeacherSchedule(inst.teacher, "live").teacher(s.state_of(lp)), inst.n)
    moved = float(np.nanmax(np.abs(live - rows_of(inst.teacher, inst.n))))
    if moved > 10 * tau:  # the live teacher is far from the frozen one: the inverted EMA follows it
        assert distance_from_frozen(bad, s, lp) > tau


def test_ema_direction_on_a_worked_example():
    """Route-copying, masses m0 = (0.5, 0.3, 0.2), student on route 0 only, τ = 0.05:
    m_1 = 0.95·m0 + 0.05·(1, 0, 0) = (0.525, 0.285, 0.19); the inverted EMA gives (0.975, 0.015, 0.01)."""
    lb = np.log([0.5, 0.3, 0.2])
    t = LatentStrategyTeacher.route_copying(lb, np.arange(3), 0.1)
    s = TeacherSchedule(t, "ema", 0.05)
    student = np.log([1.0, 1e-300, 1e-300])
    assert np.allclose(np.exp(s.update(s.state0, student)), [0.525, 0.285, 0.19], atol=1e-12)
    assert np.allclose(np.exp(inverted_ema_update(s)(s.state0, student)), [0.975, 0.015, 0.01], atol=1e-12)
    assert ema_direction_error(inverted_ema_update(s), s, student) > 0.4


# --- validation --------------------------------------------------------------------------------------

RC = LatentStrategyTeacher.route_copying(np.log([0.5, 0.3, 0.2]), np.arange(3), 0.1)
KERNEL = KernelTeacher(safe_log([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]]))


@pytest.mark.parametrize("tau", [0, 0.0, -0.1, 1 + 1e-9, 2, float("nan"), float("inf"), -float("inf"),
                                 True, False, "0.5", None, [0.5], np.array([0.5])])
def test_ema_refuses_a_rate_outside_zero_one(tau):
    with pytest.raises(PcmiInputError, match="tau") as e:
        TeacherSchedule(RC, "ema", tau)
    assert one_line(e.value)


@pytest.mark.parametrize("tau", [1, 1.0, 1e-12, np.float64(0.3), np.float32(0.5)])
def test_ema_accepts_a_rate_in_zero_one(tau):
    s = TeacherSchedule(RC, "ema", tau)
    assert isinstance(s.tau, float) and 0 < s.tau <= 1


@pytest.mark.parametrize("kind", ["frozen", "live"])
@pytest.mark.parametrize("tau", [0.5, 1.0, 0])
def test_tau_belongs_to_the_ema_schedule_only(kind, tau):
    with pytest.raises(PcmiInputError, match="tau") as e:
        TeacherSchedule(RC, kind, tau)
    assert one_line(e.value)


@pytest.mark.parametrize("kind,tau", [("live", None), ("ema", 0.05)])
def test_kernel_teachers_cannot_be_rebuilt(kind, tau):
    with pytest.raises(PcmiInputError, match="KernelTeacher") as e:
        TeacherSchedule(KERNEL, kind, tau)
    assert one_line(e.value)


@pytest.mark.parametrize("kind", ["EMA", "Live", "", None, 1, "moving-average"])
def test_unknown_schedule_is_refused(kind):
    with pytest.raises(PcmiInputError, match="schedule") as e:
        TeacherSchedule(RC, kind)
    assert one_line(e.value)


def _kernel_instance():
    lb = np.log([0.5, 0.3, 0.2])
    return Instance(lb, [1, 1, 0], KERNEL, demos_from_successes(lb, [1, 1, 0]))


def _rc_instance():
    lb = np.log([0.5, 0.3, 0.2])
    return Instance(lb, [1, 1, 0], RC, demos_from_successes(lb, [1, 1, 0]), route=np.arange(3))


@pytest.mark.parametrize("run", [on_policy_fixed_point, lambda inst, **kw: expected_gradient_flow(inst, n_steps=2, **kw)])
@pytest.mark.parametrize("inst,kw,word", [
    (_kernel_instance, {"teacher": "live"}, "KernelTeacher"),
    (_kernel_instance, {"teacher": "ema", "tau": 0.05}, "KernelTeacher"),
    (_rc_instance, {"teacher": "ema", "tau": 1.5}, "tau"),
    (_rc_instance, {"teacher": "ema"}, "tau"),
    (_rc_instance, {"teacher": "live", "tau": 0.5}, "tau"),
    (_rc_instance, {"teacher": "frozen", "tau": 0.5}, "tau"),
    (_rc_instance, {"teacher": "sometimes"}, "schedule"),
])
def test_flows_refuse_bad_schedules_in_one_line(run, inst, kw, word):
    with pytest.raises(PcmiInputError, match=word) as e:
        run(inst(), **kw)
    assert one_line(e.value)
