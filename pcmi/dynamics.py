"""On-policy rounds (theory.md §4): π_{k+1} = optimum of round k with D_k = π_k(· | r = 1)
and the teacher rebuilt from π_k (latent-strategy: same P_z, weights = π_k's strategy masses)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .distributions import probs
from .errors import PcmiInputError
from .instance import Instance, demos_from_successes, has_reachable_success
from .metrics import correct_entropy, strategy_mass_entropy, strategy_masses, success
from .policies import forward_kl_optimum, rl_optimum, sdsd_optimum, sdsd_token_optimum


@dataclass
class Round:
    k: int
    log_pi: np.ndarray
    success: float
    correct_entropy: float | None       # None when π_k puts no mass on a correct rollout
    strategy_masses: dict | None
    strategy_mass_entropy: float | None


def _check_n_rounds(n_rounds) -> int:
    if isinstance(n_rounds, bool) or not isinstance(n_rounds, (int, np.integer)) or n_rounds < 0:
        raise PcmiInputError(f"n_rounds must be a non-negative integer, got {n_rounds!r}")
    return int(n_rounds)


def _record(k, log_pi, inst) -> Round:
    r = inst.reward
    masses = ent = h = None
    if has_reachable_success(log_pi, r):
        h = correct_entropy(log_pi, r)
        if inst.route is not None:
            masses = strategy_masses(log_pi, r, inst.route)
            ent = strategy_mass_entropy(log_pi, r, inst.route)
    return Round(k, log_pi, success(log_pi, r), h, masses, ent)


def on_policy_instance(inst: Instance, log_pi, k: int | None = None, teacher: str = "live") -> Instance:
    """Round k+1's instance: D = π_k(· | r = 1) and, with teacher="live", base π_k and the teacher
    rebuilt from π_k; with teacher="frozen", base and teacher stay π0's (only D follows the policy)."""
    if teacher not in ("live", "frozen"):
        raise PcmiInputError(f"teacher must be 'live' or 'frozen', got {teacher!r}")
    if teacher == "frozen":
        if not has_reachable_success(log_pi, inst.reward):
            raise PcmiInputError(f"{'' if k is None else f'round {k}: '}the policy has no correct rollout with "
                                 "positive probability, so the next round's demonstrations π_k(· | r = 1) are undefined")
        return inst.with_demos(demos_from_successes(log_pi, inst.reward))
    if not hasattr(inst.teacher, "rebuilt"):
        raise PcmiInputError(f"{type(inst.teacher).__name__} cannot be rebuilt from a new policy; "
                             "on-policy rounds need a latent-strategy or copy teacher")
    at = "" if k is None else f"round {k}: "
    if not has_reachable_success(log_pi, inst.reward):
        raise PcmiInputError(f"{at}the policy has no correct rollout with positive probability, so the next "
                             "round's demonstrations π_k(· | r = 1) are undefined")
    teacher = inst.teacher.rebuilt(log_pi)
    tb = getattr(teacher, "log_base", None)
    if tb is not None and np.max(np.abs(probs(tb) - probs(log_pi))) > 1e-6:
        raise PcmiInputError(f"{at}the rebuilt teacher's base Σ_z m_z P_z differs from π_k: on-policy rounds "
                             "rebuild exactly only route-copying (disjoint) latent teachers and copy teachers")
    return Instance(log_pi, inst.reward, teacher, demos_from_successes(log_pi, inst.reward),
                    route=inst.route, tree=inst.tree, name=inst.name)


def _rounds(inst: Instance, n_rounds: int, optimum, teacher: str = "live") -> list[Round]:
    rounds, cur = [_record(0, inst.log_base, inst)], inst
    for k in range(1, _check_n_rounds(n_rounds) + 1):
        if k > 1:
            cur = on_policy_instance(cur if teacher == "live" else inst, rounds[-1].log_pi, k - 1, teacher)
        rounds.append(_record(k, optimum(cur), inst))
    return rounds


def sdsd_rounds(inst: Instance, n_rounds: int, beta: float | None = None, *, teacher: str = "live",
                level: str = "sequence") -> list[Round]:
    """Rounds of the SDSD optimum (beta=None) or of its tempered family (a number beta), each
    against the previous round's teacher (teacher="live") or π0's teacher with only D = π_k(·|r=1)
    following the policy (teacher="frozen"). level="token": the token-level optimum π_tok instead
    (beta must then be None) — the rounds whose limit is the fixed point of the full α = 1 mode."""
    if level not in ("sequence", "token"):
        raise PcmiInputError(f"level must be 'sequence' or 'token', got {level!r}")
    if level == "token":
        if beta is not None:
            raise PcmiInputError("the token-level rounds have no tempered family: leave beta unset")
        return _rounds(inst, n_rounds, sdsd_token_optimum, teacher)
    return _rounds(inst, n_rounds, lambda cur: sdsd_optimum(cur, beta), teacher)


def forward_kl_rounds(inst: Instance, n_rounds: int) -> list[Round]:
    """Rounds of the forward-KL optimum π_{k+1} = E_{D_k} T_k(· | y')."""
    return _rounds(inst, n_rounds, forward_kl_optimum)


def rl_rounds(inst: Instance, n_rounds: int, beta: float) -> list[Round]:
    """π_{k+1} ∝ π_k · exp(r / β)."""
    rounds, log_pi = [_record(0, inst.log_base, inst)], inst.log_base
    for k in range(1, _check_n_rounds(n_rounds) + 1):
        log_pi = rl_optimum(log_pi, inst.reward, beta)
        rounds.append(_record(k, log_pi, inst))
    return rounds
