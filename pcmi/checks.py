"""Checks of scalar arguments (eps, lam, beta, alpha, tol, counts, ...). Each returns the value as a float
or an int, or raises PcmiInputError with one line that names the argument, what it must be, and what
it got. A bool is never a number (JSON true/false must not pass as 1/0), nor is a string; NaN and ±inf
are refused. Accepted: Python and numpy reals (and 0-d numeric arrays), and other numbers.Real such as
fractions."""
from __future__ import annotations

import numbers

import numpy as np

from .errors import PcmiInputError


def _real(x) -> float | None:
    """x as a float when it is a real number and not a bool; None otherwise."""
    if isinstance(x, (bool, np.bool_)):
        return None
    if isinstance(x, np.ndarray):
        return float(x) if x.ndim == 0 and x.dtype.kind in "iuf" else None
    return float(x) if isinstance(x, numbers.Real) else None


def number(x, name: str) -> float:
    """A finite real number."""
    v = _real(x)
    if v is None:
        raise PcmiInputError(f"{name} must be a number, got {x!r}")
    if not np.isfinite(v):
        raise PcmiInputError(f"{name} must be a finite number, got {x!r}")
    return v


def in_range(x, name: str, lo: float, hi: float, *, open_low: bool = False, open_high: bool = False) -> float:
    """A number in [lo, hi] (an end excluded when open_low / open_high)."""
    v = _real(x)
    if v is None:
        raise PcmiInputError(f"{name} must be a number, got {x!r}")
    if not (lo <= v <= hi) or (open_low and v == lo) or (open_high and v == hi):
        raise PcmiInputError(f"{name} must lie in {'(' if open_low else '['}{lo:g}, {hi:g}{')' if open_high else ']'}, "
                             f"got {x!r}")
    return v


def unit(x, name: str, *, open_low: bool = False, open_high: bool = False) -> float:
    """A number in [0, 1] (a probability, a mixing weight)."""
    return in_range(x, name, 0.0, 1.0, open_low=open_low, open_high=open_high)


def positive(x, name: str, *, zero_ok: bool = False) -> float:
    """A finite number > 0 (≥ 0 with zero_ok)."""
    v = _real(x)
    if v is None:
        raise PcmiInputError(f"{name} must be a number, got {x!r}")
    if not np.isfinite(v) or v < 0 or (v == 0 and not zero_ok):
        raise PcmiInputError(f"{name} must be a finite number {'>=' if zero_ok else '>'} 0, got {x!r}")
    return v


def count(x, name: str, low: int = 0) -> int:
    """An integer ≥ low (not a bool, not a float that happens to be whole)."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (numbers.Integral, np.integer)) or x < low:
        raise PcmiInputError(f"{name} must be an integer >= {low}, got {x!r}")
    return int(x)
