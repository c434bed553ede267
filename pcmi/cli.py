"""The `pcmi` command: verify | solve | figures | train.

Bad input ends with one line on stderr naming the problem and exit status 2; no traceback.
"""
from __future__ import annotations

import argparse
import json
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pcmi", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    v = sub.add_parser("verify", help="check propositions P1–P8 on generated instances")
    v.add_argument("--examples", type=int, default=200, help="instances per proposition")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--json", action="store_true", help="print the table as JSON")

    s = sub.add_parser("solve", help="closed-form optima of an instance file (JSON)")
    s.add_argument("file")
    s.add_argument("--beta", type=float, default=None, help="RL leash β (default: the file's, else 1)")

    f = sub.add_parser("figures", help="regenerate the theory figures (PNG + PDF + data)")
    f.add_argument("--out", default="figures")
    f.add_argument("--only", default=None, help="one figure name")

    from .training.cli import add_train_arguments  # torch-free: torch loads only when train runs
    add_train_arguments(sub.add_parser("train", help="train toy transformers by RL and SDSD, compare with theory"))
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "verify":
            from .verify import run_verify
            return run_verify(args.examples, args.seed, as_json=args.json)
        if args.cmd == "solve":
            from .solve import solve_file
            print(json.dumps(solve_file(args.file, beta=args.beta), indent=1))
            return 0
        if args.cmd == "figures":
            from .figures import run_figures
            run_figures(out=args.out, only=args.only)
            return 0
        if args.cmd == "train":
            from .training.cli import train_command
            return train_command(args)
    except (ValueError, OSError) as exc:  # PcmiInputError and GraphworldError are ValueErrors
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"pcmi {args.cmd}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pcmi {args.cmd}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
