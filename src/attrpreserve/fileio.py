"""Durable file writes (a leaf module: checkpoints, training state, results and reports use it)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_text"]


def atomic_write(path: str | Path, write) -> None:
    """``write(tmp)`` a temporary file beside ``path``, fsync it, rename it over ``path``, fsync
    the folder: a reader (or a run killed at any instant) sees the old file or the new one.

    The temporary name is unique (``.NAME.PID.RANDOM.tmp``), so two writers never share one, and it is
    removed when ``write`` fails (disk full, Ctrl-C): nothing half-written is left behind."""
    path = Path(path)
    # a fresh name, created by ``write`` itself so the file gets the usual permissions (the
    # umask's; mkstemp's would be 0600)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write` of a UTF-8 text (results JSON, HTML reports)."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
