"""Exact expected gradients of the practised SDSD loss modes on the tabular policy (theory.md §9).

For a student rollout y ~ π_θ, a demonstration y' ~ D and a detached teacher T(·|h, y'), one step
of a mode (`pcmi.objectives`) uses a gradient estimate g(y, y'; θ) with respect to the logits θ.
Everything here is a sum over the prefix tree and the teacher's demonstration classes, no sampling:

    G(θ)      = E_{y∼π, y'∼D} g                 (`GradientReport.grad`)
    E g_a²    per logit, and tr Cov g = E‖g‖² − ‖G‖²  for a batch of one rollout

The steps of one rollout touch disjoint logit blocks (one prefix each), so with μ(h) = π(h),
p = π(·|h), q = T(·|h, y'), and the block vector v(h) of a step at h:

    full / topk       v = p ⊙ (c − Σ p c) with c = ∂D_α/∂p (`divergence_terms`), on the mode's support
    sampled           E v = the full α = 1 block (E_a[ℓ_a ∇log p_a] = ∇KL(p‖q)), ℓ = log p/q;
                      E‖g_h‖² = Σ_a p_a ℓ_a² ‖e_a − p‖²
    sampled-baseline  ℓ_a − KL(p‖q) in place of ℓ_a: the same mean (Σ_a p_a (e_a − p) = 0), less variance
    sequence          Q(h·a) = ℓ_a + V(h·a), V(h) = Σ_a p_a Q(h·a) = KL(π(·|h) ‖ T(·|h, y')) on the
                      subtree, v = p ⊙ (Q − V(h)): exactly ∇ E_D KL(π ‖ T(·|y')) (the reference)

and G = Σ_h μ(h) E_D v(h). The difference between full α = 1 and sequence at block h is
μ(h) p ⊙ (V̄(h·) − Σ p V̄(h·)), V̄ = E_D V: zero iff the expected future KL is flat among the
children (P5's condition; at the SDSD optimum V̄ = −log Z).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .distributions import check_log_probs, float_array, prob_of
from .errors import PcmiInputError
from .objectives import LossMode, divergence_terms, loss_mode
from .tabular import Siblings, TabularPolicy


@dataclass
class GradientReport:
    """The exact expected gradient of one mode at one policy (node arrays, index 0 = root, unused)."""
    mode: LossMode
    grad: np.ndarray            # G = E g, ∂/∂θ[c] for every node c
    second_moment: np.ndarray   # E g_c² per logit
    loss: float                 # the mode's expected loss (sequence: E_D KL(π ‖ T(·|y')))
    direction: np.ndarray       # per-prefix natural step E_D v(h)/p: G without the μ(h)·p factor (topk without
                                # the tail: v/p̃, the Fisher step of the renormalized law on the top-k set)
    future_kl: np.ndarray | None = None  # sequence only: V̄(h) = E_D KL(π(·|h) ‖ T(·|h, y')) per node
                                          # (0 below prefixes the student never reaches)

    @property
    def norm(self) -> float:
        return float(np.sqrt(np.sum(self.grad ** 2)))

    @property
    def variance(self) -> float:
        """tr Cov g for a batch of one rollout (with one demonstration): E‖g‖² − ‖G‖² ≥ 0."""
        return float(max(np.sum(self.second_moment) - np.sum(self.grad ** 2), 0.0))

    @property
    def coordinate_variance(self) -> np.ndarray:
        return np.maximum(self.second_moment - self.grad ** 2, 0.0)


def _infinite(mode: LossMode, n: int, why: str) -> PcmiInputError:
    return PcmiInputError(f"the {mode.label} loss is infinite at {n} prefix(es) the student reaches: {why}")


def _teacher_conditionals(policy: TabularPolicy, log_T: np.ndarray, w: np.ndarray, mode: LossMode, internal_reached):
    """log T(a | h, y') at every node (B, N); refuses a prefix the student reaches that a
    demonstration of positive weight rules out (T(h | y') = 0: its next-token law is undefined)."""
    par = policy.tree.parent[1:]
    bad = np.isneginf(log_T[:, internal_reached])
    if bad.any():
        raise _infinite(mode, int(bad.any(axis=0).sum()), "a demonstration's teacher gives the prefix probability 0 "
                        "(T(h | y') = 0, e.g. eps = 0 with several strategies), so its next-token law is undefined")
    log_q = np.empty_like(log_T)
    log_q[:, 0] = 0.0
    lt_par = log_T[:, par]
    with np.errstate(invalid="ignore"):
        log_q[:, 1:] = log_T[:, 1:] - lt_par
    fix = ~np.isfinite(lt_par)
    if fix.any():  # below a prefix the teacher rules out (never reached by the student): any law will do
        log_q[:, 1:] = np.where(fix, policy.log_cond[None, 1:], log_q[:, 1:])
    return log_q


#: demonstration classes are processed in batches of at most this many (class × node) entries
BATCH_ENTRIES = 1 << 22


def _class_batches(teacher, log_D, tree):
    """(w (B,), log T (B, N)) of the demonstration classes with positive weight, in batches."""
    ws, rows, size = [], [], 0
    for log_w, log_T in teacher.demo_classes(log_D, tree):
        w = prob_of(np.asarray(log_w, float))
        keep = w > 0
        if not keep.any():
            continue
        ws.append(w[keep])
        rows.append(np.asarray(log_T, float)[keep])
        size += rows[-1].size
        if size >= BATCH_ENTRIES:
            yield np.concatenate(ws), np.concatenate(rows)
            ws, rows, size = [], [], 0
    if ws:
        yield np.concatenate(ws), np.concatenate(rows)


def _per_token_blocks(policy: TabularPolicy, log_q: np.ndarray, mode: LossMode, cache: dict | None = None):
    """For every demonstration class (rows) and node: the block vector v, the natural step v/p,
    the per-logit second moment of one step at its prefix, and the divergence per segment.
    `cache` shares the mean blocks of full α = 1 with the two sampled modes (same expectation)."""
    sib: Siblings = policy.sib
    lp = policy.log_cond[None, :]
    p = np.exp(lp)
    key = ("full", mode.alpha) if mode.kind != "topk" else None
    if cache is not None and key in cache:
        v, nat, coef, seg_div, undefined = cache[key]
    else:
        v, nat, coef, seg_div, undefined = _mean_blocks(policy, log_q, mode, lp, p, cache)
        if cache is not None and key is not None:
            cache[key] = (v, nat, coef, seg_div, undefined)
    if mode.kind in ("sampled", "sampled-baseline"):
        ell = coef  # log p/q on supp p
        with np.errstate(invalid="ignore", over="ignore"):
            if mode.kind == "sampled-baseline":
                ell = ell - sib.spread(seg_div)
            m = np.where(p > 0, ell ** 2, 0.0)
            pm = sib.spread(sib.sum(np.where(p > 0, p * m, 0.0)))
            diag = np.where(p > 0, p * m * (1 - 2 * p), 0.0) + p ** 2 * pm
    else:
        diag = v ** 2
    return v, nat, diag, seg_div, undefined


def _mean_blocks(policy: TabularPolicy, log_q: np.ndarray, mode: LossMode, lp, p, cache: dict | None = None):
    """(v, v/p_eff, coef, divergence per segment, undefined segments) of a per-token mode; `cache`
    shares a top-k set between the modes that select it (with and without the tail)."""
    sib: Siblings = policy.sib
    B, N = log_q.shape
    if mode.kind == "topk":
        mkey = ("topk", mode.topk_of, mode.topk)
        if cache is not None and mkey in cache:
            in_k = cache[mkey]
        else:
            key = lp if mode.topk_of == "student" else log_q
            in_k = np.broadcast_to(sib.top_k(key, mode.topk), (B, N)).copy()
            in_k[:, 0] = False
            if cache is not None:
                cache[mkey] = in_k
    ninf = -np.inf
    if mode.kind == "topk" and not mode.tail:  # renormalize both on the top-k set
        lpk = np.where(in_k, lp, ninf)
        lqk = np.where(in_k, log_q, ninf)
        lpk_n, lqk_n = sib.logsumexp(lpk), sib.logsumexp(lqk)
        with np.errstate(invalid="ignore"):
            le = lpk - sib.spread(lpk_n)
            lqe = lqk - sib.spread(lqk_n)
        le = np.where(in_k, le, ninf)
        lqe = np.where(in_k, lqe, ninf)
        undefined = np.isneginf(lpk_n) | np.isneginf(lqk_n)  # (B, S): p̃ or q̃ has no mass on the top-k
        terms, coef = divergence_terms(le, lqe, mode.alpha)
        seg_div = sib.sum(np.where(in_k, terms, 0.0))
        coef = np.where(in_k, coef, 0.0)
    elif mode.kind == "topk":  # k tokens + one tail bucket, no renormalization
        le = lp
        lpt = sib.logsumexp(np.where(in_k, ninf, lp))
        lqt = sib.logsumexp(np.where(in_k, ninf, log_q))
        tk, ck = divergence_terms(np.where(in_k, lp, ninf), np.where(in_k, log_q, ninf), mode.alpha)
        tt, ct = divergence_terms(lpt, lqt, mode.alpha)
        seg_div = sib.sum(np.where(in_k, tk, 0.0)) + tt
        coef = np.where(in_k, ck, sib.spread(ct))
        coef[:, 0] = 0.0
        undefined = np.zeros(seg_div.shape, bool)
    else:
        le = lp
        terms, coef = divergence_terms(lp, log_q, mode.alpha)
        seg_div = sib.sum(terms)
        undefined = np.zeros(seg_div.shape, bool)
    pe = p if le is lp else np.exp(le)
    on = np.isfinite(le)
    with np.errstate(invalid="ignore", over="ignore"):
        cbar = sib.sum(np.where(pe > 0, pe * coef, 0.0))
        u = coef - sib.spread(cbar)
        v = np.where(pe > 0, pe * u, 0.0)
        nat = np.where(on & np.isfinite(u), u, 0.0)  # v / p_eff: the Fisher step of the law the loss sees
    return v, nat, coef, seg_div, undefined


def _sequence_blocks(policy: TabularPolicy, log_q: np.ndarray, mode: LossMode):
    """Reward-to-go blocks: Q(h·a) = ℓ_a + V(h·a), V(h) = Σ_a p_a Q(h·a), second moments
    S(h) = E[(Σ_{s≥t} ℓ_s)² | h] = Σ_a p_a (ℓ_a² + 2ℓ_a V(h·a) + S(h·a))."""
    sib, tree = policy.sib, policy.tree
    lp = policy.log_cond[None, :]
    p = np.exp(lp)
    on = np.isfinite(lp)  # p > 0, even where exp underflows
    with np.errstate(invalid="ignore"):
        ell = np.where(on, lp - log_q, 0.0)
    B, N = log_q.shape
    V, S2 = np.zeros((B, N)), np.zeros((B, N))
    reach = np.isfinite(policy.log_prefix)
    ell[:, 0] = 0.0
    if np.any(np.isposinf(ell) & reach[None, :]):
        raise _infinite(mode, int((np.isposinf(ell) & reach[None, :]).any(axis=0).sum()),
                        "the teacher gives probability 0 to a token the student emits (reverse KL)")
    for nodes, kids, first in sib.by_depth(tree):
        pk, lk = p[:, kids], ell[:, kids]
        with np.errstate(invalid="ignore", over="ignore"):
            x = np.where(on[:, kids], pk * (lk + V[:, kids]), 0.0)
            y = np.where(on[:, kids], pk * (lk ** 2 + 2 * lk * V[:, kids] + S2[:, kids]), 0.0)
        # an infinite value below a prefix the student never reaches does not count
        x = np.where(reach[None, kids], x, 0.0)
        y = np.where(reach[None, kids], y, 0.0)
        V[:, nodes] = np.add.reduceat(x, first, axis=1)
        S2[:, nodes] = np.add.reduceat(y, first, axis=1)
    with np.errstate(invalid="ignore"):
        Q = ell + V
        u = np.where(on, Q - sib.spread(V[:, sib.internal]), 0.0)
        v = np.where(on, p * u, 0.0)
        M = np.where(on, ell ** 2 + 2 * ell * V + S2, 0.0)
        pm = sib.spread(sib.sum(np.where(on, p * M, 0.0)))
        diag = np.where(on, p * M * (1 - 2 * p), 0.0) + p ** 2 * pm
    u[:, 0] = v[:, 0] = diag[:, 0] = 0.0
    return v, u, diag, V


def expected_gradient(policy: TabularPolicy, teacher, log_D, mode=LossMode()) -> GradientReport:
    """G = E_{y∼π_θ, y'∼D} g_mode(y, y'; θ) exactly, with the per-logit second moments and the
    expected loss; teacher is any `pcmi.teachers` teacher on policy.tree, log_D (n,) over rollouts."""
    return expected_gradients(policy, teacher, log_D, [mode])[0]


def expected_gradients(policy: TabularPolicy, teacher, log_D, modes) -> list[GradientReport]:
    """`expected_gradient` for several modes at once (the teacher's conditionals are computed once)."""
    modes = [loss_mode(m) for m in modes]
    tree, sib = policy.tree, policy.sib
    log_D = float_array(log_D, "demonstrations D", ndim=1)
    if log_D.shape != (tree.n_leaves,):
        raise PcmiInputError(f"demonstrations D have {log_D.size} entries but the tree has {tree.n_leaves} rollouts")
    log_D = check_log_probs(log_D, "demonstrations D")  # NaN, +inf or a law not summing to 1: one line
    mu = policy.reach
    parent0 = np.r_[0, tree.parent[1:]]
    mu_par = np.r_[0.0, mu[tree.parent[1:]]]
    mu_seg = mu[sib.internal]
    live = np.isfinite(policy.log_prefix[sib.internal])        # internal prefixes the student reaches
    reached = np.isfinite(policy.log_prefix[parent0])[None, :]  # nodes whose prefix the student reaches
    reached[:, 0] = False
    all_reached = bool(reached[:, 1:].all())
    N = tree.n_nodes
    acc = [dict(grad=np.zeros(N), diag=np.zeros(N), nat=np.zeros(N), loss=0.0,
                vbar=np.zeros(N) if m.kind == "sequence" else None) for m in modes]
    w_total = 0.0
    for w, log_T in _class_batches(teacher, log_D, tree):
        w_total += float(w.sum())
        log_q, cache = None, {}
        for mode, a in zip(modes, acc):
            if log_q is None:
                log_q = _teacher_conditionals(policy, log_T, w, mode, sib.internal[live])
            if mode.kind == "sequence":
                v, u, dg, V = _sequence_blocks(policy, log_q, mode)
                if np.isinf(V[:, 0]).any():
                    raise _infinite(mode, int(np.isinf(V[:, sib.internal]).any(axis=0).sum()),
                                    "the teacher gives probability 0 to a token the student emits (reverse KL)")
                a["loss"] += float(w @ V[:, 0])
                a["vbar"] += w @ V
            else:
                v, u, dg, seg_div, undefined = _per_token_blocks(policy, log_q, mode, cache)
                bad = (np.isinf(seg_div) | undefined) & live[None, :]
                if bad.any():
                    why = ("the teacher gives its top-k tokens no mass the student shares" if undefined.any()
                           else "the teacher gives probability 0 to a token the student emits (reverse KL), or the "
                                "student to a token the teacher emits (forward KL)")
                    raise _infinite(mode, int(bad.any(axis=0).sum()), why)
                a["loss"] += float(w @ np.where(live[None, :], seg_div, 0.0) @ mu_seg)
            if not all_reached:  # below a prefix the student never reaches nothing counts (values may be undefined)
                v, dg, u = (np.where(reached, x, 0.0) for x in (v, dg, u))
            a["grad"] += mu_par * (w @ v)
            a["diag"] += mu_par * (w @ dg)
            a["nat"] += w @ u
    if w_total <= 0:
        raise PcmiInputError("the demonstrations D have no mass: the loss needs at least one demonstration")
    # D was validated and renormalized above (check_log_probs), so the gradient is that of the stated loss
    masked = ~np.isfinite(policy.theta)
    out = []
    for mode, a in zip(modes, acc):
        for k in ("grad", "diag", "nat"):
            a[k][0] = 0.0
        a["grad"][masked] = 0.0
        out.append(GradientReport(mode, a["grad"], a["diag"], a["loss"], a["nat"], a["vbar"]))
    return out


def sequence_gradient(policy: TabularPolicy, teacher, log_D) -> np.ndarray:
    """∇_θ E_{y'∼D} KL(π_θ ‖ T(·|y')): the reference every mode's bias is measured against."""
    return expected_gradient(policy, teacher, log_D, LossMode("sequence")).grad


@dataclass
class Bias:
    """G_mode against the sequence-level gradient G_seq: in total and per prefix (segments of
    `Siblings`). Cosine of two zero vectors is 1, of one zero vector 0; the norm ratio of two zero
    vectors is 1, of a nonzero over a zero vector +inf. A norm ≤ ZERO_NORM counts as zero."""
    cosine: float
    norm_ratio: float
    prefix_cosine: np.ndarray
    prefix_norm_ratio: np.ndarray


#: a gradient (block) whose norm is below this counts as zero in `gradient_bias` (rounding noise)
ZERO_NORM = 1e-14


def _cos_ratio(a_dot_b, ss_a, ss_b):
    """(cos, ‖a‖/‖b‖) from a·b and the squared norms; cos = a·b / √(‖a‖²‖b‖²), which is exactly 1
    for a = b (a·b / (‖a‖‖b‖) can round to 1 − 2e-16)."""
    na, nb = np.sqrt(ss_a), np.sqrt(ss_b)
    za, zb = na <= ZERO_NORM, nb <= ZERO_NORM
    both = ~za & ~zb
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        cos = np.where(both, a_dot_b / np.sqrt(np.where(both, ss_a * ss_b, 1.0)), np.where(za & zb, 1.0, 0.0))
        ratio = np.where(~zb, np.where(za, 0.0, na) / np.where(zb, 1.0, nb), np.where(za, 1.0, np.inf))
    return np.clip(cos, -1.0, 1.0), ratio


def gradient_bias(grad, reference, siblings: Siblings) -> Bias:
    """Cosine and norm ratio of `grad` against `reference` (e.g. `sequence_gradient`)."""
    g, r = np.asarray(grad, float), np.asarray(reference, float)
    c, q = _cos_ratio(np.array(g @ r), np.array(g @ g), np.array(r @ r))
    pc, pq = _cos_ratio(siblings.sum(g * r), siblings.sum(g * g), siblings.sum(r * r))
    return Bias(float(c), float(q), pc, pq)


def all_modes_report(policy: TabularPolicy, teacher, log_D, modes) -> dict:
    """{mode label: {"report": GradientReport, "bias": Bias}} against the sequence-level gradient."""
    modes = [loss_mode(m) for m in modes]
    reps = expected_gradients(policy, teacher, log_D, [LossMode("sequence")] + modes)
    ref = reps[0].grad
    return {m.label: {"report": rep, "bias": gradient_bias(rep.grad, ref, policy.sib)} for m, rep in zip(modes, reps[1:])}
