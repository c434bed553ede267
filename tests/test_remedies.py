"""pcmi.remedies: every closed form against a numerical minimization of its own objective (written
here from the explicit teacher matrix, not from the library), the on-policy rounds and their
certificate, matched KL to π0. Each identity has a sabotage companion."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize
from scipy.special import log_softmax

from pcmi import remedies as R
from pcmi.distributions import kl, log_normalize, total_variation
from pcmi.dynamics import rl_rounds, sdsd_rounds
from pcmi.errors import PcmiInputError
from pcmi.instance import Instance, demos_from_successes
from pcmi.metrics import ratio_distortion
from pcmi.policies import contrastive_optimum, forward_kl_optimum, js_optimum, rl_optimum, sdsd_optimum
from pcmi.teachers import KernelTeacher, leaf_rows
from pcmi.testing import explicit_instances, extreme_instances, route_copying_instances

# --- the objectives, written from the matrix T[j, y] = T(y | y'_j) ---------------------------------


def parts(inst):
    """π0, r, D, T as plain arrays; g = Σ_j D_j log T_jy and the rollouts some demonstration rules out."""
    n = inst.n
    T = np.exp(leaf_rows(inst.teacher, n))
    D, p0, r = np.exp(inst.log_demos), np.exp(inst.log_base), inst.reward.astype(float)
    demos = D > 0
    ruled = (T[demos] == 0).any(axis=0)
    with np.errstate(divide="ignore"):
        logT = np.log(T)
    g = np.where(ruled, -np.inf, np.sum(np.where(demos[:, None], D[:, None] * np.where(T > 0, logT, 0.0), 0.0), axis=0))
    with np.errstate(divide="ignore"):
        lp0 = np.log(p0)
    return dict(T=T, D=D, p0=p0, lp0=lp0, r=r, g=g, ruled=ruled, logT=logT)


def plogp(p, lp):
    return np.sum(np.where(p > 0, p * np.where(p > 0, lp, 0.0), 0.0))


def objective(name, inst, knob, beta=1.0):
    """(f(p, log p) -> (value, ∂f/∂p), support mask): the quantity each remedy MINIMIZES; the blend's
    β is `beta` (its knob is λ)."""
    P = parts(inst)
    g, lp0, r, ok0 = P["g"], P["lp0"], P["r"], P["p0"] > 0
    fin = ~P["ruled"]
    gs = np.where(fin, g, 0.0)
    l0 = np.where(ok0, lp0, 0.0)
    sd = lambda p, lp: (plogp(p, lp) - p @ gs, lp + 1 - gs)        # E_D KL(π‖T)  # noqa: E731
    k0 = lambda p, lp: (plogp(p, lp) - p @ l0, lp + 1 - l0)        # KL(π‖π0)     # noqa: E731
    if name == "blend":
        lam = knob
        supp = (fin if lam < 1 else True) & (ok0 if lam > 0 else True)

        def f(p, lp):
            (a, da), (b, db) = k0(p, lp), sd(p, lp)
            return -lam * (p @ r - beta * a) + (1 - lam) * b, -lam * (r - beta * da) + (1 - lam) * db
    elif name == "entropy":
        supp = fin

        def f(p, lp):
            (b, db) = sd(p, lp)
            return b + knob * plogp(p, lp), db + knob * (lp + 1)
    elif name == "anchor":
        supp = fin & (ok0 if knob > 0 else True)

        def f(p, lp):
            (a, da), (b, db) = k0(p, lp), sd(p, lp)
            return b + knob * a, db + knob * da
    elif name == "split":
        S = r == 1
        supp = (S & ok0) | (~S & fin)

        def f(p, lp):
            J = np.sum(np.where(p > 0, np.where(S, p * (1 - knob * (lp - l0)), p * (gs - lp)), 0.0))
            dJ = np.where(S, 1 - knob * (lp - l0) - knob, gs - lp - 1)
            return -J, -dJ
    elif name == "contrastive":
        gB = np.sum(P["p0"][:, None] * np.where(P["T"] > 0, P["logT"], 0.0), axis=0)
        ruledB = (P["T"][P["p0"] > 0] == 0).any(axis=0)
        if np.any(ok0 & (P["ruled"] | ruledB)):  # s_c must be finite on supp π0
            assume(False)
        sc = np.where(ok0, gs - gB, 0.0)
        supp = ok0

        def f(p, lp):
            a, da = k0(p, lp)
            return -(p @ sc) + knob * a, -sc + knob * da
    else:
        raise KeyError(name)
    def quiet(p, lp):  # 0·(−inf) off the support is discarded by np.where; no warning for it
        with np.errstate(invalid="ignore"):
            return f(p, lp)
    return quiet, np.broadcast_to(supp, (inst.n,)).copy()


def argmin_on(f, supp, scale=1.0):
    """L-BFGS on softmax logits over the support, from the uniform start, restarted from its own end
    until it stops improving; zero off the support. f is divided by `scale` (the weight of the entropy
    in f), which leaves the minimizer alone and conditions the problem."""
    idx = np.flatnonzero(supp)
    n = len(supp)
    lp = np.full(n, -np.inf)
    if len(idx) == 1:
        lp[idx] = 0.0
        return lp

    def fu(u):
        li = log_softmax(u)
        s = np.exp(li)
        full, lfull = np.zeros(n), np.full(n, -np.inf)
        full[idx], lfull[idx] = s, li
        val, grad = f(full, lfull)
        gi = grad[idx] / scale
        return val / scale, s * (gi - s @ gi)
    u, best = np.zeros(len(idx)), np.inf
    for _ in range(4):
        res = minimize(fu, u, jac=True, method="L-BFGS-B",
                       options={"maxiter": 3000, "ftol": 1e-300, "gtol": 1e-14, "maxcor": 30})
        u = res.x
        if not res.fun < best - 1e-15 * abs(best):
            break
        best = res.fun
    lp[idx] = log_softmax(u)
    return lp


def kkt_residual(f, supp, lp):
    """Spread of ∂f/∂π over supp π (0 at the minimizer of a convex f on the simplex with full support
    inside `supp`), relative to the gradient's size."""
    grad = f(np.exp(lp), lp)[1]
    on = np.isfinite(lp)
    if not on.any():
        return np.inf
    gr = grad[on]
    return float(np.ptp(gr) / (1 + np.max(np.abs(gr))))


def check_closed_form(inst, name, knob, impl=None, beta=1.0):
    """(TV(closed, numeric), f(closed) − f(numeric), KKT residual of the closed form, its mass off the
    support, its support = the objective's support)."""
    if impl is None:
        impl = (lambda i, k: R.blend_optimum(i, k, beta=beta)) if name == "blend" else R.REMEDIES[name].function
    f, supp = objective(name, inst, knob, beta)
    if not supp.any():
        assume(False)
    lc = impl(inst, knob)
    closed = np.exp(lc)
    weight = {"blend": knob * beta + 1 - knob, "entropy": 1 + knob, "anchor": 1 + knob,
              "split": max(1.0, knob), "contrastive": knob}[name]
    ln = argmin_on(f, supp, weight)
    tv = 0.5 * np.abs(closed - np.exp(ln)).sum()
    on = np.isfinite(lc)
    return dict(tv=tv, gap=f(closed, lc)[0] - f(np.exp(ln), ln)[0], scale=1 + abs(f(closed, lc)[0]),
                kkt=kkt_residual(f, supp, lc), off=closed[~supp].sum(), same_support=bool(np.array_equal(on, supp)))


def assert_optimal(c, tv_tol=1e-4, near=True):
    """The closed form is stationary (KKT, with f strictly convex: the minimizer) and never beaten by
    the numerical minimizer; with near=True (moderate instances, where L-BFGS on softmax logits
    converges) also within tv_tol of it. On masses like e^-30 the flat logit directions stop L-BFGS
    early, so there only the first two checks apply."""
    assert c["off"] == 0.0 and c["same_support"], c
    assert c["kkt"] <= 1e-9, c
    assert c["gap"] <= 1e-9 * c["scale"], c
    if near:
        assert c["tv"] <= tv_tol, c


def moderate(inst):
    """π0 ≥ e^-12 and every teacher row ≥ e^-12 where positive."""
    rows = leaf_rows(inst.teacher, inst.n)
    return bool(np.all(inst.log_base > -12) and np.all(rows[np.isfinite(rows)] > -12))


knob_lam = st.one_of(st.sampled_from([0.0, 1.0, 1e-6, 1 - 1e-6]), st.floats(0.0, 1.0))
knob_eta = st.one_of(st.sampled_from([0.0, -0.5, 1e-6, 50.0]), st.floats(0.0, 20.0))
knob_kappa = st.one_of(st.sampled_from([0.0, 1e-6, 100.0]), st.floats(0.0, 20.0))
knob_beta = st.one_of(st.sampled_from([0.05, 1.0, 20.0]), st.floats(0.05, 20.0))
KNOBS = {"blend": knob_lam, "entropy": knob_eta, "anchor": knob_kappa, "split": knob_beta}
few = settings(max_examples=10)


def safe_remedy(inst, name, knob, beta=1.0):
    try:
        if name == "blend":
            return R.blend_optimum(inst, knob, beta=beta)
        return R.REMEDIES[name].function(inst, knob)
    except PcmiInputError as e:  # every rollout ruled out: the objective is infinite, said in one line
        assert "\n" not in str(e)
        f, supp = objective(name, inst, knob, beta)
        assert not supp.any()
        assume(False)


@pytest.mark.parametrize("name", list(KNOBS))
@few
@given(inst=explicit_instances(), data=st.data())
def test_closed_form_minimizes_its_objective(name, inst, data):
    knob = data.draw(KNOBS[name])
    beta = data.draw(knob_beta) if name == "blend" else 1.0
    safe_remedy(inst, name, knob, beta)
    assert_optimal(check_closed_form(inst, name, knob, beta=beta), near=moderate(inst))


@pytest.mark.parametrize("name", list(KNOBS))
@few
@given(inst=extreme_instances(max_n=5), data=st.data())
def test_closed_form_minimizes_its_objective_at_extremes(name, inst, data):
    """eps, lam ∈ {0, 1}, zero-probability and 1e-300 rollouts, one or all correct, random trees."""
    knob = data.draw(KNOBS[name])
    beta = data.draw(knob_beta) if name == "blend" else 1.0
    safe_remedy(inst, name, knob, beta)
    assert_optimal(check_closed_form(inst, name, knob, beta=beta), tv_tol=1e-3, near=moderate(inst))


@few
@given(inst=explicit_instances(), beta=knob_beta)
def test_tempered_contrastive_maximizes_its_objective(inst, beta):
    assert_optimal(check_closed_form(inst, "contrastive", beta), near=moderate(inst))


@few
@given(explicit_instances())
def test_blend_endpoints_are_sdsd_and_rl(inst):
    assert np.allclose(np.exp(R.blend_optimum(inst, 0.0)), np.exp(sdsd_optimum(inst)), atol=1e-12)
    for beta in (0.3, 1.0, 4.0):
        assert np.allclose(np.exp(R.blend_optimum(inst, 1.0, beta=beta)),
                           np.exp(rl_optimum(inst.log_base, inst.reward, beta)), atol=1e-12)


@few
@given(explicit_instances())
def test_knob_zero_is_sdsd_and_reused_optima_are_the_library_ones(inst):
    sd = np.exp(sdsd_optimum(inst))
    for name in ("entropy", "anchor"):
        assert np.allclose(np.exp(R.REMEDIES[name].function(inst, 0.0)), sd, atol=1e-12)
    assert np.allclose(np.exp(R.anchor_optimum(inst, 1e9)), np.exp(inst.log_base), atol=1e-7)  # κ → ∞: π0
    assert np.array_equal(R.forward_kl_remedy(inst), forward_kl_optimum(inst))
    assert np.array_equal(R.js_remedy(inst, 0.5), js_optimum(inst, 0.5).log_pi)
    assert np.array_equal(R.contrastive_remedy(inst, 1.0), contrastive_optimum(inst))
    assert np.allclose(np.exp(R.contrastive_remedy(inst, 1.0, log_ref=inst.log_base.copy())),
                       np.exp(contrastive_optimum(inst)), atol=1e-12)


@few
@given(explicit_instances(), knob_beta)
def test_split_keeps_base_ratios_among_correct_rollouts(inst, beta):
    lp = R.split_optimum(inst, beta)
    assert ratio_distortion(lp, inst.log_base, inst.reward) < 1e-9


@few
@given(explicit_instances(), st.lists(st.floats(0.0, 30.0), min_size=2, max_size=5))
def test_anchor_kl_to_base_is_monotone_in_kappa(inst, kappas):
    """The proved monotonicity behind matching κ by brentq (docs/remedies.md)."""
    kls = [kl(R.anchor_optimum(inst, k), inst.log_base) for k in sorted(kappas)]
    assert all(b <= a + 1e-10 for a, b in zip(kls, kls[1:]))


# --- sabotage: a plausible wrong closed form must fail the same check --------------------------

def fixed_instance(seed=3, n=5):
    rng = np.random.default_rng(seed)
    lb = log_softmax(rng.normal(0, 1.0, n))
    rows = np.stack([log_softmax(rng.normal(0, 1.5, n)) for _ in range(n)])
    r = np.array([1, 1, 0, 1, 0])
    return Instance(lb, r, KernelTeacher(rows), demos_from_successes(lb, r))


SABOTAGE = {  # name: (what is wrong, knob, blend's β, the wrong closed form)
    "blend": ("denominator λβ + 1 − λ replaced by 1", 0.5, 2.5, lambda inst, lam: log_normalize(
        lam * inst.reward + lam * 2.5 * inst.log_base + (1 - lam) * R._g(inst))),
    "entropy": ("the guessed exp(g / (1 − η))", 0.5, 1.0, lambda inst, eta: log_normalize(R._g(inst) / (1 - eta))),
    "anchor": ("no division by 1 + κ", 0.7, 1.0, lambda inst, k: log_normalize(R._g(inst) + k * inst.log_base)),
    "split": ("the −1 of each integrand dropped (log π0 + x/β | g + x)", 0.4, 1.0,
              lambda inst, beta: _split_without_ones(inst, beta)),
    "contrastive": ("β ignored", 3.0, 1.0, lambda inst, beta: contrastive_optimum(inst)),
}


def _split_without_ones(inst, beta):
    from scipy.optimize import brentq
    g, ok = R._g(inst), inst.reward == 1
    f = lambda x: np.logaddexp.reduce(np.where(ok, inst.log_base + x / beta, g + x))  # noqa: E731
    x = brentq(f, -200, 200)
    return log_normalize(np.where(ok, inst.log_base + x / beta, g + x))


@pytest.mark.parametrize("name", list(SABOTAGE))
def test_sabotaged_closed_form_fails_the_minimization_check(name):
    inst = fixed_instance()
    what, knob, beta, bad = SABOTAGE[name]
    assert_optimal(check_closed_form(inst, name, knob, beta=beta), tv_tol=1e-6)
    c = check_closed_form(inst, name, knob, impl=bad, beta=beta)
    assert c["kkt"] > 1e-3 and c["gap"] > 1e-6 and c["tv"] > 1e-3, what


def test_bad_knobs_are_one_line_errors():
    inst = fixed_instance()
    for fn, knob, msg in ((R.blend_optimum, 1.5, "lambda"), (R.entropy_bonus_optimum, -1.0, "eta"),
                          (R.anchor_optimum, -0.1, "kappa"), (R.split_optimum, 0.0, "beta"),
                          (R.blend_optimum, float("nan"), "lambda"), (R.anchor_optimum, "x", "kappa")):
        with pytest.raises(PcmiInputError, match=msg) as e:
            fn(inst, knob)
        assert "\n" not in str(e.value)
    with pytest.raises(PcmiInputError, match="unknown remedy"):
        R.remedy("nope")
    with pytest.raises(PcmiInputError, match="needs its knob"):
        R.remedy_rounds(inst, "anchor")


@pytest.mark.parametrize("call, words", [
    (lambda inst: R.knob_grid("blend", 2.5), "positive integer"),
    (lambda inst: R.knob_grid("blend", 0), "positive integer"),
    (lambda inst: R.matched_knob(inst, "blend", 0.1, n_grid=True), "positive integer"),
    (lambda inst: R.matched_knob(inst, "blend", 0.1, kl_tol=float("nan")), "kl_tol must be a finite number >= 0"),
    (lambda inst: R.matched_knob(inst, "blend", 0.1, kl_tol=-1.0), "kl_tol must be a finite number >= 0"),
])
def test_bad_knob_grid_and_tolerance_are_one_line_errors(call, words):
    with pytest.raises(PcmiInputError, match=words) as e:
        call(fixed_instance())
    assert "\n" not in str(e.value)


def test_table_lists_every_remedy_with_knob_and_definition():
    need = {"sdsd", "rl", "blend", "split", "forward_kl", "js", "contrastive", "entropy", "anchor", "dstar"}
    assert need <= set(R.REMEDIES)
    for name, (fn, knob, rng, definition) in R.REMEDIES.items():
        assert callable(fn) and definition and "\n" not in definition
        assert (knob is None) == (rng is None)
        if rng is not None:
            grid = R.knob_grid(name, 5)
            assert grid[0] == pytest.approx(rng[0]) and grid[-1] == pytest.approx(rng[1])
            assert np.all(np.diff(grid) > 0)


# --- on-policy rounds ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def graph_settings():
    from pcmi.figures import rounds
    from pcmi.figures._common import blocked_by_dominant_route, prompt_instances
    out = {}
    for s, pol in rounds.SETTINGS.items():
        g, [(task, inst, ro)] = prompt_instances(rounds.GRAPH, pol, rounds.TEACHER, prompts=1)
        out[s] = (inst, np.asarray(blocked_by_dominant_route(g, ro)[1], bool))
    return out


def test_sdsd_rounds_are_dynamics_rounds(graph_settings):
    """The shared loop with the sdsd remedy is pcmi.dynamics.sdsd_rounds, round by round."""
    for inst, _ in graph_settings.values():
        ref = sdsd_rounds(inst, 6)
        for k in (1, 3, 6):
            rr = R.remedy_rounds(inst, "sdsd", n_rounds=k, tol=0.0)
            assert rr.rounds == k
            assert total_variation(rr.log_pi, ref[k].log_pi) < 1e-13


def test_rl_rounds_with_the_current_reference_are_dynamics_rl_rounds(graph_settings):
    inst, _ = graph_settings["failing"]
    ref = rl_rounds(inst, 5, 2.0)
    rr = R.remedy_rounds(inst, "rl", 2.0, n_rounds=5, tol=0.0, reference="current")
    assert total_variation(rr.log_pi, ref[5].log_pi) < 1e-13
    frozen = R.remedy_rounds(inst, "rl", 2.0)  # a frozen reference: one round is the fixed point
    assert frozen.converged and frozen.rounds == 2 and frozen.tv == 0.0


def test_sabotage_rounds_without_rebuilding_the_teacher_differ(graph_settings):
    """A loop that keeps π0's teacher (only D follows) is not the rounds of theory.md §4."""
    inst, _ = graph_settings["all_correct"]
    cur, lp = inst, None
    for k in range(3):
        lp = sdsd_optimum(cur)
        cur = inst.with_demos(demos_from_successes(lp, inst.reward))
    assert total_variation(lp, R.remedy_rounds(inst, "sdsd", n_rounds=3, tol=0.0).log_pi) > 1e-3


@pytest.mark.parametrize("name,knob", [("sdsd", None), ("anchor", 2.0), ("blend", 0.5), ("entropy", 1.0),
                                       ("split", 1.0), ("contrastive", 1.0), ("forward_kl", None),
                                       ("js", 0.5)])
def test_fixed_point_certificate_is_honest(graph_settings, name, knob):
    """converged ⇒ TV to the previous round ≤ tol and one more round from π* moves it by ≤ 1e-9; the
    round before was not yet within tol (the rounds stop at the first certified round)."""
    for inst, _ in graph_settings.values():
        rr = R.remedy_rounds(inst, name, knob, 3000)
        assert rr.converged, rr.certificate()
        assert rr.tv <= rr.tol
        prev = R.remedy_rounds(inst, name, knob, rr.rounds - 1, tol=0.0) if rr.rounds > 1 else None
        if prev is not None:
            assert total_variation(prev.log_pi, rr.log_pi) == pytest.approx(rr.tv, abs=1e-15)
            assert prev.tv > rr.tol
        again = R.REMEDIES[name].function(R.next_instance(inst, rr.log_pi), knob, log_ref=inst.log_base)
        assert total_variation(again, rr.log_pi) <= 1e-9


def test_two_cycle_is_reported_not_converged(graph_settings):
    """Tempered contrastive at β = 0.05 on the failing setting alternates between two policies."""
    inst, _ = graph_settings["failing"]
    rr = R.remedy_rounds(inst, "contrastive", 0.05, 60)
    assert not rr.converged and rr.rounds == 60 and rr.tv > rr.tol
    assert rr.rate == pytest.approx(1.0, abs=1e-9)
    c = rr.certificate()
    assert c["converged"] is False and c["distance_bound"] is None


@settings(max_examples=15)
@given(route_copying_instances(all_correct=False))
def test_rounds_on_generated_route_copying_instances(inst):
    """Anchored rounds (κ = 1) converge or say so; a converged point is a fixed point of one more round."""
    rr = R.remedy_rounds(inst, "anchor", 1.0, 400)
    if rr.error is not None:
        assert not rr.converged
        return
    if rr.converged:
        again = R.anchor_optimum(R.next_instance(inst, rr.log_pi), 1.0, log_ref=inst.log_base)
        assert total_variation(again, rr.log_pi) <= 1e-8
    else:
        assert rr.rounds == 400 and rr.tv > rr.tol


def test_next_instance_extends_on_policy_instance(graph_settings):
    """Where dynamics.on_policy_instance's rebuild is exact, next_instance gives the same teacher;
    for a policy that reweights inside a route (RL with failures) it still builds the model's teacher."""
    from pcmi.dynamics import on_policy_instance
    from pcmi.scores import expected_log_teacher_leaves
    inst, _ = graph_settings["failing"]
    lp = sdsd_optimum(inst)
    a, b = R.next_instance(inst, lp), on_policy_instance(inst, lp)
    assert np.allclose(expected_log_teacher_leaves(a), expected_log_teacher_leaves(b), atol=1e-10)
    lp_rl = rl_optimum(inst.log_base, inst.reward, 1.0)
    with pytest.raises(PcmiInputError):
        on_policy_instance(inst, lp_rl)
    nxt = R.next_instance(inst, lp_rl)
    assert np.allclose(np.exp(nxt.teacher.log_base), np.exp(lp_rl), atol=1e-12)


# --- metrics and matched KL ---------------------------------------------------------------------

def test_remedy_metrics_at_the_base(graph_settings):
    for inst, blocked in graph_settings.values():
        m = R.remedy_metrics(inst, inst.log_base, blocked)
        assert m["kl_to_base"] == 0.0
        ok = inst.reward == 1
        assert m["success"] == pytest.approx(np.exp(inst.log_base[ok]).sum())
        assert m["ood_success"] == pytest.approx(np.exp(inst.log_base[ok & ~blocked]).sum())


@pytest.mark.parametrize("name", ["anchor", "rl", "contrastive"])
def test_matched_knob_one_round_recovers_the_knob_of_a_monotone_family(graph_settings, name):
    inst, _ = graph_settings["failing"]
    lo, hi = R.REMEDIES[name].knob_range
    knob = float(np.sqrt(lo * hi)) if lo > 0 else 1.3
    target = kl(R.REMEDIES[name].function(inst, knob), inst.log_base)
    m = R.matched_knob(inst, name, target, n_grid=9)
    assert m.monotone_on_grid and m.proved
    assert m.knob == pytest.approx(knob, rel=1e-6)
    assert abs(kl(R.REMEDIES[name].function(inst, m.knob), inst.log_base) - target) <= 1e-8


@pytest.mark.parametrize("name,setting", [("anchor", "all_correct"), ("blend", "all_correct"),
                                          ("anchor", "failing"), ("blend", "failing")])
def test_matched_knob_at_the_fixed_point_reaches_the_target(graph_settings, name, setting):
    """Target = SDSD's one-round KL; the fixed point at the matched knob, recomputed, has that KL to 1e-8."""
    inst, _ = graph_settings[setting]
    target = kl(sdsd_optimum(inst), inst.log_base)
    m = R.matched_knob(inst, name, target, point="fixed_point", n_grid=5)
    assert m.knob is not None, m.note
    rr = R.remedy_rounds(inst, name, m.knob)
    assert rr.converged
    assert abs(kl(rr.log_pi, inst.log_base) - target) <= 1e-8
    assert m.residual <= 1e-8


@pytest.mark.parametrize("name", ["js", "entropy"])
def test_fixed_points_far_from_pi0_report_the_target_unreached(graph_settings, name):
    """JS(α ≥ 0.05) collapses like SDSD; the entropy bonus's fixed points stay ≥ 0.48 nats from π0."""
    inst, _ = graph_settings["all_correct"]
    target = kl(sdsd_optimum(inst), inst.log_base)
    m = R.matched_knob(inst, name, target, point="fixed_point", n_grid=3)
    assert m.knob is None and "not reached" in m.note and min(m.grid_kl) > target


def test_matched_knob_reports_an_unreachable_target(graph_settings):
    inst, _ = graph_settings["all_correct"]  # contrastive keeps π0 when every rollout is correct: KL ≡ 0
    m = R.matched_knob(inst, "contrastive", 0.05, n_grid=5)
    assert m.knob is None and m.roots == [] and "not reached" in m.note


def test_sabotage_matched_knob_check_catches_a_wrong_knob(graph_settings):
    inst, _ = graph_settings["failing"]
    target = kl(R.anchor_optimum(inst, 2.0), inst.log_base)
    m = R.matched_knob(inst, "anchor", target, n_grid=9)
    assert abs(kl(R.anchor_optimum(inst, m.knob * (1 + 1e-3)), inst.log_base) - target) > 1e-8


# --- D* (written by another module) -------------------------------------------------------------

def test_dstar_remedy_keeps_ratios_when_available(graph_settings):
    from pcmi import demonstrations
    inst, _ = graph_settings["all_correct"]
    d = demonstrations.dstar(inst)
    lp = R.dstar_remedy(inst)
    assert np.allclose(lp, sdsd_optimum(inst.with_demos(d.log_demos)))
    if d.feasible:
        assert ratio_distortion(lp, inst.log_base, inst.reward) < 1e-8


@settings(max_examples=15, deadline=None)
@given(route_copying_instances(all_correct=False))
def test_frozen_teacher_rounds_of_sdsd_are_the_frozen_sdsd_rounds(inst):
    """teacher="frozen": only D follows the policy. At λ = 0 the blend's frozen rounds are
    dynamics.sdsd_rounds(teacher="frozen"), round by round."""
    from pcmi.dynamics import sdsd_rounds
    mine = R.remedy_rounds(inst, "blend", 0.0, 6, tol=0.0, teacher="frozen")
    ref = sdsd_rounds(inst, 6, teacher="frozen")
    assert np.max(np.abs(np.exp(mine.log_pi) - np.exp(ref[-1].log_pi))) < 1e-12


def test_frozen_blend_fixed_point_solves_its_own_equation():
    """The frozen-teacher blend fixed point π* satisfies π* = blend_optimum(D = π*(·|r=1)) with π0's teacher."""
    from pcmi.instance import demos_from_successes
    base = np.log([0.4, 0.3, 0.2, 0.1])
    reward = np.array([1, 1, 0, 1])
    from pcmi.teachers import LatentStrategyTeacher
    inst = Instance(base, reward, LatentStrategyTeacher.route_copying(base, [0, 1, 0, 2], 0.1),
                    demos_from_successes(base, reward), route=np.array([0, 1, 0, 2]))
    fp = R.remedy_rounds(inst, "blend", 0.5, teacher="frozen")
    assert fp.converged
    again = R.blend_optimum(inst.with_demos(demos_from_successes(fp.log_pi, reward)), 0.5)
    assert np.max(np.abs(np.exp(again) - np.exp(fp.log_pi))) < 1e-9
    with pytest.raises(PcmiInputError, match="teacher must be"):
        R.remedy_rounds(inst, "blend", 0.5, teacher="ema")
