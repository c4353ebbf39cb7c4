"""Segmentation trainer core: 2.5D models (dual-stream, tam-unet, fusion, unet2d) and the 3D localiser.

Cases are resampled once onto the model grid with exactly the engine's preprocessing
(`LiverTumorAILib.preprocess`), kept in memory (int16 HU, uint8 labels), and 2.5D
patches are sampled from them: half of the samples centred on tumour, a third on liver,
the rest anywhere, so small lesions are seen often. Augmentation (batched, in torch):
the random window of paper 001 (level U[12, 130], width U[129, 298] HU, applied to raw
HU before normalisation, with probability `random_window_p`, otherwise the inference
window), an HU shift, in-plane rotation / zoom / translation, Gaussian noise, and MRI
gain/offset. No left-right flips: the engine always presents the patient in LPS, and
the liver's side is information, not noise.

Neighbour randomisation (`random_background_p`, off unless asked for): with that probability a
patch's tissue outside the liver is overwritten, in random smooth blobs, with flat random
intensities (CT -120..220 HU plus noise; MRI likewise in its normalised units). Why: on scans
from another phantom generator and on a real CT (CHAOS) the models drew liver into
neighbouring soft tissue they had never seen (heart, stomach, a homogeneous abdomen); this
domain randomisation (the idea of SynthSeg, Billot et al. 2023) makes the liver's own
appearance and shape, not its usual neighbours, the cue. Measured once, as an 18-minute
fine-tune of tam-unet at p = 0.5: fewer false lesions on held-out phantoms, but more liver
missed on the real CHAOS CT (make_demo_weights.py records the figures), so the demo weights
do not use it; with real training data it may fare otherwise.

Losses: paper 001 says Dice + BCE; for 3 mutually exclusive classes we use soft Dice
over liver and tumour plus one-vs-rest BCE on the softmax probabilities (`dice_bce`).
Papers 004/000 say CE + Dice (`ce_dice`). The fusion model adds CE on its classifier
head for slabs whose centre slice contains tumour (benign vs malignant majority).

Training can be bounded by epochs and/or wall-clock minutes (CPU demo weights), keeps
the best validation checkpoint, and resumes from `checkpoint.pt` (saved with
`torch.save`, read back with `weights_only=True`: tensors only, no arbitrary pickles).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk

from LiverTumorAILib.geometry import axis_aligned_grid, image_bounding_box, mask_bounding_box, resample_like
from LiverTumorAILib.preprocess import DEFAULT_WINDOW_HU, ct_on_grid, mri_on_grid, normalize_ct

RANDOM_WINDOW_LEVEL = (12.0, 130.0)
RANDOM_WINDOW_WIDTH = (129.0, 298.0)


@dataclass
class PreparedCase:
    """One case on a model grid: arrays (z, y, x)."""

    case_id: str
    ct_hu: np.ndarray  # int16
    label: np.ndarray  # uint8 0/1/2
    mri: np.ndarray | None = None  # float16, normalised
    slice_class: np.ndarray | None = None  # (z,) int8: -1 no tumour, 0 benign, 1 malignant


def prepare_case(
    case_id: str,
    ct: sitk.Image,
    label: sitk.Image,
    *,
    spacing: Sequence[float],
    mri: sitk.Image | None = None,
    lesions: sitk.Image | None = None,
    lesion_classes: dict[int, int] | None = None,
    margin_mm: Sequence[float] = (35.0, 35.0, 20.0),
) -> PreparedCase:
    """Resample a case onto an axis-aligned grid around its liver (the region the cascade crops)."""
    label_arr = sitk.GetArrayFromImage(label)
    box = mask_bounding_box(label, label_arr >= 1) or image_bounding_box(ct)
    box = box.expanded(margin_mm).intersect(image_bounding_box(ct))
    reference = axis_aligned_grid(box, spacing, multiple_xy=32)
    ct_hu = np.clip(ct_on_grid(ct, reference), -1024, 3071).astype(np.int16)
    lab = sitk.GetArrayFromImage(resample_like(label, reference, label=True)).astype(np.uint8)
    mri_arr = mri_on_grid(mri, reference).astype(np.float16) if mri is not None else None
    slice_class = None
    if lesions is not None and lesion_classes:
        inst = sitk.GetArrayFromImage(resample_like(lesions, reference, label=True))
        slice_class = np.full(inst.shape[0], -1, dtype=np.int8)
        for z in range(inst.shape[0]):
            ids, counts = np.unique(inst[z][inst[z] > 0], return_counts=True)
            if len(ids):
                votes = np.zeros(2)
                for i, c in zip(ids, counts):
                    if int(i) in lesion_classes:
                        votes[lesion_classes[int(i)]] += c
                if votes.sum():
                    slice_class[z] = int(np.argmax(votes))
    return PreparedCase(case_id, ct_hu, lab, mri_arr, slice_class)


def save_prepared(cases: Sequence[PreparedCase], folder: Path) -> None:
    """One npz per case, each written atomically: `make_demo_weights prepare` takes an existing file
    as done, so a run stopped mid-write must not leave a truncated one."""
    from LiverTumorAILib.io.atomic import write_npz_atomic

    for c in cases:
        arrays = {"ct_hu": c.ct_hu, "label": c.label}
        if c.mri is not None:
            arrays["mri"] = c.mri
        if c.slice_class is not None:
            arrays["slice_class"] = c.slice_class
        write_npz_atomic(Path(folder) / f"{c.case_id}.npz", arrays, "prepared case")


def load_prepared(folder: Path) -> list[PreparedCase]:
    out = []
    for path in sorted(Path(folder).glob("*.npz")):
        with np.load(path, allow_pickle=False) as z:
            out.append(
                PreparedCase(
                    path.stem,
                    z["ct_hu"],
                    z["label"],
                    z["mri"] if "mri" in z else None,
                    z["slice_class"] if "slice_class" in z else None,
                )
            )
    return out


class SlabSampler:
    """Draws (ct slab, mri slab, label, slice class) training patches from prepared cases."""

    def __init__(self, cases, ct_offsets, mri_offsets, patch: int, rng: np.random.Generator, config: dict):
        self.cases = list(cases)
        self.ct_offsets = np.asarray(ct_offsets)
        self.mri_offsets = np.asarray(mri_offsets)
        self.patch = patch
        self.rng = rng
        self.p_tumour = config.get("p_tumour", 0.5)
        self.p_liver = config.get("p_liver", 0.35)
        self.random_window_p = config.get("random_window_p", 0.5)
        self.window = config.get("window_hu", DEFAULT_WINDOW_HU)
        self.hu_shift_sd = float(config.get("hu_shift_sd", 8.0))
        self.random_background_p = float(config.get("random_background_p", 0.0))
        self.fg = [(np.argwhere(c.label == 2), np.argwhere(c.label == 1)) for c in self.cases]

    def _centre(self, k: int) -> np.ndarray:
        case = self.cases[k]
        tumour, liver = self.fg[k]
        u = self.rng.random()
        if u < self.p_tumour and len(tumour):
            return tumour[self.rng.integers(len(tumour))]
        if u < self.p_tumour + self.p_liver and len(liver):
            return liver[self.rng.integers(len(liver))]
        return np.array([self.rng.integers(s) for s in case.label.shape])

    def sample(self):
        k = int(self.rng.integers(len(self.cases)))
        case = self.cases[k]
        z, y, x = self._centre(k)
        y += int(self.rng.integers(-self.patch // 4, self.patch // 4 + 1))
        x += int(self.rng.integers(-self.patch // 4, self.patch // 4 + 1))
        depth = case.ct_hu.shape[0]
        zi = np.clip(z + self.ct_offsets, 0, depth - 1)
        ct = _crop2d(case.ct_hu[zi].astype(np.float32), y, x, self.patch, -1000.0)
        blobs = None
        if self.random_background_p > 0 and self.rng.random() < self.random_background_p:  # no draw when off
            blobs = random_blobs(self.patch, self.rng)
            outside = _crop2d(case.label[zi].astype(np.float32), y, x, self.patch, 0.0) == 0
            fill_blobs(ct, blobs * (outside & (ct > -500)), (-120.0, 220.0), 25.0, self.rng)
        ct += self.rng.normal(0, self.hu_shift_sd)  # HU shift (scanner calibration)
        if self.rng.random() < self.random_window_p:
            level = self.rng.uniform(*RANDOM_WINDOW_LEVEL)
            width = self.rng.uniform(*RANDOM_WINDOW_WIDTH)
            window = (level - width / 2, level + width / 2)
        else:
            window = self.window
        ct = normalize_ct(ct, window)
        label = _crop2d(case.label[z][None].astype(np.float32), y, x, self.patch, 0.0)[0]
        mri = None
        if len(self.mri_offsets) and case.mri is not None:
            mi = np.clip(z + self.mri_offsets, 0, depth - 1)
            mri = _crop2d(case.mri[mi].astype(np.float32), y, x, self.patch, float(case.mri.min()))
            if blobs is not None:
                outside = _crop2d(case.label[mi].astype(np.float32), y, x, self.patch, 0.0) == 0
                fill_blobs(mri, blobs * (outside & (mri > float(case.mri.min()) + 0.5)), (-1.5, 3.0), 0.3, self.rng)
            mri = mri * self.rng.uniform(0.85, 1.15) + self.rng.normal(0, 0.1)
        cls = int(case.slice_class[z]) if case.slice_class is not None else -1
        return ct, mri, label, cls


def random_blobs(size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size) int8 map of random smooth blobs: 0 = untouched, 1..k = one random tissue each
    (a coarse random field, upsampled, cut at random quantiles)."""
    from scipy.ndimage import zoom

    coarse = rng.normal(size=(int(rng.integers(4, 10)),) * 2)
    field = zoom(coarse, size / coarse.shape[0], order=3)[:size, :size]
    levels = int(rng.integers(1, 4))
    cuts = np.quantile(field, np.sort(rng.uniform(0.3, 0.9, levels)))
    return (field[..., None] > cuts).sum(-1).astype(np.int8)


def fill_blobs(stack: np.ndarray, where: np.ndarray, value_range: tuple[float, float], noise_max: float,
               rng: np.random.Generator) -> None:
    """In place: each level 1..k of `where` (the blob map times a mask of where it may write,
    one per slice of the slab) becomes one flat random value in `value_range` plus Gaussian noise."""
    for level in range(1, int(where.max()) + 1 if where.any() else 1):
        m = where == level
        if m.any():
            stack[m] = rng.uniform(*value_range) + rng.normal(0, rng.uniform(0, noise_max), int(m.sum()))


def _crop2d(stack: np.ndarray, cy: int, cx: int, size: int, fill: float) -> np.ndarray:
    """(C, size, size) crop centred at (cy, cx), padded with `fill` outside the array."""
    c, h, w = stack.shape
    out = np.full((c, size, size), fill, dtype=np.float32)
    y0, x0 = cy - size // 2, cx - size // 2
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + size, h), min(x0 + size, w)
    if ye > ys and xe > xs:
        out[:, ys - y0 : ye - y0, xs - x0 : xe - x0] = stack[:, ys:ye, xs:xe]
    return out


def augment_batch(ct, mri, label, rng: np.random.Generator, config: dict):
    """Random in-plane rotation, zoom, shift, optional elastic warp and flips (same for image,
    MRI and label), then noise.

    `elastic_prob`: probability that a batch gets a smooth random displacement field (a 5x5
    grid of offsets with SD `elastic_magnitude` in normalised units, upsampled bicubically).
    `flip_axes`: 2D axes to flip with probability 0.5 each (0 = rows / anterior-posterior,
    1 = columns / left-right). Off by default: the engine presents every scan in LPS, so
    the liver's side carries information; paper 000's configs turn left-right flips on.
    """
    import torch
    import torch.nn.functional as F

    for axis in config.get("flip_axes", []) or []:
        if rng.random() < 0.5:
            dim = -1 if int(axis) == 1 else -2
            ct = torch.flip(ct, dims=[dim])
            label = torch.flip(label, dims=[dim])
            mri = torch.flip(mri, dims=[dim]) if mri is not None else None
    b, dev = ct.shape[0], ct.device  # runs where the batch lives (the GPU when training there)
    max_rot = math.radians(config.get("rotation_deg", 15.0))
    zoom = config.get("zoom", (0.85, 1.15))
    angles = torch.tensor(rng.uniform(-max_rot, max_rot, b), dtype=torch.float32, device=dev)
    scales = torch.tensor(rng.uniform(zoom[0], zoom[1], b), dtype=torch.float32, device=dev)
    shifts = torch.tensor(rng.uniform(-0.05, 0.05, (b, 2)), dtype=torch.float32, device=dev)
    cos, sin = torch.cos(angles) / scales, torch.sin(angles) / scales
    theta = torch.stack([torch.stack([cos, -sin, shifts[:, 0]], 1), torch.stack([sin, cos, shifts[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, ct.shape, align_corners=False)
    if rng.random() < config.get("elastic_prob", 0.0):
        coarse = torch.tensor(rng.normal(0, config.get("elastic_magnitude", 0.03), (b, 2, 5, 5)), dtype=torch.float32,
                              device=dev)
        field = F.interpolate(coarse, size=ct.shape[-2:], mode="bicubic", align_corners=True)
        grid = grid + field.permute(0, 2, 3, 1)
    ct = F.grid_sample(ct, grid, mode="bilinear", padding_mode="border", align_corners=False)
    ct = ct + torch.randn_like(ct) * float(rng.uniform(0.0, config.get("noise", 0.08)))
    if mri is not None:
        mri = F.grid_sample(mri, grid, mode="bilinear", padding_mode="border", align_corners=False)
    label = F.grid_sample(label[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)[:, 0]
    return ct, mri, label.long()


def segmentation_loss(logits, target, kind: str):
    """`dice_bce` (paper 001) or `ce_dice` (papers 004, 000); Dice over liver and tumour."""
    import torch
    import torch.nn.functional as F

    probs = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float()
    dims = (0, 2, 3)
    inter = (probs[:, 1:] * onehot[:, 1:]).sum(dims)
    denom = probs[:, 1:].sum(dims) + onehot[:, 1:].sum(dims)
    dice = 1.0 - ((2 * inter + 1.0) / (denom + 1.0)).mean()
    if kind == "dice_bce":
        bce = F.binary_cross_entropy(probs.clamp(1e-6, 1 - 1e-6), onehot)
        return dice + bce
    return dice + F.cross_entropy(logits.float(), target)


def dice_score(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = pred.sum(), truth.sum()
    if p + t == 0:
        return 1.0
    return float(2.0 * np.logical_and(pred, truth).sum() / (p + t))


def validate(model, cases, config: dict, device) -> dict:
    """Whole-region inference on each validation case, Dice of liver (label >= 1) and tumour."""
    from LiverTumorAILib.inference.slab import predict_volume

    liver, tumour = [], []
    model.eval()
    for case in cases:
        ct = normalize_ct(case.ct_hu.astype(np.float32), config.get("window_hu", DEFAULT_WINDOW_HU))
        pred = predict_volume(
            model, ct, ct_offsets=config["ct_offsets"], mri=None if case.mri is None else case.mri.astype(np.float32),
            mri_offsets=config.get("mri_offsets", []), device=device, keep_attention=False, batch_size=8,
        )
        label = np.argmax(pred.probabilities, axis=0)
        liver.append(dice_score(label >= 1, case.label >= 1))
        if (case.label == 2).any():
            tumour.append(dice_score(label == 2, case.label == 2))
    model.train()
    return {
        "val_liver_dice": float(np.mean(liver)) if liver else float("nan"),
        "val_tumour_dice": float(np.mean(tumour)) if tumour else float("nan"),
        "val_cases": len(cases),
    }


def train_segmentation(
    train_cases: Sequence[PreparedCase],
    val_cases: Sequence[PreparedCase],
    *,
    architecture: str,
    out_dir: Path,
    config: dict | None = None,
    train_config: dict | None = None,
    manifest_extra: dict | None = None,
    epochs: int = 150,
    max_minutes: float | None = None,
    device: str = "cpu",
    dist=None,
    seed: int = 0,
    resume: bool = False,
    init_weights: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train a 2.5D segmentation model; save the best weights folder to `out_dir`. Returns metrics.

    `device` is ``cpu``, ``cuda`` or ``auto``. On CUDA the batch is augmented on the GPU and the
    forward pass runs under bf16 autocast (the loss in float32); bf16 rather than fp16 because it
    needs no loss scaling. `init_weights`: a weights folder to start from with a fresh optimiser
    (fine-tuning bundled weights on a new machine, where `resume`'s checkpoint is absent). The
    best weights are written each time validation improves, so a run cut short keeps them.
    """
    import contextlib

    import torch

    from LiverTumorAILib.inference.device import select_device
    from LiverTumorAILib.models.registry import build_model, default_config
    from LiverTumorAILib.weights import save_weights

    tc = {
        "batch_size": 16, "lr": 1e-4, "patch": 128, "steps_per_epoch": "auto", "loss": "dice_bce",
        "val_every": 1, "spacing_mm": [1.0, 1.0, 2.5], "window_hu": list(DEFAULT_WINDOW_HU),
    }
    tc.update(train_config or {})
    model_config = default_config(architecture)
    model_config.update(config or {})
    rank = dist.rank if dist is not None else 0
    is_main = dist is None or dist.is_main
    torch.manual_seed(seed + rank)
    rng = np.random.default_rng(seed + 1000 * rank)
    dev = select_device(device)
    model = build_model(architecture, model_config).to(dev)
    init_record: dict | None = None
    if init_weights is not None:  # a resumed checkpoint, loaded below, takes precedence
        from LiverTumorAILib.weights import load_weights

        initial, initial_manifest = load_weights(init_weights)
        # the manifest says what a fine-tuned model started from (folder, version, file hash)
        init_record = {"path": str(Path(init_weights).resolve()), "version": initial_manifest.get("version"),
                       "sha256": initial_manifest.get("sha256")}
        model.load_state_dict({k: v.to(dev) for k, v in initial.state_dict().items()})
        log(f"initialised from {init_weights}")
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if dev.type == "cuda" else contextlib.nullcontext
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed patch size: let cuDNN pick its fastest kernels
    train_model = dist.wrap(model) if dist is not None else model
    optimiser = torch.optim.Adam(model.parameters(), lr=tc["lr"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir = out_dir.parent / f".{out_dir.name}.training"  # checkpoints never land in the weights folder
    work_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = work_dir / "checkpoint.pt"
    history: list[dict] = []
    start_epoch, best = 0, -1.0
    val_ids = [c.case_id for c in val_cases or []]
    if resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=dev, weights_only=True)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        start_epoch, best = int(state["epoch"]) + 1, float(state["best"])
        if state.get("val_ids") != val_ids:  # scores on another validation set do not compare
            best = -1.0
            log("validation cases differ from the checkpoint's: the best score starts afresh")
        history = json.loads((work_dir / "history.json").read_text(encoding="utf-8")) if (work_dir / "history.json").exists() else []
        log(f"resumed from epoch {start_epoch}")
    if tc["steps_per_epoch"] in (None, "auto"):  # one pass over the training slices, in expectation
        total_slices = sum(int(c.ct_hu.shape[0]) for c in train_cases)
        tc["steps_per_epoch"] = max(1, math.ceil(total_slices / (tc["batch_size"] * (dist.world_size if dist else 1))))
        log(f"steps per epoch: {tc['steps_per_epoch']} ({total_slices} training slices)")
    sampler = SlabSampler(train_cases, model_config["ct_offsets"], model_config.get("mri_offsets", []), tc["patch"], rng, tc)
    scheduler_total = max(epochs, 1) * tc["steps_per_epoch"]
    t_start = time.perf_counter()
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    best_metrics: dict = {}
    if resume and best >= 0 and (out_dir / "manifest.json").exists():
        # the checkpoint is the *last* state; the best one so far is the saved weights folder
        # (best < 0: those weights were judged on other cases, so the next validation decides)
        from LiverTumorAILib.weights import load_weights

        saved, saved_manifest = load_weights(out_dir)
        best_state = {k: v.to(dev) for k, v in saved.state_dict().items()}
        best_metrics = dict(saved_manifest.get("metrics", {}))

    def save_best(state: dict, metrics: dict) -> None:
        """Write `state` as the weights folder (on the main process only), model left as it was."""
        if not is_main:
            return
        snapshot = build_model(architecture, model_config)
        snapshot.load_state_dict({k: v.detach().float().cpu() for k, v in state.items()})
        manifest = {
            "name": architecture,
            "architecture": architecture,
            "task": "segmentation",
            "config": model_config,
            "preprocessing": {
                "spacing_mm": list(tc["spacing_mm"]), "window_hu": list(tc["window_hu"]),
                "normalization": "window-uniform-zscore", "mri_normalization": "percentile-1-99-zscore",
            },
            "training": {k: v for k, v in tc.items() if isinstance(v, (int, float, str, list))},
            "metrics": metrics,
        }
        if init_record is not None:
            manifest["training"]["init_from"] = init_record
        manifest.update(manifest_extra or {})
        save_weights(snapshot, out_dir, manifest)

    model.train()
    for epoch in range(start_epoch, epochs):
        losses = []
        for step in range(tc["steps_per_epoch"]):
            samples = [sampler.sample() for _ in range(tc["batch_size"])]
            ct = torch.from_numpy(np.stack([s[0] for s in samples]))
            mri = torch.from_numpy(np.stack([s[1] for s in samples])) if samples[0][1] is not None else None
            label = torch.from_numpy(np.stack([s[2] for s in samples]))
            cls = torch.tensor([s[3] for s in samples])
            ct, label = ct.to(dev, non_blocking=True), label.to(dev, non_blocking=True)
            mri = mri.to(dev, non_blocking=True) if mri is not None else None
            ct, mri, label = augment_batch(ct, mri, label, rng, tc)
            it = epoch * tc["steps_per_epoch"] + step
            done = it / scheduler_total
            if max_minutes:  # a wall-clock budget: the schedule follows elapsed time
                done = max(done, (time.perf_counter() - t_start) / 60 / max_minutes)
            for group in optimiser.param_groups:  # cosine decay with a short warm-up
                warm = min(1.0, (it + 1) / 50)
                group["lr"] = tc["lr"] * warm * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(done, 1.0))))
            with autocast():
                logits = train_model(ct, mri) if mri is not None else train_model(ct)
            loss = segmentation_loss(logits, label, tc["loss"])
            head = getattr(model, "class_logits", None)
            if head is not None and (cls >= 0).any():
                keep = cls >= 0
                loss = loss + 0.2 * torch.nn.functional.cross_entropy(head[keep.to(dev)].float(), cls[keep].to(dev))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
            if max_minutes and (time.perf_counter() - t_start) / 60 > max_minutes:
                break
        record = {"epoch": epoch, "loss": float(np.mean(losses)), "minutes": (time.perf_counter() - t_start) / 60}
        out_of_time = bool(max_minutes and record["minutes"] > max_minutes)
        if is_main and val_cases and ((epoch + 1) % tc["val_every"] == 0 or out_of_time or epoch == epochs - 1):
            record.update(validate(model, val_cases, {**model_config, **tc}, dev))
            score = record["val_liver_dice"] + record["val_tumour_dice"]
            if np.isfinite(score) and score > best:
                best = score
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                best_metrics = dict(record)
                save_best(best_state, best_metrics)
        history.append(record)
        if is_main:
            log(json.dumps(record))
            torch.save({"model": model.state_dict(), "optimiser": optimiser.state_dict(), "epoch": epoch, "best": best,
                        "val_ids": val_ids}, ckpt_path)
            (work_dir / "history.json").write_text(json.dumps(history, indent=1))
        if out_of_time:
            break
    if not val_cases:
        best_state = model.state_dict()
        best_metrics = history[-1] if history else {}
    if is_main:
        save_best(best_state, best_metrics)
        model.load_state_dict(best_state)
    return best_metrics
