"""Segmentation trainer core: case preparation, patch sampling, augmentation alignment, a
short real training run whose weights the engine loads."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from training.seg_trainer import (
    RANDOM_WINDOW_LEVEL,
    RANDOM_WINDOW_WIDTH,
    SlabSampler,
    augment_batch,
    load_prepared,
    prepare_case,
    save_prepared,
    segmentation_loss,
    train_segmentation,
)


def _toy_case(seed: int = 0) -> tuple[sitk.Image, sitk.Image, sitk.Image]:
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[:24, :64, :64]
    liver = ((zz - 12) / 9.0) ** 2 + ((yy - 30) / 20.0) ** 2 + ((xx - 34) / 22.0) ** 2 <= 1
    tumour = liver & (((zz - 12) / 4.0) ** 2 + ((yy - 30) / 6.0) ** 2 + ((xx - 40) / 6.0) ** 2 <= 1)
    hu = np.full(liver.shape, -50.0) + rng.normal(0, 5, liver.shape)
    hu[liver] = 110
    hu[tumour] = 30
    label = liver.astype(np.uint8) + tumour.astype(np.uint8)
    ct = sitk.GetImageFromArray(hu.astype(np.int16))
    ct.SetSpacing((1.5, 1.5, 3.0))
    ct.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    lab = sitk.GetImageFromArray(label)
    lab.CopyInformation(ct)
    lesions = sitk.GetImageFromArray(tumour.astype(np.uint16))
    lesions.CopyInformation(ct)
    return ct, lab, lesions


def test_prepare_case_keeps_labels_and_slice_classes(tmp_path):
    ct, label, lesions = _toy_case()
    case = prepare_case("c0", ct, label, spacing=(1.5, 1.5, 3.0), lesions=lesions, lesion_classes={1: 1})
    assert case.ct_hu.dtype == np.int16 and case.label.dtype == np.uint8
    assert case.ct_hu.shape[1] % 32 == 0 and case.ct_hu.shape[2] % 32 == 0
    truth_ml = (sitk.GetArrayFromImage(label) == 2).sum() * 1.5 * 1.5 * 3.0
    got_ml = (case.label == 2).sum() * 1.5 * 1.5 * 3.0
    assert abs(got_ml - truth_ml) / truth_ml < 0.1
    assert set(np.unique(case.slice_class)) == {-1, 1}
    save_prepared([case], tmp_path)
    back = load_prepared(tmp_path)[0]
    assert np.array_equal(back.label, case.label) and np.array_equal(back.slice_class, case.slice_class)


def test_sampler_oversamples_tumour_and_uses_paper_random_window():
    ct, label, lesions = _toy_case()
    case = prepare_case("c0", ct, label, spacing=(1.5, 1.5, 3.0))
    rng = np.random.default_rng(0)
    sampler = SlabSampler([case], [-1, 0, 1], [], 32, rng, {"p_tumour": 0.5, "random_window_p": 1.0})
    samples = [sampler.sample() for _ in range(200)]
    assert samples[0][0].shape == (3, 32, 32) and samples[0][2].shape == (32, 32)
    with_tumour = np.mean([(s[2] == 2).any() for s in samples])
    assert with_tumour > 0.45  # tumour is ~1% of the voxels; without oversampling this would be rare
    # the random window of paper 001 narrows the clip range: normalised values span more than the fixed window
    assert RANDOM_WINDOW_LEVEL == (12.0, 130.0) and RANDOM_WINDOW_WIDTH == (129.0, 298.0)


def test_neighbour_randomisation_rewrites_only_tissue_outside_the_liver():
    """`random_background_p`: blobs outside the liver get new intensities; liver, tumour and the
    padding keep theirs, and with the default (0) nothing changes."""
    from LiverTumorAILib.preprocess import DEFAULT_WINDOW_HU, normalize_ct

    ct, label, _ = _toy_case()
    case = prepare_case("c0", ct, label, spacing=(1.5, 1.5, 3.0))
    zero, hundred = normalize_ct(np.array([0.0, 100.0]), DEFAULT_WINDOW_HU)
    base = {"random_window_p": 0.0, "hu_shift_sd": 0.0, "p_tumour": 0.5, "p_liver": 0.5}
    rewritten = []
    for p in (0.0, 1.0):
        sampler = SlabSampler([case], [-1, 0, 1], [], 64, np.random.default_rng(1), {**base, "random_background_p": p})
        count = 0
        for _ in range(30):
            image, _, lab, _ = sampler.sample()
            hu = (image[1] - zero) * 100.0 / (hundred - zero)  # back to HU (inside the window)
            assert np.allclose(hu[lab == 1], 110, atol=0.1) and np.allclose(hu[lab == 2], 30, atol=0.1)
            outside = hu[lab == 0]  # toy background -50 +- 5 HU, padding clipped to -100
            count += int(((np.abs(outside + 50) > 25) & (np.abs(outside + 100) > 5)).sum())
        rewritten.append(count)
    assert rewritten[0] == 0 and rewritten[1] > 1000


@pytest.mark.parametrize("config", [{"flip_axes": [0, 1]}, {"elastic_prob": 1.0, "elastic_magnitude": 0.05}, {}])
def test_augmentation_keeps_image_and_label_aligned(config):
    rng = np.random.default_rng(1)
    label = torch.zeros(6, 64, 64, dtype=torch.long)
    label[:, 20:44, 16:40] = 1
    label[:, 26:34, 30:38] = 2
    ct = label[:, None].float().repeat(1, 3, 1, 1) * 10.0
    out_ct, _, out_label = augment_batch(ct, None, label, rng, {**config, "noise": 0.0})
    centre = out_ct[:, 1]
    agree = (torch.round(centre / 10.0).long() == out_label).float().mean()
    assert agree > 0.97


def test_losses_fall_when_prediction_matches():
    target = torch.randint(0, 3, (2, 16, 16))
    good = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 10
    bad = torch.zeros_like(good)
    for kind in ("dice_bce", "ce_dice"):
        assert segmentation_loss(good, target, kind) < segmentation_loss(bad, target, kind) - 0.5


def test_short_training_run_writes_weights_the_engine_loads(tmp_path):
    from LiverTumorAILib.weights import load_weights

    torch.manual_seed(0)
    cases = []
    for seed in range(2):
        ct, label, _ = _toy_case(seed)
        cases.append(prepare_case(f"c{seed}", ct, label, spacing=(1.5, 1.5, 3.0)))
    metrics = train_segmentation(
        cases[:1], cases[1:], architecture="tam-unet", out_dir=tmp_path / "tam-unet",
        config={"base_channels": 4},
        train_config={"batch_size": 2, "steps_per_epoch": 2, "patch": 32, "spacing_mm": [1.5, 1.5, 3.0]},
        epochs=1, log=lambda _: None,
        manifest_extra={"version": "test", "training_data": {"synthetic": True, "description": "toy"}},
    )
    assert 0.0 <= metrics["val_liver_dice"] <= 1.0
    model, manifest = load_weights(tmp_path / "tam-unet")
    assert manifest["preprocessing"]["spacing_mm"] == [1.5, 1.5, 3.0]
    assert manifest["config"]["base_channels"] == 4
    assert not list((tmp_path / "tam-unet").glob("*.pt"))  # checkpoints stay out of the weights folder
    with torch.inference_mode():
        assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 3, 32, 32)


def test_resume_on_other_validation_cases_judges_the_best_afresh(tmp_path):
    """A best score from other validation cases must not veto every later epoch."""
    torch.manual_seed(0)
    cases = [prepare_case(f"c{seed}", *_toy_case(seed)[:2], spacing=(1.5, 1.5, 3.0)) for seed in range(3)]
    kwargs = dict(
        architecture="tam-unet", out_dir=tmp_path / "tam-unet", config={"base_channels": 4},
        train_config={"batch_size": 2, "steps_per_epoch": 2, "patch": 32, "spacing_mm": [1.5, 1.5, 3.0], "val_every": 1},
        manifest_extra={"version": "test", "training_data": {"synthetic": True, "description": "toy"}},
    )
    train_segmentation(cases[:1], cases[1:2], epochs=1, log=lambda _: None, **kwargs)
    same: list[str] = []
    train_segmentation(cases[:1], cases[1:2], epochs=2, resume=True, log=same.append, **kwargs)
    assert not any("afresh" in line for line in same)
    other: list[str] = []
    metrics = train_segmentation(cases[:1], cases[2:], epochs=3, resume=True, log=other.append, **kwargs)
    assert any("afresh" in line for line in other)
    assert metrics["epoch"] == 2  # the only epoch judged on the new cases is the one kept


def _toy_kwargs(tmp_path) -> dict:
    return dict(
        architecture="tam-unet", out_dir=tmp_path / "tam-unet", config={"base_channels": 4},
        train_config={"batch_size": 2, "steps_per_epoch": 2, "patch": 32, "spacing_mm": [1.5, 1.5, 3.0], "val_every": 1},
        manifest_extra={"version": "test", "training_data": {"synthetic": True, "description": "toy"}},
    )


def test_init_weights_start_from_a_weights_folder(tmp_path):
    """`init_weights` (make_demo_weights --init-from) loads another run's weights, no checkpoint needed."""
    from LiverTumorAILib.weights import load_weights

    torch.manual_seed(0)
    cases = [prepare_case(f"c{seed}", *_toy_case(seed)[:2], spacing=(1.5, 1.5, 3.0)) for seed in range(2)]
    train_segmentation(cases[:1], cases[1:], epochs=2, log=lambda _: None, **_toy_kwargs(tmp_path / "a"))
    source, source_manifest = load_weights(tmp_path / "a" / "tam-unet")
    lines: list[str] = []
    train_segmentation(cases[:1], cases[1:], epochs=0, init_weights=tmp_path / "a" / "tam-unet", log=lines.append,
                       **_toy_kwargs(tmp_path / "b"))
    copied, manifest = load_weights(tmp_path / "b" / "tam-unet")
    assert any("initialised from" in line for line in lines)
    assert manifest["training"]["init_from"] == {"path": str((tmp_path / "a" / "tam-unet").resolve()),
                                                 "version": "test", "sha256": source_manifest["sha256"]}
    for key, value in source.state_dict().items():
        assert torch.equal(copied.state_dict()[key], value), key


def test_best_weights_are_written_before_the_run_ends(tmp_path):
    """A run stopped after its first improving validation still leaves loadable best weights."""
    from LiverTumorAILib.weights import load_weights

    torch.manual_seed(0)
    cases = [prepare_case(f"c{seed}", *_toy_case(seed)[:2], spacing=(1.5, 1.5, 3.0)) for seed in range(2)]

    def stop_after_first_validation(line: str) -> None:
        if "val_liver_dice" in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_segmentation(cases[:1], cases[1:], epochs=5, log=stop_after_first_validation, **_toy_kwargs(tmp_path))
    _, manifest = load_weights(tmp_path / "tam-unet")
    assert manifest["metrics"]["epoch"] == 0 and "val_tumour_dice" in manifest["metrics"]
