"""pcmi.sweep: the atlas reproduces `pcmi verify`, every row replays from its file, reruns resume,
and the backends agree."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pcmi import sweep as S
from pcmi import verify as V
from pcmi.cli import main
from graphworld.errors import GraphworldError
from pcmi.errors import PcmiInputError
from pcmi.solve import load_instance

SMALL = {"checks": ["P4", "P4_general", "P8", "P8_failures", "P9"],
         "graphs": [{"family": "multi_route_dag", "k_routes": [2, 3], "depth": 1, "branching": 2,
                     "n_sources": 1, "n_targets": [1, 2]},
                    {"family": "path_star", "degree": 3, "length": 2}],
         "policies": [{"goal_aware": True}, {"stop_pref": 0.0}],
         "teachers": [{"kind": "route_copying", "eps": [0.1, 0.5]}],
         "seeds": 2}


def _stable(rows):
    """Rows without their timing, sorted: what two backends must agree on."""
    return sorted((tuple((k, v) for k, v in sorted(r.items()) if k != "seconds") for r in rows))


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    atlas = S.run_sweep(SMALL, out, backend="serial", progress=False)
    return out, atlas


def test_verify_sweep_reproduces_verify_all():
    spec = {"verify": {"examples": 4, "seed": 3}}
    rows = S.sweep_rows(spec)
    atlas = S.atlas_of([{k: ("" if v is None else str(v)) for k, v in r.items()} for r in rows], spec)
    by_row = {g["row"]: g for g in atlas["groups"]}
    for rep in V.verify_all(examples=4, seed=3):
        g = by_row[rep.name]
        assert (g["tried"], g["held"], g["not_applicable"]) == (rep.tried, rep.held, rep.skipped)
        if rep.tried:
            assert float(g["smallest_margin"]) == pytest.approx(rep.smallest_margin, rel=0, abs=0)


def test_every_failing_row_replays_from_its_instance_file(small_sweep):
    out, atlas = small_sweep
    rows = [r for r in S.read_table(out / "table.csv") if r["status"] == "failed"]
    assert rows, "the small spec has failing tendencies (P4_general, P8_failures with two targets)"
    for r in rows:
        data = json.loads(r["instance"])
        inst, _ = load_instance(data)
        res = V.CHECKS[r["check"]](inst, data)
        assert not res.holds and repr(float(res.margin)) == r["margin"]


def test_counterexample_files_fail_under_pcmi_verify_instance(small_sweep, capsys):
    out, atlas = small_sweep
    files = sorted((out / "counterexamples").glob("*.json"))
    assert files
    for f in files:
        assert main(["verify", "--instance", str(f), "--check", f.stem]) == 1


def test_universal_propositions_hold_everywhere_they_apply(small_sweep):
    _, atlas = small_sweep
    for check in ("P4", "P8", "P9"):
        groups = [g for g in atlas["groups"] if g["check"] == check]
        assert sum(g["tried"] for g in groups) > 0, check  # the spec gives every universal check instances
        for g in groups:
            assert g["held"] == g["tried"], g


def test_atlas_counts_equal_an_independent_recount(small_sweep):
    out, atlas = small_sweep
    rows = [r for r in S.read_table(out / "table.csv") if r["status"] != "cell_done"]
    for g in atlas["groups"]:
        mine = [r for r in rows if (r["check"], r["family"], r["params"], r["policy"], r["teacher"])
                == (g["check"], g["family"], g["params"], g["policy"], g["teacher"])
                and r["beta"] == str(g["beta"]) and r["extra_len"] == str(g["extra_len"])]
        assert g["tried"] == sum(r["status"] in ("held", "failed") for r in mine)
        assert g["held"] == sum(r["status"] == "held" for r in mine)
        assert g["skipped"] == sum(r["status"].startswith("skipped") for r in mine)
        assert g["not_applicable"] == sum(r["status"] == "not_applicable" for r in mine)
    assert sum(g["tried"] + g["skipped"] + g["not_applicable"] for g in atlas["groups"]) == len(rows)


@pytest.mark.parametrize("check, wrong", [
    ("P8", lambda inst, data: V.P.check_p8(inst, 1.0, sdsd=lambda i: i.log_base)),   # SDSD that keeps π0
    ("P4", lambda inst, data: V.P.check_p4(inst, sdsd=lambda i: i.log_base)),        # no amplification
])
def test_sabotage_a_wrong_check_changes_the_atlas(monkeypatch, check, wrong):
    spec = {**SMALL, "checks": [check], "graphs": SMALL["graphs"][:1], "policies": [{"goal_aware": True}]}
    honest = S.atlas_of(_strs(S.sweep_rows(spec)), spec)
    monkeypatch.setitem(V.CHECKS, check, wrong)
    wrong = S.atlas_of(_strs(S.sweep_rows(spec)), spec)
    assert [g["held"] for g in honest["groups"]] != [g["held"] for g in wrong["groups"]]


def _strs(rows):
    return [{k: ("" if v is None else str(v)) for k, v in r.items()} for r in rows]


def test_rerun_resumes_skips_finished_cells_and_drops_a_torn_line(tmp_path, monkeypatch):
    spec = {**SMALL, "checks": ["P8_failures"], "seeds": 1}
    S.run_sweep(spec, tmp_path, backend="serial", progress=False)
    full = S.read_table(tmp_path / "table.csv")
    # a kill after two cells, in the middle of writing the third
    lines = (tmp_path / "table.csv").read_text().splitlines(keepends=True)
    marks = [i for i, l in enumerate(lines) if ",cell_done," in l]
    (tmp_path / "table.csv").write_text("".join(lines[:marks[1] + 1]) + lines[marks[1] + 1][:17])
    ran = []
    real = S.run_cell
    monkeypatch.setattr(S, "run_cell", lambda c: ran.append(c["cell"]) or real(c))
    S.run_sweep(spec, tmp_path, backend="serial", progress=False)
    assert sorted(ran) == [c["cell"] for c in S.cells(spec)][2:]
    assert _stable(S.read_table(tmp_path / "table.csv")) == _stable(full)


def test_another_spec_in_the_same_folder_is_refused(tmp_path):
    spec = {**SMALL, "checks": ["P4"], "seeds": 1, "graphs": SMALL["graphs"][1:]}
    S.run_sweep(spec, tmp_path, backend="serial", progress=False)
    with pytest.raises(PcmiInputError, match="another spec"):
        S.run_sweep({**spec, "seeds": 2}, tmp_path, backend="serial", progress=False)


def test_process_pool_gives_the_serial_table(tmp_path):
    spec = {**SMALL, "checks": ["P4_general", "P8_failures"], "seeds": 1}
    a = S.run_sweep(spec, tmp_path / "serial", backend="serial", progress=False)
    b = S.run_sweep(spec, tmp_path / "pool", backend="process", workers=2, progress=False)
    assert a == b
    assert _stable(S.read_table(tmp_path / "serial" / "table.csv")) == \
        _stable(S.read_table(tmp_path / "pool" / "table.csv"))


def test_ray_backend_gives_the_process_pool_table(tmp_path):
    ray = pytest.importorskip("ray")
    spec = {**SMALL, "checks": ["P4_general", "P8_failures"], "seeds": 1}
    a = S.run_sweep(spec, tmp_path / "pool", backend="process", workers=2, progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # a local cluster for this test
    try:
        b = S.run_sweep(spec, tmp_path / "ray", backend="ray", progress=False)
    finally:
        ray.shutdown()
    assert a == b
    assert _stable(S.read_table(tmp_path / "pool" / "table.csv")) == \
        _stable(S.read_table(tmp_path / "ray" / "table.csv"))


@pytest.mark.parametrize("spec, match", [
    ({"graphs": SMALL["graphs"]}, "missing 'checks'"),
    ({**SMALL, "checks": ["P99"]}, "unknown check"),
    ({**SMALL, "graphs": [{"family": "grid"}]}, "family"),
    ({**SMALL, "graphs": [{"family": "path_star", "width": 3}]}, "unknown path_star parameter"),
    ({**SMALL, "seeds": -1}, "seeds"),
    ({**SMALL, "beta": [0.0]}, "beta"),
    ({**SMALL, "policies": [{"temperature": -1}]}, "temperature"),
    ({**SMALL, "teachers": [{"kind": "oracle"}]}, "teacher kind"),
    ({**SMALL, "extra_len": [-1]}, "extra_len"),
    ({**SMALL, "colour": 1}, "unknown sweep spec key"),
    ({"verify": {"examples": 0}}, "examples"),
    ({**SMALL, "max_rollouts": "x"}, "max_rollouts"),
    ({**SMALL, "max_rollouts": 0}, "max_rollouts"),
    ({**SMALL, "graphs": [{"family": "path_star", "degree": "a"}]}, "degree must be a number"),
    ({**SMALL, "graphs": [{"family": "path_star", "degree": []}]}, "degree must be a number"),
    ({**SMALL, "graphs": []}, "no graph family"),
    ({**SMALL, "checks": []}, "names no check"),
    ({**SMALL, "teachers": [{"kind": "route_copying", "eps": "a"}]}, "teacher eps must be a number"),
    ({**SMALL, "teachers": [{"kind": "route_copying", "eps": 2.0}]}, "teacher eps must lie in"),
])
def test_bad_specs_are_one_line_errors(spec, match):
    with pytest.raises((PcmiInputError, GraphworldError), match=match) as info:
        S.cells(spec)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text, suffix, match", [("checks: [P4", ".yaml", "not valid YAML"),
                                                  ("{", ".json", "not valid JSON"), ("[1, 2]", ".json", "mapping")])
def test_cli_bad_spec_files_exit_2_with_one_line(tmp_path, capsys, text, suffix, match):
    f = tmp_path / f"spec{suffix}"
    f.write_text(text)
    assert main(["sweep", str(f), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1


def test_cli_sweep_yaml_prints_the_atlas(tmp_path, capsys):
    f = tmp_path / "spec.yaml"
    f.write_text("checks: [P4]\ngraphs:\n  - {family: path_star, degree: 2, length: 2}\n"
                 "policies: [{goal_aware: true}]\nseeds: 2\n")
    assert main(["sweep", str(f), "--out", str(tmp_path / "out"), "--backend", "serial"]) == 0
    out = capsys.readouterr().out
    assert "100.0%" in out and "P4" in out and (tmp_path / "out" / "atlas.json").exists()
    atlas = json.loads((tmp_path / "out" / "atlas.json").read_text())
    assert atlas["groups"][0]["tried"] == 2 and np.isclose(atlas["groups"][0]["hold_rate"], 1.0)
