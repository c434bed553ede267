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


USAGE = ("usage: python -m pcmi.training.report DIR/summary.json [DIR2/summary.json ...] | "
         "python -m pcmi.training.report --grid GRID_DIR/grid.json")


def main(argv=None) -> int:
    """Print the tables; no argument or an unreadable summary: one line on stderr, exit status 2."""
    import sys
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE + ("" if argv else " (no summary given)"), file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    try:
        if argv[0] == "--grid":
            if len(argv) != 2:
                raise ValueError("--grid takes one grid.json")
            with open(argv[1]) as f:
                print(grid_report(json.load(f)))
            return 0
        print(report(argv))
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"pcmi.training.report: error: {type(exc).__name__}: {msg} (expected summary.json files of pcmi train)",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


# ----------------------------------------------------------------------------- grids (pcmi train --grid)
def _iv(v, digits: int = 3) -> str:
    from .intervals import fmt
    return fmt(tuple(v), digits)


def grid_outcome_table(summary: dict, stat: str = "median") -> str:
    """Per setting: the trained outcomes and distances, `stat` over (seed, prompt) units, "value [95 % CI]"."""
    cols = (("tv_own", "TV to own prediction"), ("tv_one_round", "TV to one-round optimum"),
            ("tv_rl", "TV to RL optimum (β = 0.1)"), ("success", "success"),
            ("strategy_entropy", "strategy-mass H"), ("ood_success", "OOD success"), ("kl_to_base", "KL(π‖π0)"))
    rows = ["| setting | units | " + " | ".join(c for _, c in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for name, s in summary["settings"].items():
        n = f"{s['n_units']}" + (f" ({s['n_uncertified_prediction']} without a certified prediction)"
                                 if s.get("n_uncertified_prediction") else "")
        rows.append(f"| {name} | {n} | " + " | ".join(_iv(s[k][stat]) if k in s else "—" for k, _ in cols) + " |")
    return "\n".join(rows)


def grid_prediction_table(summary: dict) -> str:
    """Per setting with a prediction: predicted vs trained outcome (median [CI]) and Spearman ρ [CI] over units."""
    rows = ["| setting | outcome | predicted (median) | trained (median) | Spearman ρ (predicted, trained) |",
            "|---|---|---|---|---|"]
    for name, s in summary["settings"].items():
        if "predicted" not in s:
            continue
        for k in ("success", "strategy_entropy", "ood_success"):
            rows.append(f"| {name} | {k} | {_iv(s['predicted'][k]['median'])} | {_iv(s[k]['median'])} | "
                        f"{_iv(s['spearman'][k], 2)} |")
    return "\n".join(rows)


def grid_acceptance_table(summary: dict) -> str:
    """Frozen-teacher SDSD settings: median TV(trained, own fixed point) [CI] ≤ accept_tv?"""
    rows = [f"| setting | median TV to own fixed point | ≤ {summary['accept_tv']}? | units above | of those: other fixed "
            "point / off a fixed point / moving elsewhere / uncertified | median TV(trained, fixed point of the rounds "
            "started at it) | median rounds to it |", "|---|---|---|---|---|---|---|"]
    for name, s in summary["settings"].items():
        if "accept" in s:
            a = s["accept"]
            d = a.get("diagnosis", {})
            why = " / ".join(str(d.get(k, "—")) for k in ("other fixed point", "off a fixed point", "moving elsewhere",
                                                          "uncertified"))
            fp = _iv(d["median_tv_trained_to_its_fixed_point"]) if "median_tv_trained_to_its_fixed_point" in d else "—"
            rows.append(f"| {name} | {_iv(a['median_tv_own'])} | {'yes' if a['holds'] else '**no**'} | "
                        f"{a['n_units_above']}/{a.get('n_units', s['n_units'])} | {why} | {fp} | "
                        f"{d.get('median_rounds', float('nan')):.0f} |")
    return "\n".join(rows)


def grid_timing_table(summary: dict) -> str:
    rows = ["| setting | steps/s | tokens/s | training wall s (all seeds, probes incl.) | exact enumeration of one prompt (s) |",
            "|---|---|---|---|---|"]
    for name, s in summary["settings"].items():
        rows.append(f"| {name} | {s['steps_per_s']:.1f} | {s['tokens_per_s']:.0f} | {s['train_wall_s']:.0f} | "
                    f"{s['enumerate_one_prompt_s']:.4f} |")
    return "\n".join(rows)


def grid_dynamics_table(summary: dict) -> str:
    """Live / EMA: the trained trajectory vs the measured-teacher dynamics, per variant."""
    rows = ["| setting | dynamics | units collapsed (trained / dynamics) | collapse lag, dynamics − trained (steps, median) "
            "| mean over probes of the absolute success gap (mean) |", "|---|---|---|---|---|"]
    for name, s in summary["settings"].items():
        d = s.get("measured_teacher_dynamics")
        if not d:
            continue
        for v in ("segment_fixed_point", "segment_one_round"):
            x = d[v]
            lag = _iv(x["collapse_lag_steps"], 0) if "collapse_lag_steps" in x else "—"
            rows.append(f"| {name} | {v} | {x['n_trained_collapse']} / {x['n_dynamics_collapse']} of {x['n_units']} | "
                        f"{lag} | {_iv(x['mean_abs_success_gap'])} |")
    return "\n".join(rows)


def grid_report(summary: dict) -> str:
    """Every grid table (intervals: 95 % percentile bootstrap over (seed, prompt) units)."""
    parts = [f"grid {summary['grid']} (config {summary['config']}, seeds {summary['seeds']}); {summary['interval']}",
             "median over units:\n" + grid_outcome_table(summary, "median"),
             "mean over units:\n" + grid_outcome_table(summary, "mean"),
             grid_acceptance_table(summary), grid_prediction_table(summary), grid_dynamics_table(summary),
             grid_timing_table(summary)]
    for name, s in summary["settings"].items():
        if "beta_match" in s:
            parts.append(f"{name}: β per seed " + ", ".join(
                f"{b['beta']:.4g} ({'matched' if b['feasible'] else 'infeasible'}: target KL {b['target_kl']:.3f}, "
                f"RL optimum's KL at β {b['kl_at_beta']:.3f}, sup {b['kl_sup']:.3f})" for b in s["beta_match"]))
    parts.append("groups with ≥ 2 successes (mean over steps, mean over seeds [CI]): " + "; ".join(
        f"{n} {_iv(s['groups_two_successes'])}" for n, s in summary["settings"].items()))
    return "\n\n".join(parts)
