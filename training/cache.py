"""On-disk cache of preprocessed cases (.npz), so epochs and folds never re-read NIfTI/DICOM.

Key = sha256 of (case id, each source's path + size + mtime -- for DICOM folders the
newest file's mtime and the file count -- or the phantom seed/generator settings, and
the preprocessing config). Change a file or the spacing and the key changes; stale
entries are simply never hit again (`prune` removes them). Arrays only: written with
`np.savez` and read with `allow_pickle=False`, atomically (`io.atomic.write_npz_atomic`) so
an interrupted run never leaves a half-written entry that a later run would trust, and a
full disk is reported as an OutputError, not a raw OSError.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from LiverTumorAILib.io.atomic import write_npz_atomic

log = logging.getLogger("training.cache")
CACHE_VERSION = 1


def _fingerprint(src: Any) -> Any:
    if src is None:
        return None
    if isinstance(src, (str, Path)):
        p = Path(src)
        try:
            if p.is_dir():
                files = [f for f in p.iterdir() if f.is_file()]
                newest = max((f.stat().st_mtime_ns for f in files), default=0)
                return [str(p.resolve()), len(files), newest]
            st = p.stat()
            return [str(p.resolve()), st.st_size, st.st_mtime_ns]
        except OSError:
            return [str(p), "missing"]
    return type(src).__name__  # in-memory image / generator callable: identified via case meta


def case_key(case: Any, config: Mapping[str, Any]) -> str:
    """Hash of the case's sources and the preprocessing config (see module docstring)."""
    meta = getattr(case, "meta", {}) or {}
    doc = {
        "v": CACHE_VERSION,
        "id": case.case_id,
        "sources": {k: _fingerprint(getattr(case, k, None)) for k in ("ct", "mri", "label", "lesions")},
        "seed": meta.get("seed"),
        "generator": meta.get("generator"),
        "classes": {str(k): v for k, v in sorted((getattr(case, "lesion_classes", {}) or {}).items())},
        "config": config,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


class CaseCache:
    """`get(case, build)`: arrays dict from disk, or BUILD(case) once, stored for next time."""

    def __init__(self, root: Path, config: Mapping[str, Any]):
        self.root = Path(root)
        self.config = dict(config)
        self.root.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = 0

    def path(self, case: Any) -> Path:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in case.case_id)
        return self.root / f"{safe}-{case_key(case, self.config)[:20]}.npz"

    def get(self, case: Any, build: Callable[[Any], Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
        path = self.path(case)
        if path.exists():
            try:
                with np.load(path, allow_pickle=False) as z:
                    self.hits += 1
                    return {k: z[k] for k in z.files}
            except (OSError, ValueError) as exc:  # corrupt entry: rebuild, say so
                log.warning("cache entry %s unreadable (%s); rebuilding", path, exc)
        self.misses += 1
        arrays = {k: np.asarray(v) for k, v in build(case).items() if v is not None}
        write_npz_atomic(path, arrays, "training cache entry")
        return arrays

    def prune(self, keep: Sequence[Any]) -> int:
        """Delete entries not belonging to KEEP (cases under the current config)."""
        wanted = {self.path(c).name for c in keep}
        removed = 0
        for p in self.root.glob("*.npz"):
            if p.name not in wanted:
                p.unlink()
                removed += 1
        return removed


def prepare_segmentation_cases(cases: Sequence[Any], *, spacing: Sequence[float], cache_dir: Optional[Path],
                               use_mri: bool = False, log_fn: Callable[[str], None] = print) -> List[Any]:
    """Cases -> `seg_trainer.PreparedCase` (resampled once onto the model grid), through the cache."""
    from training.seg_trainer import PreparedCase, prepare_case

    config = {"kind": "seg", "spacing": [float(s) for s in spacing], "mri": bool(use_mri)}

    def build(case: Any) -> Dict[str, np.ndarray]:
        ct = case.load_ct()
        label = case.load_label()
        mri = case.load_mri() if use_mri else None
        lesions = case.load_lesions()
        classes = {int(k): int(v == "malignant") for k, v in case.lesion_classes.items()}
        if ct is None:
            raise ValueError(f"case {case.case_id}: no CT (MR-only cases cannot train the CT models)")
        pc = prepare_case(case.case_id, ct, label, spacing=spacing, mri=mri, lesions=lesions,
                          lesion_classes=classes or None)
        return {"ct_hu": pc.ct_hu, "label": pc.label, "mri": pc.mri, "slice_class": pc.slice_class}

    cache = CaseCache(cache_dir, config) if cache_dir else None
    out = []
    for i, case in enumerate(cases):
        arrays = cache.get(case, build) if cache else build(case)
        out.append(PreparedCase(case.case_id, arrays["ct_hu"], arrays["label"], arrays.get("mri"),
                                arrays.get("slice_class")))
        log_fn(f"prepared {i + 1}/{len(cases)} {case.case_id} {tuple(arrays['ct_hu'].shape)}")
    if cache:
        log_fn(f"cache {cache.root}: {cache.hits} hit(s), {cache.misses} built")
    return out
