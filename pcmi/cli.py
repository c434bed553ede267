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

    t = sub.add_parser("train", help="train toy transformers by RL and SDSD, compare with theory")
    t.add_argument("--config", default="tiny", help="tiny | small | gpu")
    t.add_argument("--method", default="both", choices=["rl", "sdsd", "both"])
    t.add_argument("--out", default="runs/train")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
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
            try:
                from .training.run import run_train
            except ImportError as exc:
                raise ValueError(f"pcmi train needs torch ({exc}); install it: pip install torch==2.13.0") from None
            run_train(config=args.config, method=args.method, out=args.out, seed=args.seed, device=args.device)
            return 0
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
