"""Progress reports, decided in one place: bars on a terminal, whole lines anywhere else.

A tqdm bar redraws itself with carriage returns, which a log file or a pipe keeps as one
endless line, and a bar left behind by a loop that stopped early looks like a crash. So a loop
shows a bar only when stderr is a terminal (:func:`bars`), and what a log must keep (an epoch,
the end of a long phase, a phase cut short) is one line (:func:`line`, :func:`phase`). Only
the main rank reports; everything goes to stderr, stdout keeps the results.
"""

from __future__ import annotations

import contextlib
import sys
import time

from tqdm.auto import tqdm

from . import distributed


def bars(progress: bool = True) -> bool:
    """Whether a loop asked to report ``progress`` shows a bar: on the main rank, and only when
    stderr is a terminal. Loops that take a ``progress`` flag for a bar get this."""
    return bool(progress) and distributed.is_main() and sys.stderr.isatty()


def bar(total: int, desc: str, progress: bool = True, initial: int = 0) -> tqdm:
    """A bar on stderr that disappears when closed; silent unless :func:`bars`."""
    return tqdm(total=total, initial=initial, desc=desc, leave=False, file=sys.stderr,
                disable=not bars(progress))


def line(text: str, progress: bool = True) -> None:
    """One line on stderr from the main rank (above a bar that is being drawn)."""
    if progress and distributed.is_main():
        tqdm.write(text, file=sys.stderr)


def duration(seconds: float) -> str:
    """``"42 s"``, ``"3 min 5 s"``."""
    seconds = round(seconds)
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60} min {seconds % 60} s"


@contextlib.contextmanager
def phase(desc: str, progress: bool = True):
    """A long phase (an evaluation, an audit): one line with its duration when it ends."""
    t0 = time.perf_counter()
    yield
    line(f"{desc}: done in {duration(time.perf_counter() - t0)}", progress)
