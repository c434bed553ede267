"""`pcmi verify`: every proposition of theory.md §6 checked on seeded generated instances.

`run_verify` prints the table; each counterexample comes as an explicit instance JSON (full
precision) that `pcmi solve FILE` loads, embedded in the report or written to
DIR/<check>.json; `verify_instance(FILE, CHECK)` re-runs one check on such a file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from . import generate as gen
from . import propositions as P
from .atomic import atomic_write_json
from .errors import PcmiInputError
from .feedback import p10_instance
from .teachers import LatentStrategyTeacher


def _p1(rng):
    n = int(rng.integers(2, 9))
    r = (rng.random(n) < 0.6).astype(np.int64)
    r[rng.integers(n)] = 1
    return gen.log_dist(rng, n), r, gen.beta_value(rng)


def _p2_instance(rng):
    pick = rng.integers(4)
    if pick == 0:
        return gen.route_copying_instance(rng, all_correct=bool(rng.integers(2)))
    if pick == 1:
        return gen.latent_instance(rng)
    if pick == 2:
        return gen.graph_case(rng)
    return _kernel_instance(rng)


def _kernel_instance(rng):
    from .instance import Instance, demos_from_successes
    from .teachers import KernelTeacher
    n = int(rng.integers(2, 7))
    lb = gen.log_dist(rng, n)
    r = (rng.random(n) < 0.7).astype(np.int64)
    r[rng.integers(n)] = 1
    rows = np.stack([gen.log_dist(rng, n) for _ in range(n)])
    return Instance(lb, r, KernelTeacher(rows), demos_from_successes(lb, r), name=f"kernel(n={n})")


def _bayes_teacher(rng):
    t = (gen.latent_instance if rng.integers(2) else gen.route_copying_instance)(rng, eps=0.5).teacher
    return LatentStrategyTeacher(t.log_w, t.log_P, 0.0)


def _p4_outside(rng):
    pick = rng.integers(3)
    if pick == 0:
        return gen.route_copying_instance(rng, all_correct=False)
    if pick == 1:
        return gen.latent_instance(rng, eps=gen.eps_value(rng, 1e-3, 0.999), all_correct=bool(rng.integers(2)))
    return gen.graph_case(rng, teacher={"kind": "soft_route", "eps": gen.eps_value(rng, 1e-3, 0.999),
                                        "sharpness": float(rng.choice([0.5, 1.0, 2.0, 4.0]))})


def _p7_instance(rng):
    while True:
        inst = gen.route_copying_instance(rng, all_correct=True, eps=gen.eps_value(rng, 0.01, 0.99))
        w = np.sort(P._masses(inst.log_base, inst))[::-1]
        if w[0] > 1.1 * w[1]:
            return inst


def _p9_instance(rng):
    """Instances where D* exists: route-copying (closed form), the same as an explicit matrix and
    copy teachers as matrices (the LP must find it), copy teachers (closed form), and overlapping
    latent teachers or soft-route graph prompts on which the LP finds a D* (others are redrawn)."""
    from .instance import Instance, demos_from_successes
    from .teachers import CopyTeacher, KernelTeacher, leaf_rows
    pick = rng.integers(6)
    if pick == 0:
        return gen.route_copying_instance(rng, all_correct=bool(rng.integers(2)))
    if pick in (1, 2):
        if pick == 1:
            inst = gen.route_copying_instance(rng, all_correct=bool(rng.integers(2)))
        else:
            n = int(rng.integers(2, 8))
            lb = gen.log_dist(rng, n)
            r = (rng.random(n) < 0.7).astype(np.int64)
            r[rng.integers(n)] = 1
            inst = Instance(lb, r, CopyTeacher(lb, gen.eps_value(rng, 0.0, 0.999)), demos_from_successes(lb, r),
                            name=f"copy(n={n})")
        if rng.integers(2):  # as an explicit matrix: the LP route
            inst = Instance(inst.log_base, inst.reward, KernelTeacher(leaf_rows(inst.teacher, inst.n)),
                            inst.log_demos, route=inst.route, name=f"kernel of {inst.name}")
        return inst
    for _ in range(20):
        inst = gen.latent_instance(rng) if pick < 5 else gen.graph_case(
            rng, teacher={"kind": "soft_route", "eps": gen.eps_value(rng, 1e-3, 0.999),
                          "sharpness": float(rng.choice([0.5, 2.0, 8.0]))})
        if _has_dstar(inst):
            return inst
    return gen.route_copying_instance(rng)


def _has_dstar(inst, tol: float = 1e-12) -> bool:
    """Whether some D ≥ 0 on the correct set has Σ D = 1 and E_D PCMI constant there, decided by
    non-negative least squares on the PCMI block (independent of the LP that `check_p9` tests):
    min ‖(M_y − M_0)·D‖² + (Σ D − 1)² over D ≥ 0 is 0 iff a D* exists."""
    from scipy.optimize import nnls
    from .demonstrations import pcmi_block
    M = pcmi_block(inst)
    M = M[:, np.isfinite(M).all(axis=0)]
    if M.shape[1] == 0:
        return False
    A = M - M[:1]
    A = A / max(float(np.max(np.abs(A))), 1e-300)
    x, res = nnls(np.vstack([A, np.ones((1, A.shape[1]))]), np.r_[np.zeros(A.shape[0]), 1.0], maxiter=50 * A.shape[1])
    return bool(res <= tol)


ROWS = [
    # name, kind, statement, make(rng), check(x)
    ("P1", "universal", "RL keeps ratios among correct rollouts", _p1, lambda a: P.check_p1(*a)),
    ("P2", "universal", "argmin E_D KL(π‖T) = π0·exp(s)/Z (vs scipy)", _p2_instance, P.check_p2),
    ("P3", "universal", "Bayesian teacher: PCMI symmetric, marginal = π0", _bayes_teacher, P.check_p3),
    ("P4", "universal", "route-copying, all correct: gaps amplified",
     lambda rng: gen.route_copying_instance(rng, all_correct=True), P.check_p4),
    ("P4-outside", "tendency", "amplification with failures / overlapping strategies", _p4_outside, P.check_p4_general),
    ("P5", "universal", "π_tok = π_SD iff Z(h·a) constant in a", gen.graph_case, P.check_p5),
    ("P6", "universal", "Bayesian, D = π0: π_fwd = π0",
     lambda rng: gen.latent_instance(rng, eps=0.0, all_correct=True), P.check_p6),
    ("P7", "universal", "SDSD rounds collapse; fwd-KL and RL rounds keep ratios", _p7_instance, P.check_p7),
    ("P8", "universal", "all correct: SDSD entropy and OOD success <= RL's",
     lambda rng: gen.route_copying_instance(rng, all_correct=True), P.check_p8),
    ("P8-failures", "tendency", "with failures, RL β matched to SDSD success",
     lambda rng: gen.route_copying_instance(rng, all_correct=False), P.check_p8_failures),
    ("P9", "universal", "SDSD under D* keeps π0's ratios among correct rollouts", _p9_instance, P.check_p9),
    ("P10", "universal", "feedback teacher keeps ratios among correct rollouts", p10_instance, P.check_p10),
]


# checks that a saved instance file (teacher as a matrix, no prefix tree) can re-run; P3, P4, P6,
# P7 and P8 need the latent-strategy teacher itself and refuse a file with a clear error
REPLAYABLE = {"P1", "P2", "P5", "P4_general", "P8_failures", "P9"}

# check names for --check and DIR/<check>.json: the row name, except for the two tendencies
CHECK_OF_ROW = {"P4-outside": "P4_general", "P8-failures": "P8_failures"}


def _beta_of(data) -> float:
    """The file's β, read exactly as `pcmi solve` reads it."""
    from .policies import check_beta
    from .solve import _beta_of as file_beta
    return check_beta(file_beta(data))


# check name -> run(inst, parsed JSON) -> Result | None
CHECKS = {
    "P1": lambda inst, data: P.check_p1(inst.log_base, inst.reward, _beta_of(data)),
    "P2": lambda inst, data: P.check_p2(inst),
    "P3": lambda inst, data: P.check_p3(inst.teacher),
    "P4": lambda inst, data: P.check_p4(inst),
    "P4_general": lambda inst, data: P.check_p4_general(inst),
    "P5": lambda inst, data: P.check_p5(inst),
    "P6": lambda inst, data: P.check_p6(inst),
    "P7": lambda inst, data: P.check_p7(inst),
    "P8": lambda inst, data: P.check_p8(inst, _beta_of(data)),
    "P8_failures": lambda inst, data: P.check_p8_failures(inst),
    "P9": lambda inst, data: P.check_p9(inst),
    "P10": lambda inst, data: P.check_p10(inst),
}
_ALIASES = {name.upper().replace("-", "_"): name for name in CHECKS} | {"P4_OUTSIDE": "P4_general"}


def check_name(name) -> str:
    """The canonical check name (P1 … P10, P4_general, P8_failures); '-' and case are ignored."""
    key = str(name).strip().upper().replace("-", "_")
    if key not in _ALIASES:
        raise PcmiInputError(f"unknown check {name!r}; expected one of {', '.join(CHECKS)}")
    return _ALIASES[key]


def verify_all(examples: int = 200, seed: int = 0, progress: bool = False) -> list[P.SearchReport]:
    reports = []
    rows = ROWS
    if progress:
        from tqdm import tqdm
        rows = tqdm(ROWS, desc="pcmi verify", unit="prop", leave=False)
    for i, (name, kind, _, make, check) in enumerate(rows):
        rng = np.random.default_rng([seed, i])
        reports.append(P.search_counterexamples(name, kind, make, check, examples, rng))
    return reports


def write_counterexamples(reports, folder) -> dict:
    """Write each report's counterexample instance to folder/<check>.json (atomically);
    returns {row name: path}. The folder is created if missing."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise PcmiInputError(f"--counterexamples {folder}: not a directory")
    os.makedirs(folder, exist_ok=True)
    paths = {}
    for r in reports:
        if r.counterexample:
            path = folder / f"{CHECK_OF_ROW.get(r.name, r.name)}.json"
            atomic_write_json(path, r.counterexample["instance"], indent=1)
            paths[r.name] = str(path)
    return paths


def run_verify(examples: int = 200, seed: int = 0, as_json: bool = False, counterexample_dir=None) -> int:
    """Print the table (or JSON); exit status 0 iff every universal proposition held, every
    implementation agreed with its independent computation and every sympy proof went through."""
    if isinstance(examples, bool) or not isinstance(examples, (int, np.integer)) or examples < 1:
        raise PcmiInputError(f"--examples must be an integer >= 1, got {examples!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise PcmiInputError(f"--seed must be an integer >= 0, got {seed!r}")
    reports = verify_all(examples, seed, progress=not as_json)
    files = write_counterexamples(reports, counterexample_dir) if counterexample_dir is not None else {}
    statements = {name: text for name, _, text, _, _ in ROWS}
    from .symbolic import all_proofs
    proofs = all_proofs()
    ok = (all(r.held == r.tried for r in reports if r.kind == "universal")
          and all(r.disagreements == 0 for r in reports) and all(p.proved for p in proofs))
    if as_json:
        print(json.dumps({"seed": seed, "examples": examples, "all_universal_hold": ok, "rows": [
            {"proposition": r.name, "check": CHECK_OF_ROW.get(r.name, r.name), "kind": r.kind,
             "statement": statements[r.name], "tried": r.tried, "held": r.held, "skipped": r.skipped,
             "hold_rate": r.hold_rate, "smallest_margin": r.smallest_margin, "disagreements": r.disagreements,
             "counterexample": r.counterexample, "counterexample_file": files.get(r.name)} for r in reports],
            "symbolic": [{"name": p.name, "statement": p.statement, "proved": p.proved,
                          "steps": [{"step": st, "ok": bool(o)} for st, o in p.steps]} for p in proofs]}, indent=1))
        return 0 if ok else 1
    print(f"{'prop':<12} {'kind':<10} {'tried':>5} {'held':>5} {'rate':>7} {'min margin':>11}  statement")
    for r in reports:
        print(f"{r.name:<12} {r.kind:<10} {r.tried:>5} {r.held:>5} {r.hold_rate:>7.1%} "
              f"{r.smallest_margin:>11.3g}  {statements[r.name]}")
    for r in reports:
        if r.disagreements:
            print(f"\n{r.name}: the implementation disagreed with the independent computation on "
                  f"{r.disagreements} instance(s)")
    for r in reports:
        if r.counterexample:
            ce, check = r.counterexample, CHECK_OF_ROW.get(r.name, r.name)
            head = f"\n{r.name} smallest counterexample ({ce['name']}, n={ce['n']}, margin {ce['margin']!r})"
            if check not in REPLAYABLE:  # the file holds T as a matrix: teacher-kind checks refuse it
                print(f"{head}\n{json.dumps(ce['instance'])}")
            elif r.name in files:
                print(f"{head}: written to {files[r.name]}\n  re-run: pcmi verify --instance {files[r.name]} --check {check}")
            else:
                print(f"{head}; save this line as FILE and re-run: pcmi verify --instance FILE --check {check}\n"
                      f"{json.dumps(ce['instance'])}")
    print("\nsymbolic (sympy): " + ", ".join(f"{p.name} {'proved' if p.proved else 'NOT PROVED'}" for p in proofs))
    print("\nall universal propositions hold" if ok else "\nA UNIVERSAL PROPOSITION FAILED")
    return 0 if ok else 1


def load_instance_file(path):
    """(Instance, parsed JSON) from an instance file in `pcmi solve`'s format."""
    from .solve import load_instance, read_instance_file
    data = read_instance_file(path)
    return load_instance(data)[0], data


def verify_instance(path, check=None, as_json: bool = False) -> int:
    """Re-run one check on an instance file (e.g. a saved counterexample) and print its verdict
    and margin (repr, full precision). Exit status 0 if the check holds (or does not apply), 1 if not."""
    if check is None:
        raise PcmiInputError(f"--instance needs --check NAME (one of {', '.join(CHECKS)})")
    name = check_name(check)
    inst, data = load_instance_file(path)
    res = CHECKS[name](inst, data)
    if res is None:
        out = {"check": name, "file": str(path), "applies": False, "holds": None, "margin": None, "details": {}}
    else:
        out = {"check": name, "file": str(path), "applies": True, "holds": bool(res.holds),
               "margin": float(res.margin), "details": P._jsonable(res.details)}
    if as_json:
        print(json.dumps(out, indent=1))
    elif res is None:
        print(f"{name} on {path}: does not apply to this instance (see the check's conditions)")
    else:
        print(f"{name} on {path}: {'holds' if res.holds else 'FAILS'}, margin {float(res.margin)!r}")
        print(json.dumps(out["details"]))
    return 0 if res is None or res.holds else 1
