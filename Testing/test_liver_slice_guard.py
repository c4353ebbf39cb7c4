"""The head-foot guard that cuts bowel labelled as liver off the organ (`trim_slices_unlike_liver`).

Synthetic organs with a known answer, the same through `clean_label_map` and on a permuted
(sagittal-like) array, and the real TotalSegmentator CT, which reaches the pelvis, through
`segment` with the bundled CT-only weights."""

from __future__ import annotations

import numpy as np
import pytest

from LiverTumorAILib.postprocess import PostprocessConfig, clean_label_map, trim_slices_unlike_liver

SPACING = (3.0, 1.5, 1.5)


def _liver_and_bowel(seed: int = 0):
    """(label, HU): a liver (60 HU) in slices 30-59, over a bigger blob of 'bowel' joined to it
    along one side, slices 0-33 (HU spread -40..+80 with gas pockets, the liver's level only
    by chance)."""
    rng = np.random.default_rng(seed)
    shape = (60, 80, 80)
    label = np.zeros(shape, np.uint8)
    hu = rng.normal(-80.0, 10.0, shape).astype(np.float32)  # fat around
    label[30:60, 10:60, 10:60] = 1
    hu[30:60, 10:60, 10:60] = rng.normal(60.0, 12.0, (30, 50, 50))
    bowel = np.zeros(shape, bool)
    bowel[0:34, 5:75, 40:75] = True
    bowel[30:60, 10:60, 10:60] = False
    label[bowel] = 1
    hu[bowel] = rng.uniform(-40.0, 80.0, int(bowel.sum()))
    gas = bowel & (rng.random(shape) < 0.15)
    hu[gas] = -900.0
    return label, hu, bowel


def test_bowel_below_the_liver_is_cut_even_when_it_outweighs_the_liver():
    label, hu, bowel = _liver_and_bowel()
    organ = label >= 1
    assert bowel.sum() > (organ & ~bowel).sum()  # the bowel has more voxels than the liver
    trimmed = trim_slices_unlike_liver(organ, label == 1, hu, SPACING, axis=0)
    liver = organ & ~bowel
    assert trimmed[liver].mean() > 0.97
    assert trimmed[bowel].mean() < 0.15  # only the bowel beside the liver's slices is left


def test_the_same_along_another_array_axis():
    label, hu, bowel = _liver_and_bowel()
    order = (1, 0, 2)  # head-foot is now array axis 1
    label_p, hu_p, bowel_p = (np.transpose(a, order) for a in (label, hu, bowel))
    spacing = tuple(SPACING[i] for i in order)
    trimmed = trim_slices_unlike_liver(label_p >= 1, label_p == 1, hu_p, spacing, axis=1)
    expected = trim_slices_unlike_liver(label >= 1, label == 1, hu, SPACING, axis=0)
    assert np.array_equal(trimmed, np.transpose(expected, order))


def test_a_homogeneous_liver_with_lesions_and_a_thin_dome_is_left_whole():
    rng = np.random.default_rng(1)
    shape = (50, 70, 70)
    z, y, x = np.indices(shape)
    organ = ((z - 25) / 24.0) ** 2 + ((y - 35) / 30.0) ** 2 + ((x - 35) / 30.0) ** 2 <= 1.0
    hu = np.where(organ, rng.normal(110.0, 20.0, shape), -90.0).astype(np.float32)
    edge = organ & ~np.roll(organ, 1, axis=0)
    hu[edge] = 20.0  # partial volume with the lung at the dome
    label = organ.astype(np.uint8)
    lesion = ((z - 30) / 12.0) ** 2 + ((y - 35) / 20.0) ** 2 + ((x - 35) / 20.0) ** 2 <= 1.0
    label[lesion & organ] = 2
    hu[lesion & organ] = 40.0  # a large hypodense lesion: labelled tumour, so not in the medians
    trimmed = trim_slices_unlike_liver(organ, label == 1, hu, SPACING, axis=0)
    assert trimmed is organ


def test_a_short_unlike_run_does_not_cut():
    rng = np.random.default_rng(2)
    organ = np.zeros((40, 50, 50), bool)
    organ[5:35, 10:40, 10:40] = True
    hu = np.where(organ, rng.normal(60.0, 12.0, organ.shape), -80.0).astype(np.float32)
    hu[20] = -20.0  # one 3 mm slice off (a streak artefact), under the 10 mm run
    assert trim_slices_unlike_liver(organ, organ, hu, SPACING, axis=0) is organ
    hu[20:24] = -20.0  # 12 mm off: the organ is cut there, the larger side (slices 5-19) kept
    trimmed = trim_slices_unlike_liver(organ, organ, hu, SPACING, axis=0)
    expected = organ.copy()
    expected[20:] = False
    assert np.array_equal(trimmed, expected)


def test_clean_label_map_uses_the_guard_only_with_the_ct():
    label, hu, bowel = _liver_and_bowel()
    with_ct = clean_label_map(label, SPACING, PostprocessConfig(), ct_hu=hu)
    without = clean_label_map(label, SPACING, PostprocessConfig())
    off = clean_label_map(label, SPACING, PostprocessConfig(max_slice_hu_shift=0.0), ct_hu=hu)
    assert (without[bowel] >= 1).all() and np.array_equal(without, off)
    assert (with_ct[bowel] >= 1).mean() < 0.15
    assert (with_ct[(label >= 1) & ~bowel] >= 1).mean() > 0.97


def _head_foot_extent_mm(mask: np.ndarray, image) -> float:
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    z, y, x = np.nonzero(mask)
    lps_z = (np.stack([x, y, z], axis=1) * np.asarray(image.GetSpacing())) @ direction[2]
    return float(lps_z.max() - lps_z.min())


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tam-unet", "dual-stream"])
def test_real_ct_to_the_pelvis_keeps_the_liver_out_of_the_pelvis(real_data_dir, tmp_path, model):
    """The TotalSegmentator example CT runs from the liver dome to the pelvis (33 cm). Without the
    guard both CT-only models' liver ran its whole length (2.4-3.3 l); an adult liver spans
    15-25 cm, and this scan cuts the dome, so the liver must stay under 20 cm and 2 l."""
    import SimpleITK as sitk

    from LiverTumorAILib.pipeline import run_segment

    ct_path = real_data_dir / "totalsegmentator" / "example_ct.nii.gz"
    run_segment(ct_path, tmp_path / "out", model=model, device="cpu")
    ct = sitk.ReadImage(str(ct_path))
    liver = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "segmentation.nii.gz"))) >= 1
    assert liver.sum() * np.prod(ct.GetSpacing()) / 1e6 < 2.0
    assert 60.0 < _head_foot_extent_mm(liver, ct) < 200.0
