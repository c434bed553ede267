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


def test_registry_lists_seven_figures():
    assert FIGURES == ("tilt", "passk", "rounds", "ood", "phase", "token_vs_seq", "divergence")
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

NUMBER = re.compile(r"(?<![\w.=])([−-]?\d+\.\d+(?:e[−-]?\d+)?|\d+e[−-]\d+)(%?)")


def _numbers_in(x, out):
    """Every number in a JSON value (strings such as "RL β=3.25" included)."""
    if isinstance(x, dict):
        for v in x.values():
            _numbers_in(v, out)
    elif isinstance(x, list):
        for v in x:
            _numbers_in(v, out)
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        out.append(float(x))
    elif isinstance(x, str):
        out += [float(m) for m in re.findall(r"-?\d+\.\d+|-?\d+", x)]
    return out


def _quoted_matches(text: str, percent: bool, values) -> bool:
    """Does some data value round to the quoted number (same decimals, or same significant
    digits in e-notation; a percentage is a fraction)?"""
    t = text.replace("−", "-")
    q = float(t) / (100 if percent else 1)
    if "e" in t:
        sig = len(t.split("e")[0].replace("-", "").replace(".", "").lstrip("0")) or 1
        return any(float(f"{abs(v):.{sig - 1}e}") == abs(q) for v in values)
    dec = len(t.split(".")[1]) + (2 if percent else 0)
    return any(round(abs(v), dec) == round(abs(q), dec) for v in values)


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
