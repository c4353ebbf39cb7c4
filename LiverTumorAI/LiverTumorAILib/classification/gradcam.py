"""3D Grad-CAM for the hybrid3d lesion classifier, and mapping crop-grid maps back to the CT grid.

Grad-CAM (Selvaraju et al. 2017) in 3D: for the *malignant* logit ``y`` (class 1) and the
activations ``A_k`` of the model's ``gradcam_layer`` (hybrid3d: the attention-reweighted output of
the last conv block, 8^3 for a 64^3 crop)::

    w_k = mean_{xyz} dy/dA_k          cam = ReLU(sum_k w_k A_k)

upsampled trilinearly to the crop (64^3) and divided by its maximum (so [0, 1]; an all-zero map
stays zero: the layer found nothing that pushes towards "malignant"). Using the malignant logit
for benign lesions too is deliberate: the map then shows what *argued for* malignancy, which is
the question a reader asks of the heatmap. The map is the network's attention, not a probability
and not a tumour outline (see docs/heatmaps.md).

``paste_crop_maps`` maps crop-grid maps back into the CT grid through each crop's physical
geometry (linear interpolation, voxel-wise maximum where crops overlap), touching only the CT
region each crop covers.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk

from .crops import LesionCrop


def gradcam3d(model, x, target_class: int = 1, layer=None) -> np.ndarray:
    """Grad-CAM maps ``[B, D, H, W]`` in [0, 1] at the input resolution for ``x: Tensor[B, C, D, H, W]``.

    ``model`` returns ``dict(logits=...)`` (hybrid3d) or a logits tensor; ``layer`` defaults to
    ``model.gradcam_layer``. Runs in eval mode with gradients enabled; parameters' ``.grad`` are
    left untouched (``torch.autograd.grad`` on the activations only).
    """
    import torch
    import torch.nn.functional as F

    layer = layer if layer is not None else model.gradcam_layer
    store: dict[str, torch.Tensor] = {}

    def hook(_m, _inp, out):
        store["act"] = out

    handle = layer.register_forward_hook(hook)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            out = model(x)
            logits = out["logits"] if isinstance(out, dict) else out
            act = store["act"]
            score = logits[:, int(target_class)].sum()
            (grad,) = torch.autograd.grad(score, act)
        weights = grad.mean(dim=(2, 3, 4), keepdim=True)
        cam = F.relu((weights * act).sum(dim=1, keepdim=True)).detach()
        cam = F.interpolate(cam, size=tuple(x.shape[2:]), mode="trilinear", align_corners=False)[:, 0]
        peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12)[:, None, None, None]
        cam = torch.where(peak > 1e-11, cam / peak, torch.zeros_like(cam))
        return cam.clamp(0.0, 1.0).cpu().numpy().astype(np.float32)
    finally:
        handle.remove()
        model.train(was_training)


def _region(reference: sitk.Image, src: sitk.Image) -> tuple[np.ndarray, np.ndarray] | None:
    """Index box [lo, hi] (x, y, z, inclusive) of ``reference`` covered by ``src``'s extent, or None."""
    n = np.asarray(src.GetSize())
    corners_idx = np.array(np.meshgrid(*[(-0.5, float(k) - 0.5) for k in n], indexing="ij")).reshape(3, -1).T
    corners = [src.TransformContinuousIndexToPhysicalPoint(c.tolist()) for c in corners_idx]
    idx = np.array([reference.TransformPhysicalPointToContinuousIndex(c) for c in corners])
    size = np.asarray(reference.GetSize())
    lo, hi = np.floor(idx.min(axis=0)).astype(int) - 1, np.ceil(idx.max(axis=0)).astype(int) + 1
    if np.any(hi < 0) or np.any(lo > size - 1):
        return None
    return np.clip(lo, 0, size - 1), np.clip(hi, 0, size - 1)


def paste_maps(maps: Sequence[sitk.Image], reference: sitk.Image) -> sitk.Image:
    """Float32 image on ``reference``'s exact grid: each map (any geometry, e.g. a crop grid)
    resampled linearly in physical space (0 outside it), voxel-wise maximum where maps overlap.

    Only the reference region each map covers is resampled, so many small lesion maps on a large CT
    cost little more than one full-size float32 array.
    """
    size = reference.GetSize()
    out = np.zeros((size[2], size[1], size[0]), dtype=np.float32)
    for src in maps:
        region = _region(reference, src)
        if region is None:
            continue
        a, b = region
        sub = sitk.Image((b - a + 1).tolist(), sitk.sitkFloat32)
        sub.SetSpacing(reference.GetSpacing())
        sub.SetDirection(reference.GetDirection())
        sub.SetOrigin(reference.TransformIndexToPhysicalPoint([int(v) for v in a]))
        res = sitk.Resample(sitk.Cast(src, sitk.sitkFloat32), sub, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        view = out[a[2] : b[2] + 1, a[1] : b[1] + 1, a[0] : b[0] + 1]
        np.maximum(view, sitk.GetArrayFromImage(res), out=view)
    img = sitk.GetImageFromArray(np.clip(out, 0.0, 1.0))
    img.CopyInformation(reference)
    return img


def paste_crop_maps(crops: Sequence[LesionCrop], maps: Sequence[np.ndarray], reference: sitk.Image) -> sitk.Image:
    """Crop-grid arrays (one per crop) mapped into ``reference``'s grid; see ``paste_maps``."""
    return paste_maps([c.to_image(np.asarray(m, dtype=np.float32)) for c, m in zip(crops, maps)], reference)
