"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = PROJECT_ROOT.parent / "shared" / "data" / "real"

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """`../shared/data/real` from the project root; tests using it skip where it is absent."""
    if not REAL_DATA.is_dir():
        pytest.skip("../shared/data/real not present")
    return REAL_DATA


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    try:
        import torch

        torch.set_num_threads(2)
    except ImportError:
        pass
    yield


@pytest.fixture(scope="session")
def small_phantom_case(tmp_path_factory) -> Path:
    """A 64 x 64 x 16 phantom case folder (seed 4242: CT, MRI, label, lesions, truth), written once:
    the input of the quick CLI and pipeline runs. Read it; write outputs elsewhere."""
    from LiverTumorAILib.phantom import generate_case, write_case

    folder = tmp_path_factory.mktemp("small_phantom") / "case"
    write_case(generate_case(4242, size=64, slices=16), folder)
    return folder
