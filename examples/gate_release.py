"""Gate a release on its explanations from Python: audit the compressed model against the
original and fail (exit status 1) when top-1 agreement or Grad-CAM agreement is below the bar.

Runs in seconds on a CPU as written (random weights, random images). In CI, pass your checkpoint
folders or ``pretrained:`` specs and your data instead, e.g. ``attrpreserve.audit(
"pretrained:efficientnet-lite0", "runs/int8", "images:my-photos", require=...)``.
"""

import copy
import sys

import torch
import torchvision
from torch.nn.utils import prune

import attrpreserve

torch.manual_seed(0)
reference = torchvision.models.resnet18(num_classes=10).eval()
candidate = copy.deepcopy(reference)  # the model to release: 10% of its conv weights pruned
convs = [(m, "weight") for m in candidate.modules() if isinstance(m, torch.nn.Conv2d)]
prune.global_unstructured(convs, pruning_method=prune.L1Unstructured, amount=0.1)

# Batches of (images, multi-hot labels, masks or None), in a fixed order; here each image is
# labelled with the reference's top-1 class, the class whose explanation is compared.
images = torch.rand(16, 3, 64, 64)
with torch.no_grad():
    labels = torch.nn.functional.one_hot(reference(images).argmax(1), 10).float()
batches = [(images[i:i + 8], labels[i:i + 8], None) for i in (0, 8)]

# The point estimate of top-1 agreement, and the lower end of Grad-CAM Spearman's 95% interval
result = attrpreserve.audit(reference, candidate, batches, n_boot=200,
                            require="top1_agreement>=0.9,gradcam:spearman.low>=0.8")
rho = result.agreement("spearman")
print(result.headline())
print(f"Spearman {rho.value:.3f} (95% CI {rho.low:.3f} to {rho.high:.3f}), "
      f"top-1 agreement {result.top1_agreement:.2f}")
for failure in result.failures:
    print(f"gate: {failure.line}", file=sys.stderr)
print("gate passed" if result.passed else "gate failed")
sys.exit(0 if result.passed else 1)
