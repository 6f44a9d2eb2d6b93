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
import numpy as np
import pandas as pd

OUTPUT_COLUMNS = ["prediction", "label_index", "probability", "probabilities", "reason", "detail"]


def _tabular_frame(pdf: pd.DataFrame, m) -> pd.DataFrame:
    """Raw tabular records -> the frame prepare_features takes (reason, detail, features)."""
    import pyarrow as pa

    from pipeline import tabular
    from pipeline.config import TabularConf

    tab = TabularConf(**m.spec["input"]["columns"])
    needed = [tab.id_column, *tab.numeric, *tab.categorical]
    missing = [c for c in needed if c not in pdf.columns]
    if missing:
        raise ValueError(f"input frame lacks the columns {missing}; the model needs {needed}")
    cols = {c: tabular._as_text(pa.chunked_array([pa.array(pdf[c].tolist())]), c in tab.numeric) for c in needed}
    cols[tab.label_column] = pa.chunked_array([pa.nulls(len(pdf), pa.string())])
    rec = tabular.validate(pa.table(cols), [], tab, label_required=False)
    ok = np.flatnonzero(rec.good())
    features = np.full(len(rec), None, dtype=object)
    if len(ok):
        x = tabular.encode(rec.take(ok), tab, m.spec["input"]["tabular"])
        for j, i in enumerate(ok):
            features[i] = x[j]
    return pd.DataFrame({"reason": rec.reason, "detail": rec.detail, "features": features})


def predict_frame(m, pdf: pd.DataFrame) -> pd.DataFrame:
    """Score raw inputs with a LoadedModel (pipeline.artifact), preparing them as jobs/score.py does."""
    from pipeline import score

    pdf = pdf.reset_index(drop=True)
    if m.spec["input"]["kind"] == "images":
        ok, x, reasons, details = score.prepare_images(pdf, m)
    else:
        ok, x, reasons, details = score.prepare_features(_tabular_frame(pdf, m), m)
    probs = m.predict_proba(x)
    names = m.label_names
    pred, prob, all_probs = [None] * len(pdf), [np.nan] * len(pdf), [None] * len(pdf)
    index = np.full(len(pdf), -1, dtype=np.int64)
    for j, i in enumerate(ok):
        top = int(probs[j].argmax())
        pred[i], index[i], prob[i], all_probs[i] = names[top], top, float(probs[j, top]), probs[j].astype(float).tolist()
    return pd.DataFrame({"prediction": pred, "label_index": index, "probability": prob, "probabilities": all_probs,
                         "reason": reasons, "detail": details})


# The frame in and out is checked against the logged signature; no type hints needed for that.
warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method")


class RawInputModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: raw inputs in, predictions out (see the module docstring)."""

    def load_context(self, context):
        import mlflow.pytorch
        import torch

        from pipeline.artifact import LoadedModel

        spec = json.loads(Path(context.artifacts["spec"]).read_text())
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        net = mlflow.pytorch.load_model(context.artifacts["torch_model"], map_location=device)
        self.model = LoadedModel(model=net.to(device), spec=spec, name=spec["model_name"],
                                 run_id=spec["run_id"], device=device)

    def predict(self, context, model_input, params=None):
        return predict_frame(self.model, model_input)


def input_example(spec: dict[str, Any], rows: int = 2) -> pd.DataFrame:
    """A few raw records of the model's own dataset (its preprocess source), as score reads them."""
    from pipeline import lake, manifest, tabular
    from pipeline.config import TabularConf

    source = manifest.read(spec["dataset"]["uri"])["source"]
    files = sorted(u for u, size in lake.list_files(source) if size > 0)
    if spec["input"]["kind"] == "images":
        return pd.DataFrame({"content": [lake.read_bytes(u) for u in files[:rows]]})
    tab = TabularConf(**spec["input"]["columns"])
    t, _ = tabular.read_piece((files[0], 0, -1), tab, label_required=False)
    pdf = t.slice(0, rows).to_pandas()
    for c in tab.numeric:
        pdf[c] = pd.to_numeric(pdf[c], errors="coerce")
    return pdf[[tab.id_column, *tab.numeric, *tab.categorical]]


def _network_input(m, example: pd.DataFrame) -> np.ndarray:
    """The example's rows as the network takes them (float32, normalised as predict_proba does)."""
    from pipeline import score

    if m.spec["input"]["kind"] == "images":
        _, x, _, _ = score.prepare_images(example.reset_index(drop=True), m)
        norm = m.spec["input"]["normalization"]
        shape = (1, -1, 1, 1)
        return ((x.astype(np.float32) / 255.0 - np.reshape(norm["mean"], shape)) / np.reshape(norm["std"], shape)
                ).astype(np.float32)
    _, x, _, _ = score.prepare_features(_tabular_frame(example, m), m)
    return x


def _signature(example: pd.DataFrame, output: pd.DataFrame):
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types.schema import Array, ColSpec, Schema

    inputs = infer_signature(example).inputs
    outputs = Schema([ColSpec("string", "prediction"), ColSpec("long", "label_index"),
                      ColSpec("double", "probability"), ColSpec(Array("double"), "probabilities"),
                      ColSpec("string", "reason", required=False), ColSpec("string", "detail", required=False)])
    assert list(output.columns) == OUTPUT_COLUMNS
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
    import mlflow.pytorch
    from mlflow import MlflowClient

    from pipeline import artifact

    m = artifact.load_model(lake_root, f"{name}@{lake_run_id}", device="cpu")
    example = input_example(m.spec)
    signature = _signature(example, predict_frame(m, example))
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    with tempfile.TemporaryDirectory() as d:
        # The network alone, as the PyTorch flavor sees it: the prepared, normalised tensor in.
        # (pt2: a torch.export graph, traced in eval mode; no pickled classes)
        mlflow.pytorch.save_model(m.model, f"{d}/torch_model", serialization_format="pt2",
                                  input_example=_network_input(m, example), pip_requirements=_requirements())
        Path(d, "model.json").write_text(json.dumps(m.spec))
        package = _copy_package(Path(d, "code"))
        with mlflow.start_run(run_id=mlflow_run_id):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(package / "pyfunc_entry.py"),
                artifacts={"torch_model": f"{d}/torch_model", "spec": f"{d}/model.json"},
                code_paths=[str(package)],
                signature=signature, input_example=example, pip_requirements=_requirements(),
                registered_model_name=name)
    version_ = str(info.registered_model_version)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    for k, v in {"lake_run_id": lake_run_id, "dataset": m.spec["dataset"]["name"],
                 "dataset_version": m.spec["dataset"]["version"]}.items():
        client.set_model_version_tag(name, version_, k, v)
    return version_
