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
