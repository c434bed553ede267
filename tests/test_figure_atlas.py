"""Figure `atlas`: its matrix is the sweep's rows counted, its counterexamples replay."""
from __future__ import annotations

import numpy as np
import pytest

from pcmi import verify as V
from pcmi.figures import atlas
from pcmi.solve import load_instance

SMALL = {**atlas.SPEC, "graphs": atlas.SPEC["graphs"][:1], "seeds": 2}


@pytest.fixture(scope="module")
def data():
    return atlas.compute(SMALL)


def test_matrix_counts_are_the_groups_summed(data):
    held, tried = np.array(data["held"]), np.array(data["tried"])
    for i, c in enumerate(data["checks"]):
        groups = [g for g in data["groups"] if g["check"] == c]
        assert tried[i].sum() == sum(g["tried"] for g in groups) == data["per_check"][c]["tried"]
        assert held[i].sum() == sum(g["held"] for g in groups) == data["per_check"][c]["held"]
    assert np.all(held <= tried)


def test_universal_rows_hold_wherever_tried(data):
    for i, c in enumerate(data["checks"]):
        if data["per_check"][c]["kind"] == "universal":
            assert data["held"][i] == data["tried"][i]


def test_smallest_counterexamples_replay_with_their_margin(data):
    found = 0
    for c, v in data["per_check"].items():
        ce = v["smallest_counterexample"]
        if ce is None:
            continue
        found += 1
        inst, _ = load_instance(ce["instance"])
        res = V.CHECKS[c](inst, ce["instance"])
        assert not res.holds and float(res.margin) == ce["margin"] and inst.n == ce["n_rollouts"]
    assert found, "two targets with STOP anywhere give P4_general / P8_failures counterexamples"


def test_draw_marks_cells_that_do_not_apply(data):
    fig = atlas.draw(data)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "n/a" in texts and any("/" in t and t != "n/a" for t in texts)
