"""The engine returns results on the exact input grid, in place (not mirrored), for
flipped, oblique and anisotropic CTs.

The network here is a small deterministic torch module whose logits are a fixed
function of the centre slice's intensity (a "known-truth model"), so the expected label
map is known exactly from the CT and every geometric step of the real engine -
model-grid resampling, 2.5D slab gathering, back-resampling of probabilities, argmax,
post-processing - is exercised end to end.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from LiverTumorAILib.geometry import axis_aligned_grid, image_bounding_box, mask_bounding_box
from LiverTumorAILib.inference.engine import LoadedModel, dropped_at_ras, segment_volume
from LiverTumorAILib.measure import lesion_measurements
from LiverTumorAILib.postprocess import label_lesions
from LiverTumorAILib.preprocess import make_model_grid, normalize_ct


class IntensityRuleNet(torch.nn.Module):
    """Logits from HU of the centre slice: ~0 HU background, ~200 HU liver, ~350 HU tumour."""

    def __init__(self):
        super().__init__()
        self.keep_attention = False
        self.attention_maps = {}

    def forward(self, ct, mri=None):
        v = ct[:, ct.shape[1] // 2 : ct.shape[1] // 2 + 1]
        scale = (400 - (-100)) / math.sqrt(12)
        v150, v275 = (150 - 150) / scale, (275 - 150) / scale
        liver = 10 * (v - v150)
        tumour = liver + 20 * (v - v275)
        if self.keep_attention:
            self.attention_maps = {"rule": torch.sigmoid(tumour)}
        return torch.cat([torch.zeros_like(v), liver, tumour], dim=1)


def _phantom(direction, spacing, size=(72, 64, 28)) -> tuple[sitk.Image, np.ndarray]:
    """CT with an off-centre 'liver' ellipsoid and a 'tumour' ball near one of its ends."""
    image = sitk.Image(size, sitk.sitkInt16)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    image.SetOrigin((12.0, -30.0, 5.0))
    box = image_bounding_box(image)
    centre = (box.lower + box.upper) / 2
    idx = np.indices(tuple(reversed(size))).reshape(3, -1).T  # z, y, x
    from LiverTumorAILib.geometry import voxel_indices_to_physical

    pts = voxel_indices_to_physical(image, idx)
    liver_c = centre + np.array([-12.0, 4.0, 0.0])
    tumour_c = liver_c + np.array([-14.0, -6.0, 4.0])  # patient right, anterior, superior of the liver centre
    liver = (((pts - liver_c) / np.array([26.0, 20.0, 24.0])) ** 2).sum(1) <= 1
    tumour = ((pts - tumour_c) ** 2).sum(1) <= 8.0**2
    hu = np.zeros(len(pts), np.int16)
    hu[liver] = 200
    hu[tumour & liver] = 350
    arr = hu.reshape(tuple(reversed(size)))
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(image)
    truth = np.zeros_like(arr, np.uint8)
    truth[arr == 200] = 1
    truth[arr == 350] = 2
    return out, truth


def _rotation(deg: float) -> tuple:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)


GRIDS = {
    "identity": ((1, 0, 0, 0, 1, 0, 0, 0, 1), (1.0, 1.0, 2.5)),
    "flipped_xy": ((-1, 0, 0, 0, -1, 0, 0, 0, 1), (0.9, 0.9, 3.0)),
    "flipped_z": ((1, 0, 0, 0, 1, 0, 0, 0, -1), (1.2, 0.8, 2.0)),
    "oblique_anisotropic": (_rotation(25.0), (0.8, 1.1, 3.5)),
}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_segmentation_comes_back_in_place_on_the_input_grid(name):
    direction, spacing = GRIDS[name]
    ct, truth = _phantom(direction, spacing)
    model = LoadedModel("rule", IntensityRuleNet(), {
        "config": {"ct_offsets": [-1, 0, 1]},
        "preprocessing": {"spacing_mm": [1.5, 1.5, 2.5], "window_hu": [-100, 400]},
    })
    out = segment_volume(ct, model, localizer=None, mri=None, device=torch.device("cpu"), keep_attention=True)
    assert out.label.shape == truth.shape and out.label.dtype == np.uint8
    assert _dice(out.label >= 1, truth >= 1) > 0.93
    assert _dice(out.label == 2, truth == 2) > 0.85
    mirrored = truth[:, :, ::-1]
    assert _dice(out.label == 2, mirrored == 2) < 0.3
    att = out.attention["segmentation"]
    assert att.shape == truth.shape and 0.0 <= att.min() and att.max() <= 1.0
    assert att[truth == 2].mean() > att[truth == 0].mean() + 0.5


def test_lesion_centroid_is_reported_in_ras_at_the_true_position():
    direction, spacing = GRIDS["flipped_xy"]
    ct, truth = _phantom(direction, spacing)
    rows = lesion_measurements(ct, sitk.GetArrayViewFromImage(ct), label_lesions(truth))
    assert len(rows) == 1
    box = mask_bounding_box(ct, truth == 2)
    centre_lps = (box.lower + box.upper) / 2
    expected_ras = [-centre_lps[0], -centre_lps[1], centre_lps[2]]
    assert np.allclose(rows[0]["centroid_ras"], expected_ras, atol=1.5)
    assert 14.0 <= rows[0]["longest_diameter_mm"] <= 19.0  # an 8 mm radius ball
    assert rows[0]["mean_hu"] == pytest.approx(350.0)


def test_dropped_lesion_centres_become_ras_points_of_the_whole_scan():
    ct = sitk.Image(20, 30, 40, sitk.sitkInt16)
    ct.SetOrigin((10.0, 20.0, 30.0))
    ct.SetSpacing((2.0, 2.0, 2.0))
    ct.SetDirection((-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))  # x flipped
    notes = {"elongated_lesions_removed": 1, "elongated_lesions_centroids_zyx": [[4.0, 5.0, 6.0]]}
    dropped_at_ras(notes, ct, (1, 2, 3))  # the checks ran on the region starting at voxel x 1, y 2, z 3
    # voxel (x 7, y 7, z 7) of the scan: LPS (10 - 14, 20 + 14, 30 + 14) -> RAS (-x, -y, z)
    assert notes == {"elongated_lesions_removed": 1, "elongated_lesions_centroids_ras": [[4.0, -34.0, 44.0]]}


def test_model_grid_is_axis_aligned_lps_whatever_the_input_direction():
    a, _ = _phantom(*GRIDS["identity"])
    b, _ = _phantom(*GRIDS["flipped_xy"])
    for image in (a, b):
        box = image_bounding_box(image)
        grid = make_model_grid(image, box, (1.5, 1.5, 2.5))
        assert grid.reference.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
        assert grid.ct_hu.shape[1] % 32 == 0 and grid.ct_hu.shape[2] % 32 == 0
        # the tumour lies at patient right (-x in LPS) of the liver centre: lower x index
        tumour = np.argwhere(grid.ct_hu > 300)
        liver = np.argwhere(grid.ct_hu > 150)
        assert tumour[:, 2].mean() < liver[:, 2].mean()


def test_axis_aligned_grid_pads_symmetrically():
    image, _ = _phantom(*GRIDS["identity"])
    box = image_bounding_box(image)
    ref = axis_aligned_grid(box, (1.5, 1.5, 2.5), multiple_xy=32)
    ref_box = image_bounding_box(ref)
    assert np.allclose((ref_box.lower + ref_box.upper) / 2, (box.lower + box.upper) / 2, atol=1e-6)


def test_normalize_ct_fixed_affine_map():
    hu = np.array([-1000, -100, 150, 400, 2000], dtype=np.float32)
    out = normalize_ct(hu, (-100, 400))
    scale = 500 / math.sqrt(12)
    assert np.allclose(out, [-250 / scale, -250 / scale, 0.0, 250 / scale, 250 / scale])


def test_cascade_grows_a_box_that_cuts_the_liver():
    """A localiser box that cuts off part of the liver is widened until the liver is enclosed."""
    from LiverTumorAILib.geometry import BoundingBox

    direction, spacing = GRIDS["flipped_xy"]
    ct, truth = _phantom(direction, spacing)
    model = LoadedModel("rule", IntensityRuleNet(), {
        "config": {"ct_offsets": [0]},
        "preprocessing": {"spacing_mm": [1.5, 1.5, 2.5], "window_hu": [-100, 400]},
    })
    liver_box = mask_bounding_box(ct, truth >= 1)
    cut = BoundingBox(liver_box.lower + np.array([30.0, 0.0, 0.0]), liver_box.upper)  # drops 30 mm of the liver
    out = segment_volume(ct, model, localizer=None, mri=None, device=torch.device("cpu"), box=cut, keep_attention=False)
    assert out.timing_s["grow_steps"] >= 1
    assert _dice(out.label >= 1, truth >= 1) > 0.93
    assert np.all(out.box.lower <= liver_box.lower + 1.0)
