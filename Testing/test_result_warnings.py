"""What a user is told about a doubtful run: a CT given as the MRI is refused, weights that did
not come from the --weights folder are named, implausible results are flagged, report.json
always has its "warnings" list, and the printed summary reads cleanly."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorAILib.weights import ENV_MODELS, bundled_model_dir

needs_weights = pytest.mark.skipif(
    not all(bundled_model_dir(n) for n in ("localizer", "dual-stream", "tam-unet", "hybrid3d")),
    reason="bundled demo weights absent",
)


@pytest.fixture
def case(small_phantom_case: Path) -> Path:
    return small_phantom_case


# --------------------------------------------------------------------------- CT given as the MRI


@pytest.mark.parametrize("command", ["segment", "classify"])
def test_ct_given_as_mri_is_refused_in_one_line(case: Path, tmp_path: Path, command: str) -> None:
    ct = case / "ct.nii.gz"
    out = tmp_path / "out"
    extra = ["--model", "fusion"] if command == "segment" else ["--seg", str(case / "label.nii.gz")]
    proc = subprocess.run(
        [sys.executable, "-m", "LiverTumorAILib", command, str(ct), "--mri", str(ct), *extra, "--device", "cpu",
         "--progress", "none", "-o", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("livertumorai: error: ct.nii.gz: the MRI looks "
                                                                   "like a CT: "), proc.stderr
    assert "give the MRI (or leave --mri out)" in proc.stderr
    assert not out.exists()


# --------------------------------------------------------------------------- weights not in --weights DIR


@pytest.fixture(scope="module")
def only_tam_unet(tmp_path_factory) -> Path:
    """A --weights folder holding a copy of one model's files (tam-unet) and nothing else."""
    folder = tmp_path_factory.mktemp("weights") / "mine"
    if bundled_model_dir("tam-unet"):
        shutil.copytree(bundled_model_dir("tam-unet"), folder / "tam-unet")
    return folder


def _segment(case: Path, out: Path, weights: Path, model: str, classify: bool) -> tuple[dict, str]:
    """run_segment with a real Progress that prints warnings; (report.json as written, printed text)."""
    from LiverTumorAILib.pipeline import run_segment
    from LiverTumorAILib.progress import Progress

    stream = io.StringIO()
    run_segment(case / "ct.nii.gz", out, model=model, device="cpu", classify=classify, heatmaps="none",
                weights_dir=weights, progress=Progress("none", stream=stream))
    return json.loads((out / "report.json").read_text(encoding="utf-8")), stream.getvalue()


@needs_weights
def test_models_missing_from_weights_dir_are_named_once(case, only_tam_unet, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(ENV_MODELS, raising=False)
    report, printed = _segment(case, tmp_path / "out", only_tam_unet, "dual-stream", classify=True)
    assert report["lesion_count"] > 0  # so a classifier was loaded too
    for name in ("dual-stream", "localizer", "hybrid3d"):
        said = [w for w in report["warnings"] if f"has no {name!r} weights" in w]
        assert len(said) == 1, (name, report["warnings"])
        assert str(only_tam_unet) in said[0] and "the bundled demo weights" in said[0]
        assert f"warning: {said[0]}" in printed
    assert not any("'tam-unet'" in w for w in report["warnings"])


@needs_weights
def test_model_present_in_weights_dir_gives_no_warning(case, only_tam_unet, tmp_path, monkeypatch) -> None:
    from LiverTumorAILib.cli import print_summary

    monkeypatch.delenv(ENV_MODELS, raising=False)
    report, printed = _segment(case, tmp_path / "out", only_tam_unet, "tam-unet", classify=False)
    assert report["models"]["segmentation"]["name"] == "tam-unet"
    # only the localiser, not in the folder, came from the bundled weights
    assert len(report["warnings"]) == 1 and "has no 'localizer' weights" in report["warnings"][0]
    assert "'tam-unet' weights" not in printed

    # --no-classify: each lesion line says "not classified" once, with both diameters
    assert report["lesions"]
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    print_summary(report)
    lines = [ln for ln in sys.stdout.getvalue().splitlines() if ln.startswith("  lesion")]
    assert len(lines) == len(report["lesions"])
    for line, lesion in zip(lines, report["lesions"]):
        assert line.count("not classified") == 1, line
        assert f"longest {lesion['longest_diameter_mm']:.0f} mm 3D" in line
        assert f"{lesion['longest_axial_diameter_mm']:.0f} mm axial" in line


@needs_weights
def test_warnings_list_always_written(case, tmp_path, monkeypatch) -> None:
    from LiverTumorAILib.pipeline import run_classify

    monkeypatch.delenv(ENV_MODELS, raising=False)
    report = run_classify(case / "ct.nii.gz", case / "label.nii.gz", tmp_path / "out", device="cpu")
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert report["lesion_count"] > 0
    assert on_disk["warnings"] == [] and report["warnings"] == []


# --------------------------------------------------------------------------- implausible results


def _crafted(liver_ml: float, tumour_ml: float, tumour_hu: float) -> tuple[dict, list[dict]]:
    """organ summary and lesion rows measured (measure.py) on a crafted CT + label map: a liver
    box of `liver_ml` at 60 HU holding one tumour box of `tumour_ml` at `tumour_hu`, 5 mm voxels."""
    from LiverTumorAILib.measure import lesion_measurements, organ_summary
    from LiverTumorAILib.postprocess import label_lesions

    voxel_ml = 0.125
    label = np.zeros((60, 60, 60), np.uint8)
    side = round((liver_ml / voxel_ml) ** (1 / 3))
    label[:side, :side, :side] = 1
    t = round((tumour_ml / voxel_ml) ** (1 / 3))
    if t:
        label[1:1 + t, 1:1 + t, 1:1 + t] = 2
    hu = np.where(label == 2, tumour_hu, np.where(label == 1, 60.0, -1000.0)).astype(np.int16)
    ct = sitk.GetImageFromArray(hu)
    ct.SetSpacing((5.0, 5.0, 5.0))
    return organ_summary(ct, label), lesion_measurements(ct, hu, label_lesions(label))


@pytest.mark.parametrize("tumour_hu", [40, 0])  # a metastasis, a cyst (water)
def test_plausible_result_has_no_warning(tumour_hu: int) -> None:
    from LiverTumorAILib.plausibility import plausibility_warnings

    organ, lesions = _crafted(1500, 30, tumour_hu)
    assert 1400 < organ["liver_volume_ml"] < 1600 and lesions[0]["mean_hu"] == tumour_hu
    assert plausibility_warnings(organ, lesions) == []


@pytest.mark.parametrize("liver_ml, tumour_ml, tumour_hu, expected", [
    (200, 10, 40, "liver volume 2\\d\\d ml is implausibly small"),
    (8000, 30, 40, "liver volume \\d+ ml is implausibly large"),
    (1500, 1300, 40, "tumour burden \\d+ % is implausible"),
    (1500, 30, -800, "lesion\\(s\\) 1 \\(-800 HU\\) have a mean below -50 HU, the density of fat or air"),
    (1500, 30, -70, "lesion\\(s\\) 1 \\(-70 HU\\) have a mean below -50 HU"),  # fat, as drawn on a real CT
    (0, 0, 40, "no liver was found"),
])
def test_implausible_result_is_flagged(liver_ml, tumour_ml, tumour_hu, expected) -> None:
    from LiverTumorAILib.plausibility import plausibility_warnings

    organ, lesions = _crafted(liver_ml, tumour_ml, tumour_hu)
    warnings = plausibility_warnings(organ, lesions)
    assert len(warnings) == 1, warnings
    assert re.search(expected, warnings[0]), warnings[0]
    assert "the weights may not suit this scan" in warnings[0]
