"""Figures of a training run (PNG, matplotlib Agg): curves, pass@k, theory vs training."""
from __future__ import annotations

import os

import numpy as np

COLORS = {"base": "tab:gray", "rl": "tab:blue", "sdsd": "tab:red", "negative": "tab:olive"}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path):
    """PNG written through pcmi.atomic (temporary file, os.replace)."""
    from pcmi.atomic import atomic_write
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))


def write_figures(summary: dict, out: str) -> list[str]:
    plt = _plt()
    paths = []
    st = summary["stages"]
    # 1. training curves
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.4))
    h = st["pretrain"]["history"]
    ax[0].plot([r["step"] for r in h], [r["loss"] for r in h], color="k")
    ax[0].set(title="pretraining (completion NLL)", xlabel="step", yscale="log")
    for m in ("rl", "sdsd", "negative"):
        if m in st:
            h = st[m]["history"]
            x = [r["step"] for r in h]
            ax[1].plot(x, _smooth([r["success"] for r in h]), color=COLORS[m], label=m.upper())
            ax[2].plot(x, _smooth([r["loss"] for r in h]), color=COLORS[m], label=m.upper())
    ax[1].axhline(summary["mean"]["base"]["success"], color=COLORS["base"], ls="--", label="base (exact)")
    ax[1].set(title="group success (sampled, smoothed)", xlabel="step", ylim=(0, 1.02))
    ax[2].set(title="post-training loss (smoothed)", xlabel="step")
    ax[1].legend(), ax[2].legend()
    paths.append(os.path.join(out, "training_curves.png"))
    _save(fig, paths[-1])
    plt.close(fig)
    # 2. pass@k (exact, mean over prompts)
    ks = np.unique(np.round(np.logspace(0, np.log10(64), 20)).astype(int))
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for name in ("base", "rl", "sdsd", "negative"):
        if name in summary["prompts"][0]["policies"]:
            p = np.array([q["policies"][name]["success"] for q in summary["prompts"]])
            ax.plot(ks, [np.mean(1 - (1 - p) ** k) for k in ks], marker=".", color=COLORS[name], label=name)
    ax.set(xscale="log", xlabel="k", ylabel="pass@k (exact)", title="pass@k")
    ax.legend()
    paths.append(os.path.join(out, "pass_at_k.png"))
    _save(fig, paths[-1])
    plt.close(fig)
    # 3. theory vs training: predicted vs trained log-probs, every rollout of every prompt
    panels = [(m, pred) for m, pred in (("rl", "pred_rl"), ("sdsd", "pred_sdsd_token"), ("sdsd", "pred_sdsd_onpolicy"))
              if m in summary["prompts"][0]["policies"]]
    if not panels:  # only the null baseline was trained: it has no closed form to compare with
        return paths
    fig, ax = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 4), squeeze=False)
    own = dict(panels)
    for a, (m, pred) in zip(ax[0], panels):
        own = {m: pred}
        x = np.concatenate([q["log_probs"][own[m]] for q in summary["prompts"]])
        y = np.concatenate([q["log_probs"][m] for q in summary["prompts"]])
        r = np.concatenate([q["reward"] for q in summary["prompts"]])
        x, y = np.maximum(x, -25), np.maximum(y, -25)
        a.scatter(x[r == 1], y[r == 1], s=10, color=COLORS[m], label="correct")
        a.scatter(x[r == 0], y[r == 0], s=10, marker="x", color="k", alpha=0.5, label="failure (pooled)")
        lo = min(x.min(), y.min())
        a.plot([lo, 0], [lo, 0], color="gray", lw=0.8)
        a.set(xlabel=f"log π predicted ({own[m][5:]})", ylabel=f"log π trained ({m.upper()})",
              title=f"{m.upper()}: theory vs training")
        a.legend(fontsize=8)
    paths.append(os.path.join(out, "theory_vs_training.png"))
    _save(fig, paths[-1])
    plt.close(fig)
    return paths


def _smooth(v, w: int = 5):
    v = np.asarray(v, float)
    if len(v) < w:
        return v
    return np.convolve(np.r_[np.full(w - 1, v[0]), v], np.ones(w) / w, mode="valid")


# ----------------------------------------------------------------------------- grids (pcmi train --grid)
GRID_FIGURES = ("grid_distances.png", "grid_outcomes.png", "grid_trajectories.png", "grid_live_ema.png",
                "grid_predicted_vs_trained.png")


def _errbar(ax, x, ivs, **kw):
    v = np.array([i[0] for i in ivs])
    lo, hi = np.array([i[1] for i in ivs]), np.array([i[2] for i in ivs])
    ax.errorbar(x, v, yerr=[v - lo, hi - v], fmt=kw.pop("fmt", "o"), capsize=3, **kw)


def write_grid_figures(summary: dict, out: str, runs: dict | None = None) -> list[str]:
    """The grid's figures from grid.json (and, for the scatter, the unit files in out/runs/)."""
    plt = _plt()
    S = summary["settings"]
    names = list(S)
    x = np.arange(len(names))
    paths = []
    # 1. distances: median TV [CI] to own prediction, one-round optimum, RL optimum
    fig, ax = plt.subplots(figsize=(max(7, 0.75 * len(names)), 3.8))
    for off, (k, lab, c) in zip((-0.2, 0, 0.2), (("tv_own", "own prediction", "tab:red"),
                                                 ("tv_one_round", "one-round optimum", "tab:purple"),
                                                 ("tv_rl", "RL optimum (β = 0.1)", "tab:blue"))):
        have = [i for i, n in enumerate(names) if k in S[n]]
        _errbar(ax, x[have] + off, [S[names[i]][k]["median"] for i in have], color=c, label=lab)
    ax.axhline(summary["accept_tv"], color="k", ls=":", lw=0.8, label=f"acceptance {summary['accept_tv']}")
    ax.set(xticks=x, ylabel="TV(trained, ·): median over units", ylim=(-0.02, 1.02),
           title=f"grid {summary['grid']}: trained policy vs predictions (95 % bootstrap CI over seeds × prompts)")
    ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
    ax.legend(fontsize=7)
    paths.append(os.path.join(out, "grid_distances.png"))
    _save(fig, paths[-1])
    plt.close(fig)
    # 2. outcomes: trained vs predicted success, strategy entropy, OOD success (median [CI])
    fig, axs = plt.subplots(1, 3, figsize=(15, 3.8))
    for a, (k, lab) in zip(axs, (("success", "success"), ("strategy_entropy", "strategy-mass H (nats)"),
                                 ("ood_success", "OOD success"))):
        _errbar(a, x - 0.12, [S[n][k]["median"] for n in names], color="k", label="trained")
        have = [i for i, n in enumerate(names) if "predicted" in S[n]]
        _errbar(a, x[have] + 0.12, [S[names[i]]["predicted"][k]["median"] for i in have], color="tab:orange",
                fmt="s", label="predicted (from π0, T0)")
        a.set(xticks=x, title=f"{lab}: median over units")
        a.set_xticklabels(names, rotation=40, ha="right", fontsize=7)
    axs[0].legend(fontsize=7)
    paths.append(os.path.join(out, "grid_outcomes.png"))
    _save(fig, paths[-1])
    plt.close(fig)
    # 3. trajectories (exact, at the probes) beside the predicted fixed point
    cmap = plt.get_cmap("tab20")
    fig, axs = plt.subplots(1, 3, figsize=(16, 4.0))
    for j, n in enumerate(names):
        t = S[n]["trajectory"]
        if not t["step"]:
            continue
        for a, k in zip(axs, ("success", "strategy_entropy", "tv_own")):
            if k in t:
                a.plot(t["step"], t[k], color=cmap(j % 20), label=n, lw=1.2)
            if k != "tv_own" and "predicted" in S[n]:
                a.axhline(S[n]["predicted"][k]["median"][0], color=cmap(j % 20), ls="--", lw=0.7)
    for a, lab in zip(axs, ("success (exact)", "strategy-mass H (exact)", "TV to own prediction")):
        a.set(xlabel="post-training step", title=f"{lab}, median over units")
    fig.suptitle("trajectories at the probes; dashed: the prediction from π0 and T0", fontsize=10)
    axs[2].legend(fontsize=6, ncol=2)
    paths.append(os.path.join(out, "grid_trajectories.png"))
    _save(fig, paths[-1])
    plt.close(fig)
    # 4. live / EMA: trained trajectory vs the measured-teacher dynamics, and the teacher itself
    dyn = [n for n in names if "measured_teacher_dynamics" in S[n]]
    if dyn:
        fig, axs = plt.subplots(len(dyn), 3, figsize=(15, 3.6 * len(dyn)), squeeze=False)
        for row, n in zip(axs, dyn):
            t, d = S[n]["trajectory"], S[n]["measured_teacher_dynamics"]
            for a, k in zip(row[:2], ("success", "strategy_entropy")):
                a.plot(t["step"], t[k], "k-o", ms=3, label="trained (exact)")
                a.plot(t["step"], d["segment_fixed_point"][k], "r--", label="measured teacher, fixed point per segment")
                a.plot(t["step"], d["segment_one_round"][k], "b:", label="measured teacher, one round per segment")
                a.axhline(S[n]["predicted"][k]["median"][0], color="tab:orange", lw=0.8, label="frozen-teacher prediction")
                a.set(xlabel="step", title=f"{n}: {k} (median over units)")
            row[0].legend(fontsize=7)
            a = row[2]
            for k, c in (("teacher_tv", "tab:red"), ("teacher_success", "tab:green"), ("copy_strength", "tab:purple")):
                a.plot(t["step"], t[k], color=c, marker=".", label=k.replace("_", " "))
            a.set(xlabel="step", title=f"{n}: the network's in-context teacher", ylim=(-0.02, 1.02))
            a.legend(fontsize=7)
        paths.append(os.path.join(out, "grid_live_ema.png"))
        _save(fig, paths[-1])
        plt.close(fig)
    # 5. predicted vs trained outcome per unit
    if runs:
        fig, axs = plt.subplots(1, 3, figsize=(15, 4.2))
        for j, n in enumerate(names):
            units = [u for r in runs.get(n, []) for u in r["units"] if "predicted" in u]
            for a, k in zip(axs, ("success", "strategy_entropy", "ood_success")):
                if units:
                    a.scatter([u["predicted"][k] for u in units], [u[k] for u in units], s=9, color=cmap(j % 20),
                              label=f"{n} (ρ {S[n]['spearman'][k][0]:.2f})")
        for a, k in zip(axs, ("success", "strategy_entropy", "ood_success")):
            lo, hi = a.get_xlim()
            a.plot([lo, hi], [lo, hi], color="gray", lw=0.7)
            a.set(xlabel=f"predicted {k} (from π0 and T0 alone)", ylabel=f"trained {k}", title=f"{k}: one dot per (seed, prompt)")
        axs[1].legend(fontsize=6, ncol=2)
        paths.append(os.path.join(out, "grid_predicted_vs_trained.png"))
        _save(fig, paths[-1])
        plt.close(fig)
    return paths
