"""The trained-model artifact: written by rank 0, read by scoring.

``<lake>/models/<name>/<run id>/``
    model.pt            state_dict, loadable with torch.load(weights_only=True)
    model.json          model spec, label names, preprocessing parameters, dataset version
    metrics.json        final train/val/test metrics
    history.json        per-epoch metrics
    training_curve.png  loss and accuracy (or RMSE) per epoch
    confusion_matrix.json, confusion_matrix.png   classification: test split, rows = true class
    config.json         resolved config of the training run
    checkpoints/        per-epoch checkpoints
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.core import lake
from pipeline.spark.cli import InputError
from pipeline.core.layout import LakeLayout, is_run_id
from pipeline.model.spec import ModelSpec


def save(uri: str, state_dict: dict, spec: dict[str, Any], metrics: dict, history: list[dict],
         config: dict, report: dict[str, Any] | None = None) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(state_dict, buf)
    lake.write_bytes(f"{uri}/model.pt", buf.getvalue())
    lake.write_json(f"{uri}/model.json", spec)
    lake.write_json(f"{uri}/metrics.json", metrics)
    lake.write_json(f"{uri}/history.json", history)
    lake.write_json(f"{uri}/config.json", config)
    png = _curve_png(history)
    if png is not None:
        lake.write_bytes(f"{uri}/training_curve.png", png)
    if report and "confusion_matrix" in report:
        lake.write_json(f"{uri}/confusion_matrix.json", report)
        png = _confusion_png(report["labels"], report["confusion_matrix"])
        if png is not None:
            lake.write_bytes(f"{uri}/confusion_matrix.png", png)


def _confusion_png(labels: list[str], cm: list[list[int]]) -> bytes | None:
    """The test confusion matrix as a picture; None without matplotlib, like the curve."""
    try:
        import matplotlib
    except ImportError:
        logging.getLogger(__name__).warning("matplotlib is not installed: no confusion_matrix.png")
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(labels)
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * k, 1 + 0.45 * k))
    ax.imshow(np.asarray(cm), cmap="Blues")
    ax.set_xticks(range(k), labels, rotation=90 if k > 6 else 0)
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted"); ax.set_ylabel("true")
    top = max(1, max(max(r) for r in cm)) if cm else 1
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i][j]), ha="center", va="center", fontsize=7,
                    color="white" if cm[i][j] > top / 2 else "black")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def _curve_png(history: list[dict]) -> bytes | None:
    """The loss and accuracy curves; None where matplotlib is not installed (a bare GPU node
    with only torch, numpy and pyarrow): the rest of the artifact does not depend on it."""
    try:
        import matplotlib
    except ImportError:
        logging.getLogger(__name__).warning("matplotlib is not installed: no training_curve.png")
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] + 1 for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(epochs, [h["train_loss"] for h in history], label="train")
    a.plot(epochs, [h["val_loss"] for h in history], label="val")
    a.set_xlabel("epoch"); a.set_ylabel("loss"); a.legend()
    # The second panel: the first metric recorded for both train and val (accuracy, rmse, ...).
    first = history[0] if history else {}
    metric = next((k[4:] for k in first if k.startswith("val_") and f"train_{k[4:]}" in first
                   and k != "val_loss"), None)
    if metric:
        b.plot(epochs, [h[f"train_{metric}"] for h in history], label="train")
        b.plot(epochs, [h[f"val_{metric}"] for h in history], label="val")
        b.set_xlabel("epoch"); b.set_ylabel(metric); b.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


class ModelNotFound(FileNotFoundError):
    pass


class BadModel(InputError):
    """The model's files are there but do not load (truncated, corrupt, or not this network)."""


def resolve(lake_root: str, ref: str) -> tuple[str, str, str]:
    """'NAME@RUN_ID' or 'NAME@latest' -> (name, run_id, uri). Raises ModelNotFound."""
    if "@" not in ref:
        raise ModelNotFound(f"model reference {ref!r} must be NAME@RUN_ID or NAME@latest")
    name, run_id = ref.split("@", 1)
    layout = LakeLayout(lake_root)
    parent = layout.models_root(name)
    if run_id == "latest":
        try:
            run_id = lake.get_latest(parent)
        except FileNotFoundError:
            raise ModelNotFound(f"no trained model named {name!r} under {parent}; run jobs/train.py first") from None

    def runs() -> list[str] | str:
        return [r for r in lake.listdir(parent) if not r.startswith("_")] or "none"

    if not is_run_id(run_id):
        raise ModelNotFound(f"model {name}@{run_id}: {run_id!r} is neither 'latest' nor a run id, and an alias "
                            f"needs the MLflow registry (tracking.enabled); runs available: {runs()}")
    uri = layout.model_run(name, run_id)
    if not lake.exists(f"{uri}/model.pt"):
        raise ModelNotFound(f"model {name}@{run_id} not found at {uri}; runs available: {runs()}")
    return name, run_id, uri


@dataclass
class LoadedModel:
    """Everything scoring needs: the network in eval mode plus its preprocessing parameters."""
    model: Any
    spec: dict[str, Any]
    name: str
    run_id: str
    device: Any

    @property
    def model_spec(self) -> ModelSpec:
        return ModelSpec.from_dict(self.spec["model"])

    @property
    def label_names(self) -> list[str]:
        return self.spec["label_names"]

    @property
    def objective(self):
        """The task's objective (pipeline/objectives.py): what scoring writes for the outputs."""
        from pipeline.model import objectives

        task = self.spec.get("task") or {"name": "classification", "info": {"label_names": self.label_names}}
        return objectives.for_task(task["name"], task["info"])

    def predict_proba(self, inputs: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Images as uint8 (N, C, H, W) or tabular features as float32 (N, F) -> (N, classes) probabilities."""
        from pipeline.model.metrics import softmax

        out = self.predict_raw(inputs, batch_size)
        return softmax(out).astype(np.float32) if len(out) else np.zeros((0, len(self.label_names)), np.float32)

    def predict_raw(self, inputs: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """The network's outputs (logits, or standardised regression values) as float32."""
        import torch

        normalise = input_normaliser(self.spec["input"], self.device)
        out = []
        with torch.inference_mode():
            for i in range(0, len(inputs), batch_size):
                x = torch.from_numpy(np.require(inputs[i:i + batch_size], requirements=["C", "W"])).to(self.device)
                x = normalise(x)
                out.append(self.model(x).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model_spec.num_classes), np.float32)


def input_normaliser(inp: dict[str, Any], device):
    """What turns a batch on the device into the network's input: uint8 pixels (the input spec
    has per-channel ``normalization``) become ``(x / 255 - mean) / std``; features are already
    standardised by preprocess and only become float."""
    import torch

    norm = inp.get("normalization")
    if norm is None:
        return lambda x: x.float()
    mean = torch.tensor(norm["mean"], device=device).view(1, -1, 1, 1)
    std = torch.tensor(norm["std"], device=device).view(1, -1, 1, 1)
    return lambda x: (x.float() / 255.0 - mean) / std


def load_model(lake_root: str, ref: str, device: str | None = None) -> LoadedModel:
    import torch

    from pipeline.model.networks import build_model

    name, run_id, uri = resolve(lake_root, ref)
    try:
        spec = lake.read_json(f"{uri}/model.json")
    except ValueError as e:
        raise BadModel(f"{uri}/model.json does not parse: {e}") from None
    model_spec = ModelSpec.from_dict(spec["model"])
    _check_factory(model_spec, name, run_id)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = build_model(model_spec)
    try:
        state = torch.load(io.BytesIO(lake.read_bytes(f"{uri}/model.pt")), weights_only=True, map_location="cpu")
        model.load_state_dict(state)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - torch's errors for a truncated or foreign file vary
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadModel(f"{uri}/model.pt does not load into {model_spec.arch}: {first}") from None
    model.to(dev).eval()
    return LoadedModel(model=model, spec=spec, name=name, run_id=run_id, device=dev)


def _check_factory(model_spec: ModelSpec, name: str, run_id: str) -> None:
    """A model built by a user's factory is rebuilt from the same import path; a different
    version of its module is logged (the state dict still has to fit)."""
    recorded = model_spec.factory
    if not recorded:
        return
    import logging

    from pipeline.model.networks import factory_version

    try:
        now = factory_version(recorded["path"])
    except ImportError as e:
        raise ModelNotFound(f"model {name}@{run_id} was built by {recorded['path']}, which does not import here "
                            f"({e}); ship the module with spark-submit --py-files") from None
    if (now["version"], now["source_sha256"]) != (recorded.get("version"), recorded.get("source_sha256")):
        logging.getLogger(__name__).warning(
            "model %s@%s was trained with %s version %s (source sha256 %s); this worker has version %s (%s)",
            name, run_id, recorded["path"], recorded.get("version"), recorded.get("source_sha256"),
            now["version"], now["source_sha256"])
