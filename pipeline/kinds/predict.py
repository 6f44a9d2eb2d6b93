"""What image and table scoring share: the model once per Python worker, and frames of prepared
inputs -> prediction rows."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from pipeline.core import drift
from pipeline.kinds.base import Prepared
from pipeline.model import artifact
from pipeline.model import explain as explaining

# The columns each ML task's objective writes (pipeline/model/objectives.py ``predictions``).
PREDICTION_DDL = {"classification": "prediction string, label_index int, probability float, probabilities array<float>",
                  "regression": "prediction double"}


# The column drift compares with the train split's labels: the class index, or the predicted value.
DRIFT_COLUMN = {"classification": "label_index", "regression": "prediction"}


def task_name(spec: dict[str, Any]) -> str:
    """The model's ML task (classification or regression) from its artifact spec."""
    return (spec.get("task") or {}).get("name", "classification")


def output_ddl(spec: dict[str, Any], explain: explaining.Request | None = None) -> str:
    """The prediction columns, then the explanation column and its hidden completeness columns."""
    ddl = PREDICTION_DDL[task_name(spec)]
    return ddl if explain is None else f"{ddl}, {explain_ddl(explain)}"


def explain_ddl(explain: explaining.Request) -> str:
    return f"{explain.column} {explain.ddl}, {explaining.HIDDEN_DDL}"


def scored_ddl(spec: dict[str, Any], explain: explaining.Request | None = None) -> str:
    return f"key string, {output_ddl(spec, explain)}, reason string, detail string, source string"


def prediction_columns(spec: dict[str, Any], explain: explaining.Request | None = None) -> list[str]:
    """The columns the predictions publish (the explanation's too, where one is asked for)."""
    return [c.split()[0] for c in PREDICTION_DDL[task_name(spec)].split(", ")] + ([explain.column] if explain else [])


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
                 carry: Sequence[str] = (), drift_values: Callable[[np.ndarray], np.ndarray] | None = None,
                 explain: explaining.Request | None = None) -> Iterator[pd.DataFrame]:
    """mapInPandas body -> scored_ddl(spec, explain): the objective's prediction columns (and the
    explanation's, computed in the same batch), or a reason for rows that cannot be scored
    (their prediction columns are null); then the input's ``carry`` columns; then, with
    ``drift_values`` (the network inputs -> one row of drift features per input), drift.VALUES,
    computed from the inputs ``prepare`` gave (null for the rows it could not)."""
    from pipeline.spark import tasks

    m = cached_model(lake_root, ref, loads)
    objective = m.objective
    for pdf in frames:
        ok, x, reasons, details = prepare(pdf, m.spec)
        out = m.predict_raw(x, batch_size) if ok else None
        preds = objective.predictions(out) if ok else {}
        columns: dict[str, Any] = {"key": pdf[key].values}
        for name in prediction_columns(m.spec):
            full = np.full(len(pdf), None, dtype=object)
            if ok:
                values = preds[name]
                full[ok] = [v.tolist() for v in values] if values.ndim > 1 else values
            columns[name] = full
        if explain is not None:
            columns.update(explained_columns(explain, m, x, out, ok, len(pdf)))
        extra = {c: pdf[c].values for c in carry}
        if drift_values is not None:
            values = np.full(len(pdf), None, dtype=object)
            for i, v in zip(ok, drift_values(x).tolist()):
                values[i] = v
            extra[drift.VALUES] = values
        yield pd.DataFrame({**columns, "reason": reasons, "detail": details,
                            "source": (pdf["source"] if "source" in pdf else pdf[key]).values,
                            **extra}).pipe(tasks.to_spark)


def explained_columns(explain: explaining.Request, m: artifact.LoadedModel, x: np.ndarray, out: np.ndarray | None,
                      ok: list[int], n: int) -> dict[str, np.ndarray]:
    """The explanation column and its completeness columns for the ``ok`` rows of ``n`` (null elsewhere)."""
    values = np.full(n, None, dtype=object)
    attributed, explained = np.full(n, np.nan), np.full(n, np.nan)
    if ok and out is not None:
        reduced, attributed[ok], explained[ok] = explain.run(m, x, out)
        for i, v in zip(ok, reduced):  # one by one: numpy would unpack nested lists
            values[i] = v
    return {explain.column: values, explaining.ATTRIBUTED: attributed, explaining.EXPLAINED: explained}
