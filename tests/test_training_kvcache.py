"""The GPT's KV cache and the cached per-level enumeration of Y(x) (pcmi.training.model, .evaluate).

Each check compares against the previous implementation, kept here as reference code: the full
causal forward without cache (`reference_logits`) and the old ModelPolicy (`ReferencePolicy`, one
full forward over context ‖ moves per path). Each check has a sabotage companion: a cache read at
the wrong position offset, or the wrong parent rows gathered, must be caught by the same check.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from scipy.special import logsumexp  # noqa: E402

from graphworld import FAIL, STOP, enumerate_rollouts  # noqa: E402
from pcmi.training import get_config  # noqa: E402
from pcmi.training.data import make_world  # noqa: E402
from pcmi.training.evaluate import ModelPolicy, enumerate_model  # noqa: E402
from pcmi.training.model import GPT  # noqa: E402
from pcmi.training.rollouts import prompt_ids  # noqa: E402
from pcmi.training.train import new_model  # noqa: E402

few = settings(max_examples=25, deadline=None)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


# ---------------------------------------------------------------- reference (previous) implementation

def reference_logits(model: GPT, ids):
    """The previous GPT.forward: logits (B, T, V) of one causal pass over ids, no cache."""
    B, T = ids.shape
    x = model.tok(ids) + model.pos(torch.arange(T, device=ids.device))
    for blk in model.blocks:
        a, h = blk.attn, blk.ln1(x)
        C = h.shape[-1]
        q, k, v = a.qkv(h).split(C, dim=2)
        q, k, v = (u.view(B, T, a.n_head, C // a.n_head).transpose(1, 2) for u in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + a.proj(y.transpose(1, 2).contiguous().view(B, T, C))
        x = x + blk.mlp(blk.ln2(x))
    return model.head(model.ln_f(x))


class ReferencePolicy:
    """The previous ModelPolicy: the full forward over context ‖ p[1:] for every path at every level."""
    has_stop = True

    def __init__(self, model, world, prompt: int, demo=None, device="cpu"):
        self.model, self.world = model, world
        self.ctx = prompt_ids(world, [prompt], None if demo is None else [demo], device=device)[0]
        v = world.vocab
        self.keys = list(v.nodes) + [STOP]
        self.key_ids = list(range(v.n_nodes)) + [v.special("STOP")]
        self.fail_ids = [v.special(n) for n in v.specials if n != "STOP"]

    @torch.no_grad()
    def next_logprobs(self, task, paths) -> list[dict]:
        v = self.world.vocab
        rows = torch.tensor([[v.node_id(u) for u in p[1:]] for p in paths], dtype=torch.long,
                            device=self.ctx.device).view(len(paths), -1)
        ids = torch.cat([self.ctx.expand(len(paths), -1), rows], dim=1)
        lp = torch.log_softmax(reference_logits(self.model, ids)[:, -1].double(), dim=-1).cpu().numpy()
        out = []
        for row in lp:
            d = dict(zip(self.keys, row[self.key_ids].tolist()))
            d[FAIL] = float(logsumexp(row[self.fail_ids]))
            out.append(d)
        return out


# ---------------------------------------------------------------- sabotaged implementations

class WrongOffset(torch.nn.Module):
    """A GPT whose cached forward places the new tokens at positions 0 … T−1 instead of P … P+T−1."""

    def __init__(self, model: GPT):
        super().__init__()
        self.m = model

    def forward(self, ids, past=None, return_cache=False):
        m, T = self.m, ids.shape[1]
        x = m.tok(ids) + m.pos(torch.arange(T, device=ids.device))
        cache = []
        for i, blk in enumerate(m.blocks):
            x, kv = blk(x, None if past is None else past[i])
            cache.append(kv)
        logits = m.head(m.ln_f(x))
        return (logits, cache) if return_cache else logits


class WrongParents(ModelPolicy):
    """Gathers cache rows in frontier order (row i for path i) instead of each path's parent row."""

    def _parent_cache(self, level, rows):
        return super()._parent_cache(level, [min(i, level[0][0].shape[0] - 1) for i in range(len(rows))])


# ---------------------------------------------------------------- checks

def chunked_logits(model, ids, splits):
    """logits (B, T, V) of ids run in chunks ids[:, s_j:s_{j+1}], each on the cache of the ones before."""
    bounds = [0, *splits, ids.shape[1]]
    past, out = None, []
    for a, b in zip(bounds[:-1], bounds[1:]):
        logits, past = model(ids[:, a:b], past=past, return_cache=True)
        out.append(logits)
    return torch.cat(out, dim=1)


def cache_gap(model, ids, splits, wrap=lambda m: m) -> float:
    """max |cached − uncached| over all logits: wrap(model) run in chunks against the previous full
    forward of model."""
    with torch.no_grad():
        return float((chunked_logits(wrap(model), ids, splits) - reference_logits(model, ids)).abs().max())


@st.composite
def cache_cases(draw):
    """A small float64 GPT with wide random weights, random ids and sorted split points."""
    n_head = draw(st.integers(1, 2))
    n_embd = n_head * draw(st.sampled_from([4, 8]))  # width 2 would make LayerNorm a sign
    V, block = draw(st.integers(3, 9)), draw(st.integers(2, 10))
    torch.manual_seed(draw(st.integers(0, 2 ** 16)))
    model = GPT(V, block, draw(st.integers(1, 2)), n_head, n_embd).double().eval()
    with torch.no_grad():  # far from uniform, so a wrong position or key shows
        for p in model.parameters():
            p.normal_(0.0, 0.7)
    T = draw(st.integers(2, block))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 16)))
    ids = torch.randint(0, V, (draw(st.integers(1, 3)), T), generator=g)
    splits = sorted(set(draw(st.lists(st.integers(1, T - 1), min_size=1, max_size=3))))
    return model, ids, splits


@few
@given(cache_cases())
def test_cached_logits_equal_the_full_forward(case):
    model, ids, splits = case
    assert cache_gap(model, ids, splits) < 1e-12
    with torch.no_grad():  # the default forward is the previous one, bit for bit
        assert torch.equal(model(ids), reference_logits(model, ids))
        logits, cache = model(ids, return_cache=True)
    assert torch.equal(logits, model(ids))
    hs = model.blocks[0].attn.qkv.in_features // model.blocks[0].attn.n_head
    assert len(cache) == len(model.blocks)
    assert all(k.shape == v.shape == (ids.shape[0], model.blocks[0].attn.n_head, ids.shape[1], hs) for k, v in cache)


@few
@given(cache_cases())
def test_sabotage_cache_at_wrong_position_offset(case):
    model, ids, splits = case
    assert cache_gap(model, ids, splits, wrap=WrongOffset) > 1e-6


def top_left_causal_attention(q, k, v, attn_mask=None, is_causal=False):
    """The plausible bug: is_causal with a cache (torch aligns that mask top-left: query i sees keys 0 … i)."""
    return _sdpa(q, k, v, is_causal=True) if attn_mask is not None else _sdpa(q, k, v, attn_mask, is_causal=is_causal)


_sdpa = F.scaled_dot_product_attention


@few
@given(cache_cases())
def test_sabotage_cache_with_top_left_mask(case):
    from unittest import mock
    model, ids, splits = case
    if all(b - a == 1 for a, b in zip(splits, [*splits[1:], ids.shape[1]])):
        return  # one token per chunk after the first split: no mask is used
    with mock.patch("pcmi.training.model.F.scaled_dot_product_attention", top_left_causal_attention):
        assert cache_gap(model, ids, splits) > 1e-6


def test_cache_past_block_size_is_refused():
    model = GPT(5, 4, 1, 1, 4).eval()
    with torch.no_grad():
        _, past = model(torch.zeros(1, 3, dtype=torch.long), return_cache=True)
        model(torch.zeros(1, 1, dtype=torch.long), past=past)
        with pytest.raises(ValueError, match="exceeds block_size"):
            model(torch.zeros(1, 2, dtype=torch.long), past=past)


# ---------------------------------------------------------------- the enumeration

@pytest.fixture(scope="module")
def world():
    return make_world(get_config("small"))


@pytest.fixture(scope="module")
def sharp_model(world):
    """The small preset's network at init with its head scaled up (a far-from-uniform law)."""
    torch.manual_seed(4)
    m = new_model(get_config("small"), world).eval()
    with torch.no_grad():
        m.head.weight.mul_(40)
    return m


def enumeration_gap(world, model, prompt: int, demo=None, policy=ModelPolicy, device="cpu", wrap=lambda m: m) -> float:
    """policy(wrap(model)) against ReferencePolicy(model): same rollout set, tree, tokens and outcomes
    (else inf); then max |Δ| over log π(y) and the per-node log π(token | prefix)."""
    task = world.laws[prompt].task
    model.eval()
    ref = enumerate_rollouts(task, ReferencePolicy(model, world, prompt, demo, device=device))
    new = enumerate_rollouts(task, policy(wrap(model).eval(), world, prompt, demo, device=device))
    if (ref.paths != new.paths or ref.outcome != new.outcome or ref.token != new.token
            or not np.array_equal(ref.tree.parent, new.tree.parent)
            or not np.array_equal(ref.reward, new.reward)):
        return np.inf
    return max(float(np.abs(ref.log_prob - new.log_prob).max()), float(np.abs(ref.log_cond - new.log_cond).max()))


@pytest.fixture(scope="module")
def model64(sharp_model):
    import copy
    return copy.deepcopy(sharp_model).double()


def test_cached_enumeration_equals_the_full_forward_float64(world, model64):
    demo = None
    for prompt in range(len(world.laws)):
        assert enumeration_gap(world, model64, prompt) < 1e-12
        base = enumerate_model(model64, world, prompt)
        demo = base.paths[int(np.flatnonzero(base.reward == 1)[0])]
        assert enumeration_gap(world, model64, prompt, demo=demo) < 1e-12  # a longer context


def test_cached_enumeration_equals_the_full_forward_float32(world, sharp_model):
    for prompt in range(len(world.laws)):
        assert enumeration_gap(world, sharp_model, prompt) < 5e-5  # float32 rounding of logits ~ 40


def test_enumerate_model_switch(world, model64):
    """enumerate_model(kv_cache=False) is the reference itself; kv_cache=True agrees to 1e-12."""
    ref = enumerate_rollouts(world.laws[0].task, ReferencePolicy(model64, world, 0))
    off, on = enumerate_model(model64, world, 0, kv_cache=False), enumerate_model(model64, world, 0)
    assert off.paths == on.paths == ref.paths and off.outcome == on.outcome == ref.outcome
    np.testing.assert_array_equal(off.log_prob, ref.log_prob)
    np.testing.assert_allclose(on.log_prob, ref.log_prob, rtol=0, atol=1e-12)


def test_sabotage_wrong_parent_rows(world, model64):
    assert max(enumeration_gap(world, model64, p, policy=WrongParents) for p in range(len(world.laws))) > 1e-3


def test_sabotage_wrong_offset_in_enumeration(world, model64):
    assert enumeration_gap(world, model64, 0, wrap=WrongOffset) > 1e-3


def test_policy_falls_back_when_parents_are_unknown(world, model64):
    """Calls out of level order (a fresh level, a repeat, mixed depths, a jump back) give the reference."""
    task, ref = world.laws[0].task, ReferencePolicy(model64, world, 0)
    pol = ModelPolicy(model64, world, 0)
    paths = enumerate_model(model64, world, 0).paths
    s = (task.source,)
    deep = sorted({tuple(p[:3]) for p in paths if len(p) >= 3 and p[2] in world.vocab.nodes})
    mid = sorted({p[:2] for p in deep})
    # a first call below the root, a jump back, a repeat, the root, mixed depths, a level after a mixed call
    for batch in (deep, mid, mid, [s], [s] + deep + mid, deep):
        got = pol.next_logprobs(task, batch)
        want = [ref.next_logprobs(task, [p])[0] for p in batch]  # the old code took one depth per call
        for g, w in zip(got, want):
            assert g.keys() == w.keys()
            assert max(abs(g[k] - w[k]) for k in g) < 1e-12
    assert pol.next_logprobs(task, []) == []


@CUDA
def test_cached_enumeration_on_cuda(world, sharp_model):
    import copy
    m = copy.deepcopy(sharp_model).cuda()
    cpu = enumerate_model(sharp_model, world, 0)
    for kv in (True, False):
        gpu = enumerate_model(m, world, 0, device="cuda", kv_cache=kv)
        assert gpu.paths == cpu.paths
        np.testing.assert_allclose(gpu.log_prob, cpu.log_prob, rtol=0, atol=2e-4)  # float32, logits ~ 40
    assert enumeration_gap(world, m.double(), 0, device="cuda") < 1e-12
