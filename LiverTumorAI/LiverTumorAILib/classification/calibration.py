"""Probability calibration of the lesion classifiers: temperature scaling, NLL, ECE, AUC.

Temperature scaling (Guo et al. 2017): one scalar ``T > 0`` divides the logits,
``p = softmax(z / T)``; ``T`` is fitted on held-out validation logits by minimising the negative
log-likelihood. It changes confidence, never the ranking (AUC and the argmax are unchanged),
which is why a single parameter is safe to fit on a small validation set. The fitted value is
stored in the weights manifest under ``"calibration": {"temperature": T, "ece_before": ..,
"ece_after": .., "nll_before": .., "nll_after": .., "n_val": ..}`` and applied by
``classify_lesions``.

numpy/scipy only (no torch), so it also serves evaluation code.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.optimize import minimize_scalar

T_BOUNDS = (0.05, 20.0)


def _as_logits(logits: np.ndarray | Sequence) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 1:  # a single malignant-vs-benign logit difference
        z = np.stack([np.zeros_like(z), z], axis=1)
    if z.ndim != 2:
        raise ValueError(f"logits must be [N, K] or [N], got shape {z.shape}")
    return z


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (numerically stable)."""
    z = _as_logits(logits) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of integer ``labels`` under ``softmax(logits / T)``."""
    z = _as_logits(logits) / float(temperature)
    y = np.asarray(labels, dtype=int)
    zmax = z.max(axis=1, keepdims=True)
    logsum = np.log(np.exp(z - zmax).sum(axis=1)) + zmax[:, 0]
    return float(np.mean(logsum - z[np.arange(len(y)), y]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = T_BOUNDS) -> float:
    """Temperature minimising the validation NLL (bounded 1-D search over log T).

    Returns 1.0 when there is nothing to fit (fewer than 2 samples or a single class, where the
    NLL is minimised by T -> 0 or infinity and the fit would be meaningless).
    """
    y = np.asarray(labels, dtype=int)
    z = _as_logits(logits)
    if len(y) < 2 or len(np.unique(y)) < 2:
        return 1.0
    res = minimize_scalar(
        lambda log_t: nll(z, y, float(np.exp(log_t))),
        bounds=(np.log(bounds[0]), np.log(bounds[1])),
        method="bounded",
        options={"xatol": 1e-4},
    )
    t = float(np.exp(res.x))
    # Guard against a worse optimum than no scaling (flat objective, degenerate data).
    return t if nll(z, y, t) <= nll(z, y, 1.0) else 1.0


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> float:
    """Top-label ECE of a binary classifier (one implementation: ``evaluation``'s).

    ``probs`` is [N] probabilities of class 1 or [N, 2] class probabilities."""
    from LiverTumorAILib.evaluation import expected_calibration_error as ece

    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 2:
        if p.shape[1] != 2:
            raise ValueError("expected_calibration_error: binary classifier probabilities expected")
        p = p[:, 1]
    if len(p) == 0:
        return 0.0
    return ece(np.asarray(labels, dtype=int), p, n_bins)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (``evaluation.roc_auc`` with this module's argument order)."""
    from LiverTumorAILib.evaluation import roc_auc as auc

    return auc(labels, scores)


def calibration_record(logits: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> dict:
    """Fit T on ``(logits, labels)`` and return the manifest's ``"calibration"`` entry."""
    t = fit_temperature(logits, labels)
    return {
        "method": "temperature-scaling",
        "temperature": round(t, 6),
        "ece_before": round(expected_calibration_error(softmax(logits), labels, n_bins), 6),
        "ece_after": round(expected_calibration_error(softmax(logits, t), labels, n_bins), 6),
        "nll_before": round(nll(logits, labels), 6),
        "nll_after": round(nll(logits, labels, t), 6),
        "n_bins": n_bins,
        "n_val": int(len(np.asarray(labels))),
    }
