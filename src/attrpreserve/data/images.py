"""Folders of photos (``images:FOLDER``), unlabeled or labeled, read lazily at a model's size.

Layouts (docs/data.md, docs/pretrained.md)::

    FOLDER/*.jpg|png|...            unlabeled photos (the teacher supervises)
    FOLDER/CLASS/*.jpg|png|...      labeled photos, one subfolder per class (ImageFolder style);
                                    CLASS is a model class's name, index or ImageNet wnid
    FOLDER/train/..., FOLDER/val/..., FOLDER/test/...   either layout per split

Without split subfolders the photos (sorted by path) are split deterministically: a share
``holdout`` (default 0.2, spread evenly: every fifth photo) is the val split, and test falls
back to val; the rest is train. ``images:FOLDER,holdout=0.5`` changes the share (the path must
not contain a comma); ``holdout=1`` puts every photo in val / test (an audit of a whole folder).
With split subfolders each split is its folder (test falls back to val/ with a warning); an
explicit ``holdout`` then carves the val split (the one that selects checkpoints) out of
train/ instead, and val/ serves as test when there is no test/ (Imagenette: train/ and val/).
``match=PATTERN`` keeps the photos whose file name matches the glob (Imagenette's photos unseen
by ImageNet models: ``match=ILSVRC2012_val_*``). Object boxes (``data.boxes``: ``FOLDER/boxes.csv``
when present, or ``boxes=FILE``) become the masks of the photos they name, so localisation runs
on those photos; the others have none. A size ``n`` takes n photos spread evenly over
the split in path order, so each class folder keeps its share.

Training items are random-resized crops (scale 0.25-1 of the area, aspect 3/4-4/3) with random
horizontal flips; val / test items are resized (shorter side ``size / 0.875``) and center-cropped,
the usual ImageNet evaluation. Items are ``(image float 3 x S x S in [0, 1], labels float K,
mask int64 S x S)``; the mask is the photo's boxes under the same crop, or all 255 (void: no
localisation) for a photo without boxes. A file with an image suffix that cannot be read, or
of more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (a decompression bomb), raises ``ValueError``
naming it.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .boxes import SPLITS as SPLIT_DIRS
from .boxes import VOID, box_mask, load_boxes, to_window
from .imagenet import imagenet_names, is_wnid, wnid_index

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
HOLDOUT = 0.2
CROP_SCALE = (0.25, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
EVAL_RESIZE = 1 / 0.875


def spec_options(arg: str | None, name: str = "images",
                 known: tuple[str, ...] = ("holdout",)) -> tuple[Path, dict]:
    """``"FOLDER[,key=value...]"`` -> ``(folder, {key: value})`` with only the options given,
    checked: ``holdout`` a number in (0, 1], ``match`` a file-name glob, ``boxes`` a file."""
    if not arg:
        raise ValueError(f"dataset '{name}' needs a folder: '{name}:FOLDER'")
    path, *opts = arg.split(",")
    options = {}
    for opt in opts:
        key, _, value = (part.strip() for part in opt.partition("="))
        if key not in known:
            raise ValueError(f"unknown option {key!r} in '{name}:{arg}' "
                             f"(known: {', '.join(known)})")
        if key in ("match", "boxes"):
            if not value:
                raise ValueError(f"{key} needs a value, e.g. "
                                 + ("'match=*.JPEG'" if key == "match" else "'boxes=boxes.csv'"))
            options[key] = value
            continue
        try:
            options["holdout"] = float(value)
        except ValueError:
            raise ValueError(f"holdout must be a number, got {value!r}") from None
        if not 0 < options["holdout"] <= 1:
            raise ValueError(f"holdout must be in (0, 1], got {options['holdout']}")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ValueError(f"dataset folder not found: {root}")
    return root, options


def parse_spec(arg: str | None, name: str = "images") -> tuple[Path, dict]:
    """``"FOLDER[,holdout=S]"`` -> ``(folder, {"holdout": float})``, default 0.2, checked."""
    root, options = spec_options(arg, name)
    return root, {"holdout": HOLDOUT, **options}


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTS and not path.name.startswith(".")


def scan_folder(folder: Path, match: str | None = None
                ) -> tuple[list[Path], list[int], list[str]]:
    """Photos of one folder: ``(files, class index per file or -1, class names)``.

    Photos directly in ``folder`` are unlabeled; photos in its subfolders are labeled with the
    subfolder's name. Mixing both, or a folder without photos, is an error. ``match``: keep
    the photos whose file name matches this glob (every class folder stays a class).
    """
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    flat = [p for p in entries if _is_image(p)]
    dirs = [p for p in entries if p.is_dir()]
    if flat and dirs:
        raise ValueError(f"{folder} has both photos and subfolders ({dirs[0].name}/): put "
                         "unlabeled photos directly in it, or every photo in a class subfolder")

    def keep(paths):
        return [p for p in paths if match is None or fnmatch.fnmatchcase(p.name, match)]

    if flat:
        files, classes = keep(flat), []
        targets = [-1] * len(files)
    else:
        files, targets, classes = [], [], [d.name for d in dirs]
        for k, d in enumerate(dirs):
            photos = keep(sorted(p for p in d.iterdir() if _is_image(p)))
            files += photos
            targets += [k] * len(photos)
    if not files:
        which = f" matching {match!r}" if match is not None else ""
        raise ValueError(f"no photos ({'|'.join(e.lstrip('.') for e in IMAGE_EXTS)}){which} "
                         f"in {folder}")
    return files, targets, classes


def held_out(n: int, share: float) -> list[bool]:
    """Which of ``n`` items are held out: ``round(share * n)`` of them, spread evenly."""
    return [math.floor((i + 1) * share) > math.floor(i * share) for i in range(n)]


def spread(total: int, n: int) -> list[int]:
    """``min(n, total)`` indices of ``range(total)`` spread evenly (the first one included when
    n < total): a subset that keeps each run of the sorted items in proportion."""
    if n >= total:
        return list(range(total))
    return [i for i in range(total) if (i * n) % total < n]


def has_split_folders(root: Path) -> bool:
    """Whether ``root`` holds any of the split folders ``train/``, ``val/``, ``test/``."""
    return any((root / s).is_dir() for s in SPLIT_DIRS)


def split_folder(root: Path, split: str, holdout: float | None = None,
                 match: str | None = None):
    """``scan_folder`` of ``split`` (see the module docstring). Without split folders: a
    deterministic share ``holdout`` (None: 0.2) of the photos is val and test. With them: the
    split's folder when ``holdout`` is None (test falls back to val/, with a warning), else val
    is that share of train/ and test is test/ or val/."""
    if not has_split_folders(root):
        return _share(*scan_folder(root, match), root, split, HOLDOUT if holdout is None
                      else holdout)
    if holdout is not None and split != "test":  # val carved out of train/
        if not (root / "train").is_dir():
            raise ValueError(f"missing split folder {root / 'train'} (holdout={holdout} "
                             f"takes the val split from it)")
        return _share(*scan_folder(root / "train", match), root / "train", split, holdout)
    folder = root / split
    if split == "test" and not folder.is_dir():
        if holdout is None:  # val/ also selects checkpoints: say that test reuses it
            warnings.warn(f"no folder {folder}; using {root / 'val'} for split 'test'",
                          stacklevel=3)
        folder = root / "val"
    if not folder.is_dir():
        raise ValueError(f"missing split folder {folder}")
    return scan_folder(folder, match)


def _share(files, targets, classes, root: Path, split: str, holdout: float):
    """The train part (``split == "train"``) or the held-out part of one folder's photos."""
    out = held_out(len(files), holdout)
    keep = [i for i, o in enumerate(out) if o == (split != "train")]
    if not keep:
        raise ValueError(f"split {split!r} of {root} is empty ({len(files)} photos, "
                         f"holdout {holdout})")
    return [files[i] for i in keep], [targets[i] for i in keep], classes


def class_folders(root: Path) -> list[str]:
    """The class folder names of an ``images:`` folder, sorted (over its split folders, if it
    has them): the label space its datasets use, e.g. to restrict a pretrained model to it."""
    folders = [root / s for s in SPLIT_DIRS if (root / s).is_dir()] or [root]
    names = {d.name for f in folders for d in f.iterdir()
             if d.is_dir() and not d.name.startswith(".")}
    if not names:
        raise ValueError(f"{root} has no class folders")
    return sorted(names)


# Pixel limit: a photo of more than PIL's ``Image.MAX_IMAGE_PIXELS`` (89.5 Mpx by default) is
# refused, naming its file: PIL only warns up to twice that (a warning that names no file) and
# raises beyond it. Decoding such a file could take gigabytes (a decompression bomb).
BOMBS = (Image.DecompressionBombError, Image.DecompressionBombWarning)


@contextlib.contextmanager
def refuse_bombs():
    """A context in which PIL's decompression-bomb warning is an error (wrap a thread pool in
    it from the calling thread: ``warnings`` filters are not thread-safe to change)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


@contextlib.contextmanager
def opened(path: Path):
    """``Image.open(path)`` (header read; decoding is lazy) under the pixel limit; a
    ``ValueError`` naming the file when it cannot be read or is larger than the limit."""
    try:
        with refuse_bombs():
            img = Image.open(path)
    except (UnidentifiedImageError, OSError, *BOMBS) as err:
        raise ValueError(f"cannot read image {path}: {err}") from None
    with img:
        yield img


def open_rgb(path: Path) -> Image.Image:
    """The photo as RGB; ``ValueError`` naming the file if it cannot be read (or is too large)."""
    with opened(path) as img:
        try:
            return img.convert("RGB")
        except OSError as err:  # a truncated file fails when decoded
            raise ValueError(f"cannot read image {path}: {err}") from None


def check_readable(files: list[Path]) -> None:
    """Open every file's header (cheap); ``ValueError`` naming the first unreadable one (or the
    first beyond the pixel limit)."""
    for path in files:
        with opened(path):
            pass


def crop_box(width: int, height: int, size: int, train: bool) -> tuple[tuple[int, ...], bool]:
    """``((left, top, right, bottom), flip)``: a random-resized crop (train, torch's global
    RNG) or the center square that the eval resize keeps."""
    if not train:
        side = min(width, height) * size / round(size * EVAL_RESIZE)
        left, top = (width - side) / 2, (height - side) / 2
        return (round(left), round(top), round(left + side), round(top + side)), False
    area = width * height
    log_ratio = torch.log(torch.tensor(CROP_RATIO))
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(*CROP_SCALE))
        ratio = math.exp(float(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            left = int(torch.randint(0, width - w + 1, (1,)))
            top = int(torch.randint(0, height - h + 1, (1,)))
            break
    else:  # fall back to the center square
        w = h = min(width, height)
        left, top = (width - w) // 2, (height - h) // 2
    return (left, top, left + w, top + h), bool(torch.rand(1) < 0.5)


def transform(img: Image.Image, box, flip: bool, size: int,
              resample=Image.Resampling.BILINEAR) -> np.ndarray:
    """``img`` cropped to ``box``, resized to ``size`` x ``size``, flipped if asked."""
    out = img.resize((size, size), resample, box=box)
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(out)


def resolve_class(name: str, classes: list[str] | tuple[str, ...]) -> int:
    """Index of a folder name in ``classes``: exact, then ignoring case and ``_`` vs space,
    then an ImageNet wnid (``n01440764``: the class's ImageNet name in ``classes``), then an
    integer index; ``ValueError`` when unknown or ambiguous."""
    classes = list(classes)
    if name in classes and classes.count(name) == 1:
        return classes.index(name)
    key = name.lower().replace("_", " ").strip()
    hits = [i for i, c in enumerate(classes) if c.lower().replace("_", " ") == key]
    if len(hits) == 1:
        return hits[0]
    if is_wnid(name) and not hits:
        index = wnid_index(name)
        if index is None:
            raise ValueError(f"class folder {name!r} is not one of the model's {len(classes)} "
                             "classes, nor an ImageNet-1k wnid")
        imagenet = imagenet_names()[index]
        found = [i for i, c in enumerate(classes) if c == imagenet]
        if len(found) == 1:
            return found[0]
        if found:
            raise ValueError(f"class folder {name!r} ({imagenet!r}) is ambiguous "
                             f"(indices {found}): name it by index")
        raise ValueError(f"class folder {name!r} (ImageNet class {index}, {imagenet!r}) is not "
                         f"one of the model's {len(classes)} classes")
    if name.isdigit() and int(name) < len(classes):
        return int(name)
    if hits:
        raise ValueError(f"class folder {name!r} is ambiguous (indices {hits}): name it by index")
    raise ValueError(f"class folder {name!r} is not one of the model's {len(classes)} classes "
                     "(use its name, index or ImageNet wnid)")


@dataclass
class ImageSet(Dataset):
    """Photos read lazily: ``(image, labels, void mask)`` items (see the module docstring).

    ``classes``: the label space (the folder's class names, or the model's after
    :meth:`with_classes`); ``targets[i]``: class index of photo i, -1 if unlabeled.
    """

    files: list[Path]
    targets: list[int]
    classes: list[str]
    size: int = 224
    train: bool = False
    name: str = ""
    boxes: list | None = None  # per photo, its normalised boxes (``data.boxes``); None: no file
    labeled: bool = field(init=False)

    def __post_init__(self):
        self.labeled = any(t >= 0 for t in self.targets)

    def __len__(self) -> int:
        return len(self.files)

    def object_mask(self, i: int, crop, flip: bool) -> torch.Tensor:
        """Photo ``i``'s box mask under the crop ``(left, top, right, bottom)`` px and flip."""
        boxes = self.boxes[i] if self.boxes else []
        if boxes and self.targets[i] >= 0:
            with opened(self.files[i]) as img:
                w, h = img.size
            window = (crop[0] / w, crop[1] / h, crop[2] / w, crop[3] / h)
            boxes = [to_window(b, window) for b in boxes]
        return box_mask(boxes, self.targets[i], self.size, flip)

    def load(self, i: int) -> tuple[torch.Tensor, tuple, bool]:
        """Photo ``i`` transformed: ``(image float 3 x S x S, crop box, flip)``."""
        img = open_rgb(self.files[i])
        box, flip = crop_box(*img.size, self.size, self.train)
        x = torch.from_numpy(transform(img, box, flip, self.size).copy())
        return x.permute(2, 0, 1).float().div_(255), box, flip

    def label(self, i: int) -> torch.Tensor:
        y = torch.zeros(len(self.classes))
        if self.targets[i] >= 0:
            y[self.targets[i]] = 1.0
        return y

    def __getitem__(self, i):
        image, crop, flip = self.load(i)
        return image, self.label(i), self.object_mask(i, crop, flip)

    def with_classes(self, classes) -> "ImageSet":
        """The same photos labeled in the label space ``classes`` (e.g. a model's 1000
        ImageNet classes); each class folder must name one of them (:func:`resolve_class`)."""
        index = [resolve_class(c, classes) for c in self.classes]
        targets = [index[t] if t >= 0 else -1 for t in self.targets]
        return replace(self, targets=targets, classes=list(classes))

    def describe(self) -> dict:
        return {"name": self.name, "n": len(self), "image_size": [self.size, self.size],
                "labeled": self.labeled, "classes": len(self.classes)}


class Relabeled(Dataset):
    """A view of ``dataset`` whose labels are ``labels[i]`` (e.g. a teacher's top-1 one-hot)."""

    def __init__(self, dataset, labels: torch.Tensor, classes, how: str = ""):
        if len(labels) != len(dataset):
            raise ValueError(f"{len(labels)} labels for {len(dataset)} items")
        self.dataset, self.labels, self.classes, self.how = dataset, labels, list(classes), how

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        item = self.dataset[i]
        return (item[0], self.labels[i], *item[2:])


def build_images(arg: str | None, split: str, size: int, n: int | None,
                 name: str = "images") -> ImageSet:
    """The ``images:FOLDER[,holdout=S][,match=GLOB][,boxes=FILE]`` builder: the split's photos
    (``n`` of them spread evenly), headers checked, with their boxes."""
    root, options = spec_options(arg, name, known=("holdout", "match", "boxes"))
    files, targets, classes = split_folder(root, split, options.get("holdout"),
                                           options.get("match"))
    if n is not None:
        keep = spread(len(files), n)
        files, targets = [files[i] for i in keep], [targets[i] for i in keep]
    check_readable(files)
    return ImageSet(files, targets, classes, size, split == "train", f"{name}:{root.name}/{split}",
                    load_boxes(root, options.get("boxes"), files))
