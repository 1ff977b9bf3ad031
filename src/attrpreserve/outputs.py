"""Where a command may write, decided before any work: outputs never destroy inputs, one writer
per output folder.

- :func:`check` -- every output of a command against its inputs and against each other: an
  output that is an input, lies inside an input (a checkpoint folder, a photo folder, a weights
  file's folder) or equals another output is refused, as are empty paths, a file where a folder
  is expected (and the reverse), names too long for the filesystem and unwritable parents;
- :func:`lock` -- a lock file held in an output folder for the run: a second run into the same
  folder is refused naming the first; a lock left by a dead process is named and taken over.

Errors are ``ValueError`` with one line naming the flag and the path (the CLI prints it, exit 2).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import NamedTuple

__all__ = ["LOCK_FILE", "Output", "check", "lock"]

LOCK_FILE = ".attrpreserve.lock"


class Output(NamedTuple):
    """An output of a command: the ``flag`` naming it, its ``path``, and whether it is a
    ``folder`` (else a file)."""

    flag: str
    path: str | Path | None
    folder: bool = True


def check(outputs: list[Output], inputs: list[tuple[str, str | Path | None]]) -> None:
    """Refuse (``ValueError``) outputs that would overwrite an input or each other, or that
    cannot be written; ``inputs``: ``(flag, path)`` pairs (unset paths are skipped)."""
    given = [o for o in outputs if o.path is not None]
    for o in given:
        if not str(o.path).strip():
            raise ValueError(f"{o.flag} is empty: give a {'folder' if o.folder else 'file'} path")
    seen: dict[Path, str] = {}
    for o in given:
        path = _resolved(o.path)
        if path in seen:
            raise ValueError(f"{o.flag} {o.path} is also {seen[path]}: each output needs its own "
                             "path")
        seen[path] = o.flag
        for flag, source in inputs:
            if source is not None and str(source).strip():
                _not_inside(o, path, flag, source)
        _writable(o, path)


def _resolved(path: str | Path) -> Path:
    """The absolute path, symlinks resolved (``strict=False``: it need not exist)."""
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def _not_inside(o: Output, path: Path, flag: str, source: str | Path) -> None:
    """``o`` must not be ``source``, lie inside it, or (for a file input) inside its folder when
    that folder is a checkpoint (its weights and sidecar travel together)."""
    src = _resolved(source)
    if src.is_file():
        if path == src:
            raise ValueError(f"{o.flag} {o.path} is {flag} {source}: it would overwrite it")
        src = src.parent if (src.parent / "model.json").is_file() else None
    if src is not None and (path == src or src in path.parents):
        raise ValueError(f"{o.flag} {o.path} lies inside {flag} {source}: writing there would "
                         "change an input; choose another path")


def _writable(o: Output, path: Path) -> None:
    """The path's names fit the filesystem, its kind (folder / file) matches, and its nearest
    existing folder accepts new files."""
    existing = next(p for p in path.parents if _exists(p))
    limit = _name_max(existing)
    long = next((part for part in path.parts if len(os.fsencode(part)) > limit), None)
    if long is not None:
        raise ValueError(f"{o.flag} {str(o.path)[:60]}...: a name is longer than this "
                         f"filesystem allows ({limit} bytes)")
    if o.folder and path.exists() and not path.is_dir():
        raise ValueError(f"{o.flag} {o.path} is a file; it must be a folder")
    if not o.folder and path.is_dir():
        raise ValueError(f"{o.flag} {o.path} is a folder; it must be a file path")
    if not existing.is_dir():
        raise ValueError(f"{o.flag} {o.path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{o.flag} {o.path}: {existing} is not writable")


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long, ...
        return False


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


@contextlib.contextmanager
def lock(folder: str | Path, command: str):
    """Hold ``folder/.attrpreserve.lock`` for a run (created with the folder when missing).

    A lock held by a live process is a ``ValueError`` naming it; one left by a process that no
    longer runs on this host is reported (a warning) and taken over. On exit the lock is removed,
    and so is the folder when this run created it and left nothing in it. Only rank 0 of a
    torchrun job locks (every rank runs the same command; rank 0 alone writes).
    """
    if os.environ.get("RANK", "0") != "0":
        yield
        return
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        _acquire(path, mine)
    except BaseException:
        _remove_if_empty(folder, created)
        raise
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if json.loads(path.read_text()).get("pid") == mine["pid"]:
                path.unlink()
        _remove_if_empty(folder, created)


def _acquire(path: Path, mine: dict) -> None:
    for _ in range(3):  # a stale lock is removed, then taken with O_EXCL like any other
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder is None or _alive(holder):
                raise ValueError(_busy(path, holder)) from None
            import warnings
            warnings.warn(f"{path.parent}: removing the lock of process {holder.get('pid')} "
                          f"({holder.get('command', '?')}, started {holder.get('started', '?')}),"
                          " which no longer runs", stacklevel=3)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(mine, fh)
        return
    raise ValueError(_busy(path, _holder(path)))


def _holder(path: Path) -> dict | None:
    """The lock's content; None when unreadable (being written, or not ours)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _alive(holder: dict) -> bool:
    """Whether the lock's process may still run: on another host we cannot tell (alive)."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, TypeError, ValueError, OverflowError):
        return True
    return True


def _busy(path: Path, holder: dict | None) -> str:
    who = (f"process {holder.get('pid')} on {holder.get('host')} ({holder.get('command', '?')}, "
           f"started {holder.get('started', '?')})" if holder else "another run")
    return (f"{path.parent} is being written by {who}: wait for it, or choose another output "
            f"(a lock left by a crash on another host: delete {path})")


def _remove_if_empty(folder: Path, created: bool) -> None:
    if created:
        with contextlib.suppress(OSError):
            folder.rmdir()
