"""The `pcmi` command: verify | solve | figures | train.

Bad input ends with one line on stderr naming the problem and exit status 2; no traceback.
Only input errors map to status 2 (PcmiInputError, GraphworldError, file errors); any other
exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from graphworld.errors import GraphworldError

from .errors import PcmiInputError

INPUT_ERRORS = (PcmiInputError, GraphworldError, OSError, json.JSONDecodeError)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (no multi-line usage dump)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def _int_at_least(lo: int, what: str):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return v
    parse.__name__ = what  # argparse names the type in some messages
    return parse


non_negative_int = _int_at_least(0, "a non-negative integer")
positive_int = _int_at_least(1, "a positive integer")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pcmi", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    v = sub.add_parser("verify", help="check propositions P1–P8 on generated instances")
    v.add_argument("--examples", type=positive_int, default=200, help="instances per proposition")
    v.add_argument("--seed", type=non_negative_int, default=0)
    v.add_argument("--json", action="store_true", help="print the table as JSON")
    v.add_argument("--counterexamples", metavar="DIR", default=None,
                   help="write each counterexample found as an instance JSON that `pcmi solve` loads")
    v.add_argument("--instance", metavar="FILE", default=None,
                   help="run one check (--check NAME) on an instance file instead of generated ones")
    v.add_argument("--check", metavar="NAME", default=None, help="the check to run on --instance")

    s = sub.add_parser("solve", help="closed-form optima of an instance file (JSON)")
    s.add_argument("file")
    s.add_argument("--beta", type=float, default=None, help="RL leash β (default: the file's, else 1)")
    s.add_argument("--max-rollouts", type=positive_int, default=None, metavar="N",
                   help="refuse a graph instance with more than N rollouts (default: graph_instance's cap)")

    f = sub.add_parser("figures", help="regenerate the theory figures (PNG + PDF + data)")
    f.add_argument("--out", default="figures")
    f.add_argument("--only", default=None, help="one figure name")
    f.add_argument("--overwrite", action="store_true", help="replace figures already in --out")

    from .training.cli import add_train_arguments  # torch-free: torch loads only when train runs
    add_train_arguments(sub.add_parser("train", help="train toy transformers by RL and SDSD, compare with theory"))
    return p


def _verify(args) -> int:
    from .verify import run_verify, verify_instance
    if args.instance is not None:
        return verify_instance(args.instance, args.check, as_json=args.json)
    if args.check is not None:
        raise PcmiInputError("--check NAME needs --instance FILE (the instance to check)")
    return run_verify(args.examples, args.seed, as_json=args.json, counterexample_dir=args.counterexamples)


def _run(args) -> int:
    if args.cmd == "verify":
        return _verify(args)
    if args.cmd == "solve":
        from .solve import solve_file
        result = solve_file(args.file, beta=args.beta, max_rollouts=args.max_rollouts)
        print(json.dumps(result, indent=1, allow_nan=False))  # a NaN here is a bug, never output
        return 0
    if args.cmd == "figures":
        from .figures import run_figures
        run_figures(out=args.out, only=args.only, overwrite=args.overwrite)
        return 0
    if args.cmd == "train":
        from .training.cli import train_command
        return train_command(args)
    return 0


def main(argv=None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # usage errors (status 2) and --help (status 0)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return _run(args)
    except BrokenPipeError:  # the reader went away (`pcmi solve F | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except INPUT_ERRORS as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"pcmi {args.cmd}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pcmi {args.cmd}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
