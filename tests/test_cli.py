"""The CLI: verify's table and exit code, solve against an independent implementation, errors."""
import json
import subprocess
import sys

import numpy as np
import pytest
from scipy.special import logsumexp

from pcmi.cli import main


def run(args, capsys):
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_verify_lists_every_proposition_and_exits_zero(capsys):
    rc, out, _ = run(["verify", "--examples", "8", "--seed", "3", "--json"], capsys)
    data = json.loads(out)
    assert rc == 0 and data["all_universal_hold"]
    names = [r["proposition"] for r in data["rows"]]
    assert names[:1] == ["P1"] and {"P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "P9", "P10", "P4-outside", "P8-failures"} == set(names)
    for r in data["rows"]:
        assert r["tried"] + r["skipped"] == 8 and 0 <= r["held"] <= r["tried"]
    assert all(p["proved"] for p in data["symbolic"])


def independent_solution(base, reward, T, beta):
    """Direct numpy formulas over the dense matrix (theory.md §3), written separately."""
    base, r, T = np.asarray(base), np.asarray(reward), np.asarray(T)
    D = base * r / (base * r).sum()
    with np.errstate(divide="ignore"):
        logT = np.log(T)
    e = (D[:, None] * np.where(D[:, None] > 0, logT, 0)).sum(axis=0)
    sd = np.exp(e - logsumexp(e))
    fwd = D @ T
    rl = base * np.exp(r / beta)
    return {"sdsd": sd, "forward_kl": fwd / fwd.sum(), "rl": rl / rl.sum(),
            "rl_limit": D, "expected_pcmi": e - np.log(base)}


@pytest.mark.parametrize("seed", range(12))
def test_solve_agrees_with_independent_implementation(tmp_path, capsys, seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 8))
    base = rng.dirichlet(np.ones(n) * rng.choice([0.2, 1.0, 5.0]))
    reward = (rng.random(n) < 0.6).astype(int)
    reward[rng.integers(n)] = 1
    T = rng.dirichlet(np.ones(n), size=n)
    beta = float(rng.choice([0.1, 1.0, 3.0]))
    f = tmp_path / "inst.json"
    f.write_text(json.dumps({"base": base.tolist(), "reward": reward.tolist(), "teacher": T.tolist(), "beta": beta}))
    rc, out, _ = run(["solve", str(f)], capsys)
    assert rc == 0
    got, want = json.loads(out), independent_solution(base, reward, T, beta)
    for key in ("sdsd", "forward_kl", "rl", "rl_limit", "expected_pcmi"):
        assert np.max(np.abs(np.array(got[key]) - want[key])) < 1e-8, key
    assert set(got["metrics"]["sdsd"]) >= {"success", "pass@1", "correct_entropy"}


def test_solve_graph_instance(tmp_path, capsys):
    import graphworld as gw
    g = gw.multi_route_dag(3, 1, 2, seed=3, n_sources=1, n_targets=2)
    f = tmp_path / "g.json"
    f.write_text(json.dumps({"graph": gw.graph_to_node_link(g), "source": 0, "target": g.graph["prompts"][0][1],
                             "max_len": 4, "policy": {"stop_pref": 0.0}, "teacher": {"kind": "route_copying", "eps": 0.1}}))
    rc, out, _ = run(["solve", str(f), "--beta", "0.5"], capsys)
    got = json.loads(out)
    assert rc == 0 and len(got["sdsd"]) == len(got["rollouts"]) == len(got["rl"])
    assert abs(sum(got["sdsd"]) - 1) < 1e-12 and "ood_success" in got["metrics"]["rl"]


BAD = {
    "not_normalized": ({"base": [0.5, 0.6], "reward": [1, 1], "teacher": [[1, 0], [0, 1]]}, "not normalized"),
    "negative": ({"base": [1.5, -0.5], "reward": [1, 1], "teacher": [[1, 0], [0, 1]]}, "negative"),
    "nan": ('{"base": [NaN, 1], "reward": [1, 1], "teacher": [[1, 0], [0, 1]]}', "NaN"),
    "row_length": ({"base": [0.5, 0.5], "reward": [1, 1], "teacher": [[1, 0], [0, 0.5, 0.5]]}, "2×2"),
    "beta": ({"base": [0.5, 0.5], "reward": [1, 1], "teacher": [[1, 0], [0, 1]], "beta": 0}, "beta"),
    "no_success": ({"base": [0.5, 0.5], "reward": [0, 0], "teacher": [[1, 0], [0, 1]]}, "no correct rollout"),
    "reward": ({"base": [0.5, 0.5], "reward": [1, 2], "teacher": [[1, 0], [0, 1]]}, "reward"),
    "missing": ({"base": [0.5, 0.5]}, "missing"),
    "unreachable": ({"graph": {"nodes": [{"id": 0}, {"id": 1}], "links": []}, "source": 0, "target": 1,
                     "max_len": 3}, "unreachable"),
    "teacher_kind": ({"graph": {"nodes": [{"id": 0}, {"id": 1}], "links": [{"source": 0, "target": 1}]},
                      "source": 0, "target": 1, "max_len": 3, "teacher": {"kind": "oracle"}}, "unknown teacher kind"),
    "json": ("{not json", "not valid JSON"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_malformed_input_gets_one_line_error(tmp_path, name):
    data, msg = BAD[name]
    f = tmp_path / "bad.json"
    f.write_text(data if isinstance(data, str) else json.dumps(data))
    p = subprocess.run([sys.executable, "-m", "pcmi.cli", "solve", str(f)], capture_output=True, text=True)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0] and "Traceback" not in p.stderr, p.stderr


def test_missing_file_and_bad_examples(capsys):
    assert run(["solve", "/nonexistent/x.json"], capsys)[0] == 2
    assert run(["verify", "--examples", "0"], capsys)[0] == 2


def test_import_pcmi_does_not_import_torch():
    code = "import sys, pcmi, pcmi.cli, pcmi.solve, pcmi.verify; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("exc", [ValueError("a bug"), ZeroDivisionError(), KeyError("k"), TypeError("t")])
def test_bugs_are_not_reported_as_input_errors(monkeypatch, exc):
    """Only PcmiInputError, GraphworldError and file errors become exit status 2."""
    import pcmi.solve

    def broken(*a, **k):
        raise exc
    monkeypatch.setattr(pcmi.solve, "solve_file", broken)
    with pytest.raises(type(exc)):
        main(["solve", "x.json"])


@pytest.mark.parametrize("exc", ["PcmiInputError", "GraphworldError", "OSError"])
def test_input_errors_are_one_line_exit_2(monkeypatch, capsys, exc):
    import graphworld
    import pcmi.errors
    import pcmi.solve
    cls = {"PcmiInputError": pcmi.errors.PcmiInputError, "GraphworldError": graphworld.GraphworldError,
           "OSError": OSError}[exc]

    def broken(*a, **k):
        raise cls("first\nsecond")
    monkeypatch.setattr(pcmi.solve, "solve_file", broken)
    rc, _, err = run(["solve", "x.json"], capsys)
    assert rc == 2 and err.strip() == "pcmi solve: error: first second"


def recorder(calls, ret=0):
    def f(*args, **kwargs):
        calls.append((args, kwargs))
        return ret
    return f


def test_verify_options_reach_run_verify_and_verify_instance(monkeypatch, capsys, tmp_path):
    import pcmi.verify
    calls = []
    monkeypatch.setattr(pcmi.verify, "run_verify", recorder(calls))
    monkeypatch.setattr(pcmi.verify, "verify_instance", recorder(calls, ret=1))
    assert main(["verify", "--examples", "5", "--seed", "7", "--counterexamples", str(tmp_path)]) == 0
    assert calls.pop() == ((5, 7), {"as_json": False, "counterexample_dir": str(tmp_path)})
    assert main(["verify", "--json"]) == 0
    assert calls.pop() == ((200, 0), {"as_json": True, "counterexample_dir": None})
    assert main(["verify", "--instance", "i.json", "--check", "P4", "--json"]) == 1  # verify_instance's status
    assert calls.pop() == (("i.json", "P4"), {"as_json": True})
    assert run(["verify", "--check", "P4"], capsys)[0] == 2 and not calls


@pytest.mark.parametrize("flag", [False, True])
def test_figures_overwrite_reaches_run_figures(monkeypatch, flag):
    import pcmi.figures
    calls = []
    monkeypatch.setattr(pcmi.figures, "run_figures", recorder(calls))
    assert main(["figures", "--out", "somewhere", "--only", "tilt"] + ["--overwrite"] * flag) == 0
    (args, kwargs), = calls
    assert kwargs == {"out": "somewhere", "only": "tilt", "overwrite": flag}
