"""With an MRI, a CT-only model's segmentation is checked against the fusion model's reading of
it (inference/mri_assist.py): lesions only the MRI shows are added, outlines the MRI shows larger
are extended, findings bright on the CT and dark on the MRI are removed as vessels; the rest stays
as the CT-only model drew it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorAILib.inference.mri_assist import (
    add_lesions_seen_on_mri,
    extend_outlines_seen_on_mri,
    remove_vessels_seen_on_mri,
)
from LiverTumorAILib.runner import segment_command
from LiverTumorAILib.weights import bundled_model_dir

SPACING = (1.0, 1.0, 2.0)


def _ball(shape, centre_zyx, radius_mm) -> np.ndarray:
    z, y, x = np.indices(shape)
    return ((z - centre_zyx[0]) * SPACING[2]) ** 2 + (y - centre_zyx[1]) ** 2 + (x - centre_zyx[2]) ** 2 <= radius_mm**2


def _ct(shape) -> sitk.Image:
    image = sitk.GetImageFromArray(np.zeros(shape, np.int16))
    image.SetSpacing(SPACING)
    return image


def test_only_new_lesions_inside_the_liver_and_the_mri_are_added():
    shape = (40, 100, 100)
    label = np.zeros(shape, np.uint8)
    label[5:35, 10:90, 10:90] = 1  # the CT-only model's liver: z 10-70 mm, y/x 10-90 mm
    label[_ball(shape, (20, 30, 30), 8)] = 2  # its one lesion
    before = label.copy()
    assist = np.zeros(shape, np.uint8)
    assist[label >= 1] = 1
    assist[_ball(shape, (20, 31, 31), 7)] = 2  # the same lesion, outlined a little differently: stays the CT model's
    assist[_ball(shape, (20, 60, 60), 7)] = 2  # one the CT model missed: added
    assist[_ball(shape, (20, 50, 97), 7)] = 2  # mostly outside the CT model's liver: not added
    assist[_ball(shape, (32, 30, 70), 6)] = 2  # in the liver, but where the MRI ends (z 64 mm): not added
    mri = sitk.GetImageFromArray(np.zeros((12, 100, 100), np.float32))
    mri.SetSpacing((1.0, 1.0, 5.0))  # slices z 0-55 mm: covers all but the last lesion with 5 mm to spare
    ct = _ct(shape)

    added = add_lesions_seen_on_mri(label, assist, ct, mri)

    missed = _ball(shape, (20, 60, 60), 7)
    assert added.count == 1 and len(added.seeds) == 1 and missed[added.seeds[0]]
    assert added.volume_ml == pytest.approx(missed.sum() * 2.0 / 1000)
    assert np.array_equal(label == 2, (before == 2) | missed)  # the CT model's own lesion unchanged
    assert np.array_equal(label >= 1, (before >= 1) | missed)

    # searching only the fusion model's sub-grid finds the same; nothing to add adds nothing
    again = before.copy()
    region = (slice(0, 40), slice(40, 80), slice(40, 80))
    assert add_lesions_seen_on_mri(again, assist, ct, mri, region).count == 1 and np.array_equal(again, label)
    assert add_lesions_seen_on_mri(label, (label >= 1).astype(np.uint8), ct, mri).count == 0


def _only_the_liver_lesion_added(label, hu, mri_signal, not_added, in_liver):
    """Fusion's lesions `not_added` and `in_liver` offered to the CT model's `label` (with the CT
    model's liver level, 100 HU): the one in the liver is added, the other found in another
    tissue. Returns (the label after, the fusion label map, CT, MRI)."""
    assist = np.zeros(label.shape, np.uint8)
    assist[label >= 1] = 1
    assist[not_added | in_liver] = 2
    ct = sitk.GetImageFromArray(hu)
    ct.SetSpacing(SPACING)
    mri = sitk.GetImageFromArray(mri_signal)
    mri.SetSpacing(SPACING)
    checked = label.copy()
    added = add_lesions_seen_on_mri(checked, assist, ct, mri, level=100.0)
    assert added.count == 1 and in_liver[added.seeds[0]] and added.in_other_tissue == 1
    return checked, assist, ct, mri


def test_a_fusion_lesion_inside_a_neighbour_the_ct_model_drew_as_liver_is_not_added():
    """The CT model drew a neighbour 40 HU brighter than the liver as liver; the fusion model's
    'lesion' inside it (the MRI shows none there) is not added with the HU checks on (the CT
    model's liver level given), and is without them; a lesion the MRI shows in the liver proper
    is added either way."""
    rng = np.random.default_rng(4)
    shape = (40, 100, 100)
    label = np.zeros(shape, np.uint8)
    label[5:35, 10:90, 10:90] = 1
    neighbour = np.zeros(shape, bool)
    neighbour[5:35, 10:90, 60:90] = True  # a third of "the liver" is another organ
    hu = rng.normal(100.0, 12.0, shape).astype(np.float32)
    hu[neighbour] += 40.0
    mri_signal = np.full(shape, 400.0, np.float32)
    mri_signal[neighbour] = 550.0
    in_neighbour, in_liver = _ball(shape, (20, 50, 75), 6), _ball(shape, (20, 50, 30), 6)
    hu[in_neighbour] += 10.0  # a shade brighter still on the CT, nothing on the MRI
    hu[in_liver] -= 30.0
    mri_signal[in_liver] = 900.0
    mri_signal += rng.normal(0.0, 10.0, shape).astype(np.float32)
    checked, assist, ct, mri = _only_the_liver_lesion_added(label, hu, mri_signal, in_neighbour, in_liver)
    assert (checked[in_liver] == 2).all() and not (checked[in_neighbour] == 2).any()
    unchecked = label.copy()
    assert add_lesions_seen_on_mri(unchecked, assist, ct, mri).count == 2


def test_a_faint_fusion_lesion_beside_bowel_gas_the_mri_does_not_show_is_not_added():
    """A fusion 'lesion' at the liver's edge 5 mm from a gas-filled bowel loop, 15 HU darker than the
    liver and not shown on the MRI (the partial-volume edge of the loop) is not added; a lesion the
    MRI shows in the liver proper is. The gas lies beyond the rim's 3 mm: the check must look that
    far."""
    rng = np.random.default_rng(6)
    shape = (40, 100, 100)
    label = np.zeros(shape, np.uint8)
    label[5:35, 10:90, 10:80] = 1
    hu = rng.normal(100.0, 12.0, shape).astype(np.float32)
    hu[label == 0] = -90.0  # fat around the liver
    hu[10:30, 30:70, 84:92] = -900.0  # bowel gas 5 mm from the edge lesion below
    mri_signal = np.full(shape, 400.0, np.float32)
    edge, in_liver = _ball(shape, (20, 50, 79), 6) & (label == 1), _ball(shape, (20, 50, 30), 6)
    hu[edge] -= 15.0
    hu[in_liver] -= 30.0
    mri_signal[in_liver] = 900.0
    mri_signal += rng.normal(0.0, 10.0, shape).astype(np.float32)
    checked, *_ = _only_the_liver_lesion_added(label, hu, mri_signal, edge, in_liver)
    assert not (checked[edge] == 2).any()


def test_an_outline_the_mri_shows_clearly_larger_is_extended_inside_the_liver_only():
    shape = (40, 100, 100)
    label = np.zeros(shape, np.uint8)
    label[5:35, 10:90, 10:90] = 1
    core = _ball(shape, (20, 17, 30), 5)  # the CT model's outline: the hypodense core, near the liver's edge
    label[core] = 2
    near_edge = _ball(shape, (20, 50, 60), 7)  # a second lesion, outlined almost as the fusion model does
    label[near_edge] = 2
    before = label.copy()
    assist = np.zeros(shape, np.uint8)
    assist[label >= 1] = 1
    whole = _ball(shape, (20, 17, 30), 9)  # the fusion model sees the rim too, partly outside the liver
    assist[whole] = 2
    assist[_ball(shape, (20, 50, 60), 7.1)] = 2  # a little more at the edge: not worth a change
    mri = sitk.GetImageFromArray(np.zeros((12, 100, 100), np.float32))
    mri.SetSpacing((1.0, 1.0, 5.0))
    ct = _ct(shape)

    extended = extend_outlines_seen_on_mri(label, assist, ct, mri)

    assert extended.count == 1 and whole[extended.seeds[0]] and label[extended.seeds[0]] == 2
    assert np.array_equal(label == 2, core | near_edge | (whole & (before >= 1)))
    assert extended.volume_ml == pytest.approx(np.count_nonzero(whole & ~core & (before == 1)) * 2.0 / 1000)
    assert np.array_equal(label >= 1, before >= 1)  # the liver's outline never moves

    # the same lesion where the MRI ends (its last slice at z 55 mm) is left as the CT model drew it
    short = sitk.GetImageFromArray(np.zeros((5, 100, 100), np.float32))
    short.SetSpacing((1.0, 1.0, 5.0))  # z 0-20 mm: the lesion (z 22-58 mm) lies outside
    again = before.copy()
    assert extend_outlines_seen_on_mri(again, assist, ct, short).count == 0 and np.array_equal(again, before)


def _vessel_case(rng):
    """A liver (CT ~60 HU, MRI ~100) with three CT-model lesions: a vessel (CT 160, MRI 60), a
    haemangioma (CT 160, MRI 300) and a dark one (CT 20, MRI 60), on a CT and an MRI grid."""
    shape = (40, 100, 100)
    label = np.zeros(shape, np.uint8)
    label[5:35, 10:90, 10:90] = 1
    ct = rng.normal(0, 10, shape)
    mri = rng.normal(50, 10, shape)
    ct[label == 1] += 60
    mri[label == 1] += 50
    balls = {"vessel": _ball(shape, (20, 30, 30), 5), "haemangioma": _ball(shape, (20, 60, 30), 5),
             "dark": _ball(shape, (20, 30, 70), 5)}
    for name, (ct_value, mri_value) in {"vessel": (160, 60), "haemangioma": (160, 300), "dark": (20, 60)}.items():
        label[balls[name]] = 2
        ct[balls[name]] = rng.normal(ct_value, 10, int(balls[name].sum()))
        mri[balls[name]] = rng.normal(mri_value, 10, int(balls[name].sum()))
    ct_image = sitk.GetImageFromArray(ct.astype(np.int16))
    ct_image.SetSpacing(SPACING)
    mri_image = sitk.GetImageFromArray(mri.astype(np.float32))
    mri_image.SetSpacing(SPACING)
    return label, ct_image, mri_image, balls


def test_a_finding_bright_on_the_ct_and_dark_on_the_mri_that_the_fusion_model_skips_is_removed():
    label, ct, mri, balls = _vessel_case(np.random.default_rng(3))
    before = label.copy()
    fusion = (label >= 1).astype(np.uint8)  # the fusion model found no lesion at all

    removed = remove_vessels_seen_on_mri(label, fusion, ct, mri)

    assert len(removed) == 1
    assert np.array_equal(label == 2, (before == 2) & ~balls["vessel"])  # haemangioma and dark lesion kept
    assert np.array_equal(label >= 1, before >= 1)  # the vessel is liver again
    finding = removed[0]
    assert finding.ct_sd_above_liver > 5 and finding.mri_sd_below_liver > 2
    assert finding.volume_ml == pytest.approx(balls["vessel"].sum() * 2.0 / 1000)
    # centroid: voxel (z 20, y 30, x 30) -> LPS (30, 30, 40) mm -> RAS (-30, -30, 40)
    assert finding.centroid_ras == pytest.approx([-30.0, -30.0, 40.0], abs=0.1)
    assert finding.as_report()["volume_ml"] == round(finding.volume_ml, 3)

    # an MRI that covers the vessel but not the whole liver: the liver's signal is read where it reaches
    label, ct, mri, balls = _vessel_case(np.random.default_rng(3))
    (partial,) = remove_vessels_seen_on_mri(label, fusion, ct, sitk.RegionOfInterest(mri, [100, 100, 28], [0, 0, 0]))
    assert partial.mri_sd_below_liver == pytest.approx(finding.mri_sd_below_liver, rel=0.1)

    # where the fusion model found a lesion too, or the MRI does not reach, nothing is removed
    label, ct, mri, balls = _vessel_case(np.random.default_rng(3))
    fusion[balls["vessel"]] = 2
    assert remove_vessels_seen_on_mri(label, fusion, ct, mri) == []
    outside = sitk.RegionOfInterest(mri, [100, 100, 8], [0, 0, 0])  # z 0-14 mm only
    assert remove_vessels_seen_on_mri(label, (label >= 1).astype(np.uint8), ct, outside) == []


def test_a_vessel_piece_joined_to_a_lesion_by_a_thin_bridge_is_judged_alone_and_removed():
    label, ct, mri, balls = _vessel_case(np.random.default_rng(4))
    label[label == 2] = 1
    lesion, vessel = _ball(label.shape, (20, 30, 50), 6), _ball(label.shape, (20, 30, 30), 6)
    bridge = np.zeros(label.shape, bool)
    bridge[20, 29:31, 30:50] = True  # 2 mm thick: the CT model drew the two as one component
    ct_values, mri_values = sitk.GetArrayFromImage(ct), sitk.GetArrayFromImage(mri)
    ct_values[lesion], mri_values[lesion] = 20, 300  # a dark lesion, bright on the MRI
    ct_values[vessel | bridge], mri_values[vessel | bridge] = 160, 60  # bright on the CT, dark on the MRI
    ct, mri = (_like(values, image) for values, image in ((ct_values, ct), (mri_values, mri)))
    label[lesion | vessel | bridge] = 2
    fusion = (label >= 1).astype(np.uint8)
    fusion[lesion] = 2  # the fusion model found the lesion only

    (removed,) = remove_vessels_seen_on_mri(label, fusion, ct, mri)

    assert np.array_equal(label[lesion], np.full(lesion.sum(), 2))
    assert not (label[vessel] == 2).any()
    assert removed.volume_ml == pytest.approx((vessel | bridge).sum() * 2.0 / 1000, rel=0.25)


def _like(values: np.ndarray, image: sitk.Image) -> sitk.Image:
    out = sitk.GetImageFromArray(values)
    out.CopyInformation(image)
    return out


def test_the_runner_turns_the_assist_off_only_when_asked_and_an_mri_is_given():
    assert "--no-mri-assist" in segment_command("ct.nrrd", "out", mri="mri.nrrd", mri_assist=False)
    assert "--no-mri-assist" not in segment_command("ct.nrrd", "out", mri="mri.nrrd")
    assert "--no-mri-assist" not in segment_command("ct.nrrd", "out", mri_assist=False)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def _independent_case(seed: int, folder: Path) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from independent_phantom import make_case

    return make_case(seed, folder)


@pytest.mark.skipif(not all(bundled_model_dir(n) for n in ("localizer", "fusion", "dual-stream")),
                    reason="bundled weights absent")
def test_segment_extends_a_rim_the_ct_hides_and_removes_a_vessel(tmp_path: Path):
    """Independent phantom 7515 (the second fresh draw, case 15): a 47 mm metastasis whose outer
    3-4 mm are within a few HU of the liver on the CT but plain on the MRI, and a bright portal
    vessel. dual-stream alone (demo weights) outlines only the hypodense core and draws the vessel
    as a second lesion; with the assist the outline takes the MRI's extent and the vessel is liver
    again, each change named in the report."""
    from LiverTumorAILib.pipeline import run_segment

    truth = _independent_case(7515, tmp_path / "case")
    case = tmp_path / "case"
    assert [les["type"] for les in truth["lesions"]] == ["metastasis"]
    tumour = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "label.nii.gz"))) == 2

    def run(out: str, assist: bool):
        report = run_segment(case / "ct.nii.gz", tmp_path / out, mri_path=case / "mri.nii.gz", model="dual-stream",
                             device="cpu", heatmaps="none", classify=False, mri_assist=assist)
        return report, sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / out / "segmentation.nii.gz")))

    alone, label_alone = run("alone", False)
    assert alone["lesion_count"] == 2 and _dice(label_alone == 2, tumour) < 0.75

    assisted, label = run("assisted", True)
    assist = assisted["mri_lesion_assist"]
    assert assisted["lesion_count"] == 1 and assist["lesions_extended"] == 1 and assist["volume_extended_ml"] > 5
    assert assisted["lesions"][0]["outline_extended_by"] == "fusion" and assisted["lesions"][0]["found_by"] == "dual-stream"
    assert _dice(label == 2, tumour) >= 0.8
    (vessel,) = assist["findings_removed_as_vessels"]
    assert vessel["ct_sd_above_liver"] >= 2 and vessel["mri_sd_below_liver"] >= 1
    assert any("removed as a vessel" in w for w in assisted["warnings"])
    assert any("outline(s) were extended" in w for w in assisted["warnings"])
    assert np.array_equal(label >= 1, label_alone >= 1)  # the liver is dual-stream's, as drawn


@pytest.mark.skipif(not all(bundled_model_dir(n) for n in ("localizer", "fusion", "dual-stream")),
                    reason="bundled weights absent")
def test_segment_adds_the_lesions_the_ct_does_not_show(tmp_path: Path):
    """Independent phantom 7315 (the benchmark's first fresh draw, case 15): a 21 mm metastasis
    within 5 HU of the liver on the CT and a 15 mm haemangioma 25 HU above a liver whose HU
    spreads 40; the MRI shows both. dual-stream alone (demo weights) gives them tumour
    probability 0.00 and misses both; with the assist both are found, named as the fusion
    model's, and the lesion dual-stream found keeps its outline."""
    from LiverTumorAILib.pipeline import run_segment

    truth = _independent_case(7315, tmp_path / "case")
    case = tmp_path / "case"
    lesions_truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "lesions.nii.gz")))
    subtle = [les["id"] for les in truth["lesions"] if les["type"] in ("metastasis", "haemangioma")]
    assert len(subtle) == 2

    def run(out: str, assist: bool):
        report = run_segment(case / "ct.nii.gz", tmp_path / out, mri_path=case / "mri.nii.gz", model="dual-stream",
                             device="cpu", heatmaps="none", classify=assist, mri_assist=assist)
        found = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / out / "lesions.nii.gz")))
        return report, found

    alone, found_alone = run("alone", False)
    assert alone["mri_lesion_assist"] is None and "mri_lesion_assist" not in alone["models"]
    assert all(row["found_by"] == "dual-stream" for row in alone["lesions"])
    assert not any(found_alone[lesions_truth == i].any() for i in subtle)

    assisted, found = run("assisted", True)
    on_disk = json.loads((tmp_path / "assisted" / "report.json").read_text(encoding="utf-8"))
    assert on_disk["mri_lesion_assist"] == assisted["mri_lesion_assist"]
    assert assisted["mri_lesion_assist"]["model"] == "fusion" and assisted["mri_lesion_assist"]["lesions_added"] >= 2
    assert assisted["models"]["mri_lesion_assist"]["name"] == "fusion"
    by_id = {row["id"]: row for row in assisted["lesions"]}
    for i in subtle:
        ids = np.unique(found[lesions_truth == i])
        ids = ids[ids > 0]
        assert ids.size == 1 and by_id[int(ids[0])]["found_by"] == "fusion"
        overlap = np.count_nonzero((found == ids[0]) & (lesions_truth == i))
        assert 2 * overlap / (np.count_nonzero(found == ids[0]) + np.count_nonzero(lesions_truth == i)) >= 0.6
        assert by_id[int(ids[0])]["malignancy_probability"] is not None
    assert any("added from the MRI by the fusion model" in w for w in assisted["warnings"])
    # what dual-stream found by itself is still there, outline unchanged
    own = [row["id"] for row in assisted["lesions"] if row["found_by"] == "dual-stream"]
    assert len(own) == len(alone["lesions"])
    assert np.array_equal(np.isin(found, own), found_alone > 0)


def test_the_lesion_table_names_the_lesions_found_on_the_mri():
    from LiverTumorAILib.scene import scene_available

    if not scene_available():
        pytest.skip("slicer-core not installed")
    from LiverTumorAILib.scene.build import new_scene
    from LiverTumorAILib.scene.table import create_lesion_table, table_rows

    report = {
        "lesions": [{"id": 1, "volume_ml": 2.0, "found_by": "dual-stream"}, {"id": 2, "volume_ml": 1.0, "found_by": "fusion"},
                    {"id": 3, "volume_ml": 0.5},
                    {"id": 4, "volume_ml": 0.4, "found_by": "dual-stream", "outline_extended_by": "fusion"}],
        "models": {"segmentation": {"name": "dual-stream", "version": "demo-0.5"},
                   "mri_lesion_assist": {"name": "fusion", "version": "demo-0.3"}},
    }
    rows = table_rows(create_lesion_table(new_scene(), report, "Lesions"))
    assert [r["id"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["model"] == rows[2]["model"] and "segmentation demo-0.5" in rows[0]["model"]
    assert rows[1]["model"].startswith("found on the MRI by fusion; ") and rows[1]["model"].endswith(rows[0]["model"])
    assert rows[3]["model"].startswith("outline extended on the MRI by fusion; ")
