"""The data behind each figure, checked against what the theory guarantees (reduced sizes),
plus one rendering smoke test and the CLI's error contract."""
from __future__ import annotations

import glob
import json
import os
import re
import stat

import numpy as np
import pytest

from pcmi.errors import PcmiInputError
from pcmi.figures import FIGURES, MANIFEST, check_out_dir, figure_names, run_figures, sha256_of
from pcmi.figures import divergence, ood, passk, phase, rounds, tilt, token_vs_seq
from pcmi.figures._common import round_sig, write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def exact_pass_at_k(ps, ks):
    """1 − (1 − p)^k averaged over prompts, recomputed here without the library."""
    ps, ks = np.asarray(ps, float), np.asarray(ks, float)
    return (1 - (1 - ps[None, :]) ** ks[:, None]).mean(axis=1)


@pytest.fixture(scope="module")
def passk_data():
    return passk.compute(seeds=(0, 1, 2), k_max=64)


@pytest.fixture(scope="module")
def ood_data():
    return ood.compute(seeds=(0, 1, 2, 3), k_max=64)


def test_registry_lists_every_figure():
    assert FIGURES == ("tilt", "passk", "rounds", "ood", "phase", "token_vs_seq", "divergence", "collapse",
                       "frontier", "discovery", "atlas")
    assert figure_names() == list(FIGURES) and figure_names("phase") == ["phase"]


def test_tilt_rl_keeps_ratios_and_sdsd_matches_success():  # P1, P2
    d = tilt.compute()
    assert d["n_correct"] == len(d["rows"]) > 1
    assert max(abs(r["log_ratio_rl"]) for r in d["rows"]) < 1e-9
    assert d["summary"]["rl"]["ratio_distortion"] < 1e-9
    if d["rl_beta"] is not None:
        assert d["summary"]["rl"]["success"] == pytest.approx(d["summary"]["sdsd"]["success"], abs=1e-9)
    # SDSD's tilt is constant inside a route for a route-copying teacher (ratios inside a strategy kept, P4)
    for z in {r["route"] for r in d["rows"]}:
        tilts = [r["log_ratio_sdsd"] for r in d["rows"] if r["route"] == z]
        assert max(tilts) - min(tilts) < 1e-9
    ranks = [r["p_base"] for r in d["rows"]]
    assert ranks == sorted(ranks, reverse=True)


def test_passk_curves_are_exact_from_stored_success(passk_data):
    d = passk_data
    for key, field in (("pass_at_k", "success"), ("ood_pass_at_k", "ood_success")):
        for pol, curve in d[key].items():
            ps = [p[field][pol] for p in d["prompts"]]
            np.testing.assert_allclose(curve, exact_pass_at_k(ps, d["k"]), atol=1e-12)
    assert d["k"][0] == 1 and d["k"][-1] == 64
    # β is matched on the mean pass@1
    assert d["pass_at_k"]["rl"][0] == pytest.approx(d["pass_at_k"]["sdsd"][0], abs=1e-9)
    assert all(0 < p["success"]["base"] < 1 for p in d["prompts"])  # failing rollouts exist


def test_passk_per_prompt_comparisons_follow_stored_success(passk_data):
    d = passk_data
    for k_key, field in (("in@1", "success"), ("ood@1", "ood_success")):
        for p, h in zip(d["prompts"], d["per_prompt_higher"][k_key]):
            a, b = p[field]["sdsd"], p[field]["rl"]
            assert h == ("tie" if abs(a - b) <= 1e-12 else "sdsd" if a > b else "rl")
    fam = d["family"]
    assert fam["seeds"] == [0, 1, 2]
    n_prompts = sum(fam["prompts_higher"]["in@1"].values())
    assert all(sum(c.values()) == n_prompts for c in fam["prompts_higher"].values())


def test_ood_all_correct_sdsd_never_above_rl(ood_data):  # P8
    s = ood_data["settings"]["all_correct"]
    assert s["family"]["fraction_sdsd_ood_at_most_rl"] == 1.0 and not s["family"]["counterexamples"]
    for p in s["prompts"]:
        assert p["success"]["base"] == pytest.approx(1.0) and p["success"]["sdsd"] == pytest.approx(1.0)
        assert p["ood_success"]["rl"] == pytest.approx(p["ood_success"]["base"], abs=1e-12)  # π_RL = π0
        sd = exact_pass_at_k([p["ood_success"]["sdsd"]], ood_data["k"])
        rl = exact_pass_at_k([p["ood_success"]["rl"]], ood_data["k"])
        assert np.all(sd <= rl + 1e-12)
    assert np.all(np.array(s["ood_pass_at_k"]["sdsd"]) <= np.array(s["ood_pass_at_k"]["rl"]) + 1e-12)


def test_ood_failing_setting_reports_a_fraction(ood_data):
    f = ood_data["settings"]["failing"]["family"]
    holds = [sd <= rl + 1e-12 for _, _, rl, sd in f["rl_vs_sdsd_ood_success"]]
    assert f["fraction_sdsd_ood_at_most_rl"] == pytest.approx(np.mean(holds))
    assert len(f["counterexamples"]) == holds.count(False)


def test_rounds_rl_keeps_ratios_and_sdsd_collapses():  # P1, P7
    d = rounds.compute(n_rounds=4)
    for name, s in d["settings"].items():
        assert all(r["ratio_distortion"] < 1e-9 for r in s["series"]["rl"])
        assert s["sdsd_entropy_nonincreasing"]
        assert len(s["series"]["sdsd"]) == 5
    allc = d["settings"]["all_correct"]["series"]
    assert all(r["ratio_distortion"] < 1e-9 for r in allc["forward_kl"])  # P7: forward KL keeps ratios
    ent = [r["strategy_mass_entropy"] for r in allc["sdsd"]]
    assert ent[-1] < ent[0]


def test_phase_all_correct_route_copying_amplifies_everywhere():  # P4
    d = phase.compute(n=6)
    p1 = d["panels"]["route_copying_all_correct"]
    assert p1["fraction_amplified"] == 1.0 and p1["min_gain"] > 0
    assert p1["closed_form_max_abs_diff"] < 1e-9
    p2 = d["panels"]["route_copying_failing"]
    assert p2["closed_form_max_abs_diff"] < 1e-9
    assert p2["fraction_amplified"] == pytest.approx(np.mean(np.array(p2["gain"]) > 1e-12))
    p3 = d["panels"]["soft_route_all_correct"]
    assert np.allclose(p3["gain"][0], 0.0, atol=1e-9)  # κ = 0: identical strategies, teacher = π0


def test_token_vs_seq_distance_zero_exactly_where_z_is_flat():  # P5
    d = token_vs_seq.compute(n=5)
    assert d["p5_iff_holds_on_every_point"]
    for s in d["sweeps"].values():
        for r in s["rows"]:
            assert (r["log_z_spread"] <= 1e-10) == (r["tv"] <= 1e-10)
    copy0 = d["sweeps"]["copy"]["rows"][0]
    assert copy0["value"] == 0 and copy0["tv"] < 1e-12  # lam = 0: T = π0, Z ≡ 1
    assert d["sweeps"]["copy"]["rows"][-1]["tv"] > 1e-3


def test_divergence_endpoints_and_rl_entropy():
    d = divergence.compute(alphas=(0.5,))
    for t in d["teachers"].values():
        rows = {r["objective"]: r for r in t["rows"]}
        base = rows["base"]
        for name, r in rows.items():
            if name.startswith("RL"):  # P1: RL keeps the strategy masses
                assert r["strategy_mass_entropy"] == pytest.approx(base["strategy_mass_entropy"], abs=1e-9)
            if "kkt_residual" in r:
                assert r["kkt_residual"] < 1e-6
        matched = [r for n, r in rows.items() if "success = SDSD" in n]
        for r in matched:
            assert r["success"] == pytest.approx(rows["reverse KL (SDSD)"]["success"], abs=1e-9)


def test_run_figures_smoke(tmp_path):
    written = run_figures(out=tmp_path / "figs", only="tilt", progress=False)
    files = sorted(os.listdir(tmp_path / "figs"))
    assert files == [MANIFEST, "tilt.json", "tilt.pdf", "tilt.png"]
    assert len(written["tilt"]) == 3
    data = json.loads((tmp_path / "figs" / "tilt.json").read_text())
    assert data["name"] == "tilt" and data["rows"]
    assert (tmp_path / "figs" / "tilt.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "figs" / "tilt.pdf").read_bytes()[:4] == b"%PDF"


def test_unknown_figure_is_one_line_value_error(tmp_path):
    with pytest.raises(ValueError, match="unknown figure 'nope'") as e:
        run_figures(out=tmp_path, only="nope")
    assert "\n" not in str(e.value)


def test_unwritable_out_is_one_line_value_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="not writable") as e:
        check_out_dir(blocker / "sub")
    assert "\n" not in str(e.value)


def test_cli_unwritable_out_exits_2_with_one_line(tmp_path, capsys):
    from pcmi.cli import main
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rc = main(["figures", "--out", str(blocker / "sub")])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "not writable" in err


def test_cli_unknown_only_exits_2(tmp_path, capsys):
    from pcmi.cli import main
    assert main(["figures", "--out", str(tmp_path), "--only", "nope"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def _umask_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def test_rerun_gives_identical_bytes_and_plain_permissions(tmp_path, capsys):
    """Issue 8: figure data is deterministic; files get the umask's mode, not mkstemp's 0600."""
    a, b = tmp_path / "a", tmp_path / "b"
    run_figures(out=a, only="tilt", progress=False)
    run_figures(out=b, only="tilt", progress=False)
    first = {f: (a / f).read_bytes() for f in ("tilt.json", "tilt.pdf", "tilt.png")}
    run_figures(out=a, only="tilt")  # a rerun into its own folder replaces its own files
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "3 replaced" in line and "3 of them byte-identical" in line
    for f, data in first.items():
        assert (a / f).read_bytes() == data == (b / f).read_bytes(), f
        assert stat.S_IMODE(os.stat(a / f).st_mode) == _umask_mode()
    assert b"CreationDate" not in first["tilt.pdf"]
    manifest = json.loads((a / MANIFEST).read_text())["files"]
    assert manifest == {f: sha256_of(a / f) for f in first}
    assert sorted(os.listdir(a)) == sorted([*first, MANIFEST])  # no temporary file left behind


def test_json_floats_keep_twelve_significant_digits(tmp_path):
    write_json(str(tmp_path / "x.json"), {"a": 0.1 + 0.2, "b": [1 / 3, -0.0, 2.5e-300], "c": float("inf")})
    d = json.loads((tmp_path / "x.json").read_text())
    assert d == {"a": 0.3, "b": [0.333333333333, 0.0, 2.5e-300], "c": None}
    assert round_sig(123456.7890123456) == 123456.789012


@pytest.mark.parametrize("kind", ["foreign", "edited", "bad_manifest"])
def test_existing_files_not_written_by_figures_are_refused(tmp_path, kind, capsys):
    out = tmp_path / "figs"
    out.mkdir()
    (out / "training").mkdir()
    (out / "training" / "keep.txt").write_text("mine")
    if kind == "foreign":
        (out / "tilt.png").write_bytes(b"my own picture")
    else:
        (out / "tilt.png").write_bytes(b"written by pcmi figures")
        (out / MANIFEST).write_text(json.dumps({"kind": "pcmi figures manifest",
                                                "files": {"tilt.png": sha256_of(out / "tilt.png")}}))
        if kind == "edited":
            (out / "tilt.png").write_bytes(b"edited by the user")
        else:
            (out / MANIFEST).write_text("[]")
    before = {p: open(p, "rb").read() for p in glob.glob(str(out / "**"), recursive=True) if os.path.isfile(p)}
    with pytest.raises(PcmiInputError, match="--overwrite") as e:
        run_figures(out=out, only="tilt", progress=False)
    assert "\n" not in str(e.value) and ("tilt.png" in str(e.value) or MANIFEST in str(e.value))
    after = {p: open(p, "rb").read() for p in glob.glob(str(out / "**"), recursive=True) if os.path.isfile(p)}
    assert after == before  # refused before anything was written
    from pcmi.cli import main
    assert main(["figures", "--out", str(out), "--only", "tilt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0]


def test_overwrite_replaces_and_never_deletes(tmp_path):
    out = tmp_path / "figs"
    (out / "training").mkdir(parents=True)
    (out / "training" / "keep.txt").write_text("mine")
    (out / "notes.md").write_text("mine too")
    (out / "tilt.png").write_bytes(b"my own picture")
    run_figures(out=out, only="tilt", overwrite=True, progress=False)
    assert (out / "tilt.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "training" / "keep.txt").read_text() == "mine" and (out / "notes.md").read_text() == "mine too"
    assert set(json.loads((out / MANIFEST).read_text())["files"]) == {"tilt.json", "tilt.pdf", "tilt.png"}


# --- the numbers quoted in docs/figures/*.md come from the figure data -----------------------

from docnumbers import NUMBER, numbers_in as _numbers_in, quoted_matches as _quoted_matches  # noqa: E402


@pytest.mark.parametrize("name", FIGURES)
def test_numbers_quoted_in_docs_are_in_the_figure_data(name):
    text = open(os.path.join(ROOT, "docs", "figures", f"{name}.md")).read()
    values = _numbers_in(json.load(open(os.path.join(ROOT, "figures", f"{name}.json"))), [])
    quoted = list(NUMBER.finditer(text))
    assert quoted
    missing = [m.group(0) for m in quoted if not _quoted_matches(m.group(1), bool(m.group(2)), values)]
    assert not missing, f"docs/figures/{name}.md quotes numbers absent from figures/{name}.json: {missing}"


def test_docs_number_check_can_fail():
    values = [0.860498500881, 0.975, 1.7763568394e-15]
    assert _quoted_matches("0.860", False, values) and not _quoted_matches("0.861", False, values)
    assert _quoted_matches("97.5", True, values) and not _quoted_matches("97.6", True, values)
    assert _quoted_matches("2e-15", False, values) and not _quoted_matches("3e-15", False, values)


def test_rounds_doc_states_the_round_entropy_reaches_zero():
    d = json.load(open(os.path.join(ROOT, "figures", "rounds.json")))
    ent = [r["strategy_mass_entropy"] for r in d["settings"]["all_correct"]["series"]["sdsd"]]
    first_zero = next(k for k, h in enumerate(ent) if round(h, 3) == 0)
    text = open(os.path.join(ROOT, "docs", "figures", "rounds.md")).read()
    assert f"0.000 by round {first_zero} " in text


# --- figure `collapse` (issue 9 item 4): flows and on-policy fixed points over modes × α × τ ----------

from hypothesis import given, settings as hyp_settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from pcmi.dynamics import sdsd_rounds  # noqa: E402
from pcmi.estimators import expected_gradient  # noqa: E402
from pcmi.figures import collapse  # noqa: E402
from pcmi.figures._common import jsonable, prompt_instances  # noqa: E402
from pcmi.flows import FixedPoint, expected_gradient_flow  # noqa: E402
from pcmi.instance import demos_from_successes  # noqa: E402
from pcmi.objectives import LossMode  # noqa: E402
from pcmi.tabular import TabularPolicy  # noqa: E402
from pcmi.testing import graph_instances  # noqa: E402

#: a reduced grid: one setting, three modes, two α, frozen / EMA / live, 20 steps (a few seconds)
COLLAPSE_SMALL = dict(settings={"failing": collapse.SETTINGS["failing"]}, modes=("full", "topk_student", "sequence"),
                      alphas=(0.5, 1.0), taus=(0.0, 0.2, 1.0), n_steps=20, workers=1)


@pytest.fixture(scope="module")
def collapse_small():
    """The reduced data as the JSON file holds it (rounded floats, string keys)."""
    return json.loads(json.dumps(jsonable(collapse.compute(**COLLAPSE_SMALL))))


def _collapse_instance(setting):
    """The figure's instance rebuilt from the `rounds` constants (not through collapse.py)."""
    g, [(task, inst, ro)] = prompt_instances(rounds.GRAPH, rounds.SETTINGS[setting], collapse.TEACHER, prompts=1)
    return inst


def _points(d):
    """(where, cell or None, metrics) for π0 and every flow end and fixed point of one setting."""
    yield "base", None, d["base"]
    for _, c in collapse.cells_of(d):
        yield "flow", c, c["flow"]
        if c["fixed_point"]["converged"]:
            yield "fixed_point", c, c["fixed_point"]


def test_collapse_certificates_are_honest(collapse_small):
    """A cell is drawn as converged only with a certificate within tol; otherwise it has an error
    message and no fixed-point numbers at all."""
    d = collapse_small
    assert d["n_steps"] == 20 and d["eta"] == collapse.ETA and d["tol"] == collapse.TOL
    for s in d["settings"].values():
        for m, c in collapse.cells_of(s):
            fp = c["fixed_point"]
            assert c["schedule"] == ("frozen" if c["tau"] == 0 else "live" if c["tau"] == 1 else "ema")
            if fp["converged"]:
                assert fp["certified"] and fp["grad_norm"] <= d["tol"] and fp["teacher_gap"] <= d["tol"]
                assert 0 <= fp["rounds"] <= fp["max_rounds"] == collapse.default_max_rounds(c["tau"])
            else:
                assert fp["error"] and "\n" not in fp["error"]
                assert not {"success", "strategy_mass_entropy", "ood_success"} & set(fp)
        assert s["summary"]["cells"] == sum(1 for _ in collapse.cells_of(s))


def test_collapse_entropy_and_ood_follow_from_the_stored_route_masses(collapse_small):
    """H = −Σ m log m of the stored masses, and OOD success = success·(1 − m_{z*}) (every correct
    rollout that avoids the blocked concept takes another route)."""
    for s in collapse_small["settings"].values():
        z = str(s["dominant_route"])
        for where, c, pt in _points(s):
            m = np.array(list(pt["strategy_masses"].values()))
            assert m.sum() == pytest.approx(1.0, abs=1e-9)
            nz = m[m > 0]
            assert pt["strategy_mass_entropy"] == pytest.approx(float(-(nz * np.log(nz)).sum()), abs=1e-9)
            assert pt["ood_success"] == pytest.approx(pt["success"] * (1 - pt["strategy_masses"][z]), abs=1e-9)


def test_sabotage_collapse_ood_identity_rejects_the_wrong_route(collapse_small):
    s = collapse_small["settings"]["failing"]
    wrong = next(k for k in s["base"]["strategy_masses"] if k != str(s["dominant_route"]))
    b = s["base"]
    assert abs(b["ood_success"] - b["success"] * (1 - b["strategy_masses"][wrong])) > 1e-3


def _fixed_point_is_token_rounds_limit(fp: dict, inst, teacher: str) -> bool:
    """full α = 1: the fixed point is the limit of the §4 token-level rounds (closed form per round)."""
    last = sdsd_rounds(inst, 60, teacher=teacher, level="token")[-1]
    return (abs(fp["strategy_mass_entropy"] - last.strategy_mass_entropy) <= 1e-6
            and abs(fp["success"] - last.success) <= 1e-6)


def test_collapse_full_reverse_kl_fixed_points_are_the_token_rounds_limits(collapse_small):
    inst = _collapse_instance("failing")
    modes = collapse_small["settings"]["failing"]["modes"]
    for m in ("full", "sequence"):  # sequence = full α = 1 for this teacher (theory.md §9)
        grid = modes[m]
        j = [c["alpha"] for c in grid[0]].index(1.0)
        frozen = next(row[j] for row in grid if row[j]["tau"] == 0)["fixed_point"]
        live = next(row[j] for row in grid if row[j]["tau"] == 1)["fixed_point"]
        assert _fixed_point_is_token_rounds_limit(frozen, inst, "frozen")
        assert _fixed_point_is_token_rounds_limit(live, inst, "live")
        assert live["strategy_mass_entropy"] < 1e-6 < frozen["strategy_mass_entropy"]  # P7: live collapses


def test_sabotage_collapse_fixed_point_that_is_only_the_flow_end(monkeypatch):
    """A cell that certifies the flow's end (3 steps) as the fixed point must fail the check."""
    def fake_fixed_point(inst, mode, kind, rate, *, tol, max_rounds, start, state):
        return FixedPoint(mode, kind, start, 0.0, 0.0, 0, tol, state)
    monkeypatch.setattr(collapse, "on_policy_fixed_point", fake_fixed_point)
    d = collapse.compute(settings={"failing": collapse.SETTINGS["failing"]}, modes=("full",), alphas=(1.0,),
                         taus=(0.0,), n_steps=3, workers=1)
    fp = d["settings"]["failing"]["modes"]["full"][0][0]["fixed_point"]
    assert not _fixed_point_is_token_rounds_limit(fp, _collapse_instance("failing"), "frozen")


def test_collapse_sampled_flow_is_the_full_reverse_kl_flow(collapse_small):
    """The figure shows full α = 1's cells as `sampled`: the sampled-token flow, run here, agrees."""
    inst = _collapse_instance("failing")
    s = collapse_small["settings"]["failing"]
    grid = s["modes"]["full"]
    j1, j5 = [c["alpha"] for c in grid[0]].index(1.0), [c["alpha"] for c in grid[0]].index(0.5)
    for row in grid:
        kind, rate = collapse.schedule_of_tau(row[j1]["tau"])
        fl = expected_gradient_flow(inst, LossMode("sampled"), kind, rate, eta=collapse_small["eta"],
                                    n_steps=collapse_small["n_steps"])
        h = fl.records[-1].strategy_mass_entropy
        assert h == pytest.approx(row[j1]["flow"]["strategy_mass_entropy"], abs=1e-12)
        assert abs(h - row[j5]["flow"]["strategy_mass_entropy"]) > 1e-3  # sabotage: not every α would pass
        assert row[j1]["sampled_gradient_gap"] <= 1e-12
    assert s["summary"]["sampled_equals_full_alpha1"]["identical"]


@hyp_settings(max_examples=15)
@given(case=graph_instances(teacher={"kind": "route_copying", "eps": 0.1}),
       alpha=st.sampled_from([0.0, 0.25, 0.5, 1.0]), of=st.sampled_from(["student", "teacher"]),
       shift=st.lists(st.floats(-3, 3), min_size=64, max_size=64))
def test_top1_renormalized_gradient_vanishes_everywhere(case, alpha, of, shift):
    """k = 1 without tail renormalizes p and q to the same point mass: D_α = 0 and G = 0 at every
    policy, so the figure's shortcut (G(π0) = 0 ⇒ the N-step flow is π0) is exact for these cells."""
    inst, _ = case
    pol = TabularPolicy.from_log_probs(inst.tree, inst.log_base)
    theta = pol.theta.copy()
    fin = np.isfinite(theta)
    theta[fin] += np.resize(np.array(shift), fin.sum())
    pol = pol.with_theta(theta)
    log_D = demos_from_successes(pol.log_seq, inst.reward)
    rep = expected_gradient(pol, inst.teacher, log_D, LossMode("topk", alpha, 1, of, False))
    assert np.all(rep.grad == 0)


def test_sabotage_top1_with_tail_has_a_gradient():
    inst = _collapse_instance("failing")
    pol = TabularPolicy.from_log_probs(inst.tree, inst.log_base)
    rep = expected_gradient(pol, inst.teacher, inst.log_demos, LossMode("topk", 0.5, 1, "student", True))
    assert rep.norm > 1e-3


def test_collapse_stationary_cells_equal_the_iterated_flow(collapse_small):
    inst = _collapse_instance("failing")
    s = collapse_small["settings"]["failing"]
    for row in s["modes"]["topk_student"]:
        for c in row:
            assert c["flow"]["grad_norm_at_pi0"] == 0 and c["flow"]["steps_iterated"] == 0
            assert c["fixed_point"]["rounds"] == 0
            for k in ("success", "strategy_mass_entropy", "ood_success"):
                assert c["flow"][k] == pytest.approx(s["base"][k], abs=1e-12)
                assert c["fixed_point"][k] == pytest.approx(s["base"][k], abs=1e-12)
    kind, rate = collapse.schedule_of_tau(0.2)
    fl = expected_gradient_flow(inst, LossMode("topk", 0.5, 1, "student", False), kind, rate, n_steps=20)
    theta0 = TabularPolicy.from_log_probs(inst.tree, inst.log_base).theta
    assert np.array_equal(fl.policy.theta, theta0)  # iterated 20 steps: still exactly π0


def test_collapse_unconverged_fixed_points_are_marked_not_hidden():
    d = collapse.compute(settings={"all_correct": collapse.SETTINGS["all_correct"]}, modes=("full",),
                         alphas=(0.5, 1.0), taus=(0.0, 0.2), n_steps=5, max_rounds=1, workers=1)
    s = d["settings"]["all_correct"]
    nc = [(m, c) for m, c in collapse.cells_of(s) if not c["fixed_point"]["converged"]]
    assert nc and all("did not reach a fixed point in 1 rounds" in c["fixed_point"]["error"] for _, c in nc)
    assert s["summary"]["not_converged"] == [[m, c["alpha"], c["tau"]] for m, c in nc]
    fig = collapse.draw(json.loads(json.dumps(jsonable(d))))
    texts = [t.get_text() for ax in fig.get_axes() for t in ax.texts]
    dup = sum(1 for m, c in nc if m == "full" and c["alpha"] == 1)  # also drawn as `sampled`
    assert texts.count("n.c.") == 2 * (len(nc) + dup)  # two fixed-point rows per cell


def test_collapse_workers_give_identical_data():
    size = dict(settings={"all_correct": collapse.SETTINGS["all_correct"]}, modes=("full", "sequence"),
                alphas=(1.0,), taus=(0.0, 1.0), n_steps=5)
    assert jsonable(collapse.compute(**size, workers=1)) == jsonable(collapse.compute(**size, workers=2))


@pytest.mark.parametrize("kw, msg", [(dict(modes=("nope",)), "unknown mode 'nope'"),
                                     (dict(taus=(1.5,)), "tau must lie in"),
                                     (dict(alphas=(2.0,)), "alpha must lie in")])
def test_collapse_bad_grid_is_one_line_error(kw, msg):
    with pytest.raises(PcmiInputError, match=msg) as e:
        collapse.compute(**{**dict(settings={"all_correct": collapse.SETTINGS["all_correct"]}, n_steps=1,
                                   workers=1, modes=("full",), alphas=(1.0,), taus=(0.0,)), **kw})
    assert "\n" not in str(e.value)


def test_collapse_draws_one_heatmap_per_mode_row_and_setting(collapse_small):
    d = collapse_small
    fig = collapse.draw(d)
    heat = [ax for ax in fig.get_axes() if ax.images]
    # α modes full, topk_student + one α = 1 panel (sequence, sampled); 3 rows; 1 setting
    assert len(heat) == 3 * 3
    assert [len(p["columns"]) for p in collapse.panels(d["settings"]["failing"])] == [2, 2, 2]


COLLAPSE_ROW = re.compile(r"^\| (\w+) \| (\w+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+|n\.c\.) \| "
                          r"([\d.]+|n\.c\.) \| ([\d.]+|n\.c\.) \| (\d+|–) \| ([\de.+-]+|–) \|$", re.M)


def collapse_table_mismatches(text: str, data: dict) -> list[str]:
    """Rows of the page's table that disagree with the data (3 decimals; ‖G‖ to one digit)."""
    bad = []
    rows = COLLAPSE_ROW.findall(text)
    for setting, mode, a, t, h_n, h_fp, h_ood, succ, rounds_, g in rows:
        c = next(c for row in data["settings"][setting]["modes"][mode] for c in row
                 if c["alpha"] == float(a) and c["tau"] == float(t))
        fp = c["fixed_point"]
        want = [f"{c['flow']['strategy_mass_entropy']:.3f}"]
        want += ([f"{fp[k]:.3f}" for k in ("strategy_mass_entropy", "ood_success", "success")]
                 + [str(fp["rounds"]), f"{fp['grad_norm']:.0e}"] if fp["converged"] else ["n.c."] * 3 + ["–", "–"])
        if [h_n, h_fp, h_ood, succ, rounds_, g] != want:
            bad.append(f"{setting} {mode} α={a} τ={t}: page {[h_n, h_fp, h_ood, succ, rounds_, g]} data {want}")
    return bad if rows else ["no table rows found"]


def _collapse_page_and_data():
    text = open(os.path.join(ROOT, "docs", "figures", "collapse.md")).read()
    return text, json.load(open(os.path.join(ROOT, "figures", "collapse.json")))


def test_collapse_doc_table_and_headlines_match_the_data():
    text, d = _collapse_page_and_data()
    assert len(COLLAPSE_ROW.findall(text)) == 24
    assert collapse_table_mismatches(text, d) == []
    assert f"N = {d['n_steps']} steps" in text and f"η = {d['eta']:g}" in text
    s_ok, s_fail = d["settings"]["all_correct"]["summary"], d["settings"]["failing"]["summary"]
    n_ok, n_fail = s_ok["tau_positive_moved_certified"], s_fail["tau_positive_moved_certified"]
    assert s_ok["tau_positive_collapsed"] == n_ok and s_fail["tau_positive_collapsed"] == n_fail
    assert f"{n_ok} of {n_ok} with every rollout correct, {n_fail} of {n_fail} with failing" in text
    assert s_ok["collapsed_onto_routes"] == s_fail["collapsed_onto_routes"] == [2] and "dominant route 2" in text
    h_ok = s_ok["max_fixed_point_entropy_tau_positive"]["strategy_mass_entropy"]
    h_fail = s_fail["max_fixed_point_entropy_tau_positive"]["strategy_mass_entropy"]
    assert f"at most {h_ok:.0e}".replace("e-0", "e-") in text and f"({h_fail:.0e}".replace("e-0", "e-") in text
    n_student = sum(1 for m, a, t in s_ok["not_converged"] if m == "topk_student_tail")
    assert f"{n_student} cells are n.c." in text


def test_sabotage_collapse_doc_table_check_catches_a_wrong_number():
    text, d = _collapse_page_and_data()
    row = "| failing | full | 0.5 | 0.05 | 0.123 |"
    assert row in text
    assert collapse_table_mismatches(text.replace(row, "| failing | full | 0.5 | 0.05 | 0.124 |"), d)
    assert collapse_table_mismatches(text.replace("| 2374 |", "| 2375 |"), d)
