"""One home per model family: a family is one card plus one registration, and everything that
needs to know about a model (matched layer, head type, students, LRP canonizers, QAT, pruning,
checkpoints) reads the card."""

import pytest
import torch
from torch import nn

from attrpreserve import explain
from attrpreserve.attribution.lrp import default_canonizers
from attrpreserve.compress.quantize import prepare_qat
from attrpreserve.compress.structured import prune_channels
from attrpreserve.loading import load_checkpoint
from attrpreserve.models import (FAMILIES, MODELS, Family, class_probabilities, create_model,
                                 default_layer, family_of, is_single_label, register_family,
                                 save_checkpoint)
from attrpreserve.models.family import unregister_family
from attrpreserve.models.students import STUDENTS, create_student


class Toy(nn.Module):
    """A small conv classifier whose matched layer no rule or probe would pick ("mid")."""

    def __init__(self, num_classes: int, width: int = 8, input_size: int = 32):
        super().__init__()
        self.width = width
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.mid = nn.ReLU()
        self.conv = nn.Conv2d(width, width, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.act(self.conv(self.mid(self.stem(x)))).mean((2, 3)))


def toy(num_classes: int, width: int = 8, input_size: int = 32) -> Toy:
    return Toy(num_classes, width, input_size)


@pytest.fixture
def toy_family():
    """The whole of a new family: its builder and one registration (removed after the test)."""
    calls = []
    card = Family("toy", builders={"toy": toy}, label="the toy family",
                  matched_layer=lambda m: "mid", single_label=lambda m: True,
                  students={"toy-narrow": ("toy", {"width": 4})},
                  canonizers=lambda m: ["toy canonizer"],
                  after_pruning=lambda m: calls.append(m.conv.out_channels))
    register_family(card)
    yield card, calls
    unregister_family("toy")
    assert "toy" not in MODELS and "toy" not in FAMILIES


def test_a_registered_family_is_used_everywhere(toy_family, tmp_path):
    card, calls = toy_family
    torch.manual_seed(0)
    model = create_model("toy", num_classes=3)
    assert family_of(model) is card and default_layer(model) == "mid"
    logits = model(torch.rand(2, 3, 32, 32))
    probs = class_probabilities(model, logits)  # single-label: a softmax per image
    assert torch.allclose(probs.sum(1), torch.ones(2), atol=1e-6)
    assert is_single_label(model) and default_canonizers(model) == ["toy canonizer"]
    # a student of the family, by its card's name
    assert "toy-narrow" in STUDENTS
    student = create_student("toy-narrow", num_classes=3, input_size=32)
    assert student.width == 4 and family_of(student) is card
    # Grad-CAM at the card's layer when none is named
    images = torch.rand(2, 3, 32, 32)
    maps = explain(model, images, [0, 2], resolution="layer")
    assert torch.equal(maps, explain(model, images, [0, 2], layer="mid", resolution="layer"))
    assert not torch.allclose(maps, explain(model, images, [0, 2], layer="act",
                                            resolution="layer"))
    # filter pruning keeps the family's own attributes in step through its hook
    prune_channels(model, {"stem": 0.5}, example_input=torch.rand(1, 3, 32, 32))
    assert model.stem.out_channels == 4 and calls == [8]
    # checkpoints rebuild through the registry (pruned widths replayed)
    save_checkpoint(tmp_path / "toy", model)
    loaded, _ = load_checkpoint(tmp_path / "toy")
    x = torch.rand(2, 3, 32, 32)
    assert family_of(loaded) is card and torch.allclose(loaded(x), model.eval()(x), atol=1e-5)
    # a family without QAT support is refused by name, listing those that have it
    with pytest.raises(ValueError, match="the VGG family .* got Toy, one of the toy family"):
        prepare_qat(model)


def test_instance_attributes_override_the_card():
    model = create_model("vgg", num_classes=3, width=2)
    assert not is_single_label(model) and default_layer(model) == "features.20"
    model.single_label, model.matched_layer = True, "features.2"
    assert is_single_label(model) and default_layer(model) == "features.2"


def test_models_of_no_family_fall_back_to_the_defaults():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2))
    assert family_of(model) is None and not is_single_label(model)
    assert default_layer(model) == "1"  # probed: the last 4-D map everything flows through


def test_every_registered_model_has_exactly_one_family():
    owners = {name: [f.name for f in FAMILIES.values() if name in f.builders] for name in MODELS}
    assert all(len(o) == 1 for o in owners.values()), owners
    # and torchvision classifiers built elsewhere are recognised by class
    import torchvision

    resnet = torchvision.models.resnet18(weights=None, num_classes=2)
    assert family_of(resnet).name == "torchvision" and default_layer(resnet) == "layer4"
