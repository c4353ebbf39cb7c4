"""Patient-level splits: 70/10/20 train/val/test (paper 001) and k-fold CV (paper 000: 5 folds).

Why patient-level: slices of one patient in both train and test inflate Dice. Cases are
grouped by `patient_of(case_id)` (CHAOS MR T1/T2 of one patient, LiTS duplicates of
3D-IRCADb patients mapped by the caller, ...) and whole groups are assigned. Assignment
is a seeded permutation of the sorted group ids, so it is deterministic by seed and
does not depend on the order the adapter listed the cases in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

import numpy as np

T = TypeVar("T")


def default_patient_of(case_id: str) -> str:
    """Group key: CHAOS MR sequences of one patient share 'chaos-mr-N'; else the id itself."""
    m = re.match(r"^(chaos-mr-\d+)", case_id)
    return m.group(1) if m else case_id


def _case_id(item: object) -> str:
    return str(getattr(item, "case_id", item))


def _groups(items: Sequence[T], patient_of: Callable[[str], str]) -> Tuple[List[str], Dict[str, List[T]]]:
    groups: Dict[str, List[T]] = {}
    for it in items:
        groups.setdefault(patient_of(_case_id(it)), []).append(it)
    keys = sorted(groups)
    return keys, groups


@dataclass
class Split:
    train: list
    val: list
    test: list

    def ids(self) -> Dict[str, List[str]]:
        return {k: [_case_id(c) for c in getattr(self, k)] for k in ("train", "val", "test")}


def train_val_test_split(items: Sequence[T], *, fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0,
                         patient_of: Callable[[str], str] = default_patient_of) -> Split:
    """Split by patient with the given fractions (rounded; val and test get >= 1 patient when
    there are >= 3 patients, so tiny cohorts still validate and test on something)."""
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    keys, groups = _groups(items, patient_of)
    order = [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))]
    n = len(order)
    n_test = int(round(fractions[2] * n))
    n_val = int(round(fractions[1] * n))
    if n >= 3:
        n_test = max(n_test, 1 if fractions[2] > 0 else 0)
        n_val = max(n_val, 1 if fractions[1] > 0 else 0)
    n_train = n - n_val - n_test
    if n_train < 1 and n > 0:
        raise ValueError(f"{n} patient(s) are too few for a train/val/test split")

    def take(ks: Sequence[str]) -> list:
        return [c for k in ks for c in groups[k]]

    return Split(take(order[:n_train]), take(order[n_train:n_train + n_val]), take(order[n_train + n_val:]))


def kfold(items: Sequence[T], k: int = 5, *, seed: int = 0, val_fraction: float = 0.0,
          patient_of: Callable[[str], str] = default_patient_of) -> List[Split]:
    """k patient-level folds: fold i tests on group i; the rest is train (+ optional val carve-out)."""
    keys, groups = _groups(items, patient_of)
    if k < 2 or k > len(keys):
        raise ValueError(f"k-fold needs 2 <= k <= number of patients ({len(keys)}), got k={k}")
    order = [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))]
    folds = [order[i::k] for i in range(k)]
    out = []
    for i in range(k):
        rest = [key for j, f in enumerate(folds) if j != i for key in f]
        n_val = int(round(val_fraction * len(rest)))
        val_keys, train_keys = rest[:n_val], rest[n_val:]
        out.append(Split([c for key in train_keys for c in groups[key]], [c for key in val_keys for c in groups[key]],
                         [c for key in folds[i] for c in groups[key]]))
    return out


def split_from_config(items: Sequence[T], split_cfg: Optional[dict], seed: int) -> Split:
    """The `split` block of a training config: {"train": .7, "val": .1, "test": .2}."""
    cfg = split_cfg or {}
    fr = (cfg.get("train", 0.7), cfg.get("val", 0.1), cfg.get("test", 0.2))
    return train_val_test_split(items, fractions=fr, seed=cfg.get("seed", seed))
