"""`pcmi verify`: every proposition of theory.md §6 checked on seeded generated instances."""
from __future__ import annotations

import json

import numpy as np

from . import generate as gen
from . import propositions as P
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
]


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


def run_verify(examples: int = 200, seed: int = 0, as_json: bool = False) -> int:
    if examples < 1:
        raise ValueError(f"--examples must be >= 1, got {examples}")
    reports = verify_all(examples, seed, progress=not as_json)
    statements = {name: text for name, _, text, _, _ in ROWS}
    from .symbolic import all_proofs
    proofs = all_proofs()
    ok = all(r.held == r.tried for r in reports if r.kind == "universal") and all(p.proved for p in proofs)
    if as_json:
        print(json.dumps({"seed": seed, "examples": examples, "all_universal_hold": ok, "rows": [
            {"proposition": r.name, "kind": r.kind, "statement": statements[r.name], "tried": r.tried,
             "held": r.held, "skipped": r.skipped, "hold_rate": r.hold_rate, "smallest_margin": r.smallest_margin,
             "counterexample": r.counterexample} for r in reports],
            "symbolic": [{"name": p.name, "statement": p.statement, "proved": p.proved,
                          "steps": [{"step": st, "ok": bool(o)} for st, o in p.steps]} for p in proofs]}, indent=1))
    else:
        print(f"{'prop':<12} {'kind':<10} {'tried':>5} {'held':>5} {'rate':>7} {'min margin':>11}  statement")
        for r in reports:
            print(f"{r.name:<12} {r.kind:<10} {r.tried:>5} {r.held:>5} {r.hold_rate:>7.1%} "
                  f"{r.smallest_margin:>11.3g}  {statements[r.name]}")
        for r in reports:
            if r.counterexample:
                ce = r.counterexample
                print(f"\n{r.name} smallest counterexample (n={ce['instance']['n']}, margin {ce['margin']:.3g}): "
                      f"{json.dumps(ce['instance'])}")
        print("\nsymbolic (sympy): " + ", ".join(f"{p.name} {'proved' if p.proved else 'NOT PROVED'}" for p in proofs))
        print("\nall universal propositions hold" if ok else "\nA UNIVERSAL PROPOSITION FAILED")
    return 0 if ok else 1
