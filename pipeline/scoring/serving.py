"""The trained model as an MLflow model that takes raw inputs.

``mlflow.pyfunc.load_model("models:/digits-cnn@champion").predict(frame)`` scores a pandas frame
of raw inputs the way ``jobs/score.py`` does, with the same preparation code (pipeline/score.py:
image decoding, or the tabular validation and encoder with the parameters of the model's
dataset version):

    images   a ``content`` column of encoded image bytes (PNG, JPEG, ...)
    tabular  the declared id, numeric and categorical columns (``dataset.tabular``), as text or numbers

and returns ``prediction``, ``label_index``, ``probability``, ``probabilities``, with ``reason`` and
``detail`` set (and no prediction) for a row that cannot be scored.

Inside, the network is an MLflow PyTorch model (``mlflow.pytorch``, artifact ``torch_model``, saved
as a ``torch.export`` graph with its own signature and input example: the normalised tensor), and
``model.json`` holds the preprocessing parameters. The wrapper is built from code
(pipeline/pyfunc_entry.py) and the ``pipeline`` package travels in the model's ``code/``
directory: loading needs the stack (pyproject.toml), not this checkout, and unpickles nothing.
"""
from __future__ import annotations

import json
import tempfile
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow.pyfunc
from mlflow.pyfunc import PythonModel
import numpy as np
import pandas as pd

from pipeline.kinds import predict

def predict_frame(m, pdf: pd.DataFrame) -> pd.DataFrame:
    """Score raw inputs with a LoadedModel (pipeline.model.artifact), prepared by the model's
    kind as jobs/score.py prepares them: the objective's columns, then reason and detail. Rows
    that cannot be scored get a reason, a null prediction, NaN numbers and label_index -1."""
    from pipeline import kinds

    pdf = pdf.reset_index(drop=True)
    ok, x, reasons, details = kinds.get(m.spec["input"]["kind"]).prepare_frame(pdf, m.spec)
    preds = m.objective.predictions(m.predict_raw(x)) if ok else {}
    empty = {"prediction": None, "label_index": -1, "probability": np.nan, "probabilities": None}
    if predict.task_name(m.spec) == "regression":
        empty["prediction"] = np.nan
    out: dict[str, Any] = {}
    for name in predict.prediction_columns(m.spec):
        column = [empty[name]] * len(pdf)
        for j, i in enumerate(ok):
            v = preds[name][j]
            column[i] = v.astype(float).tolist() if isinstance(v, np.ndarray) else v.item() if hasattr(v, "item") else v
        out[name] = column
    frame = pd.DataFrame({**out, "reason": reasons, "detail": details})
    if "label_index" in frame:
        frame["label_index"] = frame["label_index"].astype(np.int64)
    return frame


# The frame in and out is checked against the logged signature; no type hints needed for that.
warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method")


class RawInputModel(PythonModel):
    """pyfunc wrapper: raw inputs in, predictions out (see the module docstring)."""

    def load_context(self, context):
        import mlflow.pytorch
        import torch

        from pipeline.model.artifact import LoadedModel

        spec = json.loads(Path(context.artifacts["spec"]).read_text())
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        net = mlflow.pytorch.load_model(context.artifacts["torch_model"], map_location=device)
        self.model = LoadedModel(model=net.to(device), spec=spec, name=spec["model_name"],
                                 run_id=spec["run_id"], device=device)

    def predict(self, context, model_input, params=None):
        return predict_frame(self.model, model_input)


def _network_input(m, example: pd.DataFrame) -> np.ndarray:
    """The example's rows as the network takes them (float32, normalised as predict_raw does)."""
    import torch

    from pipeline import kinds
    from pipeline.model.artifact import input_normaliser

    _, x, _, _ = kinds.get(m.spec["input"]["kind"]).prepare_frame(example.reset_index(drop=True), m.spec)
    return input_normaliser(m.spec["input"], "cpu")(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def _signature(example: pd.DataFrame, output: pd.DataFrame, task: str):
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types.schema import Array, ColSpec, Schema

    inputs = infer_signature(example).inputs
    columns = {"classification": [ColSpec("string", "prediction"), ColSpec("long", "label_index"),
                                  ColSpec("double", "probability"), ColSpec(Array("double"), "probabilities")],
               "regression": [ColSpec("double", "prediction")]}[task]
    outputs = Schema([*columns, ColSpec("string", "reason", required=False),
                      ColSpec("string", "detail", required=False)])
    assert list(output.columns) == [c.name for c in columns] + ["reason", "detail"]
    return ModelSignature(inputs=inputs, outputs=outputs)


def _requirements() -> list[str]:
    out = []
    for pkg in ("torch", "mlflow-skinny", "numpy", "pandas", "pyarrow", "pillow", "pyspark", "fsspec", "pyyaml",
                "cloudpickle"):
        try:
            out.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            pass
    return out


def _copy_package(dest: Path) -> Path:
    """A plain-directory copy of the ``pipeline`` package, wherever it is imported from (a source
    tree, site-packages, or the ``--py-files`` zip on a cluster's driver)."""
    from importlib.resources import files

    def copy(src, to: Path) -> None:
        to.mkdir(parents=True, exist_ok=True)
        for item in src.iterdir():
            if item.is_dir():
                if item.name != "__pycache__":
                    copy(item, to / item.name)
            elif not item.name.endswith((".pyc", ".pyo")):
                (to / item.name).write_bytes(item.read_bytes())

    copy(files("pipeline"), dest / "pipeline")
    return dest / "pipeline"


def log_model(tracking_uri: str, mlflow_run_id: str, lake_root: str, name: str, lake_run_id: str) -> str:
    """Log the lake artifact name@lake_run_id into the MLflow run as ``model`` and register it as a
    new version of ``name``. Returns the version."""
    import mlflow
    from mlflow import MlflowClient

    from pipeline import kinds
    from pipeline.model import artifact

    m = artifact.load_model(lake_root, f"{name}@{lake_run_id}", device="cpu")
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    kind = kinds.get(m.spec["input"]["kind"])
    if not kind.scores_raw_frames:
        info = _log_network(m, name, mlflow_run_id)
    else:
        info = _log_raw_input_model(m, name, mlflow_run_id, kind.input_example(m.spec))
    version_ = str(info.registered_model_version)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    for k, v in {"lake_run_id": lake_run_id, "dataset": m.spec["dataset"]["name"],
                 "dataset_version": m.spec["dataset"]["version"]}.items():
        client.set_model_version_tag(name, version_, k, v)
    return version_


def _log_network(m, name: str, mlflow_run_id: str):
    """The PyTorch flavor alone, registered: prepared inputs in (for sequences, float32 windows of
    (window, features) standardised with model.json's normalization), the network's outputs out
    (regression: standardised; times label_stats std plus mean gives the target's units)."""
    import mlflow
    import mlflow.pytorch

    example = np.zeros([2, *m.model_spec.input_shape], np.float32)
    with mlflow.start_run(run_id=mlflow_run_id):
        mlflow.log_dict(m.spec, "model.json")
        return mlflow.pytorch.log_model(m.model, name="model", serialization_format="pt2", input_example=example,
                                        pip_requirements=_requirements(), registered_model_name=name)


def _log_raw_input_model(m, name: str, mlflow_run_id: str, example: pd.DataFrame):
    """The pyfunc that takes raw rows (RawInputModel) around the PyTorch flavor."""
    import mlflow
    import mlflow.pytorch

    signature = _signature(example, predict_frame(m, example), predict.task_name(m.spec))
    with tempfile.TemporaryDirectory() as d:
        # The network alone, as the PyTorch flavor sees it: the prepared, normalised tensor in.
        # (pt2: a torch.export graph, traced in eval mode; no pickled classes)
        mlflow.pytorch.save_model(m.model, f"{d}/torch_model", serialization_format="pt2",
                                  input_example=_network_input(m, example), pip_requirements=_requirements())
        Path(d, "model.json").write_text(json.dumps(m.spec))
        package = _copy_package(Path(d, "code"))
        with mlflow.start_run(run_id=mlflow_run_id):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(package / "scoring" / "pyfunc_entry.py"),
                artifacts={"torch_model": f"{d}/torch_model", "spec": f"{d}/model.json"},
                code_paths=[str(package)],
                signature=signature, input_example=example, pip_requirements=_requirements(),
                registered_model_name=name)
    return info
