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


def _liver(lesion_hu: float, radius_mm: float = 9.0, noise: float = 10.0, seed: int = 0, spacing=SPACING):
    """(organ, truth lesion, CT HU): a liver at 100 HU filling most of the grid with one ball."""
    rng = np.random.default_rng(seed)
    organ = np.zeros(SHAPE, bool)
    organ[2:-2, 5:-5, 5:-5] = True
    truth = _ball(radius_mm, spacing=spacing)
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


def test_growth_stops_at_the_band_on_thick_slices():
    organ, truth, hu = _liver(lesion_hu=0.0, radius_mm=12.0)  # its ring (8-16 mm) is mostly liver
    drawn = _ball(6.0)
    grown = refine_lesion_boundaries(drawn, organ, hu, SPACING).tumour
    assert grown.sum() > drawn.sum()
    assert not (grown & ~_ball(6.0 + BAND_MM + 1.0)).any()  # never beyond the band (+ a voxel of rounding)


FINE = (2.0, 1.0, 1.0)  # no axis thicker than THICK_SLICE_MM: far darker lesions may grow


def _far_from(mask: np.ndarray, mm: float, spacing=FINE) -> np.ndarray:
    from scipy import ndimage

    return ndimage.distance_transform_edt(~mask, sampling=spacing) > mm


def _one_side(truth: np.ndarray, x_max: float) -> np.ndarray:
    return truth & (np.indices(SHAPE)[2] < x_max)


@pytest.mark.parametrize("radius_mm", [14.0, 20.0])
def test_a_far_darker_lesion_drawn_in_part_grows_past_the_band_up_to_its_reach(radius_mm, monkeypatch):
    import LiverTumorAILib.lesion_boundary as boundary

    organ, truth, hu = _liver(lesion_hu=10.0, radius_mm=radius_mm, spacing=FINE)  # a cyst, 90 HU darker
    drawn = _one_side(truth, 43 - (radius_mm - 14.0))  # the network drew one side of it
    grown = refine_lesion_boundaries(drawn, organ, hu, FINE).tumour
    on_thick_slices = refine_lesion_boundaries(drawn, organ, hu, (2.5, 1.0, 1.0)).tumour
    monkeypatch.setattr(boundary, "GROW_MIN_DARK_HU", 1000.0)
    band_only = refine_lesion_boundaries(drawn, organ, hu, FINE).tumour
    assert _dice(grown, truth) > _dice(band_only, truth) + 0.1 > _dice(drawn, truth) + 0.1
    assert not (grown & ~truth).any() and not (grown & _far_from(drawn, boundary.GROW_MM + 1.0)).any()
    assert _dice(on_thick_slices, truth) < _dice(grown, truth) - 0.1
    if radius_mm < 15.0:
        assert _dice(grown, truth) > 0.9


def test_a_fringe_the_band_leaves_is_not_grown_into(monkeypatch):
    import LiverTumorAILib.lesion_boundary as boundary

    organ, truth, hu = _liver(lesion_hu=10.0, radius_mm=12.0, spacing=FINE)
    drawn = _ball(7.0, spacing=FINE)  # 5 mm short all round: the band mends 3, a 2 mm fringe is left
    result = refine_lesion_boundaries(drawn, organ, hu, FINE).tumour
    monkeypatch.setattr(boundary, "GROW_MIN_DARK_HU", 1000.0)
    assert (result == refine_lesion_boundaries(drawn, organ, hu, FINE).tumour).all()
    assert result.sum() > drawn.sum()


def test_a_growing_lesion_stays_apart_from_another_across_the_liver():
    from scipy import ndimage

    organ, truth, hu = _liver(lesion_hu=10.0, spacing=FINE)
    other = _ball(5.0, centre=(16, 45, 66), spacing=FINE)  # 7 mm of liver between the two
    hu[other] = 10.0
    drawn = _one_side(truth, 42) | other
    refined = refine_lesion_boundaries(drawn, organ, hu, FINE).tumour
    assert ndimage.label(refined, structure=np.ones((3, 3, 3), bool))[1] == 2
    assert _dice(refined & ~other, truth) > 0.95 > _dice(drawn & ~other, truth) + 0.2


def test_a_growing_lesion_stops_a_voxel_short_of_another_lesion_it_touches():
    """A cyst drawn in part grows through its dark voxels; a lesion the CT does not show (one the
    network found on the MRI's evidence, its edge left as drawn) touches the cyst's far edge. The
    growth must stop a voxel short of it, so the two stay two lesions (without that guard they
    merge: checked)."""
    from scipy import ndimage

    organ, truth, hu = _liver(lesion_hu=10.0, radius_mm=14.0, spacing=FINE)
    isodense = _ball(5.0, centre=(16, 45, 64), spacing=FINE) & ~truth  # liver HU, touching the cyst
    assert ndimage.binary_dilation(truth, structure=np.ones((3, 3, 3), bool))[isodense].any()
    drawn = _one_side(truth, 50) | isodense  # the cyst's far edge (x = 59) within reach
    refined = refine_lesion_boundaries(drawn, organ, hu, FINE).tumour
    assert ndimage.label(refined, structure=np.ones((3, 3, 3), bool))[1] == 2
    cyst = refined & ~isodense
    assert _dice(cyst, truth) > _dice(drawn & ~isodense, truth) + 0.05 and not (cyst & ~truth).any()
    assert (refined & isodense).sum() == isodense.sum()


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


def test_elongation_is_the_principal_axes_ratio_with_voxels_as_boxes():
    from LiverTumorAILib.postprocess import MAX_LESION_ELONGATION, component_elongation

    spacing = (2.0, 0.5, 0.5)
    zz, yy, xx = np.indices((40, 160, 160), dtype=np.float32)
    ellipsoid = ((zz - 20) * 2.0 / 20.0) ** 2 + ((yy - 80) * 0.5 / 10.0) ** 2 + ((xx - 80) * 0.5 / 30.0) ** 2 <= 1
    ball = ((zz - 20) * 2.0) ** 2 + ((yy - 80) * 0.5) ** 2 + ((xx - 80) * 0.5) ** 2 <= 12.0**2
    slab = np.zeros((5, 40, 40), bool)
    slab[2, 10:30, 10:30] = True  # one 5 mm slice of a 10 mm lesion: 10 x 10 x 5 mm, ratio 2, kept
    assert component_elongation(ellipsoid.astype(np.int32), spacing)[0] == pytest.approx(3.0, rel=0.03)
    assert component_elongation(ball.astype(np.int32), spacing)[0] == pytest.approx(1.0, abs=0.03)
    assert component_elongation(slab.astype(np.int32), (5.0, 0.5, 0.5))[0] == pytest.approx(2.0, abs=0.01)
    assert MAX_LESION_ELONGATION > 2.0


def test_clean_label_map_drops_a_vessel_shaped_lesion_and_keeps_a_round_one():
    organ, truth, hu = _liver(lesion_hu=40.0)
    vessel = np.zeros(SHAPE, bool)
    vessel[10:14, 15:19, 10:80] = True  # 10 x 4 x 70 mm, bright: a portal branch drawn as lesion
    hu[vessel] = 180.0
    label = organ.astype(np.uint8)
    label[truth | vessel] = 2
    notes: dict = {}
    cleaned = clean_label_map(label, SPACING, PostprocessConfig(), ct_hu=hu, notes=notes)
    assert (cleaned[vessel] == 1).all() and (cleaned[truth] == 2).mean() > 0.95
    assert notes["elongated_lesions_removed"] == 1 and notes["elongated_lesions_ml"][0] > 0.5
    kept = clean_label_map(label, SPACING, PostprocessConfig(max_lesion_elongation=0.0), ct_hu=hu)
    assert (kept[vessel] == 2).mean() > 0.9


def test_two_lesions_drawn_joined_by_a_thin_bridge_are_kept_and_a_vessel_with_a_bulge_is_not():
    """An unseen phantom's metastasis and HCC drawn as one component (3.1 times longer than thin)
    were dropped as a vessel; opened by 3 mm, two round parts hold most of it, so it stays. A
    vessel with a round bulge on it is still dropped: the bulge is a small part of it."""
    from LiverTumorAILib.postprocess import (
        MAX_LESION_ELONGATION,
        _drop_elongated_lesions,
        component_elongation,
    )

    joined = _ball(10.0, centre=(16, 45, 22)) | _ball(8.0, centre=(16, 45, 68))
    joined[15:17, 44:46, 22:68] = True  # a 2 mm bridge between them
    assert component_elongation(joined.astype(np.int32), SPACING)[0] > MAX_LESION_ELONGATION
    assert np.array_equal(_drop_elongated_lesions(joined, SPACING, MAX_LESION_ELONGATION, None), joined)

    vessel = np.zeros(SHAPE, bool)
    vessel[14:18, 43:48, 5:85] = True  # 10 x 5 x 80 mm
    vessel |= _ball(5.0, centre=(16, 45, 45))
    assert not _drop_elongated_lesions(vessel, SPACING, MAX_LESION_ELONGATION, None).any()


def test_lesions_joined_by_a_thin_bridge_are_two_lesions_in_the_table():
    """Kept whole as tumour, the joined pair is numbered as two lesions (each with the bridge half
    nearest it), so the table and the detection count both; a single round lesion, a lesion with a
    short thin tail and the map without the spacing stay one."""
    from LiverTumorAILib.postprocess import lesion_instances

    joined = _ball(10.0, centre=(16, 45, 22)) | _ball(8.0, centre=(16, 45, 68))
    joined[15:17, 44:46, 22:68] = True
    label = np.zeros(SHAPE, np.uint8)
    label[joined] = 2
    instances, box = lesion_instances(label, SPACING)
    whole = np.zeros(SHAPE, np.uint16)
    whole[box] = instances
    assert set(np.unique(whole)) == {0, 1, 2}
    assert (whole[_ball(10.0, centre=(16, 45, 22))] == 1).all() and (whole[_ball(8.0, centre=(16, 45, 68))] == 2).all()
    assert np.array_equal(whole > 0, joined)
    assert set(np.unique(lesion_instances(label)[0])) == {0, 1}

    tailed = _ball(10.0, centre=(16, 45, 30))
    tailed[15:17, 44:46, 30:52] = True  # a 12 mm thin tail: no second part
    label[:] = 0
    label[tailed] = 2
    assert set(np.unique(lesion_instances(label, SPACING)[0])) == {0, 1}

    zz, yy, xx = np.indices(SHAPE)
    lobe = ((zz - 16) * SPACING[0] / 5.0) ** 2 + ((yy - 45) / 5.0) ** 2 + ((xx - 66) / 16.0) ** 2 <= 1  # 3.2 x longer
    label[:] = 0
    label[_ball(10.0, centre=(16, 45, 22)) | lobe] = 2
    label[15:17, 44:46, 22:52] = 2  # a lobe drawn through a narrow neck: one lesion
    assert set(np.unique(lesion_instances(label, SPACING)[0])) == {0, 1}


def test_a_lesion_cut_by_the_scans_first_slice_is_not_taken_for_a_vessel():
    """A 36 mm lesion centred 5 mm before the first slice, drawn from the third slice, is a 10 mm
    deep cap (a plate, more than 2.5 times wider than deep): at the scan's edge it stays, a tube
    there still goes, and the same cap away from the scan's edge (a sub-region's face) goes."""
    from LiverTumorAILib.postprocess import MAX_LESION_ELONGATION, component_elongation

    organ = np.zeros(SHAPE, bool)
    organ[0:-2, 5:-5, 5:-5] = True  # the liver goes on before the scan's first slice
    cap = _ball(18.0, centre=(-5.0 / SPACING[0], 45, 45))
    cap[:2] = False  # networks often leave the scan's very first slice unlabelled, the edge refinement the next
    tube = np.zeros(SHAPE, bool)
    tube[1:4, 20:24, 10:80] = True  # 7.5 x 4 x 70 mm along the first slices: a vessel
    rng = np.random.default_rng(3)
    hu = rng.normal(100.0, 6.0, SHAPE).astype(np.float32)
    hu[cap] = rng.normal(40.0, 6.0, int(cap.sum()))
    hu[tube] = 180.0
    hu[~organ] = -100.0
    label = organ.astype(np.uint8)
    label[cap | tube] = 2
    assert component_elongation(cap.astype(np.int32), SPACING)[0] > MAX_LESION_ELONGATION  # a plate, 4 slices deep
    config = PostprocessConfig(lesion_edge_band_mm=0.0)
    notes: dict = {}
    cleaned = clean_label_map(label, SPACING, config, ct_hu=hu, notes=notes)
    assert (cleaned[cap] == 2).all() and (cleaned[tube] == 1).all()
    assert notes["elongated_lesions_removed"] == 1
    inside = [(False, True), (True, True), (True, True)]  # the region's first slice is not the scan's
    notes = {}
    cleaned = clean_label_map(label, SPACING, config, ct_hu=hu, notes=notes, scan_faces=inside)
    assert (cleaned[cap] == 1).all() and notes["elongated_lesions_removed"] == 2


def test_a_split_lesion_keeps_its_main_piece_and_lobes_of_lesion_size_only():
    from scipy import ndimage

    organ, truth, hu = _liver(lesion_hu=40.0, noise=6.0)
    knob = _ball(4.6, centre=(16, 45, 65))  # liver-like, drawn as lesion through a thin neck
    neck = np.zeros(SHAPE, bool)
    neck[16, 44:47, 50:62] = True
    drawn = truth | knob | neck
    assert ndimage.label(drawn, structure=np.ones((3, 3, 3), bool))[1] == 1

    def pieces(min_piece_mm3):
        refined = refine_lesion_boundaries(drawn, organ, hu, SPACING, min_piece_mm3=min_piece_mm3).tumour
        return ndimage.label(refined, structure=np.ones((3, 3, 3), bool))[1], refined

    split, _ = pieces(0.0)
    assert split == 2  # the knob's core lies beyond the band: kept as its own piece
    one, refined = pieces(65.0)
    assert one == 1 and _dice(refined, truth) > 0.93


def test_a_lesion_on_one_thick_slice_is_not_judged_by_its_shape():
    spacing = (5.0, 0.8, 0.8)
    shape = (12, 80, 80)
    organ = np.zeros(shape, bool)
    organ[1:-1, 4:-4, 4:-4] = True
    hu = np.full(shape, 100.0, np.float32)
    label = organ.astype(np.uint8)
    blob = np.zeros(shape, bool)
    blob[6] = _ball(9.0, (6, 40, 40), spacing, shape)[6]  # an 18 mm lesion seen on one 5 mm slice only
    hu[blob] = 40.0
    label[blob] = 2
    notes: dict = {}
    cleaned = clean_label_map(label, spacing, PostprocessConfig(lesion_edge_band_mm=0.0), ct_hu=hu, notes=notes)
    assert (cleaned[blob] == 2).all() and notes["elongated_lesions_removed"] == 0
    thicker = label.copy()
    thicker[5:8][np.broadcast_to(blob[6], (3, *blob.shape[1:]))] = 2  # three slices: 15 x 18 x 18 mm, round
    assert (clean_label_map(thicker, spacing, PostprocessConfig(lesion_edge_band_mm=0.0), ct_hu=hu) == 2).sum() > 0


def test_non_finite_values_leave_the_network_edge_in_place():
    organ, truth, hu = _liver(lesion_hu=40.0)
    drawn = _ball(11.0)
    hu[:, :, :] = np.nan  # a CT that holds no number here: nothing to go by, no crash
    result = refine_lesion_boundaries(drawn, organ, hu, SPACING, mri=np.full(SHAPE, np.inf, np.float32))
    assert result.refined == 0 and (result.tumour == drawn).all()


def test_a_noisy_ct_is_smoothed_more_before_the_edge_is_left_alone(monkeypatch):
    import LiverTumorAILib.lesion_boundary as boundary

    organ, truth, hu = _liver(lesion_hu=78.0, noise=15.0, seed=7)  # 22 HU under noise of 15 HU
    drawn = _ball(11.0)
    refined = refine_lesion_boundaries(drawn, organ, hu, SPACING)
    assert refined.refined == 1 and _dice(refined.tumour, truth) > 0.9 > _dice(drawn, truth) + 0.1
    monkeypatch.setattr(boundary, "SMOOTH_NOISY_MM", boundary.SMOOTH_MM)  # no second try: the edge stays
    assert (refine_lesion_boundaries(drawn, organ, hu, SPACING).tumour == drawn).all()


def test_region_scan_faces_names_the_faces_where_the_scan_ends():
    from LiverTumorAILib.inference.engine import region_scan_faces

    # region x 0..9 of 10, y 5..24 of 40, z 0..29 of 30 (start and size x y z, shape z y x)
    assert region_scan_faces((0, 5, 0), (10, 20, 30), (30, 40, 10)) == [(True, True), (False, False), (True, True)]
    assert region_scan_faces((2, 0, 3), (8, 40, 27), (30, 40, 10)) == [(False, True), (True, True), (False, True)]
