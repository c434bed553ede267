"""Exact expected gradients of the loss modes (`pcmi.estimators`, theory.md §9) against an
independent route: the per-step loss of one rollout written in torch, differentiated by autograd.

For a student rollout y ∼ π_θ and a demonstration class c ∼ w (`teacher.demo_classes`), with
p_t = π(·|h_t), q_t = T(·|h_t, c) and ℓ_t = log p_t(y_t) − log q_t(y_t), one step of a mode is the
gradient of

    full, topk        Σ_t D_α(p_t, q_t)            (top-k set chosen on detached values)
    sampled           Σ_t [ℓ_t]· log p_t(y_t)      ([·] = detached)
    sampled-baseline  Σ_t [ℓ_t − KL(p_t ‖ q_t)]· log p_t(y_t)
    sequence          Σ_t [R_t]· log p_t(y_t),     R_t = Σ_{s≥t} ℓ_s

The oracle enumerates every pair (y, c): E g = Σ π(y) w_c g(y, c) must equal GradientReport.grad
(and E g², the loss) to rounding; Monte Carlo rollouts (walked down the tree) must agree within a
tolerance from the exact variance. The checks take the implementation as an argument, and
plausible wrong implementations (sabotage) must fail them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy.special import log_softmax

torch = pytest.importorskip("torch")

import graphworld as gw  # noqa: E402
from graphworld.enumeration import PrefixTree  # noqa: E402
from pcmi import policies  # noqa: E402
from pcmi.errors import PcmiInputError  # noqa: E402
from pcmi.estimators import all_modes_report, expected_gradient, gradient_bias, sequence_gradient  # noqa: E402
from pcmi.graph_instance import graph_instance  # noqa: E402
from pcmi.instance import Instance, demos_from_successes  # noqa: E402
from pcmi.objectives import LossMode  # noqa: E402
from pcmi.tabular import Siblings, TabularPolicy  # noqa: E402
from pcmi.teachers import KernelTeacher, LatentStrategyTeacher  # noqa: E402
from pcmi.testing import (children_of, root_to_leaf_paths, graph_instances, prefix_trees, route_copying_instances, tabular_policies,  # noqa: E402
                          tabular_problems, tree_instances)

F64 = torch.float64   # every tensor here is float64 (the session's default dtype is left alone)


def scaled(n: int) -> int:
    """n examples under the ci profile (40), proportionally fewer or more under mutation / dev."""
    return max(4, n * settings.default.max_examples // 40)


FILL = -1.0e4    # a masked logit inside torch: exp(FILL − lse) is exactly 0 and no −inf enters autograd
Z_MEAN = 6.0     # MC: |mean − G| ≤ Z_MEAN·sqrt(Var/n) per coordinate (two-sided 2e-9 under normality)
Z_SECOND = 8.0   # MC of E g²: looser (its own variance needs E g⁴)
N_MC = 100_000

few = settings(max_examples=scaled(12), deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
some = settings(max_examples=scaled(25), deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

FULL = [LossMode("full", a) for a in (0.0, 0.3, 0.5, 1.0)]
TOPK = [LossMode("topk", a, k, of, tail) for a in (1.0, 0.5, 0.0) for k in (1, 2, 3)
        for of in ("student", "teacher") for tail in (False, True)]
SAMPLED = [LossMode("sampled"), LossMode("sampled-baseline"), LossMode("sequence")]
ALL_MODES = FULL + TOPK + SAMPLED


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py: tiny tensors, one thread


def one_line(err) -> bool:
    return "\n" not in str(err) and len(str(err)) > 10


# --- the oracle: one rollout's loss in torch, all (rollout, demonstration class) pairs ----------

class Infinite(Exception):
    """The oracle finds the mode's expected loss infinite or undefined (the core must refuse)."""


def demo_classes(teacher, log_D, tree):
    """(w (C,), log T(h | c) (C, N)) of the classes with positive weight."""
    ws, rows = [], []
    for log_w, log_T in teacher.demo_classes(log_D, tree):
        ws.append(np.exp(np.asarray(log_w, float)))
        rows.append(np.asarray(log_T, float))
    w, log_T = np.concatenate(ws), np.concatenate(rows)
    return w[w > 0], log_T[w > 0]


@dataclass
class Pairs:
    """Per (rollout y, class c) with π(y) w_c > 0: probability, one-rollout gradient and loss."""
    prob: np.ndarray      # (P,)
    grad: np.ndarray      # (P, N)
    loss: np.ndarray      # (P,)
    leaf: np.ndarray      # (P,) rollout index
    cls: np.ndarray       # (P,) class index

    def mean(self, x):
        return np.tensordot(self.prob, x, axes=1)


class Oracle:
    """Rollouts and teacher conditionals as padded arrays (pair, step, child) built by plain loops."""

    def __init__(self, policy: TabularPolicy, teacher, log_D):
        tree, theta = policy.tree, policy.theta
        self.tree, self.theta, self.N = tree, theta, tree.n_nodes
        kids = children_of(tree)
        lc = np.zeros(self.N)                      # the student's log π(a | h), from θ
        for h, ks in kids.items():
            t = theta[ks]
            fin = np.isfinite(t)
            m = t[fin].max()
            lc[ks] = np.where(fin, t - (m + np.log(np.sum(np.exp(t[fin] - m)))), -np.inf)
        self.lc = lc
        paths = root_to_leaf_paths(tree)
        self.log_pi = np.array([lc[p[1:]].sum() for p in paths])
        on = np.flatnonzero(np.isfinite(self.log_pi))
        self.w, log_T = demo_classes(teacher, log_D, tree)
        C, Y = len(self.w), len(on)
        L = max(len(paths[i]) - 1 for i in on)
        B = max(len(k) for k in kids.values())
        kid = np.zeros((Y, L, B), np.int64)
        exists = np.zeros((Y, L, B), bool)
        node_h = np.zeros((Y, L), np.int64)
        tok = np.zeros((Y, L), np.int64)
        step = np.zeros((Y, L), bool)
        for j, i in enumerate(on):
            for t, (h, a) in enumerate(zip(paths[i][:-1], paths[i][1:])):
                ks = kids[h]
                kid[j, t, :len(ks)], exists[j, t, :len(ks)] = ks, True
                node_h[j, t], tok[j, t], step[j, t] = h, ks.index(a), True
        with np.errstate(invalid="ignore"):
            lq = log_T[:, kid] - log_T[:, node_h][..., None]            # (C, Y, L, B)
        lq = np.where(exists[None] & np.isfinite(log_T[:, kid]), lq, -np.inf)
        self.ruled_out = bool((np.isneginf(log_T[:, node_h]) & step[None]).any())
        rep = lambda a: np.broadcast_to(a[None], (C,) + a.shape).swapaxes(0, 1).reshape((C * Y,) + a.shape[1:]).copy()  # noqa: E731
        self.kid, self.exists, self.step, self.tok = rep(kid), rep(exists), rep(step), rep(tok)
        self.lq = lq.swapaxes(0, 1).reshape((Y * C, L, B))
        self.valid = self.exists & np.isfinite(theta[self.kid])           # student tokens with p > 0
        self.key_student = np.where(self.exists, policy.log_cond[self.kid], -np.inf)
        self.leaf = np.repeat(on, C)
        self.cls = np.tile(np.arange(C), Y)
        self.prob = np.exp(self.log_pi[self.leaf]) * self.w[self.cls]

    # ---- the per-step losses -----------------------------------------------------------------
    def topk_set(self, k: int, of: str) -> np.ndarray:
        """The k first children by descending key, ties: lower node index first (detached)."""
        key = self.key_student if of == "student" else self.lq
        node = np.where(self.exists, self.kid, np.iinfo(np.int64).max)
        order = np.lexsort((node, -key), axis=-1)
        rank = np.argsort(order, axis=-1)
        return (rank < k) & self.exists

    @staticmethod
    def d_alpha(logp, mp, lq, mq, alpha):
        """D_α(p, q) summed over the last axis; mp, mq mark p > 0, q > 0 (torch p, numpy q)."""
        mp_t, mq_t = torch.as_tensor(mp), torch.as_tensor(mq)
        lq_t = torch.as_tensor(np.where(mq, lq, 0.0))
        p, q = logp.exp(), torch.where(mq_t, lq_t.exp(), 0.0)
        if alpha == 1:
            return torch.where(mp_t, p * (logp - lq_t), 0.0).sum(-1)
        if alpha == 0:
            return torch.where(mq_t, q * (lq_t - logp), 0.0).sum(-1)
        logm = torch.logaddexp(np.log1p(-alpha) + logp, np.log(alpha) + torch.as_tensor(np.where(mq, lq, FILL)))
        return (alpha * torch.where(mq_t, q * (lq_t - logm), 0.0)
                + (1 - alpha) * torch.where(mp_t, p * (logp - logm), 0.0)).sum(-1)

    def infinite(self, mp, mq, alpha) -> bool:
        st_ = self.step[..., None]
        if alpha == 1:
            return bool((mp & ~mq & st_).any())
        if alpha == 0:
            return bool((mq & ~mp & st_).any())
        return False

    def pairs(self, mode: LossMode) -> Pairs:
        """Autograd of each pair's one-rollout loss; raises Infinite where the mode's loss is."""
        if self.ruled_out:
            raise Infinite("a demonstration rules out a prefix the student reaches")
        P = len(self.prob)
        theta0 = torch.as_tensor(np.where(np.isfinite(self.theta), self.theta, 0.0))
        Th = theta0.repeat(P, 1).requires_grad_()
        logits = Th.gather(1, torch.as_tensor(self.kid.reshape(P, -1))).reshape(self.kid.shape)
        logits = torch.where(torch.as_tensor(self.valid), logits, FILL)
        logp = torch.log_softmax(logits, -1)
        mp, mq, lq = self.valid, np.isfinite(self.lq), self.lq
        kind, a = mode.kind, mode.alpha
        if kind == "full":
            if self.infinite(mp, mq, a):
                raise Infinite("D_α infinite")
            step_loss = self.d_alpha(logp, mp, lq, mq, a)
            value = step_loss.detach()
        elif kind == "topk":
            K = self.topk_set(mode.topk, mode.topk_of)
            if not mode.tail:   # D_α of the renormalized top-k laws
                mpk, mqk = K & mp, K & mq
                if ((~mpk.any(-1) | ~mqk.any(-1)) & self.step).any():
                    raise Infinite("top-k set without mass")
                logp = torch.log_softmax(torch.where(torch.as_tensor(K), logits, FILL), -1)
                lqk = np.where(K, lq, -np.inf)
                with np.errstate(invalid="ignore"):
                    lqk = lqk - np.logaddexp.reduce(lqk, axis=-1, keepdims=True)
                if self.infinite(mpk, mqk, a):
                    raise Infinite("D_α infinite")
                step_loss = self.d_alpha(logp, mpk, np.where(mqk, lqk, -np.inf), mqk, a)
            else:               # k tokens and one tail token with logit logsumexp(θ outside K)
                rest = torch.where(torch.as_tensor(~K & mp), logits, FILL).logsumexp(-1, keepdim=True)
                logp = torch.log_softmax(torch.cat([torch.where(torch.as_tensor(K), logits, FILL), rest], -1), -1)
                mpe = np.concatenate([K & mp, (~K & mp).any(-1, keepdims=True)], -1)
                lqe = np.concatenate([np.where(K, lq, -np.inf),
                                      np.logaddexp.reduce(np.where(K, -np.inf, lq), axis=-1, keepdims=True)], -1)
                mqe = np.isfinite(lqe)
                if self.infinite(mpe, mqe, a):
                    raise Infinite("D_α infinite")
                step_loss = self.d_alpha(logp, mpe, lqe, mqe, a)
            value = step_loss.detach()
        else:
            if self.infinite(mp, mq, 1.0):
                raise Infinite("reverse KL infinite")
            tok = torch.as_tensor(self.tok)[..., None]
            logp_tok = logp.gather(-1, tok)[..., 0]
            ell = logp_tok.detach() - torch.as_tensor(np.take_along_axis(np.where(mq, lq, 0.0), self.tok[..., None], -1)[..., 0])
            ell = torch.where(torch.as_tensor(self.step), ell, 0.0)
            kl = self.d_alpha(logp, mp, lq, mq, 1.0).detach()
            if kind == "sampled":
                reward, value = ell, kl
            elif kind == "sampled-baseline":
                reward, value = ell - kl, kl
            else:                                   # reward-to-go R_t = Σ_{s≥t} ℓ_s
                reward, value = ell.flip(-1).cumsum(-1).flip(-1), ell
            step_loss = reward * logp_tok
        on = torch.as_tensor(self.step)
        assert step_loss.dtype == F64
        torch.where(on, step_loss, 0.0).sum().backward()
        grad = Th.grad.numpy().copy()
        grad[:, 0] = 0.0
        return Pairs(self.prob, grad, torch.where(on, value, 0.0).sum(-1).numpy(), self.leaf, self.cls)

    # ---- Monte Carlo ---------------------------------------------------------------------------
    def sample_counts(self, n: int, rng) -> np.ndarray:
        """How often each pair occurs among n rollouts walked down the tree (y_t ∼ π(·|h_t)) with
        a class c ∼ w each: counts per node split multinomially over the children."""
        kids = children_of(self.tree)
        at = np.zeros(self.N, np.int64)
        at[0] = n
        for h in sorted(kids):                     # parents are numbered before their children
            ks = kids[h]
            p = np.exp(self.lc[ks])
            at[ks] = rng.multinomial(at[h], p / p.sum())
        per_leaf = at[self.tree.leaf_node]
        out = np.zeros(len(self.prob), np.int64)
        C = len(self.w)
        for j, i in enumerate(self.leaf[::C]):
            out[j * C:(j + 1) * C] = rng.multinomial(per_leaf[i], self.w / self.w.sum())
        assert out.sum() == n
        return out


def oracle_or_none(oracle: Oracle, mode):
    try:
        return oracle.pairs(mode)
    except Infinite:
        return None


# --- the checks (implementation as an argument) ---------------------------------------------------

@dataclass
class Check:
    holds: bool
    worst: float          # worst deviation in units of the tolerance (≤ 1 when holds)
    what: str = ""


def _worst(dev, tol) -> float:
    return float(np.max(np.abs(dev) / tol)) if np.size(dev) else 0.0


def check_exact(policy, teacher, log_D, mode, estimate=expected_gradient, oracle=None) -> Check:
    """E g, E g² and the loss of `estimate` equal the enumerated autograd pairs (to rounding);
    estimate must refuse (one-line PcmiInputError) exactly where the oracle finds the loss infinite."""
    oracle = oracle or Oracle(policy, teacher, log_D)
    pairs = oracle_or_none(oracle, mode)
    try:
        rep = estimate(policy, teacher, log_D, mode)
    except PcmiInputError as e:
        return Check(pairs is None and one_line(e), 0.0, f"refused: {e}")
    if pairs is None:
        return Check(False, np.inf, "the oracle finds the loss infinite, the estimate did not refuse")
    scale = 1.0 + np.abs(pairs.grad).max()
    worst = max(_worst(rep.grad - pairs.mean(pairs.grad), 1e-9 * scale),
                _worst(rep.second_moment - pairs.mean(pairs.grad ** 2), 1e-9 * scale ** 2),
                _worst(rep.loss - pairs.mean(pairs.loss), 1e-9 * (1 + np.abs(pairs.loss).max())))
    return Check(worst <= 1, worst)


def check_monte_carlo(policy, teacher, log_D, mode, estimate=expected_gradient, n=N_MC, seed=0,
                      oracle=None) -> Check:
    """n rollouts y ∼ π_θ, y' ∼ D: the mean one-rollout autograd gradient is within
    Z_MEAN·sqrt(Var_c/n) of G_c (Var_c = report.coordinate_variance) for every logit c, and the mean of
    g_c² within Z_SECOND·sqrt(Var(g_c²)/n) of report.second_moment (Var(g²) from the sampled pairs' E g⁴)."""
    oracle = oracle or Oracle(policy, teacher, log_D)
    pairs = oracle.pairs(mode)
    rep = estimate(policy, teacher, log_D, mode)
    counts = oracle.sample_counts(n, np.random.default_rng(seed))
    g = pairs.grad
    mean, mean2 = counts @ g / n, counts @ g ** 2 / n
    atol = 1e-9 * (1 + np.abs(g).max())
    tol1 = Z_MEAN * np.sqrt(rep.coordinate_variance / n) + atol
    var2 = np.maximum(pairs.mean(g ** 4) - pairs.mean(g ** 2) ** 2, 0.0)
    tol2 = Z_SECOND * np.sqrt(var2 / n) + atol ** 2 + 1e-9 * np.abs(rep.second_moment)
    w1, w2 = _worst(mean - rep.grad, tol1), _worst(mean2 - rep.second_moment, tol2)
    return Check(max(w1, w2) <= 1, max(w1, w2), f"mean {w1:.3g}, second moment {w2:.3g}")


def kl_objective_autograd(policy, teacher, log_D):
    """(J, ∇J) for J(θ) = Σ_c w_c Σ_y π_θ(y) (log π_θ(y) − log T_c(y)) by torch autograd; None if J = ∞."""
    tree = policy.tree
    kids = children_of(tree)
    w, log_T = demo_classes(teacher, log_D, tree)
    theta = torch.as_tensor(np.where(np.isfinite(policy.theta), policy.theta, 0.0)).requires_grad_()
    lc = torch.zeros(tree.n_nodes, dtype=F64)
    for h, ks in kids.items():
        fin = np.isfinite(policy.theta[ks])
        idx = torch.as_tensor(np.asarray(ks)[fin])
        lc = lc.index_put((idx,), torch.log_softmax(theta[idx], 0))
    J = torch.zeros((), dtype=F64)
    for i in range(tree.n_leaves):
        path, v = [], int(tree.leaf_node[i])
        while v > 0:
            path.append(v)
            v = int(tree.parent[v])
        if not np.all(np.isfinite(policy.theta[path])):
            continue                                   # π(y) = 0: no term
        lpi = lc[torch.as_tensor(path)].sum()
        lt = log_T[:, tree.leaf_node[i]]
        if np.any(np.isneginf(lt)):
            return None
        J = J + lpi.exp() * (w.sum() * lpi - torch.as_tensor(w @ lt))
    J.backward()
    g = theta.grad.numpy().copy()
    g[0] = 0.0
    g[~np.isfinite(policy.theta)] = 0.0
    return float(J.detach()), g


def check_sequence_autograd(policy, teacher, log_D, estimate=expected_gradient) -> Check:
    """G_sequence = ∇_θ E_D KL(π_θ ‖ T(·|y')) (torch autograd of the objective) and loss = that objective."""
    ref = kl_objective_autograd(policy, teacher, log_D)
    try:
        rep = estimate(policy, teacher, log_D, LossMode("sequence"))
    except PcmiInputError as e:
        return Check(ref is None and one_line(e), 0.0, f"refused: {e}")
    if ref is None:
        return Check(False, np.inf, "objective infinite but not refused")
    J, g = ref
    scale = 1 + np.abs(g).max() + abs(J)
    worst = max(_worst(rep.grad - g, 1e-9 * scale), _worst(rep.loss - J, 1e-9 * scale))
    return Check(worst <= 1, worst)


def subtree_kl(policy, teacher, log_D) -> np.ndarray:
    """V̄(h) = Σ_c w_c KL(π(·|h) ‖ T_c(·|h)) over the rollouts below every reached node h (NaN elsewhere),
    by a loop over nodes and leaves."""
    tree = policy.tree
    w, log_T = demo_classes(teacher, log_D, tree)
    o = Oracle(policy, teacher, log_D)
    anc = [set() for _ in range(tree.n_leaves)]
    for i in range(tree.n_leaves):
        v = int(tree.leaf_node[i])
        while v != -1:
            anc[i].add(v)
            v = int(tree.parent[v])
    out = np.full(tree.n_nodes, np.nan)
    for h in range(tree.n_nodes):
        below = [i for i in range(tree.n_leaves) if h in anc[i] and np.isfinite(o.log_pi[i])]
        if not below:
            continue
        lp = o.log_pi[below]
        lph = np.logaddexp.reduce(lp)
        cond = lp - lph
        tot = 0.0
        for c in range(len(w)):
            with np.errstate(invalid="ignore"):          # T_c(h) = 0: NaN here, and the core refuses
                lt = log_T[c, tree.leaf_node[below]] - log_T[c, h]
            tot += w[c] * np.sum(np.exp(cond) * (cond - lt))
        out[h] = tot
    return out


def check_future_kl(policy, teacher, log_D, estimate=expected_gradient) -> Check:
    """report.future_kl (mode sequence) = E_D KL(π(·|h) ‖ T(·|h, y')) on every reached subtree."""
    ref = subtree_kl(policy, teacher, log_D)
    rep = estimate(policy, teacher, log_D, LossMode("sequence"))
    on = np.isfinite(ref)
    worst = _worst(rep.future_kl[on] - ref[on], 1e-9 * (1 + np.abs(ref[on]).max()))
    return Check(worst <= 1, worst)


def block_difference(policy, teacher, log_D, estimate=expected_gradient):
    """(G_full,α=1 − G_sequence, the prediction μ(h)·p ⊙ (Σ_b p_b V̄(h·b) − V̄(h·a)) from report.future_kl)."""
    full = estimate(policy, teacher, log_D, LossMode("full"))
    seq = estimate(policy, teacher, log_D, LossMode("sequence"))
    tree, V = policy.tree, seq.future_kl
    pred = np.zeros(tree.n_nodes)
    mu = np.exp(policy.log_prefix)
    for h, ks in children_of(tree).items():
        p = np.exp(policy.log_cond[ks])
        if mu[h] == 0:
            continue
        pred[ks] = mu[h] * p * (p @ V[ks] - V[ks])
    return full.grad - seq.grad, pred


def check_block_difference(policy, teacher, log_D, estimate=expected_gradient) -> Check:
    diff, pred = block_difference(policy, teacher, log_D, estimate)
    worst = _worst(diff - pred, 1e-9 * (1 + np.abs(pred).max()))
    return Check(worst <= 1, worst)


def z_flatness(inst, policy, estimate=expected_gradient):
    """At θ = π_SD's conditionals: per internal reached node h, (‖block of G_full − G_seq‖ / μ(h),
    spread of log Z(h·a) over the children with p > 0, p_min = the smallest π(a | h) there). The block
    is μ(h)·p ⊙ (x − Σ p x) with x = −log Z(h·): its largest entry is ≥ μ(h)·p_min·spread/2."""
    tl = policies.token_level(inst)
    full = estimate(policy, inst.teacher, inst.log_demos, LossMode("full"))
    seq = estimate(policy, inst.teacher, inst.log_demos, LossMode("sequence"))
    mu = np.exp(policy.log_prefix)
    out = []
    for h, ks in children_of(inst.tree).items():
        ks = np.asarray(ks)
        on = ks[np.isfinite(policy.theta[ks])]
        if mu[h] < 1e-12 or len(on) < 2:
            continue
        p_min = float(np.min(np.exp(policy.log_cond[on])))
        out.append((float(np.linalg.norm((full.grad - seq.grad)[on]) / mu[h]), float(np.ptp(tl.log_Z[on])), p_min))
    return out


def sd_policy(inst) -> TabularPolicy:
    """θ = log π_SD(a | h) = policies.token_level(inst).log_seq (−inf: masked)."""
    theta = policies.token_level(inst).log_seq.copy()
    theta[0] = 0.0
    return TabularPolicy(inst.tree, theta)


def check_p5_blocks(inst, estimate=expected_gradient, tol=1e-9) -> Check:
    """At π_SD: the full α = 1 and sequence blocks agree iff log Z is flat among the siblings, and
    where Z is not flat the difference is log Z(h·a) − Σ_b p_b log Z(h·b) (natural step)."""
    pol = sd_policy(inst)
    full = estimate(pol, inst.teacher, inst.log_demos, LossMode("full"))
    seq = estimate(pol, inst.teacher, inst.log_demos, LossMode("sequence"))
    log_Z = policies.soft_future_value(inst)
    worst = 0.0
    for h, ks in children_of(inst.tree).items():
        ks = np.asarray(ks)
        on = ks[np.isfinite(pol.theta[ks])]
        if not np.isfinite(pol.log_prefix[h]) or not len(on):
            continue
        p = np.exp(pol.log_cond[on])
        pred = log_Z[on] - p @ log_Z[on]             # V̄ = −log Z at the optimum
        worst = max(worst, _worst((full.direction - seq.direction)[on] - pred, tol * (1 + np.abs(log_Z[on]).max())))
    return Check(worst <= 1, worst)


def check_topk_large_k(policy, teacher, log_D, mode, estimate=expected_gradient) -> Check:
    """topk with k ≥ every prefix's number of children equals full (same α): grad, E g², loss."""
    full = estimate(policy, teacher, log_D, LossMode("full", mode.alpha))
    top = estimate(policy, teacher, log_D, mode)
    scale = 1 + np.abs(full.grad).max()
    worst = max(_worst(top.grad - full.grad, 1e-10 * scale), _worst(top.second_moment - full.second_moment, 1e-10 * scale ** 2),
                _worst(top.loss - full.loss, 1e-10 * (1 + abs(full.loss))))
    return Check(worst <= 1, worst)


# --- hypothesis inputs ----------------------------------------------------------------------------

moderate = tabular_problems()                                 # full-support teachers, θ grid logits or log π0
masked = tabular_problems(masked=True, base=False)            # some student tokens masked (−inf)
extreme = tabular_problems(extreme=True, masked=True)         # zeros, 1e-300, eps/lam ∈ {0, 1}
problems = st.one_of(moderate, masked, extreme)


def _args(prob):
    inst, pol = prob
    return pol, inst.teacher, inst.log_demos


# --- a. exact agreement with autograd for every mode (and refusal exactly where infinite) -----------

@some
@given(st.one_of(moderate, masked))
def test_every_mode_equals_enumerated_autograd(prob):
    pol, t, D = _args(prob)
    oracle = Oracle(pol, t, D)
    for mode in ALL_MODES:
        res = check_exact(pol, t, D, mode, oracle=oracle)
        assert res.holds, (mode.label, res)


@settings(max_examples=scaled(30), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(extreme)
def test_every_mode_equals_enumerated_autograd_or_refuses_on_extremes(prob):
    """Zeros, 1e-300 masses, eps ∈ {0, 1}: about a third of the (instance, mode) cases are infinite
    (reverse KL with T = 0, forward KL with a masked student token, empty top-k mass) and must be refused."""
    pol, t, D = _args(prob)
    oracle = Oracle(pol, t, D)
    for mode in ALL_MODES:
        res = check_exact(pol, t, D, mode, oracle=oracle)
        assert res.holds, (mode.label, res)


@some
@given(problems)
def test_batched_expected_gradients_equal_one_at_a_time(prob):
    from pcmi.estimators import expected_gradients
    pol, t, D = _args(prob)
    modes = FULL + TOPK[::7] + SAMPLED
    singles = []
    for m in modes:
        try:
            singles.append(expected_gradient(pol, t, D, m))
        except PcmiInputError:
            with pytest.raises(PcmiInputError):
                expected_gradients(pol, t, D, modes)
            return
    for one, rep in zip(singles, expected_gradients(pol, t, D, modes)):
        assert rep.mode == one.mode
        for a, b in ((rep.grad, one.grad), (rep.second_moment, one.second_moment), (rep.loss, one.loss)):
            assert np.array_equal(a, b)


@few
@given(moderate, st.integers(0, 2**31 - 1))
def test_every_mode_agrees_with_monte_carlo(prob, seed):
    pol, t, D = _args(prob)
    oracle = Oracle(pol, t, D)
    for mode in FULL + TOPK[::5] + SAMPLED:
        res = check_monte_carlo(pol, t, D, mode, n=N_MC, seed=seed, oracle=oracle)
        assert res.holds, (mode.label, res)


# --- b. sequence = ∇ E_D KL(π ‖ T), loss, future KL --------------------------------------------------

@some
@given(problems)
def test_sequence_is_the_gradient_of_the_sequence_kl(prob):
    pol, t, D = _args(prob)
    res = check_sequence_autograd(pol, t, D)
    assert res.holds, res
    try:
        res = check_future_kl(pol, t, D)
    except PcmiInputError:
        return
    assert res.holds, res


@few
@given(graph_instances().flatmap(lambda ir: st.tuples(st.just(ir[0]), tabular_policies(ir[0]))))
def test_graph_instances_equal_enumerated_autograd(args):
    """Generated graph tasks (route-copying, soft-route and copy teachers; pooled failure leaves)."""
    inst, pol = args
    oracle = Oracle(pol, inst.teacher, inst.log_demos)
    for mode in FULL[::3] + TOPK[::9] + SAMPLED:
        res = check_exact(pol, inst.teacher, inst.log_demos, mode, oracle=oracle)
        assert res.holds, (mode.label, res)
    assert check_sequence_autograd(pol, inst.teacher, inst.log_demos).holds


@few
@given(st.integers(0, 200))
def test_sequence_on_graph_instances(seed):
    inst = graph_case(seed, {"kind": "soft_route", "eps": 0.2, "sharpness": 1.5})
    pol = TabularPolicy.from_log_probs(inst.tree, inst.log_base)
    for check in (check_sequence_autograd, check_future_kl, check_block_difference):
        res = check(pol, inst.teacher, inst.log_demos)
        assert res.holds, (check.__name__, res)


# --- c. sampled and sampled-baseline: the mean of full α = 1, other variances ------------------------

@some
@given(st.one_of(moderate, masked))
def test_sampled_modes_have_the_full_reverse_kl_mean(prob):
    pol, t, D = _args(prob)
    full = expected_gradient(pol, t, D, LossMode("full"))
    scale = 1 + np.abs(full.grad).max()
    for kind in ("sampled", "sampled-baseline"):
        rep = expected_gradient(pol, t, D, LossMode(kind))
        assert np.allclose(rep.grad, full.grad, rtol=1e-9, atol=1e-10 * scale), kind
        assert rep.loss == pytest.approx(full.loss, rel=1e-9, abs=1e-12)
        assert rep.variance >= 0 and np.all(rep.second_moment >= -1e-15)
        # same mean, and per block E_c E_a ‖x_a‖² ≥ E_c ‖E_a x_a‖² = E‖v_full‖² (Jensen; the blocks of one
        # rollout are disjoint, so tr Cov = Σ_h μ(h) E‖g_h‖² − ‖G‖²): the one-token estimators are noisier
        assert rep.variance >= full.variance - 1e-9 * (1 + np.sum(full.second_moment))


# --- d. full α = 1 vs sequence: the block difference is the spread of the future KL -----------------

@some
@given(st.one_of(moderate, masked))
def test_full_minus_sequence_is_the_future_kl_spread(prob):
    pol, t, D = _args(prob)
    res = check_block_difference(pol, t, D)
    assert res.holds, res


def graph_case(seed, teacher):
    g = gw.multi_route_dag(2 + seed % 2, 1 + seed % 2, 2, seed=seed, n_sources=1, n_targets=1 + (seed // 2) % 2)
    s, t = g.graph["prompts"][0]
    return graph_instance(gw.Task(g, s, t, 4 + seed % 2), gw.EdgePolicy(), teacher)[0]


def kernel_tree_case(seed):
    """A kernel teacher with full-support rows on a three-level tree (root → X, Y; X → X1, leaf;
    X1 → m1 ≥ 2 leaves; Y → m2 ≥ 3 leaves), rollouts in a random order: Z varies, one-step and
    subtree KLs differ (at X), and a prefix has ≥ 3 tokens."""
    rng = np.random.default_rng(seed)
    m1, m2 = int(rng.integers(2, 4)), int(rng.integers(3, 5))
    n = 1 + m1 + m2
    parent = np.r_[-1, 0, 0, 1, 1, np.full(m2, 2), np.full(m1, 3)]
    tree = PrefixTree(parent, rng.permutation(np.r_[4, np.arange(5, 5 + m2 + m1)]))
    lb = log_softmax(rng.normal(0, 1, n))
    rows = np.stack([log_softmax(rng.normal(0, 1.5, n)) for _ in range(n)])
    r = np.ones(n, dtype=np.int64)
    r[int(rng.integers(n))] = 0
    return Instance(lb, r, KernelTeacher(rows), demos_from_successes(lb, r), tree=tree)


def assert_blocks_agree_iff_z_flat(inst):
    res = check_p5_blocks(inst)
    assert res.holds, res
    pairs = z_flatness(inst, sd_policy(inst))
    for diff, spread, p_min in pairs:
        if spread < 1e-12:
            assert diff < 1e-8
        elif spread > 1e-6:
            assert diff > 0.49 * p_min * spread   # ≥ p_min·spread/2 exactly (see z_flatness), less rounding
    return max((s for _, s, _ in pairs), default=0.0)


@few
@given(st.integers(0, 10_000), st.sampled_from(["soft_route", "copy", "kernel", "route_copying"]))
def test_at_the_sdsd_optimum_blocks_agree_iff_log_z_is_flat(seed, kind):
    """Graph instances choose the concept at the first hop, so route-labelled teachers (route_copying,
    soft_route) give T(·|h, y') = π0(·|h) below it and Z ≡ 1 there: the blocks agree. Copy and kernel
    teachers make Z vary (found on every seed tried), and the blocks differ exactly there."""
    if kind == "kernel":
        inst = kernel_tree_case(seed)
    else:
        spec = {"kind": kind, "lam": 0.2 + 0.3 * (seed % 3)} if kind == "copy" else {"kind": kind, "eps": 0.1 + 0.3 * (seed % 3)}
        if kind == "soft_route":
            spec["sharpness"] = 1.0 + seed % 4
        inst = graph_case(seed, spec)
    spread = assert_blocks_agree_iff_z_flat(inst)
    if kind in ("copy", "kernel"):
        assert spread > 1e-3
    else:
        assert spread < 1e-9


@some
@given(tree_instances())
def test_at_the_sdsd_optimum_blocks_agree_iff_log_z_is_flat_on_random_trees(inst):
    try:
        assert_blocks_agree_iff_z_flat(inst)
    except PcmiInputError as e:       # π_SD undefined (E_D log T = −inf everywhere)
        assert one_line(e)


# --- e. topk with k ≥ the branching is full -----------------------------------------------------------

@some
@given(problems, st.sampled_from([0.0, 0.3, 1.0]), st.sampled_from(["student", "teacher"]), st.booleans(),
       st.integers(0, 2))
def test_topk_with_k_at_least_the_branching_is_full(prob, alpha, of, tail, extra):
    """k ≥ every prefix's branching b: the top-k set is everything. With the tail bucket k ≥ b − 1
    suffices (a one-token tail is that token)."""
    pol, t, D = _args(prob)
    k = max(int(Siblings(pol.tree).size.max()) + extra - int(tail), 1)
    mode = LossMode("topk", alpha, k, of, tail)
    try:
        res = check_topk_large_k(pol, t, D, mode)
    except PcmiInputError as e:
        assert one_line(e)
        with pytest.raises(PcmiInputError):
            expected_gradient(pol, t, D, LossMode("full", alpha))
        return
    assert res.holds, res


# --- f. stationarity of the closed forms ----------------------------------------------------------------

@some
@given(tree_instances())
def test_full_reverse_kl_is_stationary_at_the_token_optimum(inst):
    pol = TabularPolicy.from_log_probs(inst.tree, policies.sdsd_token_optimum(inst))
    g = expected_gradient(pol, inst.teacher, inst.log_demos, LossMode("full")).grad
    assert np.max(np.abs(g)) < 1e-9


@some
@given(st.one_of(tree_instances(), tree_instances(extreme=True)))
def test_sequence_is_stationary_at_the_sequence_optimum(inst):
    try:
        log_sd = policies.sdsd_optimum(inst)
    except PcmiInputError:
        return
    pol = TabularPolicy.from_log_probs(inst.tree, log_sd)
    g = expected_gradient(pol, inst.teacher, inst.log_demos, LossMode("sequence")).grad
    assert np.max(np.abs(g)) < 1e-9
    # …and, as the minimum, π_SD has the smallest loss among nearby policies
    rep = expected_gradient(pol, inst.teacher, inst.log_demos, LossMode("sequence"))
    bumped = pol.with_theta(np.where(np.isfinite(pol.theta), pol.theta + 0.05 * np.sin(np.arange(pol.tree.n_nodes)), -np.inf))
    assert expected_gradient(bumped, inst.teacher, inst.log_demos, LossMode("sequence")).loss >= rep.loss - 1e-12


@some
@given(st.one_of(tree_instances(), tree_instances(extreme=True)), st.sampled_from([0.0, 0.3, 0.5, 0.8, 1.0]))
def test_full_alpha_is_stationary_at_the_js_optimum_on_the_flat_tree(inst, alpha):
    inst = replace(inst, tree=PrefixTree.flat(inst.n))
    try:
        js = policies.js_optimum(inst, alpha)
    except PcmiInputError:
        return
    assume(js.converged)
    pol = TabularPolicy.from_log_probs(inst.tree, js.log_pi)
    g = expected_gradient(pol, inst.teacher, inst.log_demos, LossMode("full", alpha)).grad
    assert np.max(np.abs(g)) < 1e-8


# --- g. refusals and extremes --------------------------------------------------------------------------

@some
@given(route_copying_instances(eps=st.just(0.0)).flatmap(
    lambda i: st.tuples(st.just(i), prefix_trees(i.n), st.sampled_from(SAMPLED + [LossMode("full")]))))
def test_eps_zero_with_several_strategies_is_refused(args):
    inst, tree, mode = args
    inst = replace(inst, tree=tree)
    assert len(np.unique(inst.route[np.isfinite(inst.log_demos)])) >= 2
    pol = TabularPolicy(tree, np.zeros(tree.n_nodes))             # reaches every rollout
    with pytest.raises(PcmiInputError) as e:
        expected_gradient(pol, inst.teacher, inst.log_demos, mode)
    assert one_line(e.value) and "probability 0" in str(e.value)


# logits with sibling gaps up to 730 nats: probabilities down to ~1e-317 (subnormal), never underflowing to 0
extreme_theta = st.sampled_from([-700.0, -30.0, 0.0, 1e-300, 30.0])


@some
@given(tabular_problems(extreme=True).flatmap(
    lambda p: st.tuples(st.just(p[0]), st.one_of(st.just(p[1]), tabular_policies(p[0], masked=True, base=False),
                                                 tabular_policies(p[0], masked=True, base=False, logit=extreme_theta)))))
def test_extreme_inputs_never_give_nan(args):
    inst, pol = args
    for mode in ALL_MODES:
        try:
            rep = expected_gradient(pol, inst.teacher, inst.log_demos, mode)
        except PcmiInputError as e:
            assert one_line(e), mode.label
            continue
        assert np.all(np.isfinite(rep.grad)) and np.all(np.isfinite(rep.second_moment)), mode.label
        assert np.isfinite(rep.loss), mode.label
        assert np.all(np.isfinite(rep.direction)), mode.label
        assert np.all(rep.second_moment >= 0) and rep.variance >= 0, mode.label
        assert np.all(rep.grad[~np.isfinite(pol.theta)] == 0), mode.label   # masked tokens stay masked


UNDERFLOW_CASES = [  # (θ on the flat 3-leaf tree, mode): a finite logit whose probability underflows to 0
    ((0.0, -800.0, 0.0), LossMode("full")),                 # p = e^-800 where q = 0: loss NaN (0·∞)
    ((0.0, -800.0, 0.0), LossMode("sampled-baseline")),     # loss and E g² NaN
    ((0.0, -800.0, -800.0), LossMode("topk", 1.0, 2, "student", False)),
    ((-800.0, 0.0, 0.0), LossMode("topk", 1.0, 1, "teacher", False)),      # direction NaN (1/P_K overflows)
    ((-800.0, 0.0, -800.0), LossMode("topk", 0.5, 2, "teacher", False)),   # direction ±inf
    ((-700.0, 30.0, -700.0), LossMode("topk", 1.0, 1, "teacher", False)),   # P_K ≈ 5e-318 > 0: direction NaN
]


@pytest.mark.parametrize("theta, mode", UNDERFLOW_CASES)
def test_underflowing_student_probabilities_never_give_nan(theta, mode):
    """Teacher T(·) = (½, 0, ½) (route-copying, eps = 0, one route); the student's logits are finite, so
    in exact arithmetic p > 0 everywhere: the loss is +inf (refuse) or finite, never NaN."""
    tree = PrefixTree.flat(3)
    lb = np.array([np.log(0.5), -np.inf, np.log(0.5)])
    teacher = LatentStrategyTeacher.route_copying(lb, np.zeros(3, np.int64), 0.0)
    pol = TabularPolicy(tree, np.r_[0.0, theta])
    try:
        rep = expected_gradient(pol, teacher, lb, mode)
    except PcmiInputError as e:
        assert one_line(e)
        return
    for v in (rep.grad, rep.second_moment, rep.loss, rep.direction):
        assert np.all(np.isfinite(v))


# --- h. gradient_bias ------------------------------------------------------------------------------------

def bias_by_loops(g, r, tree):
    out_c, out_q = [], []
    for h, ks in sorted(children_of(tree).items()):
        a, b = g[ks], r[ks]
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        na, nb = (na if na > 1e-14 else 0.0), (nb if nb > 1e-14 else 0.0)   # rounding noise counts as zero
        out_c.append(1.0 if na == nb == 0 else (0.0 if na == 0 or nb == 0 else a @ b / (na * nb)))
        out_q.append(1.0 if na == nb == 0 else (np.inf if nb == 0 else na / nb))
    return np.clip(out_c, -1, 1), np.array(out_q)


@some
@given(moderate, st.floats(0.1, 10.0))
def test_gradient_bias_conventions(prob, s):
    pol, t, D = _args(prob)
    sib = Siblings(pol.tree)
    full = expected_gradient(pol, t, D, LossMode("full")).grad
    ref = sequence_gradient(pol, t, D)
    b = gradient_bias(full, ref, sib)
    assert b.prefix_cosine.shape == b.prefix_norm_ratio.shape == (sib.n_segments,)
    nf, nr = np.linalg.norm(full), np.linalg.norm(ref)
    if nf > 1e-14 and nr > 1e-14:   # below that both count as zero (rounding noise)
        assert b.cosine == pytest.approx(np.clip(full @ ref / (nf * nr), -1, 1))
    c, q = bias_by_loops(full, ref, pol.tree)
    order = np.argsort(sib.internal)
    assert np.allclose(b.prefix_cosine[order], c, atol=1e-12)
    assert np.allclose(b.prefix_norm_ratio[order], q, rtol=1e-12)
    if np.linalg.norm(ref) <= 1e-12:
        ref = np.r_[0.0, np.linspace(1, 2, len(ref) - 1)]    # the conventions below need a nonzero vector
    same = gradient_bias(ref, ref, sib)
    assert same.norm_ratio == 1 and np.all(same.prefix_norm_ratio == 1)
    assert same.cosine == pytest.approx(1) and np.allclose(same.prefix_cosine, 1)
    scaled = gradient_bias(s * ref, ref, sib)
    assert scaled.norm_ratio == pytest.approx(s) and scaled.cosine == pytest.approx(1)
    flipped = gradient_bias(-ref, ref, sib)
    assert flipped.cosine == pytest.approx(-1) and flipped.norm_ratio == pytest.approx(1)
    z = np.zeros_like(ref)
    zz, zr, rz = gradient_bias(z, z, sib), gradient_bias(z, ref, sib), gradient_bias(ref, z, sib)
    assert (zz.cosine, zz.norm_ratio) == (1.0, 1.0)
    assert (zr.cosine, zr.norm_ratio) == (0.0, 0.0) and (rz.cosine, rz.norm_ratio) == (0.0, np.inf)
    nz = np.sqrt(sib.sum(ref ** 2)) > 1e-14
    assert np.all(rz.prefix_norm_ratio[nz] == np.inf) and np.all(rz.prefix_cosine[nz] == 0)
    rep = all_modes_report(pol, t, D, [LossMode("sequence"), LossMode("full")])
    assert set(rep) == {"sequence", "full(α=1)"}
    assert rep["sequence"]["bias"].cosine == pytest.approx(1) and rep["sequence"]["bias"].norm_ratio == pytest.approx(1)


@some
@given(moderate)
def test_direction_is_the_gradient_without_mu_p(prob):
    """G[h·a] = μ(h)·π(a|h)·direction[h·a] for every mode."""
    pol, t, D = _args(prob)
    mu_p = np.r_[0.0, np.exp(pol.log_prefix[pol.tree.parent[1:]] + pol.log_cond[1:])]
    for mode in FULL + SAMPLED + TOPK[6::6]:
        try:
            rep = expected_gradient(pol, t, D, mode)
        except PcmiInputError:
            continue
        if mode.kind == "topk" and not mode.tail:
            continue           # direction is the renormalized step: ratio p̃/p, not checked here
        assert np.allclose(rep.grad, mu_p * rep.direction, rtol=1e-9, atol=1e-12), mode.label


# --- 4. sabotage: plausible wrong implementations must fail the checks ----------------------------------

def sequence_without_reward_to_go(policy, teacher, log_D, mode=LossMode()):
    """Sequence mode that forgets V (Q = ℓ only): the sampled estimator under the sequence label."""
    if mode.kind == "sequence":
        rep = expected_gradient(policy, teacher, log_D, LossMode("sampled"))
        seq = expected_gradient(policy, teacher, log_D, mode)
        return replace(rep, mode=mode, loss=seq.loss, future_kl=seq.future_kl)
    return expected_gradient(policy, teacher, log_D, mode)


def future_kl_one_step(policy, teacher, log_D, mode=LossMode()):
    """future_kl = KL of the next token only, E_D KL(π(·|h) ‖ T(·|h, y')) without the subtree."""
    rep = expected_gradient(policy, teacher, log_D, mode)
    if mode.kind != "sequence":
        return rep
    w, log_T = demo_classes(teacher, log_D, policy.tree)
    V = np.zeros(policy.tree.n_nodes)
    for h, ks in children_of(policy.tree).items():
        lp = policy.log_cond[ks]
        for c in range(len(w)):
            lq = log_T[c, ks] - log_T[c, h]
            on = np.isfinite(lp)
            V[h] += w[c] * np.sum(np.exp(lp[on]) * (lp[on] - lq[on]))
    return replace(rep, future_kl=V)


def topk_ignoring_tail(policy, teacher, log_D, mode=LossMode()):
    if mode.kind == "topk":
        return replace(expected_gradient(policy, teacher, log_D, replace(mode, tail=False)), mode=mode)
    return expected_gradient(policy, teacher, log_D, mode)


def topk_off_by_one(policy, teacher, log_D, mode=LossMode()):
    if mode.kind == "topk" and mode.topk > 1:
        return replace(expected_gradient(policy, teacher, log_D, replace(mode, topk=mode.topk - 1)), mode=mode)
    return expected_gradient(policy, teacher, log_D, mode)


def sampled_second_moment_without_spread(policy, teacher, log_D, mode=LossMode()):
    """E g_b² = μ(h) E_D p_b ℓ_b² (as if g = ℓ_a e_a): the ‖e_a − p‖² factor forgotten."""
    rep = expected_gradient(policy, teacher, log_D, mode)
    if mode.kind != "sampled":
        return rep
    w, log_T = demo_classes(teacher, log_D, policy.tree)
    m2 = np.zeros(policy.tree.n_nodes)
    mu = np.exp(policy.log_prefix)
    for h, ks in children_of(policy.tree).items():
        lp = policy.log_cond[ks]
        for c in range(len(w)):
            ell = lp - (log_T[c, ks] - log_T[c, h])
            m2[ks] += mu[h] * w[c] * np.exp(lp) * ell ** 2
    return replace(rep, second_moment=m2)


def sabotage_problem(seed):
    """A kernel teacher (full-support rows) on a random two-level tree with random logits θ ∼ N(0, 1)."""
    rng = np.random.default_rng(seed)
    inst = kernel_tree_case(seed)
    return TabularPolicy(inst.tree, np.r_[0.0, rng.normal(0, 1, inst.tree.n_nodes - 1)]), inst.teacher, inst.log_demos


sab = settings(max_examples=scaled(8), deadline=None, suppress_health_check=[HealthCheck.too_slow])


@sab
@given(st.integers(0, 10_000))
def test_sabotage_sequence_without_reward_to_go(seed):
    pol, t, D = sabotage_problem(seed)
    mode = LossMode("sequence")
    V = expected_gradient(pol, t, D, mode).future_kl
    assert max(np.ptp(V[ks]) for ks in children_of(pol.tree).values()) > 1e-2   # V̄ varies: reward-to-go matters
    for check in (check_exact, check_monte_carlo):
        assert check(pol, t, D, mode).holds
        assert not check(pol, t, D, mode, estimate=sequence_without_reward_to_go).holds, check.__name__
    assert check_sequence_autograd(pol, t, D).holds
    assert not check_sequence_autograd(pol, t, D, estimate=sequence_without_reward_to_go).holds
    assert check_block_difference(pol, t, D).holds
    assert not check_block_difference(pol, t, D, estimate=sequence_without_reward_to_go).holds


@sab
@given(st.integers(0, 10_000))
def test_sabotage_future_kl_of_one_step(seed):
    pol, t, D = sabotage_problem(seed)
    assert check_future_kl(pol, t, D).holds and check_block_difference(pol, t, D).holds
    assert not check_future_kl(pol, t, D, estimate=future_kl_one_step).holds
    assert not check_block_difference(pol, t, D, estimate=future_kl_one_step).holds


@sab
@given(st.integers(0, 10_000), st.sampled_from([1.0, 0.5, 0.0]), st.sampled_from(["student", "teacher"]))
def test_sabotage_topk_ignoring_the_tail(seed, alpha, of):
    pol, t, D = sabotage_problem(seed)
    mode = LossMode("topk", alpha, 1, of, True)
    for check in (check_exact, check_monte_carlo):
        assert check(pol, t, D, mode).holds
        assert not check(pol, t, D, mode, estimate=topk_ignoring_tail).holds, check.__name__


@sab
@given(st.integers(0, 10_000), st.sampled_from([1.0, 0.5, 0.0]), st.sampled_from(["student", "teacher"]), st.booleans())
def test_sabotage_topk_off_by_one(seed, alpha, of, tail):
    """k = the largest branching (k − 1 with a tail: a one-token tail is that token); the off-by-one
    top-k drops a token (without tail) or pools two tokens in the tail bucket (with tail)."""
    pol, t, D = sabotage_problem(seed)
    assert pol.sib.size.max() >= 3
    mode = LossMode("topk", alpha, int(pol.sib.size.max()) - int(tail), of, tail)
    assert check_topk_large_k(pol, t, D, mode).holds
    assert not check_topk_large_k(pol, t, D, mode, estimate=topk_off_by_one).holds


@sab
@given(st.integers(0, 10_000))
def test_sabotage_sampled_second_moment(seed):
    pol, t, D = sabotage_problem(seed)
    mode = LossMode("sampled")
    for check in (check_exact, check_monte_carlo):
        assert check(pol, t, D, mode).holds
        assert not check(pol, t, D, mode, estimate=sampled_second_moment_without_spread).holds, check.__name__


@sab
@given(st.integers(0, 10_000), st.sampled_from(["copy", "kernel"]))
def test_sabotage_p5_blocks(seed, kind):
    inst = kernel_tree_case(seed) if kind == "kernel" else graph_case(seed, {"kind": "copy", "lam": 0.5})
    assert check_p5_blocks(inst).holds
    assert max(s for _, s, _ in z_flatness(inst, sd_policy(inst))) > 1e-3          # Z is not flat somewhere
    assert not check_p5_blocks(inst, estimate=sequence_without_reward_to_go).holds


@pytest.mark.parametrize("log_D, word", [([np.nan, 0.0, -np.inf], "NaN"), ([np.inf, -1.0, -1.0], r"\+inf"),
                                         ([0.0, 0.0, 0.0], "not normalized"), ([[0.0, -1.0, -2.0]], "dimension"),
                                         ("abc", "array"), ([0.0, -np.inf], "entries")])
def test_bad_demonstrations_are_one_line_errors(log_D, word):
    """A NaN, +inf, unnormalized or misshapen D is refused by name, never turned into a NaN gradient."""
    lb = np.log([0.5, 0.3, 0.2])
    teacher = LatentStrategyTeacher.route_copying(lb, np.arange(3), 0.1)
    pol = TabularPolicy.from_log_probs(PrefixTree.flat(3), lb)
    with pytest.raises(PcmiInputError, match=word) as e:
        expected_gradient(pol, teacher, log_D, LossMode("full"))
    assert one_line(e.value) and "demonstrations D" in str(e.value)
