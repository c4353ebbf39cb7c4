"""Training augmentation as MONAI dictionary transforms (channel-first arrays).

Order matters and follows paper 001: the *random window* acts on raw HU, so it comes
first and does the clipping + normalisation itself (level ~ U[12, 130] HU, width ~
U[129, 298] HU; clip to [L - W/2, L + W/2], then the engine's uniform-window z-score,
`LiverTumorAILib.preprocess.normalize_ct`). Without it (prob miss) the inference window
is used, so the network always sees normalised input. Spatial transforms (rotation,
flip, zoom, elastic; papers 000/001) then move image and label together (label with
nearest interpolation), and an intensity shift acts on the normalised image.

Flips default off for the CT models: the engine always presents the patient in LPS,
so left/right is information (the liver is on the patient's right). Configs enable
them where a paper asks for it (fusion, paper 000: horizontal flipping).
"""

from __future__ import annotations

from typing import Any, Dict, Hashable, Mapping, Optional, Sequence, Tuple

import numpy as np

from LiverTumorAILib.preprocess import DEFAULT_WINDOW_HU, normalize_ct

PAPER_LEVEL_HU = (12.0, 130.0)
PAPER_WIDTH_HU = (129.0, 298.0)


def _randwindow_class():
    from monai.transforms import MapTransform, RandomizableTransform

    class RandWindowd(RandomizableTransform, MapTransform):
        """Random CT window on raw HU, applied before normalisation (paper 001).

        ``last_window`` holds the (low, high) HU window of the latest call (for logs/tests).
        """

        def __init__(self, keys, level_range: Sequence[float] = PAPER_LEVEL_HU,
                     width_range: Sequence[float] = PAPER_WIDTH_HU, prob: float = 1.0,
                     default_window: Sequence[float] = DEFAULT_WINDOW_HU, allow_missing_keys: bool = False):
            MapTransform.__init__(self, keys, allow_missing_keys)
            RandomizableTransform.__init__(self, prob)
            self.level_range = tuple(float(v) for v in level_range)
            self.width_range = tuple(float(v) for v in width_range)
            self.default_window = tuple(float(v) for v in default_window)
            self.level, self.width = 0.0, 0.0
            self.last_window: Tuple[float, float] = self.default_window  # type: ignore[assignment]

        def randomize(self, data: Any = None) -> None:
            super().randomize(None)
            self.level = float(self.R.uniform(*self.level_range))
            self.width = float(self.R.uniform(*self.width_range))

        def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
            d = dict(data)
            self.randomize()
            window = ((self.level - self.width / 2, self.level + self.width / 2) if self._do_transform
                      else self.default_window)
            self.last_window = window
            for key in self.key_iterator(d):
                d[key] = _apply(d[key], window)
            return d

    return RandWindowd


def _apply(x: Any, window: Sequence[float]) -> Any:
    """normalize_ct on numpy or torch (a MetaTensor keeps its metadata: we write into a clone)."""
    if type(x).__module__.startswith(("torch", "monai")):
        out = x.detach().clone().float()
        out.copy_(out.new_tensor(normalize_ct(x.detach().cpu().numpy(), window)))
        return out
    return normalize_ct(np.asarray(x), window)


def RandWindowd(*args: Any, **kwargs: Any):  # noqa: N802 - a transform "class" built lazily (keeps monai optional at import)
    """Factory for the random-window MONAI transform (see module docstring)."""
    return _randwindow_class()(*args, **kwargs)


DEFAULT_AUGMENT: Dict[str, Any] = {
    "random_window": {"prob": 0.8, "level_hu": list(PAPER_LEVEL_HU), "width_hu": list(PAPER_WIDTH_HU)},
    "rotate_deg": 15.0, "rotate_prob": 0.5,
    "flip_axes": [], "flip_prob": 0.5,
    "zoom": [0.85, 1.15], "zoom_prob": 0.3,
    "elastic_prob": 0.0, "elastic_magnitude": [1.0, 3.0], "elastic_spacing": 16, "elastic_sigma": [5.0, 7.0],
    "intensity_shift": 0.1, "intensity_prob": 0.5,
}


def build_augmentation(config: Optional[Mapping[str, Any]] = None, *, image_keys: Sequence[str] = ("image",),
                       label_keys: Sequence[str] = ("label",), spatial_dims: int = 2, seed: Optional[int] = None):
    """MONAI Compose of the augmentations in CONFIG (keys as in DEFAULT_AUGMENT).

    Data: dict of channel-first arrays, image in raw HU, label as class indices.
    """
    import math

    from monai.transforms import (
        Compose,
        Rand2DElasticd,
        Rand3DElasticd,
        RandFlipd,
        RandRotated,
        RandShiftIntensityd,
        RandZoomd,
    )

    cfg = {**DEFAULT_AUGMENT, **(config or {})}
    keys = list(image_keys) + list(label_keys)
    modes = ["bilinear"] * len(image_keys) + ["nearest"] * len(label_keys)
    ts = []
    rw = cfg.get("random_window")
    if rw:
        ts.append(RandWindowd(list(image_keys), level_range=rw.get("level_hu", PAPER_LEVEL_HU),
                              width_range=rw.get("width_hu", PAPER_WIDTH_HU), prob=rw.get("prob", 1.0),
                              default_window=rw.get("default_window_hu", DEFAULT_WINDOW_HU)))
    else:
        ts.append(RandWindowd(list(image_keys), prob=0.0))  # still normalise with the inference window
    if cfg["rotate_deg"] and cfg["rotate_prob"]:
        r = math.radians(cfg["rotate_deg"])
        ts.append(RandRotated(keys, range_x=r, range_y=r if spatial_dims == 3 else 0.0,
                              range_z=r if spatial_dims == 3 else 0.0, prob=cfg["rotate_prob"], mode=modes,
                              padding_mode="border", keep_size=True))
    for ax in cfg["flip_axes"]:
        ts.append(RandFlipd(keys, prob=cfg["flip_prob"], spatial_axis=int(ax)))
    if cfg["zoom_prob"]:
        ts.append(RandZoomd(keys, prob=cfg["zoom_prob"], min_zoom=cfg["zoom"][0], max_zoom=cfg["zoom"][1],
                            mode=["area" if m == "bilinear" else "nearest" for m in modes], keep_size=True))
    if cfg["elastic_prob"]:
        if spatial_dims == 2:
            sp = cfg["elastic_spacing"]
            ts.append(Rand2DElasticd(keys, spacing=(sp, sp), magnitude_range=tuple(cfg["elastic_magnitude"]),
                                     prob=cfg["elastic_prob"], mode=modes, padding_mode="border"))
        else:
            ts.append(Rand3DElasticd(keys, sigma_range=tuple(cfg["elastic_sigma"]),
                                     magnitude_range=tuple(cfg["elastic_magnitude"]), prob=cfg["elastic_prob"],
                                     mode=modes, padding_mode="border"))
    if cfg["intensity_shift"] and cfg["intensity_prob"]:
        ts.append(RandShiftIntensityd(list(image_keys), offsets=cfg["intensity_shift"], prob=cfg["intensity_prob"]))
    comp = Compose(ts)
    if seed is not None:
        comp.set_random_state(seed=seed)
    return comp
