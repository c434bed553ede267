"""Markdown tables of results from several run summaries (mean ± std over seeds)."""
from __future__ import annotations

import json

import numpy as np

POLICY_COLUMNS = (("success", "success"), ("pass@1", "pass@1"), ("pass@64", "pass@64"),
                  ("distinct_correct@64", "distinct-correct@64"), ("strategy_mass_entropy", "strategy-mass H"),
                  ("ood_success", "OOD success"))
DISTANCES = ("sdsd_sequence", "sdsd_token", "sdsd_onpolicy", "rl", "base")


def load_summaries(paths) -> list[dict]:
    out = []
    for p in paths:
        with open(p) as f:
            out.append(json.load(f))
    return out


def _pm(v) -> str:
    v = np.asarray(v, float)
    return f"{v.mean():.3f} ± {v.std():.3f}" if len(v) > 1 else f"{v.mean():.3f}"


def policy_table(summaries: list[dict], policies=("base", "rl", "sdsd", "pred_sdsd_token", "pred_sdsd_onpolicy", "pred_rl")) -> str:
    """One row per policy: mean over prompts, then mean ± std over the runs."""
    head = "| policy | " + " | ".join(c for _, c in POLICY_COLUMNS) + " |"
    rows = [head, "|" + "---|" * (len(POLICY_COLUMNS) + 1)]
    for p in policies:
        if all(p in s["mean"] for s in summaries):
            rows.append(f"| {p} | " + " | ".join(_pm([s["mean"][p][k] for s in summaries]) for k, _ in POLICY_COLUMNS) + " |")
    return "\n".join(rows)


def distance_table(summaries: list[dict], metric: str = "tv") -> str:
    """Distance of each trained policy to each prediction (mean over prompts, ± over runs)."""
    rows = ["| trained | " + " | ".join(f"{metric.upper()} to {d}" for d in DISTANCES) + " |",
            "|" + "---|" * (len(DISTANCES) + 1)]
    for m in ("rl", "sdsd"):
        if all(m in s["mean"] for s in summaries):
            rows.append(f"| {m} | " + " | ".join(_pm([s["mean"][m]["distances"][f"{metric}_{d}"] for s in summaries])
                                                 for d in DISTANCES) + " |")
    return "\n".join(rows)


def timing_table(summaries: list[dict]) -> str:
    rows = ["| seed | device | threads | stage | steps | wall s | tokens/s |", "|---|---|---|---|---|---|---|"]
    for s in summaries:
        for k, v in s["stages"].items():
            rows.append(f"| {s['seed']} | {s['device']} | {s['cpu_threads']} | {k} | {v['steps']} | "
                        f"{v['wall_s']:.1f} | {v['tokens_per_s']:.0f} |")
    return "\n".join(rows)


def theory_check_table(summaries: list[dict]) -> str:
    rows = ["| seed | check | prompts closer to own prediction | not closer (prompt: TV own / other / base) |",
            "|---|---|---|---|"]
    for s in summaries:
        for k, v in s["theory_check"].items():
            miss = "; ".join(f"{f['prompt']}: {f['tv_own']:.3f} / {f['tv_other']:.3f} / {f['tv_base']:.3f}"
                             for f in v["not_closer"]) or "—"
            rows.append(f"| {s['seed']} | {k} | {v['n_closer_to_own']}/{v['n_prompts']} | {miss} |")
    return "\n".join(rows)


def report(paths) -> str:
    """All tables for the summaries at `paths`."""
    ss = load_summaries(paths)
    parts = [f(ss) for f in (policy_table, distance_table, timing_table, theory_check_table)]
    parts.append(distance_table(ss, "kl"))
    fit = {k: _pm([s["mean"]["teacher_fit"][k] for s in ss]) for k in ss[0]["mean"]["teacher_fit"]}
    return "\n\n".join(parts) + f"\n\nteacher fit: {fit}"


USAGE = "usage: python -m pcmi.training.report DIR/summary.json [DIR2/summary.json ...]"


def main(argv=None) -> int:
    """Print the tables; no argument or an unreadable summary: one line on stderr, exit status 2."""
    import sys
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE + ("" if argv else " (no summary given)"), file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    try:
        print(report(argv))
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"pcmi.training.report: error: {type(exc).__name__}: {msg} (expected summary.json files of pcmi train)",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
