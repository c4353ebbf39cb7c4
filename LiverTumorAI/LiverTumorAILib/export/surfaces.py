"""STL/OBJ surfaces per segment, in RAS or LPS millimetres.

Uses Slicer's own closed-surface conversion (same smoothing as the Segmentations module)
when MRML is available, else VTK flying edges + windowed-sinc smoothing. Files are written
with VTK writers directly: Slicer's OBJ export goes through a render window, which a
headless server does not have.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support

from ..errors import InputError, OutputError
from ..scene import scene_available
from ..scene.volumes import ijk_to_ras_from_sitk
from .result import ResultData

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name) or "segment"


def write_surfaces(data: ResultData, out_dir: Path, fmt: str = "stl", coordinates: str = "RAS") -> list[Path]:
    """One `<segment>.<fmt>` file per segment (e.g. Liver.stl, Lesion_1.stl)."""
    fmt = fmt.lower()
    if fmt not in ("stl", "obj"):
        raise InputError(f"unknown surface format {fmt!r}; use stl or obj")
    if coordinates.upper() not in ("RAS", "LPS"):
        raise InputError(f"unknown coordinate system {coordinates!r}; use RAS or LPS")
    surfaces = slicer_surfaces(data) if scene_available() else vtk_surfaces(data)
    lps = coordinates.upper() == "LPS"
    return [_write(poly, out_dir / f"{safe_name(name)}.{fmt}", lps) for name, poly in surfaces]


def slicer_surfaces(data: ResultData) -> list[tuple[str, vtk.vtkPolyData]]:
    """(segment name, RAS polydata) from Slicer's binary labelmap -> closed surface converter."""
    from ..scene.build import new_scene
    from ..scene.segmentation import create_segmentation_node

    scene = new_scene()
    try:
        node = create_segmentation_node(scene, data.label, data.lesions, report=data.report, name="seg")
        node.CreateClosedSurfaceRepresentation()
        seg = node.GetSegmentation()
        out = []
        for sid in seg.GetSegmentIDs():
            poly = vtk.vtkPolyData()
            poly.DeepCopy(node.GetClosedSurfaceInternalRepresentation(sid))
            out.append((seg.GetSegment(sid).GetName(), poly))
        return out
    finally:
        scene.Clear(True)


def vtk_surfaces(data: ResultData) -> list[tuple[str, vtk.vtkPolyData]]:
    """(segment name, RAS polydata) with flying edges + smoothing (no MRML needed)."""
    array = sitk.GetArrayFromImage(data.merged)
    transform = vtk.vtkTransform()
    transform.SetMatrix(ijk_to_ras_from_sitk(data.merged).ravel().tolist())
    out = []
    for value, spec in data.specs:
        mask = np.pad((array == value).astype(np.uint8), 1)  # closed at the volume border
        image = vtk.vtkImageData()
        image.SetDimensions(mask.shape[2], mask.shape[1], mask.shape[0])
        image.SetOrigin(-1.0, -1.0, -1.0)
        image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(mask.ravel(), deep=True))
        fe = vtk.vtkDiscreteFlyingEdges3D()
        fe.SetInputData(image)
        fe.SetValue(0, 1)
        smooth = vtk.vtkWindowedSincPolyDataFilter()
        smooth.SetInputConnection(fe.GetOutputPort())
        smooth.SetNumberOfIterations(20)
        smooth.SetPassBand(0.1)
        smooth.NormalizeCoordinatesOn()
        tf = vtk.vtkTransformPolyDataFilter()
        tf.SetTransform(transform)
        tf.SetInputConnection(smooth.GetOutputPort())
        tf.Update()
        poly = vtk.vtkPolyData()
        poly.DeepCopy(tf.GetOutput())
        out.append((spec.name, poly))
    return out


def _write(poly: vtk.vtkPolyData, path: Path, lps: bool) -> Path:
    source: vtk.vtkAlgorithm
    producer = vtk.vtkTrivialProducer()
    producer.SetOutput(poly)
    source = producer
    if lps:
        transform = vtk.vtkTransform()
        transform.SetMatrix(_RAS_TO_LPS.ravel().tolist())
        tf = vtk.vtkTransformPolyDataFilter()
        tf.SetTransform(transform)
        tf.SetInputConnection(source.GetOutputPort())
        source = tf
    normals = vtk.vtkPolyDataNormals()  # outward normals whatever the grid's handedness
    normals.SetInputConnection(source.GetOutputPort())
    normals.AutoOrientNormalsOn()
    normals.ConsistencyOn()
    normals.SplittingOff()
    if path.suffix == ".stl":
        writer = vtk.vtkSTLWriter()
        writer.SetFileTypeToBinary()
    else:
        writer = vtk.vtkOBJWriter()
    writer.SetFileName(str(path))
    writer.SetInputConnection(normals.GetOutputPort())
    if not writer.Write():
        raise OutputError(f"{path.name}: could not write surface")
    return path
