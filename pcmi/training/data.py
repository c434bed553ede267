"""Pretraining data from graphworld with an exactly known law (so the Bayesian teacher is exact).

World: a multi_route_dag; every (source, target) prompt x has routes z (the concept node a path
passes), route weights w_z(x) and within-route path laws P_z(y | x), both from the goal-aware
edge policy π_data(v | u) = softmax(pref) over successors that still reach t. A sequence is

    [DEMO y' SEP] BOS s t y STOP,   z ~ w(x),  y ~ P_z,  y' ~ P_z (independently) w.p. p_demo,

plus one "misconception" strategy z = wrong of weight p_wrong whose paths (and demonstrations)
go to another target t' ≠ t (valid edges, wrong end: reward 0). Route z ≠ wrong has weight
(1 − p_wrong)·w_z(x). A converged base model therefore succeeds with probability ≈ 1 − p_wrong,
while with a correct demonstration in context the posterior on "wrong" is 0: the teacher is more
accurate than the student, as in self-distillation on reasoning tasks.

The in-context law of y given y' is the posterior predictive Σ_z q(z | y') P_z(y) with
q(z | y') ∝ w_z P_z(y'): pcmi.LatentStrategyTeacher(w, P, eps=0). Loss on completion tokens only.

Feedback (p_feedback > 0, vocabulary with FB): with probability p_feedback a sequence is instead

    FB w SEP BOS s t y STOP,   w ~ uniform over the wrong targets t' ≠ t,  y ~ π_data(· | z ≠ wrong),

the verifier's feedback WrongEndpoint(w) on a failed attempt followed by a completion drawn from the
data law conditioned on compatibility with it (the route strategies only, the misconception excluded):
the ideal filtering teacher with eps = 0 of theory.md §11, which keeps π_data's ratios among correct
paths (P10). The extra uniform is drawn only when p_feedback > 0, so p_feedback = 0 reproduces the
random stream (and every batch) of the data law without feedback.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pcmi.errors import PcmiInputError
from graphworld import EdgePolicy, Task, Vocab, enumerate_rollouts, multi_route_dag


@dataclass
class PromptLaw:
    """The data law of one prompt: its correct paths, log π_data(y), route labels."""
    task: Task
    paths: list
    log_prob: np.ndarray
    route: np.ndarray
    wrong_paths: list            # paths s → t' ≠ t (the misconception strategy)
    wrong_log_prob: np.ndarray   # their law P_wrong (uniform over t', edge law within)

    @property
    def wrong_targets(self) -> tuple:
        """The targets t' ≠ t that the misconception's paths end at (the possible WrongEndpoint feedback)."""
        return tuple(sorted({p[-1] for p in self.wrong_paths}, key=str))

    def sample_wrong(self, rng: np.random.Generator) -> tuple:
        p = np.exp(self.wrong_log_prob)
        return self.wrong_paths[int(rng.choice(len(p), p=p / p.sum()))]

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
    p_wrong: float      # weight of the misconception strategy

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
        others = [u for u in g.graph["targets"] if u != t] if "targets" in g.graph else \
            [u for u in g if g.nodes[u].get("role") == "target" and u != t]
        wrong, wrong_lp = [], []
        for u in others:
            rw = enumerate_rollouts(Task(g, s, u, L), EdgePolicy(goal_aware=True))
            wrong += list(rw.paths)
            wrong_lp += (rw.log_prob - np.log(len(others))).tolist()
        laws.append(PromptLaw(task, [rs.paths[i] for i in np.flatnonzero(ok)], rs.log_prob[ok], rs.route[ok],
                              wrong, np.array(wrong_lp)))
    return World(g, Vocab.of(g, feedback=getattr(cfg, "p_feedback", 0.0) > 0), laws, L, cfg.p_wrong if cfg.n_targets > 1 else 0.0)


def pretraining_batch(world: World, batch: int, p_demo: float, p_wrong: float, rng: np.random.Generator,
                      p_feedback: float = 0.0):
    """(inputs (B, T), targets (B, T), loss mask (B, T)): next-token pairs, right-padded with STOP,
    loss only where the target is a completion token."""
    if p_feedback > 0 and "FB" not in world.vocab.specials:
        raise PcmiInputError("pretraining with p_feedback > 0 needs a world built with p_feedback > 0 (token FB)")
    rows, starts = [], []
    for _ in range(batch):
        law = world.laws[int(rng.integers(len(world.laws)))]
        demo, fb = None, None
        if p_feedback > 0 and law.wrong_paths and rng.random() < p_feedback:   # "FB t' SEP", y compatible
            wt = law.wrong_targets
            fb = wt[int(rng.integers(len(wt)))]
            path = law.paths[law.sample(rng)]
        elif law.wrong_paths and rng.random() < p_wrong:     # z = wrong: y and y' both from P_wrong
            path = law.sample_wrong(rng)
            if rng.random() < p_demo:
                demo = law.sample_wrong(rng)
        else:                                               # z = a route: y, y' ~ P_z
            i = law.sample(rng)
            path = law.paths[i]
            if rng.random() < p_demo:
                demo = law.paths[law.sample(rng, route=int(law.route[i]))]
        ctx = world.vocab.encode_prompt(law.task.source, law.task.target, demo, feedback=fb)
        rows.append(ctx + world.vocab.encode_completion(path))
        starts.append(len(ctx))
    return padded_batch(rows, starts, world.ids("STOP"))


def padded_batch(rows, starts, stop_id: int):
    """(inputs, targets, loss mask) of token rows padded with STOP; the loss covers each row's tokens
    from its start (the completion) on: position p predicts token p + 1."""
    T = max(map(len, rows))
    ids = torch.full((len(rows), T), stop_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T - 1), dtype=torch.bool)
    for b, (row, c) in enumerate(zip(rows, starts)):
        ids[b, :len(row)] = torch.tensor(row)
        mask[b, c - 1:len(row) - 1] = True
    return ids[:, :-1], ids[:, 1:], mask
