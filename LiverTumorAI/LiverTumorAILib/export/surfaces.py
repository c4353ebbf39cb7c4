"""STL/OBJ surfaces per segment, in LPS (default) or RAS millimetres.

Uses Slicer's own closed-surface conversion (same smoothing as the Segmentations module)
when MRML is available, else VTK flying edges + windowed-sinc smoothing. Files are written
with VTK writers directly: Slicer's OBJ export goes through a render window, which a
headless server does not have.

Every file names its coordinate system the way 3D Slicer (4.11+) writes and reads it: the
text `SPACE=LPS` or `SPACE=RAS` in the binary STL's 80-byte header, and in a `#` comment
line at the top of the OBJ. Slicer reads a mesh without that tag as LPS, as does most
planning software, hence LPS by default.
"""

from __future__ import annotations

import os
import shutil
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
COORDINATE_SYSTEMS = ("LPS", "RAS")


def space_tag(coordinates: str) -> str:
    """`SPACE=LPS` / `SPACE=RAS`: the header text vtkMRMLModelStorageNode looks for (substring match)."""
    return f"SPACE={coordinates.upper()}"


def file_header(coordinates: str) -> str:
    """Header text of our STL/OBJ files (fits the STL's 80 bytes; must not start with "solid")."""
    return f"LiverTumorAI surface, mm. {space_tag(coordinates)}"


def safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name) or "segment"


def write_surfaces(data: ResultData, out_dir: Path, fmt: str = "stl", coordinates: str = "LPS") -> list[Path]:
    """One `<segment>.<fmt>` file per segment (e.g. Liver.stl, Lesion_1.stl), tagged with its space."""
    fmt = fmt.lower()
    if fmt not in ("stl", "obj"):
        raise InputError(f"unknown surface format {fmt!r}; use stl or obj")
    coordinates = str(coordinates).upper()
    if coordinates not in COORDINATE_SYSTEMS:
        raise InputError(f"unknown coordinate system {coordinates!r}; use LPS or RAS")
    surfaces = slicer_surfaces(data) if scene_available() else vtk_surfaces(data)
    return [_write(poly, out_dir / f"{safe_name(name)}.{fmt}", coordinates) for name, poly in surfaces]


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


def _write(poly: vtk.vtkPolyData, path: Path, coordinates: str) -> Path:
    """Write RAS `poly` to `path` in `coordinates` (LPS: x, y negated), with the SPACE= tag."""
    source: vtk.vtkAlgorithm
    producer = vtk.vtkTrivialProducer()
    producer.SetOutput(poly)
    source = producer
    if coordinates == "LPS":
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
    header = file_header(coordinates)
    if path.suffix == ".stl":
        writer = vtk.vtkSTLWriter()
        writer.SetFileTypeToBinary()
        writer.SetHeader(header)  # the 80-byte binary header, where Slicer looks for SPACE=
        target = path
    else:
        writer = vtk.vtkOBJWriter()  # no comment setting: the header line is replaced below
        target = path.with_name(f".{path.name}.vtk")
    writer.SetFileName(str(target))
    writer.SetInputConnection(normals.GetOutputPort())
    if not writer.Write():
        raise OutputError(f"{path.name}: could not write surface")
    if target != path:
        _retag_obj(target, path, header)
    return path


def _retag_obj(vtk_obj: Path, path: Path, header: str) -> None:
    """Copy VTK's OBJ to `path` with `# <header>` in place of its leading comment lines.

    vtkOBJReader (and so Slicer) returns the comment lines before the first data line as
    the file's comment, which is where Slicer looks for SPACE=.
    """
    try:
        with open(vtk_obj, "rb") as src, open(path, "wb") as dst:
            dst.write(f"# {header}\n".encode("ascii"))
            line = src.readline()
            while line.startswith(b"#"):
                line = src.readline()
            dst.write(line)
            shutil.copyfileobj(src, dst, 1 << 20)
    except OSError as exc:
        raise OutputError(f"{path.name}: could not write surface ({exc.strerror or exc})") from None
    finally:
        try:
            os.remove(vtk_obj)
        except OSError:
            pass
