"""Classifier training crops cut from a segmenter's own masks (training/mask_sources.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorAILib.evaluation import match_lesions, spacing_zyx
from LiverTumorAILib.phantom import generate_case
from training.mask_sources import (
    check_sources,
    lesion_crops_by_source,
    matched_truth_ids,
    segmenter_masks,
    source_tag,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def case():
    return generate_case(1000, size=128, slices=32, n_lesions=4)


def test_crops_follow_the_segmenters_masks_and_carry_the_matched_truth_lesion(case):
    """Each auto crop is centred on a predicted lesion and stands for the truth lesion that
    lesion is matched to (Dice >= 0.1); the truth source gives one crop per truth lesion."""
    by_source = lesion_crops_by_source(case, ["truth", "tam-unet"])
    truth_ids = {int(t["id"]) for t in case.truth["lesions"]}
    assert sorted(i for i, _ in by_source["truth"]) == sorted(truth_ids)
    auto = by_source["tam-unet"]
    assert auto, "the bundled tam-unet found none of the phantom's lesions"
    predicted, _ = segmenter_masks(case.ct, "tam-unet")
    matches, _ = match_lesions(sitk.GetArrayViewFromImage(predicted), sitk.GetArrayViewFromImage(case.lesions),
                               spacing_zyx(case.ct))
    by_pred = {m.pred_id: m for m in matches if m.pred_id is not None}
    assert {c.lesion_id for _, c in auto} == set(by_pred)
    for truth_id, crop in auto:
        assert by_pred[crop.lesion_id].truth_id == truth_id and by_pred[crop.lesion_id].dice >= 0.1
        assert crop.raw_hu and crop.image.shape == (2, 64, 64, 64) and crop.liver is not None
    # the auto crop is drawn from the predicted lesion, not the truth one: its geometry differs
    truth_geo = {i: c.geometry for i, c in by_source["truth"]}
    assert any(not np.allclose(c.geometry.centroid_lps, truth_geo[i].centroid_lps) for i, c in auto)


def test_matching_is_one_to_one_and_ignores_false_positives(case):
    truth = case.lesions
    moved = sitk.GetArrayFromImage(truth).astype(np.uint16)
    moved = np.where(moved > 0, moved + 10, 0).astype(np.uint16)  # same voxels, other ids
    moved[0, 0, 0:3] = 99  # a false positive far from any lesion
    image = sitk.GetImageFromArray(moved)
    image.CopyInformation(truth)
    ids = matched_truth_ids(image, truth)
    assert ids == {int(i) + 10: int(i) for i in np.unique(sitk.GetArrayViewFromImage(truth)) if i}


def test_sources_are_checked_and_tagged():
    assert check_sources(["tam-unet", "truth", "tam-unet"]) == ["truth", "tam-unet"]
    sha = json.loads((ROOT / "Resources" / "Models" / "tam-unet" / "manifest.json").read_text())["sha256"]
    assert source_tag("truth") == "" and source_tag("tam-unet") == f".tam-unet-{sha[:8]}"
    with pytest.raises(SystemExit, match="fusion needs an MRI"):
        check_sources(["fusion"])


def test_build_split_caches_per_case_and_per_split(tmp_path):
    from training.make_classifier_weights import build_split

    first = build_split("val", 2, tmp_path, size=96, slices=24, n_lesions=3, jobs=1, log=lambda _: None)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["cases/96x24_n3/seed5000.npz", "cases/96x24_n3/seed5001.npz", "crops_val.npz"]
    assert len(first["labels"]) > 0 and set(first["sources"]) == {"truth"}
    lines: list[str] = []
    again = build_split("val", 2, tmp_path, size=96, slices=24, n_lesions=3, jobs=1, log=lines.append)
    assert any("cached crops" in line for line in lines)
    assert np.array_equal(again["images"], first["images"]) and np.array_equal(again["labels"], first["labels"])


def test_classifier_weights_refuse_a_device_that_is_not_there(capsys):
    """`--device cuda` on a machine without CUDA stops at once with the reason, before any phantom is made."""
    import torch

    from training.make_classifier_weights import main

    if torch.cuda.is_available():
        pytest.skip("CUDA is present here")
    with pytest.raises(SystemExit) as stop:
        main(["--device", "cuda", "--crops-only", "--train-cases", "1"])
    assert stop.value.code == 2 and "no CUDA GPU is available" in capsys.readouterr().err


def test_build_split_adds_the_extra_phantom_families(tmp_path):
    """`families` adds each family's cases from its own seed range and generator settings (here the
    bright-lesion family's 8-30 mm lesions and a T1 MRI), in its own case folder, and keys the cache."""
    from LiverTumorAILib.phantom import generate_case
    from training.make_classifier_weights import build_split, family_cases, parse_families

    families = parse_families(["bright=1", "t1=1"])
    data = build_split("val", 1, tmp_path, size=96, slices=24, n_lesions=3, jobs=1, log=lambda _: None,
                       families=families)
    plan = family_cases("val", families)
    assert [(suffix, overrides.get("mri_sequence")) for suffix, _, overrides in plan] == [("_bright", "t2"), ("_t1", "t1")]
    bright_seed = plan[0][1]
    assert (tmp_path / "cases" / "96x24_n3_bright" / f"seed{bright_seed}.npz").is_file()
    assert set(data["seeds"].tolist()) <= {5000, bright_seed, plan[1][1]} and bright_seed in data["seeds"]
    case = generate_case(bright_seed, size=96, slices=24, n_lesions=3, **plan[0][2])
    expected = sorted(round(t["diameter_mm"], 3) for t in case.truth["lesions"])
    assert sorted(round(d, 3) for d in data["diameters"][data["seeds"] == bright_seed]) == expected
    lines: list[str] = []
    build_split("val", 1, tmp_path, size=96, slices=24, n_lesions=3, jobs=1, log=lines.append)
    assert not any("cached crops" in line for line in lines)  # without the families it is another split
    with pytest.raises(SystemExit, match="NAME=COUNT"):
        parse_families(["sparkly=3"])
