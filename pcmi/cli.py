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


def positive_float(text: str) -> float:
    """A finite number > 0 (e.g. a tolerance)."""
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not (v > 0 and v < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return v


positive_float.__name__ = "a finite number > 0"

#: `pcmi solve` options that only mean something with --mode (dest: flag)
MODE_OPTIONS = {"alpha": "--alpha", "teacher": "--teacher", "tau": "--tau", "topk": "--topk",
                "topk_of": "--topk-of", "tail": "--tail", "tol": "--tol", "max_rounds": "--max-rounds"}
TOPK_OPTIONS = ("topk", "topk_of", "tail")


def _modes_epilog() -> str:
    """The definition of every loss mode, read from pcmi.objectives.MODES (so help never drifts)."""
    from .objectives import MODES
    width = max(map(len, MODES))
    lines = [f"  {name:<{width}}  {text}" for name, text in MODES.items()]
    return ("loss modes (--mode MODE); T(·|h,y') is the teacher with demonstration y' in context and D_α\n"
            "(--alpha) is KL(π‖T) at 1, KL(T‖π) at 0, generalized Jensen–Shannon in between (theory.md §3):\n"
            + "\n".join(lines)
            + "\n\nWith --mode the output gains \"fixed_point\" (the on-policy fixed point: D = π*(·|r=1), "
              "with its certificate and metrics)\nand \"gradient_at_base\" (the exact expected gradient at π0: "
              "norm, variance, loss, bias against the sequence-level gradient).")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pcmi", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    v = sub.add_parser("verify", help="check propositions P1–P10 on generated instances")
    v.add_argument("--examples", type=positive_int, default=200, help="instances per proposition")
    v.add_argument("--seed", type=non_negative_int, default=0)
    v.add_argument("--json", action="store_true", help="print the table as JSON")
    v.add_argument("--counterexamples", metavar="DIR", default=None,
                   help="write each counterexample found as an instance JSON that `pcmi solve` loads")
    v.add_argument("--instance", metavar="FILE", default=None,
                   help="run one check (--check NAME) on an instance file instead of generated ones")
    v.add_argument("--check", metavar="NAME", default=None, help="the check to run on --instance")

    s = sub.add_parser("solve", help="closed-form optima of an instance file (JSON)",
                       epilog=_modes_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("file")
    s.add_argument("--beta", type=float, default=None, help="RL leash β (default: the file's, else 1)")
    s.add_argument("--max-rollouts", type=positive_int, default=None, metavar="N",
                   help="refuse a graph instance with more than N rollouts (default: graph_instance's cap)")
    from .flows import on_policy_fixed_point
    from .objectives import MODES, TOPK_OF
    from .schedules import SCHEDULES
    fp_defaults = on_policy_fixed_point.__kwdefaults__
    m = s.add_argument_group("loss mode (theory.md §9): its on-policy fixed point and its gradient at π0")
    m.add_argument("--mode", choices=list(MODES), default=None, help="the per-step loss mode (definitions below)")
    m.add_argument("--alpha", type=float, default=None, metavar="A",
                   help="D_α weight in [0, 1] for full and topk (default 1: reverse KL; other modes need 1)")
    m.add_argument("--teacher", choices=list(SCHEDULES), default=None,
                   help="teacher schedule: frozen (π0's teacher, default), live (rebuilt from the current "
                        "policy), ema (rebuilt from a moving average, rate --tau)")
    m.add_argument("--tau", type=float, default=None, metavar="T",
                   help="EMA rate in (0, 1], the weight of the student (required with --teacher ema)")
    m.add_argument("--topk", type=positive_int, default=None, metavar="K", help="k of --mode topk (required there)")
    m.add_argument("--topk-of", choices=list(TOPK_OF), default=None,
                   help="whose k most likely tokens (default student)")
    m.add_argument("--tail", action="store_true", default=None,
                   help="topk with one tail bucket 1 − Σ_topk p instead of renormalizing")
    m.add_argument("--tol", type=positive_float, default=None, metavar="TOL",
                   help=f"certificate tolerance on ‖G‖ (and the teacher gap) (default {fp_defaults['tol']:g})")
    m.add_argument("--max-rounds", type=positive_int, default=None, metavar="N",
                   help=f"rounds before giving up (default {fp_defaults['max_rounds']})")

    w = sub.add_parser("sweep", help="holds-rate atlas of the propositions over an instance space (spec file)")
    w.add_argument("spec", metavar="SPEC", help="JSON or YAML: graphs × policies × teachers × beta × extra_len × "
                                               "seeds and the checks to run (docs/usage.md)")
    w.add_argument("--out", default="runs/sweep", help="folder of table.csv, atlas.json, counterexamples/ "
                                                       "(a rerun resumes)")
    w.add_argument("--backend", choices=["process", "serial", "ray"], default="process",
                   help="a local process pool (default), in this process, or a Ray cluster")
    w.add_argument("--workers", type=positive_int, default=None, help="processes (default: the CPU count)")
    w.add_argument("--address", default=None, help="Ray cluster address (e.g. auto); default: start a local one")

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


def _mode_options(args) -> dict:
    """solve_file's mode options from the flags; PcmiInputError for a combination that means nothing."""
    given = [flag for dest, flag in MODE_OPTIONS.items() if getattr(args, dest) is not None]
    if args.mode is None:
        if given:
            raise PcmiInputError(f"{', '.join(given)} appl{'y' if len(given) > 1 else 'ies'} only with --mode MODE")
        return {}
    if args.mode != "topk":
        topk = [MODE_OPTIONS[d] for d in TOPK_OPTIONS if getattr(args, d) is not None]
        if topk:
            raise PcmiInputError(f"{', '.join(topk)} appl{'y' if len(topk) > 1 else 'ies'} to --mode topk only, "
                                 f"not {args.mode}")
    elif args.topk is None:
        raise PcmiInputError("--mode topk needs --topk K (how many tokens)")
    teacher = args.teacher or "frozen"
    if teacher == "ema" and args.tau is None:
        raise PcmiInputError("--teacher ema needs --tau T (the EMA rate: the weight of the student, in (0, 1])")
    if teacher != "ema" and args.tau is not None:
        raise PcmiInputError(f"--tau applies to --teacher ema only, not {teacher}")
    from .objectives import LossMode
    mode = LossMode(args.mode, 1.0 if args.alpha is None else args.alpha, args.topk,
                    args.topk_of or "student", bool(args.tail))
    out = {"mode": mode, "teacher": teacher, "tau": args.tau}
    out.update({k: getattr(args, k) for k in ("tol", "max_rounds") if getattr(args, k) is not None})
    return out


def _run(args) -> int:
    if args.cmd == "verify":
        return _verify(args)
    if args.cmd == "solve":
        from .solve import solve_file
        result = solve_file(args.file, beta=args.beta, max_rollouts=args.max_rollouts, **_mode_options(args))
        print(json.dumps(result, indent=1, allow_nan=False))  # a NaN here is a bug, never output
        return 0
    if args.cmd == "sweep":
        from .sweep import atlas_table, read_spec, run_sweep
        atlas = run_sweep(read_spec(args.spec), args.out, backend=args.backend, workers=args.workers,
                          address=args.address)
        print(atlas_table(atlas))
        print(f"\ntable: {args.out}/table.csv  atlas: {args.out}/atlas.json"
              + (f"  counterexamples: {args.out}/counterexamples/" if os.path.isdir(os.path.join(args.out, "counterexamples"))
                 else ""))
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
