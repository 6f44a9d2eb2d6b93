"""The interface a kind of dataset implements once (images, tables, sequences).

What differs between kinds is how records are read, validated, fitted, encoded, fed to a model
and scored. ``pipeline.preprocess``, ``pipeline.train`` and ``pipeline.score`` call these methods
and nothing else kind-specific. Methods that run on the driver import Spark and pandas
themselves: a training rank imports this package with neither (a bare GPU node has only torch,
numpy and pyarrow).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import numpy as np

from pipeline.core.layout import LakeLayout

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

    from pipeline.core.config import Config, ExplainConf
    from pipeline.model.explain import Request

SPLITS = ("train", "val", "test")
Prepared = tuple[list[int], np.ndarray, list, list]  # rows that can be scored, their network inputs, reasons, details


@dataclass(frozen=True)
class Target:
    """Where preprocess writes one dataset version (every path from the lake layout)."""
    layout: LakeLayout
    dataset: str
    version: str

    @property
    def uri(self) -> str:
        return self.layout.curated_version(self.dataset, self.version)

    @property
    def quarantine(self) -> str:
        return self.layout.quarantine_version(self.dataset, self.version)

    @property
    def staging(self) -> str:
        return self.layout.curated_staging(self.dataset, self.version)

    def plan(self, step: str) -> str:
        """The task plans of a preprocess step (``stage`` or ``write``), under staging."""
        return self.layout.preprocess_plan(self.dataset, self.version, step)

    def split(self, name: str) -> str:
        return self.layout.curated_split(self.dataset, self.version, name)

    def splits(self) -> dict[str, str]:
        """Each split's directory, for the tasks that write them."""
        return {s: self.split(s) for s in SPLITS}


@dataclass
class Curated:
    """What a kind's preprocess produced: counts for the manifest, the class names, the parameters
    fitted on the train split, and the curated schema."""
    input_count: int
    output_count: int
    by_reason: dict[str, int]
    split_counts: dict[str, int]
    split_class_counts: dict[tuple[str, str], int]
    label_names: list[str]
    fitted: dict[str, Any]
    schema: dict[str, str]
    # What the run accepted but a user should hear about: {code, column, detail} each.
    warnings: list[dict[str, str]] = field(default_factory=list)
    # The train split's distribution of each feature and of the labels, for drift at scoring
    # (pipeline/core/drift.py); None where the kind computes none.
    drift_reference: dict[str, Any] | None = None


@dataclass
class Scored:
    """A kind's scored rows: ``key``, ``columns``, ``reason``, ``detail``, ``source`` (and ``used``,
    the input rows behind each output row, where outputs are not one per input row; and
    ``_drift``, pipeline/core/drift.py's VALUES, where the kind gives its dataset a drift reference)."""
    frame: DataFrame
    key: str                # the key column's name in the predictions
    columns: list[str]      # the prediction columns
    counts_used: bool = False
    # Run on the scored frame (persisted) before anything is written; raises to stop the job.
    check: Callable[[DataFrame], None] | None = None
    # Where the input rows drift compares are not the scored rows (a forecast: one window of
    # many rows in, ``horizon`` rows out): a frame of the input rows' ``_drift`` values.
    drift: DataFrame | None = None


class Kind:
    name: ClassVar[str]
    archs: ClassVar[tuple[str, ...]]      # the built-in architectures that take this input
    takes_torchvision: ClassVar[bool] = False
    augmentable: ClassVar[bool] = False
    scores_raw_frames: ClassVar[bool] = True  # prepare_frame/input_example: the MLflow pyfunc takes raw rows
    personal_columns: ClassVar[bool] = False  # takes dataset.privacy (hashed or dropped columns)

    # --- configuration -------------------------------------------------------------------------
    def check_config(self, cfg: Config) -> None:
        """Raise ConfigError, naming the key, for settings this kind cannot run with."""

    def check_task(self, task: str) -> None:
        """Raise ValueError for an ML task (classification, regression) this kind cannot train."""

    # --- preprocess (driver; Spark tasks do the work) -----------------------------------------
    def preprocess(self, spark: SparkSession, cfg: Config, source: str, target: Target) -> Curated:
        """Plan the read tasks, read, decode and validate each piece (bad records to
        ``target.quarantine``), fit on the train split, encode, and write ``target.split(...)``."""
        raise NotImplementedError

    def manifest_fields(self, cfg: Config) -> dict[str, Any]:
        """Extra manifest entries the model side needs (e.g. the image geometry)."""
        return {}

    # --- model -----------------------------------------------------------------------------------
    def input_spec(self, m: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        """(what ranks and scorers need to read and prepare inputs, the network's input shape),
        from the dataset's manifest."""
        raise NotImplementedError

    def outputs(self, m: dict[str, Any]) -> int:
        """Regression outputs per record (a forecast horizon, or 1)."""
        return 1

    def rank_decoder(self, inp: dict[str, Any]) -> Callable[[Any], np.ndarray]:
        """A training batch (a named tuple of columns from the feed) -> the network's input array."""
        return lambda b: np.asarray(b.features, dtype=np.float32)  # standardised by preprocess

    # --- scoring ---------------------------------------------------------------------------------
    def score(self, spark: SparkSession, cfg: Config, spec: dict[str, Any], source: str, date: str,
              plan_uri: str, kw: dict[str, Any]) -> Scored:
        """The date's input scored by the model of ``spec`` in Spark tasks (``kw``: lake_root,
        ref, loads, batch_size for ``predict.cached_model``; ``plan_uri``: where the driver may
        write the tasks' plans)."""
        raise NotImplementedError

    def explaining(self, spec: dict[str, Any], conf: ExplainConf) -> Request:
        """What scoring needs to explain this kind's rows (``score.explain``; README:
        Explanations): the baseline in the network's input space (the train split's means), and
        how a batch's attributions become the explanation column (reduced and named)."""
        from pipeline.core.config import ConfigError

        raise ConfigError(f"score.explain.method: {self.name} models cannot be explained")

    def explain_artifacts(self, explained: DataFrame, spec: dict[str, Any]) -> dict[str, bytes]:
        """Files for the score's MLflow run, from the published rows with their explanations."""
        return {}

    def prepare_frame(self, pdf: pd.DataFrame, spec: dict[str, Any]) -> Prepared:
        """Raw records in a pandas frame (as ``input_example`` gives) -> network inputs."""
        raise NotImplementedError(f"{self.name} models do not score raw frames outside Spark")

    def input_example(self, spec: dict[str, Any], rows: int = 2) -> pd.DataFrame:
        """A few raw records of the model's own dataset, as ``prepare_frame`` takes them."""
        raise NotImplementedError(f"{self.name} models do not score raw frames outside Spark")
