"""Per-module mutation score from a finished `mutmut run` (run from the repository root).

    python tools/mutation_table.py            # markdown table on stdout
    python tools/mutation_table.py --survivors # also list every surviving mutant

Score = killed / (killed + survived + timeout-free "no tests" mutants); mutants that mutmut
could not test ("no tests": no test reaches the function) count as not killed.
"""
from __future__ import annotations

import argparse
import collections
import subprocess
import sys

KILLED = {"killed", "timeout", "segfault"}  # a crash or hang under a mutant is a detection


def mutant_statuses() -> list[tuple[str, str]]:
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        if ":" not in line:
            continue
        name, status = line.strip().rsplit(":", 1)
        rows.append((name.strip(), status.strip()))
    return rows


def module_of(mutant: str) -> str:
    """pcmi.metrics.x_success__mutmut_6 → pcmi/metrics.py"""
    parts = mutant.split(".")
    mod = [p for p in parts if not p.startswith(("x_", "xǁ"))]
    return "/".join(mod) + ".py"


def table(rows) -> str:
    by = collections.defaultdict(collections.Counter)
    for name, status in rows:
        by[module_of(name)][status] += 1
    lines = ["| module | mutants | killed | survived | no tests | other | score |",
             "|---|---|---|---|---|---|---|"]
    tot = collections.Counter()
    for mod in sorted(by):
        c = by[mod]
        tot.update(c)
        lines.append(_row(mod, c))
    lines.append(_row("**all**", tot))
    return "\n".join(lines)


def _row(mod, c) -> str:
    n = sum(c.values())
    killed = sum(c[s] for s in KILLED)
    other = n - killed - c["survived"] - c["no tests"]
    score = killed / n if n else float("nan")
    return f"| {mod} | {n} | {killed} | {c['survived']} | {c['no tests']} | {other} | {score:.1%} |"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--survivors", action="store_true")
    args = p.parse_args(argv)
    rows = mutant_statuses()
    print(table(rows))
    if args.survivors:
        for name, status in rows:
            if status not in KILLED:
                print(f"{status}: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
