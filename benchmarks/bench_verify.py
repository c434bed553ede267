"""Per-row time of `pcmi verify` at its default size: `python benchmarks/bench_verify.py [EXAMPLES] [ROW ...]`.

Runs each row of pcmi.verify.ROWS (or only the rows named, e.g. `200 P2 P5 P6`) on its own random
stream, exactly as `pcmi verify` does, and prints the seconds per row, the held count and the total
(the symbolic proofs apart, and only when every row runs). Machine for the numbers in
docs/performance.md: 2-core Intel Xeon, shared (state the load, `uptime`, with any new numbers)."""
import sys
import time

import numpy as np

from pcmi import propositions as P
from pcmi.symbolic import all_proofs
from pcmi.verify import ROWS


def main(examples: int = 200, seed: int = 0, rows=None):
    total = 0.0
    for i, (name, kind, _, make, check) in enumerate(ROWS):
        if rows and name not in rows:
            continue
        t0 = time.perf_counter()
        r = P.search_counterexamples(name, kind, make, check, examples, np.random.default_rng([seed, i]))
        dt = time.perf_counter() - t0
        total += dt
        print(f"{name:12s} {dt:6.2f} s   held {r.held}/{r.tried}")
    if not rows:
        t0 = time.perf_counter()
        all_proofs()
        print(f"{'symbolic':12s} {time.perf_counter() - t0:6.2f} s")
    print(f"rows total   {total:6.2f} s")


if __name__ == "__main__":
    names = set(sys.argv[2:])
    if not (len(sys.argv) < 2 or sys.argv[1].isdigit()) or names - {r[0] for r in ROWS}:
        sys.exit(f"usage: python benchmarks/bench_verify.py [EXAMPLES] [ROW ...], rows: {' '.join(r[0] for r in ROWS)}")
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200, rows=names)
