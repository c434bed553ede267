"""`pcmi sweep SPEC`: the holds-rate atlas of every proposition and tendency over an instance space.

A spec (JSON or YAML) names graph families with their size parameters, base policies, teachers, β,
length slack and seeds; every combination is a *cell*. A cell builds its graph, takes its prompts,
writes each as the graph-instance JSON that `pcmi solve` and `pcmi verify --instance` load, and runs
the named checks through `pcmi.verify.CHECKS` on the instance that loader builds — so every row of the
table is replayable from its file, and a counterexample is a file:

    pcmi verify --instance OUT/counterexamples/P8_failures.json --check P8_failures

The spec `{"verify": {"examples": N, "seed": S}}` instead replays `pcmi verify`'s own generated
instances row by row (the same generators and random streams), so the atlas reproduces its verdicts.

Results go to OUT/table.csv one cell at a time (a killed sweep started again skips finished cells;
a torn last line is dropped), the spec to OUT/spec.json (another spec in the same folder is refused),
the atlas (hold rate per check × cell parameters, over seeds and prompts) to OUT/atlas.json.
Backends: a local process pool (default), serial, or Ray (`pip install -e ".[ray]"`,
`--backend ray --address auto`).
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import os
import time
from pathlib import Path

import numpy as np

from .atomic import atomic_write_json, atomic_write_text
from graphworld.errors import GraphworldError

from .errors import PcmiInputError

FAMILIES = {  # family -> (its size parameters, graphworld builder)
    "multi_route_dag": ("k_routes", "depth", "branching", "n_sources", "n_targets", "pref_scale"),
    "path_star": ("degree", "length", "pref_scale"),
    "random_dag": ("n", "p", "pref_scale"),
}
SPEC_KEYS = {"checks", "graphs", "policies", "teachers", "beta", "extra_len", "seeds", "prompts", "max_rollouts"}
COLUMNS = ("cell", "row", "check", "family", "params", "policy", "teacher", "beta", "extra_len", "seed",
           "prompt", "n_rollouts", "status", "holds", "margin", "seconds", "instance")
BACKENDS = ("process", "serial", "ray")


# spec --------------------------------------------------------------------------------------------
def read_spec(path) -> dict:
    """The parsed spec file (.json, .yaml or .yml); a one-line PcmiInputError otherwise."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise PcmiInputError(f"cannot read sweep spec {path}: {exc.strerror or exc}") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml
            spec = yaml.safe_load(text)
        else:
            spec = json.loads(text)
    except Exception as exc:  # yaml.YAMLError / json.JSONDecodeError: a malformed file
        raise PcmiInputError(f"sweep spec {path} is not valid {'YAML' if path.suffix != '.json' else 'JSON'}: "
                             f"{' '.join(str(exc).split())[:200]}") from None
    if not isinstance(spec, dict):
        raise PcmiInputError(f"sweep spec {path} must be a mapping (an object), got {type(spec).__name__}")
    return spec


def _listed(v) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _expand(d: dict) -> list[dict]:
    """Every combination of a dict whose values may be lists: {"a": [1, 2], "b": 3} -> 2 dicts."""
    keys = sorted(d)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(_listed(d[k]) for k in keys))]


def _checked_names(names) -> list[str]:
    from .verify import check_name
    return [check_name(n) for n in _listed(names)]


def cells(spec: dict) -> list[dict]:
    """The spec's cells, in a fixed order (the table's `cell` index). Validates the spec."""
    if "verify" in spec:
        v = spec["verify"]
        if set(spec) != {"verify"} or not isinstance(v, dict) or set(v) - {"examples", "seed"}:
            raise PcmiInputError('a verify sweep is {"verify": {"examples": N, "seed": S}} and nothing else')
        from .verify import ROWS
        ex, seed = v.get("examples", 200), v.get("seed", 0)
        for name, val in (("examples", ex), ("seed", seed)):
            if isinstance(val, bool) or not isinstance(val, int) or val < (1 if name == "examples" else 0):
                raise PcmiInputError(f"verify {name} must be an integer >= {1 if name == 'examples' else 0}, got {val!r}")
        return [{"cell": i, "verify_row": i, "row": row[0], "examples": ex, "seed": seed} for i, row in enumerate(ROWS)]
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise PcmiInputError(f"unknown sweep spec key(s): {', '.join(sorted(unknown))} "
                             f"(expected {', '.join(sorted(SPEC_KEYS))} or verify)")
    for need in ("checks", "graphs"):
        if need not in spec:
            raise PcmiInputError(f"sweep spec is missing '{need}'")
    checks = _checked_names(spec["checks"])
    graphs = []
    for g in _listed(spec["graphs"]):
        if not isinstance(g, dict) or g.get("family") not in FAMILIES:
            raise PcmiInputError(f"each graphs entry needs a family, one of {', '.join(FAMILIES)}; got {g!r}")
        params = {k: v for k, v in g.items() if k != "family"}
        bad = set(params) - set(FAMILIES[g["family"]])
        if bad:
            raise PcmiInputError(f"unknown {g['family']} parameter(s): {', '.join(sorted(bad))} "
                                 f"(expected {', '.join(FAMILIES[g['family']])})")
        for k, v in params.items():
            if not all(_is_number(x) for x in _listed(v)) or not _listed(v):
                raise PcmiInputError(f"{g['family']} parameter {k} must be a number or a list of numbers, got {v!r}")
        graphs += [(g["family"], p) for p in _expand(params)]
    if not graphs:
        raise PcmiInputError("sweep spec 'graphs' lists no graph family")
    if not checks:
        raise PcmiInputError("sweep spec 'checks' names no check")
    cap = spec.get("max_rollouts", 20000)
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise PcmiInputError(f"max_rollouts must be an integer >= 1, got {cap!r}")
    seeds = spec.get("seeds", 1)
    seeds = list(range(seeds)) if isinstance(seeds, int) and not isinstance(seeds, bool) else _listed(seeds)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise PcmiInputError(f"seeds must be a count >= 1 or a list of integers >= 0, got {spec.get('seeds')!r}")
    policies = [p for d in _listed(spec.get("policies", {})) for p in _expand(_mapping(d, "policies"))]
    teachers = [t for d in _listed(spec.get("teachers", {"kind": "route_copying", "eps": 0.1}))
                for t in _expand(_mapping(d, "teachers"))]
    _validate_axes(policies, teachers, _listed(spec.get("beta", 1.0)), _listed(spec.get("extra_len", 0)))
    prompts = spec.get("prompts", 1)
    if prompts != "all" and (isinstance(prompts, bool) or not isinstance(prompts, int) or prompts < 1):
        raise PcmiInputError(f"prompts must be a count >= 1 or \"all\", got {prompts!r}")
    out = []
    for (family, params), policy, teacher, beta, extra, seed in itertools.product(
            graphs, policies, teachers, _listed(spec.get("beta", 1.0)), _listed(spec.get("extra_len", 0)), seeds):
        out.append({"cell": len(out), "family": family, "params": params, "policy": policy, "teacher": teacher,
                    "beta": beta, "extra_len": extra, "seed": seed, "prompts": prompts, "checks": checks,
                    "max_rollouts": cap})
    return out


def _validate_axes(policies, teachers, betas, extras) -> None:
    """Refuse a bad policy, teacher, β or length slack before any cell runs (one line each)."""
    from graphworld import EdgePolicy
    from .graph_instance import TEACHER_KINDS
    from .policies import check_beta
    for p in policies:
        EdgePolicy.from_dict(p)
    for t in teachers:
        if t.get("kind", "route_copying") not in TEACHER_KINDS:
            raise PcmiInputError(f"unknown teacher kind {t.get('kind')!r}; expected one of {', '.join(TEACHER_KINDS)}")
        for k, v in t.items():
            if k != "kind" and not _is_number(v):
                raise PcmiInputError(f"teacher {k} must be a number, got {v!r}")
            if k in ("eps", "lam") and not 0 <= v <= 1:
                raise PcmiInputError(f"teacher {k} must lie in [0, 1], got {v!r}")
    for b in betas:
        if isinstance(b, bool) or not isinstance(b, (int, float)):
            raise PcmiInputError(f"beta must be a number, got {b!r}")
        check_beta(b)
    for e in extras:
        if isinstance(e, bool) or not isinstance(e, int) or e < 0:
            raise PcmiInputError(f"extra_len must be an integer >= 0, got {e!r}")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def _mapping(d, what: str) -> dict:
    if not isinstance(d, dict):
        raise PcmiInputError(f"each {what} entry must be a mapping, got {d!r}")
    return d


# one cell ----------------------------------------------------------------------------------------
def graph_of(family: str, params: dict, seed: int):
    import graphworld as gw
    build = {"multi_route_dag": gw.multi_route_dag, "path_star": gw.path_star, "random_dag": gw.random_dag}[family]
    try:
        return build(seed=seed, **params)
    except (TypeError, ValueError) as exc:
        raise PcmiInputError(f"{family}({params}): {exc}") from None


def instance_files(cell: dict) -> list[dict]:
    """The cell's prompts as `pcmi solve` graph-instance JSON (graph as node-link data)."""
    import networkx as nx
    from graphworld.graphs import graph_to_node_link
    g = graph_of(cell["family"], cell["params"], cell["seed"])
    prompts = g.graph.get("prompts", [])
    if cell["prompts"] != "all":
        prompts = prompts[:cell["prompts"]]
    link = graph_to_node_link(g)
    return [{"graph": link, "source": s, "target": t,
             "max_len": int(nx.shortest_path_length(g, s, t)) + int(cell["extra_len"]),
             "policy": cell["policy"], "teacher": cell["teacher"], "beta": cell["beta"]} for s, t in prompts]


def run_cell(cell: dict) -> list[dict]:
    """The table rows of one cell: one per (prompt, check); a row's status is held | failed |
    not_applicable (the check returned None) | skipped (a precondition failed: its one-line reason)."""
    if "verify_row" in cell:
        return _run_verify_row(cell)
    from .solve import load_instance
    from .verify import CHECKS
    rows = []
    base = {k: cell[k] for k in ("cell", "family", "seed", "beta", "extra_len")}
    base.update(params=json.dumps(cell["params"], sort_keys=True), policy=json.dumps(cell["policy"], sort_keys=True),
                teacher=json.dumps(cell["teacher"], sort_keys=True), row="")
    try:
        files = instance_files(cell)
    except (PcmiInputError, GraphworldError) as exc:
        return [{**base, "check": c, "prompt": "", "status": "skipped: " + str(exc), "n_rollouts": 0}
                for c in cell["checks"]]
    for data in files:
        prompt = f"{data['source']}->{data['target']}"
        try:
            inst, _ = load_instance(data, max_rollouts=cell["max_rollouts"])
        except (PcmiInputError, GraphworldError) as exc:
            rows += [{**base, "check": c, "prompt": prompt, "status": "skipped: " + str(exc), "n_rollouts": 0}
                     for c in cell["checks"]]
            continue
        for check in cell["checks"]:
            t0 = time.perf_counter()
            row = {**base, "check": check, "prompt": prompt, "n_rollouts": inst.n}
            try:
                res = CHECKS[check](inst, data)
            except (PcmiInputError, GraphworldError) as exc:
                row["status"] = "skipped: " + " ".join(str(exc).split())
            else:
                row.update(_verdict(res))
                if res is not None and not res.holds:
                    row["instance"] = json.dumps(data, sort_keys=True)
            row["seconds"] = round(time.perf_counter() - t0, 4)
            rows.append(row)
    return rows


def _verdict(res) -> dict:
    if res is None:
        return {"status": "not_applicable"}
    return {"status": "held" if res.holds else "failed", "holds": bool(res.holds), "margin": repr(float(res.margin))}


def _run_verify_row(cell: dict) -> list[dict]:
    """`pcmi verify`'s row `verify_row`: its generator on its own random stream, every example a row."""
    from . import propositions as P
    from .verify import CHECK_OF_ROW, ROWS
    name, kind, _, make, check = ROWS[cell["verify_row"]]
    rng = np.random.default_rng([cell["seed"], cell["verify_row"]])
    rows = []
    for i in range(cell["examples"]):
        inst = make(rng)
        t0 = time.perf_counter()
        res = check(inst)
        row = {"cell": cell["cell"], "row": name, "check": CHECK_OF_ROW.get(name, name), "seed": cell["seed"], "prompt": i,
               "n_rollouts": P.describe(inst)["n"], **_verdict(res), "seconds": round(time.perf_counter() - t0, 4)}
        if res is not None and not res.holds:
            row["instance"] = json.dumps(P.instance_json(inst))
        rows.append(row)
    return rows


# the table ---------------------------------------------------------------------------------------
def _row_line(row: dict) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(["" if row.get(c) is None else row.get(c, "") for c in COLUMNS])
    return buf.getvalue()


def read_table(path) -> list[dict]:
    """The rows of a sweep table (a torn last line, from a kill mid-write, is left out)."""
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[:text.rfind("\n") + 1]
    rows = list(csv.DictReader(io.StringIO(text)))
    if rows and list(rows[0]) != list(COLUMNS):
        raise PcmiInputError(f"{path} is not a pcmi sweep table (columns differ); use another --out")
    return rows


def _prepare_out(out, spec: dict) -> tuple[Path, set]:
    """Create OUT, keep the spec beside the table, refuse a folder holding another spec; the set of
    finished cells (a cell is finished when its rows and then its end marker row were written)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PcmiInputError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    spec_path = out / "spec.json"
    if spec_path.exists():
        try:
            old = json.loads(spec_path.read_text())
        except (OSError, json.JSONDecodeError):
            raise PcmiInputError(f"{spec_path} is unreadable; use another --out") from None
        if old != spec:
            raise PcmiInputError(f"{out} holds a sweep of another spec ({spec_path}); use another --out")
    else:
        if (out / "table.csv").exists():
            raise PcmiInputError(f"{out}/table.csv exists without its spec.json; use another --out")
        atomic_write_json(spec_path, spec, indent=1)
    table = out / "table.csv"
    rows = read_table(table)
    done = {int(r["cell"]) for r in rows if r["status"] == "cell_done"}
    kept = [r for r in rows if int(r["cell"]) in done]  # a cell killed half-way is run again
    torn = table.exists() and not table.read_text().endswith("\n")
    if not table.exists() or torn or len(kept) != len(rows):
        atomic_write_text(table, _row_line(dict(zip(COLUMNS, COLUMNS))) + "".join(_row_line(r) for r in kept))
    return out, done


def indexed_rows(cell: dict) -> tuple[int, list[dict]]:
    """(cell index, its rows): what a worker returns."""
    return cell["cell"], run_cell(cell)


def _results(todo: list[dict], backend: str, workers: int, address):
    """Yield (cell index, rows) as cells finish."""
    if backend == "serial" or (backend == "process" and workers == 1):
        for c in todo:
            yield indexed_rows(c)
    elif backend == "process":
        from concurrent.futures import ProcessPoolExecutor, as_completed
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for fut in as_completed([pool.submit(indexed_rows, c) for c in todo]):
                yield fut.result()
    else:
        try:
            import ray
        except ImportError:
            raise PcmiInputError('--backend ray needs ray: pip install -e ".[ray]"') from None
        started = not ray.is_initialized()
        if started:
            ray.init(address=address, num_cpus=None if address else workers, include_dashboard=False,
                     log_to_driver=False, logging_level="ERROR")
        try:
            remote = ray.remote(indexed_rows)
            pending = [remote.remote(c) for c in todo]
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                yield ray.get(ready[0])
        finally:
            if started:
                ray.shutdown()


def sweep_rows(spec: dict) -> list[dict]:
    """Every cell's rows, computed here and now (no files): what the `atlas` figure draws."""
    return [r for c in cells(spec) for r in run_cell(c)]


def run_sweep(spec: dict, out, *, backend: str = "process", workers: int | None = None, address=None,
              progress: bool = True) -> dict:
    """Run every unfinished cell of `spec`, appending to OUT/table.csv; write OUT/atlas.json and the
    smallest counterexample per check to OUT/counterexamples/<check>.json. Returns the atlas."""
    if backend not in BACKENDS:
        raise PcmiInputError(f"unknown --backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise PcmiInputError(f"--workers must be an integer >= 1, got {workers!r}")
    all_cells = cells(spec)
    out, done = _prepare_out(out, spec)
    todo = [c for c in all_cells if c["cell"] not in done]
    workers = workers or min(os.cpu_count() or 1, max(len(todo), 1))
    bar = None
    if progress and todo:
        from tqdm import tqdm
        bar = tqdm(total=len(todo), desc="pcmi sweep", unit="cell", leave=False)
    with open(out / "table.csv", "a", newline="") as f:
        for cell, rows in _results(todo, backend, workers, address):
            f.write("".join(_row_line(r) for r in rows) + _row_line({"cell": cell, "status": "cell_done"}))
            f.flush()
            os.fsync(f.fileno())
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    rows = [r for r in read_table(out / "table.csv") if r["status"] != "cell_done"]
    atlas = atlas_of(rows, spec)
    _write_counterexamples(rows, out)
    atomic_write_json(out / "atlas.json", atlas, indent=1)
    return atlas


def group_key(row: dict, verify: bool) -> tuple:
    if verify:
        return (row["row"],)
    return (row["check"], row["family"], row["params"], row["policy"], row["teacher"], row["beta"], row["extra_len"])


def atlas_of(rows: list[dict], spec: dict) -> dict:
    """Hold rate per check × cell parameters (over seeds and prompts): tried = held + failed;
    rows that do not apply or were skipped are counted apart. Sorted, so any backend gives the same."""
    verify = "verify" in spec
    groups: dict = {}
    for r in rows:
        g = groups.setdefault(group_key(r, verify), {"tried": 0, "held": 0, "not_applicable": 0, "skipped": 0,
                                                    "smallest_margin": None})
        status = r["status"]
        if status in ("held", "failed"):
            g["tried"] += 1
            g["held"] += status == "held"
            m = float(r["margin"])
            g["smallest_margin"] = m if g["smallest_margin"] is None else min(g["smallest_margin"], m)
        elif status == "not_applicable":
            g["not_applicable"] += 1
        else:
            g["skipped"] += 1
    names = ("row",) if verify else ("check", "family", "params", "policy", "teacher", "beta", "extra_len")
    entries = []
    for key in sorted(groups):
        g = groups[key]
        entries.append({**dict(zip(names, key)), **g, "hold_rate": g["held"] / g["tried"] if g["tried"] else None})
    return {"kind": "pcmi sweep atlas", "spec": spec, "groups": entries}


def _write_counterexamples(rows: list[dict], out: Path) -> dict:
    """Per check, the failing instance with the fewest rollouts (then the smallest margin)."""
    best: dict = {}
    for r in rows:
        if r["status"] != "failed" or not r.get("instance"):
            continue
        name = r["check"]
        key = (int(r["n_rollouts"]), float(r["margin"]), int(r["cell"]), str(r["prompt"]))
        if name not in best or key < best[name][0]:
            best[name] = (key, r)
    paths = {}
    if best:
        (out / "counterexamples").mkdir(exist_ok=True)
    for name, (_, r) in best.items():
        path = out / "counterexamples" / f"{name}.json"
        atomic_write_json(path, json.loads(r["instance"]), indent=1)
        paths[name] = str(path)
    return paths


def atlas_table(atlas: dict) -> str:
    """The atlas as printed by `pcmi sweep`."""
    lines = []
    for g in atlas["groups"]:
        what = g.get("row") or (f"{g['check']:<12} {g['family']} {g['params']} policy {g['policy']} "
                                f"teacher {g['teacher']} β={g['beta']} max_len=shortest+{g['extra_len']}")
        rate = "   n/a" if g["hold_rate"] is None else f"{g['hold_rate']:6.1%}"
        lines.append(f"{rate}  {g['held']:>4}/{g['tried']:<4} (n/a {g['not_applicable']}, skipped {g['skipped']})  {what}")
    return "\n".join(lines)
