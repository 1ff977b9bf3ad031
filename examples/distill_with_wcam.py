"""Distil a single-label classifier while keeping its teacher's Grad-CAM maps (WCAM).

A complete training loop: softmax distillation plus cross-entropy on the labels
(``softmax_kd_loss``), plus lambda x WCAM, the distance between the teacher's and the student's
Grad-CAM maps of the teacher's top-1 class. Runs in seconds on a CPU as written (random
weights, random images and labels); put your teacher, student and data loader in their place.
"""

import torch
import torch.nn.functional as F
import torchvision

from attrpreserve.matching import WCAM, AttributionMatcher
from attrpreserve.recipes import softmax_kd_loss

torch.manual_seed(0)
classes = 10
teacher = torchvision.models.resnet18(num_classes=classes)  # your trained model
student = torchvision.models.mobilenet_v3_small(num_classes=classes)  # the smaller one
loader = [(torch.rand(8, 3, 64, 64), torch.randint(0, classes, (8,))) for _ in range(3)]

# Each model is tapped at its last block's output (layer4, features.12); name others with
# teacher_layer= / student_layer=. The matcher keeps the teacher frozen, in eval mode.
matcher = AttributionMatcher(teacher, student, WCAM(drop=0.3))
optimizer = torch.optim.SGD(student.parameters(), lr=0.001, momentum=0.9)
lam = 100.0  # the matching weight: raise it until the maps agree, while top-1 holds

student.train()
for step, (images, labels) in enumerate(loader):
    s_logits, t_logits, match = matcher(images)
    task = softmax_kd_loss(s_logits, t_logits, F.one_hot(labels, classes).float(),
                           temperature=4.0, alpha=0.9)
    loss = task + lam * match
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print(f"step {step + 1}/{len(loader)}: loss {loss.item():.4f} (distillation "
          f"{task.item():.4f}, WCAM {match.item():.2e})")
