"""Writing .seg.nrrd and .mrb with MRML storage nodes; reading an .mrb without the app.

vtkMRMLScene.ReadFromMRB needs a data I/O manager that only the application sets up, so
`read_mrb` unpacks the bundle and connects its .mrml instead (storage nodes then load data).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import slicer

from ..errors import InputError, OutputError


def write_segmentation(node: slicer.vtkMRMLSegmentationNode, path: str | os.PathLike) -> Path:
    """Write `node` as .seg.nrrd (compressed) via a segmentation storage node."""
    path = Path(path)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(True)
    if not storage.WriteData(node):
        raise OutputError(f"{path}: could not write segmentation")
    return path


def read_segmentation(scene: slicer.vtkMRMLScene, path: str | os.PathLike) -> slicer.vtkMRMLSegmentationNode:
    """Load a .seg.nrrd into `scene` as a new segmentation node."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", path.name.split(".")[0])
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    node.SetAndObserveStorageNodeID(storage.GetID())
    if not storage.ReadData(node):
        raise InputError(f"{path}: not a readable segmentation")
    return node


def register_markups_storage(scene: slicer.vtkMRMLScene) -> None:
    """Let a bare scene (slicer-core, not the app, where the Markups module does it) save and load
    point lists: without the JSON storage class they are silently left out of an .mrb."""
    if not scene.IsNodeClassRegistered("vtkMRMLMarkupsJsonStorageNode"):
        scene.RegisterNodeClass(slicer.vtkMRMLMarkupsJsonStorageNode())


def _ensure_storage(scene: slicer.vtkMRMLScene) -> None:
    """Give every storable node with data a storage node and a file name inside the bundle."""
    used: set[str] = set()
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLStorableNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLStorableNode")
        if not node.GetSaveWithScene() or _is_builtin_color(node):
            continue
        storage = node.GetStorageNode()
        if storage is None:
            if not node.AddDefaultStorageNode() or node.GetStorageNode() is None:
                continue
            storage = node.GetStorageNode()
        if not storage.GetFileName():
            ext = storage.GetDefaultWriteFileExtension()
            stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in node.GetName()) or "node"
            name, n = f"{stem}.{ext}", 1
            while name in used:
                name, n = f"{stem}_{n}.{ext}", n + 1
            used.add(name)
            storage.SetFileName(name)
        if hasattr(storage, "SetUseCompression"):
            storage.SetUseCompression(True)


def _is_builtin_color(node: slicer.vtkMRMLNode) -> bool:
    """Slicer's default colour tables are recreated by every scene; only user tables are saved."""
    return node.IsA("vtkMRMLColorTableNode") and node.GetType() != slicer.vtkMRMLColorTableNode.User \
        or node.IsA("vtkMRMLProceduralColorNode") and not node.GetStorageNode()


def write_mrb(scene: slicer.vtkMRMLScene, path: str | os.PathLike) -> Path:
    """Write the whole scene (data included) as a Medical Reality Bundle."""
    path = Path(path)
    _ensure_storage(scene)
    if not scene.WriteToMRB(str(path)):
        raise OutputError(f"{path}: could not write scene bundle")
    return path


def read_mrb(path: str | os.PathLike, scene: slicer.vtkMRMLScene | None = None) -> slicer.vtkMRMLScene:
    """Load an .mrb into a new (or given) scene by unzipping it and connecting its .mrml."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise InputError(f"{path}: not an .mrb (zip) file") from exc
    folder = Path(tempfile.mkdtemp(prefix="livertumorai-mrb-"))
    with archive:
        for member in archive.namelist():  # refuse paths escaping the folder
            target = (folder / member).resolve()
            if not str(target).startswith(str(folder.resolve())):
                raise InputError(f"{path}: unsafe path in bundle: {member}")
        archive.extractall(folder)
    mrmls = sorted(folder.rglob("*.mrml"))
    if not mrmls:
        raise InputError(f"{path}: bundle has no .mrml scene")
    scene = scene or slicer.vtkMRMLScene()
    if scene.GetNumberOfNodesByClass("vtkMRMLColorNode") == 0:
        slicer.vtkMRMLColorLogic().SetMRMLScene(scene)
    register_markups_storage(scene)
    scene.SetURL(str(mrmls[0]))
    scene.SetRootDirectory(str(mrmls[0].parent))
    try:
        if not scene.Connect():
            raise InputError(f"{path}: scene could not be loaded")
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # data is in memory once connected
    return scene
