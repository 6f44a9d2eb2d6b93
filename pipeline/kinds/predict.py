"""What image and table scoring share: the model once per Python worker, and frames of prepared
inputs -> prediction rows."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from pipeline.core import drift
from pipeline.kinds.base import Prepared
from pipeline.model import artifact

# The columns each ML task's objective writes (pipeline/model/objectives.py ``predictions``).
PREDICTION_DDL = {"classification": "prediction string, label_index int, probability float, probabilities array<float>",
                  "regression": "prediction double"}


# The column drift compares with the train split's labels: the class index, or the predicted value.
DRIFT_COLUMN = {"classification": "label_index", "regression": "prediction"}


def task_name(spec: dict[str, Any]) -> str:
    """The model's ML task (classification or regression) from its artifact spec."""
    return (spec.get("task") or {}).get("name", "classification")


def scored_ddl(spec: dict[str, Any]) -> str:
    return f"key string, {PREDICTION_DDL[task_name(spec)]}, reason string, detail string, source string"


def prediction_columns(spec: dict[str, Any]) -> list[str]:
    return [c.split()[0] for c in PREDICTION_DDL[task_name(spec)].split(", ")]


# One model per Python worker process, kept across batches and tasks (Spark reuses workers).
_MODELS: dict[tuple[str, str], artifact.LoadedModel] = {}


def _task_device() -> str | None:
    """The GPU Spark assigned to this task, if any; None lets torch pick (CPU without CUDA)."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    gpus = ctx.resources().get("gpu") if ctx is not None else None
    if gpus is not None and gpus.addresses:
        return f"cuda:{gpus.addresses[0]}"
    return None


def cached_model(lake_root: str, ref: str, loads=None) -> artifact.LoadedModel:
    key = (lake_root, ref)
    if key not in _MODELS:
        _MODELS[key] = artifact.load_model(lake_root, ref, device=_task_device())
        if loads is not None:
            loads.add(1)
    return _MODELS[key]


def score_frames(frames: Iterable[pd.DataFrame], prepare: Callable[[pd.DataFrame, dict[str, Any]], Prepared],
                 key: str, lake_root: str, ref: str, loads=None, batch_size: int = 256,
                 carry: Sequence[str] = (), drift_values: Callable[[np.ndarray], np.ndarray] | None = None
                 ) -> Iterator[pd.DataFrame]:
    """mapInPandas body -> scored_ddl(spec): the objective's prediction columns, or a reason for
    rows that cannot be scored (their prediction columns are null); then the input's ``carry``
    columns; then, with ``drift_values`` (the network inputs -> one row of drift features per
    input), drift.VALUES, computed from the inputs ``prepare`` gave (null for the rows it could not)."""
    from pipeline.spark import tasks

    m = cached_model(lake_root, ref, loads)
    objective = m.objective
    for pdf in frames:
        ok, x, reasons, details = prepare(pdf, m.spec)
        preds = objective.predictions(m.predict_raw(x, batch_size)) if ok else {}
        columns: dict[str, Any] = {"key": pdf[key].values}
        for name in prediction_columns(m.spec):
            full = np.full(len(pdf), None, dtype=object)
            if ok:
                values = preds[name]
                full[ok] = [v.tolist() for v in values] if values.ndim > 1 else values
            columns[name] = full
        extra = {c: pdf[c].values for c in carry}
        if drift_values is not None:
            values = np.full(len(pdf), None, dtype=object)
            for i, v in zip(ok, drift_values(x).tolist()):
                values[i] = v
            extra[drift.VALUES] = values
        yield pd.DataFrame({**columns, "reason": reasons, "detail": details,
                            "source": (pdf["source"] if "source" in pdf else pdf[key]).values,
                            **extra}).pipe(tasks.to_spark)
