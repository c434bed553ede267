"""Feedback-conditioned SDSD in training (issue 12): the optional FB token (the vocabulary, and so the model's
initialization, unchanged without feedback), the feedback pretraining data (a p_feedback = 0 batch is the old
one; a feedback sequence's completion is compatible with its feedback and follows the data law restricted to
the route strategies), the trainer's choice of feedback (a failure of the same group that stopped at a node
≠ t, never a success; groups without one masked), the feedback contexts, the exact feedback predictions, the
config rules and the tiny feedback grid end to end. Each check has a sabotage companion."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

torch = pytest.importorskip("torch")

import pcmi  # noqa: E402
from graphworld import SPECIALS, Vocab  # noqa: E402
from graphworld.feedback import WrongEndpoint  # noqa: E402
from pcmi.errors import PcmiInputError  # noqa: E402
from pcmi.training import grid as G  # noqa: E402
from pcmi.training.config import PRESETS, TrainConfig  # noqa: E402
from pcmi.training.data import make_world, padded_batch, pretraining_batch  # noqa: E402
from pcmi.training.evaluate import (enumerate_model, feedback_fixed_point, feedback_teacher,  # noqa: E402
                                    ideal_feedback_prediction, model_teacher)
from pcmi.training.model import GPT  # noqa: E402
from pcmi.training.rollouts import Rollouts, move_table, sample_rollouts  # noqa: E402
from pcmi.training.train import choose_feedback, feedback_contexts, new_model  # noqa: E402

TINY = PRESETS["tiny"]
FB = TINY.replace(p_feedback=0.3)


@pytest.fixture(scope="module")
def world():
    return make_world(TINY)


@pytest.fixture(scope="module")
def fb_world():
    return make_world(FB)


# ----------------------------------------------------------------------------- vocabulary
def test_vocabulary_and_init_unchanged_without_feedback(world, fb_world):
    v, vf = world.vocab, fb_world.vocab
    assert v == Vocab(v.nodes) and v.specials == SPECIALS and len(v) == v.n_nodes + 4
    assert "FB" not in v.specials
    with pytest.raises(ValueError):
        v.special("FB")
    # FB is appended: node ids and the other specials keep their ids
    assert vf.nodes == v.nodes and len(vf) == len(v) + 1 and vf.special("FB") == len(v)
    assert all(vf.special(n) == v.special(n) for n in SPECIALS)
    assert vf.decode([vf.special("FB")]) == ["FB"]
    # the model of a run without feedback is initialized as before (same vocabulary size, same seed)
    torch.manual_seed(0)
    m = new_model(TINY, world)
    torch.manual_seed(0)
    ref = GPT(v.n_nodes + len(SPECIALS), world.block_size, TINY.n_layer, TINY.n_head, TINY.n_embd)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), ref.state_dict().values()))


def _old_pretraining_batch(world, batch, p_demo, p_wrong, rng):
    """The data law before feedback existed (copied from the committed data.py): the reference stream."""
    rows, starts = [], []
    for _ in range(batch):
        law = world.laws[int(rng.integers(len(world.laws)))]
        demo = None
        if law.wrong_paths and rng.random() < p_wrong:
            path = law.sample_wrong(rng)
            if rng.random() < p_demo:
                demo = law.sample_wrong(rng)
        else:
            i = law.sample(rng)
            path = law.paths[i]
            if rng.random() < p_demo:
                demo = law.paths[law.sample(rng, route=int(law.route[i]))]
        ctx = world.vocab.encode_prompt(law.task.source, law.task.target, demo)
        rows.append(ctx + world.vocab.encode_completion(path))
        starts.append(len(ctx))
    return rows, starts


@pytest.mark.parametrize("seed", [0, 1])
def test_batch_without_feedback_is_the_old_batch(world, seed):
    rng_new, rng_old = np.random.default_rng(seed), np.random.default_rng(seed)
    x, y, mask = pretraining_batch(world, 64, 0.5, 0.3, rng_new, p_feedback=0.0)
    rows, starts = _old_pretraining_batch(world, 64, 0.5, 0.3, rng_old)
    for b, (row, c) in enumerate(zip(rows, starts)):
        assert x[b, :len(row) - 1].tolist() == row[:-1] and y[b, :len(row) - 1].tolist() == row[1:]
        assert mask[b].nonzero().view(-1).tolist() == list(range(c - 1, len(row) - 1))
    assert rng_new.bit_generator.state == rng_old.bit_generator.state   # the same stream, the same position


def test_feedback_needs_the_feedback_vocabulary(world):
    with pytest.raises(PcmiInputError, match="p_feedback"):
        pretraining_batch(world, 4, 0.5, 0.3, np.random.default_rng(0), p_feedback=0.5)


# ----------------------------------------------------------------------------- feedback data
def _parse(world, x, y, mask):
    """Per row: (prompt (s, t), feedback node or None, completion path (s, y...))."""
    v = world.vocab
    out = []
    for b in range(x.shape[0]):
        ids = [int(x[b, 0])] + y[b].tolist()
        c = int(mask[b].nonzero()[0]) + 1                      # first completion token
        ctx, comp = ids[:c], ids[c:c + int(mask[b].sum())]
        s, t = v.nodes[ctx[-2]], v.nodes[ctx[-1]]
        fb = v.nodes[ctx[1]] if ctx[0] == v.special("FB") else None
        if fb is not None:
            assert ctx[:3] == [v.special("FB"), v.node_id(fb), v.special("SEP")] and len(ctx) == 6
        assert comp[-1] == v.special("STOP")
        out.append(((s, t), fb, (s, *[v.nodes[i] for i in comp[:-1]])))
    return out


def check_feedback_data(world, batch_fn, n=3000, seed=0):
    """Every feedback sequence names a wrong target of its prompt, its completion is compatible with that
    feedback (never stops at w: it reaches t) and its route frequencies match π_data restricted to the
    route strategies within 5 standard errors; the feedback fraction is p_feedback within 5 SE."""
    p_fb = 0.4
    seqs = _parse(world, *batch_fn(world, n, 0.5, 0.3, np.random.default_rng(seed), p_fb))
    laws = {(law.task.source, law.task.target): law for law in world.laws}
    fb_seqs = [q for q in seqs if q[1] is not None]
    se = np.sqrt(p_fb * (1 - p_fb) / n)
    assert abs(len(fb_seqs) / n - p_fb) <= 5 * se
    counts = {}
    for (s, t), w, path in fb_seqs:
        law = laws[(s, t)]
        assert w in law.wrong_targets and w != t
        assert WrongEndpoint(w).compatible(path) and path[-1] == t
        z = int(law.route[law.paths.index(path)]) if path in law.paths else -1
        counts.setdefault((s, t), []).append(z)
    for key, zs in counts.items():
        law, zs = laws[key], np.array(zs)
        assert (zs >= 0).all()                                  # only route strategies' paths
        p = np.exp(law.log_prob - np.logaddexp.reduce(law.log_prob))
        for z in np.unique(law.route):
            q = p[law.route == z].sum()
            assert abs(np.mean(zs == z) - q) <= 5 * np.sqrt(q * (1 - q) / len(zs)) + 1e-12
    return len(fb_seqs)


def test_feedback_completions_are_compatible_and_follow_the_route_law(fb_world):
    assert check_feedback_data(fb_world, pretraining_batch) > 0


def test_non_feedback_sequences_keep_the_misconception(fb_world):
    seqs = _parse(fb_world, *pretraining_batch(fb_world, 2000, 0.5, 0.3, np.random.default_rng(1), 0.4))
    plain = [q for q in seqs if q[1] is None]
    wrong = np.mean([q[2][-1] != q[0][1] for q in plain])
    assert abs(wrong - 0.3) <= 5 * np.sqrt(0.3 * 0.7 / len(plain))


def _unconditioned_batch(world, batch, p_demo, p_wrong, rng, p_feedback):
    """Sabotage: the feedback sequence's completion drawn from the full data law (misconception included)."""
    rows, starts = [], []
    v = world.vocab
    for _ in range(batch):
        law = world.laws[int(rng.integers(len(world.laws)))]
        fb = None
        if rng.random() < p_feedback:
            fb = law.wrong_targets[0]
        path = law.sample_wrong(rng) if rng.random() < p_wrong else law.paths[law.sample(rng)]
        ctx = v.encode_prompt(law.task.source, law.task.target, feedback=fb)
        rows.append(ctx + v.encode_completion(path))
        starts.append(len(ctx))
    return padded_batch(rows, starts, v.special("STOP"))


def _route_biased_batch(world, batch, p_demo, p_wrong, rng, p_feedback):
    """Sabotage: compatible completions, but the feedback sequences always take the first route."""
    x, y, mask = pretraining_batch(world, batch, p_demo, p_wrong, rng, p_feedback)
    v = world.vocab
    for b in range(batch):
        if int(x[b, 0]) == v.special("FB"):
            s, t = v.nodes[int(x[b, 4])], v.nodes[int(x[b, 5])]
            law = next(law for law in world.laws if (law.task.source, law.task.target) == (s, t))
            path = law.paths[int(np.flatnonzero(law.route == law.route.min())[0])]
            comp = v.encode_completion(path)
            y[b, 5:5 + len(comp)] = torch.tensor(comp)
            x[b, 6:6 + len(comp) - 1] = torch.tensor(comp[:-1])
    return x, y, mask


@pytest.mark.parametrize("sabotage", [_unconditioned_batch, _route_biased_batch])
def test_sabotage_feedback_data_is_caught(fb_world, sabotage):
    with pytest.raises(AssertionError):
        check_feedback_data(fb_world, sabotage)


# ----------------------------------------------------------------------------- choosing the feedback
KINDS = ("success", "stop_wrong_target", "stop_at_source", "invalid", "truncated")


def _rollout(world, law, kind):
    """(completion tokens, mask, reward, endpoint w or None) of one hand-built rollout of the given kind."""
    v, g, L1 = world.vocab, world.graph, world.max_len + 1
    s, stop = law.task.source, v.special("STOP")
    if kind == "success":
        toks, w = v.encode_completion(law.paths[0]), None
    elif kind == "stop_wrong_target":
        toks, w = v.encode_completion(law.wrong_paths[0]), law.wrong_paths[0][-1]
    elif kind == "stop_at_source":
        toks, w = [stop], s
    elif kind == "invalid":
        bad = next(u for u in v.nodes if u not in set(g.successors(s)))
        toks, w = [v.node_id(bad)], None
    else:  # truncated: L valid moves, then a node token
        toks, w = [v.node_id(u) for u in law.paths[0][1:]] + [v.node_id(s)], None
    n = len(toks)
    return toks + [stop] * (L1 - n), [True] * n + [False] * (L1 - n), float(kind == "success"), w


def _rollouts(world, groups):
    prompt, tokens, mask, reward, ends = [], [], [], [], []
    for p, kinds in groups:
        for k in kinds:
            t, m, r, w = _rollout(world, world.laws[p], k)
            prompt.append(p), tokens.append(t), mask.append(m), reward.append(r), ends.append(w)
    ro = Rollouts(torch.tensor(prompt), torch.tensor(tokens), torch.tensor(mask), torch.tensor(reward))
    return ro, ends


GROUP = 4


@st.composite
def rollout_groups(draw):
    n = draw(st.integers(1, 4))
    return [(draw(st.integers(0, 3)), draw(st.lists(st.sampled_from(KINDS), min_size=GROUP, max_size=GROUP)))
            for _ in range(n)]


def check_choose_feedback(world, groups, choose, seed=0):
    """fb[i] is a rollout of i's own group that stopped at a node ≠ t (never a success, never another
    failure type); a group without one is masked (−1) and counted once in `skipped`."""
    ro, ends = _rollouts(world, groups)
    fb, skipped = choose(world, ro, GROUP, np.random.default_rng(seed))
    n_without = 0
    for p, (_, kinds) in enumerate(groups):
        ok = [p * GROUP + g for g, k in enumerate(kinds) if k in ("stop_wrong_target", "stop_at_source")]
        n_without += not ok
        for g in range(GROUP):
            j = int(fb[p * GROUP + g])
            if ok:
                assert j in ok and ro.reward[j] == 0 and ends[j] is not None
            else:
                assert j == -1
    assert skipped == n_without
    ctx = feedback_contexts(world, ro, fb).tolist()
    v = world.vocab
    for i, j in enumerate(fb):
        task = world.laws[int(ro.prompt[i])].task
        tail = [v.special("SEP"), v.special("BOS"), v.node_id(task.source), v.node_id(task.target)]
        assert ctx[i][0] == v.special("FB") and ctx[i][2:] == tail
        if j >= 0:   # the node after FB is WrongEndpoint(w)'s word for w: the failure's endpoint ≠ t
            word = WrongEndpoint(ends[j]).words()
            assert word[0] == "WRONG_ENDPOINT" and ctx[i][1] == v.node_id(word[1]) and word[1] != task.target


@settings(max_examples=40, deadline=None)
@given(groups=rollout_groups(), seed=st.integers(0, 2**16))
def test_choose_feedback_picks_same_group_wrong_endpoints(fb_world, groups, seed):
    check_choose_feedback(fb_world, groups, choose_feedback, seed)


def test_choose_feedback_is_uniform_over_the_groups_failures(fb_world):
    kinds = ["stop_wrong_target", "success", "stop_at_source", "stop_wrong_target"]
    ro, _ = _rollouts(fb_world, [(0, kinds)])
    rng, n = np.random.default_rng(3), 2000
    picks = np.concatenate([choose_feedback(fb_world, ro, GROUP, rng)[0] for _ in range(n // GROUP)])
    for j in (0, 2, 3):
        assert abs(np.mean(picks == j) - 1 / 3) <= 5 * np.sqrt(2 / 9 / len(picks))


def _any_failure(world, ro, group_size, rng):
    """Sabotage: feedback from any failed rollout (also invalid moves and truncations)."""
    bad = (ro.reward == 0).numpy().reshape(-1, group_size)
    fb, skipped = np.full(bad.size, -1), 0
    for p in range(bad.shape[0]):
        c = np.flatnonzero(bad[p])
        skipped += not len(c)
        for g in range(group_size):
            if len(c):
                fb[p * group_size + g] = p * group_size + int(rng.choice(c))
    return fb, skipped


def _from_a_success(world, ro, group_size, rng):
    """Sabotage: the 'feedback' of a success (a rollout that stopped at t)."""
    fb, skipped = choose_feedback(world, ro, group_size, rng)
    ok = np.flatnonzero(ro.reward.numpy() > 0)
    return np.where(fb >= 0, ok[0] if len(ok) else fb, fb), skipped


def _other_group(world, ro, group_size, rng):
    """Sabotage: the feedback of the next group's failure."""
    fb, skipped = choose_feedback(world, ro, group_size, rng)
    return np.roll(fb, group_size), skipped


@pytest.mark.parametrize("sabotage", [_any_failure, _from_a_success, _other_group])
def test_sabotage_choose_feedback_is_caught(fb_world, sabotage):
    groups = [(0, ["success", "invalid", "stop_wrong_target", "truncated"]),
              (1, ["stop_at_source", "success", "invalid", "invalid"]),
              (2, ["success", "success", "invalid", "truncated"])]
    check_choose_feedback(fb_world, groups, choose_feedback)
    with pytest.raises(AssertionError):
        for seed in range(5):
            check_choose_feedback(fb_world, groups, sabotage, seed)


# ----------------------------------------------------------------------------- exact predictions
@pytest.fixture(scope="module")
def fb_model(fb_world):
    torch.manual_seed(0)
    return new_model(FB, fb_world).eval()


def test_feedback_prediction_is_the_feedback_teacher(fb_world, fb_model):
    """sdsd_token_optimum with every row T(·|FB t') returns T(·|FB t') (D a point mass on the feedback);
    with the demonstration teacher's rows it would not."""
    for i in range(len(fb_world.laws)):
        base = enumerate_model(fb_model, fb_world, i)
        (w,) = fb_world.laws[i].wrong_targets
        T = feedback_teacher(fb_model, fb_world, i, base, w)
        assert pcmi.total_variation(feedback_fixed_point(T, base), T) <= 1e-9
        assert pcmi.total_variation(T, base.log_prob) > 1e-3   # the FB context matters (sabotage: no context)
        demo_pred = pcmi.sdsd_token_optimum(pcmi.Instance(base.log_prob, base.reward,
                                                          model_teacher(fb_model, fb_world, i, base),
                                                          pcmi.demos_from_successes(base.log_prob, base.reward),
                                                          tree=base.tree))
        assert pcmi.total_variation(demo_pred, T) > 1e-3


def check_ideal_feedback(world, model, ideal_fn):
    """π0(· | not stopping at t'): ratio distortion 0 among correct rollouts, and 1 − Z (Z = its
    normalizer) is π0's probability of stopping at a wrong target, checked by sampling (5 SE)."""
    fb_world, fb_model = world, model
    gen = torch.Generator().manual_seed(0)
    valid = move_table(fb_world, "cpu")
    n = 3000
    ro = sample_rollouts(fb_model, fb_world, list(range(len(fb_world.laws))), n, gen, valid)
    from pcmi.training.train import stopped_elsewhere
    from pcmi.training.rollouts import completion_path
    for i, law in enumerate(fb_world.laws):
        base = enumerate_model(fb_model, fb_world, i)
        ideal = ideal_fn(fb_model, fb_world, i, base)
        assert pcmi.metrics.ratio_distortion(ideal, base.log_prob, base.reward) <= 1e-9
        assert abs(np.exp(np.logaddexp.reduce(ideal)) - 1) <= 1e-9
        ok = base.reward == 1
        W = 1 - np.exp(base.log_prob[ok][0] - ideal[ok][0])
        sl = slice(i * n, (i + 1) * n)
        hit = stopped_elsewhere(fb_world, Rollouts(ro.prompt[sl], ro.tokens[sl], ro.mask[sl], ro.reward[sl]))
        ends = [completion_path(fb_world, i, ro.tokens[j], ro.mask[j])[-1] for j in range(i * n, (i + 1) * n)]
        mc = np.mean([h and e in law.wrong_targets for h, e in zip(hit, ends)])
        assert abs(mc - W) <= 5 * np.sqrt(max(W * (1 - W), 1e-4) / n)


def _conditioned_on_success(model, world, i, base):
    """Sabotage: π0(· | r = 1) (the demonstration law) in place of π0(· | not stopping at t')."""
    lp = np.where(base.reward == 1, base.log_prob, -np.inf)
    return lp - np.logaddexp.reduce(lp)


def test_ideal_feedback_prediction_keeps_ratios_and_removes_the_wrong_endpoint(fb_world, fb_model):
    check_ideal_feedback(fb_world, fb_model, ideal_feedback_prediction)


def test_sabotage_ideal_feedback_prediction_is_caught(fb_world, fb_model):
    with pytest.raises(AssertionError):
        check_ideal_feedback(fb_world, fb_model, _conditioned_on_success)


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("kw, match", [
    (dict(teacher_context="feedback"), "p_feedback > 0"),
    (dict(teacher_context="copy"), "teacher_context"),
    (dict(p_feedback=-0.1), "p_feedback"), (dict(p_feedback=1.5), "p_feedback"),
    (dict(p_feedback=float("nan")), "p_feedback"), (dict(p_feedback=True), "p_feedback")])
def test_config_validation(kw, match):
    with pytest.raises(PcmiInputError, match=match) as exc:
        TrainConfig(**kw)
    assert "\n" not in str(exc.value)
    assert TrainConfig(p_feedback=0.3, teacher_context="feedback").teacher_context == "feedback"


def test_feedback_settings_stay_out_of_the_other_grids():
    for name in ("small", "remedies", "tiny"):
        assert not any(G.BY_NAME[s].feedback for s in G.GRIDS[name].settings)
    assert G.GRIDS["small"].cfg().p_feedback == 0 and G.GRIDS["feedback"].cfg().p_feedback == 0.3
    key = G.prediction_key(G.BY_NAME["sdsd_feedback"], G.GRIDS["feedback"].cfg().replace(teacher_context="feedback"))
    assert key == "feedback:" + TrainConfig().loss().label
    assert G.prediction_key(G.BY_NAME["sdsd_full_a1"], G.GRIDS["feedback"].cfg()) == "fp:" + TrainConfig().loss().label


def test_feedback_setting_refuses_a_grid_without_feedback(tmp_path):
    with pytest.raises(PcmiInputError, match="p_feedback > 0") as exc:
        G.run_grid("tiny", out=str(tmp_path), settings=["sdsd_feedback"], log=lambda *_: None)
    assert "\n" not in str(exc.value)


# ----------------------------------------------------------------------------- the tiny feedback grid
def test_tiny_feedback_grid_end_to_end(tmp_path):
    summary = G.run_grid("feedback_tiny", out=str(tmp_path), log=lambda *_: None)
    s = summary["settings"]
    assert set(s) == {"sdsd_full_a1", "rl", "sdsd_feedback"}
    fb = s["sdsd_feedback"]
    assert fb["prediction"] == "feedback:full(α=1)" and fb["n_uncertified_prediction"] == 0
    assert "accept" not in fb and "accept" in s["sdsd_full_a1"]
    assert set(summary["remedy_criterion"]) == {"sdsd_feedback"}   # issue 11's criterion for the feedback remedy
    for name in s:
        assert "ratio_distortion" in s[name] and "ideal_feedback" in s[name]
        assert s[name]["ideal_feedback"]["ratio_distortion"]["median"][0] <= 1e-9
    import json
    run = json.loads((tmp_path / "runs" / "sdsd_feedback" / "seed0.json").read_text())
    assert "skipped_no_feedback" in run["history"] and run["config"]["teacher_context"] == "feedback"
    for u in run["units"]:
        assert 0 <= u["tv_own"] <= 1 and np.isfinite(u["ratio_distortion"])
