"""The `pcmi train` subcommand: its arguments (no torch import) and its entry point."""
from __future__ import annotations


def add_train_arguments(t) -> None:
    """Arguments of `pcmi train` on an argparse (sub)parser."""
    t.add_argument("--config", default="tiny", help="tiny | small | gpu")
    t.add_argument("--method", default="both", choices=["rl", "sdsd", "both"])
    t.add_argument("--out", default="runs/train")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")


def train_command(args) -> int:
    """Run `pcmi train` from parsed arguments; bad input raises ValueError (exit 2 in pcmi.cli)."""
    try:
        from .run import run_train
    except ImportError as exc:
        raise ValueError(f"pcmi train needs torch ({exc}); install it: pip install torch==2.13.0") from None
    run_train(config=args.config, method=args.method, out=args.out, seed=args.seed, device=args.device)
    return 0
