"""Pretraining data from graphworld with an exactly known law (so the Bayesian teacher is exact).

World: a multi_route_dag; every (source, target) prompt x has routes z (the concept node a path
passes), route weights w_z(x) and within-route path laws P_z(y | x), both from the goal-aware
edge policy π_data(v | u) = softmax(pref) over successors that still reach t. A sequence is

    [DEMO y' SEP] BOS s t y STOP,   z ~ w(x),  y ~ P_z,  y' ~ P_z (independently) w.p. p_demo,

so the in-context law of y given y' is the posterior predictive Σ_z q(z | y') P_z(y) with
q(z | y') ∝ w_z P_z(y'): pcmi.LatentStrategyTeacher(w, P, eps=0). Loss on completion tokens only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from graphworld import EdgePolicy, Task, Vocab, enumerate_rollouts, multi_route_dag


@dataclass
class PromptLaw:
    """The data law of one prompt: its correct paths, log π_data(y), route labels."""
    task: Task
    paths: list
    log_prob: np.ndarray
    route: np.ndarray

    def sample(self, rng: np.random.Generator, route: int | None = None) -> int:
        """Index of a path ~ π_data, or ~ P_route when route is given."""
        logp = self.log_prob if route is None else np.where(self.route == route, self.log_prob, -np.inf)
        p = np.exp(logp - logp.max())
        return int(rng.choice(len(p), p=p / p.sum()))


@dataclass
class World:
    graph: object
    vocab: Vocab
    laws: list          # one PromptLaw per prompt
    max_len: int        # L: moves per correct path (all equal in a multi_route_dag)

    @property
    def tasks(self) -> list:
        return [law.task for law in self.laws]

    @property
    def block_size(self) -> int:
        """Longest model input: DEMO + L nodes + SEP, BOS s t, then L+1 completion tokens minus one."""
        return (self.max_len + 2) + 3 + (self.max_len + 1) - 1

    def ids(self, name: str) -> int:
        return self.vocab.special(name)


def make_world(cfg) -> World:
    """The graph, its vocabulary and the exact data law of every prompt."""
    g = multi_route_dag(cfg.k_routes, cfg.depth, cfg.branching, cfg.graph_seed,
                        n_sources=cfg.n_sources, n_targets=cfg.n_targets, pref_scale=cfg.pref_scale)
    L = cfg.depth + 2
    laws = []
    for s, t in g.graph["prompts"]:
        task = Task(g, s, t, L)
        rs = enumerate_rollouts(task, EdgePolicy(goal_aware=True))
        ok = rs.reward == 1
        laws.append(PromptLaw(task, [rs.paths[i] for i in np.flatnonzero(ok)], rs.log_prob[ok], rs.route[ok]))
    return World(g, Vocab.of(g), laws, L)


def pretraining_batch(world: World, batch: int, p_demo: float, rng: np.random.Generator):
    """(inputs (B, T), targets (B, T), loss mask (B, T)): next-token pairs, right-padded with STOP,
    loss only where the target is a completion token."""
    rows, starts = [], []
    for _ in range(batch):
        law = world.laws[int(rng.integers(len(world.laws)))]
        i = law.sample(rng)
        demo = None
        if rng.random() < p_demo:
            demo = law.paths[law.sample(rng, route=int(law.route[i]))]
        ctx = world.vocab.encode_prompt(law.task.source, law.task.target, demo)
        rows.append(ctx + world.vocab.encode_completion(law.paths[i]))
        starts.append(len(ctx))
    T = max(map(len, rows))
    ids = torch.full((batch, T), world.ids("STOP"), dtype=torch.long)
    mask = torch.zeros((batch, T - 1), dtype=torch.bool)
    for b, (row, c) in enumerate(zip(rows, starts)):
        ids[b, :len(row)] = torch.tensor(row)
        mask[b, c - 1:len(row) - 1] = True   # position p predicts token p+1
    return ids[:, :-1], ids[:, 1:], mask
