"""Per-module mutation score from `mutmut` results (run from the repository root after `mutmut run`).

    python tools/mutation_table.py                       # markdown table over every checked mutant
    python tools/mutation_table.py --survivors           # also list every mutant not killed
    python tools/mutation_table.py --sample-names        # a seeded stratified sample, one name a line
    python tools/mutation_table.py --sample              # the table over that sample only

A full run is about 4,300 mutants (hours on 2 cores). The sample is an honest shortcut: per module
max(--min, --fraction of its mutants), at most --cap, chosen uniformly at random with --seed; run just those with
`mutmut run $(python tools/mutation_table.py --sample-names)` and report the sample's score with
its Wilson 95% interval. Killed = a test failed or timed out under the mutant; "no tests" (no test
reaches the function) and "survived" count as not killed; unchecked mutants are left out.
"""
from __future__ import annotations

import argparse
import collections
import subprocess
import sys

import numpy as np
from scipy.stats import binomtest

KILLED = {"killed", "timeout", "segfault"}
UNCHECKED = {"not checked"}


def mutant_statuses() -> list[tuple[str, str]]:
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"],
                         capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        if ":" in line:
            name, status = line.strip().rsplit(":", 1)
            rows.append((name.strip(), status.strip()))
    return rows


def module_of(mutant: str) -> str:
    """pcmi.metrics.x_success__mutmut_6 → pcmi/metrics.py"""
    return "/".join(p for p in mutant.split(".") if not p.startswith(("x_", "xǁ"))) + ".py"


def stratified_sample(names, fraction: float, minimum: int, seed: int, cap: int | None = None) -> list[str]:
    """Per module, max(minimum, ⌈fraction·n⌉) names (all if fewer), uniformly without replacement;
    with cap, a uniform subset of at most cap of those (so a capped sample is nested in the uncapped one)."""
    rng = np.random.default_rng(seed)
    by = collections.defaultdict(list)
    for n in sorted(names):
        by[module_of(n)].append(n)
    out = []
    for mod in sorted(by):
        pool = by[mod]
        k = min(len(pool), max(minimum, int(np.ceil(fraction * len(pool)))))
        chosen = [pool[i] for i in sorted(rng.choice(len(pool), size=k, replace=False))]
        if cap is not None and len(chosen) > cap:
            sub = np.random.default_rng([seed, len(pool)]).choice(len(chosen), size=cap, replace=False)
            chosen = [chosen[i] for i in sorted(sub)]
        out += chosen
    return out


def wilson(k: int, n: int) -> tuple[float, float]:
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return ci.low, ci.high


def table(rows, total_by_module=None) -> str:
    by = collections.defaultdict(collections.Counter)
    for name, status in rows:
        by[module_of(name)][status] += 1
    lines = ["| module | mutants | checked | killed | survived | no tests | score | 95% interval |",
             "|---|---|---|---|---|---|---|---|"]
    tot = collections.Counter()
    for mod in sorted(by):
        tot.update(by[mod])
        lines.append(_row(mod, by[mod], (total_by_module or {}).get(mod)))
    lines.append(_row("**all**", tot, sum(total_by_module.values()) if total_by_module else None))
    return "\n".join(lines)


def _row(mod, c, total=None) -> str:
    checked = sum(v for s, v in c.items() if s not in UNCHECKED)
    killed = sum(c[s] for s in KILLED)
    if not checked:
        return f"| {mod} | {total or sum(c.values())} | 0 | | | | | |"
    lo, hi = wilson(killed, checked)
    return (f"| {mod} | {total or sum(c.values())} | {checked} | {killed} | {c['survived']} | {c['no tests']} "
            f"| {killed / checked:.1%} | {lo:.1%}–{hi:.1%} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--survivors", action="store_true", help="list every checked mutant not killed")
    p.add_argument("--sample", action="store_true", help="restrict the table to the stratified sample")
    p.add_argument("--sample-names", action="store_true", help="print the sample's mutant names and stop")
    p.add_argument("--fraction", type=float, default=0.15)
    p.add_argument("--min", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cap", type=int, default=150, help="at most this many mutants per module")
    args = p.parse_args(argv)
    rows = mutant_statuses()
    totals = collections.Counter(module_of(n) for n, _ in rows)
    if args.sample or args.sample_names:
        keep = set(stratified_sample([n for n, _ in rows], args.fraction, args.min, args.seed, args.cap))
        if args.sample_names:
            print("\n".join(n for n, _ in rows if n in keep))
            return 0
        rows = [(n, s) for n, s in rows if n in keep]
    print(table(rows, totals))
    if args.survivors:
        for name, status in rows:
            if status not in KILLED and status not in UNCHECKED:
                print(f"{status}: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
