"""bench/demo_tuning.py's ``--set``: a demo setting tried instead of the preset's."""

import importlib.util
from pathlib import Path

import pytest

from attrpreserve.pipeline import DEMOS

spec = importlib.util.spec_from_file_location(
    "demo_tuning", Path(__file__).resolve().parents[1] / "bench" / "demo_tuning.py")
demo_tuning = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo_tuning)


def test_set_reads_literals_and_strings():
    vit = DEMOS["vit"]
    assert demo_tuning.demo_setting(vit, "finetune_epochs=2") == ("finetune_epochs", 2)
    assert demo_tuning.demo_setting(vit, "finetune_lr=3e-4") == ("finetune_lr", 3e-4)
    assert demo_tuning.demo_setting(vit, "layer=blocks.1,blocks.2") == ("layer",
                                                                        "blocks.1,blocks.2")


@pytest.mark.parametrize("text", ["epochs=2", "finetune_epochs"])
def test_set_refuses_what_is_not_a_demo_setting(text):
    with pytest.raises(ValueError, match="finetune_epochs"):
        demo_tuning.demo_setting(DEMOS["vit"], text)
