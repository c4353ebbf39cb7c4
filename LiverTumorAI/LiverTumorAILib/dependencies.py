"""Which Python packages the engine needs that are not installed yet.

Why find_spec and not import: the Slicer panel asks this when the user presses Apply,
and importing torch/monai just to see whether they exist would cost seconds and memory
in the GUI process. Installing is the Slicer module's job (after a confirmation dialog,
never at import time); torch itself must come from Slicer's PyTorch extension, which
picks the right CUDA build for the machine, so it is reported but never pip-installed.
"""

from __future__ import annotations

import importlib.util
from typing import Dict, List, Optional, Sequence

#: import name -> pip requirement (ranges match pyproject.toml).
REQUIREMENTS: Dict[str, str] = {
    "torch": "torch>=2.1",
    "monai": "monai>=1.3",
    "SimpleITK": "SimpleITK>=2.3",
    "skimage": "scikit-image>=0.21",
    "scipy": "scipy>=1.10",
    "safetensors": "safetensors>=0.4",
    "pydicom": "pydicom>=2.4",
    "highdicom": "highdicom>=0.22",
}

#: Installed by the PyTorch extension (PyTorchUtils), not by pip from this module.
TORCH = "torch"


def _installed(import_name: str) -> bool:
    try:
        return importlib.util.find_spec(import_name) is not None
    except (ImportError, ValueError):  # broken parent package, or a module with __spec__ None
        return False


def missing_packages(names: Optional[Sequence[str]] = None) -> List[str]:
    """Import names (keys of REQUIREMENTS) that cannot be found, in a stable order."""
    return [name for name in (names or REQUIREMENTS) if not _installed(name)]


def pip_requirements(missing: Sequence[str]) -> List[str]:
    """pip requirement strings for the missing packages, torch left out (PyTorch extension)."""
    return [REQUIREMENTS.get(name, name) for name in missing if name != TORCH]


def describe_missing(missing: Sequence[str]) -> str:
    """A short sentence for the confirmation dialog."""
    if not missing:
        return "All required Python packages are installed."
    parts = []
    pip = pip_requirements(missing)
    if pip:
        parts.append("LiverTumorAI needs these Python packages, which will be installed with pip: "
                     + ", ".join(pip) + ".")
    if TORCH in missing:
        parts.append("PyTorch is installed by the PyTorch extension (PyTorchUtils), which picks "
                     "the build that matches this computer's GPU/CUDA.")
    return " ".join(parts)
