"""Atomic file writes: a reader sees the old file or the new one, never half of either.

`atomic_write(path, write)` calls write(tmp) on a temporary file in the target folder and moves
it into place with os.replace. The new file gets the permissions a plain open() would give it
(0666 minus the umask), not mkstemp's 0600; on any failure the temporary file is removed, and a
target that is a directory is refused with a one-line error before anything is written.
"""
from __future__ import annotations

import json
import os
import tempfile

from .errors import PcmiInputError


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path, write) -> None:
    """Call write(tmp) on a temporary file next to `path`, then os.replace(tmp, path)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise PcmiInputError(f"cannot write {path}: it is a directory")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise PcmiInputError(f"cannot write {path}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    atomic_write(path, write)


def atomic_write_json(path, obj, **dump_kw) -> None:
    """json.dumps(obj, **dump_kw) written atomically (serialization errors leave nothing behind)."""
    atomic_write_text(path, json.dumps(obj, **dump_kw))
