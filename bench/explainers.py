"""Seconds to explain every (image, ground-truth class) pair: batched vs one pair at a time.

The four explainers of the paper's evaluation (Grad-CAM, Excitation Backprop, LRP alpha1-beta0,
RAP) on the small VGG (random weights, eval mode) over N scenes test images:

* batched: ``--batch-size`` images per call, all their ground-truth pairs in that one call;
* one at a time: the public code's style, a batch-size-1 loop that explains one (image, class)
  pair per call (one forward and one backward each), with the same explainer function;
* "gradcam (public)": the one-at-a-time loop computed the way the paper's public code does
  Grad-CAM (as in bench/overhead.py): a hook that retains the layer's gradient and a full
  ``out.backward(one_hot)``, parameter gradients included, per pair.

The maps must agree (max abs difference <= 1e-6 is checked and printed). Data is generated
before timing; each mode gets one untimed warm-up call; the two modes are timed batch by batch
in turn (so that load from other processes hits both alike). The "all" row sums the four
explainers (same-function loops).

    python bench/explainers.py [--n 500] [--batch-size 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from attrpreserve.attribution import EXPLAINERS
from attrpreserve.data import build_dataset
from attrpreserve.models import create_model, default_layer, get_layer

METHODS = ("gradcam", "ebp", "lrp_a1b0", "rap")


def load(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images N x 3 x 64 x 64 and multi-hot labels N x K of the first n scenes test images."""
    data = build_dataset("scenes", "test", size=64, seed=0, n=n)
    items = [data[i] for i in range(len(data))]
    return torch.stack([x for x, _, _ in items]), torch.stack([y for _, y, _ in items])


def batched(fn, model, images, labels) -> torch.Tensor:
    """Maps of all pairs of ``images``, in one call."""
    idx, cls = labels.nonzero(as_tuple=True)
    return fn(model, images, idx, cls, None)[0]


def one_at_a_time(fn, model, images, labels) -> torch.Tensor:
    """Maps of all pairs, one image (batch size 1) and one class per call."""
    maps, zero = [], torch.zeros(1, dtype=torch.long)
    for i in range(len(images)):
        for c in labels[i].nonzero(as_tuple=True)[0]:
            maps.append(fn(model, images[i:i + 1], zero, c.view(1), None)[0])
    return torch.cat(maps)


def public_gradcam(model, images, labels) -> torch.Tensor:
    """Grad-CAM one pair at a time, the public code's way (full backward, parameter grads)."""
    layer, acts, maps = get_layer(model, default_layer(model)), {}, []

    def keep(_module, _inputs, out):
        out.retain_grad()
        acts["a"] = out

    handle = layer.register_forward_hook(keep)
    try:
        for i in range(len(images)):
            for c in labels[i].nonzero(as_tuple=True)[0]:
                out = model(images[i:i + 1])
                one_hot = torch.zeros_like(out)
                one_hot[0, c] = 1
                out.backward(one_hot)
                a, g = acts["a"], acts["a"].grad
                maps.append(F.relu((g.sum((2, 3), keepdim=True) * a).sum(1)).detach())
                model.zero_grad(set_to_none=True)
    finally:
        handle.remove()
    return torch.cat(maps)


def compare(batched_fn, single_fn, images, labels, batch_size: int) -> tuple:
    """``(batched s, one-at-a-time s, max |diff|)``, the two timed batch by batch in turn so
    that machine load hits both alike."""
    t_b = t_1 = diff = 0.0
    for s in range(0, len(images), batch_size):
        x, y = images[s:s + batch_size], labels[s:s + batch_size]
        start = time.perf_counter()
        maps_b = batched_fn(x, y)
        mid = time.perf_counter()
        maps_1 = single_fn(x, y)
        t_b, t_1 = t_b + mid - start, t_1 + time.perf_counter() - mid
        if len(maps_b):
            diff = max(diff, float((maps_b - maps_1).abs().max()))
    return t_b, t_1, diff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="scenes test images (default 500)")
    ap.add_argument("--batch-size", type=int, default=64, help="images per batched call")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=sorted(EXPLAINERS))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model("vgg", num_classes=8, width=16, input_size=64).eval()
    images, labels = load(args.n)
    n_pairs = int(labels.sum())
    print(f"{len(images)} images, {n_pairs} (image, class) pairs, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, device cpu")
    print(f"{'method':<16} {'batched s':>10} {'1-at-a-time s':>14} {'ratio':>7} "
          f"{'max |diff|':>11}")
    total_b = total_1 = 0.0
    worst = 0.0
    for name in args.methods:
        fn = EXPLAINERS[name]
        batched(fn, model, images[:2], labels[:2])            # warm-up, untimed
        one_at_a_time(fn, model, images[:1], labels[:1])
        t_b, t_1, diff = compare(lambda x, y: batched(fn, model, x, y),
                                 lambda x, y: one_at_a_time(fn, model, x, y),
                                 images, labels, args.batch_size)
        worst = max(worst, diff)
        total_b, total_1 = total_b + t_b, total_1 + t_1
        print(f"{name:<16} {t_b:>10.2f} {t_1:>14.2f} {t_1 / t_b:>6.1f}x {diff:>11.2e}")
    print(f"{'all':<16} {total_b:>10.2f} {total_1:>14.2f} {total_1 / total_b:>6.1f}x "
          f"{worst:>11.2e}")
    if "gradcam" in args.methods:
        fn = EXPLAINERS["gradcam"]
        public_gradcam(model, images[:1], labels[:1])
        t_b, t_1, diff = compare(lambda x, y: batched(fn, model, x, y),
                                 lambda x, y: public_gradcam(model, x, y),
                                 images, labels, args.batch_size)
        worst = max(worst, diff)
        print(f"{'gradcam (public)':<16} {t_b:>10.2f} {t_1:>14.2f} {t_1 / t_b:>6.1f}x "
              f"{diff:>11.2e}")
    print("maps agree to 1e-6" if worst <= 1e-6 else "MAPS DIFFER by more than 1e-6")


if __name__ == "__main__":
    main()
