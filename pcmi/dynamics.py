"""On-policy rounds (theory.md §4): π_{k+1} = optimum of round k with D_k = π_k(· | r = 1)
and the teacher rebuilt from π_k (latent-strategy: same P_z, weights = π_k's strategy masses)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import PcmiInputError
from .instance import Instance, demos_from_successes
from .metrics import correct_entropy, strategy_mass_entropy, strategy_masses, success
from .policies import forward_kl_optimum, rl_optimum, sdsd_optimum


@dataclass
class Round:
    k: int
    log_pi: np.ndarray
    success: float
    correct_entropy: float
    strategy_masses: dict | None
    strategy_mass_entropy: float | None


def _record(k, log_pi, inst) -> Round:
    r = inst.reward
    masses = ent = None
    if inst.route is not None:
        masses = strategy_masses(log_pi, r, inst.route)
        ent = strategy_mass_entropy(log_pi, r, inst.route)
    return Round(k, log_pi, success(log_pi, r), correct_entropy(log_pi, r), masses, ent)


def on_policy_instance(inst: Instance, log_pi) -> Instance:
    """Round k+1's instance: base π_k, D = π_k(· | r = 1), teacher rebuilt from π_k."""
    if not hasattr(inst.teacher, "rebuilt"):
        raise PcmiInputError(f"{type(inst.teacher).__name__} cannot be rebuilt from a new policy; "
                             "on-policy rounds need a latent-strategy or copy teacher")
    return Instance(log_pi, inst.reward, inst.teacher.rebuilt(log_pi), demos_from_successes(log_pi, inst.reward),
                    route=inst.route, tree=inst.tree, name=inst.name)


def sdsd_rounds(inst: Instance, n_rounds: int, beta: float = 1.0) -> list[Round]:
    """Rounds of the (tempered) SDSD optimum, each against the previous round's teacher."""
    rounds, cur = [_record(0, inst.log_base, inst)], inst
    for k in range(1, n_rounds + 1):
        log_pi = sdsd_optimum(cur, beta)
        rounds.append(_record(k, log_pi, inst))
        cur = on_policy_instance(cur, log_pi)
    return rounds


def forward_kl_rounds(inst: Instance, n_rounds: int) -> list[Round]:
    rounds, cur = [_record(0, inst.log_base, inst)], inst
    for k in range(1, n_rounds + 1):
        log_pi = forward_kl_optimum(cur)
        rounds.append(_record(k, log_pi, inst))
        cur = on_policy_instance(cur, log_pi)
    return rounds


def rl_rounds(inst: Instance, n_rounds: int, beta: float) -> list[Round]:
    """π_{k+1} ∝ π_k · exp(r / β)."""
    rounds, log_pi = [_record(0, inst.log_base, inst)], inst.log_base
    for k in range(1, n_rounds + 1):
        log_pi = rl_optimum(log_pi, inst.reward, beta)
        rounds.append(_record(k, log_pi, inst))
    return rounds
