"""Tests for training augmentation (crop, flip/rotation scheme, elastic, contrast) and large-image windows."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_neuroedge.config import AugmentConfig
from napari_neuroedge.training.augment import (
    FLIP_ROT_NAMES,
    apply_flip_rot,
    augment_sample,
    crop_windows_with_corners,
    elastic_field,
    elastic_warp,
    flip_rot_choice,
    apply_gamma,
    random_crop,
    rescale_sample,
)

NO_AUG = AugmentConfig(flip_rot=False, contrast_p=0.0, elastic_p=0.0, crop=0)


def _label_sample(h: int = 40, w: int = 40, seed: int = 0) -> dict[str, np.ndarray]:
    """A random multi-valued label, an image that is a function of it, a mask and a weight map."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 5, size=(h, w)).astype(np.uint8)
    return {
        "image": label.astype(np.float32) * 1.0,
        "label": label,
        "mask": (label > 0).astype(np.uint8),
        "weight": (label.astype(np.float32) * 2.5),
    }


# ----------------------------------------------------------------------------------- flip / rotation


def test_flip_rot_choice_boundaries_exact() -> None:
    assert flip_rot_choice(0.0) == "hflip"
    assert flip_rot_choice(np.nextafter(2 / 8, 0)) == "hflip"
    assert flip_rot_choice(2 / 8) == "vflip"
    assert flip_rot_choice(np.nextafter(3 / 8, 0)) == "vflip"
    assert flip_rot_choice(3 / 8) == "rot90"
    assert flip_rot_choice(4 / 8) == "rot180"
    assert flip_rot_choice(5 / 8) == "rot270"
    assert flip_rot_choice(np.nextafter(6 / 8, 0)) == "rot270"
    assert flip_rot_choice(6 / 8) == "none"
    assert flip_rot_choice(np.nextafter(1.0, 0)) == "none"


def test_flip_rot_frequencies_over_80k_draws() -> None:
    rng = np.random.default_rng(123)
    names = [flip_rot_choice(u) for u in rng.random(80_000)]
    counts = {n: names.count(n) / len(names) for n in FLIP_ROT_NAMES}
    expected = {"hflip": 2 / 8, "vflip": 1 / 8, "rot90": 1 / 8, "rot180": 1 / 8, "rot270": 1 / 8, "none": 2 / 8}
    for name, p in expected.items():
        assert abs(counts[name] - p) < 0.01, (name, counts[name])


def test_apply_flip_rot_known_values() -> None:
    a = np.array([[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(apply_flip_rot(a, "hflip"), [[3, 2, 1], [6, 5, 4]])
    np.testing.assert_array_equal(apply_flip_rot(a, "vflip"), [[4, 5, 6], [1, 2, 3]])
    np.testing.assert_array_equal(apply_flip_rot(a, "rot90"), [[3, 6], [2, 5], [1, 4]])
    np.testing.assert_array_equal(apply_flip_rot(a, "rot180"), [[6, 5, 4], [3, 2, 1]])
    np.testing.assert_array_equal(apply_flip_rot(a, "rot270"), [[4, 1], [5, 2], [6, 3]])
    np.testing.assert_array_equal(apply_flip_rot(a, "none"), a)
    with pytest.raises(ValueError):
        apply_flip_rot(a, "transpose")


def test_each_flip_rot_keeps_image_and_label_aligned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force every transform in turn through augment_sample; image == label afterwards, and it really moved."""
    sample = _label_sample(24, 24)
    cfg = dataclasses.replace(NO_AUG, flip_rot=True)
    u_for = {"hflip": 0.1, "vflip": 0.3, "rot90": 0.4, "rot180": 0.55, "rot270": 0.7, "none": 0.9}
    for name, u in u_for.items():

        class FixedU:
            def random(self) -> float:
                return u

        out = augment_sample(sample, FixedU(), cfg)  # type: ignore[arg-type]
        np.testing.assert_array_equal(out["image"], out["label"].astype(np.float32))
        np.testing.assert_array_equal(out["label"], apply_flip_rot(sample["label"], name))
        np.testing.assert_array_equal(out["mask"], (out["label"] > 0).astype(np.uint8))
        np.testing.assert_array_equal(out["weight"], out["label"].astype(np.float32) * 2.5)


def test_random_augment_keeps_alignment_without_elastic() -> None:
    sample = _label_sample(50, 37)
    cfg = AugmentConfig(flip_rot=True, contrast_p=0.0, elastic_p=0.0, crop=32)
    for seed in range(30):
        out = augment_sample(sample, np.random.default_rng(seed), cfg)
        assert out["image"].shape == (32, 32)
        assert out["image"].dtype == np.float32 and out["label"].dtype == np.uint8
        assert out["weight"].dtype == np.float32 and out["mask"].dtype == np.uint8
        np.testing.assert_array_equal(out["image"], out["label"].astype(np.float32))
        np.testing.assert_array_equal(out["weight"], out["label"].astype(np.float32) * 2.5)


# ------------------------------------------------------------------------------------------------ crop


def test_random_crop_is_a_window_of_the_input() -> None:
    yy, xx = np.mgrid[0:30, 0:40]
    sample = {"image": (yy * 100 + xx).astype(np.float32), "label": (yy * 100 + xx).astype(np.int32)}
    out = random_crop(sample, 16, np.random.default_rng(5))
    y0, x0 = divmod(int(out["label"][0, 0]), 100)
    assert 0 <= y0 <= 14 and 0 <= x0 <= 24
    np.testing.assert_array_equal(out["label"], sample["label"][y0 : y0 + 16, x0 : x0 + 16])
    np.testing.assert_array_equal(out["image"], out["label"].astype(np.float32))


def test_random_crop_reflect_pads_small_images() -> None:
    label = np.arange(5 * 6, dtype=np.uint8).reshape(5, 6)
    sample = {"image": label.astype(np.float32), "label": label}
    out = random_crop(sample, 8, np.random.default_rng(0))
    assert out["label"].shape == (8, 8) and out["image"].shape == (8, 8)
    assert set(np.unique(out["label"])) <= set(np.unique(label))
    np.testing.assert_array_equal(out["image"], out["label"].astype(np.float32))
    # Height 5 -> 8: pad 1 before, 2 after (reflect): rows 1,0,1,2,3,4,3,2; width 6 -> 8: pad 1, 1.
    padded = np.pad(label, ((1, 2), (1, 1)), mode="reflect")
    np.testing.assert_array_equal(out["label"], padded)


# --------------------------------------------------------------------------------------------- elastic


def test_elastic_field_shape_scale_and_smoothness() -> None:
    dy, dx = elastic_field((64, 48), 3, 10.0, np.random.default_rng(1))
    assert dy.shape == (64, 48) and dx.shape == (64, 48) and dy.dtype == np.float32
    assert 1.0 < np.abs(dy).max() < 60.0 and 1.0 < np.abs(dx).max() < 60.0
    # Smooth: neighbouring pixels move almost identically (a 3x3 lattice over 64 px).
    assert np.abs(np.diff(dy, axis=0)).max() < 2.0 and np.abs(np.diff(dx, axis=1)).max() < 2.0
    # Corners carry the lattice values exactly (cubic spline interpolates).
    rng = np.random.default_rng(1)
    coarse_y = rng.normal(0, 10.0, size=(3, 3))
    assert dy[0, 0] == pytest.approx(coarse_y[0, 0], abs=1e-4)
    assert dy[-1, -1] == pytest.approx(coarse_y[-1, -1], abs=1e-4)


def test_elastic_zero_field_is_identity() -> None:
    sample = _label_sample(20, 20)
    zero = np.zeros((20, 20), np.float32)
    out = elastic_warp(sample, zero, zero)
    np.testing.assert_allclose(out["image"], sample["image"], atol=1e-4)
    np.testing.assert_array_equal(out["label"], sample["label"])


def test_elastic_integer_shift_moves_label_by_that_shift() -> None:
    label = np.zeros((20, 20), np.uint8)
    label[5:9, 6:10] = 3
    sample = {"image": label.astype(np.float32), "label": label}
    out = elastic_warp(sample, np.full((20, 20), 2.0), np.full((20, 20), -1.0))
    # Output pixel (y, x) samples input (y + 2, x - 1): the block moves up 2 and right 1.
    expected = np.zeros_like(label)
    expected[3:7, 7:11] = 3
    np.testing.assert_array_equal(out["label"], expected)


def test_elastic_nearest_label_keeps_only_original_values() -> None:
    sample = _label_sample(48, 48)
    sample["tube"] = np.isin(sample["label"], (1, 3))  # bool map too
    cfg = AugmentConfig(flip_rot=True, contrast_p=0.0, elastic_p=1.0, elastic_sigma=6.0, crop=32)
    changed = 0
    for seed in range(5):
        out = augment_sample(sample, np.random.default_rng(seed), cfg)
        assert set(np.unique(out["label"])) <= {0, 1, 2, 3, 4}
        assert set(np.unique(out["weight"])) <= {0.0, 2.5, 5.0, 7.5, 10.0}
        assert out["tube"].dtype == bool and out["label"].dtype == np.uint8
        np.testing.assert_array_equal(out["mask"], (out["label"] > 0).astype(np.uint8))
        np.testing.assert_array_equal(out["tube"], np.isin(out["label"], (1, 3)))
        changed += int(np.any(out["image"] != out["label"].astype(np.float32)))
    assert changed == 5  # bicubic resampling of a noisy image does change values


# -------------------------------------------------------------------------------- contrast, seeding


def test_contrast_only_touches_image_within_factor_range() -> None:
    sample = _label_sample(16, 16)
    sample["image"] = np.full((16, 16), 2.0, np.float32)
    cfg = AugmentConfig(flip_rot=False, contrast_p=1.0, contrast_low=0.9, contrast_high=1.1, elastic_p=0.0, crop=0)
    factors = []
    for seed in range(200):
        out = augment_sample(sample, np.random.default_rng(seed), cfg)
        np.testing.assert_array_equal(out["label"], sample["label"])
        np.testing.assert_array_equal(out["weight"], sample["weight"])
        np.testing.assert_array_equal(out["mask"], sample["mask"])
        assert out["image"].dtype == np.float32
        f = out["image"] / 2.0
        assert np.ptp(f) == 0.0
        factors.append(float(f[0, 0]))
    assert min(factors) >= 0.9 - 1e-6 and max(factors) <= 1.1 + 1e-6
    assert max(factors) - min(factors) > 0.15  # really random over the range
    off = augment_sample(sample, np.random.default_rng(0), dataclasses.replace(cfg, contrast_p=0.0))
    np.testing.assert_array_equal(off["image"], sample["image"])


def test_contrast_probability_is_respected() -> None:
    sample = {"image": np.ones((8, 8), np.float32)}
    cfg = AugmentConfig(flip_rot=False, contrast_p=0.3, elastic_p=0.0, crop=0)
    rng = np.random.default_rng(7)
    hits = sum(bool(np.any(augment_sample(sample, rng, cfg)["image"] != 1.0)) for _ in range(2000))
    assert abs(hits / 2000 - 0.3) < 0.04


# ----------------------------------------------------------------------------- transfer augmentation


def test_rescale_by_two_halves_a_stripe_pattern_and_keeps_labels() -> None:
    # Vertical stripes 4 px wide (period 8): shrunk by 2 they are 2 px wide (period 4).
    x = np.arange(64)
    label = np.tile(((x // 4) % 2).astype(np.uint8), (64, 1))
    sample = {"image": label.astype(np.float32), "label": label}
    out = rescale_sample(sample, 32)
    assert out["image"].shape == out["label"].shape == (32, 32)
    np.testing.assert_array_equal(out["label"][0], ((np.arange(32) // 2) % 2).astype(np.uint8))
    assert set(np.unique(out["label"])) <= {0, 1}
    # the image follows its label (low-passed, so not exactly 0/1, but on the right side of 0.5)
    assert np.all((out["image"] > 0.5) == (out["label"] == 1))


def test_rescale_to_larger_magnifies_around_the_centre() -> None:
    img = np.zeros((32, 32), np.float32)
    img[14:18, 14:18] = 1.0
    out = rescale_sample({"image": img, "label": (img > 0).astype(np.uint8)}, 64)
    assert int(out["label"].sum()) == 4 * 16  # a 4 x 4 square becomes 8 x 8
    ys, xs = np.nonzero(out["label"])
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (28, 35, 28, 35)


def test_scale_augmentation_draws_factors_in_range_and_returns_the_crop_size() -> None:
    rng = np.random.default_rng(0)
    x = np.arange(256)
    label = np.tile(((x // 8) % 2).astype(np.uint8), (256, 1))  # stripes 8 px wide
    sample = {"image": label.astype(np.float32), "label": label}
    cfg = dataclasses.replace(NO_AUG, crop=64, scale_p=1.0, scale_low=0.5, scale_high=2.0)
    widths = []
    for _ in range(200):
        out = augment_sample(sample, rng, cfg)
        assert out["label"].shape == (64, 64)
        row = out["label"][32].astype(int)
        edges = np.flatnonzero(np.diff(row))
        if len(edges) >= 3:
            widths.append(float(np.median(np.diff(edges))))
    assert min(widths) >= 8 / 2.0 - 1 and max(widths) <= 8 * 2.0 + 1
    assert max(widths) / min(widths) > 2.5  # both ends of the range are drawn


def test_gamma_bends_the_normalised_range_only() -> None:
    img = np.array([-0.2, 0.0, 0.25, 0.5, 1.0, 1.3], np.float32)
    out = apply_gamma(img, 2.0)
    np.testing.assert_allclose(out, [-0.2, 0.0, 0.0625, 0.25, 1.0, 1.3], atol=1e-6)
    assert np.all(np.diff(apply_gamma(np.linspace(-1, 2, 301).astype(np.float32), 0.7)) >= 0)


def test_blur_and_noise_touch_only_the_image_with_their_probability() -> None:
    sample = _label_sample(32, 32)
    for field, strength in (("blur_p", "blur_sigma_high"), ("noise_p", "noise_std_high")):
        cfg = dataclasses.replace(NO_AUG, **{field: 0.4})
        rng = np.random.default_rng(3)
        hits = 0
        for _ in range(500):
            out = augment_sample(sample, rng, cfg)
            np.testing.assert_array_equal(out["label"], sample["label"])
            hits += bool(np.any(out["image"] != sample["image"]))
        assert abs(hits / 500 - 0.4) < 0.07, field
        assert getattr(cfg, strength) > 0


def test_parse_augment_sets_fields_and_rejects_unknown_ones() -> None:
    from napari_neuroedge.config import parse_augment

    cfg = parse_augment("scale_p=0.5,gamma_p=0.3,crop=128,flip_rot=false")
    assert (cfg.scale_p, cfg.gamma_p, cfg.crop, cfg.flip_rot) == (0.5, 0.3, 128, False)
    assert cfg.elastic_p == AugmentConfig().elastic_p
    with pytest.raises(ValueError, match="FIELD"):
        parse_augment("zoom=2")
    with pytest.raises(ValueError, match="crop"):
        parse_augment("crop=big")


def test_same_seed_same_output_different_seed_differs() -> None:
    rng0 = np.random.default_rng(0)
    sample = {
        "image": rng0.random((40, 40)).astype(np.float32),
        "label": (rng0.random((40, 40)) > 0.7).astype(np.uint8),
    }
    cfg = AugmentConfig(flip_rot=True, contrast_p=1.0, elastic_p=1.0, crop=32)
    a = augment_sample(sample, np.random.default_rng(42), cfg)
    b = augment_sample(sample, np.random.default_rng(42), cfg)
    c = augment_sample(sample, np.random.default_rng(43), cfg)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
    assert not np.array_equal(a["image"], c["image"])


def test_output_never_aliases_input() -> None:
    sample = _label_sample(16, 16)
    out = augment_sample(sample, np.random.default_rng(0), NO_AUG)
    for key in sample:
        np.testing.assert_array_equal(out[key], sample[key])
        assert not np.shares_memory(out[key], sample[key])


def test_mismatched_shapes_rejected() -> None:
    with pytest.raises(ValueError):
        augment_sample({"image": np.zeros((8, 8), np.float32), "label": np.zeros((8, 9), np.uint8)},
                       np.random.default_rng(0), NO_AUG)


# ------------------------------------------------------------------------------------ crop windows


def _coverage(h: int, w: int, tile: int, windows: list[tuple[int, int]]) -> np.ndarray:
    cov = np.zeros((h, w), np.int32)
    for y, x in windows:
        cov[y : y + tile, x : x + tile] += 1
    return cov


def test_crop_windows_known_case_1000_tile_400_overlap_100() -> None:
    wins = crop_windows_with_corners(1000, 1000, 400, 100)
    grid = [(y, x) for y in (0, 300, 600) for x in (0, 300, 600)]
    # Overlap bands [300, 400) and [600, 700): seams at 350 and 650 -> corner tiles start at 150 and 450.
    corners = [(y, x) for y in (150, 450) for x in (150, 450)]
    assert wins == grid + corners
    assert len(wins) == 13 and len(set(wins)) == 13
    assert _coverage(1000, 1000, 400, wins).min() >= 1


def test_crop_windows_uneven_sizes_cover_and_stay_inside() -> None:
    for h, w, tile, overlap in [(1000, 700, 256, 64), (513, 1201, 128, 32), (300, 900, 300, 50)]:
        wins = crop_windows_with_corners(h, w, tile, overlap)
        assert len(wins) == len(set(wins))
        for y, x in wins:
            assert 0 <= y <= h - tile and 0 <= x <= w - tile
        assert _coverage(h, w, tile, wins).min() >= 1
    # 1000 x 700, tile 256, overlap 64: y starts 0,192,384,576,744 (5), x starts 0,192,384,444 (4).
    wins = crop_windows_with_corners(1000, 700, 256, 64)
    assert len(wins) == 5 * 4 + 4 * 3
    # A single row of tiles (h == tile) has no four-tile corners.
    assert len(crop_windows_with_corners(300, 900, 300, 50)) == 4


def test_crop_windows_small_image_single_window() -> None:
    assert crop_windows_with_corners(100, 80, 256, 64) == [(0, 0)]
    assert crop_windows_with_corners(256, 256, 256, 64) == [(0, 0)]
    with pytest.raises(ValueError):
        crop_windows_with_corners(100, 100, 64, 64)
