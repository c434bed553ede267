"""Training as a flow, exactly (theory.md §9): the expected-gradient flow of a loss mode on the
tabular policy, with on-policy demonstrations D_k = π_k(· | r = 1) and a teacher schedule, and its
on-policy fixed points with a certificate.

    flow          θ_{k+1} = θ_k − η·G_mode(θ_k; D_k, T_k), then the schedule's teacher update
    fixed point   θ* with ‖G_mode(θ*; π*(·|r=1), T*)‖ ≤ tol, T* = the schedule's teacher at θ*
                  (for live and EMA teachers also: the teacher's state is the student's own)

The fixed point is found by damped natural-gradient rounds: every reachable prefix moves by
θ_h ← θ_h − λ·E_D v(h)/p (the per-prefix Fisher step, `GradientReport.direction`). For full α = 1
with λ = 1 one round is exactly the token-level optimum against the current D and teacher
(the rounds of `pcmi.dynamics` at the token level); λ halves when the rounds stall (a 2-cycle).
An EMA teacher moves by τ once per round. Not converging within max_rounds is an error.

The certificate: ‖G‖ ≤ tol, the teacher's state within tol of the student's (live, EMA), and one
full natural round (λ = 1, no trust region) from the point moves the sequence law by at most tol in total variation
(`step_tv`). The last condition is needed because G = μ(h)·p ⊙ u vanishes with the mass: a rare
success or a point a hair from a vertex has ‖G‖ ≤ tol while the rounds would still move it. At a
collapse vertex (a fixed point at infinity in logit space) the natural step stays O(1)
(`natural_residual`) but moves only the vanishing mass, so `step_tv` is ≤ tol there.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .checks import count, positive
from .errors import PcmiInputError
from .estimators import GradientReport, expected_gradient
from .instance import Instance, demos_from_successes, has_reachable_success
from .distributions import total_variation
from .metrics import ood_success, strategy_mass_entropy, success
from .objectives import LossMode, loss_mode
from .schedules import TeacherSchedule
from .tabular import TabularPolicy


class FixedPointError(PcmiInputError):
    """The iteration did not reach a certified fixed point (one line, names the residual)."""


def schedule_of(inst: Instance, teacher="frozen", tau=None) -> TeacherSchedule:
    return teacher if isinstance(teacher, TeacherSchedule) else TeacherSchedule(inst.teacher, teacher, tau)


def on_policy_step(inst: Instance, policy: TabularPolicy, sched: TeacherSchedule, state, mode: LossMode,
                   at: str = "", demos=None) -> GradientReport:
    """G_mode at the policy with D = π(· | r = 1) (or D = demos(log π, reward), a demonstration law
    computed from the current policy, e.g. a `pcmi.demonstrations` proxy) and the schedule's teacher."""
    if not has_reachable_success(policy.log_seq, inst.reward):
        raise PcmiInputError(f"{at}the policy has no correct rollout with positive probability, so the on-policy "
                             "demonstrations π(· | r = 1) are undefined")
    log_D = (demos_from_successes if demos is None else demos)(policy.log_seq, inst.reward)
    return expected_gradient(policy, sched.teacher(state), log_D, mode)


@dataclass
class FlowRecord:
    """One step of a flow: the policy before the step and its expected gradient."""
    step: int
    log_pi: np.ndarray
    success: float
    strategy_mass_entropy: float | None
    ood_success: float | None
    grad_norm: float
    loss: float


def _record(k, inst, policy, rep, blocked) -> FlowRecord:
    lp, r = policy.log_seq, inst.reward
    ent = strategy_mass_entropy(lp, r, inst.route) if inst.route is not None and has_reachable_success(lp, r) else None
    ood = ood_success(lp, r, blocked) if blocked is not None else None
    return FlowRecord(k, lp, success(lp, r), ent, ood, rep.norm, rep.loss)


@dataclass
class Flow:
    mode: LossMode
    schedule: str
    eta: float
    records: list = field(default_factory=list)   # FlowRecord per step 0..n_steps (the last has no step after it)
    policy: TabularPolicy | None = None            # π after n_steps
    state: object = None                           # the teacher's state after n_steps

    def series(self, name: str) -> list:
        return [getattr(r, name) for r in self.records]


def expected_gradient_flow(inst: Instance, mode=LossMode(), teacher="frozen", tau=None, *, eta: float = 1.0,
                           n_steps: int = 100, blocked=None, start: TabularPolicy | None = None) -> Flow:
    """N steps of θ ← θ − η·G_mode(θ; π(·|r=1), T_k) from π0 (or `start`), the teacher following
    its schedule after each step; records success, strategy-mass entropy, OOD success (with the
    `blocked` rollout mask), ‖G‖ and the loss before every step and after the last."""
    mode, sched = loss_mode(mode), schedule_of(inst, teacher, tau)
    eta, n_steps = positive(eta, "eta"), count(n_steps, "n_steps")
    policy = start or TabularPolicy.from_log_probs(inst.tree, inst.log_base)
    state = sched.state0
    flow = Flow(mode, sched.label, eta)
    for k in range(n_steps + 1):
        rep = on_policy_step(inst, policy, sched, state, mode, f"step {k}: ")
        flow.records.append(_record(k, inst, policy, rep, blocked))
        if k == n_steps:
            break
        policy = policy.with_theta(policy.theta - eta * rep.grad)
        state = sched.update(state, policy.log_seq)
    flow.policy, flow.state = policy, state
    return flow


@dataclass
class FixedPoint:
    """A certified on-policy fixed point: grad_norm = ‖G_mode‖ there, teacher_gap = how far the
    teacher's state is from the student's own (0 for frozen)."""
    mode: LossMode
    schedule: str
    policy: TabularPolicy
    grad_norm: float
    teacher_gap: float
    rounds: int
    tol: float
    state: object = None
    natural_residual: float = 0.0  # size of the next natural round: > 0 at a fixed point on the simplex's boundary
    step_tv: float = 0.0           # TV between π* and one full natural round from it (≤ tol when certified)
    growth: float = 0.0            # per-round growth of a small kick under the rounds (> 1: an unstable point)
    passed_unstable: list = field(default_factory=list)  # log π of the unstable fixed points the rounds left

    @property
    def stable(self) -> bool:
        """A kick of the logits shrinks (or stays) under the rounds: the point attracts them."""
        return self.growth <= 1 + GROWTH_MARGIN


    @property
    def log_pi(self) -> np.ndarray:
        return self.policy.log_seq

    def certificate(self) -> dict:
        return {"grad_norm": self.grad_norm, "teacher_gap": self.teacher_gap, "tol": self.tol,
                "rounds": self.rounds, "natural_residual": self.natural_residual, "step_tv": self.step_tv,
                "growth": self.growth, "stable": self.stable, "passed_unstable": len(self.passed_unstable),
                "certified": bool(self.grad_norm <= self.tol and self.teacher_gap <= self.tol
                                  and self.step_tv <= self.tol)}


#: largest move of one logit in one round (a trust region: the natural step of forward KL is q̄/p)
MAX_STEP = 4.0
#: rounds without a new smallest ‖G‖ before the step λ is halved, if most of them reversed the move
#: before (damping a 2-cycle of the rounds; a steady climb, leaving an unstable point, keeps λ)
PATIENCE = 40
#: stability of a certified point: the logits are kicked by KICK (a fixed random direction) and
#: GROWTH_ROUNDS rounds are run; growth = (TV after / TV before)^(1/GROWTH_ROUNDS)
KICK, GROWTH_ROUNDS, GROWTH_MARGIN = 1e-5, 10, 1e-3
#: unstable fixed points the rounds may leave before the solver gives up and returns one (flagged)
MAX_ESCAPES = 4


def _oscillating(flips: int, rounds: int) -> bool:
    """The rounds oscillate: at least half of them reversed the move before (move·previous < 0)."""
    return 2 * flips >= rounds


def natural_residual(policy: TabularPolicy, rep: GradientReport) -> float:
    """max over prefixes the student reaches of |E_D v(h)/p|: the size of the next natural round
    (large while mass is still leaving a token, e.g. on the way to a vertex)."""
    reached = np.isfinite(policy.log_prefix[np.r_[0, policy.tree.parent[1:]]])
    reached[0] = False
    return float(np.max(np.abs(rep.direction[reached]), initial=0.0))


def on_policy_fixed_point(inst: Instance, mode=LossMode(), teacher="frozen", tau=None, *, tol: float = 1e-10,
                          max_rounds: int = 20000, start: TabularPolicy | None = None, state=None,
                          demos=None, leave_unstable: bool = False) -> FixedPoint:
    """The on-policy fixed point reached from π0 (or from `start` with teacher state `state`) by
    natural-gradient rounds θ_h ← θ_h − λ·E_D v(h)/p on every reachable prefix (each logit moved
    by at most MAX_STEP; λ = 1 is the token-level optimum round for full α = 1; λ halves when PATIENCE
    rounds pass without a new smallest ‖G‖ and most of them reverse the move before: a 2-cycle).
    For top-k without the tail the step has mean 0 over the
    top-k set, as the gradient has, so the mass outside it is conserved as under the flow.
    Raises FixedPointError when max_rounds pass without ‖G‖ ≤ tol (and, for live and EMA teachers,
    the teacher's state within tol of the student's). `demos(log π, reward) -> log D` replaces the
    on-policy D = π(· | r = 1) by another law of the current policy (a remedy's demonstration choice).

    Every certified point is kicked (KICK along a fixed random direction) and GROWTH_ROUNDS rounds are
    run: `growth` > 1 + GROWTH_MARGIN marks an unstable fixed point (`stable` False), such as the
    symmetric point between two modes that a copy teacher with large lam drives apart; rounds started
    exactly on it stay there, rounds from any kick leave it. With leave_unstable=True the solver goes on
    from the kicked rounds to the point they reach (the unstable points passed are in `passed_unstable`;
    a collapse to a vertex can take many rounds)."""
    mode, sched = loss_mode(mode), schedule_of(inst, teacher, tau)
    tol, max_rounds = positive(tol, "tol"), count(max_rounds, "max_rounds", 1)
    policy = start or TabularPolicy.from_log_probs(inst.tree, inst.log_base)
    state = sched.state0 if state is None else state
    reached_par = np.r_[0, inst.tree.parent[1:]]
    lam, best, since, flips, prev, escapes = 1.0, np.inf, 0, 0, None, []
    for k in range(max_rounds + 1):
        rep = on_policy_step(inst, policy, sched, state, mode, f"round {k}: ", demos)
        norm, gap = rep.norm, sched.gap(state, policy.log_seq)
        if norm <= tol and gap <= tol:
            # ‖G‖ vanishes with the mass near the boundary: certify only if a full natural round
            # would not move the sequence law either (it does at a rare success, not at a vertex)
            step_tv = total_variation(policy.log_seq, policy.with_theta(
                policy.theta - _natural_move(policy, rep, mode, 1.0, reached_par, clip=False)).log_seq)
            if step_tv <= tol:
                growth, kicked, kicked_state = _growth(inst, policy, state, sched, mode, lam, reached_par, demos,
                                                       step_tv)
                if growth <= 1 + GROWTH_MARGIN or not leave_unstable or len(escapes) >= MAX_ESCAPES:
                    return FixedPoint(mode, sched.label, policy, norm, gap, k, tol, state,
                                      natural_residual(policy, rep), step_tv, growth, escapes)
                # an unstable fixed point (e.g. the symmetric point between two modes that collapse):
                # the rounds leave it from any kick, so go on from the kicked trajectory
                escapes.append(policy.log_seq)
                policy, state = kicked, kicked_state
                continue
        if k == max_rounds:
            break
        move = _natural_move(policy, rep, mode, lam, reached_par)
        if norm < best:
            best, since, flips = norm, 0, 0
        else:
            since += 1
            flips += bool(prev is not None and np.dot(move, prev) < 0)
            if since >= PATIENCE:
                # halve λ only where the rounds oscillate (most moves reverse the one before: a 2-cycle);
                # a steady climb of ‖G‖ is the rounds leaving an unstable point, which full steps finish
                if _oscillating(flips, since) and lam > 1 / 1024:
                    lam = lam / 2
                    move = move / 2
                best, since, flips = norm, 0, 0
        prev = move
        policy = policy.with_theta(policy.theta - move)
        state = sched.update(state, policy.log_seq)
    raise FixedPointError(f"{mode.label} with a {sched.label} teacher did not reach a fixed point in {max_rounds} "
                          f"rounds: gradient norm {norm:.3g}, teacher gap {gap:.3g}, tol {tol:g}")


def _growth(inst, policy, state, sched, mode, lam, reached_par, demos, step_tv: float):
    """(growth, policy, state): the point and its copy kicked by KICK along a fixed random direction on the
    reachable prefixes both run GROWTH_ROUNDS rounds (step λ, as the solver's); growth = (d_K / d_0)^(1/K),
    d_k = TV between the two after k rounds (two trajectories, so that a point that still drifts, as a
    collapse vertex does in logit space, is not mistaken for one that repels). 0 where the kick does not
    move the sequence law by more than 1e-13 (too little to measure). Returns the kicked end point."""
    u = np.random.default_rng(0).standard_normal(policy.theta.shape)
    u = np.where(np.isfinite(policy.log_prefix[reached_par]) & np.isfinite(policy.theta), u, 0.0)
    u[0] = 0.0
    pair = [(policy, state), (policy.with_theta(policy.theta + KICK * u), state)]
    d0 = total_variation(pair[0][0].log_seq, pair[1][0].log_seq)
    # the unkicked point moves by at most step_tv per round: where that is negligible next to the kick,
    # it stands still and one trajectory suffices
    still = d0 > 1e4 * GROWTH_ROUNDS * step_tv
    for _ in range(GROWTH_ROUNDS):
        nxt = pair[:1] if still else []
        for pol, st in (pair[1:] if still else pair):
            rep = on_policy_step(inst, pol, sched, st, mode, "stability check: ", demos)
            pol = pol.with_theta(pol.theta - _natural_move(pol, rep, mode, lam, reached_par))
            nxt.append((pol, sched.update(st, pol.log_seq)))
        pair = nxt
    kicked, st = pair[1]
    if d0 <= 1e-13:
        return 0.0, kicked, st
    return float((total_variation(pair[0][0].log_seq, kicked.log_seq) / d0) ** (1 / GROWTH_ROUNDS)), kicked, st


def _natural_move(policy: TabularPolicy, rep: GradientReport, mode: LossMode, lam: float, reached_par,
                  clip: bool = True):
    """λ·E_D v/p on the prefixes the student reaches, each logit moved by at most MAX_STEP (clip)."""
    move = lam * rep.direction
    if mode.kind == "topk" and not mode.tail:
        move = _mean_zero_on_topk(policy, rep, move)
    if clip:
        move = np.clip(move, -MAX_STEP, MAX_STEP)
    return np.where(np.isfinite(policy.log_prefix[reached_par]), move, 0.0)


def _mean_zero_on_topk(policy: TabularPolicy, rep: GradientReport, move):
    """The step minus its mean over the nonzero entries of each prefix (the top-k set it acts on)."""
    sib = policy.sib
    on = (rep.direction != 0).astype(float)
    on[0] = 0.0
    cnt = sib.sum(on)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(cnt > 0, sib.sum(move * on) / np.where(cnt > 0, cnt, 1.0), 0.0)
    return np.where(on > 0, move - sib.spread(mean), move)
