"""Binary-classifier metrics and the validation thresholds g's ``tau_fake`` and d's
``tau_attacked`` are chosen by."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score


def safe_auc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """ROC AUC, or None when only one class is present (AUC is undefined then)."""
    y = np.asarray(labels)
    if y.size == 0 or len(np.unique(y)) < 2:
        return None
    return float(roc_auc_score(y, np.asarray(scores)))


def choose_threshold(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Probability threshold maximising Youden's J (= balanced accuracy) on validation data.

    Candidates are 0.5 and the midpoints between consecutive distinct scores: a threshold that
    sits on a validation score (roc_curve's choice) keeps no margin, and on a cleanly separated
    validation set it lands right under the lowest positive, which test data then undershoots.
    Among the J-optimal candidates the one closest to 0.5 wins. One class: 0.5.
    """
    y, s = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if y.size == 0 or len(np.unique(y)) < 2:
        return 0.5
    u = np.unique(s)
    cand = np.concatenate([[0.5], (u[:-1] + u[1:]) / 2]) if u.size > 1 else np.array([0.5])
    pos, neg = np.sort(s[y == 1]), np.sort(s[y == 0])
    tpr = 1.0 - np.searchsorted(pos, cand, side="left") / pos.size
    fpr = 1.0 - np.searchsorted(neg, cand, side="left") / neg.size
    j = tpr - fpr
    best = np.flatnonzero(j >= j.max() - 1e-12)
    pick = best[np.argmin(np.abs(cand[best] - 0.5))]
    return float(np.clip(cand[pick], 0.0, 1.0))


def binary_metrics(
    labels: Sequence[int], scores: Sequence[float], tau: float = 0.5
) -> dict[str, Any]:
    """AUC, accuracy, balanced accuracy, TPR/TNR at ``tau`` (positive = class 1)."""
    y = np.asarray(labels, dtype=np.int64)
    pred = (np.asarray(scores, dtype=np.float64) >= tau).astype(np.int64)
    pos, neg = y == 1, y == 0
    tpr = float((pred[pos] == 1).mean()) if pos.any() else None
    tnr = float((pred[neg] == 0).mean()) if neg.any() else None
    rates = [r for r in (tpr, tnr) if r is not None]
    return {
        "n": int(y.size),
        "n_pos": int(pos.sum()),
        "n_neg": int(neg.sum()),
        "tau": float(tau),
        "auc": safe_auc(y, scores),
        "accuracy": float((pred == y).mean()) if y.size else None,
        "balanced_accuracy": float(np.mean(rates)) if rates else None,
        "tpr": tpr,
        "tnr": tnr,
    }


def threshold_for_fpr(p_real: np.ndarray, fpr: float) -> float:
    """The lowest threshold at which at most ``fpr`` of ``p_real`` are called fake, placed
    half-way to the next score so it keeps a margin (face is fake when p ≥ tau)."""
    p = np.sort(np.asarray(p_real, dtype=np.float64))[::-1]
    if p.size == 0:
        return 0.5
    k = int(np.floor(fpr * p.size))  # this many reals may sit at or above tau
    if k >= p.size:
        return float(p[-1])
    above = p[k - 1] if k > 0 else 1.0
    return float(min((p[k] + above) / 2, 1.0)) if p[k] < above else float(np.nextafter(p[k], 1))
