"""Memory of the explicit kernel teacher's constructor: `python benchmarks/bench_kernel_teacher.py [N]`.

KernelTeacher(log T) validates an N×N matrix (no NaN or +inf, rows normalized) and renormalizes it. Prints
the peak traced memory (tracemalloc) of `KernelTeacher(log_T)` and `KernelTeacher.from_probs(T)` in units
of the matrix itself (8·N² bytes); the result is one copy, so 1.0 is the floor for temporaries + result.
"""
import sys
import tracemalloc

import numpy as np

from pcmi.teachers import KernelTeacher


def peak_in_matrices(make, arg) -> float:
    tracemalloc.start()
    make(arg)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / arg.nbytes


if __name__ == "__main__":
    n = int(float(sys.argv[1])) if len(sys.argv) > 1 else 4000
    T = np.random.default_rng(0).dirichlet(np.ones(n), size=n)
    log_T = np.log(T)
    print(f"N={n}: KernelTeacher(log T) peak {peak_in_matrices(KernelTeacher, log_T):.2f}× the matrix, "
          f"from_probs(T) peak {peak_in_matrices(KernelTeacher.from_probs, T):.2f}×")
