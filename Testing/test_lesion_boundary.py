"""Lesion edges moved to the image's half-contrast level (lesion_boundary.py).

Synthetic livers with a known lesion: the network's mask drawn too big, too small, a slice too
far, on the wrong image, beside a vessel; the refined mask must come back to the truth where the
image shows it and stay put where it does not."""

from __future__ import annotations

import numpy as np
import pytest

from LiverTumorAILib.lesion_boundary import BAND_MM, refine_lesion_boundaries
from LiverTumorAILib.postprocess import PostprocessConfig, clean_label_map

SPACING = (2.5, 1.0, 1.0)
SHAPE = (32, 90, 90)
CENTRE = (16, 45, 45)


def _ball(radius_mm: float, centre=CENTRE, spacing=SPACING, shape=SHAPE) -> np.ndarray:
    zz, yy, xx = np.indices(shape, dtype=np.float32)
    d2 = sum(((a - c) * s) ** 2 for a, c, s in zip((zz, yy, xx), centre, spacing))
    return d2 <= radius_mm**2


def _liver(lesion_hu: float, radius_mm: float = 9.0, noise: float = 10.0, seed: int = 0):
    """(organ, truth lesion, CT HU): a liver at 100 HU filling most of the grid with one ball."""
    rng = np.random.default_rng(seed)
    organ = np.zeros(SHAPE, bool)
    organ[2:-2, 5:-5, 5:-5] = True
    truth = _ball(radius_mm)
    hu = rng.normal(100.0, noise, SHAPE).astype(np.float32)
    hu[truth] = rng.normal(lesion_hu, noise, int(truth.sum()))
    hu[~organ] = -100.0
    return organ, truth, hu


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.mark.parametrize("drawn_mm", [11.0, 7.0])
def test_an_over_or_under_drawn_lesion_comes_back_to_its_edge(drawn_mm):
    organ, truth, hu = _liver(lesion_hu=40.0)
    drawn = _ball(drawn_mm)
    result = refine_lesion_boundaries(drawn, organ, hu, SPACING)
    assert result.refined == 1
    assert _dice(drawn, truth) < 0.85 and _dice(result.tumour, truth) > 0.93
    if drawn_mm > 9.0:
        assert result.removed_ml > 0.3 and result.added_ml < 0.05
    else:
        assert result.added_ml > 0.3 and result.removed_ml < 0.05


def test_a_partial_volume_slice_beyond_the_lesion_goes_on_thick_slices():
    spacing = (5.0, 1.0, 1.0)
    shape = (16, 90, 90)
    organ = np.zeros(shape, bool)
    organ[1:-1, 5:-5, 5:-5] = True
    truth = np.zeros(shape, bool)
    truth[6:9] = _ball(10.0, (8, 45, 45), spacing, shape)[6:9]
    rng = np.random.default_rng(1)
    hu = rng.normal(100.0, 8.0, shape).astype(np.float32)
    hu[truth] = 30.0 + rng.normal(0, 8.0, int(truth.sum()))
    drawn = truth.copy()
    drawn[9] = truth[8]  # one slice (5 mm, more than the band) too far, liver-like HU there
    result = refine_lesion_boundaries(drawn, organ, hu, spacing)
    assert not result.tumour[9].any() and _dice(result.tumour, truth) > 0.98 and _dice(drawn, truth) < 0.8


def test_growth_stops_at_the_band():
    organ, truth, hu = _liver(lesion_hu=0.0, radius_mm=12.0)  # its ring (8-16 mm) is mostly liver
    drawn = _ball(6.0)
    grown = refine_lesion_boundaries(drawn, organ, hu, SPACING).tumour
    assert grown.sum() > drawn.sum()
    assert not (grown & ~_ball(6.0 + BAND_MM + 1.0)).any()  # never beyond the band (+ a voxel of rounding)


def test_a_lesion_the_ct_barely_shows_is_left_as_drawn_unless_the_mri_shows_it():
    organ, truth, hu = _liver(lesion_hu=92.0)  # 8 HU: under the CT's minimum contrast
    drawn = _ball(11.0)
    ct_only = refine_lesion_boundaries(drawn, organ, hu, SPACING)
    assert ct_only.refined == 0 and (ct_only.tumour == drawn).all()
    rng = np.random.default_rng(3)
    mri = rng.normal(200.0, 10.0, SHAPE).astype(np.float32)
    mri[truth] = rng.normal(500.0, 10.0, int(truth.sum()))
    with_mri = refine_lesion_boundaries(drawn, organ, hu, SPACING, mri=mri)
    assert with_mri.refined == 1 and _dice(with_mri.tumour, truth) > 0.93
    no_view = np.full(SHAPE, np.nan, np.float32)  # the MRI does not cover the lesion: nothing to go by
    assert (refine_lesion_boundaries(drawn, organ, hu, SPACING, mri=no_view).tumour == drawn).all()


def test_a_dark_lesion_does_not_grow_into_a_bright_vessel_beside_it():
    organ, truth, hu = _liver(lesion_hu=30.0)
    vessel = np.zeros(SHAPE, bool)
    vessel[:, 43:48, 55:90] = True  # touches the lesion's edge at x = 54
    vessel &= organ & ~truth
    hu[vessel] = 180.0
    refined = refine_lesion_boundaries(truth.copy(), organ, hu, SPACING).tumour
    assert not (refined & vessel).any() and _dice(refined, truth) > 0.93


def test_new_lesion_voxels_stay_inside_the_organ():
    organ, truth, hu = _liver(lesion_hu=40.0)
    organ[:, :, 50:] = False  # the organ's edge cuts the lesion
    hu[:, :, 50:] = 40.0  # and the tissue outside looks like the lesion
    refined = refine_lesion_boundaries(truth & organ, organ, hu, SPACING).tumour
    assert not (refined & ~organ).any()


def test_clean_label_map_refines_edges_with_the_ct_and_says_so():
    organ, truth, hu = _liver(lesion_hu=40.0)
    label = organ.astype(np.uint8)
    label[_ball(11.0)] = 2
    notes: dict = {}
    cleaned = clean_label_map(label, SPACING, PostprocessConfig(), ct_hu=hu, notes=notes)
    assert _dice(cleaned == 2, truth) > 0.93
    assert notes["lesion_edges_refined"] == 1 and notes["lesion_edges_removed_ml"] > 0.3
    as_drawn = clean_label_map(label, SPACING, PostprocessConfig(lesion_edge_band_mm=0.0), ct_hu=hu, notes={})
    without_ct = clean_label_map(label, SPACING, PostprocessConfig())
    assert (as_drawn == 2).sum() == (without_ct == 2).sum() == _ball(11.0).sum()


def test_a_bright_rim_around_a_dark_core_is_kept():
    organ, truth, hu = _liver(lesion_hu=30.0, noise=6.0)
    rim = truth & ~_ball(6.0)
    hu[rim] = 170.0  # a target lesion: the rim differs from the liver the other way
    refined = refine_lesion_boundaries(truth.copy(), organ, hu, SPACING).tumour
    assert refined[rim].mean() > 0.95 and _dice(refined, truth) > 0.93


def test_no_speck_cut_off_at_the_edge_becomes_a_lesion_of_its_own():
    organ, truth, hu = _liver(lesion_hu=30.0, noise=6.0)
    speck = np.zeros(SHAPE, bool)
    speck[15:18, 44:47, 56:58] = True  # 2 mm beyond the lesion's edge (x = 54), liver between
    hu[speck] = 30.0
    drawn = _ball(12.0)  # the network drew lesion, liver and speck as one
    from scipy import ndimage

    refined = refine_lesion_boundaries(drawn, organ, hu, SPACING).tumour
    assert ndimage.label(refined, structure=np.ones((3, 3, 3), bool))[1] == 1
    assert not refined[speck].any()
