"""Students of another architecture than their teacher (``models.students``): torchvision
ResNet-18 / MobileNetV3-Small and narrower EfficientNet-Lite from random init, their matched
layers, checkpoints, and matching a Lite teacher's maps of another size."""

import pytest
import torch

from conftest import assert_close_reordered

from attrpreserve.attribution.gradcam import gradcam
from attrpreserve.loading import load_model
from attrpreserve.matching import AttributionMatcher
from attrpreserve.matching.losses import WCAM, AttentionTransfer, normalized_distance
from attrpreserve.models import default_layer, is_single_label, save_checkpoint
from attrpreserve.models.families.torchvision import IMAGENET_MEAN, IMAGENET_STD
from attrpreserve.models.students import STUDENTS, create_student, student_for

SIZE = 64


@pytest.mark.parametrize("arch, layer, channels", [("resnet18", "layer4", 512),
                                                    ("mobilenet_v3_small", "features.12", 576)])
def test_torchvision_students(arch, layer, channels, tmp_path):
    torch.manual_seed(0)
    student = create_student(arch, num_classes=10, input_size=SIZE)
    assert student.spec == {"name": "torchvision_imagenet",
                            "kwargs": {"arch": arch, "num_classes": 10, "input_size": SIZE}}
    assert default_layer(student) == layer and is_single_label(student)
    assert student.input_mean.flatten().tolist() == pytest.approx(IMAGENET_MEAN)
    assert student.input_std.flatten().tolist() == pytest.approx(IMAGENET_STD)
    assert "input_mean" not in student.state_dict()  # normalisation: no weights of its own
    x = torch.rand(2, 3, SIZE, SIZE)
    maps, logits = gradcam(student.eval(), x, torch.tensor([0, 1]), torch.tensor([3, 9]))
    assert logits.shape == (2, 10) and maps.shape == (2, SIZE // 32, SIZE // 32)
    save_checkpoint(tmp_path / arch, student, {"role": "compressed"})
    again, meta = load_model(tmp_path / arch)
    assert meta["role"] == "compressed" and default_layer(again) == layer
    with torch.no_grad():
        assert torch.equal(again(x), student(x))


def test_narrower_lite_student_and_student_for(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    torch.manual_seed(0)
    full = create_student("efficientnet-lite0", 10, SIZE)
    half = create_student("efficientnet-lite0", 10, SIZE, width=0.5)
    n = [sum(p.numel() for p in m.parameters()) for m in (full, half)]
    assert n[1] < 0.6 * n[0] and half.spec["kwargs"]["width"] == 0.5
    assert default_layer(half) == "_head_act"
    save_checkpoint(tmp_path / "half", half)
    again, _ = load_model(tmp_path / "half")
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(again(x), half.eval()(x))
    teacher = create_student("efficientnet-lite2", 10, SIZE)  # a restricted Lite2's spec
    for arch in ("resnet18", "mobilenet_v3_small", "efficientnet-lite0"):
        student = student_for(teacher, arch)
        assert student.spec["kwargs"]["num_classes"] == 10
        assert student.spec["kwargs"]["input_size"] == SIZE
    with pytest.raises(ValueError, match="unknown student 'vgg'"):
        create_student("vgg", 10)
    with pytest.raises(ValueError, match="no width option"):
        create_student("resnet18", 10, width=0.5)
    assert set(STUDENTS) >= {"resnet18", "mobilenet_v3_small", "efficientnet-lite0"}


@pytest.mark.numerics
def test_lite_teacher_resnet_student_matching_across_map_sizes():
    """A Lite teacher and a ResNet-18 student tapped at their own matched layers (1280 vs 512
    channels) and at a layer of twice the resolution: the losses resize the student's map to
    the teacher's, and the student gets a gradient."""
    pytest.importorskip("efficientnet_lite_pytorch")
    torch.manual_seed(0)
    teacher = create_student("efficientnet-lite1", 10, SIZE).eval()
    student = student_for(teacher, "resnet18")
    x = torch.rand(3, 3, SIZE, SIZE)
    for layer, side in (("layer4", 2), ("layer3", 4)):
        for loss in (WCAM(drop=0.0), AttentionTransfer()):
            student.zero_grad()
            matcher = AttributionMatcher(teacher, student, loss, student_layer=layer)
            s_out, t_out, match = matcher(x)
            assert s_out.shape == t_out.shape == (3, 10)
            assert torch.isfinite(match) and float(match.detach()) > 0
            match.backward()
            assert float(student.layer1[0].conv1.weight.grad.abs().sum()) > 0
    # what the resize does: the student's map brought to the teacher's grid, bilinearly
    t, s = torch.rand(2, 2, 2), torch.rand(2, 4, 4)
    small = torch.nn.functional.interpolate(s[:, None], size=(2, 2), mode="bilinear")[:, 0]
    assert_close_reordered(normalized_distance(t, s), normalized_distance(t, small))
