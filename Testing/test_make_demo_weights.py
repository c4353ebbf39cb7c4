"""`make_demo_weights prepare`: the extra case families land in the cache under their own names,
really differ as asked, and the manifest's data record counts them."""

from __future__ import annotations

import numpy as np

from training.make_demo_weights import (
    BRIGHT_TRAIN_SEED,
    FATTY_TRAIN_SEED,
    PLAIN_TRAIN_SEED,
    SUBTLE_TRAIN_SEED,
    TRAIN_SEED,
    _training_data,
    prepare,
)
from training.seg_trainer import load_prepared


def _liver_hu(case) -> float:
    return float(np.median(case.ct_hu[case.label == 1]))


def test_fatty_plain_subtle_and_bright_cases_are_cached_with_their_own_seeds(tmp_path):
    prepare(tmp_path, count=1, val=0, size=64, slices=12, fatty_count=2, plain_count=1, subtle_count=1,
            bright_count=1)
    names = sorted(p.stem for p in (tmp_path / "seg" / "train").glob("*.npz"))
    assert names == [
        "train_000", "train_bright_t2_000", "train_fatty_t1_001", "train_fatty_t2_000", "train_plain_t2_000",
        "train_subtle_t2_000",
    ]
    assert sorted(p.stem for p in (tmp_path / "loc" / "train").glob("*.npz")) == names

    cases = {c.case_id: c for c in load_prepared(tmp_path / "seg" / "train")}
    # steatosis: the phantom draws 35-70 HU for a fatty liver (normal 95-130, cirrhotic 75-110)
    for name in ("train_fatty_t2_000", "train_fatty_t1_001"):
        assert _liver_hu(cases[name]) < 75
    assert cases["train_fatty_t1_001"].mri is not None

    record = _training_data(6, 0, tmp_path)
    assert record["fatty_liver_train_seeds"] == [FATTY_TRAIN_SEED, FATTY_TRAIN_SEED + 1]
    assert record["plain_lesion_train_seeds"] == [PLAIN_TRAIN_SEED, PLAIN_TRAIN_SEED]
    assert record["subtle_lesion_train_seeds"] == [SUBTLE_TRAIN_SEED, SUBTLE_TRAIN_SEED]
    assert record["bright_lesion_train_seeds"] == [BRIGHT_TRAIN_SEED, BRIGHT_TRAIN_SEED]
    assert record["fatty_liver_train_note"] == "generate_case(seed, fatty=True); odd seeds with a T1 MRI, even with T2"
    assert record["bright_lesion_train_note"].startswith("generate_case(seed, bright_lesions=0.7, lesion_diameters=(8.0, 30.0))")
    assert record["train_seeds"] == [TRAIN_SEED, TRAIN_SEED]  # the one ordinary case
    assert record["cases"] == 6
