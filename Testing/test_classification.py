"""Lesion classification: crops, hybrid3d / 2D baselines, calibration, Grad-CAM, classify_lesions,
heatmap combination and the classifier trainer. Fast (small synthetic volumes, a tiny model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

torch = pytest.importorskip("torch")

from LiverTumorAILib.classification import calibration as cal  # noqa: E402
from LiverTumorAILib.classification.classify import classify_lesions, gradcam_on_grid, json_ready  # noqa: E402
from LiverTumorAILib.classification.crops import (  # noqa: E402
    FOV_MAX_MM,
    crop_side_mm,
    extract_lesion_crops,
    normalise_ct,
)
from LiverTumorAILib.classification.gradcam import gradcam3d, paste_crop_maps  # noqa: E402
from LiverTumorAILib.heatmaps.combine import combine_heatmaps, heatmap_images  # noqa: E402
from LiverTumorAILib.models import registry  # noqa: E402
from LiverTumorAILib.models.classifiers2d import slice_majority_vote  # noqa: E402

#: A tiny hybrid3d working on 32^3 crops (the architecture is size-agnostic; ``crop_size`` in the
#: config makes classify_lesions extract crops of that size), so the test trains in seconds.
# a 32^3 crop without input pooling: the same 4^3 Grad-CAM grid as the bundled 64^3 model with input_pool=2
TINY = {"channels": [4, 8, 16, 32], "fc_hidden": 16, "attention_reduction": 4, "dropout": 0.0, "crop_size": 32, "input_pool": 1}
S = TINY["crop_size"]


# ----------------------------------------------------------------------------- synthetic data
def toy_lesion_hu(rng, radius: float, malignant: bool, size: int = S, centre=None, liver: float = 110.0) -> np.ndarray:
    """HU volume: liver background with a hypodense lesion; malignant ones have an enhancing rim."""
    c = np.full(3, (size - 1) / 2.0) if centre is None else np.asarray(centre, float)
    z, y, x = np.indices((size,) * 3, dtype=np.float32)
    d = np.sqrt((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2)
    hu = np.full((size,) * 3, liver, np.float32) + rng.normal(0, 8, (size,) * 3).astype(np.float32)
    if malignant:
        hu[d <= radius] = 35.0
        hu[(d <= radius) & (d > radius - 2)] = 175.0
    else:
        hu[d <= radius] = 50.0
    return hu + rng.normal(0, 8, hu.shape).astype(np.float32) * (d <= radius)


def toy_items(n: int, seed: int):
    from training.cls_trainer import CropItem

    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        label = i % 2
        r = rng.uniform(5.5, 9)
        items.append(CropItem(toy_lesion_hu(rng, r, bool(label))[None], label, 2 * r * 1.4, "toy", i))
    return items


def make_ct(size=(80, 80, 32), spacing=(1.0, 1.0, 2.5), direction=None, lesions=(), seed=0, liver=110.0):
    """CT (int16 HU, background liver) and uint16 lesion map; lesions: (centre_lps, radius_mm, malignant)."""
    rng = np.random.default_rng(seed)
    ct = sitk.Image(list(size), sitk.sitkInt16)
    ct.SetSpacing(spacing)
    if direction is not None:
        ct.SetDirection(direction)
    # origin such that the physical centre of the image is at (0, 0, 0)
    d = np.asarray(ct.GetDirection()).reshape(3, 3)
    half = d @ (np.asarray(spacing) * (np.asarray(size) - 1) / 2.0)
    ct.SetOrigin((-half).tolist())
    idx = np.indices(size[::-1], dtype=np.float64)  # z, y, x
    xyz = np.stack([idx[2], idx[1], idx[0]]).reshape(3, -1)
    phys = (d * np.asarray(spacing)[None, :]) @ xyz + np.asarray(ct.GetOrigin())[:, None]
    hu = np.full(size[::-1], liver, np.float32) + rng.normal(0, 8, size[::-1])
    lab = np.zeros(size[::-1], np.uint16)
    for k, (centre, radius, malignant) in enumerate(lesions, start=1):
        dist = np.linalg.norm(phys - np.asarray(centre, float)[:, None], axis=0).reshape(size[::-1])
        inside = dist <= radius
        lab[inside] = k
        if malignant:
            hu[inside] = 35.0
            hu[inside & (dist > radius - 2.5)] = 175.0
        else:
            hu[inside] = 50.0
    img = sitk.GetImageFromArray(np.round(hu).astype(np.int16))
    img.CopyInformation(ct)
    les = sitk.GetImageFromArray(lab)
    les.CopyInformation(ct)
    return img, les


def train_toy(out, config: dict, n_test: int = 8, calibrate_on: str = "validation") -> dict:
    """Train a tiny hybrid3d for a few epochs on toy crops and save it to ``out``."""
    from training.cls_trainer import train_classifier

    torch.manual_seed(0)
    return train_classifier(
        toy_items(48, 1),
        toy_items(16, 2),
        out_dir=out,
        epochs=6,
        batch_size=8,
        lr=3e-3,
        config=config,
        test_items=toy_items(n_test, 3),
        training_data={"description": "toy spheres (unit test)", "synthetic": True},
        calibrate_on=calibrate_on,
        log=lambda s: None,
    )


@pytest.mark.parametrize("split", ["train", "val"])
def test_training_refuses_a_split_with_one_class_and_saves_nothing(tmp_path, split):
    """A data set whose lesions are all benign (a CSV without malignant classes) must stop with a
    clear one-line message (InputError: livertumorai-train prints it, no traceback), not save
    weights that report "AUC None"."""
    from LiverTumorAILib.errors import InputError
    from training.cls_trainer import train_classifier

    items = {"train": toy_items(8, 1), "val": toy_items(4, 2)}
    items[split] = [it for it in items[split] if it.label == 0]
    with pytest.raises(InputError, match=f"the {'training' if split == 'train' else 'validation'} lesions are all "
                                         "benign .0 malignant of .*needs both classes"):
        train_classifier(items["train"], items["val"], out_dir=tmp_path / "w", epochs=1, log=lambda s: None)
    assert not (tmp_path / "w").exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny hybrid3d trained for a few epochs on toy crops, saved as a weights folder."""
    out = tmp_path_factory.mktemp("weights") / "hybrid3d"
    return out, train_toy(out, dict(TINY))


# ----------------------------------------------------------------------------- models
@pytest.mark.parametrize("channels,fusion,pool", [(1, "early", 2), (2, "early", 1), (2, "attention", 2), (2, "attention", 1)])
def test_hybrid3d_shapes(channels, fusion, pool):
    model = registry.build_model("hybrid3d", {"in_channels": channels, "fusion": fusion, "input_pool": pool})
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(2, channels, 64, 64, 64))
    assert set(out) == {"logits", "aux_logits"}
    assert out["logits"].shape == (2, 2) and out["aux_logits"].shape == (2, 2)
    assert registry.default_config("hybrid3d")["channels"] == [16, 32, 64, 128]
    # the Grad-CAM layer: 8^3 at full resolution, 4^3 after the 2x input pooling
    assert tuple(model.attention.last_pooled.shape) == (2, 128)
    feat = model.block4(model.block3(torch.zeros(1, model.block3[0].in_channels, 64 // (4 * pool), 64 // (4 * pool), 64 // (4 * pool))))
    assert feat.shape[-1] == 8 // pool
    with pytest.raises(ValueError):
        model(torch.zeros(1, 3 - channels, 64, 64, 64))


@pytest.mark.parametrize("channels", [1, 2])
def test_hybrid3d_radial_prior_and_shell_statistics_shapes(channels):
    cfg = {"in_channels": channels, "radial_prior": True, "shell_stats": True}
    model = registry.build_model("hybrid3d", cfg)
    assert model.input_channels == channels + 1
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(2, channels + 1, 64, 64, 64))
    assert out["logits"].shape == (2, 2)
    with pytest.raises(ValueError):  # the radial channel is missing
        model(torch.zeros(2, channels, 64, 64, 64))
    with pytest.raises(ValueError):
        registry.build_model("hybrid3d", {"in_channels": channels, "shell_stats": True})


def test_radial_prior_map_marks_the_expected_lesion_surface():
    from LiverTumorAILib.classification.crops import crop_side_mm, radial_prior_map

    size, d = 64, 20.0
    m = radial_prior_map(d, size)
    radius_vox = size * d / crop_side_mm(d) / 2
    assert m.shape == (size,) * 3 and m.dtype == np.float32
    assert m.min() >= -1.0 and m.max() == pytest.approx(2.0)
    c = size // 2
    assert m[c, c, c] < -0.9  # the centre
    # along an axis the map crosses 0 at the expected radius
    profile = m[c, c, c:]
    crossing = int(np.argmax(profile >= 0))
    assert abs((crossing + 0.5) - radius_vox) <= 1.0
    # symmetric, so the cube-symmetry augmentation leaves it unchanged
    assert np.array_equal(m, np.flip(m, 0)) and np.array_equal(m, np.transpose(m, (2, 0, 1)))
    # a larger lesion occupies more of its (larger) crop
    assert (radial_prior_map(50.0, size) < 0).sum() > (m < 0).sum()


def test_shell_statistics_read_lesion_and_rim_values():
    from LiverTumorAILib.classification.crops import radial_prior_map
    from LiverTumorAILib.models.hybrid3d import SHELL_EDGES, ShellStatistics

    radial = radial_prior_map(20.0, 32)
    r = radial + 1.0
    img = np.where(r < 0.7, -1.0, np.where(r < 1.0, 0.5, 0.2)).astype(np.float32)  # core, wall, liver
    x = torch.as_tensor(np.stack([img, radial])[None])
    f = ShellStatistics(1)(x)[0].numpy()
    n = len(SHELL_EDGES) - 1
    assert f.shape == (2 * n + 3,)
    means, stds = f[0 : 2 * n : 2], f[1 : 2 * n : 2]
    assert means[0] == pytest.approx(-1.0) and means[1] == pytest.approx(-1.0)
    assert means[2] == pytest.approx(0.5) and means[3] == pytest.approx(0.2) and means[4] == pytest.approx(0.2)
    assert np.all(stds < 1e-3)
    assert f[2 * n] == pytest.approx(-1.2) and f[2 * n + 2] == pytest.approx(0.3)  # contrasts to the rim shell


def _edge_lesion(size: int = 32, diameter: float = 20.0):
    """A lesion (-1.0) whose surroundings are liver (0.2) on one side and fat (-1.7) on the other,
    the radial channel, and the organ mask (liver + lesion)."""
    from LiverTumorAILib.classification.crops import radial_prior_map

    radial = radial_prior_map(diameter, size)
    r = radial + 1.0
    x = np.indices((size,) * 3)[2]
    organ = (r < 1.0) | (x < size // 2)
    img = np.where(r < 1.0, -1.0, np.where(organ, 0.2, -1.7)).astype(np.float32)
    return img, radial, organ.astype(np.float32)


def test_liver_shell_statistics_ignore_tissue_outside_the_liver():
    from LiverTumorAILib.models.hybrid3d import SHELL_EDGES, ShellStatistics

    img, radial, organ = _edge_lesion()
    n = len(SHELL_EDGES) - 1
    whole = ShellStatistics(1)(torch.as_tensor(np.stack([img, radial])[None]))[0].numpy()
    masked = ShellStatistics(1, liver=True)(torch.as_tensor(np.stack([img, organ, radial])[None]))[0].numpy()
    assert masked.shape == (2 * n + 3 + n,)
    # the rim and surrounding shells: liver only with the mask, half fat without it
    assert masked[2 * 3] == pytest.approx(0.2) and masked[2 * 4] == pytest.approx(0.2)
    assert masked[2 * 3 + 1] < 1e-3
    assert whole[2 * 3] < -0.5 and whole[2 * 3 + 1] > 0.5
    # the lesion's contrast to its rim is then the lesion-to-liver contrast
    assert masked[2 * n] == pytest.approx(-1.2)
    # each shell's liver fraction: the lesion's shells are all liver, the rim about half
    fractions = masked[2 * n + 3 :]
    assert fractions[0] == pytest.approx(1.0) and 0.4 < fractions[3] < 0.7
    # no liver in the crop (a mask that missed the lesion): whole shells, not statistics of nothing
    none = ShellStatistics(1, liver=True)(torch.as_tensor(np.stack([img, 0 * organ, radial])[None]))[0].numpy()
    assert np.allclose(none[: 2 * n + 3], whole, atol=1e-5) and np.all(none[2 * n + 3 :] == 0)


@pytest.mark.parametrize("channels", [1, 2])
def test_hybrid3d_liver_context_shapes(channels):
    cfg = {"in_channels": channels, "radial_prior": True, "shell_stats": True, "liver_context": True}
    model = registry.build_model("hybrid3d", cfg)
    assert model.input_channels == channels + 2 and model.liver_context
    model.eval()
    with torch.no_grad():
        assert model(torch.zeros(2, channels + 2, 64, 64, 64))["logits"].shape == (2, 2)
    with pytest.raises(ValueError):  # the liver channel is missing
        model(torch.zeros(2, channels + 1, 64, 64, 64))
    with pytest.raises(ValueError):
        registry.build_model("hybrid3d", {"in_channels": channels, "radial_prior": True, "liver_context": True})


def test_crop_carries_the_liver_mask_from_a_sub_grid():
    """The organ mask may come on the segmented sub-grid (what `segment` passes): each crop gets it
    in physical space, and nothing outside the sub-grid counts as liver."""
    ct, les = make_ct(size=(80, 80, 32), lesions=[((0.0, 0.0, 0.0), 8.0, True)])
    arr = np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint8)
    z, y, x = np.indices(arr.shape)
    arr[x < 50] = 1  # voxel centres up to x = 9.5 mm (origin -39.5, spacing 1): liver to x = 10 mm
    arr[sitk.GetArrayViewFromImage(les) > 0] = 2
    label = sitk.GetImageFromArray(arr)
    label.CopyInformation(ct)
    sub = sitk.RegionOfInterest(label, [55, 80, 32], [25, 0, 0])  # the sub-grid starts at x = -15 mm
    (crop,) = extract_lesion_crops(ct, les, liver=sub)
    (bare,) = extract_lesion_crops(ct, les)
    assert bare.liver is None and crop.liver.dtype == np.uint8
    xs = crop.origin[0] + crop.spacing_mm * np.arange(crop.size)  # the crop spans -20..20 mm
    expected = (xs < 10.0) & (xs > -15.0)
    column = crop.liver[crop.size // 2, crop.size // 2]
    off = (np.abs(xs - 10.0) > crop.spacing_mm) & (np.abs(xs + 15.0) > crop.spacing_mm)  # off the edges
    assert not expected[0] and expected[crop.size // 2]
    assert np.array_equal(column[off].astype(bool), expected[off])
    assert np.all(crop.liver[crop.mask > 0] == 1)
    x_in = crop.model_input(radial_prior=True, liver_context=True)
    assert x_in.shape == (3, crop.size, crop.size, crop.size) and np.array_equal(x_in[1], crop.liver)
    assert np.all(bare.model_input(liver_context=True)[1] == 1)  # no mask: no restriction


def test_prepare_input_moves_the_liver_mask_with_the_image():
    from training.cls_trainer import prepare_input

    rng = np.random.default_rng(0)
    hu = np.full((16, 16, 16), 100.0, np.float32)
    hu[2:5, 3:9, 10:14] = 300.0  # an asymmetric marker
    mri = np.where(hu > 200, 2.0, 0.0).astype(np.float32)
    liver = (hu > 200).astype(np.uint8)
    for _ in range(6):
        x = prepare_input(np.stack([hu, mri]), rng, liver=liver, hu_shift=0.0, random_window_p=0.0)
        assert x.shape == (3, 16, 16, 16)
        assert set(np.unique(x[2])) == {0.0, 1.0}  # no intensity augmentation on the mask
        assert np.array_equal(x[2] > 0.5, x[0] > x[0].mean())  # same symmetry as the CT
        assert np.array_equal(x[2] > 0.5, x[1] > x[1].mean())


def test_geometry_jitter_moves_the_crop_and_rescales_the_radial_prior():
    """What a partial segmentation does at inference (crop off the lesion's centre, radial prior of a
    wrong diameter) is simulated in training; the mask moves with the image, the sizes stay."""
    from training.cls_trainer import CENTRE_JITTER_VOX, DIAMETER_JITTER, prepare_input

    size = 32
    hu = np.full((size,) * 3, 100.0, np.float32)
    hu[14:18, 14:18, 14:18] = 300.0  # a lesion at the centre
    liver = (hu > 200).astype(np.uint8)
    plain = prepare_input(hu[None], None, radial_diameter_mm=12.0, liver=liver)
    rng = np.random.default_rng(3)
    moved_any, radial_changed = False, False
    for _ in range(8):
        x = prepare_input(hu[None], rng, radial_diameter_mm=12.0, liver=liver, hu_shift=0.0, random_window_p=0.0,
                          geometry_jitter_p=1.0)
        assert x.shape == plain.shape
        centre = np.argwhere(x[1] > 0.5).mean(axis=0)
        assert np.all(np.abs(centre - 15.5) <= CENTRE_JITTER_VOX + 1e-6)
        assert np.array_equal(x[1] > 0.5, x[0] > x[0].mean())  # the mask went with the image
        moved_any |= bool(np.any(np.abs(centre - 15.5) >= 1))
        inside = int((x[2] < 0).sum())  # voxels inside the radial prior's sphere
        lo, hi = DIAMETER_JITTER
        assert (lo ** 3) * 0.6 <= inside / int((plain[2] < 0).sum()) <= (hi ** 3) * 1.6
        radial_changed |= not np.allclose(x[2], plain[2])
    assert moved_any and radial_changed
    # off by default: no shift, same radial prior
    x = prepare_input(hu[None], np.random.default_rng(0), radial_diameter_mm=12.0, liver=liver, hu_shift=0.0,
                      random_window_p=0.0)
    assert np.allclose(x[2], plain[2]) and int((x[1] > 0.5).sum()) == 64


def test_liver_context_classifier_trains_and_uses_the_liver_mask(tmp_path):
    out = tmp_path / "hybrid3d"
    cfg = {**TINY, "radial_prior": True, "shell_stats": True, "liver_context": True}
    metrics = train_toy(out, cfg, n_test=16)
    assert metrics["test"]["auc"] >= 0.9
    assert json.loads((out / "manifest.json").read_text(encoding="utf-8"))["config"]["liver_context"]
    ct, les = make_ct(size=(96, 96, 40), lesions=[((-20.0, -15.0, 0.0), 10.0, True), ((20.0, 15.0, 10.0), 10.0, False)])
    organ = sitk.Cast(sitk.GetImageFromArray(np.ones(sitk.GetArrayViewFromImage(ct).shape, np.uint8)), sitk.sitkUInt8)
    organ.CopyInformation(ct)
    malignant, benign = classify_lesions(ct, les, weights_dir=tmp_path, gradcam=False, liver=organ)
    assert malignant["malignancy_probability"] > benign["malignancy_probability"]
    assert "liver mask" not in malignant["note"]
    (without,) = classify_lesions(ct, les, weights_dir=tmp_path, gradcam=False)[:1]
    assert "no liver mask given" in without["note"]
    # an all-liver mask is what "no mask" stands for: the same call
    assert without["malignancy_probability"] == pytest.approx(malignant["malignancy_probability"], abs=1e-4)


def test_radial_shell_classifier_trains_and_classifies_a_truth_segmentation(tmp_path):
    """The CT-only configuration of the bundled weights, end to end: trainer (radial channel appended
    to each item), save/load, ``classify_lesions`` (radial channel from the segmented lesion)."""
    out = tmp_path / "hybrid3d"
    metrics = train_toy(out, {**TINY, "radial_prior": True, "shell_stats": True}, n_test=16, calibrate_on="validation+test")
    assert metrics["test"]["auc"] >= 0.9
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["config"]["radial_prior"] and manifest["config"]["shell_stats"]
    # the temperature the engine uses is the pooled fit (16 + 16 lesions); the validation-only one is kept
    assert manifest["calibration"]["fitted_on"] == "validation + test lesions (16 + 16)"
    assert manifest["calibration_validation_only"]["n_val"] == 16 and "fitted_on" not in manifest["calibration_validation_only"]
    pooled_t = manifest["calibration"]["temperature"]
    assert manifest["metrics"]["test_at_pooled_temperature"]["auc"] == metrics["test"]["auc"]
    ct, les = make_ct(size=(96, 96, 40), lesions=[((-20.0, -15.0, 0.0), 10.0, True), ((20.0, 15.0, 10.0), 10.0, False)])
    malignant, benign = classify_lesions(ct, les, weights_dir=tmp_path, gradcam=True)
    assert malignant["malignancy_probability"] > benign["malignancy_probability"]
    assert malignant["temperature"] == pytest.approx(pooled_t, abs=1e-4)
    assert sitk.GetArrayFromImage(malignant["gradcam"]).shape == (S, S, S)


def test_2d_baselines_and_majority_vote():
    labels, votes = slice_majority_vote(np.array([[[2.0, 0], [0, 1], [0, 3]], [[0, 1.0], [2, 0], [0.5, 0]]]))
    assert labels.tolist() == [1, 0]
    np.testing.assert_allclose(votes[0], [1 / 3, 2 / 3])
    # a 1:1 tie is broken by the mean probability
    labels, _ = slice_majority_vote(np.array([[[0.0, 0.2], [3.0, 0.0]]]))
    assert labels.tolist() == [0]
    for arch in ("resnet50-2d", "densenet121-2d"):
        m = registry.build_model(arch, {"n_slices": 3, "slice_stride": 4})
        m.eval()
        with torch.no_grad():
            out = m(torch.randn(1, 1, 32, 32, 32))
        assert out["logits"].shape == (1, 2) and out["slice_logits"].shape == (1, 3, 2)
        assert int(out["majority"][0]) == int(slice_majority_vote(out["slice_logits"])[0][0])


# ----------------------------------------------------------------------------- crops
def _mask_centre(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask > 0).mean(axis=0)


def test_crop_side_rule():
    assert crop_side_mm(4.0) == 32.0  # min clamp
    assert crop_side_mm(40.0) == pytest.approx(76.0)
    assert crop_side_mm(120.0) == FOV_MAX_MM  # max clamp, lesion still fits
    assert crop_side_mm(200.0) == pytest.approx(220.0)  # larger than max: whole lesion scaled in


def test_crop_at_image_border_is_padded_with_air():
    ct, les = make_ct(lesions=[((-36.0, -36.0, -36.0), 8.0, True)])  # corner of the volume
    (crop,) = extract_lesion_crops(ct, les)
    assert crop.image.shape == (1, 64, 64, 64)
    assert crop.outside_fraction > 0.3
    air = float(normalise_ct(np.array(-1000.0)))
    assert np.isclose(crop.image[0, 0, 0, 0], air)  # padded corner = window minimum
    assert np.isfinite(crop.image).all()
    # the lesion part inside the image is where it should be: towards the crop centre
    assert np.all(np.abs(_mask_centre(crop.mask) - 31.5) < 8)


def test_lesion_larger_than_crop_is_scaled_in_whole():
    ct, les = make_ct(size=(72, 72, 72), spacing=(4.0, 4.0, 4.0), lesions=[((0.0, 0.0, 0.0), 100.0, False)])
    (crop,) = extract_lesion_crops(ct, les)
    assert crop.larger_than_max_fov and crop.side_mm > FOV_MAX_MM
    m = crop.mask
    assert m.sum() > 0
    # no lesion voxel touches the crop faces: the whole lesion is inside
    assert not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any() or m[:, :, 0].any() or m[:, :, -1].any())


def test_crop_geometry_on_flipped_volume():
    lesion = ((6.0, -9.0, 12.0), 9.0, True)
    ct_a, les_a = make_ct(lesions=[lesion], seed=3)
    flip = (-1.0, 0, 0, 0, -1.0, 0, 0, 0, -1.0)
    ct_b, les_b = make_ct(direction=flip, lesions=[lesion], seed=3)
    (a,) = extract_lesion_crops(ct_a, les_a)
    (b,) = extract_lesion_crops(ct_b, les_b)
    for crop in (a, b):
        assert np.all(np.abs(_mask_centre(crop.mask) - 31.5) < 1.0)  # lesion at the crop centre
    np.testing.assert_allclose(a.origin, b.origin, atol=1e-3)
    # same anatomy -> same crop (up to the noise, which is not flipped with the grid)
    assert np.mean(a.mask != b.mask) < 0.01
    inside = a.mask > 0
    assert abs(a.image[0][inside].mean() - b.image[0][inside].mean()) < 0.05


def test_crop_with_mri_on_its_own_grid():
    ct, les = make_ct(lesions=[((0.0, 0.0, 0.0), 10.0, True)])
    arr = np.random.default_rng(0).normal(100.0, 10.0, (20, 40, 40)).astype(np.float32)
    arr[7:13, 15:25, 15:25] = 400.0  # bright blob at the centre
    mri = sitk.GetImageFromArray(arr)
    mri.SetSpacing((2.0, 2.0, 4.0))
    mri.SetOrigin((-39.0, -39.0, -38.0))
    (crop,) = extract_lesion_crops(ct, les, mri)
    assert crop.image.shape == (2, 64, 64, 64) and crop.channels == ("CT", "MRI")
    m = crop.image[1]
    assert m[32, 32, 32] > m[5, 5, 5]


# ----------------------------------------------------------------------------- calibration
def test_temperature_scaling_reduces_nll_and_ece_on_held_out_data():
    rng = np.random.default_rng(0)

    def sample(n):
        margin = rng.normal(0, 1.5, n)
        y = (rng.random(n) < 1 / (1 + np.exp(-margin))).astype(int)
        return np.stack([np.zeros(n), 4.0 * margin], axis=1), y  # 4x over-confident logits

    z_val, y_val = sample(2000)
    z_test, y_test = sample(2000)
    t = cal.fit_temperature(z_val, y_val)
    assert 3.0 < t < 5.0
    assert cal.nll(z_test, y_test, t) < cal.nll(z_test, y_test) - 0.05
    ece_before = cal.expected_calibration_error(cal.softmax(z_test), y_test)
    ece_after = cal.expected_calibration_error(cal.softmax(z_test, t), y_test)
    assert ece_after < 0.5 * ece_before and ece_after < 0.05
    assert cal.roc_auc(cal.softmax(z_test, t)[:, 1], y_test) == pytest.approx(cal.roc_auc(z_test[:, 1], y_test))
    rec = cal.calibration_record(z_val, y_val)
    assert rec["ece_after"] < rec["ece_before"] and rec["temperature"] == pytest.approx(t, rel=1e-4)
    assert cal.fit_temperature(z_val[:5], np.zeros(5, int)) == 1.0  # one class: nothing to fit


# ----------------------------------------------------------------------------- trainer + Grad-CAM + classify
def test_trainer_saves_calibrated_manifest(trained):
    from LiverTumorAILib.weights import load_weights

    folder, metrics = trained
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["task"] == "classification" and manifest["architecture"] == "hybrid3d"
    assert manifest["dtype"] == "float16" and manifest["training_data"]["synthetic"] is True
    assert manifest["calibration"]["temperature"] > 0 and "ece_after" in manifest["calibration"]
    assert manifest["preprocessing"]["window_hu"] == [-100.0, 400.0]
    assert metrics["val"]["auc"] is not None and metrics["test"]["auc"] is not None
    model, _ = load_weights(folder)
    assert model.livertumorai_config["channels"] == TINY["channels"]


def test_gradcam_differs_between_lesions_and_concentrates_on_them(trained):
    from LiverTumorAILib.weights import load_weights
    from training.cls_trainer import prepare_input

    model, _ = load_weights(trained[0])
    rng = np.random.default_rng(7)
    a = toy_lesion_hu(rng, 8, True)
    b = toy_lesion_hu(rng, 5.5, True)
    x = torch.as_tensor(np.stack([prepare_input(a[None]), prepare_input(b[None])]))
    cams = gradcam3d(model, x)
    assert cams.shape == (2, S, S, S) and cams.min() >= 0 and cams.max() <= 1
    assert cams[0].max() > 0 and cams[1].max() > 0
    assert np.abs(cams[0] - cams[1]).mean() > 1e-3
    c = (S - 1) / 2.0
    z, y, xx = np.indices((S,) * 3)
    d = np.sqrt((z - c) ** 2 + (y - c) ** 2 + (xx - c) ** 2)
    near = d <= 8 + 3  # lesion plus a rim of 3 voxels
    assert cams[0][near].mean() > 1.5 * cams[0][~near].mean()


def test_classify_lesions_on_truth_segmentation(trained):
    folder, _ = trained
    flip = (-1.0, 0, 0, 0, 1.0, 0, 0, 0, -1.0)
    ct, les = make_ct(
        size=(96, 96, 40),
        direction=flip,
        lesions=[((-20.0, -15.0, 0.0), 10.0, True), ((20.0, 15.0, 10.0), 9.0, False), ((0.0, 25.0, -20.0), 3.0, True)],
    )
    res = classify_lesions(ct, les, weights_dir=folder.parent, gradcam=True)
    assert [r["id"] for r in res] == [1, 2, 3]
    for r in res:
        assert 0.0 <= r["malignancy_probability"] <= 1.0
        assert r["model"] == "hybrid3d" and r["modality"] == "CT" and r["calibrated"]
    assert res[2]["predicted_class"] == "indeterminate" and not res[2]["reliable"] and "10 mm" in res[2]["note"]
    assert res[0]["predicted_class"] in ("benign", "malignant") and res[0]["reliable"]
    json.dumps(json_ready(res))
    cam = gradcam_on_grid(res, ct)
    assert cam.GetSize() == ct.GetSize() and cam.GetDirection() == ct.GetDirection()
    arr = sitk.GetArrayFromImage(cam)
    lab = sitk.GetArrayFromImage(les)
    assert 0.0 <= arr.min() and arr.max() <= 1.0 and arr.max() > 0
    assert arr[lab == 1].mean() > arr[lab == 0].mean()


def test_classify_lesions_without_weights(monkeypatch, tmp_path):
    import LiverTumorAILib.weights as w
    from LiverTumorAILib.errors import WeightsError

    monkeypatch.setattr(w, "bundled_models_dirs", lambda: [tmp_path / "none"])
    monkeypatch.delenv(w.ENV_MODELS, raising=False)
    ct, les = make_ct(lesions=[((0.0, 0.0, 0.0), 8.0, True)])
    with pytest.raises(WeightsError):
        classify_lesions(ct, les, weights_dir=tmp_path)
    (r,) = classify_lesions(ct, les, weights_dir=tmp_path, require_weights=False)
    assert r["malignancy_probability"] is None and r["predicted_class"] == "indeterminate" and not r["reliable"]


def test_paste_crop_maps_lands_on_the_lesion():
    flip = (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0)
    ct, les = make_ct(direction=flip, lesions=[((10.0, -12.0, 5.0), 8.0, True)])
    (crop,) = extract_lesion_crops(ct, les)
    cam = crop.mask.astype(np.float32)  # a "map" that is exactly the lesion
    img = paste_crop_maps([crop], [cam], ct)
    arr = sitk.GetArrayFromImage(img)
    lab = sitk.GetArrayFromImage(les) > 0
    assert arr[lab].mean() > 0.7 and arr[~lab].mean() < 0.01


def test_bundled_classifier_if_present():
    """The bundled demo classifier (CT+MRI, or CT-only) runs end to end on a synthetic lesion."""
    import LiverTumorAILib.weights as w

    bundled = [n for n in ("hybrid3d-ctmri", "hybrid3d") if any((d / n / "manifest.json").is_file() for d in w.bundled_models_dirs())]
    if not bundled:
        pytest.skip("no bundled Resources/Models/hybrid3d(-ctmri) weights")
    ct, les = make_ct(lesions=[((0.0, 0.0, 0.0), 12.0, True)])
    for name in bundled:
        mri = sitk.Cast(ct, sitk.sitkFloat32) + 1000.0 if name == "hybrid3d-ctmri" else None
        (r,) = classify_lesions(ct, les, mri, gradcam=True)
        assert r["model"] == name
        assert 0.0 <= r["malignancy_probability"] <= 1.0 and r["synthetic_weights"] and r["calibrated"]
        assert sitk.GetArrayFromImage(r["gradcam"]).max() <= 1.0


# ----------------------------------------------------------------------------- heatmaps
def test_combine_heatmaps_max_rule_on_ct_grid():
    ct, les = make_ct(size=(40, 40, 20), lesions=[((0.0, 0.0, 0.0), 6.0, True)])
    a = sitk.GetImageFromArray(np.full((20, 40, 40), 0.25, np.float32))
    a.CopyInformation(ct)
    arr = sitk.GetArrayFromImage(a)
    arr[10, 20, 20] = 0.5
    a = sitk.GetImageFromArray(arr)
    a.CopyInformation(ct)
    # a source on another grid (coarser, its own origin) is resampled
    b = sitk.Image([10, 10, 5], sitk.sitkFloat32) + 2.0
    b.SetSpacing((4.0, 4.0, 10.0))
    b.SetOrigin((-10.0, -10.0, -15.0))
    out = combine_heatmaps({"segmentation": a, "gradcam": b}, ct)
    o = sitk.GetArrayFromImage(out)
    assert out.GetSize() == ct.GetSize() and out.GetOrigin() == ct.GetOrigin()
    assert out.GetPixelID() == sitk.sitkFloat32 and o.min() >= 0 and o.max() <= 1
    assert o[10, 20, 20] == pytest.approx(1.0)  # covered by b (max 1 after normalisation)
    assert o[0, 0, 0] == pytest.approx(0.5)  # outside b: a normalised (0.25 / 0.5)
    liver = sitk.Cast(les > 0, sitk.sitkUInt8)
    masked = sitk.GetArrayFromImage(combine_heatmaps({"segmentation": a}, ct, liver_mask=liver, dilate_mm=2.0))
    assert masked[0, 0, 0] == 0.0 and masked[10, 20, 20] == pytest.approx(1.0)
    files = heatmap_images({"segmentation": a, "Grad CAM": b}, ct, mode="all")
    assert set(files) == {"heatmap.nii.gz", "heatmap_segmentation.nii.gz", "heatmap_grad-cam.nii.gz"}
    empty = sitk.GetArrayFromImage(combine_heatmaps({}, ct))
    assert empty.shape == (20, 40, 40) and not empty.any()


def test_classify_with_mri_falls_back_to_ct_weights(trained, monkeypatch, tmp_path):
    import LiverTumorAILib.weights as w

    monkeypatch.setattr(w, "bundled_models_dirs", lambda: [tmp_path / "none"])
    monkeypatch.delenv(w.ENV_MODELS, raising=False)
    ct, les = make_ct(lesions=[((0.0, 0.0, 0.0), 10.0, True)])
    mri = sitk.Cast(ct, sitk.sitkFloat32) + 1000.0
    (r,) = classify_lesions(ct, les, mri, weights_dir=trained[0].parent, gradcam=False)
    assert r["modality"] == "CT" and "CT-only" in r["note"] and "gradcam" not in r
