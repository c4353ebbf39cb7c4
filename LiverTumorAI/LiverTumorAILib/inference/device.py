"""Device selection and CPU thread settings.

`auto` picks CUDA when present, else CPU. MPS is opt-in (`--device mps`) because some
3D ops and autocast paths are still incomplete there. A requested CUDA device that is
absent is an error, not a silent fallback: the user asked for it.
"""

from __future__ import annotations

import os

from LiverTumorAILib.errors import InputError


def select_device(requested: str = "auto"):
    """Return a torch.device for 'auto' | 'cpu' | 'cuda' | 'cuda:N' | 'mps'."""
    import torch

    requested = (requested or "auto").lower()
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA GPU is available to PyTorch here; use --device cpu or auto")
        return torch.device(requested)
    if requested == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise InputError("--device mps: Apple MPS is not available here; use --device cpu or auto")
        return torch.device("mps")
    if requested == "cpu":
        return torch.device("cpu")
    raise InputError(f"--device {requested}: unknown device (use auto, cpu, cuda or mps)")


def configure_cpu_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads (default: all cores the process may use); return the count."""
    import torch

    if threads is None or threads <= 0:
        try:
            threads = len(os.sched_getaffinity(0))
        except AttributeError:  # macOS / Windows
            threads = os.cpu_count() or 1
    torch.set_num_threads(int(threads))
    return int(threads)


def describe_device(device) -> dict:
    """What the report and the Slicer panel show about the device."""
    import torch

    info = {"device": str(device), "torch": torch.__version__, "cuda_available": torch.cuda.is_available()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1))
    else:
        info["threads"] = torch.get_num_threads()
    return info


def is_out_of_memory(error: BaseException) -> bool:
    """True for CUDA OOM and for a GPU that went away mid-run (treated the same: fall back)."""
    import torch

    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    text = str(error).lower()
    return any(
        marker in text
        for marker in ("out of memory", "cuda error", "device-side assert", "no cuda gpus", "cudnn_status")
    )
