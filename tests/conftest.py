import pytest
import torch

# Comparing two *different* computations of the same floats (a batch vs one item at a time,
# chunked vs whole, a hand formula vs the library, fused vs folded weights, another batch size)
# meets rounding that depends on the order of the operations: summation order, SIMD width and
# blocking of the matmul / convolution kernels, which the CPU (AVX2, AVX-512, VNNI), the batch
# size and the thread count choose.  That rounding scales with the magnitude of the values
# computed, not with each element (an element that is a small difference of large terms carries
# the rounding of the large terms), so the tolerance is absolute: ``rel * max |expected|``.
# ``rel``: float32 1e-5 (~80 units of roundoff), float64 1e-12; deep networks, where the
# rounding compounds layer after layer, pass 1e-4.  Exact equality stays right only where the
# same code runs on the same data (save / load round trips, one call repeated, "original
# untouched").  `make test-kernels` reruns the tests marked ``numerics`` on other kernel paths.
REORDER_REL = {torch.float64: 1e-12, torch.float32: 1e-5}


def assert_close_reordered(actual, expected, rel=None, scale=None, msg=None):
    """``actual`` equals ``expected`` up to reordered floating-point arithmetic: within
    ``rel * scale`` everywhere.  ``rel`` defaults to :data:`REORDER_REL` of ``expected``'s dtype;
    pass the precision the values were *computed* in where it differs (float32 model outputs
    cast to float64).  ``scale`` defaults to ``max |expected|``; pass the magnitude of the terms
    where the values compared are a cancellation of larger ones (a centred sum)."""
    actual = torch.as_tensor(actual).detach()
    expected = torch.as_tensor(expected).detach()
    if rel is None:
        rel = REORDER_REL[expected.dtype]
    if scale is None:
        scale = float(expected.abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=0,
                               atol=rel * float(torch.as_tensor(scale).detach()),
                               msg=None if msg is None else lambda text: f"{msg}\n{text}")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    yield


def random_photo_folders(root, folders, per_class: int = 1, shape=(40, 48, 3), seed: int = 0):
    """``root`` with one folder of ``per_class`` random RGB photos per name in ``folders``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for folder in folders:
        (root / folder).mkdir()
        for k in range(per_class):
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(
                root / folder / f"{k}.png")
    return root

