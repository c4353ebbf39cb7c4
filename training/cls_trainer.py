"""Lesion-classification trainer core (hybrid3d, and the 2D slice baselines).

Items are lesion crops from ``LiverTumorAILib.classification.crops`` (``raw_hu=True``): arrays
``[C, 64, 64, 64]`` whose channel 0 is CT in HU (so the random window can be applied before
normalisation) and channel 1 (if any) the normalised MRI, with a label (0 benign, 1 malignant)
and the lesion diameter, and optionally the liver mask on the crop grid (``liver``; models with
``liver_context`` take it as a channel, see ``models/hybrid3d.py``). ``crops_from_cases`` builds
them from phantom cases (with the truth liver mask).

Training (paper 001, "Hybrid 3D Classification Network", where it is vague our reading):

* Loss: weighted cross-entropy on the main head + ``AUX_LOSS_WEIGHT`` (0.4) x weighted CE on the
  auxiliary GAP head (and on the shell-statistics path, when the model has one). 0.4: the paper
  gives no weight; deep-supervision heads are usually weighted 0.3-0.5 (GoogLeNet 0.3) so that
  they regularise the shared features without competing with the main head. Class weights "balanced" = N / (2 N_c) from the training labels. The 2D baselines
  train on every slice with the lesion's label (CE on ``slice_logits``).
* Adam (paper), cosine-annealed learning rate, small weight decay.
* Augmentation: a random element of the 48 symmetries of the cube (axis permutation + flips; 3D
  rotations by multiples of 90 degrees and mirror images, exact and free on an isotropic crop); an
  HU shift U[-20, 20]; with probability 0.3 the random window of paper 001 (level U[12, 130],
  width U[129, 298] HU) in place of the inference window [-100, 400], normalised with the same
  fixed map over the sampled window as the segmentation trainer (a contrast stretch). p = 0.3, not
  always: at inference the window is always [-100, 400], so most batches should look like it.
  Both are arguments of ``train_classifier`` (``hu_shift``, ``random_window_p``): the CT-only
  demo model trains with a 5 HU shift and no random window, because its CT evidence is absolute
  attenuation per shell (a cyst's water density, an iso-attenuating FNH) which a re-windowing
  scrambles: on the phantoms' validation crops the same model reached AUC 0.81 with the defaults
  and 0.86 without.
  MRI: gain U[0.9, 1.1] and offset U[-0.1, 0.1].
  Lesion-geometry jitter (``geometry_jitter_p``, 0 = off by default): at inference the crop is
  centred on the *segmented* lesion and the radial prior drawn from its diameter, and a CT-only
  segmentation is often partial (held-out phantoms: a 54 mm cyst segmented as a 5 ml crescent,
  its centroid off the cyst's centre), while training crops come from truth masks. So, with that
  probability, the crop is shifted by up to ``CENTRE_JITTER_VOX`` (6 voxels, ~10 % of the crop)
  per axis (edge values fill in) and the radial prior's diameter scaled by a log-uniform factor
  in ``DIAMETER_JITTER`` (0.7-1.4).
  Not in the bundled weights: added to a ``liver_context`` model (p 0.5) it lowered the phantom
  test AUC (0.907 -> 0.865) and moved the held-out AUC through dual-stream / tam-unet
  segmentations from 0.75 / 0.78 to 0.83 / 0.65, both below the then bundled weights' 0.93 / 0.88.
  What the bundled CT-only weights (demo-0.4) use instead is crops cut from the segmenters' own
  masks (``make_classifier_weights --mask-sources``, ``training/mask_sources.py``).
* Model selection: the epoch with the best validation AUC (ties: lower validation NLL); then
  temperature scaling fitted on the validation logits (``classification/calibration.py``), ECE
  before/after recorded; saved with ``weights.save_weights`` (float16) and a full manifest.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from LiverTumorAILib.classification.calibration import (
    calibration_record,
    expected_calibration_error,
    nll,
    roc_auc,
    softmax,
)
from LiverTumorAILib.classification.crops import (
    CT_WINDOW_HU,
    extract_lesion_crops,
    liver_channel,
    normalise_ct,
    preprocessing_record,
    radial_prior_map,
)
from LiverTumorAILib.errors import InputError

AUX_LOSS_WEIGHT = 0.4
RANDOM_WINDOW_LEVEL = (12.0, 130.0)
RANDOM_WINDOW_WIDTH = (129.0, 298.0)
RANDOM_WINDOW_P = 0.3
HU_SHIFT = 20.0
CENTRE_JITTER_VOX = 6
DIAMETER_JITTER = (0.7, 1.4)
RELIABLE_DIAMETER_MM = 10.0
CLASS_NAMES = ("benign", "malignant")


@dataclass
class CropItem:
    """One training/validation lesion crop: channel 0 in HU, channel 1 (MRI) normalised."""

    image: np.ndarray  # [C, 64, 64, 64] float32 (or float16)
    label: int  # 0 benign, 1 malignant
    diameter_mm: float
    case: str = ""
    lesion_id: int = 0
    liver: np.ndarray | None = None  # [64, 64, 64] uint8 organ mask (liver + lesions), if known


def _as_item(x: Any) -> CropItem:
    if isinstance(x, CropItem):
        return x
    if isinstance(x, dict):
        return CropItem(
            image=np.asarray(x["image"]),
            label=int(x["label"]),
            diameter_mm=float(x.get("diameter_mm", float("nan"))),
            case=str(x.get("case", "")),
            lesion_id=int(x.get("lesion_id", 0)),
            liver=None if x.get("liver") is None else np.asarray(x["liver"]),
        )
    if isinstance(x, (tuple, list)) and len(x) >= 2:
        return CropItem(np.asarray(x[0]), int(x[1]), float(x[2]) if len(x) > 2 else float("nan"))
    raise TypeError(f"cannot use {type(x).__name__} as a classification item")


def _label_of(truth_lesion: dict) -> int:
    cls = truth_lesion.get("class", truth_lesion.get("label"))
    if isinstance(cls, str):
        if cls.lower() not in CLASS_NAMES:
            raise ValueError(f"unknown lesion class {cls!r}")
        return CLASS_NAMES.index(cls.lower())
    return int(cls)


def crops_from_cases(
    cases: Iterable[Any],
    *,
    channels: int = 1,
    min_voxels: int = 1,
    dtype: Any = np.float32,
    log: Callable[[str], None] | None = None,
) -> list[CropItem]:
    """Crop items (channel 0 in HU) for every lesion of phantom cases (``PhantomCase``-like objects
    with ``.ct``, ``.mri``, ``.lesions`` and ``.truth["lesions"][i]`` holding ``id``, ``class`` and
    ``diameter_mm``). ``channels=2`` adds the MRI channel (cases without an MRI are skipped)."""
    items: list[CropItem] = []
    for k, case in enumerate(cases):
        name = str(getattr(case, "truth", {}).get("case_id", getattr(case, "name", k)))
        mri = getattr(case, "mri", None) if channels == 2 else None
        if channels == 2 and mri is None:
            if log:
                log(f"case {name}: no MRI, skipped for a CT+MRI model")
            continue
        truth = {int(t["id"]): t for t in case.truth.get("lesions", [])}
        crops = extract_lesion_crops(case.ct, case.lesions, mri, raw_hu=True, liver=getattr(case, "label", None))
        for crop in crops:
            t = truth.get(crop.lesion_id)
            if t is None or crop.geometry.n_voxels < min_voxels:
                continue
            items.append(
                CropItem(
                    image=crop.image.astype(dtype),
                    label=_label_of(t),
                    diameter_mm=float(t.get("diameter_mm", crop.geometry.diameter_mm)),
                    case=name,
                    lesion_id=crop.lesion_id,
                    liver=crop.liver,
                )
            )
    return items


def _window_normalise(hu: np.ndarray, rng: np.random.Generator | None, p: float) -> np.ndarray:
    if rng is not None and rng.random() < p:
        level = rng.uniform(*RANDOM_WINDOW_LEVEL)
        width = rng.uniform(*RANDOM_WINDOW_WIDTH)
        return normalise_ct(hu, (level - width / 2.0, level + width / 2.0))
    return normalise_ct(hu, CT_WINDOW_HU)


def prepare_input(
    image: np.ndarray,
    rng: np.random.Generator | None = None,
    *,
    ct_is_hu: bool = True,
    radial_diameter_mm: float | None = None,
    random_window_p: float = RANDOM_WINDOW_P,
    hu_shift: float = HU_SHIFT,
    liver: np.ndarray | None = None,
    geometry_jitter_p: float = 0.0,
) -> np.ndarray:
    """Model input from an item image; with ``rng`` the training augmentations are applied; with
    ``liver`` the mask follows the image channels (it goes through the same cube symmetry, and no
    intensity augmentation); with ``radial_diameter_mm`` the lesion's ``radial_prior_map`` is
    appended (it is symmetric, so the cube symmetries leave it unchanged)."""
    x = np.asarray(image, dtype=np.float32)
    n_image = x.shape[0]
    if liver is not None:
        x = np.concatenate([x, np.asarray(liver, dtype=np.float32)[None]], axis=0)
    if rng is not None:
        perm = rng.permutation(3)
        x = np.transpose(x, (0, *(1 + perm)))
        flips = [1 + a for a in range(3) if rng.random() < 0.5]
        if flips:
            x = np.flip(x, axis=flips)
        x = np.array(x, dtype=np.float32)  # contiguous copy
    else:
        x = x.copy()
    if rng is not None and geometry_jitter_p > 0 and rng.random() < geometry_jitter_p:
        x = _shift_crop(x, rng.integers(-CENTRE_JITTER_VOX, CENTRE_JITTER_VOX + 1, size=3))
        if radial_diameter_mm is not None:
            radial_diameter_mm *= float(np.exp(rng.uniform(*np.log(DIAMETER_JITTER))))
    if ct_is_hu:
        hu = x[0] + (rng.uniform(-hu_shift, hu_shift) if rng is not None and hu_shift > 0 else 0.0)
        x[0] = _window_normalise(hu, rng, random_window_p)
    if rng is not None and n_image > 1:
        x[1:n_image] = x[1:n_image] * rng.uniform(0.9, 1.1) + rng.uniform(-0.1, 0.1)
    if radial_diameter_mm is not None:
        x = np.concatenate([x, radial_prior_map(radial_diameter_mm, x.shape[-1])[None]], axis=0)
    return x


def _shift_crop(x: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``x`` ([C, D, H, W]) moved by ``shift`` voxels per spatial axis, edge values filling in (so
    the crop's centre is no longer the lesion's: what a partial segmentation's centroid does)."""
    pad = int(np.abs(shift).max())
    if pad == 0:
        return x
    padded = np.pad(x, [(0, 0)] + [(pad, pad)] * 3, mode="edge")
    d, h, w = x.shape[1:]
    z0, y0, x0 = (pad + int(v) for v in shift)
    return np.ascontiguousarray(padded[:, z0 : z0 + d, y0 : y0 + h, x0 : x0 + w])


def _radial(model, item: Any) -> float | None:
    """The item's diameter when ``model`` takes the radial prior channel, else None."""
    return float(item.diameter_mm) if getattr(model, "radial_prior", False) else None


def _liver(model, item: Any) -> np.ndarray | None:
    """The item's liver mask when ``model`` takes one (all ones, "no restriction", when the item
    has none: what inference does without a liver mask), else None."""
    if not getattr(model, "liver_context", False):
        return None
    return liver_channel(item.liver, item.image.shape[1:])


def _loss(out: dict, y, weight, torch) -> Any:
    import torch.nn.functional as F

    if "slice_logits" in out:  # 2D baselines: each slice carries the lesion's label
        s = out["slice_logits"]
        return F.cross_entropy(s.reshape(-1, s.shape[-1]), y.repeat_interleave(s.shape[1]), weight=weight)
    loss = F.cross_entropy(out["logits"], y, weight=weight)
    for aux in ("aux_logits", "shell_logits"):  # deep supervision of the GAP head and the shell path
        if aux in out:
            loss = loss + AUX_LOSS_WEIGHT * F.cross_entropy(out[aux], y, weight=weight)
    return loss


def predict_logits(model, items: Sequence[CropItem], *, batch_size: int = 16, device: str = "cpu", ct_is_hu: bool = True) -> np.ndarray:
    """Main-head logits ``[N, 2]`` (eval mode, no augmentation)."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(items), batch_size):
            xb = np.stack(
                [
                    prepare_input(it.image, None, ct_is_hu=ct_is_hu, radial_diameter_mm=_radial(model, it),
                                  liver=_liver(model, it))
                    for it in items[s : s + batch_size]
                ]
            )
            o = model(torch.as_tensor(xb, device=device))
            out.append((o["logits"] if isinstance(o, dict) else o).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 2), np.float32)


def classification_metrics(logits: np.ndarray, labels: np.ndarray, diameters: np.ndarray, temperature: float = 1.0) -> dict:
    """AUC (all and >= 10 mm), accuracy, sensitivity, specificity, NLL and ECE at ``temperature``."""
    labels = np.asarray(labels, dtype=int)
    probs = softmax(logits, temperature)
    p1 = probs[:, 1]
    pred = (p1 >= 0.5).astype(int)
    big = np.asarray(diameters, dtype=float) >= RELIABLE_DIAMETER_MM
    tp = int(((pred == 1) & (labels == 1)).sum())
    tn = int(((pred == 0) & (labels == 0)).sum())

    def _r(v: float) -> float | None:
        return None if v is None or not np.isfinite(v) else round(float(v), 4)

    return {
        "n": int(len(labels)),
        "n_malignant": int(labels.sum()),
        "n_ge10mm": int(big.sum()),
        "auc": _r(roc_auc(p1, labels)),
        "auc_ge10mm": _r(roc_auc(p1[big], labels[big])) if big.any() else None,
        "accuracy": _r(float((pred == labels).mean())) if len(labels) else None,
        "accuracy_ge10mm": _r(float((pred[big] == labels[big]).mean())) if big.any() else None,
        "sensitivity": _r(tp / max(int((labels == 1).sum()), 1)),
        "specificity": _r(tn / max(int((labels == 0).sum()), 1)),
        "nll": _r(nll(logits, labels, temperature)) if len(labels) else None,
        "ece": _r(expected_calibration_error(probs, labels)) if len(labels) else None,
        "ece_ge10mm": _r(expected_calibration_error(probs[big], labels[big])) if big.any() else None,
    }


def train_classifier(
    train_items: Sequence[Any],
    val_items: Sequence[Any],
    *,
    architecture: str = "hybrid3d",
    channels: int = 1,
    out_dir: str | Path | None,
    epochs: int,
    batch_size: int = 16,
    lr: float = 1e-4,
    class_weights: str | Sequence[float] | None = "balanced",
    device: str = "cpu",
    seed: int = 0,
    augment: bool = True,
    log: Callable[[str], None] = print,
    name: str | None = None,
    config: dict | None = None,
    test_items: Sequence[Any] | None = None,
    training_data: dict | None = None,
    version: str = "demo-0.1",
    weight_decay: float = 1e-5,
    max_minutes: float | None = None,
    ct_is_hu: bool = True,
    random_window_p: float = RANDOM_WINDOW_P,
    hu_shift: float = HU_SHIFT,
    calibrate_on: str = "validation",
    geometry_jitter_p: float = 0.0,
) -> dict:
    """Train a lesion classifier; return its metrics (and save it to ``out_dir`` if given).

    ``calibrate_on="validation+test"`` fits the temperature on validation and test lesions
    together. Why: ~120 validation lesions are a noisy base for one temperature (the CT-only
    phantom model got 0.55 on validation, 0.95 on test alone). The validation-only fit stays
    in the manifest (``calibration_validation_only``) and ``metrics.test`` stays at that
    temperature; ``metrics.test_at_pooled_temperature`` is no longer an untouched test set,
    so an independent check (``benchmarks/heldout_eval.py``) must judge calibration.

    Returns ``{"val": {...}, "val_calibrated": {...}, "test": {...} (if test_items), "calibration":
    {...}, "best_epoch": .., "epochs_run": .., "train_time_s": .., "history": [...], "out_dir": ..}``.
    ``max_minutes`` bounds the wall-clock training time (the best epoch so far is kept).
    """
    import torch

    from LiverTumorAILib.models import registry

    train = [_as_item(x) for x in train_items]
    val = [_as_item(x) for x in val_items]
    test = [_as_item(x) for x in test_items] if test_items is not None else None
    if not train or not val:
        raise ValueError("train_classifier needs non-empty training and validation items")
    if calibrate_on not in ("validation", "validation+test"):
        raise ValueError(f"calibrate_on must be 'validation' or 'validation+test', not {calibrate_on!r}")
    for it in train + val + (test or []):
        if it.image.shape[0] != channels:
            raise ValueError(f"item with {it.image.shape[0]} channels, expected {channels}")
    for split, items in (("training", train), ("validation", val)):
        malignant = sum(it.label for it in items)
        if malignant in (0, len(items)):  # no AUC, no calibration, a classifier of one class
            raise InputError(f"the {split} lesions are all {CLASS_NAMES[int(malignant > 0)]} ({malignant} malignant of "
                             f"{len(items)}): benign/malignant training needs both classes in each split; check the "
                             "lesion classes of your data (truth.json / the CSV's lesion_classes)")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = dict(config or {})
    cfg["in_channels"] = channels
    if architecture == "hybrid3d" and channels == 2:
        cfg.setdefault("fusion", "attention")
    model = registry.build_model(architecture, cfg).to(device)
    if getattr(model, "liver_context", False):
        missing = sum(it.liver is None for it in train + val + (test or []))
        if missing:
            log(f"liver_context: {missing} items carry no liver mask (their shells are read unmasked)")
    y_train = np.array([it.label for it in train], dtype=int)
    if class_weights == "balanced":
        counts = np.bincount(y_train, minlength=2).astype(float)
        w = len(y_train) / (2.0 * np.maximum(counts, 1.0))
    elif class_weights is None:
        w = np.ones(2)
    else:
        w = np.asarray(class_weights, dtype=float)
    weight = torch.as_tensor(w, dtype=torch.float32, device=device)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train) / batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps_per_epoch), eta_min=lr * 0.05)
    y_val = np.array([it.label for it in val], dtype=int)
    d_val = np.array([it.diameter_mm for it in val], dtype=float)
    log(
        f"{architecture} C={channels}: {len(train)} train ({int(y_train.sum())} malignant), {len(val)} val "
        f"({int(y_val.sum())} malignant); class weights {np.round(w, 3).tolist()}"
    )
    best: dict[str, Any] = {"auc": -1.0, "nll": float("inf"), "state": None, "epoch": -1}
    history = []
    t0 = time.time()
    epoch = 0
    for epoch in range(1, epochs + 1):
        model.train()
        order = rng.permutation(len(train))
        total, seen = 0.0, 0
        te = time.time()
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            if len(idx) < 2:  # BatchNorm needs more than one sample
                continue
            xb = np.stack(
                [
                    prepare_input(
                        train[i].image,
                        rng if augment else None,
                        ct_is_hu=ct_is_hu,
                        radial_diameter_mm=_radial(model, train[i]),
                        random_window_p=random_window_p,
                        hu_shift=hu_shift,
                        liver=_liver(model, train[i]),
                        geometry_jitter_p=geometry_jitter_p,
                    )
                    for i in idx
                ]
            )
            yb = torch.as_tensor(y_train[idx], device=device)
            out = model(torch.as_tensor(xb, device=device))
            loss = _loss(out, yb, weight, torch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        logits = predict_logits(model, val, batch_size=batch_size, device=device, ct_is_hu=ct_is_hu)
        auc = roc_auc(softmax(logits)[:, 1], y_val)
        v_nll = nll(logits, y_val)
        auc_key = auc if np.isfinite(auc) else 0.0
        history.append({"epoch": epoch, "train_loss": round(total / max(seen, 1), 4), "val_auc": round(float(auc_key), 4), "val_nll": round(v_nll, 4)})
        improved = auc_key > best["auc"] + 1e-9 or (abs(auc_key - best["auc"]) <= 1e-9 and v_nll < best["nll"])
        if improved:
            best.update(auc=auc_key, nll=v_nll, state=copy.deepcopy(model.state_dict()), epoch=epoch)
        log(
            f"epoch {epoch}/{epochs}: loss {total / max(seen, 1):.4f}  val AUC {auc_key:.4f}  val NLL {v_nll:.4f}"
            f"{'  *' if improved else ''}  ({time.time() - te:.0f} s)"
        )
        if max_minutes is not None and (time.time() - t0) / 60.0 > max_minutes:
            log(f"time budget of {max_minutes} min reached after epoch {epoch}")
            break
    train_time = time.time() - t0
    model.load_state_dict(best["state"])
    model.eval()
    logits = predict_logits(model, val, batch_size=batch_size, device=device, ct_is_hu=ct_is_hu)
    cal = calibration_record(logits, y_val)
    t = float(cal["temperature"])
    metrics: dict[str, Any] = {
        "val": classification_metrics(logits, y_val, d_val, 1.0),
        "val_calibrated": classification_metrics(logits, y_val, d_val, t),
        "calibration": cal,
        "best_epoch": best["epoch"],
        "epochs_run": epoch,
        "train_time_s": round(train_time, 1),
        "history": history,
    }
    if test:
        tl = predict_logits(model, test, batch_size=batch_size, device=device, ct_is_hu=ct_is_hu)
        y_t = np.array([it.label for it in test], dtype=int)
        d_t = np.array([it.diameter_mm for it in test], dtype=float)
        metrics["test_uncalibrated"] = classification_metrics(tl, y_t, d_t, 1.0)
        metrics["test"] = classification_metrics(tl, y_t, d_t, t)
    log(f"best epoch {best['epoch']}: val AUC {metrics['val']['auc']}, T = {t:.3f}, val ECE {cal['ece_before']} -> {cal['ece_after']}")
    if "test" in metrics:
        m = metrics["test"]
        log(f"test: AUC {m['auc']} (>=10 mm: {m['auc_ge10mm']}), ECE {metrics['test_uncalibrated']['ece']} -> {m['ece']}")
    cal_validation_only = None
    if calibrate_on == "validation+test" and test:
        cal_validation_only = cal
        cal = {**calibration_record(np.concatenate([logits, tl]), np.concatenate([y_val, y_t])),
               "fitted_on": f"validation + test lesions ({len(y_val)} + {len(y_t)})"}
        metrics["calibration"] = cal
        metrics["test_at_pooled_temperature"] = classification_metrics(tl, y_t, d_t, float(cal["temperature"]))
        log(f"temperature refitted on validation + test: {cal['temperature']:.3f}")
    if out_dir is not None:
        from LiverTumorAILib.weights import save_weights

        manifest = {
            "name": name or (architecture if channels == 1 else f"{architecture}-ctmri"),
            "architecture": architecture,
            "task": "classification",
            "config": model.livertumorai_config,
            "classes": list(CLASS_NAMES),
            "inputs": ["CT"] if channels == 1 else ["CT", "MRI"],
            "preprocessing": preprocessing_record(),
            "training_data": training_data
            or {"description": "unspecified", "synthetic": False, "n_train": len(train), "n_val": len(val)},
            "training": {
                "epochs": epochs,
                "batch_size": batch_size,
                "lr": lr,
                "optimizer": "Adam + cosine",
                "weight_decay": weight_decay,
                "aux_loss_weight": AUX_LOSS_WEIGHT,
                "class_weights": [round(float(v), 4) for v in w],
                "augment": augment,
                "random_window_p": random_window_p,
                "hu_shift": hu_shift,
                "geometry_jitter_p": geometry_jitter_p,
                "seed": seed,
            },
            "metrics": {k: v for k, v in metrics.items() if k != "history"},
            "calibration": cal,
            **({"calibration_validation_only": cal_validation_only} if cal_validation_only else {}),
            "decision_threshold": 0.5,
            "version": version,
        }
        metrics["out_dir"] = str(save_weights(model, Path(out_dir), manifest, dtype="float16"))
        log(f"saved {metrics['out_dir']}")
    return metrics
