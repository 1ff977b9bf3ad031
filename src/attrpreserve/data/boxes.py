"""Object boxes for folders of photos (``images:`` / ``cached:``): localisation on real photos.

A box file is a CSV with a header and one row per box; the columns it needs are ``file`` (the
photo's file name) and ``x0n,y0n,x1n,y1n`` (the box, normalised to the photo: 0..1 from the
left / top edge to the right / bottom one, so it holds for any resize of the file); optional
``wnid`` or ``class`` (the photo's class folder) and ``split`` (its split folder) narrow which
photo a row belongs to (Imagenette's ``boxes.csv``: ``split,wnid,file,...``). Any other column is
ignored. A photo with several rows has their union as its object; a photo without rows has no
localisation (its mask is void), a row naming no photo of the folder is ignored. A malformed
file is a ``ValueError`` naming the file and the row.

Masks follow ``data.SegmentationSet``'s convention: ``k + 1`` inside the boxes of a photo of
class ``k``, 0 outside, 255 (void) for a photo without boxes or without a label.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import torch

BOX_FILE = "boxes.csv"  # read from the folder's root when present
COORDS = ("x0n", "y0n", "x1n", "y1n")
VOID = 255
SPLITS = ("train", "val", "test")  # split folder names (``data.images.SPLIT_DIRS``)

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class BoxRow:
    split: str | None
    cls: str | None
    box: Box


def read_boxes(path: Path) -> dict[str, list[BoxRow]]:
    """``{file name: [BoxRow]}`` of a box file; ``ValueError`` naming the row that is wrong."""
    try:
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read box file {path}: {err}") from None
    if not rows:
        raise ValueError(f"box file {path} is empty; expected a header with "
                         f"file,{','.join(COORDS)}")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in ("file", *COORDS) if c not in header]
    if missing:
        raise ValueError(f"box file {path}: header lacks {', '.join(missing)} "
                         f"(has {', '.join(header)})")
    col = {name: header.index(name) for name in header}
    cls_col = col.get("wnid", col.get("class"))
    out: dict[str, list[BoxRow]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise ValueError(f"box file {path} row {line}: {len(row)} fields, the header has "
                             f"{len(header)}")
        box = tuple(_coordinate(path, line, c, row[col[c]]) for c in COORDS)
        if not (box[0] < box[2] and box[1] < box[3]):
            raise ValueError(f"box file {path} row {line}: empty box (x0n < x1n and y0n < y1n "
                             f"needed, got {', '.join(f'{v:g}' for v in box)})")
        name = row[col["file"]].strip()
        if not name:
            raise ValueError(f"box file {path} row {line}: no file name")
        out.setdefault(name, []).append(BoxRow(
            row[col["split"]].strip() if "split" in col else None,
            row[cls_col].strip() if cls_col is not None else None, box))
    return out


def _coordinate(path: Path, line: int, name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 1:  # NaN fails too
        raise ValueError(f"box file {path} row {line}: {name} must be a number in [0, 1], "
                         f"got {text!r}")
    return value


def box_file(root: Path, option: str | None) -> Path | None:
    """The box file of a folder: ``boxes=FILE`` (must exist), else ``ROOT/boxes.csv`` if any."""
    if option is not None:
        path = Path(option).expanduser()
        if not path.is_file():
            raise ValueError(f"box file not found: {path}")
        return path
    path = root / BOX_FILE
    return path if path.is_file() else None


def boxes_for(files: list[Path], table: dict[str, list[BoxRow]]) -> list[list[Box]]:
    """Each photo's boxes: the rows of its file name whose class and split (when the file gives
    them) are its folders' names."""
    out = []
    for f in files:
        rows = table.get(f.name, ())
        out.append([r.box for r in rows
                    if (r.cls is None or r.cls == f.parent.name)
                    and (r.split is None or r.split == f.parent.parent.name
                         or f.parent.parent.name not in SPLITS)])
    return out


def load_boxes(root: Path, option: str | None, files: list[Path]) -> list[list[Box]] | None:
    """Boxes of ``files`` from the folder's box file, or None when it has none."""
    path = box_file(root, option)
    return None if path is None else boxes_for(files, read_boxes(path))


def to_window(box: Box, window: tuple[float, float, float, float]) -> Box:
    """A normalised box expressed in a window (left, top, right, bottom, normalised too) of the
    same photo: what a crop of that window then resized sees (may fall outside 0..1)."""
    left, top, right, bottom = window
    w, h = right - left, bottom - top
    return ((box[0] - left) / w, (box[1] - top) / h, (box[2] - left) / w, (box[3] - top) / h)


def box_mask(boxes: list[Box], label: int, size: int, flip: bool = False) -> torch.Tensor:
    """``size x size`` int64 mask: ``label + 1`` on pixels whose centre lies in a box, 0 elsewhere;
    all void without boxes or label (< 0). ``flip`` mirrors it left-right."""
    if not boxes or label < 0:
        return torch.full((size, size), VOID, dtype=torch.int64)
    centres = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    inside = torch.zeros(size, size, dtype=torch.bool)
    for x0, y0, x1, y1 in boxes:
        rows = (centres >= y0) & (centres < y1)
        cols = (centres >= x0) & (centres < x1)
        inside |= rows[:, None] & cols[None, :]
    if flip:
        inside = inside.flip(1)
    return inside.long() * (label + 1)
