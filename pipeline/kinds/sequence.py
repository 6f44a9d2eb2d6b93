"""Sequences: time series read as (series, time, values) rows, gaps filled, cut into windows of
``window`` steps with the next ``horizon`` steps of the target as the label; a recurrent
network forecasts; scoring writes ``horizon`` future steps per series."""
from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.core import privacy
from pipeline.core.config import ConfigError
from pipeline.kinds.base import Curated, Kind, Scored, Target
from pipeline.model import explain

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from pipeline.core.config import Config, ExplainConf


class Sequence(Kind):
    name = "sequence"
    archs = ("lstm", "gru")
    # Validation, gap filling and windowing run in Spark only; the registered MLflow model is the
    # network on prepared windows (pipeline/scoring/serving.py).
    scores_raw_frames = False
    personal_columns = True  # the series column only: it names a person, its values are the data

    def check_config(self, cfg: Config) -> None:
        seq = cfg.dataset.sequence
        if cfg.train.task != "regression":
            raise ConfigError("train.task must be regression for dataset.kind=sequence")
        for key, v in [("window", seq.window), ("horizon", seq.horizon), ("stride", seq.stride)]:
            if v < 1:
                raise ConfigError(f"dataset.sequence.{key} must be >= 1, got {v}")
        if seq.max_fill < 0:
            raise ConfigError(f"dataset.sequence.max_fill must be >= 0, got {seq.max_fill}")
        for c, how in cfg.dataset.privacy.pii_columns.items():
            if c != seq.series_column or how != "hash":
                raise ConfigError(f"dataset.privacy.pii_columns.{c}: a sequence's only personal column is its "
                                  f"series column (dataset.sequence.series_column: {seq.series_column!r}), hashed; "
                                  f"its time, target and features are the series itself")
        privacy.from_config(cfg.dataset.privacy)  # the key: exit 2 before anything runs when it is missing

    def check_task(self, task: str) -> None:
        if task != "regression":
            raise ValueError("sequence datasets train with train.task=regression")

    def preprocess(self, spark: SparkSession, cfg: Config, source: str, target: Target) -> Curated:
        from pipeline.ingest import sequence

        stats, label_names, fitted, schema, reference = sequence.preprocess(
            spark, cfg, source, target.splits(), target.quarantine,
            partial(_drift_reference, columns=sequence.value_columns(cfg.dataset.sequence), bins=cfg.score.drift.bins))
        return Curated(input_count=stats["input_count"], output_count=stats["output_count"],
                       by_reason=stats["by_reason"], split_counts=stats["split_counts"],
                       split_class_counts=stats["split_class_counts"], label_names=label_names, fitted=fitted,
                       schema=schema, drift_reference=reference)

    def input_spec(self, m: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        seq = m["sequence"]
        return ({"kind": self.name, "field": "features", "sequence": seq, **({"privacy": m["privacy"]} if "privacy" in m else {})},
                [seq["window"], len(seq["columns"])])

    def outputs(self, m: dict[str, Any]) -> int:
        return int(m["sequence"]["horizon"])

    def score(self, spark: SparkSession, cfg: Config, spec: dict[str, Any], source: str, date: str,
              plan_uri: str, kw: dict[str, Any]) -> Scored:
        """One row per series and future step; ``used`` counts the history rows behind them."""
        from pipeline.ingest import sequence
        from pipeline.kinds import predict

        load = partial(predict.cached_model, kw["lake_root"], kw["ref"], kw.get("loads"))
        ex = kw["explain"]
        explained = None if ex is None else (partial(predict.explained_columns, ex), predict.explain_ddl(ex))
        frame, values = sequence.score(spark, spec, source, load, explained)
        return Scored(frame.withColumnRenamed("series", "key"), "series",
                      ["step", "time", "prediction", *([ex.column] if ex else [])], counts_used=True, drift=values)

    def explaining(self, spec: dict[str, Any], conf: ExplainConf) -> explain.Request:
        """Attributions of the forecast's sum over the horizon, summed over the window per input
        column (the target, then the covariates), from the train split's means (0 once standardised)."""
        seq = spec["input"]["sequence"]
        names = list(seq["columns"])
        return explain.Request(conf.method, conf.n_steps, np.zeros(seq["window"] * len(names)), "top_features",
                               explain.TOP_FEATURES_DDL, partial(_top_columns, names=names, k=conf.top_k))


def _top_columns(attr: np.ndarray, names: list[str], k: int) -> list:
    """(windows, window x columns) attributions -> each window's top ``k`` input columns."""
    return explain.top_features(attr.reshape(len(attr), -1, len(names)).sum(1), names, k)


def _drift_reference(train_rows: DataFrame, columns: list[str], bins: int) -> dict[str, Any]:
    """The train split's reference for drift (pipeline/core/drift.py): quantile bins of each value
    column over the train rows (the values themselves, in original units: every row of a window
    is a row of the series), and, for the forecasts, the target's bins again."""
    from pipeline.kinds import drift as spark_drift

    train_rows = train_rows.persist()
    try:
        features = spark_drift.numeric_features(train_rows, columns, bins)
    finally:
        train_rows.unpersist()
    return {"features": features, "prediction": {k: v for k, v in features[columns[0]].items() if k != "position"}}
