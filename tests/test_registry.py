"""The one Registry helper: registration, metadata, the standard unknown-name error, and every
project registry built on it."""

import pytest

from attrpreserve.registry import Registry, UnknownName


def test_register_as_call_and_decorator_with_metadata():
    reg = Registry("widget")

    @reg.register("b", size=2)
    def b():
        return "b"

    reg.register("a", None, size=1)  # None is a valid entry ("none" matching)
    assert b() == "b" and reg["b"] is b and reg["a"] is None
    assert list(reg) == ["b", "a"] and len(reg) == 2 and "a" in reg and "c" not in reg
    assert reg.meta("b") == {"size": 2}
    reg.meta("b")["size"] = 5  # a copy
    assert reg.meta("b") == {"size": 2}
    assert reg.names(size=1) == ["a"] and reg.names() == ["b", "a"]


def test_unknown_names_fail_the_same_way_everywhere():
    reg = Registry("widget")
    reg.register("gradcam", 1)
    reg.register("gradient", 2)
    with pytest.raises(UnknownName) as err:
        reg["gradcan"]
    assert str(err.value) == ("unknown widget 'gradcan' (did you mean 'gradcam'?); known: "
                              "gradcam, gradient")
    assert isinstance(err.value, ValueError) and isinstance(err.value, KeyError)
    with pytest.raises(ValueError, match="unknown widget 'x' in spec 'x:1'; known: gradcam"):
        reg.check("x", " in spec 'x:1'")
    assert reg.check("gradient") == "gradient"
    with pytest.raises(ValueError, match="unknown widget 'x'"):
        reg.meta("x")


def test_every_project_registry_is_one():
    from attrpreserve.attribution import EXPLAINERS
    from attrpreserve.compress import IMPORTANCES
    from attrpreserve.data import DATASETS
    from attrpreserve.matching import MATCHERS
    from attrpreserve.models import MODELS
    from attrpreserve.loading import REBUILD_STEPS
    from attrpreserve.recipes import RECIPES
    from attrpreserve.state import EXTRAS

    for reg in (EXPLAINERS, IMPORTANCES, DATASETS, MATCHERS, MODELS, REBUILD_STEPS, RECIPES,
                EXTRAS):
        assert isinstance(reg, Registry) and len(reg) > 0
    assert set(MATCHERS) == {"none", "at", "wcam", "lrp"}
    assert EXPLAINERS.names(differentiable=True) == ["gradcam"]
    assert {"qat", "channel_shapes"} <= set(REBUILD_STEPS)


def test_unregister():
    reg = Registry("widget")
    reg.register("a", 1)
    reg.unregister("a")
    assert "a" not in reg
    with pytest.raises(UnknownName):
        reg.unregister("a")
