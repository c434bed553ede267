"""Symbolic proofs (sympy) of P1, P2 and P4 for the two- and three-rollout cases.

Each proof returns a SymbolicProof whose `proved` is True only if sympy reduced every
identity to 0 and every sign condition to a positive expression over positive symbols.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy as sp


@dataclass
class SymbolicProof:
    name: str
    statement: str
    proved: bool
    steps: list


def _zero(expr) -> bool:
    e = sp.expand_log(sp.simplify(expr), force=True)
    return sp.simplify(e) == 0


def prove_p1(n: int) -> SymbolicProof:
    """π_RL(y) = π0(y)e^{r(y)/β}/Z: for correct y1, y2 the ratio is π0(y1)/π0(y2) (n rollouts,
    the last one wrong when n = 3)."""
    p = sp.symbols(f"p1:{n + 1}", positive=True)
    beta = sp.Symbol("beta", positive=True)
    r = [1, 1] + [0] * (n - 2)
    Z = sum(pi * sp.exp(ri / beta) for pi, ri in zip(p, r))
    rl = [pi * sp.exp(ri / beta) / Z for pi, ri in zip(p, r)]
    steps = [("ratio π_RL(y1)/π_RL(y2) − π0(y1)/π0(y2)", _zero(rl[0] / rl[1] - p[0] / p[1])),
             ("π_RL sums to 1", _zero(sum(rl) - 1))]
    return SymbolicProof(f"P1 (n={n})", "RL keeps ratios between correct rollouts for every β > 0",
                         all(ok for _, ok in steps), steps)


def prove_p2(n: int) -> SymbolicProof:
    """argmin_π Σ_y π_y(log π_y − e_y) on the simplex, e_y = E_D log T(y|y'), is exp(e)/Σexp(e)
    = π0·exp(s)/Z: the Lagrangian is stationary there and the Hessian diag(1/π) is positive."""
    e = sp.symbols(f"e1:{n + 1}", real=True)
    q = sp.symbols(f"pi1:{n + 1}", positive=True)
    p0 = sp.symbols(f"b1:{n + 1}", positive=True)
    lam = sp.Symbol("lam", real=True)
    F = sum(qi * (sp.log(qi) - ei) for qi, ei in zip(q, e))
    L = F + lam * (sum(q) - 1)
    Zs = sum(sp.exp(ei) for ei in e)
    sol = {qi: sp.exp(ei) / Zs for qi, ei in zip(q, e)}
    lam_star = sp.log(Zs) - 1
    grads = [sp.diff(L, qi).subs(sol).subs(lam, lam_star) for qi in q]
    steps = [(f"∂L/∂π_{i + 1} = 0 at the closed form", _zero(g)) for i, g in enumerate(grads)]
    steps.append(("closed form normalized", _zero(sum(sol.values()) - 1)))
    hess = sp.hessian(F, q)
    steps.append(("Hessian = diag(1/π) (strictly convex)", all(
        _zero(hess[i, j] - (1 / q[i] if i == j else 0)) for i in range(n) for j in range(n))))
    s = [ei - sp.log(bi) for ei, bi in zip(e, p0)]  # s(y) = E_D log T − log π0
    steps.append(("π0·exp(s) = exp(E_D log T)", all(_zero(bi * sp.exp(si) - sp.exp(ei)) for bi, si, ei in zip(p0, s, e))))
    return SymbolicProof(f"P2 (n={n})", "the reverse-KL SDSD optimum is the PCMI tilt π0·exp(s)/Z",
                         all(ok for _, ok in steps), steps)


def prove_p4(n: int) -> SymbolicProof:
    """Route-copying, all correct, D = π0: strategies a (rollouts 1..n−1, law q) and b (rollout n).
    log(m_a/m_b) − log(w_a/w_b) = φ(w_a) − φ(w_b), φ(w) = w·log(1 + c/w), c = (1−eps)/eps, and
    φ' = h(c/w) with h(x) = log(1+x) − x/(1+x), h(0) = 0, h'(x) = x/(1+x)² > 0: so w_a > w_b
    ⇒ amplification. Inside strategy a the odds q1/q2 are kept (n = 3)."""
    wa, wb, eps = sp.symbols("w_a w_b eps", positive=True)
    qs = [sp.Integer(1)] if n == 2 else list(sp.symbols("q1 q2", positive=True))
    norm = {wb: 1 - wa} if n == 2 else {wb: 1 - wa, qs[1]: 1 - qs[0]}
    base = [wa * qi for qi in qs] + [wb]
    # T_z(y) = (1−eps)·P_z(y) + eps·π0(y); E[y] = Σ_z D_z log T_z(y) with D = (w_a, w_b)
    T_a = [(1 - eps) * qi + eps * bi for qi, bi in zip(qs, base)] + [eps * wb]
    T_b = [eps * bi for bi in base[:-1]] + [(1 - eps) + eps * wb]
    # inside strategy a the teacher factorizes as q_y·(...): write it so, and check it
    Ta_f = [qi * ((1 - eps) + eps * wa) for qi in qs] + [eps * wb]
    Tb_f = [eps * wa * qi for qi in qs] + [(1 - eps) + eps * wb]
    factor_ok = all(sp.simplify(a - b) == 0 for a, b in zip(T_a + T_b, Ta_f + Tb_f))
    E = [wa * sp.log(ta) + wb * sp.log(tb) for ta, tb in zip(Ta_f, Tb_f)]

    def zero(expr):
        """Sufficient: after expanding logs, the coefficient of every log atom (and the rest)
        vanishes once the normalizations w_a + w_b = 1, q1 + q2 = 1 are used."""
        e = sp.expand(sp.expand_log(sp.expand(expr), force=True))
        parts = sp.collect(e, list(e.atoms(sp.log)), evaluate=False)
        return all(sp.simplify(coef.subs(norm)) == 0 for coef in parts.values())

    c = (1 - eps) / eps
    phi = lambda w: w * (sp.log((1 - eps) + eps * w) - sp.log(eps) - sp.log(w))  # noqa: E731
    steps = [("T_z(y) factorizes as q_y·(...) inside strategy a", factor_ok),
             ("1 + c/w = ((1−eps) + eps·w)/(eps·w)", _zero(1 + c / wa - ((1 - eps) + eps * wa) / (eps * wa)))]
    if n == 3:
        steps.append(("inside strategy a: log π_SD(y1) − log π_SD(y2) = log q1 − log q2",
                      zero(E[0] - E[1] - (sp.log(qs[0]) - sp.log(qs[1])))))
        # m_a = Σ_{y∈a} exp E[y] = exp(E[y1] − log q1) since the q-dependence is the factor q_y
        lm_a = E[0] - sp.log(qs[0])
        steps.append(("log m_a = E[y1] − log q1 = E[y2] − log q2", zero(E[1] - sp.log(qs[1]) - lm_a)))
    else:
        lm_a = E[0]
    gap = lm_a - E[n - 1] - (sp.log(wa) - sp.log(wb))
    steps.append(("gap = φ(w_a) − φ(w_b)", zero(gap - (phi(wa) - phi(wb)))))
    x, w = sp.symbols("x w", positive=True)
    h = sp.log(1 + x) - x / (1 + x)
    steps.append(("φ'(w) = h(c/w)", _zero(sp.diff(w * sp.log(1 + c / w), w) - h.subs(x, c / w))))
    steps.append(("h(0) = 0", sp.simplify(h.subs(x, 0)) == 0))
    dh = sp.simplify(sp.diff(h, x))
    steps.append(("h'(x) = x/(1+x)² > 0 for x > 0", _zero(dh - x / (1 + x) ** 2) and bool(dh.is_positive)))
    return SymbolicProof(f"P4 (n={n})", "route-copying SDSD amplifies the weight ratio and keeps odds inside a strategy",
                         all(ok for _, ok in steps), steps)


def all_proofs() -> list[SymbolicProof]:
    return [f(n) for f in (prove_p1, prove_p2, prove_p4) for n in (2, 3)]
