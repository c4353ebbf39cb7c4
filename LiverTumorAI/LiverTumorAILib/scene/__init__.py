"""MRML scene bridge: engine results <-> 3D Slicer nodes (runs in Slicer and on slicer-core).

The only engine package that imports `slicer`. Importing this package never fails: code
that needs MRML imports the submodules (volumes, segmentation, heatmap, table, files,
build) after checking `scene_available()`.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache


@lru_cache(maxsize=1)
def scene_available() -> bool:
    """True when MRML classes can be imported (3D Slicer or the slicer-core wheel)."""
    try:
        if importlib.util.find_spec("slicer") is None:
            return False
        import slicer

        return hasattr(slicer, "vtkMRMLScene") and hasattr(slicer, "vtkMRMLSegmentationNode")
    except Exception:  # a broken install must not break the engine
        return False


__all__ = ["scene_available"]
