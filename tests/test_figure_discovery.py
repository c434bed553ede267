"""Figure `discovery` (issue 12 item 4): the data checked against independent routes (closed forms
from the graph's edge preferences, sampling arms without replacement), the attempt counts and
ratios recomputed from the stored curves, a drawing smoke test, and the numbers that
docs/figures/discovery.md quotes (each with a sabotage companion)."""
from __future__ import annotations

import itertools
import json
import os
import re

import numpy as np
import pytest

import graphworld as gw
from pcmi.errors import PcmiInputError
from pcmi.figures import discovery
from pcmi.figures._common import jsonable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(prompts=("path_star", "dag_low_route", "dag_two_targets"), n_max=16, n_exact=5, runs=400,
             max_states=2000)


@pytest.fixture(scope="module")
def small():
    return json.loads(json.dumps(jsonable(discovery.compute(**SMALL))))  # as read back from the JSON file


def arm_masses(spec):
    """π0 of each arm of the path-star prompt from the edge preferences at the centre (softmax),
    and the index of the arm the figure targets (lowest prior); no enumeration involved."""
    g = gw.path_star(spec["degree"], spec["length"], seed=spec["seed"])
    first = sorted(g.successors(0))
    prefs = np.array([g.edges[0, v]["pref"] for v in first])
    w = np.exp(prefs - prefs.max())
    return w / w.sum(), int(np.argmin(w))


def miss_without_replacement(w, target, n):
    """P(the target arm is not among the first n arms drawn without replacement, by weight)."""
    others = [i for i in range(len(w)) if i != target]
    out = 0.0
    for seq in itertools.permutations(others, min(n, len(others))):
        prob, used = 1.0, 0.0
        for f in seq:
            prob *= w[f] / (1 - used)
            used += w[f]
        out += prob
    return out if n <= len(others) else 0.0


def test_best_of_n_curve_is_the_closed_form(small):
    for d in small["prompts"].values():
        n = np.arange(1, small["n_max"] + 1)
        np.testing.assert_allclose(d["curves"]["best_of_n"]["discovery"], 1 - (1 - d["p0"]) ** n, atol=1e-12)


def test_path_star_ideal_multi_turn_is_arms_without_replacement(small):
    d = small["prompts"]["path_star"]
    w, target = arm_masses(discovery.PROMPTS["path_star"])
    assert d["p0"] == pytest.approx(w[target], abs=1e-12)
    want = [1 - miss_without_replacement(w, target, n) for n in range(1, small["n_max"] + 1)]
    np.testing.assert_allclose(d["curves"]["multi_turn"]["exact"]["discovery"], want, atol=1e-12)
    assert d["attempts"]["0.9"]["multi_turn"]["n"] <= discovery.PROMPTS["path_star"]["degree"]


def test_ttsd_kl_with_an_ideal_filter_equals_multi_turn(small):
    for d in small["prompts"].values():
        assert d["ttsd_kl_eps0_minus_multi_turn"] <= 1e-12


def test_monte_carlo_agrees_with_the_exact_interval(small):
    for d in small["prompts"].values():
        for m, c in d["curves"].items():
            if "monte_carlo" in c:
                assert c["monte_carlo"]["max_z_vs_exact"] <= 5, (d["name"], m)


def attempt_mismatches(data) -> list[str]:
    """Attempt counts and ratios that do not follow from the stored curves."""
    bad = []
    for p, d in data["prompts"].items():
        for key, row in d["attempts"].items():
            t = float(key)
            best = next(i + 1 for i, v in enumerate(1 - (1 - d["p0"]) ** np.arange(1, 10**5)) if v >= t)
            for m, a in row.items():
                c = d["curves"][m]
                if a["best_of_n"] != best:
                    bad.append(f"{p} {key} {m}: best-of-n {a['best_of_n']} != {best}")
                if c["kind"] == "closed_form":
                    continue
                src = c["exact"]["discovery"] if a["source"] == "exact" else c["monte_carlo"]["discovery"]
                hit = [i + 1 for i, v in enumerate(src) if v >= t]
                n = hit[0] if hit else None
                if a["n"] != n:
                    bad.append(f"{p} {key} {m}: n {a['n']} != {n}")
                if (a["ratio"] is None) != (n is None) or n is not None and abs(a["ratio"] - best / n) > 1e-9:
                    bad.append(f"{p} {key} {m}: ratio {a['ratio']}")
                if a["source"] == "exact" and attempts(c["exact"]["upper"], t) != n:
                    bad.append(f"{p} {key} {m}: exact but the interval's upper end crosses earlier")
    return bad


def attempts(curve, t):
    hit = [i + 1 for i, v in enumerate(curve) if v >= t]
    return hit[0] if hit else None


def test_attempts_and_ratios_follow_from_the_curves(small):
    assert attempt_mismatches(small) == []
    d = small["prompts"]["path_star"]
    assert d["attempts"]["0.5"]["multi_turn"]["ratio"] > 3  # the low-prior arm: filtering wins big


def test_sabotage_attempt_check_catches_a_wrong_ratio(small):
    d = json.loads(json.dumps(small))
    a = d["prompts"]["dag_low_route"]["attempts"]["0.5"]["multi_turn"]
    a["ratio"] = a["ratio"] * 1.1
    assert attempt_mismatches(d)
    d = json.loads(json.dumps(small))
    d["prompts"]["path_star"]["attempts"]["0.9"]["multi_turn_eps"]["n"] += 1
    assert attempt_mismatches(d)


def test_summary_counts_follow_the_ratios(small):
    for key, row in small["summary"].items():
        for m, s in row.items():
            r = [v for v in s["ratio"].values() if v is not None]
            assert s["at_least_3x"] == sum(v >= 3 for v in r) and s["prompts_with_ratio"] == len(r)


def test_draw_has_one_panel_per_prompt_and_the_ratio_panel(small):
    fig = discovery.draw(small)
    visible = [ax for ax in fig.get_axes() if ax.get_visible()]
    assert len(visible) == len(small["prompts"]) + 1
    assert any("3×" == t.get_text() for t in visible[-1].texts)


@pytest.mark.parametrize("kw, msg", [(dict(prompts=("nope",)), "unknown prompt"),
                                     (dict(methods=("adam",)), "unknown method")])
def test_bad_size_is_one_line_error(kw, msg):
    with pytest.raises(PcmiInputError, match=msg) as e:
        discovery.compute(**kw)
    assert "\n" not in str(e.value)


# --- docs/figures/discovery.md quotes the data -------------------------------------------------

from docnumbers import quoted_missing  # noqa: E402

ROW = re.compile(r"^\| (\w+) \| ([\d.]+) \| (\w+) \| (\d+) \| ([^|]+) \| (\d+) \| ([^|]+) \|$", re.M)


def _cell(a):
    """How the page writes one method's attempts: 'n (ratio×)' or '> n_max (< bound×)', then
    ' MC' when the count comes from the Monte Carlo curve."""
    mc = " MC" if a["source"] == "monte_carlo" else ""
    if a["n"] is None:
        return f"> {a['not_reached_within']} (< {a['ratio_at_most']:.2f}×){mc}"
    return f"{a['n']} ({a['ratio']:.2f}×){mc}"


def table_mismatches(text: str, data: dict) -> list[str]:
    """Rows `| prompt | p0 | method | best-of-n at 0.5 | method at 0.5 | best-of-n at 0.9 | method at 0.9 |`."""
    rows = ROW.findall(text)
    bad = []
    for prompt, p0, method, b5, a5, b9, a9 in rows:
        d = data["prompts"][prompt]
        at5, at9 = d["attempts"]["0.5"][method], d["attempts"]["0.9"][method]
        want = [f"{d['p0']:.4f}", str(at5["best_of_n"]), _cell(at5), str(at9["best_of_n"]), _cell(at9)]
        got = [p0, b5, a5.strip(), b9, a9.strip()]
        if got != want:
            bad.append(f"{prompt} {method}: page {got} data {want}")
    return bad if rows else ["no table rows found"]


def _page_and_data():
    path = os.path.join(ROOT, "figures", "discovery.json")
    if not os.path.exists(path):
        pytest.skip("figures/discovery.json not generated yet (pcmi figures --only discovery)")
    return open(os.path.join(ROOT, "docs", "figures", "discovery.md")).read(), json.load(open(path))


def test_doc_numbers_and_table_match_the_figure_data():
    text, data = _page_and_data()
    assert quoted_missing(text, data) == []
    assert table_mismatches(text, data) == []
    n_rows = len(ROW.findall(text))
    assert n_rows == len(data["prompts"]) * (len(data["methods"]) - 1)
    assert "pcmi figures --only discovery" in text


def test_sabotage_doc_checks_catch_a_wrong_number():
    text, data = _page_and_data()
    row = next(m.group(0) for m in ROW.finditer(text))
    wrong = re.sub(r"\((\d+\.\d\d)×\)", lambda m: f"({float(m.group(1)) + 0.01:.2f}×)", row, count=1)
    assert wrong != row and table_mismatches(text.replace(row, wrong), data)
    assert quoted_missing(text + "\nan invented 0.123456 here", data) == ["0.123456"]
