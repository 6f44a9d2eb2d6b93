"""What differs between task types, behind one small interface.

An objective gives the training loop its loss and output size, the metrics of a whole split,
and the columns scoring writes. The loop itself never asks which task it is training.

- ``loss(out, y)``: torch, mean over the batch, computed in fp32.
- ``batch_sums(out, y)``: running sums of a training batch (torch), turned into train metrics
  by ``train_metrics(sums, n)`` after they are summed over ranks.
- ``metrics(out, y)``: numpy, on the outputs and labels of every row of a split (the trainer
  gathers them from all ranks first, so each row counts exactly once); its keys are
  ``metric_names`` and include ``loss``. ``report(out, y)``: what else the artifact keeps
  (the confusion matrix).
- ``predictions(out)``: numpy columns that scoring writes.
- ``default_monitor`` and ``higher_is_better(metric)``: for picking the best epoch.

``info`` holds plain values (it travels to the ranks): ``label_names`` and ``class_weights``
for classification; ``label_stats`` ({mean, std} of the train split), ``loss`` and ``outputs``
(values predicted per row, the forecast horizon for sequences) for regression.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.model import metrics as M
from pipeline.model.spec import ModelSpec

if TYPE_CHECKING:
    import torch  # imported where used: this module loads without torch

TASKS = ("classification", "regression")
LOWER_IS_BETTER = ("loss", "rmse", "mae")


def higher_is_better(metric: str) -> bool:
    return not metric.endswith(LOWER_IS_BETTER)


class Classification:
    name = "classification"
    label_dtype = np.int64
    default_monitor = "val_accuracy"

    def __init__(self, info: dict[str, Any]):
        self.label_names = list(info["label_names"])
        w = info.get("class_weights")
        self.class_weights = None if w is None else np.asarray(w, np.float64)
        self._weight_tensor: torch.Tensor | None = None

    train_names = ("accuracy",)

    @property
    def metric_names(self) -> tuple[str, ...]:
        per_class = [f"{m}_{n}" for n in self.label_names for m in ("precision", "recall")]
        return ("loss", "accuracy", "macro_f1", *per_class, *(("roc_auc", "pr_auc") if len(self.label_names) == 2 else ()))

    def output_size(self, num_labels: int | None = None) -> int:
        return num_labels if num_labels is not None else len(self.label_names)

    def batch_sums(self, out, y):
        import torch

        return torch.stack([(out.detach().argmax(1) == y).sum().double()])

    def train_metrics(self, sums: np.ndarray, n: float) -> dict[str, float]:
        return {"accuracy": float(sums[0] / max(n, 1.0))}

    def loss(self, out, y):
        import torch
        import torch.nn.functional as F

        weight = None
        if self.class_weights is not None:
            if self._weight_tensor is None or self._weight_tensor.device != out.device:
                self._weight_tensor = torch.tensor(self.class_weights, dtype=torch.float32, device=out.device)
            weight = self._weight_tensor
        return F.cross_entropy(out.float(), y, weight=weight)

    def metrics(self, out: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """loss, accuracy, macro-F1, per-class precision and recall; ROC AUC and PR AUC (the
        second class is the positive one) when there are two classes."""
        k = len(self.label_names)
        y = np.asarray(y, np.int64)
        pred = out.argmax(1)
        cm = M.confusion_matrix(y, pred, k)
        precision, recall, f1 = M.precision_recall_f1(cm)
        res = {"loss": M.log_loss(out, y, self.class_weights),
               "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
               "macro_f1": float(f1.mean())}
        for name, p, r in zip(self.label_names, precision, recall):
            res[f"precision_{name}"] = float(p)
            res[f"recall_{name}"] = float(r)
        if k == 2:
            score = M.softmax(out)[:, 1]
            res["roc_auc"] = M.roc_auc(y, score)
            res["pr_auc"] = M.average_precision(y, score)
        return res

    def report(self, out: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        """The confusion matrix (rows: true class, columns: predicted), for the artifact."""
        cm = M.confusion_matrix(np.asarray(y, np.int64), out.argmax(1), len(self.label_names))
        return {"labels": self.label_names, "confusion_matrix": cm.tolist()}

    def predictions(self, out: np.ndarray) -> dict[str, np.ndarray]:
        probs = M.softmax(out).astype(np.float32)
        idx = probs.argmax(1).astype(np.int32) if len(probs) else np.zeros(0, np.int32)
        names = np.asarray(self.label_names, dtype=object)
        return {"prediction": names[idx], "label_index": idx,
                "probability": probs[np.arange(len(idx)), idx], "probabilities": probs}

    # What explanations explain (pipeline/model/explain.py): the predicted class's logit.
    def explained_forward(self, model):
        return model

    def explained_target(self, out: np.ndarray) -> np.ndarray | None:
        return out.argmax(1)

    higher_is_better = staticmethod(higher_is_better)


class Regression:
    """A numeric label. The network predicts the label standardised with the train split's mean
    and std; metrics and predictions are in the label's original units."""

    name = "regression"
    label_dtype = np.float32
    default_monitor = "val_rmse"
    LOSSES = ("mse", "mae", "huber")

    def __init__(self, info: dict[str, Any]):
        stats = info["label_stats"]
        self.mean, self.std = float(stats["mean"]), float(stats["std"]) or 1.0
        self.loss_name = info.get("loss", "mse")
        if self.loss_name not in self.LOSSES:
            raise ValueError(f"train.loss={self.loss_name!r} is not a regression loss; use one of {list(self.LOSSES)}")
        self.outputs = int(info.get("outputs", 1))

    metric_names = ("loss", "rmse", "mae", "r2")
    train_names = ("rmse",)

    def output_size(self, num_labels: int | None = None) -> int:
        return self.outputs

    def batch_sums(self, out, y):
        """Squared error in the label's units, averaged over the outputs of each row."""
        err = (out.detach().float() * self.std + self.mean) - y.float().reshape(out.shape)
        return (err.double() ** 2).mean(dim=1).sum().reshape(1)

    def train_metrics(self, sums: np.ndarray, n: float) -> dict[str, float]:
        return {"rmse": float(np.sqrt(sums[0] / max(n, 1.0)))}

    def loss(self, out, y):
        import torch.nn.functional as F

        target = ((y.float() - self.mean) / self.std).reshape(out.shape)
        out = out.float()
        if self.loss_name == "mae":
            return F.l1_loss(out, target)
        if self.loss_name == "huber":
            return F.huber_loss(out, target)
        return F.mse_loss(out, target)

    def to_units(self, out: np.ndarray) -> np.ndarray:
        return out.astype(np.float64) * self.std + self.mean

    def metrics(self, out: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """loss (in standardised units, as trained), RMSE, MAE and R² in the label's units."""
        import torch

        y = np.asarray(y, np.float64).reshape(out.shape)
        with torch.no_grad():
            loss = float(self.loss(torch.from_numpy(out.astype(np.float32)), torch.from_numpy(y))) if len(y) else float("nan")
        return {"loss": loss, **M.regression(y, self.to_units(out))}

    def report(self, out: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        return {}

    def predictions(self, out: np.ndarray) -> dict[str, np.ndarray]:
        pred = self.to_units(out)
        if self.outputs == 1:
            return {"prediction": pred.reshape(-1)}
        return {"prediction": pred}  # (rows, horizon): one value per future step

    # What explanations explain (pipeline/model/explain.py): the prediction in the label's units,
    # summed over the outputs (a forecast's horizon).
    def explained_forward(self, model):
        return lambda x: (model(x) * self.std + self.mean).sum(1)

    def explained_target(self, out: np.ndarray) -> np.ndarray | None:
        return None

    higher_is_better = staticmethod(higher_is_better)


def for_task(name: str, info: dict[str, Any]):
    if name == "classification":
        return Classification(info)
    if name == "regression":
        return Regression(info)
    raise ValueError(f"unknown train.task {name!r}; use one of {list(TASKS)}")



# --- planning a run (driver side) ----------------------------------------------------------------

class TaskSetupError(ValueError):
    """The dataset version does not fit the configured task or architecture."""


def task_info(train: Any, m: dict[str, Any], outputs: int = 1) -> dict[str, Any]:
    """The plain values ``for_task`` needs, from the train config and the dataset's manifest
    (``outputs``: regression outputs per record, which the dataset's kind decides)."""
    if train.task == "classification":
        names = m["label_names"]
        weights = None
        if train.class_weights == "auto":
            counts = m["splits"]["train"]["class_counts"]
            weights = M.balanced_class_weights([counts.get(n, 0) for n in names]).tolist()
        return {"label_names": names, "class_weights": weights}
    stats = m.get("label_stats")
    if not stats:
        raise TaskSetupError(f"dataset {m['dataset']} v={m['version']} has no label statistics: preprocess it with "
                             f"train.task=regression (a numeric label) before training a regression model")
    return {"label_stats": stats, "loss": train.loss, "outputs": outputs}


def model_spec(train: Any, kind: Any, shape: list[int], objective) -> ModelSpec:
    """The model spec saved in the artifact (networks.build_model rebuilds the network from it);
    ``kind`` (pipeline.kinds) says which architectures take its input."""
    arch = train.arch
    builtin = ":" not in arch
    if builtin and arch not in kind.archs:
        raise TaskSetupError(f"train.arch={arch!r} does not take {kind.name} input; use one of {list(kind.archs)}, "
                             f"{'torchvision:<name>, ' if kind.takes_torchvision else ''}or module.path:factory")
    if arch.startswith("torchvision:") and not kind.takes_torchvision:
        raise TaskSetupError(f"train.arch={arch!r} needs image input; this dataset is {kind.name}")
    recurrent = arch in ("lstm", "gru")
    factory = None
    if not builtin and not arch.startswith("torchvision:"):
        from pipeline.model.networks import factory_version, import_factory

        try:
            import_factory(arch)
        except ValueError as e:
            raise TaskSetupError(str(e)) from None
        factory = factory_version(arch)
    return ModelSpec(arch=arch, input_shape=list(shape), num_classes=objective.output_size(), task=objective.name,
                     hidden=list(train.hidden) if recurrent else None,
                     predict_change=bool(train.predict_change) if recurrent else False, factory=factory,
                     head="pool" if arch == "cnn" else None)
