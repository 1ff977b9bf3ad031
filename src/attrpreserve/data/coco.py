"""COCO photos with panoptic class masks (``coco128:PATH``) and the ImageNet-to-COCO mapping.

The folder (e.g. ``../shared/data/coco128-train``, see its README)::

    PATH/images/ID.jpg      photos
    PATH/masks/ID.png       optional, single channel: COCO panoptic category id per pixel
                            (things 1-90, stuff 92-200), 0 = unlabeled

Splits as for ``images:`` folders (every fifth photo in name order is val / test; option
``holdout=``). Items are ``(image, labels, void mask, coco mask)``: the first three as in
:class:`attrpreserve.data.images.ImageSet` (no labels: the teacher supervises, and the standard
evaluator skips localisation), the fourth the COCO id mask under the same crop (nearest
neighbour; int64, -1 everywhere for a photo without mask). It serves
:func:`attrpreserve.evaluate.mask_localization`: the teacher's top-1 ImageNet class is scored
against the mask of its COCO counterpart (:func:`coco_ids`) when that is in the photo.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .images import ImageSet, check_readable, held_out, opened, parse_spec, transform

NO_MASK = -1
THINGS = range(1, 91)  # COCO "thing" category ids; stuff is 92-200, 0 unlabeled

COCO_THINGS = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train",
    8: "truck", 9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign",
    14: "parking meter", 15: "bench", 16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep",
    21: "cow", 22: "elephant", 23: "bear", 24: "zebra", 25: "giraffe", 27: "backpack",
    28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase", 34: "frisbee", 35: "skis",
    36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat", 40: "baseball glove",
    41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle", 46: "wine glass",
    47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple",
    54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza",
    60: "donut", 61: "cake", 62: "chair", 63: "couch", 64: "potted plant", 65: "bed",
    67: "dining table", 70: "toilet", 72: "tv", 73: "laptop", 74: "mouse", 75: "remote",
    76: "keyboard", 77: "cell phone", 78: "microwave", 79: "oven", 80: "toaster", 81: "sink",
    82: "refrigerator", 84: "book", 85: "clock", 86: "vase", 87: "scissors", 88: "teddy bear",
    89: "hair drier", 90: "toothbrush",
}

# ImageNet-1k class indices (torchvision order) -> the COCO thing category they depict. Only
# unambiguous counterparts: wild cats are not COCO "cat", wolves are not "dog", a kite (the
# bird, 21) is a bird. Indices from the standard ImageNet class list, by name in the comments.
_RANGES = {
    "bird": [*range(7, 25),      # cock .. great grey owl (21 kite is the bird)
             *range(80, 101),    # black grouse .. black swan
             *range(127, 147)],  # white stork .. albatross
    "dog": [*range(151, 269)],   # Chihuahua .. Mexican hairless
    "cat": [*range(281, 286)],   # tabby, tiger cat, Persian, Siamese, Egyptian cat
    "bear": [294, 295, 296, 297],  # brown, American black, ice, sloth bear
    "horse": [339],              # sorrel
    "zebra": [340],
    "cow": [345, 346, 347],      # ox, water buffalo, bison
    "sheep": [348],              # ram
    "elephant": [101, 385, 386],  # tusker, Indian, African elephant
    "airplane": [404, 895],      # airliner, warplane
    "bicycle": [444, 671],       # bicycle-built-for-two, mountain bike
    "boat": [472, 484, 510, 554, 576, 625, 628, 693, 724, 780, 814, 833, 871, 914],
    # canoe, catamaran, container ship, fireboat, gondola, lifeboat, liner, paddle, pirate,
    # schooner, speedboat, submarine, trimaran, yawl
    "bus": [654, 779, 874],      # minibus, school bus, trolleybus
    "car": [407, 436, 468, 511, 609, 627, 656, 661, 717, 734, 751, 817],
    # ambulance, beach wagon, cab, convertible, jeep, limousine, minivan, Model T, pickup,
    # police van, racer, sports car
    "truck": [555, 569, 675, 717, 734, 864, 867],
    # fire engine, garbage truck, moving van, pickup, police van, tow truck, trailer truck
    "motorcycle": [665, 670],    # moped, motor scooter
    "train": [466, 547, 565, 705, 820, 829],
    # bullet train, electric locomotive, freight car, passenger car, steam locomotive, streetcar
    "person": [981, 982, 983],   # ballplayer, groom, scuba diver
    "traffic light": [920],
    "parking meter": [704],
    "bench": [703],              # park bench
    "backpack": [414],
    "umbrella": [879],
    "handbag": [748],            # purse
    "tie": [457, 906],           # bow tie, Windsor tie
    "skis": [795],
    "sports ball": [429, 430, 522, 574, 722, 768, 805, 852, 890],
    # baseball, basketball, croquet ball, golf ball, ping-pong ball, rugby ball, soccer ball,
    # tennis ball, volleyball
    "tennis racket": [752],      # racket
    "bottle": [440, 720, 737, 898, 907],  # beer, pill, pop, water, wine bottle
    "cup": [504, 968],           # coffee mug, cup
    "spoon": [910],              # wooden spoon
    "bowl": [659, 809],          # mixing bowl, soup bowl
    "banana": [954],
    "apple": [948],              # Granny Smith
    "sandwich": [933],           # cheeseburger
    "hot dog": [934],
    "orange": [950],
    "broccoli": [937],
    "pizza": [963],
    "chair": [423, 559, 765, 857],  # barber chair, folding chair, rocking chair, throne
    "couch": [831],              # studio couch
    "potted plant": [738],       # pot (flowerpot)
    "bed": [564],                # four-poster
    "dining table": [532],
    "toilet": [861],             # toilet seat
    "tv": [664, 782, 851],       # monitor, screen, television
    "laptop": [620, 681],        # laptop, notebook
    "mouse": [673],              # computer mouse
    "remote": [761],             # remote control
    "keyboard": [508],           # computer keyboard
    "cell phone": [487],         # cellular telephone
    "microwave": [651],
    "toaster": [859],
    "sink": [896],               # washbasin
    "refrigerator": [760],
    "book": [921],               # book jacket
    "clock": [409, 530, 892],    # analog, digital, wall clock
    "vase": [883],
    "teddy bear": [850],
    "hair drier": [589],         # hand blower
}
_COCO_ID = {name: i for i, name in COCO_THINGS.items()}
IMAGENET_TO_COCO: dict[int, frozenset[int]] = {}
for _name, _indices in _RANGES.items():
    for _k in _indices:
        IMAGENET_TO_COCO[_k] = IMAGENET_TO_COCO.get(_k, frozenset()) | {_COCO_ID[_name]}


def coco_ids(imagenet_class: int) -> frozenset[int]:
    """COCO thing category ids depicted by ImageNet class ``imagenet_class`` (empty if none)."""
    return IMAGENET_TO_COCO.get(int(imagenet_class), frozenset())


@dataclass
class CocoSet(ImageSet):
    """:class:`ImageSet` whose items also carry the COCO id mask under the same crop."""

    masks: list[Path | None] | None = None

    def __getitem__(self, i):
        image, box, flip = self.load(i)
        void = torch.full((self.size, self.size), 255, dtype=torch.int64)
        path = self.masks[i] if self.masks else None
        if path is None:
            region = torch.full((self.size, self.size), NO_MASK, dtype=torch.int64)
        else:
            with opened(path) as mask, opened(self.files[i]) as photo:  # bombs named
                if mask.mode not in ("L", "P", "I", "I;16"):
                    raise ValueError(f"mask {path} must be single-channel, got mode {mask.mode}")
                if mask.size != photo.size:
                    raise ValueError(f"mask {path} is {mask.size[0]}x{mask.size[1]} but photo "
                                     f"{self.files[i]} is {photo.size[0]}x{photo.size[1]}")
                region = torch.from_numpy(transform(mask, box, flip, self.size,
                                                    Image.Resampling.NEAREST).astype(np.int64))
        return image, self.label(i), void, region


def build_coco(arg: str | None, split: str, size: int, n: int | None) -> CocoSet:
    """The ``coco128:PATH`` builder (photos in ``PATH/images``, masks in ``PATH/masks``)."""
    root, options = parse_spec(arg, "coco128")
    if not (root / "images").is_dir():
        raise ValueError(f"no images/ folder in {root} (expected a COCO128 folder)")
    files = sorted(p for p in (root / "images").iterdir()
                   if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    keep = [f for f, out in zip(files, held_out(len(files), options["holdout"]))
            if out == (split != "train")][:n]
    if not keep:
        raise ValueError(f"split {split!r} of {root} is empty")
    check_readable(keep)
    masks = [(root / "masks" / f"{f.stem}.png") for f in keep]
    masks = [m if m.is_file() else None for m in masks]
    return CocoSet(keep, [-1] * len(keep), [], size, split == "train",
                   f"coco128:{root.name}/{split}", masks=masks)
