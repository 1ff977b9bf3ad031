"""The ImageNet-1k class table shipped with the package: index, WordNet id (wnid), name.

ImageNet-style folders (torchvision ``ImageFolder``, Imagenette) name each class folder by its
wnid (``n01440764``); a pretrained model's outputs are in index order with the names of
torchvision's weight metadata. ``imagenet_classes.tsv`` (package data, read offline) holds the
1,000 rows in index order; its names are torchvision's, which are unique (the source table
repeats "crane" and "maillot").
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

__all__ = ["TABLE", "imagenet_names", "imagenet_wnids", "is_wnid", "wnid_index"]

TABLE = Path(__file__).with_name("imagenet_classes.tsv")
WNID = re.compile(r"n\d{8}")
N_CLASSES = 1000


@functools.cache
def _table() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(wnids, names)`` in index order, checked: 1,000 rows, indices 0..999, unique wnids."""
    rows = [line.rstrip("\n").split("\t") for line in TABLE.read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    header, rows = rows[0], rows[1:]
    if header != ["index", "wnid", "name"] or len(rows) != N_CLASSES:
        raise ValueError(f"{TABLE}: expected a header and {N_CLASSES} rows")
    if [int(r[0]) for r in rows] != list(range(N_CLASSES)):
        raise ValueError(f"{TABLE}: rows are not in index order 0..{N_CLASSES - 1}")
    wnids, names = tuple(r[1] for r in rows), tuple(r[2] for r in rows)
    if len(set(wnids)) != N_CLASSES or not all(WNID.fullmatch(w) for w in wnids):
        raise ValueError(f"{TABLE}: wnids must be 1000 distinct 'nXXXXXXXX'")
    return wnids, names


def imagenet_wnids() -> tuple[str, ...]:
    """The 1,000 wnids in class-index order."""
    return _table()[0]


def imagenet_names() -> tuple[str, ...]:
    """The 1,000 class names in index order (torchvision's, unique)."""
    return _table()[1]


@functools.cache
def _index() -> dict[str, int]:
    return {w: i for i, w in enumerate(imagenet_wnids())}


def is_wnid(name: str) -> bool:
    """Whether ``name`` looks like a WordNet id (``n`` and 8 digits)."""
    return bool(WNID.fullmatch(name))


def wnid_index(wnid: str) -> int | None:
    """ImageNet-1k class index of ``wnid``, or None when it is not one of the 1,000."""
    return _index().get(wnid)
