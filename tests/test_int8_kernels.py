"""The int8 export computes what its fake-quant model does on every x86 kernel path: weights on
the int16-safe grid, a worst case that saturates pair sums without it, the CPU note, legacy
checkpoints, and the report's per-model probabilities."""

import json

import pytest
import torch
from torch import nn

from attrpreserve.compress import (convert_int8, int8_kernel_note, int16_safe_weight, prepare_qat,
                                   prediction_agreement)
from attrpreserve.loading import load_checkpoint
from attrpreserve.models import class_probabilities, create_model, save_checkpoint

pytestmark = pytest.mark.numerics

SIZE = 16


def _worst_case_vgg():
    """A VGG whose second conv sees activations at the top of their range (level 255) and has
    weights of one sign at the top of theirs: full-range u8 x s8 pair sums (2 x 255 x 127)
    exceed int16, which the vpmaddubsw kernels of CPUs without VNNI saturate."""
    torch.manual_seed(0)
    model = create_model("vgg", num_classes=3, width=4, input_size=SIZE, dropout=0.0)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        for conv in convs:
            conv.weight.copy_(torch.rand_like(conv.weight) * 0.5 + 0.5)  # positive, near max
    return model.eval()


def test_safe_weight_is_the_largest_that_fits_int16():
    # u8 x s8 products are added in pairs: 2 x (2^act_bits - 1) x w must fit in int16.
    for act_bits in range(2, 9):
        cap, top = int16_safe_weight(act_bits), 2 ** act_bits - 1
        assert 2 * top * cap <= 32767 < 2 * top * (cap + 1)
    assert int16_safe_weight(8) == 64 and int16_safe_weight(7) == 129  # 7 bits: no cap


@pytest.mark.parametrize("bits,expected", [(8, 64), (7, 63), (4, 7)])
def test_weight_levels_stay_within_the_safe_grid(bits, expected):
    qat = prepare_qat(_worst_case_vgg(), bits=bits, calibration=torch.rand(4, 3, SIZE, SIZE))
    levels = convert_int8(qat).features[0].weight().int_repr()
    # The weights are positive, so the largest lands on the top level: 8 bits capped at 64;
    # 7 bits ([-64, 63]) and 4 bits ([-8, 7]) already fit and keep their own range.
    assert int(levels.abs().max()) == expected
    legacy = prepare_qat(_worst_case_vgg(), bits=bits, int16_safe=False,
                         calibration=torch.rand(4, 3, SIZE, SIZE))
    assert int(convert_int8(legacy).features[0].weight().int_repr().abs().max()) == \
        {8: 127, 7: 63, 4: 7}[bits]


def test_int8_equals_fake_quant_on_the_worst_case():
    """Exact integer sums on every kernel path: int8 and fake quant then differ only by the
    requantization rounding of each layer (a step at a time, compounding over four layers)."""
    model = _worst_case_vgg()
    x = torch.rand(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    x[:, :, : SIZE // 2] = 1.0  # saturated input: level 255 after the input quantizer
    qat = prepare_qat(model, calibration=x)
    agree = prediction_agreement(qat, convert_int8(qat), x)
    step = float(qat.classifier[-1].activation_post_process.scale)
    assert agree["max_abs_logit_diff"] <= 4 * step, agree["max_abs_logit_diff"] / step


def test_kernel_note_names_the_cpu_feature():
    model = create_model("vgg", num_classes=3, width=4, input_size=SIZE)
    safe, full = prepare_qat(model), prepare_qat(model, int16_safe=False)
    no_vnni = {"capability": "AVX2", "vnni": False, "onednn_max_cpu_isa": None}
    vnni = {"capability": "AVX512", "vnni": True, "onednn_max_cpu_isa": None}
    capped = {**vnni, "onednn_max_cpu_isa": "AVX2"}
    assert int8_kernel_note(safe, 1.0, no_vnni) is None
    assert int8_kernel_note(full, 1.0, vnni) is None
    for cpu in (no_vnni, capped):
        note = int8_kernel_note(full, 1.0, cpu)
        assert "VNNI" in note and "int16_safe=True" in note
    assert int8_kernel_note(prepare_qat(model, bits=7, int16_safe=False), 1.0, no_vnni) is None
    note = int8_kernel_note(safe, 0.9, vnni)
    assert "90.0%" in note and "AVX512" in note


def test_checkpoints_without_the_option_rebuild_with_the_full_range(tmp_path):
    qat = prepare_qat(_worst_case_vgg(), int16_safe=False,
                      calibration=torch.rand(4, 3, SIZE, SIZE))
    save_checkpoint(tmp_path, qat)
    sidecar = tmp_path / "model.json"
    meta = json.loads(sidecar.read_text())
    del meta["model"]["rebuild"][-1]["int16_safe"]  # as written before the option existed
    sidecar.write_text(json.dumps(meta))
    loaded, _ = load_checkpoint(tmp_path)
    assert loaded.features[0].weight_fake_quant.activation_post_process.quant_max == 127
    x = torch.rand(4, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), qat.eval()(x))  # same weights, same path


def test_probabilities_are_the_models_own():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    multi = nn.Linear(1, 3)
    torch.testing.assert_close(class_probabilities(multi, logits), torch.sigmoid(logits))
    single = nn.Linear(1, 3)
    single.single_label = True
    p = class_probabilities(single, logits)
    torch.testing.assert_close(p.sum(1), torch.ones(2))
    torch.testing.assert_close(p[0, 0], 1 / (1 + torch.exp(torch.tensor(-2.0))
                                              + torch.exp(torch.tensor(-3.0))))


def test_report_maps_carry_softmax_probability_for_single_label_models():
    from attrpreserve.report import _maps_of

    torch.manual_seed(0)
    model = create_model("vgg", num_classes=3, width=4, input_size=SIZE).eval()
    x, classes = torch.rand(2, 3, SIZE, SIZE), torch.tensor([0, 2])
    with torch.no_grad():
        logits = model(x)
    _, probs = _maps_of(model, "gradcam", x, classes, None, (SIZE, SIZE))
    torch.testing.assert_close(probs, torch.sigmoid(logits)[[0, 1], classes])
    model.single_label = True
    _, probs = _maps_of(model, "gradcam", x, classes, None, (SIZE, SIZE))
    torch.testing.assert_close(probs, torch.softmax(logits, 1)[[0, 1], classes])
