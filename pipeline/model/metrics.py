"""Evaluation metrics on whole splits, in numpy.

Each function takes the predictions and labels of a complete split (the trainer gathers every
rank's rows first, so each val/test row counts once) and returns what scikit-learn's function of
the same name returns on the same input; tests/test_objectives.py holds them to it. They live here
rather than as calls into scikit-learn so that a training rank imports nothing but numpy.
"""
from __future__ import annotations

import numpy as np


# --- classification ------------------------------------------------------------------------------

def confusion_matrix(y: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(true class, predicted class) counts, as ``sklearn.metrics.confusion_matrix(labels=range(k))``."""
    y, pred = np.asarray(y, np.int64), np.asarray(pred, np.int64)
    return np.bincount(y * num_classes + pred, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def precision_recall_f1(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall and F1 from a confusion matrix; 0 where undefined
    (``zero_division=0`` in scikit-learn)."""
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(0).astype(np.float64)
    actual = cm.sum(1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve for binary labels (1 = positive), ties counted half
    (the Mann-Whitney statistic). NaN when only one class is present."""
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(np.asarray(score, np.float64))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the precision-recall curve as scikit-learn's ``average_precision_score``:
    sum over thresholds of (recall step) x precision. NaN without positives."""
    y = np.asarray(y).astype(bool)
    score = np.asarray(score, np.float64)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-score, kind="mergesort")
    s, t = score[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
    tps = np.cumsum(t)[last]
    fps = (last + 1) - tps
    precision = tps / (tps + fps)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their average rank (scipy's ``rankdata(method="average")``)."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.r_[0, np.flatnonzero(np.diff(xs)) + 1]
    ends = np.r_[starts[1:], len(xs)]
    avg = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def log_loss(logits: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None) -> float:
    """Mean cross-entropy of logits against integer labels (torch's ``cross_entropy``, weighted
    mean when class weights are given)."""
    z = logits.astype(np.float64)
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    nll = -logp[np.arange(len(y)), y]
    if weight is None:
        return float(nll.mean()) if len(y) else float("nan")
    w = np.asarray(weight, np.float64)[y]
    return float((w * nll).sum() / w.sum()) if len(y) else float("nan")


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def balanced_class_weights(counts: list[int] | np.ndarray) -> np.ndarray:
    """n_samples / (n_classes x count) per class, as scikit-learn's ``compute_class_weight("balanced")``;
    a class absent from training gets weight 0 (it cannot be learned)."""
    c = np.asarray(counts, np.float64)
    return np.divide(c.sum(), len(c) * c, out=np.zeros_like(c), where=c > 0)


# --- regression ----------------------------------------------------------------------------------

def regression(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """RMSE, MAE and R² over every value (multi-step forecasts are flattened)."""
    y = np.asarray(y, np.float64).ravel()
    pred = np.asarray(pred, np.float64).ravel()
    err = pred - y
    ss_tot = float(((y - y.mean()) ** 2).sum()) if len(y) else 0.0
    ss_res = float((err ** 2).sum())
    if ss_tot > 0:
        r2 = 1.0 - ss_res / ss_tot
    else:  # constant target: scikit-learn's convention
        r2 = 1.0 if ss_res == 0 else 0.0
    return {"rmse": float(np.sqrt(np.mean(err ** 2))) if len(y) else float("nan"),
            "mae": float(np.mean(np.abs(err))) if len(y) else float("nan"),
            "r2": r2}
