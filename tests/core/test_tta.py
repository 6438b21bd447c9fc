"""TTA transforms invert exactly; TTA of an equivariant predictor equals the plain prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_neuroedge.config import NormConfig, TileConfig, TTAConfig
from napari_neuroedge.inference.predict import TorchPredictor, predict_array
from napari_neuroedge.inference.tta import DIHEDRAL_8, SEED_6, TRANSFORMS, transform_names, tta_predict


@pytest.mark.parametrize("name", DIHEDRAL_8)
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_inverse_composed_with_forward_is_identity(name, backend):
    x = np.random.default_rng(0).random((2, 1, 9, 9)).astype(np.float32)
    fwd, inv = TRANSFORMS[name]
    arr = x if backend == "numpy" else torch.from_numpy(x)
    back = np.asarray(inv(fwd(arr)))
    np.testing.assert_array_equal(back, x)
    if name != "identity":
        assert not np.array_equal(np.asarray(fwd(arr)), x)


def test_sets_are_the_seed_six_and_the_dihedral_eight():
    assert transform_names(6) == ("identity", "hflip", "vflip", "rot90", "rot180", "rot270")
    assert len(set(transform_names(8))) == 8
    # the 8 transforms are distinct maps of a generic image
    x = np.arange(16).reshape(4, 4)
    assert len({TRANSFORMS[n][0](x).tobytes() for n in DIHEDRAL_8}) == 8
    with pytest.raises(ValueError, match="1 \\(off\\), 6"):
        transform_names(4)


def test_equivariant_predictor_unchanged_and_variance_zero():
    x = np.random.default_rng(1).random((3, 1, 16, 16)).astype(np.float32)
    square = lambda b: b**2  # noqa: E731  pointwise -> equivariant to every transform
    for n in (6, 8):
        out = tta_predict(square, x, n=n, variance=True)
        np.testing.assert_allclose(out[:, :1], x**2, atol=1e-6)
        np.testing.assert_allclose(out[:, 1:], 0, atol=1e-10)


def test_non_equivariant_predictor_is_averaged_over_transforms():
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[..., 0, 0] = 1.0

    def left_column(b):  # marks column 0 only: not flip-equivariant
        out = np.zeros_like(b)
        out[..., :, 0] = 1.0
        return out

    out = tta_predict(left_column, x, n=6)
    # after inversion: identity and vflip mark column 0, hflip and rot180 column 3,
    # rot90 (np.rot90, counter-clockwise) row 0 and rot270 row 3
    expected = np.zeros((4, 4), np.float32)
    expected[:, 0] += 2 / 6
    expected[:, 3] += 2 / 6
    expected[0, :] += 1 / 6
    expected[3, :] += 1 / 6
    np.testing.assert_allclose(out[0, 0], expected, atol=1e-6)


def test_torch_predictor_tta_matches_numpy_tta():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    x = np.random.default_rng(2).random((2, 1, 16, 16)).astype(np.float32)
    device_tta = TorchPredictor(net, "cpu", tta=TTAConfig(n=8, variance=True))(x)
    host_tta = tta_predict(TorchPredictor(net, "cpu"), x, 8, True)
    np.testing.assert_allclose(device_tta, host_tta, atol=1e-6)
    assert device_tta.shape == (2, 2, 16, 16) and device_tta[:, 1].max() > 0


def test_tta_through_tiling_keeps_shape():
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    img = np.random.default_rng(3).random((2, 70, 90)).astype(np.float32)
    out = predict_array(img, TorchPredictor(net, "cpu", tta=TTAConfig(n=6, variance=True)),
                        tile=TileConfig(tile=32), norm=NormConfig(mode="meanstd", mean=0, std=1))
    assert out.shape == (2, 2, 70, 90)


def test_chunked_tta_forward_equals_one_pass():
    x = np.random.default_rng(4).random((3, 1, 8, 8)).astype(np.float32)
    calls = []

    def f(b):
        calls.append(len(b))
        return b * np.arange(8, dtype=np.float32)  # column-dependent: not equivariant

    one = tta_predict(f, x, n=8, variance=True)
    assert calls == [24]
    calls.clear()
    chunked = tta_predict(f, x, n=8, variance=True, max_batch=5)
    assert calls == [5, 5, 5, 5, 4]
    np.testing.assert_allclose(chunked, one, atol=1e-7)
