"""Seconds per training step: KD, KD+WCAM (ours), KD+WCAM computed the public code's way.

The public code's way: a full backward through the teacher, and on the student
``out.backward(one_hot, create_graph=True)``, a second-order pass through the whole network
that builds every parameter gradient, before the real backward. Ours differentiates only the
layers after the matched activation. All three are timed interleaved in one run.

``--vit``: the same for a Vision Transformer (timm's deit_tiny at 64 px, a 4 x 4 patch grid,
matched on its token map; teacher and student of the same size, the student random): KD,
KD+WCAM and KD+AT (the public-code style needs a 4-D map and is left out).

    python bench/overhead.py [--teacher-width 32] [--divisor 4] [--batch 64] [--steps 12]
    python bench/overhead.py --vit
"""

from __future__ import annotations

import argparse
import statistics
import time

import warnings

import torch
import torch.nn.functional as F

from attrpreserve.recipes import DistillStep, multilabel_kd_loss
from attrpreserve.matching import WCAM, AttentionTransfer, normalized_distance
from attrpreserve.models import create_model, get_layer


def public_style_step(teacher, student, layer_t, layer_s, lam=100.0):
    """KD + WCAM as the paper's public code computes it (full second-order student pass)."""
    acts = {}

    def keep(name):
        def hook(_m, _i, out):
            out.retain_grad()
            acts[name] = out
        return hook

    def step(model, x, y):
        h_t = get_layer(teacher, layer_t).register_forward_hook(keep("t"))
        h_s = get_layer(model, layer_s).register_forward_hook(keep("s"))
        try:
            teacher.eval()
            t_out = teacher(x)
            one_hot = F.one_hot(t_out.argmax(1), t_out.shape[1]).float()
            t_out.backward(one_hot)  # full teacher backward (parameter gradients too)
            a_t, g_t = acts["t"].detach(), acts["t"].grad
            teacher.zero_grad(set_to_none=True)
            s_out = model(x)
            s_out.backward(one_hot, create_graph=True)  # second order through the whole student
            a_s, g_s = acts["s"], acts["s"].grad
            m_t = F.relu((g_t.sum((2, 3), keepdim=True) * a_t).sum(1))
            m_s = F.relu((g_s.sum((2, 3), keepdim=True) * a_s).sum(1))
            model.zero_grad(set_to_none=True)
            kd = multilabel_kd_loss(s_out, t_out.detach(), y)
            loss = kd + lam * normalized_distance(m_t, m_s)
        finally:
            h_t.remove()
            h_s.remove()
        return loss, {}

    return step


def vgg_setup(args):
    """The small VGG teacher, its /divisor students, and the three steps."""
    teacher = create_model("vgg", num_classes=8, width=args.teacher_width).eval()
    for p in teacher.parameters():
        p.requires_grad_(True)
    students = {k: create_model("vgg", num_classes=8, width=args.teacher_width,
                                width_divisor=args.divisor) for k in ("kd", "ours", "public")}
    layer_t, layer_s = teacher.last_relu_name(), students["kd"].last_relu_name()
    return teacher, students, {
        "kd": DistillStep(teacher, None), "ours": DistillStep(teacher, WCAM(drop=0.3)),
        "public": public_style_step(teacher, students["public"], layer_t, layer_s)}


def vit_setup():
    """deit_tiny teacher and students at 64 px (multi-label heads, like the scenes')."""
    def vit():
        return create_model("timm", arch="deit_tiny_patch16_224", num_classes=8, input_size=64,
                            single_label=False)
    teacher = vit().eval()
    students = {k: vit() for k in ("kd", "ours", "at")}
    return teacher, students, {
        "kd": DistillStep(teacher, None), "ours": DistillStep(teacher, WCAM(drop=0.3)),
        "at": DistillStep(teacher, AttentionTransfer())}


def main() -> None:
    warnings.filterwarnings("ignore", message="Using backward\(\) with create_graph=True")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher-width", type=int, default=32)
    ap.add_argument("--divisor", type=float, default=4.0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vit", action="store_true", help="a ViT (deit_tiny) instead of the VGG")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    teacher, students, steps = (vit_setup() if args.vit else vgg_setup(args))
    opts = {k: torch.optim.SGD(s.parameters(), lr=0.01, momentum=0.9) for k, s in students.items()}
    x = torch.rand(args.batch, 3, 64, 64)
    y = (torch.rand(args.batch, 8) > 0.7).float()
    times = {k: [] for k in steps}
    for i in range(args.steps + 2):
        for k, step in steps.items():
            s = students[k].train()
            t0 = time.perf_counter()
            loss, _ = step(s, x, y)
            opts[k].zero_grad(set_to_none=True)
            loss.backward()
            opts[k].step()
            if i >= 2:  # warm-up
                times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    model = "deit_tiny (ViT)" if args.vit else \
        f"VGG width {args.teacher_width}, student /{args.divisor:g}"
    print(f"{model}, batch {args.batch}, 64 px, {args.steps} steps, torch threads "
          f"{torch.get_num_threads()}")
    for k, v in med.items():
        print(f"  {k:7s} {v * 1000:7.1f} ms/step   {v / med['kd']:.2f}x KD")


if __name__ == "__main__":
    main()
