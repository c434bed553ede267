"""The theory figures: one small module per figure, each with

    compute(**size) -> dict    the data behind the figure (plain JSON-able numbers)
    draw(data) -> Figure       the picture, drawn only from that data

`run_figures(out, only)` writes NAME.png, NAME.pdf and NAME.json for every registered figure.
"""
from __future__ import annotations

import importlib
import os
import tempfile

#: the registered figures, in the order they are drawn (module pcmi.figures.<name>)
FIGURES = ("tilt", "passk", "rounds", "ood", "phase", "token_vs_seq", "divergence")


def figure_module(name: str):
    """The module of one registered figure (imported on demand)."""
    return importlib.import_module(f"{__name__}.{figure_names(name)[0]}")


def check_out_dir(out) -> str:
    """Create `out` if needed and prove it writable; a one-line ValueError otherwise."""
    out = os.fspath(out)
    try:
        os.makedirs(out, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"output folder {out!r} is not writable ({exc.strerror or exc})") from None
    return out


def figure_names(only=None) -> list[str]:
    if only is None:
        return list(FIGURES)
    if only not in FIGURES:
        raise ValueError(f"unknown figure {only!r}; choose one of: {', '.join(FIGURES)}")
    return [only]


def run_figures(out="figures", only=None, *, progress: bool = True) -> dict:
    """Write PNG + PDF + JSON data for every figure (or just `only`) into `out`.

    Returns {name: [written paths]}."""
    from tqdm import tqdm

    from ._common import write_figure, write_json

    names = figure_names(only)
    out = check_out_dir(out)
    written = {}
    for name in tqdm(names, desc="pcmi figures", unit="fig", disable=not progress):
        module = figure_module(name)
        data = module.compute()
        stem = os.path.join(out, name)
        write_json(stem + ".json", data)
        written[name] = write_figure(module.draw(data), stem) + [stem + ".json"]
    return written
