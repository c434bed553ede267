"""pcmi.solve: instance files, the rollout cap, failing demonstrations, lenient-but-safe ids."""
import json

import numpy as np
import pytest
from scipy.special import logsumexp

import graphworld as gw
from pcmi.cli import main
from pcmi.errors import PcmiInputError
from pcmi.solve import load_instance, solve, solve_file


def graph_file(tmp_path, **top):
    g = gw.multi_route_dag(2, 1, 2, seed=1, n_sources=1, n_targets=2)
    d = {"graph": gw.graph_to_node_link(g), "source": 0, "target": g.graph["prompts"][0][1],
         "max_len": 3, "policy": {"stop_pref": 0.0}, **top}
    f = tmp_path / "g.json"
    f.write_text(json.dumps(d))
    return f


def test_max_rollouts_is_a_sharp_cap(tmp_path, capsys):
    """--max-rollouts N accepts a graph with exactly N rollouts and refuses it at N − 1."""
    f = graph_file(tmp_path)
    n = len(solve_file(str(f))["rollouts"])
    assert n > 2
    assert len(solve_file(str(f), max_rollouts=n)["rollouts"]) == n
    with pytest.raises((PcmiInputError, gw.GraphworldError), match="rollouts"):
        solve_file(str(f), max_rollouts=n - 1)
    assert main(["solve", str(f), "--max-rollouts", str(n)]) == 0
    capsys.readouterr()
    assert main(["solve", str(f), "--max-rollouts", str(n - 1)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(n - 1) in err[0]


def test_max_rollouts_is_refused_for_explicit_instances():
    with pytest.raises(PcmiInputError, match="graph instances only"):
        load_instance({"base": [1.0], "reward": [1], "teacher": [[1.0]]}, max_rollouts=5)


def test_failing_demos_allowed_in_file_match_independent_formulas(tmp_path, capsys):
    base, reward = np.array([0.4, 0.35, 0.25]), [1, 0, 1]
    T = np.array([[0.7, 0.2, 0.1], [0.3, 0.5, 0.2], [0.2, 0.2, 0.6]])
    D = np.array([0.1, 0.6, 0.3])
    f = tmp_path / "e.json"
    f.write_text(json.dumps({"base": base.tolist(), "reward": reward, "teacher": T.tolist(),
                             "demos": D.tolist(), "allow_failing_demos": True}))
    assert main(["solve", str(f)]) == 0
    got = json.loads(capsys.readouterr().out)
    e = np.log(T).T @ D
    assert np.allclose(got["sdsd"], np.exp(e - logsumexp(e)), atol=1e-12)
    assert np.allclose(got["forward_kl"], D @ T, atol=1e-12)
    data = json.loads(f.read_text())
    del data["allow_failing_demos"]
    f.write_text(json.dumps(data))
    assert main(["solve", str(f)]) == 2
    assert "allow_failing_demos" in capsys.readouterr().err


def test_equivalent_spellings_give_the_same_answer(tmp_path):
    """max_len 3 and 3.0, source 0 and "0" denote the same instance; the answer is identical."""
    a = solve_file(str(graph_file(tmp_path)))
    b = solve_file(str(graph_file(tmp_path, max_len=3.0, source="0")))
    assert a["sdsd"] == b["sdsd"] and a["rollouts"] == b["rollouts"]


def test_no_correct_rollout_names_the_reward():
    inst, _ = load_instance({"base": [0.5, 0.5], "reward": [0, 0], "teacher": [[1, 0], [0, 1]],
                             "demos": [0.5, 0.5], "allow_failing_demos": True})
    with pytest.raises(PcmiInputError, match="reward marks no rollout correct.*RL limit"):
        solve(inst)


# D* keys (theory.md §10) ------------------------------------------------------------------------
def _solve_cli(tmp_path, capsys, data, name="d.json"):
    f = tmp_path / name
    f.write_text(json.dumps(data))
    assert main(["solve", str(f)]) == 0
    return json.loads(capsys.readouterr().out)


def _spread_and_sdsd(base, reward, T, D):
    """Plain numpy: s(y) = Σ_j D_j log T(y|y'_j) − log π0(y) on the correct set, and exp(Σ_j D_j log T)/Z."""
    base, r, T, D = (np.asarray(a, float) for a in (base, reward, T, D))
    with np.errstate(divide="ignore"):
        logT = np.log(T)
    e = (D[D > 0, None] * logT[D > 0]).sum(axis=0)
    s = e[r == 1] - np.log(base[r == 1])
    return float(np.ptp(s)), np.exp(e - logsumexp(e))


def test_solve_reports_dstar_for_a_route_copying_matrix(tmp_path, capsys):
    """Route-copying teacher (eps = 0.1) written as a matrix: dstar is the LP's D*, on the correct set,
    with d_A/d_B = log 31 / log 19; the SDSD optimum under it keeps π0's odds A:B = 5:3."""
    base, reward = [0.5, 0.3, 0.2], [1, 1, 0]
    eps = 0.1
    T = [[eps * b + (1 - eps) * (i == j) for i, b in enumerate(base)] for j in range(3)]
    got = _solve_cli(tmp_path, capsys, {"base": base, "reward": reward, "teacher": T})
    d = np.array(got["dstar"])
    assert got["dstar_method"] == "lp" and "dstar_error" not in got
    assert d[2] == 0 and abs(d.sum() - 1) <= 1e-12 and abs(d[0] / d[1] - np.log(31) / np.log(19)) <= 1e-9
    spread, sd = _spread_and_sdsd(base, reward, T, d)
    assert spread <= 1e-9 and abs(got["dstar_spread"] - spread) <= 1e-9
    assert np.allclose(got["sdsd_under_dstar"], sd, atol=1e-12)
    assert abs(got["sdsd_under_dstar"][0] / got["sdsd_under_dstar"][1] - 5 / 3) <= 1e-9
    for key in ("sdsd", "rl", "forward_kl", "metrics"):  # the existing keys are still there
        assert key in got


def test_solve_reports_the_min_spread_law_where_no_dstar_exists(tmp_path, capsys):
    base, reward = [0.5, 0.3, 0.2], [1, 1, 0]
    T = [[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.2, 0.2, 0.6]]  # both correct demonstrations favour y1
    got = _solve_cli(tmp_path, capsys, {"base": base, "reward": reward, "teacher": T})
    assert got["dstar_method"] == "lp_min_spread" and got["dstar_spread"] > 0.1
    spread, sd = _spread_and_sdsd(base, reward, T, got["dstar"])
    assert abs(spread - got["dstar_spread"]) <= 1e-9 and np.allclose(got["sdsd_under_dstar"], sd, atol=1e-12)
    grid = np.linspace(0, 1, 2001)  # no D = (t, 1 − t) does better
    assert got["dstar_spread"] <= min(_spread_and_sdsd(base, reward, T, [t, 1 - t, 0])[0] for t in grid) + 1e-12


def test_solve_gives_null_dstar_with_a_reason(tmp_path, capsys, monkeypatch):
    """Where D* cannot be computed `pcmi solve` still succeeds: the D* keys are null and dstar_error
    holds the one-line reason (here: the LP refused as too large, by lowering its cap to 1)."""
    import pcmi.demonstrations as dem
    monkeypatch.setattr(dem, "LP_MAX_CORRECT", 1)
    T = [[0.7, 0.2, 0.1], [0.3, 0.5, 0.2], [0.2, 0.2, 0.6]]
    got = _solve_cli(tmp_path, capsys, {"base": [0.5, 0.3, 0.2], "reward": [1, 1, 0], "teacher": T})
    assert got["dstar"] is None and got["dstar_spread"] is None and got["dstar_method"] is None
    assert got["sdsd_under_dstar"] is None
    assert "too large" in got["dstar_error"] and "\n" not in got["dstar_error"]
    assert got["sdsd"] and got["rl"]  # the rest of the answer is unaffected


def test_dstar_keys_without_a_finite_spread():
    """Every correct demonstration rules out a correct rollout (T = 0): no D has a finite spread."""
    from pcmi.solve import dstar_keys
    inst, _ = load_instance({"base": [0.5, 0.3, 0.2], "reward": [1, 1, 1],
                             "teacher": [[0.6, 0.4, 0.0], [0.5, 0.5, 0.0], [0.0, 0.5, 0.5]]})
    got = dstar_keys(inst)
    assert got["dstar"] is None and got["sdsd_under_dstar"] is None
    assert "finite spread" in got["dstar_error"] and "\n" not in got["dstar_error"]


def test_solve_graph_route_copying_uses_the_closed_form(tmp_path, capsys):
    f = graph_file(tmp_path, teacher={"kind": "route_copying", "eps": 0.2})
    assert main(["solve", str(f)]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["dstar_method"] == "closed_form" and got["dstar_spread"] <= 1e-9
    r = np.array(got["reward"])
    d, sd, base = np.array(got["dstar"]), np.array(got["sdsd_under_dstar"]), np.array(got["base"])
    assert np.all(d[r == 0] == 0) and abs(d.sum() - 1) <= 1e-12
    c = (r == 1) & (base > 0)
    ratio = np.log(sd[c]) - np.log(base[c])
    assert np.ptp(ratio) <= 1e-8  # π0's ratios among correct rollouts kept


def test_an_infinite_ratio_distortion_is_null_not_a_crash(tmp_path, capsys):
    """A teacher that rules out a correct rollout sends its SDSD probability to 0: the ratio
    distortion is infinite, which JSON writes as null (allow_nan=False would otherwise crash)."""
    from pcmi.cli import main
    f = tmp_path / "inst.json"
    f.write_text(json.dumps({"base": [0.5, 0.3, 0.2], "reward": [1, 1, 1],
                             "teacher": [[0.6, 0.4, 0.0], [0.5, 0.5, 0.0], [0.0, 0.5, 0.5]]}))
    assert main(["solve", str(f)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metrics"]["sdsd"]["ratio_distortion"] is None
    assert out["metrics"]["rl"]["ratio_distortion"] is not None and abs(out["metrics"]["rl"]["ratio_distortion"]) < 1e-9
