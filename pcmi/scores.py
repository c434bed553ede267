"""PCMI(y; y' | x) = log T(y | x, y') − log π0(y | x) and its expectation over demonstrations."""
from __future__ import annotations

import numpy as np

from .teachers import expected_log_teacher, leaf_rows


def pcmi_matrix(inst) -> np.ndarray:
    """PCMI[j, y] = log T(y | y'_j) − log π0(y): the full |Y|×|Y| matrix (small instances);
    −inf where π0(y) = 0 (as in `expected_pcmi`: the score only matters on supp π0)."""
    alive = np.isfinite(inst.log_base)[None, :]
    with np.errstate(invalid="ignore"):
        m = leaf_rows(inst.teacher, inst.n) - inst.log_base[None, :]
    return np.where(alive, m, -np.inf)


def expected_log_teacher_leaves(inst, log_D=None) -> np.ndarray:
    """E_{y'∼D} log T(y | y') for every rollout y."""
    log_D = inst.log_demos if log_D is None else log_D
    return expected_log_teacher(inst.teacher, log_D, inst.tree)[inst.tree.leaf_node]


def expected_pcmi(inst, log_D=None) -> np.ndarray:
    """s(y) = E_{y'∼D}[PCMI(y; y' | x)] = E_D log T(y | y') − log π0(y)."""
    with np.errstate(invalid="ignore"):
        s = expected_log_teacher_leaves(inst, log_D) - inst.log_base
    return np.where(np.isfinite(inst.log_base), s, -np.inf)
