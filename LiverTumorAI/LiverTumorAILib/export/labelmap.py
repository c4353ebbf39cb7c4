"""NIfTI labelmap (+ a JSON legend) and .seg.nrrd exports."""

from __future__ import annotations

import json
from pathlib import Path

import SimpleITK as sitk

from ..errors import InputError
from ..scene import scene_available
from ..scene import terminology as T
from .result import ResultData


def legend(data: ResultData) -> list[dict]:
    """value -> segment name, colour and codes: what a NIfTI viewer needs to label the map."""
    return [
        {
            "value": value,
            "name": spec.name,
            "color_rgb": [round(c * 255) for c in spec.color],
            "category": list(spec.category),
            "type": list(spec.type),
            "anatomic_region": list(spec.anatomic_region) if spec.anatomic_region else None,
            "terminology": T.terminology_string(spec),
        }
        for value, spec in data.specs
    ]


def write_nifti(data: ResultData, out_dir: Path) -> list[Path]:
    """`labelmap.nii.gz` (one value per segment) and `labelmap.json` (the legend)."""
    image = sitk.Cast(data.merged, sitk.sitkUInt8 if len(data.specs) < 255 else sitk.sitkUInt16)
    nii = out_dir / "labelmap.nii.gz"
    sitk.WriteImage(image, str(nii), True)
    js = out_dir / "labelmap.json"
    js.write_text(json.dumps({"segments": legend(data), "model": T.model_tag(data.report)}, indent=2))
    return [nii, js]


def write_seg_nrrd(data: ResultData, out_dir: Path) -> list[Path]:
    """`segmentation.seg.nrrd` with terminology, through the MRML scene bridge."""
    if not scene_available():
        raise InputError("seg.nrrd export needs slicer-core (pip install slicer-core) or 3D Slicer")
    from ..scene.build import new_scene
    from ..scene.files import write_segmentation
    from ..scene.segmentation import create_segmentation_node

    scene = new_scene()
    name = (data.ct_path.name.split(".")[0] if data.ct_path else "CT") + " LiverTumorAI"
    node = create_segmentation_node(scene, data.label, data.lesions, report=data.report, name=name)
    path = write_segmentation(node, out_dir / "segmentation.seg.nrrd")
    scene.Clear(True)
    return [path]
