"""Lesion masks as a deployed segmenter draws them, for training the lesion classifier.

Why: at inference the classifier's crop is centred on the *segmented* lesion and sized from its
extent (``classification/crops.py``), and a CT-only segmentation is often partial or shifted. A
classifier trained only on truth masks then sees crop geometries it never saw in training (on
held-out phantoms: the same lesions scored AUC 1.0 on truth masks and 0.80 through dual-stream's
masks). Jittering truth crops did not close that gap (see ``cls_trainer``), so this module gives
the trainer the real thing: the segmenter's own lesion instances on the training phantoms, each
labelled with the class of the truth lesion it matches.

Matching is the evaluation's (``evaluation.match_lesions``: one-to-one by Dice >= 0.1, the
detection rule), so a training crop exists exactly for the lesions that count as detected at
evaluation; false positives have no truth class and are left out.
"""

from __future__ import annotations

from typing import Any

import SimpleITK as sitk

TRUTH = "truth"
_MODELS: dict[tuple[str, str], Any] = {}


def _loaded(name: str, weights_dir: str | None, device: str = "cpu"):
    """Models are loaded once per process and device (phantom workers call this for every case)."""
    import torch

    from LiverTumorAILib.inference.engine import load_model

    key = (name, str(weights_dir), device)
    if key not in _MODELS:
        _MODELS[key] = load_model(name, weights_dir, torch.device(device))
    return _MODELS[key]


def _manifest(name: str, weights_dir: str | None) -> dict:
    """The checked manifest of a source's weights, without building the model (main process)."""
    from LiverTumorAILib.weights import find_weights, verify_manifest

    return verify_manifest(find_weights(name, weights_dir))


def segmenter_masks(ct: sitk.Image, model: str, weights_dir: str | None = None,
                    device: str = "cpu") -> tuple[sitk.Image, sitk.Image]:
    """(lesion instances, label map) of ``ct`` as ``livertumorai segment --model MODEL`` on a CT
    alone would draw them (localiser cascade and postprocessing included), on the CT grid.
    ``device``: a torch device string ("cpu", "cuda", "cuda:1"); the engine falls back to the CPU
    on a CUDA out-of-memory, as segment does."""
    import torch

    from LiverTumorAILib.errors import WeightsError
    from LiverTumorAILib.inference.engine import segment_volume
    from LiverTumorAILib.pipeline import lesion_instance_image

    try:
        localizer = _loaded("localizer", weights_dir, device)
    except WeightsError:  # no localiser weights: segment the whole scan, as segment does
        localizer = None
    out = segment_volume(ct, _loaded(model, weights_dir, device), localizer=localizer, mri=None,
                         device=torch.device(device), keep_attention=False)
    label = sitk.GetImageFromArray(out.label)
    label.CopyInformation(ct)
    return lesion_instance_image(out.label, ct), label


def matched_truth_ids(predicted: sitk.Image, truth: sitk.Image) -> dict[int, int]:
    """Predicted lesion id -> the truth lesion id it is matched to (the evaluation's rule)."""
    from LiverTumorAILib.evaluation import match_lesions, spacing_zyx

    matches, _ = match_lesions(sitk.GetArrayViewFromImage(predicted), sitk.GetArrayViewFromImage(truth),
                               spacing_zyx(truth))
    return {int(m.pred_id): int(m.truth_id) for m in matches if m.pred_id is not None}


def lesion_crops_by_source(case: Any, sources: list[str], weights_dir: str | None = None,
                           device: str = "cpu") -> dict[str, list[tuple[int, Any]]]:
    """Per mask source ("truth" or a segmentation model name), (truth lesion id, ``LesionCrop``)
    pairs for the phantom ``case`` (raw HU + MRI): each crop and the truth lesion it stands for."""
    from LiverTumorAILib.classification.crops import extract_lesion_crops

    out: dict[str, list[tuple[int, Any]]] = {}
    for source in sources:
        if source == TRUTH:
            crops = extract_lesion_crops(case.ct, case.lesions, case.mri, raw_hu=True, liver=case.label)
            out[source] = [(c.lesion_id, c) for c in crops]
            continue
        lesions, liver = segmenter_masks(case.ct, source, weights_dir, device)
        to_truth = matched_truth_ids(lesions, case.lesions)
        crops = extract_lesion_crops(case.ct, lesions, case.mri, raw_hu=True, liver=liver,
                                     ids=sorted(to_truth)) if to_truth else []
        out[source] = [(to_truth[c.lesion_id], c) for c in crops]
    return out


def source_tag(source: str, weights_dir: str | None = None) -> str:
    """File-name tag of a mask source's cached crops: the model name and the first 8 hex digits of
    its weights' sha256, so crops cut with other weights are never reused (the truth crops keep
    the original, untagged cache names)."""
    if source == TRUTH:
        return ""
    sha = str(_manifest(source, weights_dir).get("sha256", ""))[:8] or "nosha"
    return "." + "".join(c if c.isalnum() or c == "-" else "_" for c in source) + "-" + sha


def check_sources(sources: list[str]) -> list[str]:
    """Known sources, truth first, no repeats; a clear error otherwise."""
    from LiverTumorAILib.pipeline import SEGMENTATION_MODEL_NAMES

    allowed = [TRUTH, *[m for m in SEGMENTATION_MODEL_NAMES if m != "fusion"]]
    bad = [s for s in sources if s not in allowed]
    if bad:
        raise SystemExit(f"--mask-sources {' '.join(bad)}: unknown (choose from {', '.join(allowed)}; fusion needs an MRI)")
    return sorted(set(sources), key=allowed.index)


def source_versions(sources: tuple[str, ...] | list[str], weights_dir: str | None = None) -> dict[str, str]:
    """What each source's masks came from, for the manifest ("truth" or "<model> <weights version>")."""
    return {s: "phantom truth" if s == TRUTH else f"{s} {_manifest(s, weights_dir).get('version', '?')}"
            for s in sources}
