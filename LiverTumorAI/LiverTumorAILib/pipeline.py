"""The whole flow behind `livertumorai segment | classify | demo` and the Slicer module.

read -> validate -> localise + segment -> post-process -> lesions + measurements ->
classify -> heatmap -> write, all outputs staged in a temporary folder and renamed
into place only when everything succeeded (`io.atomic.atomic_output_dir`), so an error
or an interrupt never leaves a half-written result.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import SimpleITK as sitk

from LiverTumorAILib import DEMO_WEIGHTS_NOTICE, __version__
from LiverTumorAILib.errors import InputError
from LiverTumorAILib.geometry import array_to_image, spacing_zyx
from LiverTumorAILib.postprocess import DROPPED_AT_RAS

SEGMENTATION_MODEL_NAMES = ("dual-stream", "tam-unet", "fusion")


class _NullProgress:
    def stage(self, name: str, fraction: float, message: str = "") -> None: ...
    def warn(self, message: str) -> None: ...
    def info(self, message: str) -> None: ...
    def done(self, outdir) -> None: ...
    def error(self, message: str) -> None: ...


def _read_inputs(ct_path, mri_path, progress):
    from LiverTumorAILib.io.image_io import check_ct_intensities, check_mri_intensities, read_image

    progress.stage("read", 0.0, f"reading {Path(ct_path).name}")
    ct = read_image(ct_path, what="CT")
    check_ct_intensities(ct, ct_path)
    mri = None
    if mri_path is not None:
        mri = read_image(mri_path, what="MRI")
        check_mri_intensities(mri, mri_path)
        _check_mri_overlap(ct, mri, mri_path)
    progress.stage("read", 1.0)
    return ct, mri


def _check_mri_overlap(ct: sitk.Image, mri: sitk.Image, mri_path) -> None:
    from LiverTumorAILib.geometry import axis_aligned_grid, image_bounding_box
    from LiverTumorAILib.preprocess import mri_overlap_fraction

    coarse = axis_aligned_grid(image_bounding_box(ct), (8.0, 8.0, 8.0))
    fraction = mri_overlap_fraction(mri, coarse)
    if fraction < 0.05:
        raise InputError(
            f"{Path(mri_path).name}: the MRI does not overlap the CT in physical space "
            f"({100 * fraction:.1f}% of the CT is covered); register it to the CT first"
        )


def _model_entry(loaded) -> dict:
    entry = {"name": loaded.name, "version": loaded.version, "synthetic": loaded.synthetic}
    if loaded.synthetic:
        entry["notice"] = DEMO_WEIGHTS_NOTICE
    return entry


#: removed tissue (ml) from which the HU checks' work is worth a warning
HU_CHECK_WARN_ML = 50.0


def hu_check_warnings(hu_checks: dict) -> list[str]:
    """Plain-language warnings when the HU checks of postprocess removed much: the network drew
    a sizeable piece of another organ as liver, so the liver segment deserves a look."""
    removed = hu_checks.get("slices_unlike_liver_removed_ml", 0.0) + hu_checks.get("regions_unlike_liver_removed_ml", 0.0)
    warnings = []
    if removed >= HU_CHECK_WARN_ML:
        warnings.append(f"{removed:.0f} ml drawn as liver did not look like liver on the CT and was removed "
                        "(bowel, kidney, stomach or heart); check the liver segment")
    dropped = hu_checks.get("lesions_in_other_tissue_removed", 0)
    if dropped:
        warnings.append(f"{dropped} lesion(s){_where_dropped(hu_checks, 'lesions_in_other_tissue')} inside tissue that "
                        "is not liver (or holding gas, or faint beside gas) were dropped; check the liver's edges")
    marked = hu_checks.get("enclosed_regions_marked_as_lesions", 0)
    if marked:
        volumes = ", ".join(f"{v:g} ml" for v in hu_checks.get("enclosed_regions_ml", []))
        warnings.append(f"{marked} region(s) ({volumes}) inside the liver that the network left unlabelled and that are "
                        "darker than the liver (or brighter on both the CT and the MRI) were marked as lesions; check them")
    for check, what in (("lesions_without_contrast", "that differed from the liver around them on no image"),
                        ("elongated_lesions", "shaped like a vessel (far longer than thick)")):
        count = hu_checks.get(f"{check}_removed", 0)
        if count:
            warnings.append(f"{count} lesion(s){_where_dropped(hu_checks, check)} {what} were dropped; turning the HU "
                            "checks off keeps them")
    return warnings


def _where_dropped(hu_checks: dict, check: str) -> str:
    """' (0.65 ml at RAS 58.9, 182.3, 401.2 mm, ...)' for the lesions `check` dropped: volume and,
    where noted, centre; '' when neither is known."""
    volumes = hu_checks.get(f"{check}_ml") or []
    centres = hu_checks.get(f"{check}{DROPPED_AT_RAS}") or []
    parts = [f"{volume:g} ml" + (" at RAS " + ", ".join(f"{c:.1f}" for c in centres[i]) + " mm" if i < len(centres) else "")
             for i, volume in enumerate(volumes)]
    return f" ({'; '.join(parts)})" if parts else ""


def _weights_fallback_warnings(names: Iterable[str | None], weights_dir: Any, seen: set[str], progress: Any) -> list[str]:
    """Warn (once per model, via `progress` and returned for report.json) for each model that the
    chosen weights folder lacks, so it came from the bundled (demo) weights instead."""
    from LiverTumorAILib.weights import fallback_warning

    warnings = []
    for name in names:
        if not name or name in seen:
            continue
        seen.add(name)
        message = fallback_warning(name, weights_dir)
        if message:
            progress.warn(message)
            warnings.append(message)
    return warnings


def _torch_device(device: str, threads: int | None):
    """The torch device for `device` (auto | cpu | cuda | mps); on the CPU also torch's thread count:
    `threads` (`--threads N`), or all cores the process may use when None."""
    from LiverTumorAILib.inference.device import configure_cpu_threads, select_device

    torch_device = select_device(device)
    if torch_device.type == "cpu":
        configure_cpu_threads(threads)
    return torch_device


def _write_image(array: np.ndarray, reference: sitk.Image, path: Path) -> None:
    _write_sitk(array_to_image(array, reference), path)


def _write_sitk(image: sitk.Image, path: Path) -> None:
    from LiverTumorAILib.io.image_io import write_image

    write_image(image, path)


def lesion_instance_image(label: np.ndarray, ct: sitk.Image) -> sitk.Image:
    """uint16 lesion instances on the CT grid, labelled inside the tumour's box and pasted into
    one whole-scan image (no second whole-scan copy)."""
    from LiverTumorAILib.geometry import paste_into_grid
    from LiverTumorAILib.postprocess import lesion_instances

    crop, box = lesion_instances(label, spacing_zyx(ct))
    if box is None:
        image = sitk.Image(ct.GetSize(), sitk.sitkUInt16)
        image.CopyInformation(ct)
        return image
    return paste_into_grid(sitk.GetImageFromArray(crop), ct, [box[2].start, box[1].start, box[0].start])


class _SubGrid:
    """The CT sub-grid `region` ((start, size) in x, y, z; None: nothing was segmented) that
    holds every non-zero result, as arrays/images on it and back on the whole CT grid."""

    def __init__(self, ct: sitk.Image, region):
        from LiverTumorAILib.geometry import region_reference, region_slices

        self.ct = ct
        if region is None:  # nothing segmented: a one-voxel sub-grid of zeros stands for it
            region = ((0, 0, 0), (1, 1, 1))
        self.start, self.size = region
        self.slices = region_slices(self.start, self.size)
        self.reference = region_reference(ct, self.start, self.size)

    def crop(self, array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(array[self.slices])

    def crop_image(self, image: sitk.Image) -> sitk.Image:
        return sitk.RegionOfInterest(image, [int(v) for v in self.size], [int(v) for v in self.start])

    def image(self, array: np.ndarray) -> sitk.Image:
        return array_to_image(array, self.reference)

    def full(self, image: sitk.Image) -> sitk.Image:
        """`image` (on the sub-grid) pasted into a zero image on the whole CT grid."""
        from LiverTumorAILib.geometry import paste_into_grid

        return paste_into_grid(image, self.ct, self.start)


def segment_into(
    folder: Path,
    ct: sitk.Image,
    mri: sitk.Image | None,
    *,
    ct_path: str,
    mri_path: str | None,
    model: str = "dual-stream",
    device: str = "auto",
    classify: bool = True,
    heatmaps: str = "main",
    weights_dir=None,
    threads: int | None = None,
    progress=None,
    hu_checks: bool = True,
    mri_assist: bool = True,
) -> dict:
    """Run the pipeline on loaded images and write every output into `folder` (already staged).
    `mri_assist`: with an MRI and a CT-only model, add the lesions only the MRI shows
    (inference/mri_assist.py)."""
    from LiverTumorAILib.errors import WeightsError
    from LiverTumorAILib.inference.device import describe_device
    from LiverTumorAILib.inference.engine import load_model, segment_volume
    from LiverTumorAILib.inference.mri_assist import MRI_ASSIST_MODEL
    from LiverTumorAILib.inference.mri_coverage import CT_FALLBACK_MODEL
    from LiverTumorAILib.measure import lesion_measurements, organ_summary

    progress = progress or _NullProgress()
    if model not in SEGMENTATION_MODEL_NAMES:
        raise InputError(f"--model {model}: unknown model (choose {', '.join(SEGMENTATION_MODEL_NAMES)})")
    if model == "fusion" and mri is None:
        raise InputError("--model fusion needs an MRI of the same patient (--mri); use dual-stream or tam-unet")
    timing: dict[str, float] = {}
    torch_device = _torch_device(device, threads)
    t0 = time.perf_counter()
    seg_model = load_model(model, weights_dir, torch_device)
    try:
        localizer = load_model("localizer", weights_dir, torch_device)
    except WeightsError as error:
        progress.warn(f"no liver localiser weights ({error}); the whole scan is segmented (slower)")
        localizer = None
    timing["load_models"] = time.perf_counter() - t0
    if seg_model.synthetic:
        progress.warn(f"{model}: {DEMO_WEIGHTS_NOTICE}")
    weights_seen: set[str] = set()
    weights_warnings = _weights_fallback_warnings([seg_model.name, localizer.name if localizer else None],
                                                  weights_dir, weights_seen, progress)

    def load_ct_fallback():
        try:
            return load_model(CT_FALLBACK_MODEL, weights_dir, torch_device)
        except WeightsError as error:
            progress.warn(f"no {CT_FALLBACK_MODEL} weights ({error}): {model} segments outside the MRI too")
            return None

    out = segment_volume(
        ct, seg_model, localizer=localizer, mri=mri, device=torch_device,
        keep_attention=heatmaps != "none", all_attention_sources=heatmaps == "all",
        progress=lambda stage, f: progress.stage(stage, f), warn=progress.warn, hu_checks=hu_checks,
        ct_fallback=load_ct_fallback,
    )
    timing.update(out.timing_s)
    ct_fallback = out.ct_fallback
    assist = assist_model = None
    if mri_assist and mri is not None and model != MRI_ASSIST_MODEL:
        t0 = time.perf_counter()
        assist, assist_model = _check_lesions_against_mri(ct, mri, out, weights_dir, torch_device, hu_checks, progress)
        timing["mri_assist"] = time.perf_counter() - t0
    # Whole-scan arrays are what a long scan cannot afford several of: from here on the CT,
    # the uint8 label map and one uint16 lesion image are the only ones, each held once,
    # and each is dropped as soon as its file is written. Everything else (attention,
    # heatmaps, what the scene shows) lives on `region`, the CT sub-grid that was segmented
    # and outside which every result is zero.
    label, attention, region = out.label, out.attention, out.region
    seg_device, localized, hu_found = out.device, out.localized, out.hu_checks
    del out
    found_warnings = hu_check_warnings(hu_found)
    for message in found_warnings:
        progress.warn(message)
    warnings = weights_warnings + found_warnings
    lesion_image = lesion_instance_image(label, ct)
    lesions = sitk.GetArrayViewFromImage(lesion_image)
    ct_array = sitk.GetArrayViewFromImage(ct)
    t0 = time.perf_counter()
    lesion_rows = lesion_measurements(ct, ct_array, lesions)
    timing["measure"] = time.perf_counter() - t0
    for message in _record_mri_assist(lesion_rows, lesions, assist, assist_model, model):
        progress.warn(message)
        warnings.append(message)

    models_used: dict[str, Any] = {"segmentation": _model_entry(seg_model)}
    if localizer is not None:
        models_used["localizer"] = _model_entry(localizer)
    if ct_fallback is not None:
        models_used["segmentation_outside_mri"] = _model_entry(ct_fallback)
    if assist_model is not None:
        models_used["mri_lesion_assist"] = _model_entry(assist_model)
    cls_results: list = []
    sub = _SubGrid(ct, region)
    label_region = sub.crop(label)
    mri_coverage, coverage_warnings = _mri_coverage(mri, sub.image(label_region), ct_fallback)
    for message in coverage_warnings:
        progress.warn(message)
        warnings.append(message)
    mri_look = _read_mri_look(ct, mri, label_region, [s.start for s in sub.slices])
    if model == MRI_ASSIST_MODEL and mri_look is not None and mri_look.darker:
        message = (f"{mri_look.describe()}: the {model} model, which reads the MRI, may miss lesions such an MRI "
                   "shows unlike a T2 (README, Limits: a T1 MRI); check the CT for lesions it did not draw")
        progress.warn(message)
        warnings.append(message)
    if classify and lesion_rows:
        progress.stage("classify", 0.0)
        t0 = time.perf_counter()
        calls, cls_models, cls_results = _classify(ct, lesion_image, mri, weights_dir, torch_device, heatmaps != "none",
                                                   liver=sub.image(label_region), mri_look=mri_look)
        for message in _t1_like_warning(mri_look, cls_models):
            progress.warn(message)
            warnings.append(message)
        timing["classify"] = time.perf_counter() - t0
        models_used.update(cls_models)
        by_id = {c["id"]: c for c in calls}
        for row in lesion_rows:
            row.update({k: v for k, v in by_id.get(row["id"], {}).items() if k != "id"})
        progress.stage("classify", 1.0)
    else:
        for row in lesion_rows:
            row.setdefault("malignancy_probability", None)
            row.setdefault("predicted_class", "not classified")
    warnings += _weights_fallback_warnings([m.get("name") for m in models_used.values()], weights_dir, weights_seen,
                                           progress)

    t0 = time.perf_counter()
    progress.stage("write", 0.0)
    _write_image(label, ct, folder / "segmentation.nii.gz")
    _write_sitk(lesion_image, folder / "lesions.nii.gz")
    organ = organ_summary(ct, label)
    from LiverTumorAILib.plausibility import plausibility_warnings

    for message in plausibility_warnings(organ, lesion_rows):
        progress.warn(message)
        warnings.append(message)
    # The scene needs only the segmented sub-grid: keep that, drop the whole-scan maps.
    lesion_region = sub.crop_image(lesion_image)
    del lesions, lesion_image, label
    heatmap = None
    if heatmaps != "none":
        heatmap = _write_heatmaps(folder, ct, sub, label_region, attention, cls_results, heatmaps == "all")
    del attention, cls_results
    timing["heatmap_and_write"] = time.perf_counter() - t0

    report = {
        "software": "LiverTumorAI",
        "software_version": __version__,
        "inputs": {"ct": str(Path(ct_path).resolve()), "mri": str(Path(mri_path).resolve()) if mri_path else None},
        "ct_grid": {"size": list(ct.GetSize()), "spacing": list(ct.GetSpacing()),
                    "origin": list(ct.GetOrigin()), "direction": list(ct.GetDirection())},
        **organ,
        "lesion_count": len(lesion_rows),
        "lesions": lesion_rows,
        "models": models_used,
        "weights_notice": DEMO_WEIGHTS_NOTICE if any(m.get("synthetic") for m in models_used.values()) else None,
        "device": describe_device(torch_device) | {"used": seg_device},
        "liver_localized": localized,
        "mri_coverage": mri_coverage or None,
        "mri_lesion_look": mri_look.as_report() if mri_look else None,
        "hu_checks": {"enabled": hu_checks, **hu_found},
        "mri_lesion_assist": None if assist is None else _mri_assist_report(assist, assist_model.name),
        "timing_s": {k: round(v, 3) for k, v in timing.items()},
    }
    if not localized and localizer is not None:
        warnings.insert(0, "liver localiser found no liver; whole scan segmented")
    report["warnings"] = warnings  # always there, empty when all went well
    _write_json(folder / "report.json", report)
    _write_scene(folder, ct, mri, sub.image(label_region), lesion_region, heatmap, report, ct_path, progress)
    progress.stage("write", 1.0)
    return report


def _check_lesions_against_mri(ct: sitk.Image, mri: sitk.Image, out, weights_dir, device, hu_checks: bool, progress):
    """Run the MRI-reading model on the CT-only model's box and check `out.label` (in place)
    against it: vessels removed, outlines extended, lesions only it found added
    (inference/mri_assist.py). Returns (what changed, the model), or (None, None) with a warning
    when its weights are missing."""
    from LiverTumorAILib.errors import WeightsError
    from LiverTumorAILib.geometry import region_slices
    from LiverTumorAILib.inference.engine import load_model, segment_volume
    from LiverTumorAILib.inference.mri_assist import MRI_ASSIST_MODEL, assist_with_mri, vessel_check_reason

    try:
        assist_model = load_model(MRI_ASSIST_MODEL, weights_dir, device)
    except WeightsError as error:
        progress.warn(f"no {MRI_ASSIST_MODEL} weights ({error}): lesions only the MRI shows are not added")
        return None, None
    if assist_model.synthetic:
        progress.warn(f"{MRI_ASSIST_MODEL}: {DEMO_WEIGHTS_NOTICE}")
    assist_out = segment_volume(
        ct, assist_model, localizer=None, mri=mri, device=device, keep_attention=False, box=out.box,
        progress=lambda stage, f: progress.stage("mri_assist", f), warn=progress.warn, hu_checks=hu_checks,
    )
    region = region_slices(*assist_out.region) if assist_out.region is not None else None
    level = out.hu_checks.get("liver_level_hu") if hu_checks else None
    skip_vessels = vessel_check_reason(assist_out.label, ct, mri, region)
    changes = assist_with_mri(out.label, assist_out.label, ct, mri, region, level, vessels_not_checked=skip_vessels)
    return changes, assist_model


def _record_mri_assist(rows: list[dict], lesions: np.ndarray, assist, assist_model, model: str) -> list[str]:
    """Mark each lesion row with who found it (`found_by`) and whether the MRI extended its
    outline (`outline_extended_by`); return the warnings that name every change the assist made."""
    added = {int(lesions[seed]) for seed in assist.added.seeds} - {0} if assist else set()
    extended = {int(lesions[seed]) for seed in assist.extended.seeds} - added - {0} if assist else set()
    for row in rows:
        row["found_by"] = assist_model.name if row["id"] in added else model
        row["outline_extended_by"] = assist_model.name if row["id"] in extended else None
    if assist is None:
        return []
    name, messages = assist_model.name, []
    if added:
        messages.append(f"{len(added)} lesion(s) the CT barely shows were added from the MRI by the {name} model "
                        f"(ids {', '.join(map(str, sorted(added)))}): check them")
    if extended:
        messages.append(f"{len(extended)} lesion outline(s) were extended to where the MRI shows more of them, by "
                        f"the {name} model (ids {', '.join(map(str, sorted(extended)))}): check them")
    if assist.vessels_not_checked:
        messages.append(assist.vessels_not_checked)
    for finding in assist.removed:
        where = ", ".join(f"{v:.0f}" for v in finding.centroid_ras)
        messages.append(f"a {finding.volume_ml:.1f} ml finding of {model} at RAS ({where}) mm was removed as a "
                        f"vessel: {finding.ct_sd_above_liver:.1f} SD brighter than the liver on the CT, "
                        f"{finding.mri_sd_below_liver:.1f} SD darker on the MRI, and no lesion to the {name} model: "
                        "check it")
    return messages


def _mri_assist_report(assist, name: str) -> dict[str, Any]:
    """report.json's `mri_lesion_assist`: the model and what it changed."""
    return {"model": name, "lesions_added": assist.added.count, "volume_added_ml": round(assist.added.volume_ml, 3),
            "lesions_not_added_in_other_tissue": assist.added.in_other_tissue,
            "lesions_extended": assist.extended.count,
            "volume_extended_ml": round(assist.extended.volume_ml, 3),
            "findings_removed_as_vessels": [finding.as_report() for finding in assist.removed],
            "vessel_check": assist.vessels_not_checked or "run"}


#: liver fraction inside the MRI's field of view under which the report warns
MRI_COVERAGE_WARN = 0.98


def _mri_coverage(mri: sitk.Image | None, label: sitk.Image, ct_fallback) -> tuple[dict, list[str]]:
    """report.json's `mri_coverage` (how much of the segmented liver the MRI covers, and which
    model segmented the rest), and plain-language warnings when the MRI misses part of it."""
    from LiverTumorAILib.inference.mri_coverage import liver_fraction_covered

    if mri is None:
        return {}, []
    fraction = liver_fraction_covered(mri, label)
    entry: dict[str, Any] = {"liver_fraction": None if fraction is None else round(fraction, 3)}
    if ct_fallback is not None:  # also at a fraction of 1.0: it shares the MRI's last 15 mm inside its edge
        entry["outside_segmented_by"] = ct_fallback.name
    if fraction is None or fraction >= MRI_COVERAGE_WARN:
        return entry, []
    outside = f"there liver and lesions come from {ct_fallback.name} on the CT alone, and " if ct_fallback else ""
    return entry, [f"the MRI covers {100 * fraction:.0f} % of the liver: {outside}lesions outside it are classified "
                   "on the CT alone"]


def _read_mri_look(ct: sitk.Image, mri: sitk.Image | None, label: np.ndarray, start_zyx: list[int]):
    """How `label`'s lesions (a CT sub-grid from `start_zyx`) look on the MRI against the liver
    (mri_lesion_look.py), or None without an MRI."""
    from LiverTumorAILib.mri_lesion_look import read_mri_lesion_look

    return None if mri is None else read_mri_lesion_look(ct, mri, label, start_zyx)


def _t1_like_warning(mri_look, cls_models: dict) -> list[str]:
    """The warning that the lesions looked T1-like on the MRI, naming the classifier that took them."""
    from LiverTumorAILib.classification.classify import CTMRI_T1_WEIGHTS

    if mri_look is None or not mri_look.darker:
        return []
    by = (f"the CT+MRI classifier learned on T1 MRIs ({CTMRI_T1_WEIGHTS})" if f"classifier:{CTMRI_T1_WEIGHTS}" in cls_models
          else "the CT alone")
    return [f"{mri_look.describe()}: lesions classified by {by}"]


def _classify(ct, lesion_image, mri, weights_dir, device, gradcam: bool, liver: sitk.Image | None = None,
              mri_look=None):
    """Lesion table entries, the classifier models used, and the raw results (with Grad-CAM crops).

    `liver`: the label map (or its segmented sub-grid), so the classifier compares each lesion
    with the liver around it. `mri_look`: how the lesions look on the MRI (`_read_mri_look`):
    a T1-like look takes the classifier learned on T1 MRIs, or the CT-only one."""
    from LiverTumorAILib.classification.classify import classify_lesions, json_ready

    results = classify_lesions(
        ct, lesion_image, mri, weights_dir=weights_dir, device=str(device), gradcam=gradcam, require_weights=False,
        liver=liver, mri_t1_like=bool(mri_look is not None and mri_look.darker),
    )
    calls = json_ready(results)
    models = {}
    for call in calls:
        name = call.get("model")
        key = f"classifier:{name}"
        if name and key not in models:
            models[key] = {"name": name, "version": call.get("weights_version", "unknown"),
                           "synthetic": bool(call.get("synthetic_weights", False))}
            if models[key]["synthetic"]:
                models[key]["notice"] = DEMO_WEIGHTS_NOTICE
    return calls, models, results


def _write_heatmaps(folder, ct, sub: _SubGrid, label_region: np.ndarray, attention: dict, cls_results,
                    write_all: bool) -> sitk.Image:
    """`heatmap.nii.gz` (combined, masked to the dilated liver) and per-source maps with `--heatmaps all`.

    Maps are combined on the CT sub-grid that was segmented (they are zero outside it) and
    pasted into the full grid only to be written, one file at a time, so a long scan is not
    copied per source. Returns the combined heatmap on the sub-grid."""
    from LiverTumorAILib.classification.classify import gradcam_on_grid
    from LiverTumorAILib.heatmaps.combine import heatmap_images

    ref = sub.reference
    sources = {name: array_to_image(arr, ref) for name, arr in attention.items()}
    if any("gradcam" in r for r in cls_results):
        sources["gradcam"] = gradcam_on_grid(cls_results, ref)
    mode = "all" if write_all else "combined"
    files = heatmap_images(sources, ref, mode=mode, liver_mask=sub.image(label_region))
    del sources
    for name, image in files.items():
        _write_sitk(sub.full(image), folder / name)
    return files["heatmap.nii.gz"]


def _write_scene(folder, ct, mri, label, lesions, heatmap, report, ct_path, progress) -> None:
    """`segmentation.seg.nrrd` and `scene.mrb` where slicer-core (or Slicer) is available.

    `label`, `lesions` and `heatmap` may lie on a sub-grid of the CT: the scene puts them
    on the CT's grid."""
    try:
        from LiverTumorAILib.scene import scene_available
    except ImportError:
        return
    if not scene_available():
        progress.info("slicer-core not installed: segmentation.seg.nrrd and scene.mrb not written")
        return
    from LiverTumorAILib.scene.build import build_result_scene

    build_result_scene(ct, mri, label, lesions, heatmap, report, folder, ct_name=_volume_name(ct_path))


def _volume_name(path) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _write_json(path: Path, data: dict) -> None:
    """Write JSON atomically (temp file + rename): a reader never sees half a report."""
    from LiverTumorAILib.io.atomic import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=2, allow_nan=False, default=_json_default), what="report")


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def run_segment(
    ct_path,
    outdir,
    *,
    mri_path=None,
    model: str = "dual-stream",
    device: str = "auto",
    classify: bool = True,
    heatmaps: str = "main",
    weights_dir=None,
    overwrite: bool = False,
    threads: int | None = None,
    progress=None,
    hu_checks: bool = True,
    mri_assist: bool = True,
) -> dict:
    """`livertumorai segment`: read, segment, classify, write OUTDIR atomically. `hu_checks=False`
    keeps the network's liver and lesions as drawn (no checks against the CT's HU); `mri_assist=False`
    keeps a CT-only model's lesions alone, given an MRI (inference/mri_assist.py)."""
    from LiverTumorAILib.io.atomic import atomic_output_dir

    progress = progress or _NullProgress()
    ct, mri = _read_inputs(ct_path, mri_path, progress)
    with atomic_output_dir(Path(outdir), overwrite=overwrite) as staging:
        report = segment_into(
            staging, ct, mri, ct_path=str(ct_path), mri_path=str(mri_path) if mri_path else None, model=model,
            device=device, classify=classify, heatmaps=heatmaps, weights_dir=weights_dir, threads=threads,
            progress=progress, hu_checks=hu_checks, mri_assist=mri_assist,
        )
    progress.done(str(outdir))
    return report


def run_classify(
    ct_path, seg_path, outdir, *, mri_path=None, device: str = "auto", weights_dir=None,
    overwrite: bool = False, threads: int | None = None, progress=None,
) -> dict:
    """`livertumorai classify`: re-measure and re-classify lesions of an existing (corrected) segmentation.

    SEG is a label map on the CT grid: 0 background, 1 liver, 2 tumour (what `segment`
    writes and what the Slicer module exports after manual correction). Lesions are its
    tumour components, numbered by decreasing volume.
    """
    from LiverTumorAILib.inference.device import describe_device
    from LiverTumorAILib.io.atomic import atomic_output_dir
    from LiverTumorAILib.io.image_io import read_segmentation
    from LiverTumorAILib.measure import lesion_measurements, organ_summary
    from LiverTumorAILib.postprocess import label_lesions

    progress = progress or _NullProgress()
    ct, mri = _read_inputs(ct_path, mri_path, progress)
    seg = read_segmentation(seg_path, ct)
    label = sitk.GetArrayFromImage(seg)
    if label.max() > 2 or label.min() < 0:
        raise InputError(f"{Path(seg_path).name}: expected labels 0 (background), 1 (liver), 2 (tumour); found up to {int(label.max())}")
    label = label.astype(np.uint8)
    lesions = label_lesions(label, spacing_zyx(ct))
    torch_device = _torch_device(device, threads)
    rows = lesion_measurements(ct, sitk.GetArrayViewFromImage(ct), lesions)
    models_used: dict[str, Any] = {}
    mri_look = _read_mri_look(ct, mri, label, [0, 0, 0])
    warnings: list[str] = []
    if rows:
        progress.stage("classify", 0.0)
        calls, models_used, _ = _classify(ct, array_to_image(lesions, ct), mri, weights_dir, torch_device, False,
                                          liver=seg if bool((label == 1).any()) else None, mri_look=mri_look)
        for message in _t1_like_warning(mri_look, models_used):
            progress.warn(message)
            warnings.append(message)
        by_id = {c["id"]: c for c in calls}
        for row in rows:
            row.update({k: v for k, v in by_id.get(row["id"], {}).items() if k != "id"})
        progress.stage("classify", 1.0)
    warnings += _weights_fallback_warnings([m.get("name") for m in models_used.values()], weights_dir, set(), progress)
    report = {
        "software": "LiverTumorAI",
        "software_version": __version__,
        "inputs": {"ct": str(Path(ct_path).resolve()), "segmentation": str(Path(seg_path).resolve()),
                   "mri": str(Path(mri_path).resolve()) if mri_path else None},
        **organ_summary(ct, label),
        "lesion_count": len(rows),
        "lesions": rows,
        "models": models_used,
        "weights_notice": DEMO_WEIGHTS_NOTICE if any(m.get("synthetic") for m in models_used.values()) else None,
        "device": describe_device(torch_device),
        "mri_lesion_look": mri_look.as_report() if mri_look else None,
        "warnings": warnings,
    }
    with atomic_output_dir(Path(outdir), overwrite=overwrite) as staging:
        _write_image(label, ct, staging / "segmentation.nii.gz")
        _write_image(lesions, ct, staging / "lesions.nii.gz")
        _write_json(staging / "report.json", report)
    progress.done(str(outdir))
    return report


DEMO_SEED = 20261123


def run_demo(outdir, *, model: str = "fusion", device: str = "auto", overwrite: bool = False,
             threads: int | None = None, progress=None) -> dict:
    """`livertumorai demo`: make a synthetic CT+MRI case, run the pipeline, score it against its truth."""
    from LiverTumorAILib.evaluation import _nan_to_none, evaluate_case
    from LiverTumorAILib.io.atomic import atomic_output_dir
    from LiverTumorAILib.phantom import generate_case, write_case

    progress = progress or _NullProgress()
    progress.stage("phantom", 0.0, "making a synthetic CT+MRI case")
    case = generate_case(DEMO_SEED)
    with atomic_output_dir(Path(outdir), overwrite=overwrite) as staging:
        case_dir = staging / "input"
        write_case(case, case_dir)
        progress.stage("phantom", 1.0)
        result_dir = staging / "result"
        result_dir.mkdir()
        report = segment_into(
            result_dir, case.ct, case.mri, ct_path=str(case_dir / "ct.nii.gz"), mri_path=str(case_dir / "mri.nii.gz"),
            model=model, device=device, threads=threads, progress=progress,
        )
        scores = _nan_to_none(evaluate_case(result_dir, case_dir, "demo"))  # NaN (e.g. no tumour) -> null
        summary = {"model": model, "scores": scores, "weights_notice": report.get("weights_notice")}
        _write_json(staging / "demo_summary.json", summary)
        summary["report"] = report
    # The report's input paths point into the staging folder until the rename: fix them up.
    final = Path(outdir)
    report_path = final / "result" / "report.json"
    report["inputs"] = {"ct": str((final / "input" / "ct.nii.gz").resolve()), "mri": str((final / "input" / "mri.nii.gz").resolve())}
    _write_json(report_path, report)
    progress.done(str(outdir))
    return summary
