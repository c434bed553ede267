"""The `pcmi train` subcommand: its arguments (no torch import) and its entry point."""
from __future__ import annotations

import os
import sys


def add_train_arguments(t) -> None:
    """Arguments of `pcmi train` on an argparse (sub)parser."""
    t.add_argument("--config", default="tiny", help="tiny | small | gpu")
    t.add_argument("--method", default=None, choices=["rl", "sdsd", "negative", "both", "all"],
                   help="default both; negative = the null baseline (fixed negative advantage on failures); all = rl, "
                        "sdsd and negative; into a folder holding another method's finished checkpoint, its results "
                        "are kept")
    t.add_argument("--grid", default=None, metavar="NAME",
                   help="train a documented grid of switch settings (pcmi.training.grid.GRIDS: small = the default "
                        "grid, remedies = the cures of issue 11, feedback = feedback-conditioned SDSD, tiny and "
                        "feedback_tiny = seconds, for tests) into --out; resumable; excludes --method, --config, --seed")
    t.add_argument("--ckpt-dir", default=None, help="--grid only: where checkpoints go (default OUT/checkpoints)")
    t.add_argument("--out", default="runs/train")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    t.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: the config's, 1; results depend on it)")
    t.add_argument("--reduced", action="store_true",
                   help="the config's graph world at CPU size (1 layer, width 32, 30 + 4 steps): runs the gpu "
                        "config's code path on a machine without a GPU in about half a minute")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr if msg.startswith("warning") else sys.stdout, flush=True)


def train_command(args) -> int:
    """Run `pcmi train` from parsed arguments; bad input raises PcmiInputError (exit 2 in pcmi.cli).
    Ends with where the results are and a short table of them."""
    try:
        from .run import results_table, run_train
    except ImportError as exc:
        from ..errors import PcmiInputError
        raise PcmiInputError(f"pcmi train needs torch ({exc}); install it: pip install torch==2.13.0") from None
    from ..errors import PcmiInputError
    if getattr(args, "grid", None) is not None:
        return grid_command(args)
    if getattr(args, "ckpt_dir", None) is not None:
        raise PcmiInputError("--ckpt-dir applies to --grid only")
    if args.method is None:
        args.method = "both"
    from .config import get_config, reduced
    cfg = get_config(args.config)
    if args.threads is not None:
        cfg = cfg.replace(threads=args.threads)
    if args.reduced:
        cfg = reduced(cfg)
    name = f"{args.config} (reduced)" if args.reduced else args.config
    summary = run_train(config=cfg if (args.threads is not None or args.reduced) else args.config, method=args.method,
                        out=args.out, seed=args.seed, device=args.device, log=_log, config_name=name)
    figs = ["training_curves.png", "pass_at_k.png"] + (["theory_vs_training.png"] if summary["theory_check"] else [])
    print(f"results in {os.path.abspath(args.out)}: summary.json, {', '.join(figs)} (config {name}, seed {args.seed}, "
          f"{summary['device']}, {summary['threads']} thread(s))")
    print(results_table(summary))
    return 0


def grid_command(args) -> int:
    """`pcmi train --grid NAME --out DIR`: every (setting, seed) of the grid not yet finished in DIR,
    then DIR/grid.json, the figures and the tables (pcmi.training.report)."""
    from ..errors import PcmiInputError
    clash = [f"--{k}" for k, default in (("method", None), ("config", "tiny"), ("seed", 0)) if getattr(args, k) != default]
    if getattr(args, "reduced", False):
        clash.append("--reduced")
    if clash:
        raise PcmiInputError(f"--grid excludes {', '.join(clash)} (the grid names its settings, config and seeds)")
    from .grid import get_grid, load_results, run_grid
    from .figures import write_grid_figures
    from .report import grid_report
    g = get_grid(args.grid)
    t0 = __import__("time").perf_counter()
    summary = run_grid(g, out=args.out, ckpt_dir=args.ckpt_dir, device=args.device or "cpu", threads=args.threads,
                       log=_log)
    figs = write_grid_figures(summary, args.out, load_results(args.out, list(summary["settings"]), g.seeds))
    print(f"grid {g.name} in {os.path.abspath(args.out)}: grid.json, runs/, seeds/, "
          f"{', '.join(os.path.basename(f) for f in figs)} ({__import__('time').perf_counter() - t0:.0f} s this call)")
    print(grid_report(summary))
    return 0
