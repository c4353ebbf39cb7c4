"""A 1000-slice CT through `livertumorai segment`: completes, and peak RAM stays within budget.

    python benchmarks/bench_long_volume.py --slices 1000 -o benchmarks/results/long_volume.json

The CT is a 512 x 512 x 1000 phantom at 0.8 x 0.8 x 1.0 mm (a whole-body-length scan).
Peak resident memory of this process is sampled every 10 ms while the pipeline runs
(reading, localisation, segmentation of the liver region, classification, heatmaps,
writing incl. scene.mrb); the budget is 4 GB (DESIGN.md §4). Measured, never assumed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import PeakRSS  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=1000)
    parser.add_argument("--model", default="tam-unet")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("-o", "--output", type=Path, default=Path("benchmarks/results/long_volume.json"))
    args = parser.parse_args(argv)

    from LiverTumorAILib.pipeline import run_segment

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        # generated in a child process so its memory is not counted in this process's peak
        subprocess.run([sys.executable, "-c", (
            "import sys; from pathlib import Path; from LiverTumorAILib.phantom import generate_case, write_case; "
            f"write_case(generate_case(31337, size=512, slices={args.slices}, spacing=(0.8, 0.8, 1.0)), Path(sys.argv[1]))"
        ), str(tmp / "case")], check=True)
        gen_s = time.perf_counter() - t0
        rss = PeakRSS()
        rss.reset()
        t0 = time.perf_counter()
        report = run_segment(tmp / "case" / "ct.nii.gz", tmp / "out", mri_path=tmp / "case" / "mri.nii.gz",
                             model=args.model, device="cpu", threads=args.threads)
        wall = time.perf_counter() - t0
        peak = rss.peak_gb
        rss.stop()
        result = {
            "input": {"size": [512, 512, args.slices], "spacing_mm": [0.8, 0.8, 1.0], "generate_s": round(gen_s, 1)},
            "model": args.model, "threads": args.threads,
            "total_s": round(wall, 1), "peak_rss_gb": peak, "budget_gb": 4.0, "within_budget": peak <= 4.0,
            "stages_s": report["timing_s"], "liver_volume_ml": report["liver_volume_ml"],
            "lesions": report["lesion_count"],
        }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
