"""Sampling rollouts from the network and scoring completions under a context.

A rollout is the completion after "BOS s t": node tokens, then STOP. It ends at the first
terminal token: STOP (success iff the walk is at t) or an invalid one (a non-edge, or BOS/SEP/DEMO);
a node token after L moves is a truncation. Tokens after the end are STOP padding, masked out.
The success law equals the one graphworld.enumerate_rollouts computes (failures pooled).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Rollouts:
    prompt: torch.Tensor   # (N,) prompt index
    tokens: torch.Tensor   # (N, L+1) completion tokens, STOP-padded
    mask: torch.Tensor     # (N, L+1) True on the rollout's own tokens (terminal included)
    reward: torch.Tensor   # (N,) float 0/1

    @property
    def n(self) -> int:
        return len(self.reward)


def move_table(world, device) -> torch.Tensor:
    """valid[u, v] = True iff token v is a legal move from node token u (an edge of G)."""
    V = len(world.vocab)
    valid = torch.zeros((V, V), dtype=torch.bool)
    for u, v in world.graph.edges:
        valid[world.vocab.node_id(u), world.vocab.node_id(v)] = True
    return valid.to(device)


def prompt_ids(world, prompts, demos=None, device="cpu") -> torch.Tensor:
    """Contexts (N, Tc): "[DEMO y' SEP] BOS s t" (all demonstrations are correct paths, same length)."""
    rows = []
    for i, p in enumerate(prompts):
        task = world.laws[int(p)].task
        rows.append(world.vocab.encode_prompt(task.source, task.target, None if demos is None else demos[i]))
    return torch.tensor(rows, dtype=torch.long, device=device)


@torch.no_grad()
def sample_rollouts(model, world, prompts, group_size: int, generator, valid) -> Rollouts:
    """group_size rollouts per prompt from the model (no KV cache: T ≤ 2L + 6)."""
    device = valid.device
    prompt = torch.as_tensor(prompts, device=device).repeat_interleave(group_size)
    ctx = prompt_ids(world, prompt.tolist(), device=device)                 # (N, 3)
    N, L1 = len(prompt), world.max_len + 1
    stop = world.ids("STOP")
    cur = ctx[:, 1].clone()                                                 # current node token
    tgt = ctx[:, 2]
    done = torch.zeros(N, dtype=torch.bool, device=device)
    reward = torch.zeros(N, device=device)
    mask = torch.zeros((N, L1), dtype=torch.bool, device=device)
    ids = ctx
    for step in range(L1):
        probs = torch.softmax(model(ids)[:, -1].double(), dim=-1)           # (N, V)
        tok = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(device)
        tok = torch.where(done, torch.full_like(tok, stop), tok)
        active = ~done
        mask[:, step] = active
        is_stop = tok == stop
        move_ok = valid[cur, tok] & (step < L1 - 1)
        reward = torch.where(active & is_stop & (cur == tgt), torch.ones_like(reward), reward)
        done = done | (active & (is_stop | ~move_ok))
        cur = torch.where(active & move_ok, tok, cur)
        ids = torch.cat([ids, tok[:, None]], dim=1)
    return Rollouts(prompt, ids[:, ctx.shape[1]:], mask, reward)


def completion_logits(model, ctx, tokens):
    """Logits predicting each completion token: model(ctx ‖ tokens[:, :-1]) at the last L+1
    positions, shape (N, L+1, V)."""
    ids = torch.cat([ctx, tokens[:, :-1]], dim=1)
    return model(ids)[:, ctx.shape[1] - 1:]


def sequence_logprob(logits, tokens, mask):
    """log π(y) = Σ_t log softmax(logits_t)[y_t] over the rollout's tokens, shape (N,)."""
    lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens[..., None]).squeeze(-1)
    return (lp * mask).sum(-1)


def completion_path(world, prompt: int, tokens, mask) -> tuple:
    """The graph path (s, y_1, ..., y_k) of a rollout's node tokens (correct rollouts: exact)."""
    task = world.laws[int(prompt)].task
    nodes = [world.vocab.nodes[t] for t, m in zip(tokens.tolist(), mask.tolist())
             if m and t < world.vocab.n_nodes]
    return (task.source, *nodes)
