"""A nanoGPT-style decoder-only transformer in plain torch (shapes: B batch, T time, C width).

Optional KV cache: `model(ids, past=cache, return_cache=True)` continues sequences whose first P
tokens are already in `cache` (per layer (k, v), each (B, n_head, P, head_dim)); the new tokens sit at
positions P … P+T−1 and attend to every cached key and causally to each other.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)

    def forward(self, x, past=None):
        """(output (B, T, C), (k, v) of all P+T positions); past: (k, v) of the P earlier positions."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)                               # 3 × (B, T, C)
        q, k, v = (u.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for u in (q, k, v))
        if past is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)     # (B, nh, T, hs)
        else:
            P = past[0].shape[2]
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (B, nh, P+T, hs)
            # query i (position P+i) sees keys 0 … P+i (is_causal would align the mask top-left)
            mask = None if T == 1 else torch.ones(T, P + T, dtype=torch.bool, device=x.device).tril(P)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)     # (B, nh, T, hs)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C)), (k, v)


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.ln2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd))

    def forward(self, x, past=None):
        a, kv = self.attn(self.ln1(x), past)
        x = x + a
        return x + self.mlp(self.ln2(x)), kv


class GPT(nn.Module):
    """logits[b, t] = scores of the token after ids[b, :t+1] (pre-norm blocks, learned positions)."""

    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int):
        super().__init__()
        self.block_size = block_size
        self.tok = nn.Embedding(vocab_size, n_embd)
        self.pos = nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by 1/√(2L)
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, ids, past=None, return_cache=False):
        """logits (B, T, V) of ids at positions P … P+T−1, P = tokens in `past` (0 without); with
        return_cache, (logits, cache): per layer (k, v), each (B, n_head, P+T, head_dim)."""
        B, T = ids.shape
        P = 0 if past is None else past[0][0].shape[2]
        if P + T > self.block_size:
            raise ValueError(f"sequence of length {P + T} exceeds block_size {self.block_size}")
        x = self.tok(ids) + self.pos(torch.arange(P, P + T, device=ids.device))  # (B, T, C)
        cache = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, None if past is None else past[i])
            cache.append(kv)
        logits = self.head(self.ln_f(x))                                  # (B, T, V)
        return (logits, cache) if return_cache else logits
