"""`pcmi solve --mode`: a loss mode's on-policy fixed point and its exact gradient at π0, through
pcmi.cli.main, against independent routes: the token-level rounds of pcmi.dynamics, the gradient
recomputed at the printed policy, finite differences of the sequence loss, closed forms (eps = 1:
the teacher is π0; a copy teacher's KL by direct summation), and the definitions in objectives.MODES."""
import contextlib
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import graphworld as gw
from pcmi.cli import main
from pcmi.distributions import probs
from pcmi.dynamics import sdsd_rounds
from pcmi.errors import PcmiInputError
from pcmi.estimators import Bias, expected_gradient
from pcmi.flows import on_policy_fixed_point
from pcmi.instance import Instance, demos_from_successes
from pcmi.objectives import MODES, LossMode
from pcmi.schedules import TeacherSchedule
from pcmi.solve import gradient_at_base, load_instance, solve
from pcmi.tabular import TabularPolicy
from pcmi.testing import rewards

# the worked example of theory.md §5 with an explicit teacher matrix (flat tree: one token per rollout)
EXPLICIT = {"base": [0.5, 0.3, 0.2], "reward": [1, 1, 0],
            "teacher": [[0.95, 0.03, 0.02], [0.05, 0.93, 0.02], [0.5, 0.3, 0.2]]}
ROUTE = {"kind": "route_copying", "eps": 0.1}
COPY = {"kind": "copy", "lam": 0.5}   # a copy teacher: token level ≠ sequence level on this graph
TODAY = ["base", "rl", "rl_limit", "sdsd", "sdsd_tempered", "sdsd_token", "forward_kl", "forward_kl_token",
         "contrastive", "expected_pcmi", "beta", "reward", "metrics",
         "dstar", "dstar_spread", "dstar_method", "sdsd_under_dstar"]  # D* (P9): the ratio-preserving demonstrations
NEW = {"fixed_point", "gradient_at_base"}


def graph_data(teacher: dict, seed: int = 1) -> dict:
    """A two-route DAG prompt (11 rollouts, depth ≤ 4) with the given teacher spec."""
    g = gw.multi_route_dag(2, 1, 2, seed=seed, n_sources=1, n_targets=1)
    s, t = g.graph["prompts"][0]
    return {"graph": gw.graph_to_node_link(g), "source": s, "target": t, "max_len": 4,
            "policy": {"stop_pref": 0.0}, "teacher": dict(teacher)}


DATA = {"explicit": EXPLICIT, "route": graph_data(ROUTE), "copy": graph_data(COPY)}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("instances")
    out = {}
    for name, data in DATA.items():
        out[name] = d / f"{name}.json"
        out[name].write_text(json.dumps(data))
    return out


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def solve_json(argv, capsys) -> dict:
    rc, out, err = run(["solve", *argv], capsys)
    assert rc == 0, err
    return json.loads(out)


def instance(name):
    return load_instance(json.loads(json.dumps(DATA[name])))[0]


def mode_of(args) -> LossMode:
    """The LossMode that `--mode KIND [--alpha A] [--topk K] [--topk-of W] [--tail]` means."""
    flags = [a for a in args[1:] if a != "--tail"]
    opt = dict(zip(flags[::2], flags[1::2]))
    return LossMode(args[0], float(opt.get("--alpha", 1)), int(opt["--topk"]) if "--topk" in opt else None,
                    opt.get("--topk-of", "student"), "--tail" in args)


def schedule_of(args) -> tuple:
    """(teacher, tau) of `[--teacher S [--tau T]]`."""
    opt = dict(zip(args[::2], args[1::2]))
    return opt.get("--teacher", "frozen"), float(opt["--tau"]) if "--tau" in opt else None


def gradient_norm_at(inst, policy_probs, mode: LossMode, teacher="frozen", tau=None) -> float:
    """‖G_mode‖ recomputed at a printed policy π: D = π(·|r=1) and, for live and EMA teachers, the
    teacher rebuilt from π itself (an EMA fixed point's teacher state is the student's own)."""
    with np.errstate(divide="ignore"):
        log_pi = np.log(np.asarray(policy_probs, float))
    sched = TeacherSchedule(inst.teacher, teacher, tau)
    T = inst.teacher if teacher == "frozen" else sched.teacher(sched.state_of(log_pi))
    return expected_gradient(TabularPolicy.from_log_probs(inst.tree, log_pi), T,
                             demos_from_successes(log_pi, inst.reward), mode).norm


def perturbed(p, by=1e-3):
    """(1 − by)·p + by·uniform: a policy a little away from p (also when p is nearly deterministic)."""
    p = np.asarray(p, float)
    return (1 - by) * p + by / p.size


# --- every mode runs, is certified, and prints the fixed point on_policy_fixed_point finds -----------

MODE_ARGS = {
    "full": ["full"], "full-js": ["full", "--alpha", "0.5"], "full-fwd": ["full", "--alpha", "0"],
    "topk-tail": ["topk", "--topk", "2", "--tail"], "topk-teacher": ["topk", "--topk", "2", "--topk-of", "teacher"],
    "topk-1": ["topk", "--topk", "1", "--topk-of", "teacher"], "topk-1-tail": ["topk", "--topk", "1", "--tail"],
    "topk-1-tail-teacher": ["topk", "--topk", "1", "--tail", "--topk-of", "teacher"],
    "sampled": ["sampled"], "sampled-baseline": ["sampled-baseline"], "sequence": ["sequence"],
}
SCHEDULES = {"frozen": [], "live": ["--teacher", "live"], "ema": ["--teacher", "ema", "--tau", "0.5"]}
# (file, mode, schedule) that reach a certified fixed point; every mode kind appears on every file
# (a KernelTeacher matrix cannot be rebuilt, so the explicit file has the frozen teacher only)
CASES = ([("explicit", m, "frozen") for m in MODE_ARGS]
         + [("route", m, s) for m in ("full", "topk-tail", "topk-1", "sampled", "sampled-baseline", "sequence")
            for s in SCHEDULES]
         + [("copy", m, s) for m in ("full", "full-js", "topk-tail", "sampled", "sampled-baseline", "sequence")
            for s in SCHEDULES])


def test_cases_cover_every_mode_on_every_file():
    for f in DATA:
        assert {MODE_ARGS[m][0] for g, m, _ in CASES if g == f} == set(MODES), f


@pytest.mark.parametrize("fname,mode,sched", CASES, ids=["-".join(c) for c in CASES])
def test_every_mode_reaches_a_certified_fixed_point(files, capsys, fname, mode, sched):
    out = solve_json([files[fname], "--mode", *MODE_ARGS[mode], *SCHEDULES[sched]], capsys)
    fp, inst = out["fixed_point"], instance(fname)
    m, (teacher, tau) = mode_of(MODE_ARGS[mode]), schedule_of(SCHEDULES[sched])
    cert = fp["certificate"]
    assert cert["certified"] and cert["tol"] == 1e-10
    assert cert["grad_norm"] <= cert["tol"] and cert["teacher_gap"] <= cert["tol"]
    assert fp["mode"] == {**m.as_dict(), "teacher": teacher, "tau": tau}
    pol = np.array(fp["policy"])
    assert pol.shape == (inst.n,) and (pol >= 0).all() and abs(pol.sum() - 1) < 1e-12
    # the same fixed point as the library, bit for bit (the JSON round trip of a float is exact)
    direct = on_policy_fixed_point(inst, m, teacher, tau)
    assert fp["policy"] == [float(x) for x in probs(direct.log_pi)] and cert == direct.certificate()
    # independently: the gradient recomputed at the printed policy is ~0, and ≫ 0 a little away from it
    assert gradient_norm_at(inst, pol, m, teacher, tau) <= 100 * cert["tol"]
    if m.kind == "topk" and m.topk == 1 and not m.tail:   # one token renormalized: the loss is 0 everywhere
        assert cert["rounds"] == 0 and np.max(np.abs(pol - np.array(out["base"]))) < 1e-15
    else:
        assert gradient_norm_at(inst, perturbed(pol), m, teacher, tau) > 1e4 * cert["tol"]
    # its metrics are the §5 metrics, like those of the other policies
    assert set(fp["metrics"]) == set(out["metrics"]["sdsd"])
    assert abs(fp["metrics"]["success"] - pol[np.array(out["reward"]) == 1].sum()) < 1e-12


def test_each_flag_changes_the_fixed_point(files, capsys):
    """Sabotage companion of the comparison with on_policy_fixed_point above: each flag moves the fixed
    point, so a CLI that dropped --alpha, --topk, --tail, --topk-of or --teacher would fail there."""
    def policy(f, *flags):
        return np.array(solve_json([files[f], "--mode", *flags], capsys)["fixed_point"]["policy"])
    explicit = [policy("explicit", *MODE_ARGS[m]) for m in
                ("full", "full-js", "topk-teacher", "topk-1-tail", "topk-1-tail-teacher")]
    for i in range(len(explicit)):
        for j in range(i):
            assert np.max(np.abs(explicit[i] - explicit[j])) > 1e-3, (i, j)
    assert np.max(np.abs(policy("copy", "full") - policy("copy", "full", "--teacher", "live"))) > 1e-3


def test_tol_and_max_rounds_reach_the_fixed_point(files, capsys):
    out = solve_json([files["copy"], "--mode", "sequence", "--tol", "1e-6", "--max-rounds", "500"], capsys)
    cert = out["fixed_point"]["certificate"]
    assert cert["tol"] == 1e-6 and cert["grad_norm"] <= 1e-6 and 0 < cert["rounds"] <= 500
    tight = solve_json([files["copy"], "--mode", "sequence"], capsys)["fixed_point"]["certificate"]
    assert cert["rounds"] < tight["rounds"]   # a looser tolerance stops earlier


def test_teacher_equal_to_the_base_policy_is_a_fixed_point_at_pi0(tmp_path, capsys):
    """eps = 1: T(·|y') = π0 for every demonstration, so G_mode(π0) = 0 for every mode and schedule:
    the fixed point is π0 itself, found at round 0."""
    f = tmp_path / "eps1.json"
    f.write_text(json.dumps(graph_data({"kind": "route_copying", "eps": 1.0})))
    for mode in ("full", "full-js", "topk-tail", "sampled", "sampled-baseline", "sequence"):
        for sched in SCHEDULES:
            out = solve_json([f, "--mode", *MODE_ARGS[mode], *SCHEDULES[sched]], capsys)
            assert out["fixed_point"]["certificate"]["rounds"] == 0
            assert np.max(np.abs(np.array(out["fixed_point"]["policy"]) - np.array(out["base"]))) < 1e-15
            g = out["gradient_at_base"]
            assert g["norm"] < 1e-12 and abs(g["loss"]) < 1e-12 and g["variance"] < 1e-20


# --- frozen full α = 1: the limit of the token-level rounds ------------------------------------------

def token_rounds_limit(inst, level="token"):
    r = sdsd_rounds(inst, 200, teacher="frozen", level=level)
    last, before = probs(r[-1].log_pi), probs(r[-2].log_pi)
    assert np.max(np.abs(last - before)) < 1e-12, "the rounds have not converged"
    return last, probs(r[1].log_pi)


@pytest.mark.parametrize("fname", sorted(DATA))
def test_frozen_full_fixed_point_is_the_limit_of_token_rounds(files, capsys, fname):
    fp = np.array(solve_json([files[fname], "--mode", "full"], capsys)["fixed_point"]["policy"])
    limit, first = token_rounds_limit(instance(fname))
    assert np.max(np.abs(fp - limit)) < 1e-8
    # sabotage: the first round (D = π0(·|r=1) held fixed, not on-policy) is far from it
    assert np.max(np.abs(first - limit)) > 1e-3


def test_token_rounds_limit_tells_token_from_sequence_level(files, capsys):
    """Sabotage companion: the sequence-level rounds (what `sequence` reaches) have another limit on the
    copy-teacher graph, and the CLI's sequence fixed point is that one, not the token-level one."""
    inst = instance("copy")
    tok, _ = token_rounds_limit(inst)
    seq, _ = token_rounds_limit(inst, level="sequence")
    assert np.max(np.abs(tok - seq)) > 1e-3
    fp_seq = np.array(solve_json([files["copy"], "--mode", "sequence"], capsys)["fixed_point"]["policy"])
    assert np.max(np.abs(fp_seq - seq)) < 1e-8 and np.max(np.abs(fp_seq - tok)) > 1e-3


moderate_logit = st.floats(min_value=-8.0, max_value=0.0, allow_nan=False, allow_infinity=False)


@st.composite
def explicit_files(draw):
    """An explicit instance (flat tree) with positive masses down to e^-8 relative, one to all rollouts
    correct (the spreads where the first fixed-point solver stalled: see the tests below)."""
    n = draw(st.integers(2, 5))

    def dist():
        w = np.exp(np.array(draw(st.lists(moderate_logit, min_size=n, max_size=n))))
        return w / w.sum()
    base, rows = dist(), np.stack([dist() for _ in range(n)])
    reward = draw(rewards(n, all_correct=draw(st.booleans())))
    return {"base": base.tolist(), "reward": reward.tolist(), "teacher": rows.tolist()}


def solve_quietly(argv):
    """(status, parsed stdout) of `pcmi` without pytest's capsys (usable under hypothesis)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    assert rc == 0, err.getvalue()
    return json.loads(out.getvalue())


@settings(max_examples=15)
@given(data=explicit_files())
def test_flat_fixed_points_of_reverse_kl_modes_are_the_token_rounds_limit(tmp_path_factory, data):
    """On a flat tree every α = 1 mode has the same expected gradient as full α = 1 (one step per
    rollout), so full, sampled, sampled-baseline and sequence all print the limit of the token-level
    rounds, and the gradient recomputed at the printed policy vanishes."""
    f = tmp_path_factory.mktemp("h") / "x.json"
    f.write_text(json.dumps(data))
    inst = Instance.explicit(data["base"], data["reward"], data["teacher"])
    r = sdsd_rounds(inst, 200, teacher="frozen", level="token")
    limit = probs(r[-1].log_pi)
    converged = np.max(np.abs(limit - probs(r[-2].log_pi))) < 1e-12
    for kind in ("full", "sampled", "sampled-baseline", "sequence"):
        fp = solve_quietly(["solve", f, "--mode", kind, "--max-rounds", "2000"])["fixed_point"]
        pol = np.array(fp["policy"])
        assert fp["certificate"]["certified"] and abs(pol.sum() - 1) < 1e-12
        assert gradient_norm_at(inst, pol, LossMode(kind)) <= 100 * fp["certificate"]["tol"]
        if converged:
            assert np.max(np.abs(pol - limit)) < 1e-7, kind


# Instances where the token-level rounds converge but on_policy_fixed_point does not (found by the
# test above with wider spreads). Its line search takes ‖G‖ as merit and halves λ whenever ‖G‖ grows,
# but ‖G‖ first rises along the path the rounds take (e.g. TWO_ROLLOUTS: 0.42 at π0, 1.29 after round
# 1, then → 0), so λ shrinks geometrically and the iteration stalls (‖G‖ ≈ 0.96 after 20000 rounds).
TWO_ROLLOUTS = {"base": [0.16976826615150697, 0.8302317338484929], "reward": [1, 1],
                "teacher": [[0.999512512878668, 0.00048748712133190984], [0.2808115542748861, 0.7191884457251141]]}
UNIFORM_BASE = {"base": [1 / 3, 1 / 3, 1 / 3], "reward": [1, 0, 1],
                "teacher": [[0.5, 1.1597614151217826e-16, 0.5], [1 / 3, 1 / 3, 1 / 3],
                            [0.009074714844313747, 0.4954626425778431, 0.4954626425778431]]}
NEAR_VERTEX = {  # π0 is 1 − 9e-10 on a failing rollout: ‖G(π0)‖ = 2.6e-8, so round 1 (‖G‖ ~ 0.1) is refused
    "base": [6.831508573909379e-25, 3.307518831968706e-13, 0.9999999991180857, 2.2038757381941227e-26,
             8.815835449246246e-10],
    "reward": [0, 1, 0, 1, 1],
    "teacher": [[3.702272241582674e-11, 5.056692625101514e-13, 3.0260557007199595e-21, 0.4999999999812358,
                 0.4999999999812358],
                [0.009079673592480485, 0.4184842880702809, 0.4184842631266743, 9.621845146095299e-25,
                 0.1539517752105644],
                [0.009079673592480485, 0.4184842880702809, 0.4184842631266743, 9.621845146095299e-25,
                 0.1539517752105644],
                [0.007185171771718879, 2.3631637851431486e-26, 0.9928148280004389, 2.2784235242983908e-10,
                 1.9808840490694791e-25],
                [0.2, 0.2, 0.2, 0.2, 0.2]]}
STALLS = {"two_rollouts": TWO_ROLLOUTS, "uniform_base": UNIFORM_BASE, "near_vertex": NEAR_VERTEX}


@pytest.mark.parametrize("name", sorted(STALLS))
def test_fixed_point_where_the_gradient_norm_first_rises(tmp_path, name):
    data = STALLS[name]
    f = tmp_path / "stall.json"
    f.write_text(json.dumps(data))
    limit, _ = token_rounds_limit(Instance.explicit(data["base"], data["reward"], data["teacher"]))
    fp = solve_quietly(["solve", f, "--mode", "full", "--max-rounds", "2000"])["fixed_point"]
    assert np.max(np.abs(np.array(fp["policy"]) - limit)) < 1e-8


def test_a_zero_probability_rollout_stays_at_zero(tmp_path, capsys):
    """A rollout with π0 = 0 is a masked token of the tabular policy: no mode gives it mass, even where
    the teacher does (the token-level rounds of pcmi.dynamics do give it mass: they are not restricted
    to supp π0, so there the two differ)."""
    data = {"base": [0.6, 0.4, 0.0], "reward": [1, 1, 1],
            "teacher": [[0.5, 0.2, 0.3], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4]]}
    f = tmp_path / "zero.json"
    f.write_text(json.dumps(data))
    inst = Instance.explicit(data["base"], data["reward"], data["teacher"])
    for kind in ("full", "sampled", "sequence"):
        fp = solve_json([f, "--mode", kind], capsys)["fixed_point"]
        assert fp["policy"][2] == 0.0 and fp["certificate"]["certified"]
        assert gradient_norm_at(inst, fp["policy"], LossMode(kind)) <= 100 * fp["certificate"]["tol"]
    assert probs(sdsd_rounds(inst, 50, teacher="frozen", level="token")[-1].log_pi)[2] > 0.1


# --- the gradient at π0 --------------------------------------------------------------------------------

@pytest.mark.parametrize("fname", sorted(DATA))
def test_gradient_at_base_is_the_exact_expected_gradient_at_pi0(files, capsys, fname):
    inst = instance(fname)
    pol = TabularPolicy.from_log_probs(inst.tree, inst.log_base)
    D = demos_from_successes(inst.log_base, inst.reward)
    got = {}
    for kind in ("full", "sampled", "sampled-baseline", "sequence"):
        got[kind] = g = solve_json([files[fname], "--mode", kind], capsys)["gradient_at_base"]
        rep = expected_gradient(pol, inst.teacher, D, LossMode(kind))
        assert (g["norm"], g["variance"], g["loss"]) == (rep.norm, rep.variance, rep.loss)
        assert g["variance"] >= 0 and -1 <= g["bias"]["cosine"] <= 1 and g["bias"]["norm_ratio"] >= 0
    # sampled and sampled-baseline estimate the full α = 1 gradient; the baseline lowers the variance
    for kind in ("sampled", "sampled-baseline"):
        assert abs(got[kind]["norm"] - got["full"]["norm"]) < 1e-12
        assert got[kind]["bias"] == pytest.approx(got["full"]["bias"], abs=1e-12)
    assert got["sampled-baseline"]["variance"] <= got["sampled"]["variance"] + 1e-12
    assert got["sequence"]["bias"] == {"cosine": 1.0, "norm_ratio": pytest.approx(1.0, abs=1e-12)}
    if fname == "explicit":   # one step per rollout: the per-token loss is the sequence loss
        assert got["full"]["bias"] == pytest.approx({"cosine": 1.0, "norm_ratio": 1.0}, abs=1e-12)


def test_bias_of_the_token_level_gradient_is_visible_on_a_tree(files, capsys):
    """Sabotage companion of the bias check: on the copy-teacher graph full α = 1 is biased."""
    b = solve_json([files["copy"], "--mode", "full"], capsys)["gradient_at_base"]["bias"]
    assert b["cosine"] < 1 - 1e-3 and abs(b["norm_ratio"] - 1) > 1e-3


def test_sequence_gradient_at_base_against_finite_differences_and_direct_kl(files, capsys):
    """`sequence` at π0 is ∇_θ E_D KL(π_θ ‖ T(·|y')): check its norm by central differences of that
    loss, and the loss by direct summation over a copy teacher's rows T(y|y') = lam·1[y = y'] + (1−lam)π0."""
    g = solve_json([files["copy"], "--mode", "sequence"], capsys)["gradient_at_base"]
    inst, lam = instance("copy"), COPY["lam"]
    p0, D = probs(inst.log_base), probs(demos_from_successes(inst.log_base, inst.reward))
    T = lam * np.eye(inst.n) + (1 - lam) * p0[None, :]   # row j = T(·|y'_j)
    direct = sum(D[j] * np.sum(p0 * np.log(p0 / T[j])) for j in range(inst.n) if D[j] > 0)
    assert abs(g["loss"] - direct) < 1e-12

    def loss(theta):
        return sum(D[j] * np.sum(q * np.log(q / (lam * np.eye(inst.n)[j] + (1 - lam) * p0)))
                   for j in range(inst.n) if D[j] > 0
                   for q in [probs(TabularPolicy(inst.tree, theta).log_seq)])
    theta0 = TabularPolicy.from_log_probs(inst.tree, inst.log_base).theta
    h, fd = 1e-6, np.zeros(theta0.size)
    for i in range(1, theta0.size):
        e = np.zeros(theta0.size)
        e[i] = h
        fd[i] = (loss(theta0 + e) - loss(theta0 - e)) / (2 * h)
    assert abs(np.linalg.norm(fd) - g["norm"]) < 1e-7
    # sabotage: the token-level (full) gradient has another norm here
    assert abs(solve_json([files["copy"], "--mode", "full"], capsys)["gradient_at_base"]["norm"] - g["norm"]) > 1e-3


def test_json_has_no_nan_where_a_norm_ratio_is_infinite(files, capsys, monkeypatch):
    """G_seq = 0 ≠ G_mode gives norm ratio +inf: printed as null, exit 0 (allow_nan=False stays)."""
    import pcmi.solve
    monkeypatch.setattr(pcmi.solve, "gradient_bias", lambda g, r, sib: Bias(0.0, float("inf"), None, None))
    b = solve_json([files["explicit"], "--mode", "full"], capsys)["gradient_at_base"]["bias"]
    assert b == {"cosine": 0.0, "norm_ratio": None}


def test_bias_is_null_with_a_reason_where_the_sequence_kl_is_infinite():
    """Forward KL (α = 0) is finite at π0 where the reverse, sequence-level KL is not (the teacher
    gives 0 to a rollout π0 emits): the gradient is reported, its bias is undefined and says why."""
    inst = Instance.explicit([0.5, 0.3, 0.2], [1, 1, 0], [[0.9, 0, 0.1], [0, 0.9, 0.1], [0.5, 0.3, 0.2]])
    g = gradient_at_base(inst, LossMode("full", 0.0))
    json.dumps(g, allow_nan=False)
    assert np.isfinite(g["norm"]) and g["norm"] > 0 and g["bias"]["cosine"] is None
    assert g["bias"]["norm_ratio"] is None and "infinite" in g["bias"]["undefined"]


# --- today's output is unchanged --------------------------------------------------------------------

@pytest.mark.parametrize("fname,extra", [("explicit", ["--mode", "full"]),
                                          ("route", ["--mode", "sequence", "--teacher", "live"]),
                                          ("copy", ["--mode", "topk", "--topk", "2", "--tail", "--teacher", "ema",
                                                    "--tau", "0.25", "--beta", "0.5"])])
def test_todays_keys_are_unchanged_with_and_without_mode(files, capsys, fname, extra):
    beta = extra[extra.index("--beta"):] if "--beta" in extra else []
    plain = solve_json([files[fname], *beta], capsys)
    with_mode = solve_json([files[fname], *extra], capsys)
    today = TODAY + ([] if fname == "explicit" else ["rollouts", "route"])
    assert set(plain) == set(today) and not NEW & set(plain)
    assert set(with_mode) == set(today) | NEW
    assert {k: with_mode[k] for k in plain} == plain
    assert set(with_mode["fixed_point"]) == {"mode", "policy", "certificate", "metrics"}
    assert set(with_mode["gradient_at_base"]) == {"norm", "variance", "loss", "bias"}
    assert len(with_mode["fixed_point"]["policy"]) == len(plain["sdsd"])


def test_library_solve_refuses_schedule_options_without_a_mode():
    inst = instance("route")
    for kw in ({"teacher": "live"}, {"tau": 0.5}, {"tol": 1e-8}, {"max_rounds": 5}):
        with pytest.raises(PcmiInputError, match="needs a loss mode"):
            solve(inst, **kw)


# --- help and bad flags ------------------------------------------------------------------------------

def lists_every_mode(help_text: str, modes: dict) -> bool:
    """Every mode name starts a line of the help that carries its definition verbatim."""
    lines = help_text.splitlines()
    return all(any(ln.strip().startswith(name + " ") and ln.rstrip().endswith(text) for ln in lines)
               for name, text in modes.items())


def test_help_lists_every_mode_with_its_definition(capsys):
    rc, out, _ = run(["solve", "--help"], capsys)
    assert rc == 0 and lists_every_mode(out, MODES)
    for flag in ("--mode", "--alpha", "--teacher", "--tau", "--topk", "--topk-of", "--tail", "--tol", "--max-rounds"):
        assert flag in out
    # sabotage: a stale definition or a missing mode is caught
    assert not lists_every_mode(out, {**MODES, "full": MODES["full"] + " (stale)"})
    assert not lists_every_mode(out, {**MODES, "reinforce": "a mode the help does not list"})


BAD_FLAGS = [  # (file, flags, what the one line must name)
    ("explicit", ["--alpha", "0.5"], "--alpha applies only with --mode"),
    ("route", ["--teacher", "live"], "--teacher applies only with --mode"),
    ("route", ["--tau", "0.5", "--teacher", "ema"], "--teacher, --tau apply only with --mode"),
    ("explicit", ["--topk", "2"], "--topk applies only with --mode"),
    ("explicit", ["--topk-of", "teacher"], "--topk-of applies only with --mode"),
    ("explicit", ["--tail"], "--tail applies only with --mode"),
    ("explicit", ["--tol", "1e-8"], "--tol applies only with --mode"),
    ("explicit", ["--max-rounds", "5"], "--max-rounds applies only with --mode"),
    ("explicit", ["--mode", "full", "--topk", "2"], "--topk applies to --mode topk only"),
    ("explicit", ["--mode", "sampled", "--tail"], "--tail applies to --mode topk only"),
    ("explicit", ["--mode", "sequence", "--topk-of", "student"], "--topk-of applies to --mode topk only"),
    ("explicit", ["--mode", "topk"], "--mode topk needs --topk"),
    ("explicit", ["--mode", "topk", "--tail"], "--mode topk needs --topk"),
    ("route", ["--mode", "full", "--tau", "0.5"], "--tau applies to --teacher ema only"),
    ("route", ["--mode", "full", "--teacher", "live", "--tau", "0.5"], "--tau applies to --teacher ema only"),
    ("route", ["--mode", "full", "--teacher", "ema"], "--teacher ema needs --tau"),
    ("route", ["--mode", "full", "--teacher", "ema", "--tau", "0"], "tau in (0, 1]"),
    ("route", ["--mode", "full", "--teacher", "ema", "--tau", "1.5"], "tau in (0, 1]"),
    ("route", ["--mode", "full", "--teacher", "ema", "--tau", "nan"], "tau in (0, 1]"),
    ("route", ["--mode", "full", "--teacher", "ema", "--tau", "x"], "--tau"),
    ("explicit", ["--mode", "sampled", "--alpha", "0.5"], "alpha must be 1"),
    ("explicit", ["--mode", "sequence", "--alpha", "0"], "alpha must be 1"),
    ("explicit", ["--mode", "full", "--alpha", "-0.1"], "alpha must lie in [0, 1]"),
    ("explicit", ["--mode", "full", "--alpha", "nan"], "alpha must lie in [0, 1]"),
    ("explicit", ["--mode", "full", "--alpha", "inf"], "alpha must lie in [0, 1]"),
    ("explicit", ["--mode", "full", "--alpha", "x"], "--alpha"),
    ("explicit", ["--mode", "topk", "--topk", "0"], "--topk: must be a positive integer"),
    ("explicit", ["--mode", "topk", "--topk", "1.5"], "--topk: must be a positive integer"),
    ("explicit", ["--mode", "topk", "--topk", "1", "--topk-of", "both"], "--topk-of: invalid choice"),
    ("explicit", ["--mode", "bogus"], "--mode: invalid choice"),
    ("explicit", ["--mode", "full", "--teacher", "warm"], "--teacher: invalid choice"),
    ("explicit", ["--mode", "full", "--tol", "0"], "--tol: must be a finite number > 0"),
    ("explicit", ["--mode", "full", "--tol", "-1"], "--tol: must be a finite number > 0"),
    ("explicit", ["--mode", "full", "--tol", "inf"], "--tol: must be a finite number > 0"),
    ("explicit", ["--mode", "full", "--tol", "nan"], "--tol: must be a finite number > 0"),
    ("explicit", ["--mode", "full", "--max-rounds", "0"], "--max-rounds: must be a positive integer"),
    ("explicit", ["--mode", "full", "--max-rounds", "2.5"], "--max-rounds: must be a positive integer"),
    ("explicit", ["--mode", "full", "--teacher", "live"], "needs a latent-strategy or copy teacher"),
    ("explicit", ["--mode", "full", "--max-rounds", "1"], "did not reach a fixed point in 1 rounds"),
    ("route", ["--mode", "sequence", "--teacher", "ema", "--tau", "0.5", "--max-rounds", "3"],
     "did not reach a fixed point"),
]


@pytest.mark.parametrize("fname,flags,msg", BAD_FLAGS, ids=[" ".join(b[1]) for b in BAD_FLAGS])
def test_bad_flags_exit_2_with_one_line(files, capsys, fname, flags, msg):
    rc, out, err = run(["solve", files[fname], *flags], capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and out == "" and len(lines) == 1, err
    assert lines[0].startswith("pcmi solve: error: ") and msg in lines[0] and "Traceback" not in err


def test_an_infinite_mode_loss_exits_2_naming_it(tmp_path, capsys):
    """The teacher gives 0 to a rollout π0 emits under every demonstration: the closed forms are fine
    (the SDSD optimum gives it 0), the reverse-KL loss of every mode is infinite at π0."""
    f = tmp_path / "zero_teacher.json"
    f.write_text(json.dumps({"base": [0.5, 0.3, 0.2], "reward": [1, 1, 0],
                             "teacher": [[0.9, 0.1, 0.0], [0.1, 0.9, 0.0], [0.5, 0.3, 0.2]]}))
    rc, out, _ = run(["solve", f], capsys)
    assert rc == 0 and json.loads(out)["sdsd"][2] == 0.0
    for kind in ("full", "topk", "sampled", "sampled-baseline", "sequence"):
        rc, out, err = run(["solve", f, "--mode", kind, *(["--topk", "2", "--tail"] if kind == "topk" else [])], capsys)
        assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1 and "infinite" in err, (kind, err)


def test_no_convergence_is_one_line_and_status_2_in_a_real_process(files):
    p = subprocess.run([sys.executable, "-m", "pcmi.cli", "solve", str(files["copy"]), "--mode", "sequence",
                        "--max-rounds", "2"], capture_output=True, text=True)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and p.stdout == "" and len(lines) == 1 and "Traceback" not in p.stderr
    assert "did not reach a fixed point in 2 rounds" in lines[0]
