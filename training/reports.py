"""Training/evaluation plots (matplotlib Agg -> PNG) and a self-contained HTML report.

The HTML links its PNGs by relative name (they sit next to it), escapes every string it
writes, and renders nested metric dicts as tables, so the same report works for a
training run (loss curves), a held-out evaluation (Dice histogram, ROC/PR, confusion
matrix) and a model comparison (paired tests).
"""

from __future__ import annotations

import html
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _plt().close(fig)
    return path


def plot_loss_curves(history: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Training loss and every `val_*` metric against epoch (two panels)."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    ep = [h.get("epoch", i) for i, h in enumerate(history)]
    for key in sorted({k for h in history for k in h if "loss" in k}):
        a1.plot(ep, [h.get(key, np.nan) for h in history], label=key)
    a1.set(xlabel="epoch", ylabel="loss", title="Loss")
    a1.legend()
    keys = sorted({k for h in history for k in h if k.startswith("val_") and "loss" not in k and k != "val_cases"})
    for key in keys:
        pts = [(e, h[key]) for e, h in zip(ep, history) if isinstance(h.get(key), (int, float))]
        if pts:
            a2.plot(*zip(*pts), marker="o", label=key)
    a2.set(xlabel="epoch", ylabel="metric", title="Validation")
    if keys:
        a2.legend()
    return _save(fig, path)


def plot_histogram(values: Mapping[str, Sequence[float]], path: Path, *, xlabel: str = "Dice",
                   bins: int = 20) -> Path:
    """Overlaid histograms of per-case values, one per model/class."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, vals in values.items():
        v = np.asarray([x for x in vals if x is not None and math.isfinite(x)], float)
        if v.size:
            ax.hist(v, bins=bins, range=(0, 1) if xlabel.lower().startswith("dice") else None, alpha=0.5,
                    label=f"{name} (n={v.size}, mean {v.mean():.3f})")
    ax.set(xlabel=xlabel, ylabel="cases", title=f"{xlabel} distribution")
    ax.legend()
    return _save(fig, path)


def plot_roc(curves: Mapping[str, Tuple[Sequence[int], Sequence[float]]], path: Path) -> Path:
    """ROC curves of {name: (y_true, y_score)} with AUC in the legend."""
    from LiverTumorAILib.evaluation import roc_auc, roc_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (y, s) in curves.items():
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc(y, s):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_pr(curves: Mapping[str, Tuple[Sequence[int], Sequence[float]]], path: Path) -> Path:
    from LiverTumorAILib.evaluation import pr_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (y, s) in curves.items():
        rec, prec = pr_curve(y, s)
        ax.plot(np.concatenate([[0], rec]), np.concatenate([[1], prec]), label=name)
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title="Precision-recall", xlim=(0, 1),
           ylim=(0, 1.02))
    ax.legend(loc="lower left")
    return _save(fig, path)


def plot_confusion(y_true: Sequence[int], y_pred: Sequence[int], path: Path,
                   labels: Sequence[str] = ("benign", "malignant")) -> Path:
    plt = _plt()
    n = len(labels)
    cm = np.zeros((n, n), int)
    for t, p in zip(y_true, y_pred):
        cm[int(t), int(p)] += 1
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(cm, cmap="Blues")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black", fontsize=14)
    ax.set(xticks=range(n), yticks=range(n), xticklabels=labels, yticklabels=labels, xlabel="predicted",
           ylabel="truth", title="Confusion matrix")
    return _save(fig, path)


# --------------------------------------------------------------------------- HTML
def _fmt(v: Any) -> str:
    if v is None:
        return "&ndash;"
    if isinstance(v, float):
        return "&ndash;" if not math.isfinite(v) else f"{v:.4g}"
    return html.escape(str(v))


def table_html(rows: Union[Mapping[str, Any], Sequence[Mapping[str, Any]]], *, caption: str = "") -> str:
    """A dict (key/value rows; nested dicts flattened with '.') or a list of dicts (columns)."""
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    if isinstance(rows, Mapping):
        flat: Dict[str, Any] = {}

        def walk(prefix: str, obj: Any) -> None:
            if isinstance(obj, Mapping):
                for k, v in obj.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            elif not isinstance(obj, (list, tuple)):
                flat[prefix] = obj

        walk("", rows)
        body = "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in flat.items())
        return f"<table>{cap}{body}</table>"
    rows = list(rows)
    cols: List[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols and not isinstance(r[c], (Mapping, list, tuple))]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table>{cap}<tr>{head}</tr>{body}</table>"


_CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
        "th{background:#f3f3f3}img{max-width:100%;border:1px solid #ddd;margin:.5em 0}"
        ".note{background:#fff4d6;padding:.5em 1em;border-left:4px solid #e0a800}")


def write_html_report(out_dir: Path, title: str, sections: Sequence[Mapping[str, Any]], *,
                      note: Optional[str] = None, filename: str = "report.html") -> Path:
    """SECTIONS: [{"title": .., "text": .., "images": [png paths], "tables": [dict | list[dict]]}]."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p>Generated {datetime.now(timezone.utc).isoformat(timespec='seconds')}</p>"]
    if note:
        parts.append(f"<p class='note'>{html.escape(note)}</p>")
    for sec in sections:
        parts.append(f"<h2>{html.escape(str(sec.get('title', '')))}</h2>")
        if sec.get("text"):
            parts.append(f"<p>{html.escape(str(sec['text']))}</p>")
        for tab in sec.get("tables", []):
            parts.append(table_html(tab))
        for img in sec.get("images", []):
            p = Path(img)
            rel = p.name if p.parent.resolve() == out_dir.resolve() else str(p.resolve())
            parts.append(f"<img src='{html.escape(rel, quote=True)}' alt='{html.escape(p.stem, quote=True)}'>")
    parts.append("</body></html>")
    path = out_dir / filename
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
