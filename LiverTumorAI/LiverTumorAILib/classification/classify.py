"""Per-lesion malignancy classification: crops -> hybrid3d -> calibrated probability (+ Grad-CAM).

``classify_lesions(ct, lesions, mri=None, *, weights_dir=None, device="cpu", gradcam=True)``
returns one dict per lesion id of ``lesions`` (a uint instance map on the CT grid), ordered by id::

    {"id": 3, "malignancy_probability": 0.8312 | None, "predicted_class": "malignant",
     "reliable": True, "note": "", "diameter_mm": 24.1, "crop_side_mm": 52.2,
     "model": "hybrid3d", "architecture": "hybrid3d", "weights_version": "demo-0.1",
     "modality": "CT" | "CT+MRI", "calibrated": True, "temperature": 1.31,
     "synthetic_weights": True,
     "gradcam": <sitk.Image on the lesion's crop grid, only when gradcam=True>}

Decision rules (why):

* ``malignancy_probability`` = softmax(logits / T)[malignant] with the temperature ``T`` from the
  manifest's ``calibration`` (1.0 and ``calibrated: False`` when the weights carry none).
* ``predicted_class``: "malignant" if the probability >= the manifest's ``decision_threshold``
  (default 0.5), else "benign"; "indeterminate" for lesions under 10 mm (their crops hold too few
  informative voxels and the training data has few of them; the probability is still given so a
  reader can see it, flagged ``reliable: False``) and when no weights are available.
* ``reliable`` is False for lesions under 10 mm, lesions whose crop lies > 25 % outside the image,
  and when no probability could be computed; ``note`` says why.
* With an MRI, the CT+MRI weights (``hybrid3d-ctmri``) are used when found, else the CT-only
  weights with a note. A lesion whose box, widened by ``MRI_MARGIN_MM`` of liver, is not all
  inside the MRI's field of view (an MRI slab shorter than the CT) is classified by the CT-only
  weights with a note: the CT+MRI model never saw an MRI crop that is partly fill.
* ``mri_t1_like``: the lesions are darker than the liver on the MRI (``mri_lesion_look.py``; the
  caller reads it). ``hybrid3d-ctmri`` learned a T2-like MRI where they are brighter and fails on
  a T1 (lesion AUC 0.04 on independent T1 phantoms), so the weights learned on T1 phantoms
  (``hybrid3d-ctmri-t1``) classify instead, or, without them, the CT-only weights; a note says which.
  On the project's T1 test phantoms (150 lesions) the CT-only weights give AUC 0.86, ECE 0.06;
  ``hybrid3d-ctmri`` 0.52 / 0.35, and 0.60 / 0.39 with the MRI's sign flipped (tried: on a T1
  the lesion kinds' order of darkness mirrors their order of brightness on a T2, but the model
  does not read a flipped T1 as a T2). The T1-learned weights are not bundled
  (``training/make_classifier_weights.py``, ``MODEL_MRI_SEQUENCE``).
* ``liver``: the organ mask (any label map whose non-zero voxels are liver + lesions, on the CT
  grid or a sub-grid of it). Weights with ``liver_context`` read their shell statistics inside
  it; without one they read whole shells and the entry's note says so.

Tried and not adopted: geometry test-time augmentation for the CT-only model (crops at 0.8, 1 and
1.25 x the segmented lesion's extent and diameter, mean logits), meant to soften its dependence on
an automatic mask's extent. With the CT-only classifier demo-0.3, on 16 held-out phantoms, CT
alone, through dual-stream demo-0.2 masks it moved AUC / ECE from 0.80 / 0.23 to 0.82 / 0.15, and
through tam-unet demo-0.2 from 0.88 / 0.089 to 0.88 / 0.080; on truth masks it hurt (1.0 / 0.053 -> 0.98 / 0.069); other scale sets
(1-1.25, 1-1.4, 0.8-1.5) swung either way (AUC 0.70-0.88). No target is met with it, so the
crop stays at the segmented geometry. What did help is training on such masks
(``training/mask_sources.py``; classifier demo-0.4: 0.91 / 0.13 and 0.92 / 0.14 on the same cases).
Also tried and not adopted: symmetry test-time augmentation (mean logits over the 8 flips of the
crop's axes, symmetries the classifier is trained with). On the phantoms' validation and test crops
it changed nothing (fitted temperature 1.225 -> 1.224, AUC 0.890 both); on the 16 held-out cases
through ``segment``, CT alone, demo-0.4 moved 0.91 / 0.13 -> 0.93 / 0.09 (dual-stream masks) and
0.92 / 0.14 -> 0.92 / 0.13 (tam-unet), and with the MRI through fusion 0.974 / 0.086 both ways: one
or two lesions' worth, no target met, for 8 times the classifier's work.

The ``gradcam`` entries are SimpleITK images (not JSON); ``gradcam_on_grid(results, ct)`` pastes
them into the CT grid and ``json_ready(results)`` drops them for ``report.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, WeightsError
from .calibration import softmax
from .crops import LesionCrop, LesionGeometry, extract_lesion_crops, lesion_geometries

MIN_RELIABLE_DIAMETER_MM = 10.0
MAX_OUTSIDE_FRACTION = 0.25
CLASSIFIER_ARCHITECTURES = ("hybrid3d", "resnet50-2d", "densenet121-2d")
CT_WEIGHTS = "hybrid3d"
CTMRI_WEIGHTS = "hybrid3d-ctmri"
CTMRI_T1_WEIGHTS = "hybrid3d-ctmri-t1"
T1_LIKE_NOTE = "lesions darker than the liver on this MRI (T1-like): CT+MRI classifier learned on T1 MRIs used"
T1_LIKE_CT_NOTE = "lesions darker than the liver on this MRI (T1-like): CT-only classifier used, MRI set aside"
BATCH = 8
#: liver (mm) around a lesion that the MRI must cover for the CT+MRI classifier to be used
MRI_MARGIN_MM = 5.0
OUTSIDE_MRI_NOTE = "lesion outside the MRI's field of view: CT-only classifier used"


def _resolve_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _check_inputs(ct: sitk.Image, lesions: sitk.Image) -> sitk.Image:
    if ct.GetDimension() != 3 or lesions.GetDimension() != 3:
        raise InputError("classify_lesions: CT and lesion map must be 3D images")
    if ct.GetSize() != lesions.GetSize() or not np.allclose(ct.GetSpacing(), lesions.GetSpacing(), atol=1e-4):
        raise InputError(
            f"lesion map grid (size {lesions.GetSize()}, spacing {lesions.GetSpacing()}) is not the CT grid "
            f"(size {ct.GetSize()}, spacing {ct.GetSpacing()})"
        )
    if lesions.GetPixelID() not in (sitk.sitkUInt8, sitk.sitkUInt16, sitk.sitkUInt32):
        arr = sitk.GetArrayViewFromImage(lesions)
        if np.any(arr < 0) or np.any(arr != np.round(arr)):
            raise InputError("lesion map must hold non-negative integer lesion ids")
        lesions = sitk.Cast(lesions, sitk.sitkUInt32)
    # The instance map must share the CT's physical grid; copy it so tiny header noise is harmless
    # (only when there is some: a copy of a long scan's lesion map is half a gigabyte).
    same = (lesions.GetOrigin() == ct.GetOrigin() and lesions.GetSpacing() == ct.GetSpacing()
            and lesions.GetDirection() == ct.GetDirection())
    if not same:
        lesions = sitk.Image(lesions)
        lesions.CopyInformation(ct)
    return lesions


def _load(name: str, weights_dir, device) -> tuple[Any, dict]:
    from ..weights import find_weights, load_weights

    folder = find_weights(name, weights_dir)
    model, manifest = load_weights(folder, device=device)
    if manifest.get("architecture") not in CLASSIFIER_ARCHITECTURES:
        raise WeightsError(
            f"{Path(folder) / 'manifest.json'}: architecture {manifest.get('architecture')!r} is not a lesion classifier"
        )
    return model, manifest


def select_weights(mri: sitk.Image | None, weights_dir=None, device: str = "cpu",
                   mri_t1_like: bool = False) -> tuple[Any, dict, str]:
    """Load the classifier for the available modalities: ``(model, manifest, note)``.

    CT+MRI weights when an MRI is given and they exist (those learned on T1 MRIs for a T1-like
    one); otherwise the CT weights (with a note when an MRI was given). Raises ``WeightsError``
    when no usable classifier weights exist.
    """
    dev = _resolve_device(device)
    if mri is not None:
        try:
            model, manifest = _load(CTMRI_T1_WEIGHTS if mri_t1_like else CTMRI_WEIGHTS, weights_dir, dev)
            return model, manifest, T1_LIKE_NOTE if mri_t1_like else ""
        except WeightsError as exc:
            if "no weights for model" not in str(exc):
                raise  # present but broken: say so rather than silently ignore the MRI
        model, manifest = _load(CT_WEIGHTS, weights_dir, dev)
        return model, manifest, (T1_LIKE_CT_NOTE if mri_t1_like
                                 else "no CT+MRI classifier weights found: CT-only model used, MRI ignored")
    model, manifest = _load(CT_WEIGHTS, weights_dir, dev)
    return model, manifest, ""


def _predict(model, crops: Sequence[LesionCrop], device, want_cam: bool) -> tuple[np.ndarray, list[np.ndarray | None]]:
    import torch

    from .gradcam import gradcam3d

    logits_all: list[np.ndarray] = []
    cams: list[np.ndarray | None] = []
    use_cam = want_cam and hasattr(model, "gradcam_layer")
    radial = bool(getattr(model, "radial_prior", False))
    liver = bool(getattr(model, "liver_context", False))
    for start in range(0, len(crops), BATCH):
        batch = crops[start : start + BATCH]
        x = torch.as_tensor(np.stack([c.model_input(radial, liver) for c in batch]), dtype=torch.float32, device=device)
        with torch.no_grad():
            out = model(x)
        logits_all.append((out["logits"] if isinstance(out, dict) else out).float().cpu().numpy())
        if use_cam:
            cams.extend(list(gradcam3d(model, x, target_class=1)))
        else:
            cams.extend([None] * len(batch))
    return np.concatenate(logits_all, axis=0), cams


def classify_lesions(
    ct: sitk.Image,
    lesions: sitk.Image,
    mri: sitk.Image | None = None,
    *,
    weights_dir: str | Path | None = None,
    device: str = "cpu",
    gradcam: bool = True,
    require_weights: bool = True,
    loaded: tuple[Any, dict] | None = None,
    liver: sitk.Image | None = None,
    mri_t1_like: bool = False,
) -> list[dict]:
    """Classify every lesion of ``lesions`` (see the module docstring for the output and rules).

    ``loaded``: an already loaded ``(model, manifest)`` (skips the weights lookup; tests, batch runs).
    ``require_weights=False``: when no classifier weights exist, return entries with probability None
    and a note instead of raising ``WeightsError``.
    ``mri_t1_like``: the lesions are darker than the liver on ``mri`` (module docstring; ignored
    with ``loaded``).
    """
    lesions = _check_inputs(ct, lesions)
    geos = lesion_geometries(lesions)
    if not geos:
        return []
    note_w = ""
    if loaded is not None:
        model, manifest = loaded
    else:
        try:
            model, manifest, note_w = select_weights(mri, weights_dir, device, mri_t1_like)
        except WeightsError as exc:
            if require_weights:
                raise
            return [
                {
                    "id": lid,
                    "malignancy_probability": None,
                    "predicted_class": "indeterminate",
                    "reliable": False,
                    "note": f"no classifier available ({exc})",
                    "diameter_mm": round(g.diameter_mm, 2),
                    "model": None,
                }
                for lid, g in sorted(geos.items())
            ]
    in_ch = int(manifest.get("config", {}).get("in_channels", 1))
    if in_ch == 2 and mri is None:
        raise InputError(f"classifier {manifest.get('name')!r} needs an MRI (CT+MRI model) but none was given")
    if mri is not None and in_ch == 1 and not note_w:
        note_w = "CT-only classifier: MRI not used"
    if liver is not None and liver.GetDimension() != 3:
        raise InputError(f"liver mask must be 3D, got {liver.GetDimension()}D")
    groups = [(model, manifest, mri if in_ch == 2 else None, note_w, geos)]
    outside = {lid: g for lid, g in geos.items() if in_ch == 2 and not mri_covers_lesion(mri, g)}
    partly_outside = set(outside)  # classified by the CT+MRI model all the same (no CT-only weights)
    if outside and loaded is None:
        try:
            ct_model, ct_manifest = _load(CT_WEIGHTS, weights_dir, _resolve_device(device))
        except WeightsError:
            pass
        else:
            inside = {lid: g for lid, g in geos.items() if lid not in outside}
            groups = [(model, manifest, mri, note_w, inside), (ct_model, ct_manifest, None, OUTSIDE_MRI_NOTE, outside)]
            partly_outside = set()
    results: list[dict] = []
    for group_model, group_manifest, group_mri, note, group_geos in groups:
        if group_geos:
            results += _classify_group(group_model, group_manifest, ct, lesions, group_mri, group_geos, note,
                                       liver, gradcam, partly_outside)
    return sorted(results, key=lambda r: r["id"])


def mri_covers_lesion(mri: sitk.Image, geometry: LesionGeometry, margin_mm: float = MRI_MARGIN_MM) -> bool:
    """Whether the MRI's field of view holds the lesion's axis-aligned (LPS) box, widened by
    `margin_mm` of the liver around it (what the CT+MRI classifier compares the lesion with)."""
    from ..geometry import points_in_field_of_view

    half = 0.5 * geometry.extent_mm + margin_mm
    axis = np.linspace(-half, half, 5)
    offsets = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    return points_in_field_of_view(mri, np.asarray(geometry.centroid_lps) + offsets)


def _classify_group(model, manifest: dict, ct: sitk.Image, lesions: sitk.Image, mri: sitk.Image | None,
                    geos: dict, note_w: str, liver: sitk.Image | None, gradcam: bool,
                    partly_outside: set[int]) -> list[dict]:
    """The lesion table entries of `geos` from one classifier (`mri`: its MRI input, or None)."""
    import torch

    dev = next(model.parameters()).device if any(True for _ in model.parameters()) else torch.device("cpu")
    size = int(manifest.get("config", {}).get("crop_size", 64))
    wants_liver = bool(getattr(model, "liver_context", False))
    crops = extract_lesion_crops(ct, lesions, mri, geometries=geos, size=size, liver=liver if wants_liver else None)
    logits, cams = _predict(model, crops, dev, gradcam)
    cal = manifest.get("calibration") or {}
    temperature = float(cal.get("temperature", 1.0)) if isinstance(cal, dict) else 1.0
    if not np.isfinite(temperature) or temperature <= 0:
        raise WeightsError(f"weights {manifest.get('name')!r}: invalid calibration temperature {temperature!r}")
    probs = softmax(logits, temperature)[:, 1]
    threshold = float(manifest.get("decision_threshold", 0.5))
    from ..weights import is_synthetic

    results: list[dict] = []
    for crop, p, cam in zip(crops, probs, cams):
        g = crop.geometry
        notes = [note_w] if note_w else []
        reliable = True
        cls = "malignant" if p >= threshold else "benign"
        if g.diameter_mm < MIN_RELIABLE_DIAMETER_MM:
            cls, reliable = "indeterminate", False
            notes.append(f"lesion < {MIN_RELIABLE_DIAMETER_MM:g} mm ({g.diameter_mm:.1f} mm): too small for a reliable call")
        if crop.outside_fraction > MAX_OUTSIDE_FRACTION:
            reliable = False
            notes.append(f"lesion at the image border: {100 * crop.outside_fraction:.0f}% of its crop lies outside the scan")
        if crop.larger_than_max_fov:
            notes.append(f"lesion larger than the {crop.side_mm:.0f} mm crop limit: whole lesion scaled into the crop")
        if not cal:
            notes.append("uncalibrated probability (weights carry no calibration)")
        if int(crop.lesion_id) in partly_outside:
            reliable = False
            notes.append("lesion not all inside the MRI's field of view: the CT+MRI classifier read the MRI's fill there")
        if wants_liver and liver is None:
            notes.append("no liver mask given: lesion compared with its whole surroundings, not the liver only")
        entry: dict[str, Any] = {
            "id": int(crop.lesion_id),
            "malignancy_probability": round(float(p), 4),
            "predicted_class": cls,
            "reliable": bool(reliable),
            "note": "; ".join(notes),
            "diameter_mm": round(g.diameter_mm, 2),
            "crop_side_mm": round(crop.side_mm, 2),
            "model": manifest.get("name"),
            "architecture": manifest.get("architecture"),
            "weights_version": manifest.get("version"),
            "modality": "CT+MRI" if mri is not None else "CT",
            "calibrated": bool(cal),
            "temperature": round(temperature, 4),
            "synthetic_weights": bool(is_synthetic(manifest)),
        }
        if gradcam and cam is not None:
            entry["gradcam"] = crop.to_image(cam)
        results.append(entry)
    return results


def json_ready(results: Sequence[dict]) -> list[dict]:
    """Copies of ``results`` without the non-JSON ``gradcam`` images (for report.json)."""
    return [{k: v for k, v in r.items() if not isinstance(v, sitk.Image)} for r in results]


def gradcam_on_grid(results: Sequence[dict], reference: sitk.Image) -> sitk.Image:
    """All lesions' Grad-CAM maps pasted into ``reference``'s grid (float32 [0, 1], max where they overlap)."""
    from .gradcam import paste_maps

    return paste_maps([r["gradcam"] for r in results if isinstance(r.get("gradcam"), sitk.Image)], reference)
