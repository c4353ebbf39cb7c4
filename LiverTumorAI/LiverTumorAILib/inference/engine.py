"""Segmentation engine: localise -> crop -> 2.5D model -> back onto the exact CT grid.

Cost is kept proportional to the liver, not the scan: a coarse 3D localiser finds the
liver, only its box (+ margin) is resampled to the model spacing, and only the CT
voxels inside that box are resampled back, a few slices at a time (the only
whole-scan array the engine makes is the uint8 label map). Probabilities (not labels)
are resampled back with linear interpolation and the argmax is taken on the CT grid, so
boundaries are as sharp as the CT grid allows and nothing is mirrored or shifted by
resampling.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk

from LiverTumorAILib.errors import InputError
from LiverTumorAILib.geometry import (
    BoundingBox,
    array_to_image,
    head_foot_axis,
    image_bounding_box,
    mri_signal_on_grid,
    region_reference,
    region_slices,
    resample_like,
    spacing_zyx,
    sub_grid_covering,
)
from LiverTumorAILib.hu_guards import trim_slices_unlike_liver
from LiverTumorAILib.inference.localize import DEFAULT_MARGIN_MM as LOCALIZER_MARGIN_MM
from LiverTumorAILib.inference.localize import localize_liver
from LiverTumorAILib.inference.slab import predict_volume
from LiverTumorAILib.measure import centroid_ras
from LiverTumorAILib.postprocess import DROPPED_AT_RAS, DROPPED_AT_ZYX, PostprocessConfig, clean_label_map
from LiverTumorAILib.preprocess import DEFAULT_SPACING_MM, DEFAULT_WINDOW_HU, make_model_grid, normalize_ct

SEGMENTATION_MODELS = ("dual-stream", "tam-unet", "fusion")
GROW_MM = 40.0
MAX_GROW_STEPS = 3
BORDER_VOXELS = 2


def grow_box_where_cut(box: BoundingBox, liver: np.ndarray, scan: BoundingBox) -> BoundingBox | None:
    """`box` widened by GROW_MM on each side where `liver` ((z, y, x) on the box's axis-aligned
    grid) touches the grid border and the box is not already at the scan's edge; None if none."""
    lower, upper = box.lower.copy(), box.upper.copy()
    changed = False
    b = BORDER_VOXELS
    for axis_xyz, axis_zyx in ((0, 2), (1, 1), (2, 0)):
        n = liver.shape[axis_zyx]
        lo_band = np.take(liver, range(0, min(b, n)), axis=axis_zyx).any()
        hi_band = np.take(liver, range(max(n - b, 0), n), axis=axis_zyx).any()
        if lo_band and lower[axis_xyz] > scan.lower[axis_xyz] + 1e-3:
            lower[axis_xyz] = max(lower[axis_xyz] - GROW_MM, scan.lower[axis_xyz])
            changed = True
        if hi_band and upper[axis_xyz] < scan.upper[axis_xyz] - 1e-3:
            upper[axis_xyz] = min(upper[axis_xyz] + GROW_MM, scan.upper[axis_xyz])
            changed = True
    return BoundingBox(lower, upper) if changed else None


def label_on_grid(
    ct: sitk.Image, start, size, class_probabilities: list[sitk.Image], chunk_voxels: int = 1 << 23,
    tumour_out: np.ndarray | None = None,
) -> np.ndarray:
    """Argmax label (0 bg, 1 liver, 2 tumour) on the CT index region `start` + `size` (x, y, z).

    `class_probabilities` are the liver and tumour probability images on the model grid; they
    are resampled (linear) onto the CT grid a few slices at a time, background = 1 - both, and
    the argmax is taken per slab: only a slab's float32 maps exist at any time, never three
    of the whole region (nor an int64 argmax of it). `tumour_out` (uint8, region shape), if
    given, receives the tumour probability as round(255 p) for the confidence filter."""
    shape = tuple(reversed(size))
    label = np.empty(shape, dtype=np.uint8)
    step = max(1, chunk_voxels // (int(size[0]) * int(size[1])))
    for z0 in range(0, shape[0], step):
        n = min(step, shape[0] - z0)
        ref = region_reference(ct, (start[0], start[1], start[2] + z0), (size[0], size[1], n))
        back = [sitk.GetArrayFromImage(resample_like(p, ref, default=0.0)) for p in class_probabilities]
        background = 1.0 - back[0] - back[1]
        label[z0 : z0 + n] = np.argmax(np.stack([background, back[0], back[1]]), axis=0)
        if tumour_out is not None:
            tumour_out[z0 : z0 + n] = np.rint(np.clip(back[1], 0.0, 1.0) * 255.0)
    return label


def liver_for_growth(probabilities: np.ndarray, ct_hu: np.ndarray | None, spacing_xyz,
                     config: PostprocessConfig) -> np.ndarray:
    """The model grid's liver (argmax >= 1) that decides whether the box grows: cut to its
    liver-looking slices first (`trim_slices_unlike_liver`; the model grid's axis 0 is head-foot),
    so bowel labelled as liver below the liver does not pull the box down to the pelvis. Without
    `ct_hu` (HU checks off), as `clean_label_map`, the liver is taken as drawn."""
    label = np.argmax(probabilities, axis=0)
    organ = label >= 1
    if ct_hu is None or config.max_slice_hu_shift <= 0:
        return organ
    return trim_slices_unlike_liver(organ, label == 1, ct_hu, tuple(reversed(spacing_xyz)), 0,
                                    config.max_slice_hu_shift, config.min_unlike_run_mm)


@dataclass
class LoadedModel:
    name: str
    model: object
    manifest: dict

    @property
    def version(self) -> str:
        return str(self.manifest.get("version", "unknown"))

    @property
    def synthetic(self) -> bool:
        return bool(self.manifest.get("training_data", {}).get("synthetic", False))


@dataclass
class SegmentationOutput:
    """The label map on the full CT grid; attention only on the CT sub-grid `region`
    (index start xyz, size xyz) that covers the segmented box - all of it is zero outside."""

    label: np.ndarray  # (z, y, x) uint8 on the full CT grid
    attention: dict[str, np.ndarray]  # per source, (z, y, x) float32 in [0, 1] on `region`
    box: BoundingBox
    localized: bool
    device: str
    timing_s: dict[str, float] = field(default_factory=dict)
    slice_class_logits: np.ndarray | None = None
    region: tuple | None = None
    hu_checks: dict = field(default_factory=dict)  # what the HU checks of postprocess found and removed
    ct_fallback: LoadedModel | None = None  # the CT-only model that segmented outside the MRI (mri_coverage.py)


def load_model(name: str, weights_dir, device) -> LoadedModel:
    from LiverTumorAILib.weights import find_weights, load_weights

    folder = find_weights(name, weights_dir)
    model, manifest = load_weights(folder, device=str(device))
    model.to(device).eval()
    return LoadedModel(name=name, model=model, manifest=manifest)


def segment_volume(
    ct: sitk.Image,
    seg: LoadedModel,
    *,
    localizer: LoadedModel | None,
    mri: sitk.Image | None,
    device,
    keep_attention: bool = True,
    all_attention_sources: bool = False,
    batch_size: int = 8,
    postprocess: PostprocessConfig | None = None,
    progress: Callable[[str, float], None] | None = None,
    warn: Callable[[str], None] | None = None,
    box: BoundingBox | None = None,
    hu_checks: bool = True,
    ct_fallback: Callable[[], LoadedModel | None] | None = None,
) -> SegmentationOutput:
    """Segment liver and tumour on `ct`'s grid with one 2.5D model.

    `box`: the physical region to segment (default: the localiser's box, else the scan).
    The cascade never trusts that box blindly: if the segmented liver touches a side of
    the box that is not the scan's edge (the coarse localiser cut a lobe), the box grows
    by `GROW_MM` on that side and the region is segmented again, at most
    `MAX_GROW_STEPS` times. `hu_checks=False` turns off the checks against the CT's HU
    (hu_guards.py) in the growth decision and the clean-up. With an `mri`, whatever the model,
    the lesion contrast check keeps a lesion the MRI shows though the CT does not. For a model
    that reads the MRI, `ct_fallback` (called once, when first needed) gives the CT-only model
    that segments where the MRI does not cover the liver (`mri_coverage.py`)."""
    timing: dict[str, float] = {}
    clean = postprocess or PostprocessConfig.from_manifest(seg.manifest)
    config = seg.manifest.get("config", {})
    prep = seg.manifest.get("preprocessing", {})
    spacing = prep.get("spacing_mm", DEFAULT_SPACING_MM)
    window = prep.get("window_hu", DEFAULT_WINDOW_HU)
    mri_offsets = list(config.get("mri_offsets", []) or [])
    if mri_offsets and mri is None:
        raise InputError(f"model '{seg.name}' needs an MRI (--mri); use dual-stream or tam-unet for CT only")

    t0 = time.perf_counter()
    localized = box is not None
    box_margin_mm = 0.0  # how far the box reaches past the liver (the localiser's margin)
    if box is None and localizer is not None:
        box = localize_liver(ct, localizer.model, localizer.manifest, device)
        localized = box is not None
        box_margin_mm = LOCALIZER_MARGIN_MM if localized else 0.0
    if box is None:
        if warn and localizer is not None:
            warn("liver localiser found no liver; segmenting the whole scan (slower)")
        box = image_bounding_box(ct)
    timing["localize"] = time.perf_counter() - t0
    if progress:
        progress("localize", 1.0)

    timing["preprocess"] = timing["segment"] = 0.0
    scan = image_bounding_box(ct)
    load_fallback = _fallback_loader(ct_fallback, seg, warn) if mri_offsets and ct_fallback is not None else None
    fallback: LoadedModel | None = None  # the CT-only model, when it ran on the last pass
    for attempt in range(MAX_GROW_STEPS + 1):
        t0 = time.perf_counter()
        grid = make_model_grid(ct, box, spacing, mri=mri if mri_offsets else None)
        ct_norm = normalize_ct(grid.ct_hu, window)
        timing["preprocess"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        pred = predict_volume(
            seg.model,
            ct_norm,
            ct_offsets=config.get("ct_offsets", [0]),
            mri=grid.mri,
            mri_offsets=mri_offsets,
            device=device,
            batch_size=batch_size,
            keep_attention=keep_attention,
            progress=(lambda f: progress("segment", f)) if progress else None,
            warn=warn,
        )
        timing["segment"] += time.perf_counter() - t0
        if load_fallback is not None:
            t0 = time.perf_counter()
            fallback = _segment_outside_mri(pred, grid, ct_norm, mri, load_fallback, device, batch_size,
                                            keep_attention, warn, box.expanded(-box_margin_mm))
            timing["segment_outside_mri"] = timing.get("segment_outside_mri", 0.0) + time.perf_counter() - t0
        liver = liver_for_growth(pred.probabilities, grid.ct_hu if hu_checks else None, spacing, clean)
        grown = grow_box_where_cut(box, liver, scan)
        if not localized or grown is None or attempt == MAX_GROW_STEPS:
            break
        box = grown  # the liver reaches a side of the box that is not the scan's edge: widen and redo
    timing["grow_steps"] = float(attempt)
    if fallback is not None:  # lesions it drew are kept or dropped by its own tuned rules
        clean = dataclasses.replace(clean, outside_mri=PostprocessConfig.from_manifest(fallback.manifest))
    t0 = time.perf_counter()
    box = image_bounding_box(grid.reference).intersect(scan)  # the padded grid is segmented too
    region = sub_grid_covering(ct, box)
    full_shape = tuple(reversed(ct.GetSize()))
    label_full = np.zeros(full_shape, dtype=np.uint8)
    attention_full: dict[str, np.ndarray] = {}
    hu_found: dict = {}
    if region is not None:
        start, size = region
        ref = region_reference(ct, start, size)
        sl = region_slices(start, size)
        probabilities = [array_to_image(pred.probabilities[c], grid.reference) for c in (1, 2)]
        tumour_u8 = np.empty(tuple(reversed(size)), np.uint8) if clean.min_tumour_peak > 0 else None
        label = label_on_grid(ct, start, size, probabilities, tumour_out=tumour_u8)
        spacing = spacing_zyx(ct)
        mri_on_region = mri_signal_on_grid(mri, ref) if hu_checks and mri is not None and (label == 2).any() else None
        label_full[sl] = clean_label_map(label, spacing, clean, tumour_probability=tumour_u8,
                                         ct_hu=sitk.GetArrayViewFromImage(ct)[sl] if hu_checks else None,
                                         head_foot_axis=head_foot_axis(ct),
                                         notes=hu_found, mri=mri_on_region,
                                         scan_faces=region_scan_faces(start, size, full_shape))
        del label, tumour_u8, mri_on_region
        dropped_at_ras(hu_found, ct, start)
        maps = pred.attention
        if maps and not all_attention_sources:  # combine on the small model grid: one full-size array
            maps = {"segmentation": np.mean(np.stack(list(maps.values())), axis=0)}
        for name, att in maps.items():
            back = sitk.GetArrayFromImage(resample_like(array_to_image(att, grid.reference), ref, default=0.0))
            attention_full[name] = np.clip(back, 0.0, 1.0, out=back)
    timing["postprocess"] = time.perf_counter() - t0
    return SegmentationOutput(
        label=label_full,
        attention=attention_full,
        box=box,
        localized=localized,
        device=pred.device,
        timing_s=timing,
        slice_class_logits=pred.class_logits,
        region=region,
        hu_checks=hu_found,
        ct_fallback=fallback,
    )


def dropped_at_ras(notes: dict, ct: sitk.Image, start_xyz: Sequence[int]) -> None:
    """Replace the notes' centres of dropped lesions (voxels of the region starting at `start_xyz`
    of `ct`, z y x; postprocess.DROPPED_AT_ZYX) by RAS points (mm, Slicer's convention)."""
    for key in [k for k in notes if k.endswith(DROPPED_AT_ZYX)]:
        points = [ct.TransformContinuousIndexToPhysicalPoint([float(c + s) for c, s in zip(reversed(zyx), start_xyz)])
                  for zyx in notes.pop(key)]
        notes[key[: -len(DROPPED_AT_ZYX)] + DROPPED_AT_RAS] = [centroid_ras(np.array([p])) for p in points]


def region_scan_faces(start: Sequence[int], size: Sequence[int], full_shape_zyx: Sequence[int]) -> list[tuple[bool, bool]]:
    """Per array axis (z, y, x) of the region `start`/`size` (x, y, z voxels) of a scan shaped
    `full_shape_zyx`: whether its (low, high) face is the scan's own edge."""
    return [(s == 0, s + n == total) for s, n, total in zip(reversed(start), reversed(size), full_shape_zyx)]


def _fallback_loader(load: Callable[[], LoadedModel | None], seg: LoadedModel, warn) -> Callable[[], LoadedModel | None]:
    """`load`, called at most once (grow passes reuse its answer), refusing a CT-only model whose
    model grid (preprocessing) differs from `seg`'s: their probabilities could not be blended."""

    @functools.cache
    def loader() -> LoadedModel | None:
        fallback = load()
        if fallback is not None and fallback.manifest.get("preprocessing", {}) != seg.manifest.get("preprocessing", {}):
            if warn:
                warn(f"{fallback.name} does not share {seg.name}'s model grid: no CT-only segmentation outside the MRI")
            return None
        return fallback

    return loader


def _segment_outside_mri(pred, grid, ct_norm: np.ndarray, mri: sitk.Image, load_fallback: Callable[[], LoadedModel | None],
                         device, batch_size: int, keep_attention: bool, warn, liver_box: BoundingBox) -> LoadedModel | None:
    """Blend the CT-only model's output into `pred` (in place) where the MRI does not cover the
    liver box on the model grid; returns the CT-only model when it ran (loaded on first need)."""
    from LiverTumorAILib.inference.mri_coverage import blend, box_on_grid, fusion_weight, slices_needing_ct

    weight = fusion_weight(mri, grid.reference)
    where = box_on_grid(liver_box, grid.reference)
    if slices_needing_ct(weight, [0], where) is None:
        return None
    fallback = load_fallback()
    if fallback is None:
        return None
    offsets = fallback.manifest.get("config", {}).get("ct_offsets", [0])
    span = slices_needing_ct(weight, offsets, where)
    ct_only = predict_volume(
        fallback.model, ct_norm[span.context_start : span.context_stop], ct_offsets=offsets, device=device,
        batch_size=batch_size, keep_attention=keep_attention, warn=warn,
    )
    inner = slice(span.start - span.context_start, span.stop - span.context_start)
    w = weight[span.start : span.stop]
    blend(pred.probabilities[:, span.start : span.stop], ct_only.probabilities[:, inner], w)
    if pred.attention:  # each fusion map fades into the CT-only model's mean map outside the MRI
        other = (np.mean(np.stack([a[inner] for a in ct_only.attention.values()]), axis=0)
                 if ct_only.attention else np.zeros_like(w))
        for att in pred.attention.values():
            blend(att[span.start : span.stop], other, w)
    return fallback
