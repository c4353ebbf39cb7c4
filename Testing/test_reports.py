"""HTML report with PNG plots (matplotlib Agg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training import reports


def test_html_report_with_all_plots(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    history = [{"epoch": e, "loss": 1.0 / (e + 1), "val_liver_dice": 0.5 + 0.04 * e, "val_tumour_dice": 0.2 + 0.05 * e}
               for e in range(10)]
    y = rng.integers(0, 2, 60)
    s = np.clip(y * 0.4 + rng.random(60) * 0.6, 0, 1)
    pngs = [
        reports.plot_loss_curves(history, tmp_path / "loss.png"),
        reports.plot_histogram({"dual-stream": rng.beta(8, 2, 40), "unet2d": rng.beta(6, 3, 40)},
                               tmp_path / "dice_hist.png"),
        reports.plot_roc({"hybrid3d": (y, s)}, tmp_path / "roc.png"),
        reports.plot_pr({"hybrid3d": (y, s)}, tmp_path / "pr.png"),
        reports.plot_confusion(y, (s >= 0.5).astype(int), tmp_path / "confusion.png"),
    ]
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 2000
    html_path = reports.write_html_report(
        tmp_path, "Evaluation <test>",
        [{"title": "Curves", "images": pngs[:2], "tables": [{"dice": {"mean": 0.8, "std": float("nan")}}]},
         {"title": "Per case", "tables": [[{"case": "a", "dice": 0.9}, {"case": "b", "dice": None}]],
          "images": pngs[2:]}],
        note="synthetic data")
    text = html_path.read_text(encoding="utf-8")
    for p in pngs:
        assert f"src='{p.name}'" in text
    assert "Evaluation &lt;test&gt;" in text and "dice.mean" in text and "&ndash;" in text
    assert "synthetic data" in text
