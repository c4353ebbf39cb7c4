"""Whole-pipeline time and peak RAM on a 512 x 512 x 200 CT (0.8 x 0.8 x 2.5 mm), next to
plain MONAI baselines run in the same process on the same input.

    python benchmarks/bench_pipeline.py --device cpu --threads 2 -o benchmarks/results/cpu.json
    python benchmarks/bench_pipeline.py --device cuda -o benchmarks/results/cuda.json

Stages of our pipeline are timed by the pipeline itself (report.json "timing_s"); the
peak resident memory of each phase is sampled every 10 ms from /proc/self/status by a
background thread. Baselines (timing only; random weights, same I/O, same resampling
to 1 x 1 x 2.5 mm, argmax, resampling back and writing):
* MONAI 3D U-Net, channels 32-64-128-256-320, 128^3 sliding window, overlap 0.5,
  Gaussian blending;
* MONAI 2D U-Net (same channels), slice by slice, 256 x 256 tiles.
Figures are measured on the machine that runs this file; nothing here is hard-coded.
Budgets (DESIGN.md §4): CPU 2 threads <= 60 s, one GPU <= 5 s, peak RAM <= 4 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


class PeakRSS:
    """Samples this process's resident set size; `peak_gb` is the maximum since `reset()`."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def current() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self):
        while not self._stop.is_set():
            self._peak = max(self._peak, self.current())
            time.sleep(self.interval)

    def reset(self):
        self._peak = self.current()

    @property
    def peak_gb(self) -> float:
        return round(max(self._peak, self.current()) / 2**30, 3)

    def stop(self):
        self._stop.set()


def make_input(folder: Path, seed: int) -> tuple[Path, Path]:
    from LiverTumorAILib.phantom import generate_case, write_case

    case = generate_case(seed, size=512, slices=200, spacing=(0.8, 0.8, 2.5))
    write_case(case, folder)
    return folder / "ct.nii.gz", folder / "label.nii.gz"


def run_baseline(kind: str, ct_path: Path, out_path: Path, device) -> dict:
    """Read, resample to 1x1x2.5 mm, run a MONAI U-Net, resample back, write."""
    import torch
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import UNet

    from LiverTumorAILib.geometry import array_to_image, image_bounding_box, resample_like
    from LiverTumorAILib.geometry import axis_aligned_grid as grid_for
    from LiverTumorAILib.io.image_io import read_image, write_image
    from LiverTumorAILib.preprocess import ct_on_grid, normalize_ct

    t0 = time.perf_counter()
    ct = read_image(ct_path)
    ref = grid_for(image_bounding_box(ct), (1.0, 1.0, 2.5))
    x = normalize_ct(ct_on_grid(ct, ref))
    spatial = 3 if kind == "unet3d" else 2
    net = UNet(spatial_dims=spatial, in_channels=1, out_channels=3, channels=(32, 64, 128, 256, 320),
               strides=(2, 2, 2, 2), num_res_units=2).to(device).eval()
    t1 = time.perf_counter()
    with torch.inference_mode():
        vol = torch.from_numpy(x)
        if kind == "unet3d":
            inp = vol[None, None].to(device)
            probs = sliding_window_inference(inp, (128, 128, 128), 1, net, overlap=0.5, mode="gaussian")
            label = probs.argmax(1)[0].cpu().numpy().astype(np.uint8)
        else:
            label = np.zeros(x.shape, np.uint8)
            for z0 in range(0, x.shape[0], 8):
                inp = vol[z0 : z0 + 8, None].to(device)
                probs = sliding_window_inference(inp, (256, 256), 8, net, overlap=0.25, mode="gaussian")
                label[z0 : z0 + 8] = probs.argmax(1).cpu().numpy()
    t2 = time.perf_counter()
    back = resample_like(array_to_image(label, ref), ct, label=True)
    write_image(back, out_path)
    t3 = time.perf_counter()
    return {"total_s": round(t3 - t0, 2), "network_s": round(t2 - t1, 2), "io_resample_s": round((t1 - t0) + (t3 - t2), 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="dual-stream,tam-unet,fusion")
    parser.add_argument("--baselines", default="unet3d,unet2d")
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per model; the last is reported (a GPU's first run pays CUDA start-up)")
    parser.add_argument("-o", "--output", type=Path, default=Path("benchmarks/results/latest.json"))
    args = parser.parse_args(argv)

    import torch

    from LiverTumorAILib.evaluation import evaluate_case
    from LiverTumorAILib.pipeline import run_segment

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rss = PeakRSS()
    results: dict = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
                    "device": args.device, "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None},
        "input": {"size": [512, 512, 200], "spacing_mm": [0.8, 0.8, 2.5], "seed": args.seed},
        "ours": {}, "baselines": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        ct_path, _ = make_input(tmp / "case", args.seed)
        results["input"]["generate_s"] = round(time.perf_counter() - t0, 1)
        for model in [m for m in args.models.split(",") if m]:
            rss.reset()
            walls = []
            for run in range(max(1, args.repeat)):
                t0 = time.perf_counter()
                report = run_segment(ct_path, tmp / f"out_{model}_{run}", mri_path=tmp / "case" / "mri.nii.gz",
                                     model=model, device=args.device, threads=args.threads)
                walls.append(time.perf_counter() - t0)
            wall = walls[-1]
            scores = evaluate_case(tmp / f"out_{model}_{len(walls) - 1}", tmp / "case", "bench")
            results["ours"][model] = {"total_s": round(wall, 2), "runs_s": [round(w, 2) for w in walls],
                                      "peak_rss_gb": rss.peak_gb, "device_used": report.get("device"),
                                      "stages_s": report["timing_s"], "lesions": report["lesion_count"],
                                      "scores": scores}
            print(model, json.dumps(results["ours"][model]["stages_s"]), f"total {wall:.1f}s peak {rss.peak_gb} GB", flush=True)
        for kind in [b for b in args.baselines.split(",") if b]:
            rss.reset()
            res = run_baseline(kind, ct_path, tmp / f"{kind}.nii.gz", device)
            res["peak_rss_gb"] = rss.peak_gb
            results["baselines"][kind] = res
            print(kind, json.dumps(res), flush=True)
    for res in results["ours"].values():
        res["speedup_vs"] = {k: round(b["total_s"] / res["total_s"], 2) for k, b in results["baselines"].items()}
        res["ram_ratio_vs"] = {k: round(res["peak_rss_gb"] / b["peak_rss_gb"], 2) for k, b in results["baselines"].items()}
    budget_s = 5.0 if device.type == "cuda" else 60.0
    results["budgets"] = {"time_s": budget_s, "ram_gb": 4.0,
                          "met": {m: r["total_s"] <= budget_s and r["peak_rss_gb"] <= 4.0 for m, r in results["ours"].items()}}
    rss.stop()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps(results["budgets"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
