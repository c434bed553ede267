"""The theory figures: one small module per figure, each with

    compute(**size) -> dict    the data behind the figure (plain JSON-able numbers)
    draw(data) -> Figure       the picture, drawn only from that data

`run_figures(out, only, overwrite)` writes NAME.png, NAME.pdf and NAME.json for every registered
figure, byte-for-byte reproducible, and records what it wrote in OUT/MANIFEST.json (file → sha256).
A file is replaced only if that manifest lists it unchanged, or with overwrite=True: a file the
user made or edited is never silently overwritten. Nothing is ever deleted.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import tempfile

from graphworld.graphs import parse_json, read_text_file
from pcmi.errors import PcmiInputError

#: the registered figures, in the order they are drawn (module pcmi.figures.<name>)
FIGURES = ("tilt", "passk", "rounds", "ood", "phase", "token_vs_seq", "divergence", "collapse", "frontier", "discovery", "atlas")
EXTENSIONS = ("json", "png", "pdf")
MANIFEST = "MANIFEST.json"
MANIFEST_KIND = "pcmi figures manifest"


def figure_module(name: str):
    """The module of one registered figure (imported on demand)."""
    return importlib.import_module(f"{__name__}.{figure_names(name)[0]}")


def check_out_dir(out) -> str:
    """Create `out` if needed and prove it writable; a one-line PcmiInputError otherwise."""
    out = os.fspath(out)
    try:
        os.makedirs(out, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PcmiInputError(f"output folder {out!r} is not writable ({exc.strerror or exc})") from None
    return out


def figure_names(only=None) -> list[str]:
    if only is None:
        return list(FIGURES)
    if only not in FIGURES:
        raise PcmiInputError(f"unknown figure {only!r}; choose one of: {', '.join(FIGURES)}")
    return [only]


def sha256_of(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(out, overwrite: bool = False) -> dict:
    """{file name: sha256} of the files `pcmi figures` wrote into `out` ({} if none yet)."""
    path = os.path.join(out, MANIFEST)
    if not os.path.lexists(path):
        return {}
    try:
        data = parse_json(read_text_file(path, "manifest"), path, "a manifest")
        files = data["files"] if data.get("kind") == MANIFEST_KIND else None
        if isinstance(files, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            return dict(files)
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        pass
    if overwrite:
        return {}
    raise PcmiInputError(f"{path} exists but is not a pcmi figures manifest; "
                         "pass --overwrite to replace it (and the figure files)")


def _write_manifest(out, files: dict) -> None:
    from pcmi.atomic import atomic_write_text
    text = json.dumps({"kind": MANIFEST_KIND, "files": dict(sorted(files.items()))}, indent=1, sort_keys=True)
    atomic_write_text(os.path.join(out, MANIFEST), text + "\n")


def check_replaceable(out, names, manifest: dict, overwrite: bool) -> None:
    """Refuse (one line, before any work) to replace a file that pcmi figures did not write or
    that was changed since; a directory in a file's place is refused even with overwrite."""
    for name in names:
        for ext in EXTENSIONS:
            fname = f"{name}.{ext}"
            path = os.path.join(out, fname)
            if os.path.isdir(path):
                raise PcmiInputError(f"cannot write {path}: it is a directory")
            if overwrite or not os.path.lexists(path):
                continue
            if os.path.islink(path) or manifest.get(fname) != sha256_of(path):
                raise PcmiInputError(f"{path} exists and was not written by pcmi figures (or was changed "
                                     "since); pass --overwrite to replace it")


def run_figures(out="figures", only=None, *, overwrite: bool = False, progress: bool = True) -> dict:
    """Write PNG + PDF + JSON data for every figure (or just `only`) into `out`, then print one
    summary line (when progress is on). Returns {name: [written paths]}."""
    from tqdm import tqdm

    from ._common import write_figure, write_json

    names = figure_names(only)
    out = check_out_dir(out)
    manifest = read_manifest(out, overwrite)
    check_replaceable(out, names, manifest, overwrite)
    written, new, replaced, same = {}, 0, 0, 0
    for name in tqdm(names, desc="pcmi figures", unit="fig", disable=not progress):
        module = figure_module(name)
        data = module.compute()
        stem = os.path.join(out, name)
        before = {ext: sha256_of(f"{stem}.{ext}") if os.path.isfile(f"{stem}.{ext}") else None for ext in EXTENSIONS}
        write_json(stem + ".json", data)
        written[name] = [stem + ".json"] + write_figure(module.draw(data), stem)
        for ext in EXTENSIONS:
            digest = sha256_of(f"{stem}.{ext}")
            manifest[f"{name}.{ext}"] = digest
            new += before[ext] is None
            replaced += before[ext] is not None
            same += before[ext] == digest
        _write_manifest(out, manifest)
    if progress:
        n = new + replaced
        print(f"pcmi figures: wrote {n} files to {out} ({new} new, {replaced} replaced, "
              f"{same} of them byte-identical to before) and {MANIFEST}")
    return written
