"""Architecture name -> model class, with lazily imported modules.

Names are the contract (CONTRIBUTING.md); classes are found by import path only when
asked for, so a missing optional module (the classification side lands separately)
breaks only its own entries, and importing the registry does not import torch.

How a module advertises its classes (checked in this order):
1. a module-level ``MODELS: dict[str, type]`` mapping architecture names to classes;
2. a class defined in the module with a class attribute ``architecture = "<name>"``;
3. for the entries below that name a class explicitly (``"module:Class"``), that class.

Default config: ``cls.default_config()`` if the class has it, else the keyword defaults
of ``cls.__init__`` (every model's ``__init__`` takes its config keys as keyword args).
A class may also define ``complete_config(cfg, overrides) -> cfg`` to fill derived keys
after the caller's overrides are merged in.
"""

from __future__ import annotations

import importlib
import inspect
import json
from typing import Any, Optional

from LiverTumorAILib.errors import WeightsError

_PKG = "LiverTumorAILib.models"

#: architecture name -> "module" or "module:Class" (relative to LiverTumorAILib.models).
ARCHITECTURES: dict[str, str] = {
    # segmentation side
    "dual-stream": "dual_stream:DualStreamNet",
    "tam-unet": "tam_unet:TAMUNet",
    "fusion": "fusion:FusionNet",
    "unet2d": "baselines:UNet2D",
    "unet3d": "baselines:UNet3D",
    "localizer": "localizer:Localizer3D",
    # classification side (models/hybrid3d.py, models/classifiers2d.py)
    "hybrid3d": "hybrid3d",
    "resnet50-2d": "classifiers2d",
    "densenet121-2d": "classifiers2d",
}


def _unknown(architecture: Any) -> WeightsError:
    return WeightsError(
        f"unknown architecture {architecture!r} (known: {', '.join(sorted(ARCHITECTURES))})"
    )


def model_class(architecture: str) -> type:
    """The class implementing ``architecture`` (imports its module)."""
    if not isinstance(architecture, str) or architecture not in ARCHITECTURES:
        raise _unknown(architecture)
    target = ARCHITECTURES[architecture]
    mod_name, _, cls_name = target.partition(":")
    try:
        module = importlib.import_module(f"{_PKG}.{mod_name}")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.endswith(mod_name):
            raise WeightsError(
                f"architecture {architecture!r} is not available in this build "
                f"(module {_PKG}.{mod_name} is missing)"
            ) from None
        raise
    models = getattr(module, "MODELS", None)
    if isinstance(models, dict) and architecture in models:
        return models[architecture]
    for obj in vars(module).values():
        if inspect.isclass(obj) and obj.__module__ == module.__name__ and getattr(obj, "architecture", None) == architecture:
            return obj
    if cls_name and hasattr(module, cls_name):
        return getattr(module, cls_name)
    raise WeightsError(f"architecture {architecture!r}: no class for it in {module.__name__}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def default_config(architecture: str) -> dict:
    """JSON-serialisable default config (a fresh copy) for ``architecture``."""
    cls = model_class(architecture)
    if hasattr(cls, "default_config"):
        cfg = dict(cls.default_config())
    else:
        sig = inspect.signature(cls.__init__)
        cfg = {
            n: p.default
            for n, p in sig.parameters.items()
            if n != "self" and p.default is not inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }
    cfg = _jsonable(cfg)
    json.dumps(cfg)  # fail loudly here rather than at save time
    return cfg


def build_model(architecture: str, config: Optional[dict] = None):
    """Build ``architecture`` from ``default_config`` updated with ``config``.

    Unknown config keys are refused (a typo would otherwise silently train the default).
    The model gets ``livertumorai_architecture`` and ``livertumorai_config`` attributes,
    which ``weights.save_weights`` uses when the manifest lacks them.
    """
    cls = model_class(architecture)
    cfg = default_config(architecture)
    if config:
        if not isinstance(config, dict):
            raise WeightsError(f"config for {architecture!r} must be a dict, got {type(config).__name__}")
        extra = sorted(set(config) - set(cfg))
        if extra:
            raise WeightsError(
                f"config key(s) {', '.join(map(repr, extra))} not accepted by {architecture!r} "
                f"(accepted: {', '.join(sorted(cfg))})"
            )
        cfg.update(_jsonable(config))
    if hasattr(cls, "complete_config"):  # derived keys, e.g. dual-stream's ct_offsets
        cfg = _jsonable(cls.complete_config(cfg, dict(config or {})))
    model = cls(**cfg)
    model.livertumorai_architecture = architecture
    model.livertumorai_config = cfg
    return model
