"""Bad input, tried as a new user would: every case is a one-line PcmiInputError/GraphworldError
from the library and exit status 2 with one stderr line from the CLI (issue 8)."""
import copy
import json
import subprocess
import sys

import networkx as nx
import numpy as np
import pytest

import graphworld as gw
from graphworld.graphs import check_graph
from pcmi.cli import main
from pcmi.errors import PcmiInputError
from pcmi.graph_instance import graph_instance
from pcmi.instance import Instance
from pcmi.solve import solve_file

INPUT_ERRORS = (PcmiInputError, gw.GraphworldError)

GRAPH = {"directed": True,
         "nodes": [{"id": 0}, {"id": 1, "concept": 0}, {"id": 2, "concept": 1}, {"id": 3}],
         "links": [{"source": 0, "target": 1, "pref": 0.5}, {"source": 0, "target": 2, "pref": 0.0},
                   {"source": 1, "target": 3, "pref": 0.0}, {"source": 2, "target": 3, "pref": 0.0}]}
EXPLICIT = {"base": [0.5, 0.3, 0.2], "reward": [1, 1, 0],
            "teacher": [[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.5, 0.3, 0.2]]}


def graph_inst(edit=None, **top):
    """The docs' graph instance, its graph changed by edit(graph) and its top-level keys by top."""
    d = {"graph": copy.deepcopy(GRAPH), "source": 0, "target": 3, "max_len": 2, **top}
    if edit is not None:
        edit(d["graph"])
    return d


def explicit(**top):
    return {**copy.deepcopy(EXPLICIT), **top}


def raw(d: dict, old: str, new: str) -> str:
    """JSON text with a literal that json.dumps cannot write (1e400, NaN) swapped in."""
    text = json.dumps(d)
    assert old in text
    return text.replace(old, new, 1)


def link0(**kw):
    return lambda g: g["links"][0].update(kw)


# name: (instance (dict or JSON text), fragment the one-line message must contain)
SOLVE_CASES = {
    "max_len_1e400": (raw(graph_inst(max_len=777), "777", "1e400"), "max_len"),
    "max_len_fraction": (graph_inst(max_len=2.5), "max_len"),
    "max_len_bool": (graph_inst(max_len=True), "max_len"),
    "max_len_string": (graph_inst(max_len="2"), "max_len"),
    "max_len_zero": (graph_inst(max_len=0), "max_len"),
    "pref_string": (graph_inst(link0(pref="high")), "edge 0 -> 1 has pref 'high'"),
    "pref_nan": (raw(graph_inst(link0(pref=777.0)), "777.0", "NaN"), "edge 0 -> 1 has pref nan"),
    "pref_inf": (raw(graph_inst(link0(pref=777.0)), "777.0", "-Infinity"), "edge 0 -> 1 has pref -inf"),
    "pref_bool": (graph_inst(link0(pref=True)), "edge 0 -> 1 has pref True"),
    "temperature_string": (graph_inst(policy={"temperature": "hot"}), "temperature"),
    "temperature_zero": (graph_inst(policy={"temperature": 0}), "temperature"),
    "temperature_underflow": (graph_inst(policy={"temperature": 1e-320}), "temperature"),
    "goal_aware_string": (graph_inst(policy={"goal_aware": "yes"}), "goal_aware"),
    "goal_aware_int": (graph_inst(policy={"goal_aware": 1}), "goal_aware"),
    "stop_pref_string": (graph_inst(policy={"stop_pref": "low"}), "stop_pref"),
    "stop_pref_list": (graph_inst(policy={"stop_pref": [0]}), "stop_pref"),
    "stop_pref_bool": (graph_inst(policy={"stop_pref": False}), "stop_pref"),
    "policy_unknown_field": (graph_inst(policy={"temp": 1}), "unknown policy field"),
    "undirected": (graph_inst(lambda g: g.update(directed=False)), "graph must be directed"),
    "directed_string": (graph_inst(lambda g: g.update(directed="true")), "graph must be directed"),
    "multigraph": (graph_inst(lambda g: g.update(multigraph=True)), "multigraph"),
    "link_to_missing_node": (graph_inst(lambda g: g["links"].append({"source": 1, "target": 9})),
                             "refers to node 9"),
    "link_endpoint_wrong_type": (graph_inst(link0(target="1")), "refers to node '1'"),
    "duplicate_node": (graph_inst(lambda g: g["nodes"].append({"id": 2})), "duplicate node id 2"),
    "duplicate_link": (graph_inst(lambda g: g["links"].append({"source": 0, "target": 1})),
                       "duplicate link 0 -> 1"),
    "node_without_id": (graph_inst(lambda g: g["nodes"].append({"name": 5})), "'id'"),
    "node_id_list": (graph_inst(lambda g: g["nodes"].append({"id": [5]})), "ids must be strings or integers"),
    "reserved_node_id": (graph_inst(lambda g: g["nodes"].append({"id": "STOP"})), "reserved"),
    "reserved_fail_id": (graph_inst(lambda g: g["nodes"].append({"id": "FAIL:0"})), "reserved"),
    "concept_string": (graph_inst(lambda g: g["nodes"][1].update(concept="left")), "concept"),
    "missing_nodes": (graph_inst(lambda g: g.pop("nodes")), "'nodes'"),
    "missing_links": (graph_inst(lambda g: g.pop("links")), "'links'"),
    "link_without_source": (graph_inst(lambda g: g["links"].append({"target": 3})), "no 'source'"),
    "link_without_target": (graph_inst(lambda g: g["links"].append({"source": 0})), "no 'target'"),
    "links_not_list": (graph_inst(lambda g: g.update(links={"source": 0})), "must be lists"),
    "source_bool": (graph_inst(source=True), "source"),
    "target_missing": (graph_inst(target=9), "target 9 is not a node"),
    "teacher_eps_string": (graph_inst(teacher={"kind": "route_copying", "eps": "small"}), "eps"),
    "teacher_sharpness_string": (graph_inst(teacher={"kind": "soft_route", "sharpness": "x"}), "sharpness"),
    "graph_demos_list": (graph_inst(demos=[1, 0]), "'demos'"),
    "failing_demos": (explicit(demos=[0.5, 0.25, 0.25]), "allow_failing_demos"),
    "failing_demos_only": (explicit(demos=[0, 0, 1]), "mass 1 on failing rollouts"),
    "allow_failing_demos_string": (explicit(demos=[0, 0, 1], allow_failing_demos="yes"), "allow_failing_demos"),
    "no_correct_default_demos": (explicit(reward=[0, 0, 0]), "give 'demos' or a correct rollout"),
    "no_correct_allowed_demos": (explicit(reward=[0, 0, 0], demos=[0.2, 0.3, 0.5], allow_failing_demos=True),
                                 "RL limit"),
    "correct_only_at_zero_base": (explicit(base=[0.5, 0.5, 0.0], reward=[0, 0, 1]), "positive base probability"),
    "teacher_strings": (explicit(teacher=[["a", "b", "c"]] * 3), "teacher must be a matrix of numbers"),
    "reward_nested": (explicit(reward=[[1], [1], [0]]), "flat list"),
    "route_ragged": (explicit(route=[[0], [1, 2], 3]), "route"),
    "beta_bool": (explicit(beta=True), "beta"),
    "beta_string": (explicit(beta="2"), "beta"),
    "duplicate_json_key": ('{"base": [1], "base": [0.5, 0.5], "reward": [1, 1], "teacher": [[1, 0], [0, 1]]}',
                           "duplicate key 'base'"),
    "empty_file": ("", "is empty"),
    "binary_file": (b"\x89PNG\r\n\x1a\n\xff\xfe\x00", "not a text file"),
    "deep_nesting": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "top_level_list": ("[1, 2]", "JSON object"),
}


def write_case(tmp_path, name):
    data = SOLVE_CASES[name][0]
    f = tmp_path / f"{name}.json"
    if isinstance(data, bytes):
        f.write_bytes(data)
    else:
        f.write_text(data if isinstance(data, str) else json.dumps(data))
    return f


def assert_one_line_cli_error(capsys, argv, fragment):
    rc = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("name", sorted(SOLVE_CASES))
def test_bad_instance_is_one_line_library_error(tmp_path, name):
    f = write_case(tmp_path, name)
    with pytest.raises(INPUT_ERRORS) as e:
        solve_file(str(f))
    msg = str(e.value)
    assert SOLVE_CASES[name][1] in msg and "\n" not in msg, msg


@pytest.mark.parametrize("name", sorted(SOLVE_CASES))
def test_bad_instance_is_one_line_cli_error(tmp_path, capsys, name):
    f = write_case(tmp_path, name)
    assert_one_line_cli_error(capsys, ["solve", str(f)], SOLVE_CASES[name][1])


def test_directory_and_missing_instance_paths(tmp_path, capsys):
    assert_one_line_cli_error(capsys, ["solve", str(tmp_path)], "is a directory")
    assert_one_line_cli_error(capsys, ["solve", str(tmp_path / "nope.json")], "not found")


def test_real_subprocess_errors_are_one_line(tmp_path):
    """Two real processes (the rest run in-process): a graph case and an option case."""
    f = write_case(tmp_path, "pref_nan")
    for argv, fragment in ((["solve", str(f)], "has pref nan"), (["verify", "--seed", "-1"], "--seed")):
        p = subprocess.run([sys.executable, "-m", "pcmi.cli", *argv], capture_output=True, text=True)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and fragment in lines[0], p.stderr


OPTION_CASES = [
    (["verify", "--seed", "-1"], "--seed"),
    (["verify", "--seed", "one"], "--seed"),
    (["verify", "--examples", "0"], "--examples"),
    (["verify", "--examples", "-3"], "--examples"),
    (["verify", "--examples", "2.5"], "--examples"),
    (["verify", "--instance", "x.json"], "--check"),
    (["solve", "x.json", "--max-rollouts", "0"], "--max-rollouts"),
    (["solve", "x.json", "--max-rollouts", "many"], "--max-rollouts"),
    (["solve"], "file"),
    (["nope"], "invalid choice"),
]


@pytest.mark.parametrize("argv, fragment", OPTION_CASES)
def test_bad_option_names_the_option(capsys, argv, fragment):
    assert_one_line_cli_error(capsys, argv, fragment)


# --- the library entry points one at a time ------------------------------------------------

def _graph(pref):
    g = nx.DiGraph()
    g.add_edge(0, 1, pref=pref)
    g.add_edge(0, 2, pref=0.0)
    g.add_edge(1, 2, pref=0.0)
    return g


def _underflowing_graph():
    """The only correct walk 0→1→3 has log π0 = −2e308 = −inf: π0(r = 1) is 0 in floating point."""
    g = nx.DiGraph()
    for u, v, p in ((0, 1, -1e308), (0, 4, 0.0), (1, 3, -1e308), (1, 5, 0.0)):
        g.add_edge(u, v, pref=p)
    return g


LIBRARY_CASES = {
    "temperature_string": (lambda: gw.EdgePolicy(temperature="hot"), "temperature"),
    "temperature_bool": (lambda: gw.EdgePolicy(temperature=True), "temperature"),
    "goal_aware_string": (lambda: gw.EdgePolicy(goal_aware="yes"), "goal_aware"),
    "stop_pref_string": (lambda: gw.EdgePolicy(stop_pref="x"), "stop_pref"),
    "stop_pref_nan": (lambda: gw.EdgePolicy(stop_pref=float("nan")), "stop_pref"),
    "policy_not_dict": (lambda: gw.EdgePolicy.from_dict([1.0]), "policy"),
    "pref_string_in_code": (lambda: gw.enumerate_rollouts(gw.Task(_graph("high"), 0, 2, 2), gw.EdgePolicy()),
                            "edge 0 -> 1 has pref 'high'"),
    "pref_nan_in_code": (lambda: graph_instance(gw.Task(_graph(float("nan")), 0, 2, 2)),
                         "edge 0 -> 1 has pref nan"),
    "pref_over_temperature_overflows": (
        lambda: gw.enumerate_rollouts(gw.Task(_graph(1e300), 0, 2, 2), gw.EdgePolicy(temperature=1e-10)),
        "temperature"),
    "graph_no_correct_rollout": (lambda: graph_instance(gw.Task(_underflowing_graph(), 0, 3, 2)),
                                 "no rollout correct with positive base probability"),
    "undirected_networkx": (lambda: check_graph(nx.Graph([(0, 1)])), "graph must be directed"),
    "multigraph_networkx": (lambda: check_graph(nx.MultiDiGraph([(0, 1), (0, 1)])), "parallel edges"),
    "node_link_undirected": (lambda: gw.graph_from_node_link({**GRAPH, "directed": False}), "directed"),
    "node_link_missing_node": (
        lambda: gw.graph_from_node_link({"nodes": [{"id": 0}], "links": [{"source": 0, "target": 1}]}),
        "refers to node 1"),
    "node_link_duplicate_node": (lambda: gw.graph_from_node_link({"nodes": [{"id": "a"}, {"id": "a"}],
                                                                  "links": []}), "duplicate node id 'a'"),
    "failing_demos": (lambda: Instance.explicit(EXPLICIT["base"], EXPLICIT["reward"], EXPLICIT["teacher"],
                                                demos=[0.4, 0.4, 0.2]), "allow_failing_demos"),
    "allow_failing_demos_truthy": (lambda: Instance.explicit(EXPLICIT["base"], EXPLICIT["reward"],
                                                             EXPLICIT["teacher"], demos=[0.4, 0.4, 0.2],
                                                             allow_failing_demos="yes"), "allow_failing_demos"),
    "no_correct_rollout": (lambda: Instance.explicit([0.5, 0.5], [0, 0], [[1, 0], [0, 1]]), "give 'demos'"),
}


@pytest.mark.parametrize("name", sorted(LIBRARY_CASES))
def test_bad_library_input_is_one_line_error(name):
    make, fragment = LIBRARY_CASES[name]
    with pytest.raises(INPUT_ERRORS) as e:
        make()
    assert fragment in str(e.value) and "\n" not in str(e.value), str(e.value)


# --- graph files: node-link JSON and GraphML ----------------------------------------------

GRAPHML = ('<?xml version="1.0"?><graphml xmlns="http://graphml.graphdrawing.org/xmlns">'
           '<key id="p" for="edge" attr.name="pref" attr.type="{ptype}"/><graph edgedefault="{edges}">{body}'
           '</graph></graphml>')


def graphml(body, edges="directed", ptype="double"):
    return GRAPHML.format(body=body, edges=edges, ptype=ptype)


AB = '<node id="a"/><node id="b"/>'
GRAPH_FILES = {
    "malformed.graphml": ("<graphml><graph>", "malformed XML"),
    "empty.graphml": ("", "is empty"),
    "blank.json": ("  \n", "is empty"),
    "binary.graphml": (b"\x00\xff\xfe\x89PNG", "not a text file"),
    "binary.json": (b"\xff\xfe\x00\x01", "not a text file"),
    "nograph.graphml": ('<graphml xmlns="http://graphml.graphdrawing.org/xmlns"></graphml>', "not valid GraphML"),
    "undirected.graphml": (graphml(AB + '<edge source="a" target="b"/>', edges="undirected"), "must be directed"),
    "missing_node.graphml": (graphml('<node id="a"/><edge source="a" target="b"/>'), "refers to node 'b'"),
    "duplicate_node.graphml": (graphml(AB + '<node id="a"/>'), "duplicate node id 'a'"),
    "pref_string.graphml": (graphml(AB + '<edge source="a" target="b"><data key="p">high</data></edge>',
                                    ptype="string"), "has pref 'high'"),
    "pref_not_double.graphml": (graphml(AB + '<edge source="a" target="b"><data key="p">high</data></edge>'),
                                "not valid GraphML"),
    "pref_nan.graphml": (graphml(AB + '<edge source="a" target="b"><data key="p">NaN</data></edge>'),
                         "has pref nan"),
    "invalid.json": ("{nodes: []}", "not valid JSON"),
    "duplicate_key.json": ('{"nodes": [], "nodes": [{"id": 0}], "links": []}', "duplicate key 'nodes'"),
    "missing_node.json": ('{"nodes": [{"id": 0}], "links": [{"source": 0, "target": 1}]}', "refers to node 1"),
}


@pytest.mark.parametrize("name", sorted(GRAPH_FILES))
def test_bad_graph_file_is_one_line_error(tmp_path, name):
    content, fragment = GRAPH_FILES[name]
    f = tmp_path / name
    f.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(gw.GraphworldError) as e:
        gw.load_graph(f)
    assert fragment in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_graph_path_that_is_a_directory_or_missing(tmp_path):
    (tmp_path / "g.graphml").mkdir()
    for path, fragment in ((tmp_path / "g.graphml", "is a directory"), (tmp_path, "is a directory"),
                           (tmp_path / "none.json", "not found")):
        with pytest.raises(gw.GraphworldError, match=fragment):
            gw.load_graph(path)


@pytest.mark.parametrize("fmt", ["json", "graphml"])
@pytest.mark.parametrize("make", [lambda: gw.multi_route_dag(2, 1, 2, seed=4), lambda: gw.path_star(3, 2, seed=1),
                                  lambda: gw.random_dag(9, 0.4, seed=5)])
def test_valid_graphs_still_load_unchanged(tmp_path, fmt, make):
    """The stricter loaders accept every generator's graph and keep its nodes, edges and attributes."""
    g = make()
    f = tmp_path / f"g.{fmt}"
    if fmt == "json":
        f.write_text(json.dumps(gw.graph_to_node_link(g)))
    else:
        g.graph.pop("prompts")
        nx.write_graphml(g, f)
    h = gw.load_graph(f)
    key = str if fmt == "graphml" else (lambda v: v)  # GraphML ids are strings
    assert sorted(map(str, h.nodes)) == sorted(map(str, g.nodes))
    for u, v, pref in g.edges(data="pref"):
        assert h.edges[key(u), key(v)]["pref"] == pref
    for u, z in g.nodes(data="concept"):
        assert h.nodes[key(u)].get("concept") == z


def test_link_to_missing_node_would_change_the_base_policy():
    """Why the refusal matters: networkx's own reader adds the node and π0 moves mass onto it."""
    data = {**GRAPH, "links": GRAPH["links"] + [{"source": 0, "target": 9}]}
    lenient = nx.DiGraph(nx.node_link_graph(data, edges="links"))
    strict = gw.graph_from_node_link(GRAPH)
    p_lenient = gw.EdgePolicy().next_logprobs(gw.Task(lenient, 0, 3, 2), [(0,)])[0]
    p_strict = gw.EdgePolicy().next_logprobs(gw.Task(strict, 0, 3, 2), [(0,)])[0]
    assert 9 in p_lenient and abs(p_lenient[1] - p_strict[1]) > 0.1
    with pytest.raises(gw.GraphworldError, match="refers to node 9"):
        gw.graph_from_node_link(data)


def test_json_infinity_is_what_1e400_parses_to():
    """The max_len_1e400 case really feeds inf (not a large int) to the loader."""
    assert json.loads(SOLVE_CASES["max_len_1e400"][0])["max_len"] == np.inf
