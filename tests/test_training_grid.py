"""`pcmi train --grid`: the tiny grid end to end (shared pretraining, resumable, probes that do not
perturb training, the grid's trained policy = the plain trainer's), the bootstrap intervals (coverage
at the nominal rate in simulation; a wrong statistic or an unpaired bootstrap fails), the β-matched
GRPO (brentq against an independent closed form of the KL), the measured-teacher dynamics (a held
teacher reproduces the certified on-policy fixed point), the copy strength (a copy teacher's λ)."""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

torch = pytest.importorskip("torch")

import pcmi  # noqa: E402
from pcmi.errors import PcmiInputError  # noqa: E402
from pcmi.flows import FixedPointError, on_policy_fixed_point  # noqa: E402
from pcmi.objectives import LossMode  # noqa: E402
from pcmi.testing import log_distributions, rewards, tree_instances  # noqa: E402
from pcmi.training import grid as G  # noqa: E402
from pcmi.training.intervals import interval, spearman_interval, spearman_rho  # noqa: E402


# ----------------------------------------------------------------------------- the tiny grid end to end
@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("grid")
    logs = []
    summary = G.run_grid("tiny", out=str(out), log=logs.append)
    return summary, out, logs


def test_tiny_grid_is_complete_with_intervals(tiny_grid):
    summary, out, _ = tiny_grid
    g = G.GRIDS["tiny"]
    n_prompts = len(json.loads((out / "seeds" / "seed0.json").read_text())["prompts"])
    assert set(summary["settings"]) == set(g.settings)
    for name, s in summary["settings"].items():
        assert s["n_units"] == len(g.seeds) * n_prompts
        for k in ("tv_one_round", "tv_rl", "kl_to_base", "success", "strategy_entropy", "ood_success"):
            for stat in ("median", "mean"):
                v, lo, hi = s[k][stat]
                assert lo <= v <= hi, (name, k, stat)
        assert ("tv_own" in s) == (name != "negative")          # the null baseline has no prediction
        assert ("accept" in s) == (name == "sdsd_full_a1")      # frozen-teacher SDSD only
    for n in g.settings:   # one pretraining per seed, shared; one checkpoint per setting
        for seed in g.seeds:
            assert (out / "runs" / n / f"seed{seed}.json").exists()
            assert (out / "checkpoints" / f"seed{seed}" / f"{n}.pt").exists()
    assert sorted(os.listdir(out / "checkpoints" / "seed0")) == sorted(["pretrain.pt"] + [f"{n}.pt" for n in g.settings])


def test_tiny_grid_units_are_exact_distances(tiny_grid):
    """tv_rl is the TV to π0·exp(r/β) recomputed here from the seed's files; TV in [0, 1]."""
    _, out, _ = tiny_grid
    r = json.loads((out / "runs" / "rl" / "seed0.json").read_text())
    for u in r["units"]:
        assert 0 <= u["tv_rl"] <= 1 and u["kl_to_base"] >= 0
        assert abs(u["tv_own"] - u["tv_rl"]) < 1e-12          # rl's own prediction is the RL optimum with its β


def test_tiny_grid_rerun_skips_and_a_lost_result_is_recomputed_identically(tiny_grid):
    summary, out, _ = tiny_grid
    logs = []
    G.run_grid("tiny", out=str(out), log=logs.append)
    assert all("skipping" in m for m in logs) and len(logs) == len(G.GRIDS["tiny"].seeds)
    p = out / "runs" / "sdsd_ema" / "seed1.json"
    before = json.loads(p.read_text())
    p.unlink()                                              # a grid killed before this result was written
    logs = []
    again = G.run_grid("tiny", out=str(out), log=logs.append)
    after = json.loads(p.read_text())
    assert any("sdsd_ema" in m and "finished earlier" not in m for m in logs)
    assert [u["success"] for u in after["units"]] == [u["success"] for u in before["units"]]
    assert after["measured_teacher_dynamics"] == before["measured_teacher_dynamics"]
    assert again["settings"]["sdsd_ema"]["success"] == summary["settings"]["sdsd_ema"]["success"]


def test_grid_training_equals_the_plain_trainer(tiny_grid, tmp_path):
    """Probes (exact enumerations every few steps) draw no random numbers: the grid's SDSD policy is
    the one `pcmi train --method sdsd` trains from the same config and seed."""
    from pcmi.training.run import run_train
    _, out, _ = tiny_grid
    s = run_train(G.GRIDS["tiny"].cfg(), method="sdsd", out=str(tmp_path), seed=0, progress=False, figures=False)
    units = json.loads((out / "runs" / "sdsd_full_a1" / "seed0.json").read_text())["units"]
    for u, p in zip(units, s["prompts"]):
        assert abs(u["success"] - p["policies"]["sdsd"]["success"]) < 1e-12
        assert abs(u["tv_own"] - p["policies"]["sdsd"]["distances"]["tv_sdsd_onpolicy"]) < 1e-9


def test_tiny_grid_live_ema_probes_and_dynamics(tiny_grid):
    summary, out, _ = tiny_grid
    r = json.loads((out / "runs" / "sdsd_ema" / "seed0.json").read_text())
    steps = [p["step"] for p in r["probes"]]
    assert steps[0] == 0 and steps[-1] == r["train"]["steps"]
    assert all(st_ % G.GRIDS["tiny"].probe_every == 0 for st_ in steps)
    for p in r["probes"]:
        for q in p["prompts"]:
            assert 0 <= q["teacher_tv"] <= 1 and 0 <= q["teacher_success"] <= 1 and -1 <= q["copy_strength"] <= 1
    d = r["measured_teacher_dynamics"]
    assert all(len(x[k]) == len(steps) for x in d for k in ("segment_fixed_point", "segment_one_round"))
    # step 0 of the dynamics is π0 itself: the trained trajectory's first probe
    for x, q in zip(d, r["probes"][0]["prompts"]):
        assert abs(x["segment_fixed_point"][0]["success"] - q["success"]) < 1e-12
    t = summary["settings"]["sdsd_ema"]["measured_teacher_dynamics"]
    assert len(t["segment_fixed_point"]["success"]) == len(steps)


def test_grpo_matched_beta_meets_its_target_or_says_infeasible(tiny_grid):
    _, out, _ = tiny_grid
    for seed in G.GRIDS["tiny"].seeds:
        ref = json.loads((out / "runs" / "sdsd_full_a1" / f"seed{seed}.json").read_text())
        r = json.loads((out / "runs" / "grpo_matched" / f"seed{seed}.json").read_text())
        b = r["beta_match"]
        assert b["target_kl"] == pytest.approx(np.mean([u["kl_to_base"] for u in ref["units"]]), abs=1e-12)
        assert r["beta"] == b["beta"] == r["config"]["beta"]
        if b["feasible"]:
            assert b["kl_at_beta"] == pytest.approx(b["target_kl"], abs=1e-8)
        else:
            assert b["beta"] == G.BETA_MIN and b["target_kl"] >= b["kl_sup"]


def test_grid_reports_and_figures(tiny_grid, tmp_path):
    from pcmi.training.figures import GRID_FIGURES, write_grid_figures
    from pcmi.training.report import grid_report, main
    summary, out, _ = tiny_grid
    text = grid_report(summary)
    assert "sdsd_full_a1" in text and "[" in text and "Spearman" in text
    paths = write_grid_figures(summary, str(tmp_path), G.load_results(str(out), list(summary["settings"]), G.GRIDS["tiny"].seeds))
    assert {os.path.basename(p) for p in paths} == set(GRID_FIGURES)
    assert all(os.path.getsize(p) > 1000 for p in paths)
    assert main(["--grid", str(out / "grid.json")]) == 0


def test_grid_cli_excludes_method_and_names_unknown_grids(tmp_path):
    from pcmi.training.cli import add_train_arguments, train_command
    p = argparse.ArgumentParser()
    add_train_arguments(p)
    with pytest.raises(PcmiInputError, match="--grid excludes --method"):
        train_command(p.parse_args(["--grid", "tiny", "--method", "rl", "--out", str(tmp_path)]))
    with pytest.raises(PcmiInputError, match="--grid excludes --seed"):
        train_command(p.parse_args(["--grid", "tiny", "--seed", "3", "--out", str(tmp_path)]))
    with pytest.raises(PcmiInputError, match="unknown grid"):
        G.get_grid("huge")
    with pytest.raises(PcmiInputError, match="ckpt-dir applies to --grid only"):
        train_command(p.parse_args(["--ckpt-dir", str(tmp_path)]))
    with pytest.raises(PcmiInputError, match="grpo_matched needs sdsd_full_a1"):
        G.run_grid("tiny", out=str(tmp_path), settings=["rl", "grpo_matched"])


def test_every_grid_is_documented():
    for g in G.GRIDS.values():
        assert g.doc and g.seeds and all(n in G.BY_NAME and G.BY_NAME[n].doc for n in g.settings)
        g.cfg()                                             # a valid TrainConfig
        for n in g.settings:                                # every setting's config validates
            g.cfg().replace(**dict(G.BY_NAME[n].overrides))
    small = G.GRIDS["small"]
    assert len(small.seeds) >= 5 and set(small.settings) | set(G.REMEDY_SETTINGS) == set(G.BY_NAME)
    assert len(G.GRIDS["remedies"].seeds) >= 5 and {"sdsd_full_a1", "rl"} <= set(G.GRIDS["remedies"].settings)


# ----------------------------------------------------------------------------- intervals
def coverage(truth, draw, n_rep=200, n=40, statistic="median", interval_fn=interval, seed=0):
    """Fraction of simulated samples whose 95 % interval covers the true parameter."""
    g = np.random.default_rng(seed)
    hits = 0
    for _ in range(n_rep):
        _, lo, hi = interval_fn(draw(g, n), statistic, n_resamples=400, seed=int(g.integers(1 << 30)))
        hits += lo <= truth <= hi
    return hits / n_rep


def _exp(g, n):
    return g.exponential(size=n)


def test_interval_covers_the_median_at_about_the_nominal_rate():
    """Exponential(1) samples of 40 units: the median's interval covers ln 2 in 0.95 ± MC and
    bootstrap error (200 replications: binomial sd 0.015; the percentile median interval undercovers a little)."""
    assert 0.86 <= coverage(np.log(2), _exp) <= 0.995
    assert 0.86 <= coverage(1.0, _exp, statistic="mean") <= 0.995


def _lognormal(g, n):
    return g.lognormal(0.0, 1.5, size=n)


def test_sabotage_interval_of_the_wrong_statistic_misses():
    """The mean's interval reported as the median's (a plausible mix-up) on skewed units
    (lognormal σ = 1.5: median 1, mean 3.08): it misses the median almost always, while the
    median's own interval covers it."""
    assert coverage(1.0, _lognormal, statistic="mean") < 0.2
    assert coverage(1.0, _lognormal, statistic="median") > 0.86


def _bivariate(r):
    def draw(g, n):
        x = g.normal(size=n)
        return x, r * x + np.sqrt(1 - r * r) * g.normal(size=n)
    return draw


def spearman_coverage(r, unpaired=False, n_rep=150, n=40):
    """Coverage of the population Spearman ρ_s = (6/π)·arcsin(r/2) of a bivariate normal."""
    truth = 6 / np.pi * np.arcsin(r / 2)
    g = np.random.default_rng(1)
    hits = 0
    for _ in range(n_rep):
        a, b = _bivariate(r)(g, n)
        if unpaired:   # sabotage: resample a and b independently (breaks the pairs)
            b = g.permutation(b)
        _, lo, hi = spearman_interval(a, b, n_resamples=400, seed=int(g.integers(1 << 30)))
        hits += lo <= truth <= hi
    return hits / n_rep


def test_spearman_interval_covers_the_population_rank_correlation():
    assert 0.85 <= spearman_coverage(0.7) <= 1.0


def test_sabotage_spearman_unpaired_misses():
    assert spearman_coverage(0.7, unpaired=True) < 0.2


@settings(max_examples=30)
@given(st.lists(st.integers(0, 4), min_size=3, max_size=30), st.integers(0, 2**31 - 1))
def test_spearman_rho_is_scipys_with_ties(a, seed):
    from scipy import stats
    a = np.array(a, float)
    b = a + np.random.default_rng(seed).integers(0, 3, size=len(a))
    assume(np.ptp(a) > 0 and np.ptp(b) > 0)
    assert float(spearman_rho(a, b)) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)


def test_interval_bad_input_is_one_line():
    with pytest.raises(PcmiInputError, match="non-finite"):
        interval([1.0, np.nan, 2.0])
    with pytest.raises(PcmiInputError, match="no units"):
        interval([])
    with pytest.raises(PcmiInputError, match="unknown statistic"):
        interval([1.0, 2.0], "mode")
    with pytest.raises(PcmiInputError, match="units in a"):
        spearman_interval([1.0, 2.0, 3.0], [1.0, 2.0])
    assert interval([0.3] * 5) == (0.3, 0.3, 0.3)


# ----------------------------------------------------------------------------- β-matched GRPO
def kl_rl_closed_form(lb, r, beta):
    """KL(π0·e^{r/β}/Z ‖ π0) = E_π[r]/β − log Z, Z = p0·e^{1/β} + 1 − p0 (an independent route)."""
    p0 = float(np.exp(lb)[r == 1].sum())
    with np.errstate(divide="ignore"):                       # p0 = 1: log(1 − p0) = −inf
        log_z = np.logaddexp(np.log(p0) + 1 / beta, np.log1p(-p0))
    p = np.exp(np.log(p0) + 1 / beta - log_z)
    return p / beta - log_z


@st.composite
def base_policies(draw):
    lb = draw(log_distributions(min_n=2, max_n=6))
    r = np.array(draw(rewards(len(lb))))
    assume(0 < r.sum() < len(r))
    return lb, r


@settings(max_examples=25)
@given(st.lists(base_policies(), min_size=1, max_size=3), st.floats(0.0, 1.0))
def test_matched_beta_solves_the_kl_equation(pols, frac):
    lbs, rs = [p[0] for p in pols], [p[1] for p in pols]
    sup = np.mean([kl_rl_closed_form(lb, r, G.BETA_MIN) for lb, r in pols])
    target = frac * sup
    assume(target > np.mean([kl_rl_closed_form(lb, r, G.BETA_MAX) for lb, r in pols]) + 1e-9)
    b = G.matched_beta(lbs, rs, target)
    assert b["feasible"]
    assert np.mean([kl_rl_closed_form(lb, r, b["beta"]) for lb, r in pols]) == pytest.approx(target, abs=1e-7)


def test_sabotage_matched_beta_with_the_reverse_kl_misses():
    """β solving the other KL direction, KL(π0 ‖ π_RL), does not meet the target."""
    from scipy.optimize import brentq
    lb, r = np.log(np.array([0.5, 0.3, 0.2])), np.array([1, 1, 0])
    target = 0.1
    wrong = np.exp(brentq(lambda x: pcmi.kl(lb, pcmi.rl_optimum(lb, r, np.exp(x))) - target, np.log(1e-3), np.log(1e3)))
    assert abs(kl_rl_closed_form(lb, r, wrong) - target) > 1e-3
    assert abs(kl_rl_closed_form(lb, r, G.matched_beta([lb], [r], target)["beta"]) - target) < 1e-8


def test_matched_beta_infeasible_and_bad_target():
    lb, r = np.log(np.array([0.5, 0.3, 0.2])), np.array([1, 1, 0])
    b = G.matched_beta([lb], [r], 5.0)                      # > −log p0 = 0.223: no β reaches it
    assert not b["feasible"] and b["beta"] == G.BETA_MIN and b["kl_sup"] == pytest.approx(-np.log(0.8), abs=1e-9)
    with pytest.raises(PcmiInputError, match="KL to match"):
        G.matched_beta([lb], [r], float("nan"))


# ----------------------------------------------------------------------------- measured-teacher dynamics
@settings(max_examples=25)
@given(tree_instances())
def test_held_teacher_dynamics_reach_the_certified_fixed_point(inst):
    """Teachers held fixed in every segment: the chain of segment fixed points ends at the certified
    on-policy fixed point of full α = 1 with that frozen teacher (pcmi.flows, natural rounds)."""
    assume(pcmi.metrics.success(inst.log_base, inst.reward) > 0.05)
    try:
        fp = on_policy_fixed_point(inst, LossMode("full"), "frozen", tol=1e-10, max_rounds=3000)
    except (FixedPointError, PcmiInputError):
        assume(False)
    log_T = inst.teacher.log_rows(np.arange(inst.n))
    chain = G.measured_teacher_dynamics(inst.log_base, inst.reward, inst.tree, [log_T] * 3)
    assert len(chain) == 4 and np.allclose(chain[0], inst.log_base)
    assert pcmi.total_variation(chain[-1], fp.log_pi) < 1e-6


def test_sabotage_dynamics_with_fixed_demonstrations_stop_at_one_round():
    """D held at π0(·|r=1) (not on-policy) gives the one-round optimum, not the on-policy fixed point:
    on the worked example of theory.md §3 they differ (odds 2.90 vs the collapse)."""
    lb = np.log(np.array([0.5, 0.3, 0.2]))
    r = np.array([1, 1, 0])
    t = pcmi.LatentStrategyTeacher(np.log([0.5, 0.3, 0.2]), np.log(np.eye(3) + 1e-300), eps=0.1)
    inst = pcmi.Instance(lb, r, t, pcmi.demos_from_successes(lb, r))
    log_T = t.log_rows(np.arange(3))
    chain = G.measured_teacher_dynamics(lb, r, inst.tree, [log_T])
    one = pcmi.sdsd_token_optimum(inst)
    assert pcmi.total_variation(chain[-1], one) > 0.1
    p = np.exp(one)
    assert p[0] / p[1] == pytest.approx(2.90, abs=0.01)


@settings(max_examples=30)
@given(log_distributions(min_n=2, max_n=6), st.floats(0.0, 1.0), st.data())
def test_copy_strength_of_a_copy_teacher_is_its_lambda(lb, lam, data):
    """CopyTeacher(π, λ): T(y'|y') − π(y') = λ(1 − π(y')), so κ = λ·Σ D(y')(1 − π(y')); a teacher
    that ignores the demonstration (rows = π) has κ = 0 and success Σ π r."""
    n = len(lb)
    demos = np.array(sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=1))))
    w = data.draw(log_distributions(n=len(demos)))
    pi = np.exp(lb)
    rows = np.log(lam * np.eye(n)[demos] + (1 - lam) * pi[None, :] + 1e-300)
    assert G.copy_strength(rows, demos, w, lb) == pytest.approx(lam * np.exp(w) @ (1 - pi[demos]), abs=1e-9)
    flat = np.tile(lb, (len(demos), 1))
    assert G.copy_strength(flat, demos, w, lb) == pytest.approx(0.0, abs=1e-12)
    r = (np.arange(n) % 2).astype(float)
    assert G.teacher_success(flat, r, w) == pytest.approx(pi @ r, abs=1e-12)


def test_grid_command_on_a_finished_grid_rewrites_summary_and_figures(tiny_grid, capsys):
    """`pcmi train --grid tiny --out DIR` on a finished grid trains nothing: it prints the skips, where the
    results are and the tables, and writes grid.json and the figures."""
    from pcmi.training.cli import add_train_arguments, train_command
    from pcmi.training.figures import GRID_FIGURES
    _, out, _ = tiny_grid
    p = argparse.ArgumentParser()
    add_train_arguments(p)
    assert train_command(p.parse_args(["--grid", "tiny", "--out", str(out)])) == 0
    text = capsys.readouterr().out
    assert "skipping" in text and f"grid tiny in {out}" in text and "median TV to own fixed point" in text
    for f in GRID_FIGURES:
        assert (out / f).stat().st_size > 1000


def test_checkpoint_from_before_a_new_config_field_still_matches_at_its_default():
    """A run key without a field that the current TrainConfig has matches iff the run leaves it at its
    default; a changed field, another seed or an unknown field never match."""
    from pcmi.training import TrainConfig
    from pcmi.training.train import _run_key, checkpoint_matches
    cfg = G.GRIDS["tiny"].cfg()
    key = _run_key(cfg, 3)
    field_ = "alpha"                                   # stands for a field added after the checkpoint
    old = {"run": {"seed": 3, "config": {k: v for k, v in key["config"].items() if k != field_}}}
    assert checkpoint_matches(old, cfg, 3)
    assert not checkpoint_matches(old, cfg.replace(alpha=0.5), 3)
    assert not checkpoint_matches(old, cfg, 4)
    assert not checkpoint_matches({"run": {"seed": 3, "config": {**key["config"], "unknown": 1}}}, cfg, 3)
    assert not checkpoint_matches({"run": {"seed": 3, "config": {**key["config"], "post_steps": 7}}}, cfg, 3)
    assert TrainConfig().alpha == cfg.alpha



# ----------------------------------------------------------------------------- remedies' predictions
@settings(max_examples=15, deadline=None)
@given(tree_instances())
def test_blend_prediction_solves_the_blend_fixed_point_equation(inst):
    """blend_fixed_point: π* = blend_optimum(D = π*(·|r=1)) with π0's teacher and reference, β = 0.1."""
    from pcmi.remedies import blend_optimum
    lp, tol = G.blend_fixed_point(inst, 0.9, 0.1)
    assume(lp is not None)
    again = blend_optimum(inst.with_demos(pcmi.demos_from_successes(lp, inst.reward)), 0.9, beta=0.1,
                          log_ref=inst.log_base)
    assert pcmi.total_variation(again, lp) <= 1e-9


def test_remedy_prediction_keys_name_their_law():
    cfg = G.GRIDS["remedies"].cfg()
    keys = {n: G.prediction_key(G.BY_NAME[n], cfg.replace(**dict(G.BY_NAME[n].overrides))) for n in G.REMEDY_SETTINGS}
    assert keys["blend_0.98"] == "blend:0.98:0.1" and keys["sdsd_inverse_prob"].endswith("|inverse_prob:1.0")
    assert len(set(keys.values())) == len(keys)  # no two remedies share (and so overwrite) a cached prediction


def test_demo_law_of_the_trainer_is_the_proxy_law():
    """inverse_prob at γ = 1 is uniform over the correct rollouts the policy reaches."""
    cfg = G.GRIDS["remedies"].cfg().replace(demo_choice="inverse_prob", demo_gamma=1.0)
    law = G.demo_law_of(cfg)
    lp = np.log([0.5, 0.2, 0.2, 0.1, 0.0])
    D = np.exp(law(lp, np.array([1, 1, 0, 1, 1])))
    assert np.allclose(D, [1 / 3, 1 / 3, 0, 1 / 3, 0])
    assert G.demo_law_of(cfg.replace(demo_choice="uniform")) is None
