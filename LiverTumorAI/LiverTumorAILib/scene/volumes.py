"""SimpleITK image <-> vtkMRMLScalarVolumeNode with exact geometry.

ITK stores geometry as LPS origin/direction/spacing; MRML stores one IJK->RAS matrix.
Both directions of the conversion go through `ijk_to_ras_from_sitk` /
`sitk_geometry_from_ijk_to_ras` so that oblique, flipped and anisotropic grids survive a
round trip bit for bit (no resampling unless a non-linear parent transform forces it).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from ..errors import InputError
from ..geometry import region_start

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def ijk_to_ras_from_sitk(image: sitk.Image) -> np.ndarray:
    """4x4 IJK->RAS matrix of an ITK (LPS) image grid."""
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    spacing = np.array(image.GetSpacing(), dtype=float)
    origin = np.array(image.GetOrigin(), dtype=float)
    m = np.eye(4)
    m[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(spacing)
    m[:3, 3] = _LPS_TO_RAS @ origin
    return m


def sitk_geometry_from_ijk_to_ras(m: np.ndarray) -> tuple[tuple, tuple, tuple]:
    """(origin, spacing, direction) in LPS from a 4x4 IJK->RAS matrix.

    Refuses sheared matrices (ITK grids are orthogonal): a clear error beats a silently
    distorted volume.
    """
    lps = _LPS_TO_RAS @ np.asarray(m, dtype=float)[:3, :]
    axes = lps[:, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0):
        raise InputError("volume geometry has a zero-length axis")
    direction = axes / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise InputError("volume geometry is sheared (non-orthogonal axes); cannot convert to an ITK image")
    return tuple(lps[:, 3]), tuple(spacing), tuple(direction.ravel())


def vtk_matrix(m: np.ndarray) -> vtk.vtkMatrix4x4:
    out = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            out.SetElement(r, c, float(m[r, c]))
    return out


def np_matrix(m: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def image_data_from_array(array: np.ndarray) -> vtk.vtkImageData:
    """vtkImageData (origin 0, spacing 1, as MRML expects) from a (z, y, x) array."""
    array = np.ascontiguousarray(array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    data = vtk.vtkImageData()
    data.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    scalars = numpy_support.numpy_to_vtk(array.ravel(), deep=True)
    scalars.SetName("ImageScalars")
    data.GetPointData().SetScalars(scalars)
    return data


def array_from_image_data(data: vtk.vtkImageData) -> np.ndarray:
    """(z, y, x) copy of a vtkImageData's scalars."""
    nx, ny, nz = data.GetDimensions()
    scalars = data.GetPointData().GetScalars()
    return numpy_support.vtk_to_numpy(scalars).reshape(nz, ny, nx).copy()


def image_data_on_grid(array: np.ndarray, size_xyz, start_xyz) -> vtk.vtkImageData:
    """vtkImageData of `size_xyz`, zero except the (z, y, x) `array` placed at index `start_xyz`.

    The scalars are allocated by VTK and filled in place, so a small array on a large grid
    costs one large buffer, not a large numpy array and then its copy."""
    array = np.asarray(array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    data = vtk.vtkImageData()
    data.SetDimensions(*[int(v) for v in size_xyz])
    data.AllocateScalars(numpy_support.get_vtk_array_type(array.dtype), 1)
    scalars = data.GetPointData().GetScalars()
    scalars.SetName("ImageScalars")
    values = numpy_support.vtk_to_numpy(scalars).reshape(tuple(int(v) for v in reversed(size_xyz)))
    values.fill(0)
    x, y, z = (int(v) for v in start_xyz)
    nz, ny, nx = array.shape
    values[z : z + nz, y : y + ny, x : x + nx] = array
    return data


def set_node_geometry(node: slicer.vtkMRMLVolumeNode, image: sitk.Image) -> None:
    """Copy the ITK grid of `image` onto `node` (IJK->RAS)."""
    node.SetIJKToRASMatrix(vtk_matrix(ijk_to_ras_from_sitk(image)))


def volume_node_from_sitk(
    scene: slicer.vtkMRMLScene,
    image: sitk.Image,
    name: str,
    *,
    labelmap: bool = False,
    node: Optional[slicer.vtkMRMLVolumeNode] = None,
    reference: Optional[sitk.Image] = None,
) -> slicer.vtkMRMLVolumeNode:
    """Add (or refill `node`) a scalar or labelmap volume node holding `image`.

    `reference`: the grid the node gets, of which `image` is a sub-grid (same spacing and
    direction, voxels on its voxels); zero outside `image`. Default: `image`'s own grid."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name}: a 3D single-component image is needed")
    start = (0, 0, 0)
    if reference is not None:
        start = region_start(reference, image)
        if start is None:
            raise InputError(f"{name}: the image does not lie on the reference grid")
    if node is None:
        cls = slicer.vtkMRMLLabelMapVolumeNode if labelmap else slicer.vtkMRMLScalarVolumeNode
        node = scene.AddNewNodeByClass(cls.__name__, name)
    if reference is None or (start == (0, 0, 0) and image.GetSize() == reference.GetSize()):
        set_node_geometry(node, image)
        node.SetAndObserveImageData(image_data_from_array(sitk.GetArrayViewFromImage(image)))
    else:
        set_node_geometry(node, reference)
        data = image_data_on_grid(sitk.GetArrayViewFromImage(image), reference.GetSize(), start)
        node.SetAndObserveImageData(data)
    return node


def _node_to_world_matrix(node: slicer.vtkMRMLTransformableNode) -> Optional[np.ndarray]:
    """4x4 node->world matrix, or None when a parent transform is non-linear."""
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        return None
    m = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(m)
    return np_matrix(m)


def _hardened_copy(node: slicer.vtkMRMLScalarVolumeNode) -> slicer.vtkMRMLScalarVolumeNode:
    """A temporary copy of `node` with its (non-linear) parent transform hardened (resampled)."""
    scene = node.GetScene()
    tmp = scene.AddNewNodeByClass(node.GetClassName(), node.GetName() + "_hardened")
    tmp.CopyContent(node)
    tmp.SetAndObserveTransformNodeID(node.GetTransformNodeID())
    if not tmp.HardenTransform():
        scene.RemoveNode(tmp)
        raise InputError(f"{node.GetName()}: could not apply its parent transform")
    return tmp


def sitk_from_volume_node(node: slicer.vtkMRMLVolumeNode) -> sitk.Image:
    """ITK image of `node` in world coordinates: parent transforms are applied.

    A linear parent transform is folded into the geometry exactly (no resampling); a
    non-linear one is hardened on a temporary copy (which resamples, as Slicer does).
    """
    if node is None or node.GetImageData() is None:
        raise InputError("volume node has no image data")
    to_world = _node_to_world_matrix(node)
    if to_world is None:
        tmp = _hardened_copy(node)
        try:
            return sitk_from_volume_node(tmp)
        finally:
            tmp.GetScene().RemoveNode(tmp)
    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    origin, spacing, direction = sitk_geometry_from_ijk_to_ras(to_world @ np_matrix(ijk_to_ras))
    image = sitk.GetImageFromArray(array_from_image_data(node.GetImageData()))
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image
