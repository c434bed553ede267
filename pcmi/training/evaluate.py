"""Exact evaluation through the network: enumerate Y(x) (graphworld.enumerate_rollouts), read off
π_θ, its metrics, the model teacher T_θ(y | y') and the closed-form optima of pcmi.

Y(x) is the prefix tree of valid moves plus STOP; at each prefix every other token (a non-edge,
STOP away from t, and the specials BOS/SEP/DEMO and FB where the vocabulary has it) pools into a
failure leaf per route label, as graphworld's enumeration pools (FAIL, or FAIL:z when the walk enters
route z's concept node from an unlabelled prefix), so Σ_y π_θ(y) = 1 exactly.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.special import logsumexp

import pcmi
from graphworld import FAIL, STOP, fail_token, route_of, concept_edges, dominant_route, enumerate_rollouts
from pcmi.teachers import KernelTeacher, LatentStrategyTeacher

from .rollouts import prompt_ids


class ModelPolicy:
    """graphworld policy adapter: next_logprobs(task, paths) from the network with a fixed context
    ("[DEMO y' SEP] BOS s t" or "FB w SEP BOS s t"); tokens = graph nodes, STOP, and FAIL pooling the
    other specials (BOS/SEP/DEMO, and FB where the vocabulary has it).

    With kv_cache (default) the context is encoded once, and a call whose paths all extend prefixes
    of the previous call runs one token per path on its parent's cache row (the per-level enumeration
    asks exactly this); any other call runs the paths' moves on the context's cache. kv_cache=False:
    the full forward over context ‖ moves for every path (the reference)."""
    has_stop = True

    def __init__(self, model, world, prompt: int, demo=None, device="cpu", feedback=None, kv_cache=True):
        self.model, self.world, self.kv_cache = model, world, kv_cache
        if feedback is None:
            self.ctx = prompt_ids(world, [prompt], None if demo is None else [demo], device=device)[0]
        else:
            task = world.laws[prompt].task
            self.ctx = torch.tensor(world.vocab.encode_prompt(task.source, task.target, demo, feedback=feedback),
                                    dtype=torch.long, device=device)
        v = world.vocab
        self.keys = list(v.nodes) + [STOP]
        self.key_ids = list(range(v.n_nodes)) + [v.special("STOP")]
        self.fail_ids = [v.special(n) for n in v.specials if n != "STOP"]
        self._ctx_state = None  # (logits (1, V) after the context, its cache (1 row))
        self._level = None      # ({prefix: cache row}, cache) of the previous call's paths

    def _moves(self, paths, last_only: bool = False) -> torch.Tensor:
        """Token ids of the moves p[1:] (the context ends with the source): (B, depth), or (B, 1)
        of the last move."""
        v = self.world.vocab
        return torch.tensor([[v.node_id(u) for u in (p[-1:] if last_only else p[1:])] for p in paths],
                            dtype=torch.long, device=self.ctx.device).view(len(paths), -1)

    def _full_logits(self, paths) -> torch.Tensor:
        """logits (B, V) of the next token after context ‖ p[1:], one full forward pass."""
        ids = torch.cat([self.ctx.expand(len(paths), -1), self._moves(paths)], dim=1)  # (B, Tc + depth)
        return self.model(ids)[:, -1]

    def _cached_logits(self, paths) -> torch.Tensor:
        """logits (B, V) after context ‖ p[1:] from the KV cache; keeps this call's cache for the next."""
        if self._ctx_state is None:
            logits, cache = self.model(self.ctx[None], return_cache=True)
            self._ctx_state = (logits[:, -1], cache)
        B = len(paths)
        row_of, level = self._level if self._level is not None else ({}, None)
        parents = [row_of.get(tuple(p[:-1])) for p in paths]
        self._level = None  # free the previous level once its rows are gathered
        if level is not None and len(paths[0]) > 1 and None not in parents:
            past = self._parent_cache(level, parents)
            new = self._moves(paths, last_only=True)                       # (B, 1)
        else:                                                              # from the context
            ctx_logits, ctx_cache = self._ctx_state
            past = [(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)) for k, v in ctx_cache]
            new = self._moves(paths)                                       # (B, depth)
            if new.shape[1] == 0:
                self._level = ({tuple(p): i for i, p in enumerate(paths)}, past)
                return ctx_logits.expand(B, -1)
        logits, cache = self.model(new, past=past, return_cache=True)
        self._level = ({tuple(p): i for i, p in enumerate(paths)}, cache)
        return logits[:, -1]

    def _parent_cache(self, level, rows: list[int]):
        """The cache of each path's parent prefix: per layer (k[rows], v[rows]), (B, n_head, P, head_dim)."""
        idx = torch.tensor(rows, dtype=torch.long, device=self.ctx.device)
        return [(k.index_select(0, idx), v.index_select(0, idx)) for k, v in level]

    @torch.no_grad()
    def next_logprobs(self, task, paths) -> list[dict]:
        """[{token: log π_θ(token | context ‖ path)}] per path, FAIL = log Σ of the other specials."""
        if not paths:
            return []
        if len({len(p) for p in paths}) > 1:  # mixed depths (graphworld never asks): one call per depth
            out = [None] * len(paths)
            for n in sorted({len(p) for p in paths}):
                idx = [i for i, p in enumerate(paths) if len(p) == n]
                for i, d in zip(idx, self.next_logprobs(task, [paths[i] for i in idx])):
                    out[i] = d
            return out
        logits = self._cached_logits(paths) if self.kv_cache else self._full_logits(paths)
        return self._as_dicts(self._key_logprobs(logits), paths)

    def _key_logprobs(self, logits) -> np.ndarray:
        """(R, K+1) per row of logits: log π_θ(key) for keys = graph nodes, STOP, then FAIL = log Σ of the
        other specials."""
        lp = torch.log_softmax(logits.double(), dim=-1).cpu().numpy()      # (R, V)
        return np.column_stack([lp[:, self.key_ids], logsumexp(lp[:, self.fail_ids], axis=1)])

    def _as_dicts(self, table: np.ndarray, paths) -> list[dict]:
        """[{token: log-prob}] per row of the (len(paths), K+1) table."""
        keys = self.keys + [FAIL]
        return [dict(zip(keys, row)) for row in table.tolist()]


def enumerate_model(model, world, prompt: int, demo=None, device="cpu", feedback=None, kv_cache=True):
    """Y(x) with exact log π_θ(y | x [, y' | FB w]); kv_cache: one token per path per tree level."""
    model.eval()
    return enumerate_rollouts(world.laws[prompt].task,
                              ModelPolicy(model, world, prompt, demo, device, feedback, kv_cache))


class BatchedModelPolicy(ModelPolicy):
    """ModelPolicy over B contexts of one length, "DEMO y'_b SEP BOS s t" (b < B), at once: a call with
    n paths runs the B·n (context, path) pairs in one forward, row b·n + i = context b ‖ path i, from
    the parent prefix's cache row of the same context (one token per pair per tree level). graphworld
    sees context 0's log-probs, which fix the tree (the same for every context while all log-probs are
    finite); `levels` keeps every context's: per call (paths, (B, n, K+1) table of `_key_logprobs`)."""

    def __init__(self, model, world, prompt: int, demos, device="cpu", kv_cache=True):
        super().__init__(model, world, prompt, demos[0], device, kv_cache=kv_cache)
        self.ctx = prompt_ids(world, [prompt] * len(demos), demos, device=device)  # (B, Tc)
        self.levels = []

    def _full_logits(self, paths) -> torch.Tensor:
        """logits (B·n, V) after context b ‖ p_i[1:], one full forward pass (the reference)."""
        ids = torch.cat([self.ctx.repeat_interleave(len(paths), 0), self._moves(paths).repeat(len(self.ctx), 1)], 1)
        return self.model(ids)[:, -1]

    def _cached_logits(self, paths) -> torch.Tensor:
        """logits (B·n, V) after context b ‖ p_i[1:] (row b·n + i) from the KV cache; keeps this call's cache."""
        B, n = len(self.ctx), len(paths)
        if self._ctx_state is None:
            logits, cache = self.model(self.ctx, return_cache=True)                      # B rows
            self._ctx_state = (logits[:, -1], cache)
        row_of, level = self._level if self._level is not None else ({}, None)
        parents = [row_of.get(tuple(p[:-1])) for p in paths]
        self._level = None
        here = {tuple(p): i for i, p in enumerate(paths)}
        if level is not None and len(paths[0]) > 1 and None not in parents:
            n_prev = level[0][0].shape[0] // B
            past = self._parent_cache(level, [b * n_prev + r for b in range(B) for r in parents])
            new = self._moves(paths, last_only=True).repeat(B, 1)                        # (B·n, 1)
        else:                                                                            # from the contexts
            ctx_logits, ctx_cache = self._ctx_state
            past = [(k.repeat_interleave(n, 0), v.repeat_interleave(n, 0)) for k, v in ctx_cache]
            new = self._moves(paths).repeat(B, 1)                                        # (B·n, depth)
            if new.shape[1] == 0:
                self._level = (here, past)
                return ctx_logits.repeat_interleave(n, 0)
        logits, cache = self.model(new, past=past, return_cache=True)
        self._level = (here, cache)
        return logits[:, -1]

    def _as_dicts(self, table: np.ndarray, paths) -> list[dict]:
        """Records every context's rows; graphworld gets context 0's."""
        table = table.reshape(len(self.ctx), len(paths), -1)
        self.levels.append(([tuple(p) for p in paths], table))
        return super()._as_dicts(table[0], paths)


class _Replay:
    """A graphworld policy that answers from context b's recorded tables (`BatchedModelPolicy.levels`,
    columns `keys`): no network call."""
    has_stop = True

    def __init__(self, levels, keys, b: int):
        self.keys = keys
        self.table = {p: row for paths, t in levels for p, row in zip(paths, t[b])}

    def next_logprobs(self, task, paths) -> list[dict]:
        return [dict(zip(self.keys, self.table[tuple(p)].tolist())) for p in paths]


def leaf_log_probs_per_context(rs, levels, keys) -> np.ndarray:
    """(B, |Y(x)|): log π(y | context b) for each recorded context b, by replaying its tables through
    graphworld's own enumeration of rs's task (so its failure pooling, FAIL and FAIL:z, is graphworld's)."""
    rows = []
    for b in range(levels[0][1].shape[0]):
        r = enumerate_rollouts(rs.task, _Replay(levels, keys, b))
        _same_tree(rs, r)
        rows.append(r.log_prob)
    return np.array(rows)


def _same_tree(a, b) -> None:
    if a.paths != b.paths:
        raise RuntimeError("enumerations of one prompt gave different rollout sets")


def demonstration_log_probs(model, world, prompt: int, demos, base, device="cpu", kv_cache=True) -> np.ndarray:
    """(len(demos), |Y(x)|): log π_θ(y | y'_b) over the base enumeration's Y(x), all demonstrations of one
    context length in one batched enumeration (`BatchedModelPolicy`: no padding, so each row is the
    per-demonstration enumeration's up to float rounding); a prompt where some token is impossible (−inf)
    under some context, whose tree could then differ, is enumerated per demonstration."""
    model.eval()
    task, out = world.laws[prompt].task, np.empty((len(demos), len(base)))
    by_len = {}
    for b, d in enumerate(demos):
        by_len.setdefault(len(d), []).append(b)
    for idx in by_len.values():
        pol = BatchedModelPolicy(model, world, prompt, [demos[b] for b in idx], device, kv_cache)
        rs = enumerate_rollouts(task, pol)
        _same_tree(base, rs)
        if all(np.isfinite(t).all() for _, t in pol.levels):
            out[idx] = leaf_log_probs_per_context(rs, pol.levels, pol.keys + [FAIL])
        else:
            for b in idx:
                rs = enumerate_model(model, world, prompt, demo=demos[b], device=device, kv_cache=kv_cache)
                _same_tree(base, rs)
                out[b] = rs.log_prob
    return out


def model_teacher(model, world, prompt: int, base, device="cpu", batched=True) -> KernelTeacher:
    """T_θ(y | y') over the base enumeration's Y(x): row j = log π_θ(· | y'_j in context) (correct
    rollouts only; other rows, which D never uses, are set to the base row). batched: every
    demonstration in one enumeration (`demonstration_log_probs`); else one enumeration per demonstration."""
    rows = np.tile(base.log_prob, (len(base), 1))
    correct = np.flatnonzero(base.reward == 1)
    if batched:
        if len(correct):
            rows[correct] = demonstration_log_probs(model, world, prompt, [base.paths[j] for j in correct], base,
                                                    device)
        return KernelTeacher(rows)
    for j in correct:
        rs = enumerate_model(model, world, prompt, demo=base.paths[j], device=device)
        _same_tree(base, rs)
        rows[j] = rs.log_prob
    return KernelTeacher(rows)


def feedback_teacher(model, world, prompt: int, base, w, device="cpu") -> np.ndarray:
    """log T_θ(y | FB w) over the base enumeration's Y(x): the network with the feedback WrongEndpoint(w)
    in context ("FB w SEP BOS s t")."""
    rs = enumerate_model(model, world, prompt, device=device, feedback=w)
    _same_tree(base, rs)
    return rs.log_prob


def feedback_fixed_point(log_T_fb, base) -> np.ndarray:
    """The frozen-teacher full α = 1 prediction of feedback SDSD with one feedback class: D is a point mass
    on that feedback, every teacher row is T(·|FB w), and the token-level optimum
    π(a | h) ∝ exp(E_D log T(a | h, ·)) = T(a | h, FB w) is T(·|FB w) itself, whatever the current policy
    (so it is also the on-policy fixed point). Computed with pcmi.sdsd_token_optimum on that Instance."""
    rows = np.tile(np.asarray(log_T_fb, float), (len(base.log_prob), 1))
    inst = pcmi.Instance(base.log_prob, base.reward, KernelTeacher(rows),
                         pcmi.demos_from_successes(base.log_prob, base.reward), tree=base.tree)
    return pcmi.sdsd_token_optimum(inst)


def ideal_feedback_prediction(model, world, prompt: int, base, device="cpu") -> np.ndarray:
    """log of π0(y | y does not stop at any wrong target t') on the pooled enumeration: π0(y)/Z, with the mass
    of every walk s → … → t' STOP (scored by the network) taken out of the pooled failure leaf it falls in
    (the leaf of its prefix before t', as in `data_law_on`). Among correct rollouts π0's ratios are kept
    (P10): the ideal filtering teacher of theory.md §11 with eps = 0, for the WrongEndpoint(t') feedback."""
    from .rollouts import completion_logits
    law, g = world.laws[prompt], base.task.graph
    where = {p: i for i, p in enumerate(base.paths)}
    p0 = np.exp(np.asarray(base.log_prob, float))
    if law.wrong_paths:
        ctx = prompt_ids(world, [prompt] * len(law.wrong_paths), device=device)
        toks = torch.tensor([world.vocab.encode_completion(p) for p in law.wrong_paths], dtype=torch.long,
                            device=device)
        with torch.no_grad():
            model.eval()
            lsm = torch.log_softmax(completion_logits(model, ctx, toks).double(), dim=-1)
            lp = lsm.gather(-1, toks[..., None]).squeeze(-1).sum(-1).cpu().numpy()
        for p, l in zip(law.wrong_paths, lp):
            j = where[tuple(p[:-1]) + (fail_token(route_of(g, p), route_of(g, p[:-1])),)]
            p0[j] -= np.exp(l)
    if (p0 < -1e-5 * np.exp(np.asarray(base.log_prob, float)) - 1e-12).any():  # float32 scores: relative slack
        raise RuntimeError("a walk to a wrong target carries more mass than its pooled failure leaf")
    p0 = np.clip(p0, 0.0, None)
    with np.errstate(divide="ignore"):
        return np.log(p0) - np.log(p0.sum())


def data_law_on(world, prompt: int, rollouts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(log π_data(y), log w_z, log P_z(y)) over the enumerated rollouts. Strategies: the routes
    (weight (1 − p_wrong)·w_z) and "wrong target" (weight p_wrong), whose paths s → … → t' fall
    in the pooled failure leaf of their last correct-looking prefix with their route label."""
    law, g = world.laws[prompt], rollouts.task.graph
    where = {p: i for i, p in enumerate(rollouts.paths)}
    log_keep = np.log1p(-world.p_wrong)
    routes = np.unique(law.route)
    log_P = np.full((len(routes) + (world.p_wrong > 0), len(rollouts)), -np.inf)
    for p, lp, z in zip(law.paths, law.log_prob, law.route):
        log_P[np.searchsorted(routes, z), where[tuple(p)]] = log_keep + lp
    if world.p_wrong > 0:
        for p, lp in zip(law.wrong_paths, law.wrong_log_prob):
            j = where[tuple(p[:-1]) + (fail_token(route_of(g, p), route_of(g, p[:-1])),)]
            log_P[-1, j] = np.logaddexp(log_P[-1, j], np.log(world.p_wrong) + lp)
    log_data = logsumexp(log_P, axis=0)
    log_w = logsumexp(log_P, axis=1)
    return log_data, log_w, log_P - log_w[:, None]


def teacher_fit(model_T: KernelTeacher, world, prompt: int, rollouts) -> dict:
    """How far the model's in-context teacher is from the exact Bayesian one
    (LatentStrategyTeacher(w, P, eps=0) of the data law), averaged over y' ~ π_data."""
    log_data, log_w, log_P = data_law_on(world, prompt, rollouts)
    exact = LatentStrategyTeacher(log_w, log_P, eps=0.0)
    demos = np.flatnonzero(np.isfinite(log_data) & (rollouts.reward == 1))  # correct demonstrations
    wts = np.exp(log_data[demos] - logsumexp(log_data[demos]))
    ex_rows = exact.log_rows(demos)
    tv = np.array([pcmi.total_variation(ex_rows[i], model_T.log_T[j]) for i, j in enumerate(demos)])
    kl = np.array([pcmi.kl(ex_rows[i], model_T.log_T[j]) for i, j in enumerate(demos)])
    return {"teacher_tv": float(wts @ tv), "teacher_kl_exact_to_model": float(wts @ kl),
            "base_tv_to_data": pcmi.total_variation(log_data, rollouts.log_prob),
            "base_kl_data_to_model": pcmi.kl(log_data, rollouts.log_prob)}


def closed_form_predictions(base, teacher, beta: float, mode=None) -> dict:
    """The pcmi optima from the pretrained model itself: D = π_θ0(· | r = 1), T = T_θ0; sdsd_onpolicy is
    the frozen-teacher on-policy fixed point of `mode` (default full α = 1)."""
    inst = pcmi.Instance(base.log_prob, base.reward, teacher,
                         pcmi.demos_from_successes(base.log_prob, base.reward),
                         route=base.route, tree=base.tree)
    return {"sdsd_sequence": pcmi.sdsd_optimum(inst), "sdsd_token": pcmi.sdsd_token_optimum(inst),
            "sdsd_onpolicy": sdsd_onpolicy_fixed_point(inst, mode=mode),
            "forward_kl": pcmi.forward_kl_optimum(inst), "rl": pcmi.rl_optimum(base.log_prob, base.reward, beta),
            "base": base.log_prob}


def sdsd_onpolicy_fixed_point(inst, rounds: int = 500, tol: float = 1e-10, mode=None) -> np.ndarray:
    """What the trainer converges to with a fixed teacher T_θ0 but on-policy demonstrations
    (a correct sibling from the current group): the certified on-policy fixed point of the loss mode
    (default full α = 1) with a frozen teacher (`pcmi.flows.on_policy_fixed_point`, ‖G‖ ≤ tol); for
    full α = 1 the limit of π_{k+1} = sdsd_token_optimum with D_k = π_k(· | r = 1) from π0. A live
    or EMA teacher's network cannot be rebuilt exactly, so this is the frozen-teacher prediction."""
    from pcmi.flows import on_policy_fixed_point
    from pcmi.objectives import LossMode
    return on_policy_fixed_point(inst, LossMode("full") if mode is None else mode, "frozen", tol=tol,
                                 max_rounds=rounds).log_pi


def distances(log_pi, predictions: dict) -> dict:
    """TV(π, π_pred) and KL(π ‖ π_pred) to each prediction."""
    out = {}
    for name, lq in predictions.items():
        out[f"tv_{name}"] = pcmi.total_variation(log_pi, lq)
        out[f"kl_{name}"] = pcmi.kl(log_pi, lq)
    return out


def evaluate_prompt(models: dict, world, prompt: int, beta: float, ks=(1, 8, 64), device="cpu", mode=None) -> dict:
    """Everything for one prompt. models: {"base": θ0, "rl": θ_RL, "sdsd": θ_SD} (any subset with base);
    mode: the SDSD loss mode trained (`TrainConfig.loss()`), whose frozen-teacher fixed point is predicted."""
    base = enumerate_model(models["base"], world, prompt, device=device)
    teacher = model_teacher(models["base"], world, prompt, base, device=device)
    preds = closed_form_predictions(base, teacher, beta, mode)
    g = world.graph
    z_dom = dominant_route(base)
    blocked = base.uses_edges(concept_edges(g, z_dom))
    out = {"prompt": [str(world.laws[prompt].task.source), str(world.laws[prompt].task.target)],
           "n_rollouts": len(base), "n_correct": int(base.reward.sum()), "dominant_route": int(z_dom),
           **teacher_fit(teacher, world, prompt, base), "policies": {}, "log_probs": {}}
    for name, model in models.items():
        rs = base if name == "base" else enumerate_model(model, world, prompt, device=device)
        _same_tree(base, rs)
        m = pcmi.policy_metrics(rs.log_prob, base.log_prob, base.reward, route=base.route, blocked=blocked, ks=ks)
        m["log_total_prob"] = float(logsumexp(rs.log_prob))  # 0 up to rounding: the enumeration is exact
        m["total_prob"] = float(np.clip(np.exp(m["log_total_prob"]), 0.0, 1.0))
        m["distances"] = distances(rs.log_prob, preds)
        out["policies"][name] = m
        out["log_probs"][name] = rs.log_prob.tolist()
    for name, lq in preds.items():
        m = pcmi.policy_metrics(lq, base.log_prob, base.reward, route=base.route, blocked=blocked, ks=ks)
        out["policies"][f"pred_{name}"] = m
        out["log_probs"][f"pred_{name}"] = lq.tolist()
    out["reward"] = base.reward.tolist()
    out["route"] = base.route.tolist()
    return out
