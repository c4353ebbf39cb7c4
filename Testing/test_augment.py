"""Augmentation: the random window samples the paper's ranges and acts on raw HU; spatial
transforms keep image and label aligned."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("monai")

from LiverTumorAILib.preprocess import normalize_ct  # noqa: E402
from training.augment import PAPER_LEVEL_HU, PAPER_WIDTH_HU, RandWindowd, build_augmentation  # noqa: E402


def test_random_window_samples_paper_ranges_and_clips_raw_hu_first() -> None:
    t = RandWindowd(["image"], prob=1.0)
    t.set_random_state(seed=0)
    hu = np.linspace(-1000, 1000, 400, dtype=np.float32).reshape(1, 20, 20)
    levels, widths = [], []
    for _ in range(200):
        out = t({"image": hu})["image"]
        lo, hi = t.last_window
        level, width = (lo + hi) / 2, hi - lo
        levels.append(level)
        widths.append(width)
        # Clipped to [L - W/2, L + W/2] in HU, *then* normalised: the result is exactly the
        # engine's normalisation of the clipped HU, and saturates at the window edges.
        np.testing.assert_allclose(out, normalize_ct(np.clip(hu, lo, hi), (lo, hi)), rtol=1e-6, atol=1e-6)
        assert out.min() == pytest.approx(-np.sqrt(3), abs=1e-5) and out.max() == pytest.approx(np.sqrt(3), abs=1e-5)
    assert PAPER_LEVEL_HU[0] <= min(levels) and max(levels) <= PAPER_LEVEL_HU[1]
    assert PAPER_WIDTH_HU[0] <= min(widths) and max(widths) <= PAPER_WIDTH_HU[1]
    assert max(levels) - min(levels) > 0.8 * (PAPER_LEVEL_HU[1] - PAPER_LEVEL_HU[0])  # really spread
    assert max(widths) - min(widths) > 0.8 * (PAPER_WIDTH_HU[1] - PAPER_WIDTH_HU[0])


def test_random_window_miss_uses_inference_window() -> None:
    t = RandWindowd(["image"], prob=0.0, default_window=(-100, 400))
    hu = np.array([[[-500.0, 150.0, 900.0]]], np.float32)
    out = t({"image": hu})["image"]
    assert t.last_window == (-100.0, 400.0)
    np.testing.assert_allclose(out, normalize_ct(hu, (-100, 400)))


def _pair(shape=(1, 32, 40)):
    rng = np.random.default_rng(0)
    label = np.zeros(shape, np.int64)
    label[:, 4:14, 5:30] = 1
    label[:, 6:10, 20:27] = 2
    hu = np.where(label == 2, 250.0, np.where(label == 1, 60.0, -200.0)).astype(np.float32)
    return hu + rng.normal(0, 1, shape).astype(np.float32), label


def _aligned(image: np.ndarray, label: np.ndarray) -> float:
    """Fraction of voxels where thresholding the (normalised) image gives back the label."""
    lo, hi = normalize_ct(np.array([0.0, 150.0]), (-100, 400))
    recon = np.where(image > hi, 2, np.where(image > lo, 1, 0))
    return float((recon == label).mean())


@pytest.mark.parametrize("axes", [[0], [1], [0, 1]])
def test_flips_keep_image_and_label_aligned(axes) -> None:
    hu, label = _pair()
    aug = build_augmentation({"random_window": None, "rotate_prob": 0, "zoom_prob": 0, "intensity_prob": 0,
                              "flip_axes": axes, "flip_prob": 1.0}, seed=3)
    out = aug({"image": hu, "label": label})
    img, lab = np.asarray(out["image"]), np.asarray(out["label"])
    assert not np.array_equal(lab, label)  # it did flip
    assert _aligned(img, lab) == 1.0
    np.testing.assert_array_equal(lab, np.flip(label, axis=[a + 1 for a in axes]))


def test_full_pipeline_keeps_alignment_and_label_values() -> None:
    hu, label = _pair((1, 48, 48))
    aug = build_augmentation({"random_window": None, "flip_axes": [1], "rotate_prob": 1.0, "zoom_prob": 1.0,
                              "elastic_prob": 1.0, "intensity_prob": 0.0}, seed=7)
    for _ in range(3):
        out = aug({"image": hu, "label": label})
        img, lab = np.asarray(out["image"]), np.asarray(out["label"])
        assert img.shape == hu.shape and lab.shape == label.shape
        assert set(np.unique(lab)) <= {0, 1, 2}  # nearest interpolation: no blended labels
        assert _aligned(img, lab) > 0.9  # bilinear edges only
