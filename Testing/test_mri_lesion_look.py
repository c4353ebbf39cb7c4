"""The lesions' look on the MRI (mri_lesion_look.py): brighter than the liver (T2-like, the CT+MRI
models' own) or darker (T1-like), read on the MRI's own grid; and what a darker look changes: the
classifier sets the MRI aside, the MRI assist skips its vessel check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorAILib.classification.classify import CTMRI_T1_WEIGHTS, T1_LIKE_CT_NOTE, T1_LIKE_NOTE
from LiverTumorAILib.inference.mri_assist import assist_with_mri, vessel_check_reason
from LiverTumorAILib.mri_lesion_look import read_mri_lesion_look
from LiverTumorAILib.weights import bundled_model_dir

SPACING = (1.0, 1.0, 2.0)
SHAPE = (40, 100, 100)


def _ball(centre_zyx, radius_mm) -> np.ndarray:
    z, y, x = np.indices(SHAPE)
    return ((z - centre_zyx[0]) * SPACING[2]) ** 2 + (y - centre_zyx[1]) ** 2 + (x - centre_zyx[2]) ** 2 <= radius_mm**2


def _images(lesion_mri: dict[str, float], seed: int = 0) -> tuple[np.ndarray, sitk.Image, sitk.Image]:
    """A liver (MRI ~150 with a left-right bias field) holding a 16 mm lesion "large" and a 6 mm
    lesion "small" of the given MRI signals; the MRI resampled onto its own grid (1.5 mm, turned
    20 degrees about z, shifted), as a scan of its own would be."""
    rng = np.random.default_rng(seed)
    label = np.zeros(SHAPE, np.uint8)
    label[4:36, 8:92, 8:92] = 1
    signal = rng.normal(40, 8, SHAPE)
    bias = np.broadcast_to(np.linspace(-30, 30, SHAPE[2]), SHAPE)
    signal[label == 1] = rng.normal(150, 10, int((label == 1).sum())) + bias[label == 1]
    for name, (centre, radius) in {"large": ((20, 50, 35), 8.0), "small": ((20, 50, 72), 3.0)}.items():
        ball = _ball(centre, radius)
        label[ball] = 2
        signal[ball] = rng.normal(lesion_mri[name], 10, int(ball.sum()))
    ct = sitk.GetImageFromArray(np.zeros(SHAPE, np.int16))
    ct.SetSpacing(SPACING)
    on_ct = sitk.GetImageFromArray(signal.astype(np.float32))
    on_ct.CopyInformation(ct)
    angle = np.deg2rad(20.0)
    reference = sitk.Image([90, 90, 60], sitk.sitkFloat32)
    reference.SetSpacing((1.5, 1.5, 1.5))
    reference.SetDirection((np.cos(angle), -np.sin(angle), 0.0, np.sin(angle), np.cos(angle), 0.0, 0.0, 0.0, 1.0))
    reference.SetOrigin((30.0, -25.0, -3.0))
    mri = sitk.Resample(on_ct, reference, sitk.Transform(), sitk.sitkLinear, 0.0)
    return label, ct, mri


def test_lesions_brighter_on_the_mri_look_t2_like_and_darker_ones_t1_like():
    label, ct, bright = _images({"large": 400, "small": 400})
    look = read_mri_lesion_look(ct, bright, label)
    assert len(look.contrasts_sd) == 2 and look.median_sd > 5 and not look.darker
    assert look.as_report()["look"].startswith("brighter")

    label, ct, dark = _images({"large": 60, "small": 60})
    look = read_mri_lesion_look(ct, dark, label)
    assert look.median_sd < -5 and look.darker
    assert look.as_report() == {"lesions_read": 2, "lesions_deciding": 1, "median_contrast_sd": round(look.median_sd, 2),
                                "lesions_darker": 2, "look": "darker than the liver (T1-like)"}
    assert "darker than the liver on this MRI" in look.describe()

    # read on a sub-grid of the CT (as the pipeline does on the segmented region): the same look
    sub = read_mri_lesion_look(ct, dark, label[2:38, 10:90, 5:95], (2, 10, 5))
    assert sub.contrasts_sd == pytest.approx(look.contrasts_sd)


def test_the_lesions_of_10_mm_or_more_decide_and_no_lesion_leaves_the_mri_in_use():
    label, ct, mri = _images({"large": 400, "small": 40})  # a small dark finding beside a large bright lesion
    look = read_mri_lesion_look(ct, mri, label)
    assert sorted(c > 0 for c in look.contrasts_sd) == [False, True]
    assert not look.darker  # the 16 mm lesion decides
    label, ct, mri = _images({"large": 40, "small": 400})
    assert read_mri_lesion_look(ct, mri, label).darker

    empty = read_mri_lesion_look(ct, mri, np.where(label == 2, 1, label).astype(np.uint8))
    assert empty.median_sd is None and not empty.darker and empty.as_report()["look"] == "none read"
    far = sitk.Image(mri)
    far.SetOrigin((500.0, 500.0, 500.0))  # an MRI that holds none of the lesions
    assert read_mri_lesion_look(ct, far, label).contrasts_sd == ()


def test_the_vessel_check_is_skipped_only_where_the_fusion_lesions_look_darker():
    label, ct, dark = _images({"large": 60, "small": 60})
    ct_values = sitk.GetArrayFromImage(ct)
    ct_values[label == 1], ct_values[label == 2] = 60, 160  # bright on the CT, dark on the MRI: a vessel on a T2
    ct_bright = sitk.GetImageFromArray(ct_values)
    ct_bright.CopyInformation(ct)
    fusion = label.copy()
    fusion[_ball((20, 50, 72), 3.5)] = 1  # the fusion model found the large lesion only

    reason = vessel_check_reason(fusion, ct_bright, dark)
    assert "darker than the liver" in reason and reason.endswith("the MRI vessel check was not run")
    kept = label.copy()
    result = assist_with_mri(kept, fusion, ct_bright, dark, vessels_not_checked=reason)
    assert result.removed == [] and (kept[_ball((20, 50, 72), 3.0)] == 2).all()
    assert result.vessels_not_checked == reason

    checked = label.copy()  # the same images without the reason: the small one goes as a vessel
    assert len(assist_with_mri(checked, fusion, ct_bright, dark).removed) == 1
    assert not (checked[_ball((20, 50, 72), 3.0)] == 2).any()

    _, _, bright = _images({"large": 400, "small": 60})
    assert vessel_check_reason(fusion, ct_bright, bright) == ""

    # what report.json and the run's warnings say of it
    from LiverTumorAILib.pipeline import _mri_assist_report, _record_mri_assist

    assert _mri_assist_report(result, "fusion")["vessel_check"] == reason
    assert _mri_assist_report(assist_with_mri(label.copy(), fusion, ct_bright, bright), "fusion")["vessel_check"] == "run"
    rows = [{"id": 1}]
    assert reason in _record_mri_assist(rows, np.zeros(SHAPE, np.uint16), result, SimpleNamespace(name="fusion"), "tam-unet")


needs_classifiers = pytest.mark.skipif(not all(bundled_model_dir(n) for n in ("hybrid3d", "hybrid3d-ctmri")),
                                       reason="bundled classifier weights absent")


def _classify_phantom(sequence: str, tmp_path: Path, weights: Path | None = None) -> dict:
    """run_classify with the MRI on the truth segmentation of a project phantom whose MRI is `sequence`."""
    from LiverTumorAILib.phantom import generate_case, write_case
    from LiverTumorAILib.pipeline import run_classify

    case = tmp_path / f"case_{sequence}"
    write_case(generate_case(50004, size=128, slices=32, mri_sequence=sequence), case)
    report = run_classify(case / "ct.nii.gz", case / "label.nii.gz", tmp_path / f"out_{sequence}",
                          mri_path=case / "mri.nii.gz", device="cpu", weights_dir=weights)
    assert report["lesion_count"] >= 2
    return report


@needs_classifiers
@pytest.mark.parametrize("sequence", ["t2", "t1"])
def test_classify_keeps_a_t2_like_mri_and_sets_a_t1_like_one_aside(sequence: str, tmp_path: Path, monkeypatch) -> None:
    from LiverTumorAILib import weights

    monkeypatch.delenv(weights.ENV_MODELS, raising=False)
    assert not bundled_model_dir(CTMRI_T1_WEIGHTS)  # not bundled: see make_classifier_weights.MODEL_MRI_SEQUENCE
    report = _classify_phantom(sequence, tmp_path)
    look = report["mri_lesion_look"]
    models = {lesion["model"] for lesion in report["lesions"]}
    notes = [lesion["note"] for lesion in report["lesions"]]
    if sequence == "t1":
        assert look["look"].startswith("darker") and look["median_contrast_sd"] < -1
        assert models == {"hybrid3d"} and all(T1_LIKE_CT_NOTE in note for note in notes)
        assert {lesion["modality"] for lesion in report["lesions"]} == {"CT"}
        assert any(w.endswith("lesions classified by the CT alone") for w in report["warnings"])
    else:
        assert look["look"].startswith("brighter") and look["median_contrast_sd"] > 1
        assert models == {"hybrid3d-ctmri"} and not any("T1-like" in note for note in notes)
        assert not any("darker than the liver" in w for w in report["warnings"])


@needs_classifiers
def test_weights_learned_on_t1_mris_take_a_t1_like_mri(tmp_path: Path, monkeypatch) -> None:
    """A researcher's hybrid3d-ctmri-t1 (here the T2 weights under that name, to see who is asked) in --weights."""
    from LiverTumorAILib import weights

    monkeypatch.delenv(weights.ENV_MODELS, raising=False)
    folder = tmp_path / "models" / CTMRI_T1_WEIGHTS
    shutil.copytree(bundled_model_dir("hybrid3d-ctmri"), folder)
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    (folder / "manifest.json").write_text(json.dumps({**manifest, "name": CTMRI_T1_WEIGHTS}), encoding="utf-8")

    report = _classify_phantom("t1", tmp_path, weights=tmp_path / "models")
    assert {lesion["model"] for lesion in report["lesions"]} == {CTMRI_T1_WEIGHTS}
    assert {lesion["modality"] for lesion in report["lesions"]} == {"CT+MRI"}
    assert all(T1_LIKE_NOTE in lesion["note"] for lesion in report["lesions"])
    assert any(w.endswith(f"classified by the CT+MRI classifier learned on T1 MRIs ({CTMRI_T1_WEIGHTS})")
               for w in report["warnings"])
    assert _classify_phantom("t2", tmp_path, weights=tmp_path / "models")["lesions"][0]["model"] == "hybrid3d-ctmri"


@pytest.mark.skipif(not all(bundled_model_dir(n) for n in ("fusion", "localizer")), reason="bundled weights absent")
def test_segment_with_the_fusion_model_warns_when_the_mri_looks_t1_like(tmp_path: Path, monkeypatch) -> None:
    from LiverTumorAILib import weights
    from LiverTumorAILib.phantom import generate_case, write_case
    from LiverTumorAILib.pipeline import run_segment

    monkeypatch.delenv(weights.ENV_MODELS, raising=False)
    for sequence in ("t1", "t2"):
        case = tmp_path / f"case_{sequence}"
        write_case(generate_case(50004, size=96, slices=24, mri_sequence=sequence), case)
        report = run_segment(case / "ct.nii.gz", tmp_path / f"out_{sequence}", mri_path=case / "mri.nii.gz",
                             model="fusion", device="cpu", classify=False, heatmaps="none")
        assert report["lesion_count"] >= 1
        warned = any("the fusion model, which reads the MRI, may miss lesions" in w for w in report["warnings"])
        assert report["mri_lesion_look"]["look"].startswith("darker" if sequence == "t1" else "brighter")
        assert warned == (sequence == "t1")
