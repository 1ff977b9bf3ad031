"""ImageNet top-1 of pretrained models on a labeled ImageNet-style folder (Imagenette).

    python bench/imagenet_top1.py --data ../shared/data/imagenette --split val \
        --models efficientnet-lite0,efficientnet-lite1,efficientnet-lite2 --workers 2

Each model sees the folder's ``split`` at its native input size (resize the shorter side to
size / 0.875, centre crop: ``images:`` evaluation items). Top-1 is counted over all 1000
ImageNet classes and restricted to the folder's classes (``pretrained:NAME,classes=FOLDER``:
the argmax over those logits only), on every photo and on the photos named ``--unseen``
(Imagenette: ImageNet's validation photos, ``ILSVRC2012_val_*``, which the weights never saw).
Also prints the images/s of the forward passes with the photos' decoding (this CPU).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import time

import torch
from torch.utils.data import DataLoader

from attrpreserve.data import build_dataset
from attrpreserve.loading import load_pretrained
from attrpreserve.models.pretrained import class_subset, imagenet_classes


def top1(name: str, args) -> dict:
    ref = f"pretrained:{name}"
    model = load_pretrained(ref)
    size = model.spec["kwargs"]["input_size"]
    spec = f"images:{args.data}" + (f",match={args.match}" if args.match else "")
    ds = build_dataset(spec, args.split, size=size, n=args.n).with_classes(imagenet_classes())
    subset = torch.tensor(class_subset(f"{ref},classes={args.data}"))
    unseen = torch.tensor([fnmatch.fnmatchcase(f.name, args.unseen) for f in ds.files])
    hits_full, hits_sub = [], []
    start = time.perf_counter()
    with torch.no_grad():
        for images, labels, _ in DataLoader(ds, batch_size=args.batch_size,
                                            num_workers=args.workers):
            logits, target = model(images), labels.argmax(1)
            hits_full.append(logits.argmax(1) == target)
            hits_sub.append(subset[logits[:, subset].argmax(1)] == target)
    seconds = time.perf_counter() - start
    full, sub = torch.cat(hits_full).float(), torch.cat(hits_sub).float()
    return {"model": name, "size": size, "photos": len(ds), "unseen": int(unseen.sum()),
            "top1_1000": float(full.mean()), "top1_classes": float(sub.mean()),
            "unseen_top1_1000": float(full[unseen].mean()) if unseen.any() else None,
            "unseen_top1_classes": float(sub[unseen].mean()) if unseen.any() else None,
            "images_per_s": len(ds) / seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="ImageNet-style folder (wnid class folders)")
    p.add_argument("--split", default="val")
    p.add_argument("--models", default="efficientnet-lite0,efficientnet-lite1,efficientnet-lite2")
    p.add_argument("--n", type=int, default=None, help="photos, spread evenly (default: all)")
    p.add_argument("--match", default=None, help="only photos whose name matches this glob")
    p.add_argument("--unseen", default="ILSVRC2012_val_*")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [top1(name, args) for name in args.models.split(",")]
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
