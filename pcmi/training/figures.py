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
