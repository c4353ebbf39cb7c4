"""`livertumorai-train`: retrain the segmentation and classification models.

    livertumorai-train segmentation   --data SRC --model dual-stream --out WEIGHTS_DIR [options]
    livertumorai-train classification --data SRC --model hybrid3d    --out WEIGHTS_DIR [options]
    torchrun --nproc_per_node 2 -m training.cli segmentation ...        (DDP, one process per GPU)

SRC: `phantom:N` (N synthetic cases generated on the fly), a phantom folder
(`livertumorai phantom` layout), a LiTS / MSD Task03 / 3D-IRCADb / CHAOS root (detected,
or `--format`), or a CSV manifest (ct,mri,label,lesion_classes).

Writes `WEIGHTS_DIR/<name>/` (manifest.json + model.safetensors, loadable with
`livertumorai segment --weights WEIGHTS_DIR`) and, beside it, `WEIGHTS_DIR/_training/<name>/`:
the resolved config, the patient-level split, the preprocessed-case cache, the held-out
(test split) evaluation and `report.html`. With `--folds K` (k-fold CV, paper 000) each
fold's weights go to `_training/<name>/fold_<i>/<name>/` and the report compares folds;
no top-level weights are written (train once more without --folds for the final model).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from LiverTumorAILib.errors import InputError, LiverTumorAIError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SEG_MODELS = ("dual-stream", "tam-unet", "fusion", "unet2d")
CLS_MODELS = ("hybrid3d", "hybrid3d-ctmri", "resnet50-2d", "densenet121-2d")
#: augment keys the segmentation trainer core implements itself (others are reported, not faked)
SEG_TRAINER_AUGMENT = {"random_window", "rotate_deg", "zoom", "noise", "hu_shift_sd", "flip_axes", "elastic_prob",
                       "elastic_magnitude", "random_background_p"}


def load_config(task: str, model: str, path: Optional[Path]) -> Dict[str, Any]:
    """--config FILE, else configs/<model>.json, else that task's demo config with the model swapped."""
    if path is None:
        cand = CONFIG_DIR / f"{model.replace('-', '_')}.json"
        if not cand.exists() and model == "hybrid3d-ctmri":
            cand = CONFIG_DIR / "hybrid3d.json"
        path = cand if cand.exists() else CONFIG_DIR / f"demo_{task}.json"
    try:
        cfg = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read training config ({exc})") from exc
    if cfg.get("task", task) != task:
        raise InputError(f"{path}: a {cfg['task']} config, but the command is {task}")
    if cfg.get("model") not in (None, model):
        cfg["model_config"] = {}  # another architecture's overrides do not apply
    cfg["model"] = model
    cfg["config_file"] = str(path)
    return cfg


def _seg_train_config(cfg: Dict[str, Any], log: Callable[[str], None]) -> Dict[str, Any]:
    """The config's train + augment blocks -> `train_segmentation(train_config=...)` keys."""
    tc = {k: v for k, v in cfg.get("train", {}).items() if k != "optimizer"}
    aug = cfg.get("augment", {})
    rw = aug.get("random_window")
    tc["random_window_p"] = float(rw.get("prob", 1.0)) if rw else 0.0
    if "rotate_deg" in aug:
        tc["rotation_deg"] = aug["rotate_deg"]
    if "zoom" in aug:
        tc["zoom"] = aug["zoom"]
    for key in ("noise", "hu_shift_sd", "flip_axes", "elastic_prob", "elastic_magnitude", "random_background_p"):
        if key in aug:
            tc[key] = aug[key]
    ignored = [k for k, v in aug.items() if k not in SEG_TRAINER_AUGMENT and v not in (None, [], 0, 0.0, False)]
    if ignored:
        log(f"warning: augment settings {ignored} are in the config but training/seg_trainer does not apply them")
    return tc


def _cases_with(cases: Sequence[Any], need_ct: bool, need_mri: bool, log: Callable[[str], None]) -> List[Any]:
    keep = [c for c in cases if (c.ct is not None or not need_ct) and (c.mri is not None or not need_mri)]
    dropped = len(cases) - len(keep)
    if dropped:
        log(f"warning: {dropped} case(s) without {'CT' if need_ct else ''}{'+MRI' if need_mri else ''} left out")
    if not keep:
        raise InputError("no usable cases for this model (CHAOS MR has no CT; fusion needs CT + MRI)")
    return keep


def _write_json(path: Path, obj: Any) -> None:
    from LiverTumorAILib.evaluation import _nan_to_none

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_nan_to_none(obj), indent=1, default=str))


def _training_data(data: str, cases: Sequence[Any], split: Any) -> Dict[str, Any]:
    synthetic = all(c.meta.get("synthetic") for c in cases)
    return {"description": f"livertumorai-train --data {data}", "synthetic": synthetic,
            "cases": len(split.train), "val_cases": len(split.val), "test_cases": len(split.test),
            "sources": sorted({c.source for c in cases}),
            **({"generator": "LiverTumorAILib.phantom.generate_case"} if synthetic else {})}


# ------------------------------------------------------------------------ segmentation
def run_segmentation(args: argparse.Namespace, cfg: Dict[str, Any], cases: Sequence[Any], ctx: Any,
                     log: Callable[[str], None]) -> Dict[str, Any]:
    from training.cache import prepare_segmentation_cases
    from training.evaluate_models import evaluate_segmentation, write_segmentation_report
    from training.seg_trainer import train_segmentation
    from training.splits import kfold, split_from_config

    model = args.model
    cases = _cases_with(cases, True, model == "fusion", log)
    tc = _seg_train_config(cfg, log)
    spacing = tc.get("spacing_mm", [1.0, 1.0, 2.5])
    work = args.out / "_training" / model
    cache_dir = args.cache or (work / "cache")

    def prep(cs: Sequence[Any]) -> List[Any]:
        return prepare_segmentation_cases(cs, spacing=spacing, cache_dir=cache_dir, use_mri=model == "fusion",
                                          log_fn=log)

    # k-fold only when asked for: a plain run must end with weights `segment --weights` loads.
    folds = args.folds or 1
    if folds == 1 and int(cfg.get("folds", 1)) > 1:
        log(f"note: the paper protocol of this config uses {cfg['folds']}-fold cross-validation; "
            f"add --folds {cfg['folds']} for it (no final weights are written in k-fold mode)")
    from training.splits import default_patient_of

    n_patients = len({default_patient_of(c.case_id) for c in cases})
    if folds > n_patients:
        raise InputError(f"--folds {folds}: only {n_patients} patient(s) in --data; use fewer folds or more cases")
    splits = (kfold(cases, folds, seed=args.seed, val_fraction=cfg.get("split", {}).get("val", 0.1))
              if folds > 1 else [split_from_config(cases, cfg.get("split"), args.seed)])
    results: Dict[str, Any] = {"task": "segmentation", "model": model, "folds": []}
    for i, split in enumerate(splits):
        fold_dir = work / f"fold_{i}" if folds > 1 else work
        weights_dir = (fold_dir / model) if folds > 1 else (args.out / model)
        if ctx.is_main:
            _write_json(fold_dir / "split.json", split.ids())
        log(f"fold {i + 1}/{len(splits)}: {len(split.train)} train, {len(split.val)} val, {len(split.test)} test cases")
        train_p, val_p = prep(split.train), prep(split.val)
        t0 = time.perf_counter()
        metrics = train_segmentation(
            train_p, val_p, architecture=model, out_dir=weights_dir, config=cfg.get("model_config") or None,
            train_config=tc, epochs=args.epochs or int(cfg.get("epochs", 150)), max_minutes=args.max_minutes,
            device=str(ctx.device), dist=ctx if ctx.distributed else None, seed=args.seed, resume=args.resume,
            manifest_extra={"training_data": _training_data(args.data, cases, split),
                            "version": cfg.get("version", "retrained-0.1")}, log=log)
        fold = {"fold": i, "weights": str(weights_dir), "val": metrics, "minutes": (time.perf_counter() - t0) / 60}
        if ctx.is_main and split.test and not args.no_eval:
            per_case = evaluate_segmentation({model: weights_dir}, prep(split.test), device=str(ctx.device), log=log)
            history_file = weights_dir.parent / f".{weights_dir.name}.training" / "history.json"
            history = json.loads(history_file.read_text(encoding="utf-8")) if history_file.exists() else None
            report = write_segmentation_report(per_case, fold_dir / "test", history=history,
                                               note=_note(cases), title=f"{model}: held-out test split")
            fold["test_report"] = str(report)
            fold["test_cases"] = per_case[model]
        results["folds"].append(fold)
        ctx.barrier()
    if ctx.is_main:
        _write_json(work / "results.json", results)
        if folds > 1:
            from training.evaluate_models import write_segmentation_report

            by_fold = {f"fold_{f['fold']}": f.get("test_cases", []) for f in results["folds"] if f.get("test_cases")}
            if by_fold:
                results["cv_report"] = str(write_segmentation_report(
                    by_fold, work, note=_note(cases), title=f"{model}: {folds}-fold cross-validation"))
    return results


def _note(cases: Sequence[Any]) -> Optional[str]:
    if cases and all(c.meta.get("synthetic") for c in cases):
        from LiverTumorAILib import DEMO_WEIGHTS_NOTICE

        return f"Synthetic phantoms only: {DEMO_WEIGHTS_NOTICE}"
    return None


# ---------------------------------------------------------------------- classification
def _crop_items(cases: Sequence[Any], channels: int, log: Callable[[str], None]) -> List[Any]:
    """Lesion crops (channel 0 in HU) of cases with known per-lesion classes."""
    from types import SimpleNamespace

    from training.cls_trainer import crops_from_cases

    items: List[Any] = []
    for c in cases:
        ct = c.load_ct()  # loads on-the-fly phantoms, which fills lesion_classes
        if not c.lesion_classes:
            log(f"warning: case {c.case_id}: no per-lesion classes, left out of classification")
            continue
        ns = SimpleNamespace(ct=ct, mri=c.load_mri() if channels == 2 else None, lesions=c.load_lesions(),
                             label=c.load_label(),  # the liver mask of models with liver_context
                             truth={"case_id": c.case_id, "lesions": [{"id": k, "class": v}
                                                                      for k, v in sorted(c.lesion_classes.items())]})
        items += crops_from_cases([ns], channels=channels, log=log)
    return items


def _ct_augment(augment: Dict[str, Any]) -> Dict[str, float]:
    """``train_classifier``'s CT augmentation arguments from a config's ``augment`` block."""
    from training.cls_trainer import HU_SHIFT, RANDOM_WINDOW_P

    window = augment.get("random_window", {})
    prob = 0.0 if window is None else float(window.get("prob", RANDOM_WINDOW_P))  # None: switched off
    return {"random_window_p": prob, "hu_shift": float(augment.get("hu_shift", HU_SHIFT))}


def run_classification(args: argparse.Namespace, cfg: Dict[str, Any], cases: Sequence[Any], ctx: Any,
                       log: Callable[[str], None]) -> Dict[str, Any]:
    from training.cls_trainer import predict_logits, train_classifier
    from training.evaluate_models import write_classification_report
    from training.splits import split_from_config

    name = args.model
    architecture = "hybrid3d" if name == "hybrid3d-ctmri" else name
    channels = 2 if name == "hybrid3d-ctmri" else int(cfg.get("channels", 1))
    if args.folds and args.folds > 1:
        log("warning: --folds is implemented for segmentation; classification uses the 70/10/20 split")
    cases = _cases_with(cases, True, channels == 2, log)
    split = split_from_config(cases, cfg.get("split"), args.seed)
    work = args.out / "_training" / name
    if ctx.is_main:
        _write_json(work / "split.json", split.ids())
    tr, va, te = (_crop_items(s, channels, log) for s in (split.train, split.val, split.test))
    log(f"lesion crops: {len(tr)} train, {len(va)} val, {len(te)} test")
    if not tr or not va:
        raise InputError("classification needs lesions with known classes in both the train and val split")
    t = cfg.get("train", {})
    metrics = train_classifier(
        tr, va, architecture=architecture, channels=channels, out_dir=args.out / name if ctx.is_main else None,
        epochs=args.epochs or int(cfg.get("epochs", 150)), batch_size=int(t.get("batch_size", 16)),
        lr=float(t.get("lr", 1e-4)), class_weights=t.get("class_weights", "balanced"), device=str(ctx.device),
        seed=args.seed, log=log, name=name, config=cfg.get("model_config") or None, test_items=te or None,
        training_data=_training_data(args.data, cases, split), max_minutes=args.max_minutes,
        weight_decay=float(t.get("weight_decay", 1e-5)), **_ct_augment(cfg.get("augment") or {}))
    result = {"task": "classification", "model": name, "metrics": metrics}
    if ctx.is_main and te and not args.no_eval:
        import numpy as np

        from LiverTumorAILib.weights import load_weights

        model, manifest = load_weights(args.out / name)
        model.eval()
        temp = float(manifest.get("calibration", {}).get("temperature", 1.0) or 1.0)
        logits = predict_logits(model, te, device=str(ctx.device)) / temp
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z)[:, 1] / np.exp(z).sum(axis=1)
        result["test_report"] = str(write_classification_report(
            [it.label for it in te], {name: p}, work / "test", diameters=[it.diameter_mm for it in te],
            history=metrics.get("history"), note=_note(cases)))
    if ctx.is_main:
        _write_json(work / "results.json", result)
    return result


# --------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="livertumorai-train", description=__doc__.split("\n\n")[0])
    p.add_argument("task", choices=["segmentation", "classification"])
    p.add_argument("--data", required=True, help="phantom:N | phantom folder | LiTS/MSD/IRCADb/CHAOS root | CSV")
    p.add_argument("--model", required=True, help=f"segmentation: {', '.join(SEG_MODELS)}; "
                                                  f"classification: {', '.join(CLS_MODELS)}")
    p.add_argument("--out", required=True, type=Path, help="weights folder (of folders) to write")
    p.add_argument("--epochs", type=int, default=None, help="override the config's epochs")
    p.add_argument("--folds", type=int, default=None, help="k-fold cross-validation (segmentation)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--config", type=Path, default=None, help="training config JSON (default configs/<model>.json)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", default=None, help="dataset format when autodetection is not enough")
    p.add_argument("--skip-bad", action="store_true", help="log unreadable cases and continue")
    p.add_argument("--cache", type=Path, default=None, help="preprocessed-case cache folder")
    p.add_argument("--max-minutes", type=float, default=None, help="wall-clock bound per training run")
    p.add_argument("--phantom-size", type=int, default=None)
    p.add_argument("--phantom-slices", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation and report")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from LiverTumorAILib.io.image_io import capture_native_stderr

    capture_native_stderr(True)  # ITK/NIfTI's own "** ERROR" prints would break the one-line error
    ctx = None
    try:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        if args.device == "cuda" and not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA device available")
        models = SEG_MODELS if args.task == "segmentation" else CLS_MODELS
        if args.model not in models:
            raise InputError(f"--model {args.model!r} is not a {args.task} model ({', '.join(models)})")
        from training.datasets import load_dataset
        from training.distributed import setup

        ctx = setup(args.device)

        def log(msg: str) -> None:
            if ctx.is_main:
                print(msg, flush=True)

        cfg = load_config(args.task, args.model, args.config)
        data_cfg = cfg.get("data", {})
        kwargs = {}
        if args.data.startswith("phantom:"):
            kwargs = {"size": args.phantom_size or data_cfg.get("phantom_size", 256),
                      "slices": args.phantom_slices or data_cfg.get("phantom_slices", 64)}
        cases = load_dataset(args.data, fmt=args.format, skip_bad=args.skip_bad, seed=args.seed, **kwargs)
        log(f"{len(cases)} case(s) from {args.data}" + (f", {len(cases.skipped)} skipped" if cases.skipped else ""))
        if ctx.is_main:
            _write_json(args.out / "_training" / args.model / "config.json", {**cfg, "args": vars(args)})
        run = run_segmentation if args.task == "segmentation" else run_classification
        result = run(args, cfg, cases, ctx, log)
        if ctx.is_main:
            log(json.dumps({"done": str(args.out / args.model), "report": result.get("test_report")
                            or (result.get("folds") or [{}])[-1].get("test_report")}, default=str))
        return 0
    except LiverTumorAIError as exc:
        print(f"livertumorai-train: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("livertumorai-train: interrupted", file=sys.stderr)
        return 130
    finally:
        capture_native_stderr(False)  # process-wide: off again for in-process callers
        if ctx is not None:
            ctx.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
