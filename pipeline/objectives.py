"""What differs between task types, behind one small interface.

An objective gives the training loop its loss and output size, the metrics of a whole split,
and the columns scoring writes. The loop itself never asks which task it is training.

- ``loss(out, y)``: torch, mean over the batch, computed in fp32.
- ``batch_sums(out, y)``: running sums of a training batch (torch), turned into train metrics
  by ``train_metrics(sums, n)`` after they are summed over ranks.
- ``metrics(out, y)``: numpy, on the outputs and labels of every row of a split (the trainer
  gathers them from all ranks first, so each row counts exactly once); its keys are
  ``metric_names`` and include ``loss``.
- ``predictions(out)``: numpy columns that scoring writes.
- ``default_monitor`` and ``higher_is_better(metric)``: for picking the best epoch.
"""
from __future__ import annotations

from typing import Any

import numpy as np

LOWER_IS_BETTER = ("loss", "rmse", "mae")


def higher_is_better(metric: str) -> bool:
    return not metric.endswith(LOWER_IS_BETTER)


def _log_softmax(out: np.ndarray) -> np.ndarray:
    z = out - out.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


class Classification:
    name = "classification"
    label_dtype = np.int64
    default_monitor = "val_accuracy"
    metric_names = ("loss", "accuracy")
    train_names = ("accuracy",)

    def __init__(self, num_labels: int):
        self.num_labels = num_labels

    def output_size(self) -> int:
        return self.num_labels

    def loss(self, out, y):
        import torch.nn.functional as F

        return F.cross_entropy(out.float(), y)

    def batch_sums(self, out, y):
        import torch

        return torch.stack([(out.detach().argmax(1) == y).sum().double()])

    def train_metrics(self, sums: np.ndarray, n: float) -> dict[str, float]:
        return {"accuracy": float(sums[0] / max(n, 1.0))}

    def metrics(self, out: np.ndarray, y: np.ndarray) -> dict[str, float]:
        n = max(len(y), 1)
        logp = _log_softmax(out.astype(np.float64)) if len(y) else np.zeros((0, self.num_labels))
        return {
            "loss": float(-logp[np.arange(len(y)), y].sum() / n),
            "accuracy": float((out.argmax(1) == y).sum() / n) if len(y) else 0.0,
        }

    def predictions(self, out: np.ndarray) -> dict[str, np.ndarray]:
        logp = _log_softmax(out.astype(np.float64))
        prob = np.exp(logp).astype(np.float32)
        idx = prob.argmax(1)
        return {"label_index": idx.astype(np.int32), "probability": prob[np.arange(len(idx)), idx],
                "probabilities": prob}


def for_task(name: str, info: dict[str, Any]):
    """The objective of ``train.task`` for a dataset described by ``info`` (label names, ...)."""
    if name == "classification":
        return Classification(len(info["label_names"]))
    raise ValueError(f"unknown train.task {name!r}")
