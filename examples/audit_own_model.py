"""Audit your own model: Grad-CAM maps of a torchvision classifier, and how far a compressed
copy of it moved them.

Runs in seconds on a CPU as written (random weights, random images). For a real audit, load
your classifier (e.g. ``torchvision.models.resnet18(weights="DEFAULT")``) and pass your photos
as that model expects them (for torchvision weights: ``weights.transforms()`` of each photo).
"""

import copy

import torch
import torchvision
from torch.nn.utils import prune

import attrpreserve
from attrpreserve.evaluate import cosine, spearman, topk_iou

torch.manual_seed(0)
reference = torchvision.models.resnet18(num_classes=10).eval()
images = torch.rand(4, 3, 64, 64)  # your photos: B x 3 x H x W

# The compressed model to audit: here the reference with 30% of its conv weights pruned.
candidate = copy.deepcopy(reference)
convs = [(m, "weight") for m in candidate.modules() if isinstance(m, torch.nn.Conv2d)]
prune.global_unstructured(convs, pruning_method=prune.L1Unstructured, amount=0.3)

# Explain the reference's top-1 class of each image, with both models. Grad-CAM is the default
# method, at the output of the model's last block (layer4 of a ResNet; layer= picks another).
with torch.no_grad():
    targets = reference(images).argmax(1)
    agree = (candidate(images).argmax(1) == targets).float().mean()
maps_ref = attrpreserve.explain(reference, images, targets)  # 4 x 64 x 64
maps_cand = attrpreserve.explain(candidate, images, targets)

# One value per image. A constant (e.g. blank) map has no ranks to agree with: Spearman 0 against
# a non-constant one, never a missing value.
rho, cos, iou = spearman(maps_ref, maps_cand), cosine(maps_ref, maps_cand), \
    topk_iou(maps_ref, maps_cand, frac=0.1)
for i in range(len(images)):
    print(f"image {i}: class {int(targets[i])}, Spearman {rho[i]:.3f}, cosine {cos[i]:.3f}, "
          f"top-10% IoU {iou[i]:.3f}")
print(f"top-1 agreement {agree:.2f}; mean cosine {cos.mean():.3f}")
