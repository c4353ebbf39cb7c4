"""Render the extension's overview picture from a real `livertumorai segment` / `demo` result.

    python docs/render_overview.py demo_out/result -o Resources/Screenshots/LiverTumorAI-1.png

Why a rendering and not a screenshot: the Slicer application cannot run where this project is
built, so the picture shows the same outputs Slicer loads (segmentation, heatmap, lesion table)
drawn with matplotlib from the result folder, and says so in its caption.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def render_overview(result_dir: Path, out_png: Path) -> Path:
    """Two axial panels (segmentation contours; heatmap overlay) and the lesion table, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from LiverTumorAILib.export.html_report import CT_WINDOW, axial_lps
    from LiverTumorAILib.export.result import load_result

    def radiological(image: sitk.Image) -> np.ndarray:  # rows anterior->posterior, columns right->left
        return sitk.GetArrayFromImage(axial_lps(image))

    data = load_result(result_dir, None)
    if data.ct is None:
        raise SystemExit(f"{result_dir}: the CT named in report.json is not there")
    ct_image = axial_lps(data.ct)
    ct, label = sitk.GetArrayFromImage(ct_image), radiological(data.label)
    lesions = radiological(data.lesions) if data.lesions is not None else (label == 2).astype(np.uint8)
    heat_path = result_dir / "heatmap.nii.gz"
    heat = radiological(sitk.ReadImage(str(heat_path))) if heat_path.exists() else np.zeros(ct.shape, np.float32)
    z = int(np.argmax((lesions > 0).sum(axis=(1, 2)))) if lesions.any() else int(np.argmax((label > 0).sum(axis=(1, 2))))
    sx, sy, _ = ct_image.GetSpacing()

    fig = plt.figure(figsize=(13, 4.6), dpi=100)
    grid = fig.add_gridspec(1, 3, width_ratios=[1, 1, 1.15])
    for i, title in enumerate(("Liver (brown) and lesions (yellow)", "Heatmap: where the models looked")):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(ct[z], cmap="gray", vmin=CT_WINDOW[0], vmax=CT_WINDOW[1], aspect=sy / sx)
        if i == 0:
            ax.contour(label[z] > 0, levels=[0.5], colors=["#b97a57"], linewidths=1.2)
            ax.contour(lesions[z] > 0, levels=[0.5], colors=["yellow"], linewidths=1.2)
        else:
            ax.imshow(np.ma.masked_less(heat[z], 0.05), cmap="inferno", vmin=0, vmax=1, alpha=0.6, aspect=sy / sx)
        ax.set_title(f"{title}, slice {z}", fontsize=10)
        ax.axis("off")
    ax = fig.add_subplot(grid[0, 2])
    ax.axis("off")
    rows = [[str(les["id"]), f"{les['volume_ml']:.1f}", f"{les['longest_diameter_mm']:.0f}", f"{les['mean_hu']:.0f}",
             "-" if les.get("malignancy_probability") is None else f"{les['malignancy_probability']:.2f}",
             str(les.get("predicted_class") or "-")] for les in data.report.get("lesions", [])]
    if rows:
        table = ax.table(cellText=rows, colLabels=["Lesion", "ml", "Longest mm", "HU", "P(malig.)", "Class"],
                         loc="upper center")
        table.auto_set_font_size(False)
        table.set_fontsize(9)
        table.auto_set_column_width(list(range(6)))
        table.scale(1, 1.5)
    liver_ml = data.report.get("liver_volume_ml")
    ax.set_title(f"Lesion table (liver {liver_ml:.0f} ml)" if liver_ml else "Lesion table", fontsize=10)
    fig.text(0.5, 0.02, "LiverTumorAI on a synthetic phantom with demo weights trained on synthetic phantoms "
             "(not for clinical use); drawn from the result folder Slicer loads, not a Slicer screenshot.",
             ha="center", fontsize=9)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, bbox_inches="tight")
    plt.close(fig)
    return out_png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result_dir", type=Path, help="an output folder of `livertumorai segment` (or demo's result/)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    print(render_overview(args.result_dir, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
