"""`pcmi verify`: counterexamples as instance files that reproduce the failure; re-running a check."""
import json

import numpy as np
import pytest

from pcmi import propositions as P
from pcmi import verify as V
from pcmi.errors import PcmiInputError
from pcmi.solve import load_instance, solve_file


def _search(row, n=80, seed=1):
    name, kind, _, make, check = next(r for r in V.ROWS if r[0] == row)
    return P.search_counterexamples(name, kind, make, check, n, np.random.default_rng(seed)), check


@pytest.mark.parametrize("row", ["P4-outside", "P8-failures"])
def test_saved_counterexample_reproduces_the_failure(row, tmp_path):
    rep, check = _search(row)
    ce = rep.counterexample
    assert ce is not None and ce["margin"] < 0
    path = V.write_counterexamples([rep], tmp_path)[row]
    assert path.endswith(f"{V.CHECK_OF_ROW[row]}.json")
    inst, _ = load_instance(json.loads(open(path).read()))
    res = check(inst)
    assert res is not None and not res.holds
    assert abs(res.margin - ce["margin"]) <= 1e-9
    assert solve_file(path)["sdsd"]  # and `pcmi solve FILE` loads it


def test_verify_instance_reruns_a_check(tmp_path, capsys):
    rep, _ = _search("P4-outside")
    path = V.write_counterexamples([rep], tmp_path)["P4-outside"]
    assert V.verify_instance(path, "P4_general", as_json=True) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["holds"] is False and abs(out["margin"] - rep.counterexample["margin"]) <= 1e-9
    assert V.verify_instance(path, "p4-outside") == 1  # aliases: case and '-' do not matter
    assert "FAILS" in capsys.readouterr().out


def test_verify_instance_on_a_holding_instance(tmp_path):
    data = {"base": [0.5, 0.3, 0.2], "reward": [1, 1, 0], "beta": 0.5,
            "teacher": [[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4]], "route": [0, 1, 1]}
    f = tmp_path / "inst.json"
    f.write_text(json.dumps(data))
    assert V.verify_instance(f, "P1") == 0
    assert V.verify_instance(f, "P2") == 0
    with pytest.raises(PcmiInputError, match="route-copying"):
        V.verify_instance(f, "P8")


@pytest.mark.parametrize("args, match", [(("nofile.json", "P2"), "not found"), (("X", None), "--check"),
                                         (("X", "P99"), "unknown check")])
def test_verify_instance_bad_input(args, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "X").write_text("{}")
    with pytest.raises(PcmiInputError, match=match):
        V.verify_instance(*args)


def test_run_verify_writes_counterexample_files(tmp_path, capsys):
    out = tmp_path / "ce"
    rc = V.run_verify(examples=6, seed=2, as_json=True, counterexample_dir=out)
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and data["all_universal_hold"]
    written = {r["check"]: r["counterexample_file"] for r in data["rows"] if r["counterexample"]}
    assert written and all(r["disagreements"] == 0 for r in data["rows"])
    for check, path in written.items():
        inst, _ = load_instance(json.loads(open(path).read()))
        res = V.CHECKS[check](inst, {})
        assert not res.holds  # the file reproduces the failure it was saved for
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{c}.json" for c in written)


def test_run_verify_embeds_counterexamples_and_names_bad_options(capsys):
    with pytest.raises(PcmiInputError, match="--seed"):
        V.run_verify(examples=5, seed=-1)
    with pytest.raises(PcmiInputError, match="--examples"):
        V.run_verify(examples=0)


def test_text_report_embeds_a_loadable_instance(capsys):
    rep, _ = _search("P4-outside", n=40)
    ce_line = json.dumps(rep.counterexample["instance"])
    inst, _ = load_instance(json.loads(ce_line))
    assert inst.n == rep.counterexample["n"]


def test_p9_row_holds_and_replays_from_a_file(tmp_path):
    """The P9 row (route-copying, copy and LP instances with a D*) holds with a positive margin, and
    P9 re-runs on an instance file (the teacher as a matrix: the LP route)."""
    rep, _ = _search("P9", n=40)
    assert rep.tried == 40 and rep.held == 40 and rep.smallest_margin > 0 and rep.counterexample is None
    assert "P9" in V.REPLAYABLE and V.check_name("p9") == "P9"
    data = {"base": [0.5, 0.3, 0.2], "reward": [1, 1, 0],
            "teacher": [[0.95, 0.03, 0.02], [0.05, 0.93, 0.02], [0.05, 0.03, 0.92]]}
    f = tmp_path / "rc.json"
    f.write_text(json.dumps(data))
    assert V.verify_instance(f, "P9") == 0
    data["teacher"] = [[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.2, 0.2, 0.6]]  # no D*: both demonstrations favour y1
    f.write_text(json.dumps(data))
    assert V.verify_instance(f, "P9") == 1
