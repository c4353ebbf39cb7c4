"""`livertumorai` command line (also `python -m LiverTumorAILib`).

Kept light: importing this module must not import torch; each subcommand imports its engine
module inside its handler. Errors are printed as one line, `livertumorai: error: <message>`:
expected failures (LiverTumorAIError) exit with their own code, Ctrl-C/SIGTERM with 130,
anything unexpected with 1 (traceback only with LIVERTUMORAI_DEBUG=1).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

from LiverTumorAILib import __version__
from LiverTumorAILib.errors import LiverTumorAIError, RunCancelled
from LiverTumorAILib.progress import MODES, Progress

PROG = "livertumorai"
MODELS = ("dual-stream", "tam-unet", "fusion")
DEVICES = ("auto", "cpu", "cuda", "mps")
EXPORT_FORMATS = ("seg.nrrd", "nifti", "dicom-seg", "stl", "obj", "html")
DEBUG_ENV = "LIVERTUMORAI_DEBUG"


# --------------------------------------------------------------------------- argument types


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _bounded_int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = _positive_int(text)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}, not {value}")
        return value

    return parse


def _formats(text: str) -> List[str]:
    names = [f.strip().lower() for f in text.split(",") if f.strip()]
    unknown = [f for f in names if f not in EXPORT_FORMATS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown format {', '.join(unknown) or '(none)'}; choose from {','.join(EXPORT_FORMATS)}")
    return list(dict.fromkeys(names))


# --------------------------------------------------------------------------- parser


def _add_common(p: argparse.ArgumentParser, *, device: bool = True, overwrite: bool = True) -> None:
    if device:
        p.add_argument("--device", choices=DEVICES, default="auto",
                       help="where to run the models (default: auto = GPU if available, else CPU)")
        p.add_argument("--threads", type=_positive_int, metavar="N",
                       help="CPU threads the models use on the CPU (default: all cores this process may use)")
    if overwrite:
        p.add_argument("--overwrite", action="store_true",
                       help="replace an existing output folder LiverTumorAI wrote, once the new one is complete "
                            "(a folder holding anything else is refused, never deleted)")
    p.add_argument("--progress", choices=MODES, default="bar",
                   help="progress display: bar (default), json (one JSON object per line on stderr, "
                        "for Slicer and scripts) or none")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Liver and liver-tumour segmentation, lesion classification and attention heatmaps "
                    "for CT (+ optional MRI). Demo weights are trained on synthetic phantoms: not for "
                    "clinical use.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("segment", help="segment liver and tumours in a CT (+ optional MRI)",
                       description="Segment the liver and tumours of a CT; writes segmentation.nii.gz, "
                                   "lesions.nii.gz, heatmap.nii.gz and report.json into OUTDIR.")
    p.add_argument("ct", metavar="CT", help="CT image file (NIfTI, NRRD, MHA, ...) or DICOM folder")
    p.add_argument("--mri", metavar="MRI", help="MRI of the same patient (file or DICOM folder), optional")
    p.add_argument("--model", choices=MODELS, default="dual-stream", help="segmentation model (default: dual-stream)")
    p.add_argument("--no-classify", action="store_true", help="skip benign/malignant lesion classification")
    p.add_argument("--no-hu-checks", action="store_true",
                   help="keep the network's liver and lesions as drawn: no removal of tissue whose CT HU is "
                        "unlike the liver's, of lesions that differ from the liver around them on no "
                        "image, nor of lesions shaped like a vessel, and lesion edges where the network put "
                        "them, not where the image changes "
                        "(for livers with very uneven HU; see README)")
    p.add_argument("--no-mri-assist", action="store_true",
                   help="with --mri and a CT-only model (dual-stream, tam-unet): do not check its lesions "
                        "against the fusion model's reading of the MRI (by default lesions only the MRI shows "
                        "are added, outlines the MRI shows larger are extended, and findings bright on the CT "
                        "but dark on the MRI are removed as vessels; report.json names each change)")
    heat = p.add_mutually_exclusive_group()
    heat.add_argument("--no-heatmap", action="store_true", help="do not write heatmap.nii.gz")
    heat.add_argument("--heatmaps", choices=("main", "all"), default="main",
                      help="main: heatmap.nii.gz only (default); all: also one map per attention gate")
    p.add_argument("--weights", metavar="DIR", help="weights folder (or folder of them) overriding the bundled ones")
    p.add_argument("-o", "--output", dest="outdir", metavar="OUTDIR", required=True, help="output folder (created)")
    _add_common(p)
    p.set_defaults(handler=_cmd_segment)

    p = sub.add_parser("classify", help="classify the lesions of an existing segmentation",
                       description="Classify each lesion of SEG (on the CT's grid) as benign or malignant.")
    p.add_argument("ct", metavar="CT", help="CT image file or DICOM folder")
    p.add_argument("--seg", required=True, metavar="SEG",
                   help="label map on the CT's grid: 0 background, 1 liver, 2 tumour (e.g. a corrected "
                        "segmentation.nii.gz; lesions are its 3D connected tumour components)")
    p.add_argument("--mri", metavar="MRI", help="MRI of the same patient, optional")
    p.add_argument("--weights", metavar="DIR", help="weights folder overriding the bundled ones")
    p.add_argument("-o", "--output", dest="outdir", metavar="OUT", required=True, help="output folder (created)")
    _add_common(p)
    p.set_defaults(handler=_cmd_classify)

    p = sub.add_parser("demo", help="make a synthetic CT+MRI case and run the whole pipeline on it")
    p.add_argument("-o", "--output", dest="outdir", metavar="OUTDIR", required=True, help="output folder (created)")
    p.add_argument("--model", choices=MODELS, default="fusion", help="segmentation model (default: fusion, since the demo case has an MRI)")
    _add_common(p)
    p.set_defaults(handler=_cmd_demo)

    p = sub.add_parser("phantom", help="write synthetic CT/MRI cases with ground truth",
                       description="Writes DIR/case_XXX/{ct.nii.gz, mri.nii.gz, label.nii.gz, lesions.nii.gz, truth.json}.")
    p.add_argument("-o", "--output", dest="outdir", metavar="DIR", required=True, help="output folder")
    p.add_argument("--count", type=_bounded_int(1, 10000), default=1, metavar="N", help="number of cases (default 1)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed of the first case (default 0)")
    p.add_argument("--size", type=_bounded_int(32, 1024), default=256, metavar="PIXELS",
                   help="in-plane size in pixels (default 256)")
    p.add_argument("--slices", type=_bounded_int(8, 1000), default=64, metavar="N",
                   help="number of slices (default 64)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace DIR if it exists (only a folder LiverTumorAI wrote; written in full first)")
    p.set_defaults(handler=_cmd_phantom)

    p = sub.add_parser("evaluate", help="compare predictions with ground truth (per case and summary)",
                       description="Metrics per case and summary for PRED_DIR (livertumorai outputs) vs GT_DIR "
                                   "(e.g. phantom cases).")
    p.add_argument("pred_dir", metavar="PRED_DIR")
    p.add_argument("gt_dir", metavar="GT_DIR")
    p.add_argument("-o", "--output", dest="output", metavar="REPORT_JSON",
                   help="write the metrics here (default: print to stdout)")
    p.set_defaults(handler=_cmd_evaluate)

    p = sub.add_parser("export", help="export a result for planning (seg.nrrd, NIfTI, DICOM SEG, STL/OBJ, HTML)")
    p.add_argument("result_dir", metavar="RESULT_DIR", help="an output folder of `livertumorai segment`")
    p.add_argument("-o", "--output", dest="outdir", metavar="OUT", required=True, help="export folder (created)")
    p.add_argument("--formats", type=_formats, default=list(EXPORT_FORMATS), metavar="LIST",
                   help=f"comma-separated, from {','.join(EXPORT_FORMATS)} (default: all)")
    p.add_argument("--ct-dicom", metavar="DIR", help="the CT's DICOM series (needed to reference it from DICOM SEG)")
    p.add_argument("--coordinates", choices=("LPS", "RAS"), default="LPS",
                   help="STL/OBJ coordinates, tagged SPACE=... in the file header as 3D Slicer does (default LPS)")
    p.add_argument("--deidentify", action="store_true", help="remove patient identity from exported files")
    _add_common(p, device=False)
    p.set_defaults(handler=_cmd_export)
    return parser


# --------------------------------------------------------------------------- handlers (lazy imports)


def _precheck(*inputs: tuple, outdir: Optional[str] = None, overwrite: bool = False) -> None:
    """Refuse bad inputs and an existing OUTDIR in a fraction of a second, before the engine
    (torch, models) is imported. Header-level only; the pipeline repeats the full checks."""
    from LiverTumorAILib.io.image_io import probe_image

    for path, what in inputs:
        if path is not None:
            probe_image(path, what)
    if outdir is not None:
        from LiverTumorAILib.io.atomic import check_output_location

        check_output_location(outdir, overwrite)


def _cmd_segment(args: argparse.Namespace, progress: Progress) -> Any:
    _precheck((args.ct, "CT"), (args.mri, "MRI"), outdir=args.outdir, overwrite=args.overwrite)
    from LiverTumorAILib import pipeline

    heatmaps = "none" if args.no_heatmap else args.heatmaps
    report = pipeline.run_segment(args.ct, args.outdir, mri_path=args.mri, model=args.model, device=args.device,
                         classify=not args.no_classify, heatmaps=heatmaps, weights_dir=args.weights,
                         hu_checks=not args.no_hu_checks, mri_assist=not args.no_mri_assist,
                         overwrite=args.overwrite, threads=args.threads, progress=progress)
    progress.done(args.outdir)
    print_summary(report)


def _cmd_classify(args: argparse.Namespace, progress: Progress) -> Any:
    _precheck((args.ct, "CT"), (args.seg, "segmentation"), (args.mri, "MRI"), outdir=args.outdir,
              overwrite=args.overwrite)
    from LiverTumorAILib import pipeline

    report = pipeline.run_classify(args.ct, args.seg, args.outdir, mri_path=args.mri, device=args.device,
                                   weights_dir=args.weights, overwrite=args.overwrite, threads=args.threads,
                                   progress=progress)
    progress.done(args.outdir)
    print_summary(report)


def _cmd_demo(args: argparse.Namespace, progress: Progress) -> Any:
    _precheck(outdir=args.outdir, overwrite=args.overwrite)
    from LiverTumorAILib import pipeline

    summary = pipeline.run_demo(args.outdir, model=args.model, device=args.device, overwrite=args.overwrite,
                                threads=args.threads, progress=progress)
    progress.done(args.outdir)
    if isinstance(summary, dict):
        print_summary(summary.get("report"))
        _print_demo_scores(summary.get("scores"))


def _print_demo_scores(scores: Any) -> None:
    """One line: the demo's result against the phantom's truth (skipped if metrics are absent)."""
    try:
        seg, det = scores["segmentation"], scores["detection"]
        line = (f"Against the phantom's truth: liver Dice {seg['liver']['dice']:.3f}, tumour Dice "
                f"{seg['tumour']['dice']:.3f}, {det['n_detected_ge_min']}/{det['n_truth_lesions_ge_min']} lesions "
                f">= 10 mm found, {det['false_positives']} false positive(s)\n")
    except (KeyError, TypeError, ValueError):
        return
    sys.stdout.write(line)


def _cmd_phantom(args: argparse.Namespace, progress: Progress) -> Any:
    _precheck(outdir=args.outdir, overwrite=args.overwrite)
    from LiverTumorAILib.io.atomic import atomic_output_dir
    from LiverTumorAILib.phantom import generate_cohort

    with atomic_output_dir(args.outdir, overwrite=args.overwrite) as staging:  # never mixed into an old folder
        generate_cohort(staging, args.count, args.seed, args.size, args.slices)
    progress.done(args.outdir)


def _cmd_evaluate(args: argparse.Namespace, progress: Progress) -> Any:
    from LiverTumorAILib.evaluation import evaluate_dirs

    for d in (args.pred_dir, args.gt_dir):
        if not Path(d).is_dir():
            from LiverTumorAILib.errors import InputError

            raise InputError(f"{Path(d).name or d}: folder not found ({d})")
    report = evaluate_dirs(args.pred_dir, args.gt_dir)
    text = json.dumps(report, indent=2, default=_json_default)
    if args.output:
        _write_text_atomic(Path(args.output), text + "\n")
        progress.info(f"metrics written to {args.output}")
    else:
        sys.stdout.write(text + "\n")


def _cmd_export(args: argparse.Namespace, progress: Progress) -> Any:
    from LiverTumorAILib.export import run_export

    run_export(args.result_dir, args.outdir, args.formats, ct_dicom=args.ct_dicom,
               coordinates=args.coordinates, deidentify=args.deidentify, overwrite=args.overwrite,
               progress=progress)
    progress.done(args.outdir)


def print_summary(report: Optional[dict]) -> None:
    """A few lines on stdout for people: organ, lesions, and the demo-weights notice."""
    if not isinstance(report, dict):
        return
    out = sys.stdout
    out.write(f"Liver {report.get('liver_volume_ml', 0):.0f} ml, tumour burden {report.get('tumour_burden_percent', 0):.1f}%, "
              f"{report.get('lesion_count', 0)} lesion(s)\n")
    from LiverTumorAILib.inference.mri_assist import mri_assist_note

    for les in report.get("lesions", []):
        note = mri_assist_note(les, report)
        seen_on_mri = f", {note}" if note else ""
        p = les.get("malignancy_probability")
        prob = f"p(malignant) {p:.2f}" if isinstance(p, (int, float)) else "not classified"
        call = les.get("predicted_class", "?")
        call = call if call == prob else f"{call} ({prob})"  # --no-classify: "not classified" once
        size = f"longest {les['longest_diameter_mm']:.0f} mm 3D"
        axial = les.get("longest_axial_diameter_mm")  # the RECIST diameter; absent in old reports
        if isinstance(axial, (int, float)):
            size += f", {axial:.0f} mm axial"
        out.write(f"  lesion {les['id']}: {les['volume_ml']:.1f} ml, {size}, {les['mean_hu']:.0f} HU, {call}{seen_on_mri}\n")
    if report.get("weights_notice"):
        out.write(f"NOTE: {report['weights_notice']}\n")


def _json_default(obj: Any) -> Any:
    """numpy scalars/arrays and paths in metric dicts."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def _write_text_atomic(path: Path, text: str) -> None:
    from LiverTumorAILib.io.atomic import write_text_atomic

    write_text_atomic(path, text, what="metrics")


# --------------------------------------------------------------------------- main


class _ProgressLogHandler(logging.Handler):
    """Engine log records (e.g. which DICOM series was read) go to the progress reporter."""

    def __init__(self, progress: Progress) -> None:
        super().__init__(level=logging.INFO)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad log call must never break a run
            return
        if record.levelno >= logging.WARNING:
            self.progress.warn(msg)
        else:
            self.progress.info(msg)


def _sigterm_to_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _error(message: str, progress: Optional[Progress]) -> None:
    message = " ".join(str(message).split())  # always one line
    if progress is not None:
        progress.error(message)
    try:
        sys.stderr.write(f"{PROG}: error: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 input, 3 weights, 4 output, 130 interrupted, 1 bug)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    progress = Progress(getattr(args, "progress", "bar"))
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")

    from LiverTumorAILib.io.image_io import capture_native_stderr

    capture_native_stderr(True)
    engine_log = logging.getLogger("LiverTumorAILib")
    handler = _ProgressLogHandler(progress)
    engine_log.addHandler(handler)
    old_level = engine_log.level
    engine_log.setLevel(logging.DEBUG if debug else logging.INFO)
    old_term = None
    try:
        old_term = signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    except ValueError:  # not the main thread (e.g. called from a worker): leave signals alone
        pass
    try:
        args.handler(args, progress)
        return 0
    except KeyboardInterrupt:
        _error("interrupted; no output written", progress)
        return 130
    except RunCancelled as e:
        _error(str(e) or "interrupted; no output written", progress)
        return e.exit_code
    except LiverTumorAIError as e:
        if debug:
            traceback.print_exc()
        _error(str(e), progress)
        return e.exit_code
    except Exception as e:  # noqa: BLE001 - the CLI's last line of defence
        if debug:
            traceback.print_exc()
        _error(f"internal error: {type(e).__name__}: {e} (run with {DEBUG_ENV}=1 for the traceback)", progress)
        return 1
    finally:
        capture_native_stderr(False)
        engine_log.removeHandler(handler)
        engine_log.setLevel(old_level)
        if old_term is not None:
            try:
                signal.signal(signal.SIGTERM, old_term)
            except ValueError:
                pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
