"""Where does `livertumorai segment` hold its memory?  A per-step peak-RSS trace.

    python benchmarks/trace_memory.py CASE_DIR [--model tam-unet] [--threads 1] [-o trace.json]
    python benchmarks/trace_memory.py --slices 400            # generates a 512 x 512 x 400 phantom first

tracemalloc does not see most of numpy's, SimpleITK's and VTK's buffers, so this samples the
process's resident set size (VmRSS) every 5 ms and charges each sample to the innermost
pipeline step that was running at that moment. Steps are the pipeline's own functions
(wrapped here for the run, nothing in the engine changes): reading, localisation, model grid,
slab inference, resampling back, post-processing, lesion labelling, measurement,
classification, heatmaps, NIfTI writing, scene writing. For each step the table gives the
RSS when it started, its peak, and the peak minus the start (what the step itself added).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import PeakRSS  # noqa: E402

_rss = PeakRSS.current

# (module, attribute) of the functions to trace; nested calls are charged to the innermost one.
STEPS = [
    ("LiverTumorAILib.pipeline", "_read_inputs"),
    ("LiverTumorAILib.pipeline", "segment_into"),
    ("LiverTumorAILib.inference.engine", "segment_volume"),
    ("LiverTumorAILib.inference.engine", "localize_liver"),
    ("LiverTumorAILib.inference.engine", "make_model_grid"),
    ("LiverTumorAILib.inference.engine", "predict_volume"),
    ("LiverTumorAILib.inference.engine", "grow_box_where_cut"),
    ("LiverTumorAILib.inference.engine", "resample_like"),
    ("LiverTumorAILib.inference.engine", "clean_label_map"),
    ("LiverTumorAILib.postprocess", "label_lesions"),
    ("LiverTumorAILib.measure", "lesion_measurements"),
    ("LiverTumorAILib.measure", "organ_summary"),
    ("LiverTumorAILib.pipeline", "_classify"),
    ("LiverTumorAILib.classification.classify", "_check_inputs"),
    ("LiverTumorAILib.classification.classify", "lesion_geometries"),
    ("LiverTumorAILib.classification.classify", "extract_lesion_crops"),
    ("LiverTumorAILib.classification.classify", "_predict"),
    ("LiverTumorAILib.pipeline", "_write_image"),
    ("LiverTumorAILib.pipeline", "_write_heatmaps"),
    ("LiverTumorAILib.classification.classify", "gradcam_on_grid"),
    ("LiverTumorAILib.heatmaps.combine", "heatmap_images"),
    ("LiverTumorAILib.pipeline", "_write_scene"),
    ("LiverTumorAILib.scene.build", "volume_node_from_sitk"),
    ("LiverTumorAILib.scene.build", "create_segmentation_node"),
    ("LiverTumorAILib.scene.build", "add_heatmap_node"),
    ("LiverTumorAILib.scene.build", "write_segmentation"),
    ("LiverTumorAILib.scene.build", "write_mrb"),
]


class Tracer:
    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.stack: list[str] = []
        self.rows: dict[str, dict] = {}
        self.peak = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _charge(self, value: int) -> None:
        with self._lock:
            self.peak = max(self.peak, value)
            if self.stack:
                row = self.rows[self.stack[-1]]
                row["peak"] = max(row["peak"], value)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._charge(_rss())
            time.sleep(self.interval)

    def enter(self, name: str) -> None:
        value = _rss()
        self._charge(value)
        with self._lock:
            row = self.rows.setdefault(name, {"calls": 0, "start": value, "peak": value, "added": 0, "seconds": 0.0})
            row["calls"] += 1
            row["_start"] = value
            self.stack.append(name)

    def leave(self, name: str, seconds: float) -> None:
        self._charge(_rss())
        with self._lock:
            self.stack.pop()
            row = self.rows[name]
            row["added"] = max(row["added"], row["peak"] - row.pop("_start"))
            row["seconds"] += seconds

    def wrap(self, module_name: str, attr: str) -> None:
        module = importlib.import_module(module_name)
        func = getattr(module, attr)
        name = f"{module_name.rsplit('.', 1)[-1]}.{attr}"

        @functools.wraps(func)
        def traced(*args, **kwargs):
            self.enter(name)
            t0 = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self.leave(name, time.perf_counter() - t0)

        setattr(module, attr, traced)

    def start(self) -> None:
        self.peak = _rss()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _generate(folder: Path, slices: int) -> None:
    subprocess.run([sys.executable, "-c", (
        "import sys; from pathlib import Path; from LiverTumorAILib.phantom import generate_case, write_case; "
        f"write_case(generate_case(31337, size=512, slices={slices}, spacing=(0.8, 0.8, 1.0)), Path(sys.argv[1]))"
    ), str(folder)], check=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("case", nargs="?", type=Path, help="folder with ct.nii.gz (and mri.nii.gz)")
    parser.add_argument("--slices", type=int, default=400, help="phantom depth when no CASE is given")
    parser.add_argument("--model", default="tam-unet")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("-o", "--output", type=Path, help="write the trace as JSON here")
    parser.add_argument("--keep", type=Path, help="keep the pipeline's output folder here")
    args = parser.parse_args(argv)

    from LiverTumorAILib.pipeline import run_segment

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        case = args.case
        if case is None:
            case = tmp / "case"
            _generate(case, args.slices)  # in a child: not counted here
        tracer = Tracer()
        for module_name, attr in STEPS:
            tracer.wrap(module_name, attr)
        mri = case / "mri.nii.gz"
        tracer.start()
        baseline = _rss()
        t0 = time.perf_counter()
        report = run_segment(case / "ct.nii.gz", args.keep or tmp / "out", mri_path=mri if mri.exists() else None,
                             model=args.model, device="cpu", threads=args.threads)
        wall = time.perf_counter() - t0
        tracer.stop()
    gb = 2**30
    print(f"{'step':<38}{'calls':>6}{'start GB':>10}{'peak GB':>9}{'added GB':>10}{'s':>8}")
    for name, row in tracer.rows.items():
        print(f"{name:<38}{row['calls']:>6}{row['start'] / gb:>10.2f}{row['peak'] / gb:>9.2f}"
              f"{row['added'] / gb:>10.2f}{row['seconds']:>8.1f}")
    print(f"baseline {baseline / gb:.2f} GB, peak {tracer.peak / gb:.2f} GB, wall {wall:.1f} s, "
          f"CT {report['ct_grid']['size']}")
    if args.output:
        args.output.write_text(json.dumps({
            "ct_size": report["ct_grid"]["size"], "wall_s": round(wall, 1), "peak_rss_gb": round(tracer.peak / gb, 3),
            "baseline_rss_gb": round(baseline / gb, 3),
            "steps": {k: {"calls": v["calls"], "start_gb": round(v["start"] / gb, 3), "peak_gb": round(v["peak"] / gb, 3),
                          "added_gb": round(v["added"] / gb, 3), "seconds": round(v["seconds"], 2)}
                      for k, v in tracer.rows.items()},
            "timing_s": report["timing_s"],
        }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
