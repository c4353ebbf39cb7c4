"""Self-contained HTML report: lesion table, key images (base64 PNG), models, disclaimer."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, Optional

import numpy as np
import SimpleITK as sitk

from .. import DEMO_WEIGHTS_NOTICE, __version__
from ..scene import terminology as T
from .result import ResultData

CT_WINDOW = (-160.0, 240.0)  # abdominal soft-tissue window
TABLE_COLUMNS = [
    ("id", "Lesion"), ("volume_ml", "Volume (ml)"), ("longest_diameter_mm", "Longest diameter (mm)"),
    ("mean_hu", "Mean HU"), ("malignancy_probability", "Malignancy probability"), ("predicted_class", "Class"),
    ("found_by", "Found by"),  # the segmentation model, or the fusion model for a lesion only the MRI shows
    ("outline_extended_by", "Outline extended by"),  # the fusion model, where the MRI showed the lesion larger
]


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.2f}" if np.isfinite(value) else "–"
    return html.escape(str(value))


def axial_lps(image: sitk.Image) -> sitk.Image:
    """Reorient to LPS so array rows run anterior->posterior and columns right->left (radiological)."""
    try:
        return sitk.DICOMOrient(image, "LPS")
    except RuntimeError:
        return image


def key_image(ct: Optional[np.ndarray], merged: np.ndarray, value: int, liver_value: Optional[int],
              aspect: float, title: str) -> str:
    """PNG (base64) of the axial slice with the largest area of segment `value`, contours on top."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    mask = merged == value
    z = int(np.argmax(mask.sum(axis=(1, 2))))
    ys, xs = np.nonzero(mask[z])
    cy, cx = int(ys.mean()), int(xs.mean())
    half = max(40, int(2.5 * max(np.ptp(ys), np.ptp(xs))))
    y0, y1 = max(0, cy - half), min(mask.shape[1], cy + half)
    x0, x1 = max(0, cx - half), min(mask.shape[2], cx + half)
    fig, ax = plt.subplots(figsize=(3.2, 3.2), dpi=100)
    if ct is not None:
        ax.imshow(ct[z, y0:y1, x0:x1], cmap="gray", vmin=CT_WINDOW[0], vmax=CT_WINDOW[1], aspect=aspect)
    else:
        ax.imshow(np.zeros((y1 - y0, x1 - x0)), cmap="gray", aspect=aspect)
    if liver_value is not None and np.any(merged[z] == liver_value):
        ax.contour(merged[z, y0:y1, x0:x1] > 0, levels=[0.5], colors=[tuple(c for c in T.LIVER_COLOR)], linewidths=1)
    ax.contour(mask[z, y0:y1, x0:x1], levels=[0.5], colors=["yellow"], linewidths=1.5)
    ax.set_title(f"{title} (slice {z})", fontsize=9)
    ax.axis("off")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def render(data: ResultData) -> str:
    report = data.report
    lesions = list(report.get("lesions") or [])
    merged_img = axial_lps(data.merged)
    merged = sitk.GetArrayFromImage(merged_img)
    ct = data.ct
    ct_arr = None
    if ct is not None and ct.GetSize() == data.merged.GetSize():
        ct_arr = sitk.GetArrayFromImage(axial_lps(ct)).astype(np.float32)
    sx, sy, _ = merged_img.GetSpacing()
    liver_value = next((v for v, s in data.specs if s.name == "Liver"), None)
    images = []
    for value, spec in data.specs:
        if spec.lesion_id is None:
            continue
        png = key_image(ct_arr, merged, value, liver_value, sy / sx, spec.name)
        images.append(f'<figure><img alt="{html.escape(spec.name)}" src="data:image/png;base64,{png}">'
                      f"<figcaption>{html.escape(spec.name)}</figcaption></figure>")
    rows = "".join(
        "<tr>" + "".join(f"<td>{_fmt(lesion.get(key))}</td>" for key, _ in TABLE_COLUMNS) + "</tr>"
        for lesion in lesions
    ) or f'<tr><td colspan="{len(TABLE_COLUMNS)}">No lesions found.</td></tr>'  # an empty table reads as a glitch
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in TABLE_COLUMNS)
    models = "".join(
        f"<li>{html.escape(str(name))}: version {html.escape(str((info or {}).get('version', '?')))}"
        f"{' (synthetic demo weights)' if isinstance(info, dict) and info.get('synthetic') else ''}</li>"
        for name, info in sorted((report.get("models") or {}).items())
    )
    disclaimer = ""
    if data.synthetic:
        notice = report.get("weights_notice") or DEMO_WEIGHTS_NOTICE
        disclaimer = (f'<p class="disclaimer"><strong>Not for clinical use.</strong> Results come from '
                      f"{html.escape(notice)}. Phantom/demo weights.</p>")
    summary = (f"<p>Liver volume: {_fmt(report.get('liver_volume_ml'))} ml; tumour burden: "
               f"{_fmt(report.get('tumour_burden_percent'))} %; lesions: {len(lesions)}.</p>")
    warnings = [str(w) for w in (report.get("warnings") or []) if w]
    if warnings:  # what the automatic run flagged; still worth reading after manual correction
        summary += ("<h2>Warnings from the automatic segmentation</h2><ul>"
                    + "".join(f"<li>{html.escape(w)}</li>" for w in warnings) + "</ul>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>LiverTumorAI report</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #999;padding:4px 8px;text-align:right}} figure{{display:inline-block;margin:4px}}
.disclaimer{{background:#fee;border:2px solid #c00;padding:8px}}</style></head>
<body><h1>LiverTumorAI report</h1>
{disclaimer}
{summary}
<h2>Lesions</h2>
<table id="lesions"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>
<h2>Key images</h2>
{''.join(images) or '<p>No lesions.</p>'}
<h2>Models</h2><ul>{models}</ul>
<p>Software: LiverTumorAI {html.escape(str(report.get('software_version', __version__)))}; device:
{html.escape(str(report.get('device', '?')))}.</p>
</body></html>
"""


def write_html(data: ResultData, out_dir: Path) -> list[Path]:
    path = out_dir / "report.html"
    path.write_text(render(data), encoding="utf-8")
    return [path]
