"""The GPT's KV cache, the cached per-level enumeration of Y(x) and the model teacher's rows batched
over demonstrations (pcmi.training.model, .evaluate).

Each check compares against the previous implementation, kept here as reference code: the full
causal forward without cache (`reference_logits`), the old ModelPolicy (`ReferencePolicy`, one
full forward over context ‖ moves per path) and the old model_teacher (`reference_model_teacher`, one
enumeration per demonstration). Each check has a sabotage companion: a cache read at the wrong
position offset, the wrong parent rows gathered, a row given the wrong demonstration's context or a
context without its demonstration, must be caught by the same check.
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
from pcmi.training import evaluate as ev  # noqa: E402
from pcmi.training.evaluate import (BatchedModelPolicy, ModelPolicy, demonstration_log_probs,  # noqa: E402
                                    enumerate_model, model_teacher)
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


def reference_model_teacher(model, world, prompt: int, base, device="cpu") -> np.ndarray:
    """The previous model_teacher's rows: one ReferencePolicy enumeration per correct demonstration y'_j
    (row j), the base row elsewhere."""
    rows = np.tile(base.log_prob, (len(base), 1))
    for j in np.flatnonzero(base.reward == 1):
        rs = enumerate_rollouts(world.laws[prompt].task, ReferencePolicy(model, world, prompt, base.paths[j], device))
        assert rs.paths == base.paths
        rows[j] = rs.log_prob
    return rows


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


class ShiftedDemos(BatchedModelPolicy):
    """Row b gets the context of demonstration b + 1 (rows assigned to the wrong demonstration)."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.ctx = self.ctx.roll(-1, 0)


class NoDemo(BatchedModelPolicy):
    """Contexts without the demonstration ("BOS s t"), as the sabotage harness's eval_teacher_without_demo."""

    def __init__(self, model, world, prompt, demos, device="cpu", kv_cache=True):
        super().__init__(model, world, prompt, demos, device, kv_cache)
        self.ctx = prompt_ids(world, [prompt] * len(demos), None, device=device)


class ContextZeroParents(BatchedModelPolicy):
    """Gathers every context's parent rows from context 0's block (rows r instead of b·n + r)."""

    def _parent_cache(self, level, rows):
        n = len(rows) // len(self.ctx)
        return super()._parent_cache(level, rows[:n] * len(self.ctx))


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
    assert torch.equal(logits, reference_logits(model, ids))
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
def sharp_model(world, sharp_model_of):
    return sharp_model_of("small", world)


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


# ---------------------------------------------------------------- the model teacher, batched over demonstrations

def teacher_gap(world, model, prompt: int, policy=BatchedModelPolicy, device="cpu") -> float:
    """model_teacher (batched, its BatchedModelPolicy replaced by `policy`) against reference_model_teacher:
    max |Δ log T(y | y')| over all rows (inf if it raises that the trees differ)."""
    from unittest import mock
    model.eval()
    base = enumerate_model(model, world, prompt, device=device)
    ref = reference_model_teacher(model, world, prompt, base, device)
    with mock.patch.object(ev, "BatchedModelPolicy", policy):
        try:
            new = model_teacher(model, world, prompt, base, device=device).log_T
        except RuntimeError:
            return np.inf
    return float(np.abs(new - ref).max())


def test_batched_teacher_rows_equal_the_per_demonstration_rows_float64(world, model64):
    for prompt in range(len(world.laws)):
        assert teacher_gap(world, model64, prompt) < 1e-12
        base = enumerate_model(model64, world, prompt)
        on, off = model_teacher(model64, world, prompt, base).log_T, model_teacher(model64, world, prompt, base,
                                                                                   batched=False).log_T
        np.testing.assert_allclose(on, off, rtol=0, atol=1e-12)
        wrong = base.reward == 0
        np.testing.assert_allclose(on[wrong], np.broadcast_to(base.log_prob, on[wrong].shape), rtol=0, atol=1e-12)


def test_batched_teacher_rows_equal_the_per_demonstration_rows_float32(world, sharp_model):
    for prompt in range(len(world.laws)):
        assert teacher_gap(world, sharp_model, prompt) < 5e-5  # float32 rounding of logits ~ 40


@st.composite
def teacher_cases(draw):
    """A small graph world (routes, depth, branching, seed drawn), its float64 network at init with the head
    scaled (a near-uniform to a far-from-uniform law) and a prompt."""
    from pcmi.training.config import TrainConfig
    cfg = TrainConfig(k_routes=draw(st.integers(2, 3)), depth=draw(st.integers(1, 2)),
                      branching=draw(st.integers(1, 2)), n_sources=1, n_targets=draw(st.integers(1, 2)),
                      graph_seed=draw(st.integers(0, 100)), n_layer=draw(st.integers(1, 2)), n_embd=16)
    w = make_world(cfg)
    torch.manual_seed(draw(st.integers(0, 2 ** 16)))
    m = new_model(cfg, w).double().eval()
    with torch.no_grad():
        m.head.weight.mul_(draw(st.sampled_from([1.0, 10.0, 40.0])))
    return w, m, draw(st.integers(0, len(w.laws) - 1))


@settings(max_examples=10, deadline=None)
@given(teacher_cases())
def test_batched_teacher_rows_on_random_worlds(case):
    w, m, prompt = case
    assert teacher_gap(w, m, prompt) < 1e-12


def test_demonstrations_of_different_lengths_are_grouped(world, model64):
    """Contexts of several lengths (no padding): each row equals the enumeration with its demonstration."""
    base = enumerate_model(model64, world, 0)
    ok = [base.paths[j] for j in np.flatnonzero(base.reward == 1)]
    demos = [ok[0], ok[1][:-1], ok[2], ok[3][:-2], ok[4][:-1]]
    for kv in (True, False):
        rows = demonstration_log_probs(model64, world, 0, demos, base, kv_cache=kv)
        for d, row in zip(demos, rows):
            ref = enumerate_rollouts(world.laws[0].task, ReferencePolicy(model64, world, 0, d))
            np.testing.assert_allclose(row, ref.log_prob, rtol=0, atol=1e-12)


def test_model_teacher_default_is_batched(world, model64):
    """The default runs no per-demonstration enumeration (so the sabotage harness patches the path used)."""
    from unittest import mock
    base = enumerate_model(model64, world, 0)
    with mock.patch.object(ev, "enumerate_model", side_effect=AssertionError("per-demonstration enumeration")):
        model_teacher(model64, world, 0, base)
        with pytest.raises(AssertionError):
            model_teacher(model64, world, 0, base, batched=False)


def test_batched_policy_falls_back_when_a_log_prob_is_impossible(world, model64):
    """A −inf log-prob (a tree that might differ per context) takes the per-demonstration path."""
    from unittest import mock
    base = enumerate_model(model64, world, 0)
    real = BatchedModelPolicy._key_logprobs

    def with_impossible_token(self, logits):
        t = real(self, logits)
        t[1:, -1] = -np.inf if len(t) > 1 else t[1:, -1]  # FAIL impossible for every row but the first
        return t

    with mock.patch.object(BatchedModelPolicy, "_key_logprobs", with_impossible_token):
        rows = model_teacher(model64, world, 0, base).log_T
    np.testing.assert_allclose(rows, reference_model_teacher(model64, world, 0, base), rtol=0, atol=1e-12)


@pytest.mark.parametrize("policy", [ShiftedDemos, NoDemo, ContextZeroParents])
def test_sabotage_batched_teacher(world, model64, policy):
    assert any(teacher_gap(world, model64, p, policy=policy) > 1e-3 for p in range(len(world.laws)))


class TablePolicy:
    """B seeded random log-laws per prefix over keys (graph nodes, STOP, FAIL), spread e^±10: graphworld
    sees law `b`; `levels` records all B per call as BatchedModelPolicy does."""
    has_stop = True

    def __init__(self, keys, B: int, seed: int, b: int = 0):
        self.keys, self.B, self.seed, self.b, self.levels = keys, B, seed, b, []

    def next_logprobs(self, task, paths):
        idx = {v: i for i, v in enumerate(self.keys)}
        t = np.array([[np.random.default_rng([self.seed, b, *(idx[v] for v in p)]).normal(0, 4, len(self.keys))
                       for p in paths] for b in range(self.B)])
        t -= logsumexp(t, axis=-1, keepdims=True)
        self.levels.append(([tuple(p) for p in paths], t))
        return [dict(zip(self.keys, row)) for row in t[self.b].tolist()]


def fail_z_task():
    """s → u → c0 → t and s → c1 → t (c_z concept nodes): from the unlabelled prefixes s and s·u a move into
    a concept node that is no edge pools into FAIL:z."""
    import networkx as nx
    from graphworld import Task
    g = nx.DiGraph([(0, 1), (1, 2), (2, 4), (0, 3), (3, 4), (1, 4)])
    g.nodes[2]["concept"], g.nodes[3]["concept"] = 0, 1
    return Task(g, 0, 4, 3)


@st.composite
def table_cases(draw):
    from pcmi.testing import graphs
    from graphworld import Task
    if draw(st.booleans()):
        task = fail_z_task()
    else:
        import networkx as nx
        g = draw(graphs())
        s, t = g.graph["prompts"][0]
        task = Task(g, s, t, nx.shortest_path_length(g, s, t) + draw(st.integers(0, 2)))
    return task, draw(st.integers(1, 4)), draw(st.integers(0, 2 ** 16))


def table_gap(task, B, seed) -> float:
    """leaf_log_probs_per_context from one enumeration against B enumerations (one per law): max |Δ|,
    inf if it raises."""
    keys = list(task.graph.nodes) + [STOP, FAIL]
    pol = TablePolicy(keys, B, seed)
    rs = enumerate_rollouts(task, pol)
    try:
        rows = ev.leaf_log_probs_per_context(rs, pol.levels, keys)
    except RuntimeError:
        return np.inf
    return max(float(np.abs(rows[b] - enumerate_rollouts(task, TablePolicy(keys, B, seed, b)).log_prob).max())
               for b in range(B))


@few
@given(table_cases())
def test_rows_per_context_equal_the_enumeration_of_each_context(case):
    assert table_gap(*case) < 1e-12


def test_fail_z_leaves_are_pooled_by_label():
    task = fail_z_task()
    rs = enumerate_rollouts(task, TablePolicy(list(task.graph.nodes) + [STOP, FAIL], 1, 0))
    assert {"FAIL:0", "FAIL:1"} <= set(rs.token)  # the case the label rule is for
    assert table_gap(task, 3, 0) < 1e-12


def test_sabotage_replay_of_context_zero_for_every_context():
    """Every context's rows replayed from context 0's tables: caught."""
    from unittest import mock
    original = ev._Replay.__init__
    with mock.patch.object(ev._Replay, "__init__", lambda self, levels, keys, b: original(self, levels, keys, 0)):
        assert table_gap(fail_z_task(), 3, 0) > 1e-6


@CUDA
def test_batched_teacher_on_cuda(world, sharp_model):
    import copy
    m = copy.deepcopy(sharp_model).cuda()
    base = enumerate_model(sharp_model, world, 0)
    cpu = model_teacher(sharp_model, world, 0, base).log_T
    gpu = model_teacher(m, world, 0, base, device="cuda").log_T
    np.testing.assert_allclose(gpu, cpu, rtol=0, atol=2e-4)  # float32, logits ~ 40
    assert teacher_gap(world, m.double(), 0, device="cuda") < 1e-12


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
