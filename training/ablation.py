"""Paper 001's ablation study as configs, and a runner that trains and compares them.

    python -m training.ablation --data SRC --out DIR [--epochs N] [--only NAME ...] [--base FILE]
    python -m training.ablation --write-configs DIR      (just write the variant configs)

Variants of the dual-stream protocol (`configs/dual_stream.json`):
  full                 - everything (the reference for the paired tests)
  no_random_window     - the random window off (always the inference window)
  no_attention_gates   - CBAM gates on the skips replaced by plain skips
  spatial_stream_only  - the contextual stream removed
  unet2d_baseline      - the paper's 2D U-Net baseline under the same protocol
All variants share the seed, hence the same patient-level split, so per-case test Dice
pairs up for paired t-tests / Wilcoxon (`evaluate_models`). A variant whose switch the
model does not implement (its config key is not in the architecture's default config)
is refused with a clear message rather than silently training the full model.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from LiverTumorAILib.errors import InputError

BASE_CONFIG = Path(__file__).resolve().parent / "configs" / "dual_stream.json"

ABLATIONS: Dict[str, Dict[str, Any]] = {
    "full": {"description": "dual-stream, random window, attention gates"},
    "no_random_window": {"description": "without random-window augmentation", "augment": {"random_window": None}},
    "no_attention_gates": {"description": "without attention gates", "model_config": {"attention_gates": False}},
    "spatial_stream_only": {"description": "spatial stream only (no contextual stream)",
                            "model_config": {"context_stream": False}},
    "unet2d_baseline": {"description": "2D U-Net baseline, same protocol", "model": "unet2d"},
}


def ablation_configs(base: Optional[Dict[str, Any]] = None) -> Dict[str, Dict[str, Any]]:
    """{variant: full training config} derived from BASE (default: configs/dual_stream.json)."""
    base = base or json.loads(BASE_CONFIG.read_text(encoding="utf-8"))
    out = {}
    for name, patch in ABLATIONS.items():
        cfg = copy.deepcopy(base)
        cfg["ablation"] = {"variant": name, "description": patch["description"]}
        if "model" in patch:
            cfg["model"] = patch["model"]
            cfg["model_config"] = {}
        cfg.setdefault("augment", {}).update(patch.get("augment", {}))
        cfg.setdefault("model_config", {}).update(patch.get("model_config", {}))
        out[name] = cfg
    return out


def unsupported(cfg: Dict[str, Any]) -> List[str]:
    """model_config keys the architecture does not accept (the variant cannot be trained faithfully)."""
    from LiverTumorAILib.models.registry import default_config

    return sorted(set(cfg.get("model_config", {})) - set(default_config(cfg["model"])))


def run(data: str, out: Path, *, only: Optional[Sequence[str]] = None, epochs: Optional[int] = None,
        base: Optional[Path] = None, extra_args: Sequence[str] = ()) -> Dict[str, Any]:
    from training import cli
    from training.evaluate_models import write_segmentation_report

    cfgs = ablation_configs(json.loads(base.read_text(encoding="utf-8")) if base else None)
    names = list(only or cfgs)
    for n in names:
        if n not in cfgs:
            raise InputError(f"unknown ablation {n!r} ({', '.join(cfgs)})")
        missing = unsupported(cfgs[n])
        if missing:
            raise InputError(f"ablation {n!r} needs model switches {missing} that {cfgs[n]['model']!r} does not "
                             f"implement yet; run the others with --only")
    results: Dict[str, List[Dict[str, Any]]] = {}
    for n in names:
        cfg_path = out / "configs" / f"{n}.json"
        cfg_path.parent.mkdir(parents=True, exist_ok=True)
        cfg_path.write_text(json.dumps(cfgs[n], indent=2))
        argv = ["segmentation", "--data", data, "--model", cfgs[n]["model"], "--out", str(out / n),
                "--config", str(cfg_path), *(["--epochs", str(epochs)] if epochs else []), *extra_args]
        rc = cli.main(argv)
        if rc != 0:
            raise InputError(f"ablation {n!r}: livertumorai-train exited with status {rc}")
        res = json.loads((out / n / "_training" / cfgs[n]["model"] / "results.json").read_text(encoding="utf-8"))
        results[n] = res["folds"][0].get("test_cases", [])
    baseline = "full" if "full" in results else names[0]
    report = write_segmentation_report(results, out / "comparison", baseline=baseline,
                                       title="Paper 001 ablation (paired tests vs full model)")
    return {"report": str(report), "variants": names}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="Paper 001 ablations: train the variants and compare them.")
    ap.add_argument("--data")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--only", nargs="+")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--base", type=Path, help="base config (default configs/dual_stream.json)")
    ap.add_argument("--write-configs", type=Path, help="write the variant configs here and stop")
    args, extra = ap.parse_known_args(argv)
    if args.write_configs:
        args.write_configs.mkdir(parents=True, exist_ok=True)
        for n, cfg in ablation_configs(json.loads(args.base.read_text(encoding="utf-8")) if args.base else None).items():
            (args.write_configs / f"{n}.json").write_text(json.dumps(cfg, indent=2))
            flag = "" if not unsupported(cfg) else f"  (needs model support: {unsupported(cfg)})"
            print(f"{args.write_configs / (n + '.json')}{flag}")
        return 0
    if not args.data or not args.out:
        ap.error("--data and --out are required (or --write-configs)")
    try:
        print(json.dumps(run(args.data, args.out, only=args.only, epochs=args.epochs, base=args.base,
                             extra_args=extra)))
    except InputError as exc:
        print(f"ablation: error: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
