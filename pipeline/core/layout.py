"""Where everything lives in the lake: the one object that builds lake paths.

Every path under ``lake.root`` is made here, and every value that goes into one is checked
first (a name, a run id, an ISO date: no ``..``, no separators, nothing empty), so a value from
the command line or a config can never name a place outside the lake::

    curated/<dataset>/_latest                        -> "v=<run id>" of the newest complete version
    curated/<dataset>/v=<run id>/{train,val,test}/   curated splits (+ _manifest.json)
    curated/<dataset>/v=<run id>/_staging/[_plan|_write]   preprocess' task plans, removed at the end
    quarantine/<dataset>/<run id>/                   bad records of a preprocess run
    quarantine/<dataset>/score-<job id>/             bad records of a score job
    models/<model>/_latest                           -> run id of the newest finished training run
    models/<model>/<run id>/[checkpoints/]           the artifact (pipeline/model/artifact.py)
    predictions/<model>/dt=<YYYY-MM-DD>/             published predictions (+ _manifest.json)
    predictions/<model>/_staging/<job id>/[dt=<date>|_plan]   a score job's work, swapped in at the end
    predictions/<model>/_trash/<job id>/             the partition a score job replaced, until removed
    raw/<dataset>/holdout_labels/dt=<date>[.csv]     the true labels of the sample data's held-out set
    mlflow/mlflow.db, mlflow/artifacts/              the embedded MLflow store (tracking.uri "")

Nothing here imports Spark or torch: the layout is used on the driver, on executors and in tests.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import date as _date
from typing import Any

LATEST = "_latest"
STAGING = "_staging"
TRASH = "_trash"
LOCKS = "_locks"
ELASTIC = "_elastic"
MLFLOW = "mlflow"
REGISTRY_PREFIX = "models:/"
SPLITS = ("train", "val", "test")

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_RUN_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")  # pipeline.core.lake.new_run_id()
_VERSION_PREFIX = "v="


class InvalidValue(ValueError):
    """A malformed value from the command line or a config (a date, a name, a run id): the
    message names the value, what it is, and the rule it breaks."""

    def __init__(self, value: Any, what: str, rule: str):
        self.value, self.what, self.rule = value, what, rule
        super().__init__(f"{what} {value!r} is invalid: {rule}")


def validate_date(s: Any, what: str = "date") -> str:
    """An ISO calendar date, YYYY-MM-DD, that exists."""
    rule = "expected an ISO date YYYY-MM-DD that exists, e.g. 2026-11-22"
    if not isinstance(s, str) or not _DATE.match(s):
        raise InvalidValue(s, what, rule)
    try:
        _date.fromisoformat(s)
    except ValueError:
        raise InvalidValue(s, what, rule) from None
    return s


def validate_name(s: Any, what: str) -> str:
    """A dataset name, model name or alias: one path component, safe on every filesystem."""
    if not isinstance(s, str) or not _NAME.match(s) or ".." in s:
        raise InvalidValue(s, what, "expected 1-64 characters of letters, digits, '.', '_' or '-', starting "
                                    "with a letter or digit, without '..'")
    return s


def validate_run_id(s: Any, what: str = "run id") -> str:
    """A run id as pipeline.core.lake.new_run_id() makes them: 20261122T031500Z-1a2b3c."""
    if not isinstance(s, str) or not _RUN_ID.match(s):
        raise InvalidValue(s, what, "expected a run id YYYYMMDDTHHMMSSZ-xxxxxx (6 hex digits), "
                                    "e.g. 20261122T031500Z-1a2b3c")
    return s


def is_run_id(s: str) -> bool:
    return bool(_RUN_ID.match(s))


def validate_version(s: Any, what: str = "dataset version") -> str:
    """A dataset version, 'v=<run id>' or the bare run id; returns the run id."""
    if isinstance(s, str) and s.startswith(_VERSION_PREFIX):
        s = s[len(_VERSION_PREFIX):]
    return validate_run_id(s, what)


def version_dir_name(version: str) -> str:
    """'v=<run id>': the directory (and the curated _latest pointer's content) of a dataset version."""
    return _VERSION_PREFIX + validate_version(version)


def validate_model_ref(ref: Any, what: str = "model reference") -> str:
    """NAME@RUN_ID, NAME@latest, NAME@ALIAS or models:/NAME@ALIAS: NAME and the part after @
    are checked as names (a run id and 'latest' are names too)."""
    rule = "expected NAME@RUN_ID, NAME@latest, NAME@ALIAS or models:/NAME@ALIAS"
    if not isinstance(ref, str):
        raise InvalidValue(ref, what, rule)
    body = ref[len(REGISTRY_PREFIX):] if ref.startswith(REGISTRY_PREFIX) else ref
    if body.count("@") != 1:
        raise InvalidValue(ref, what, rule)
    name, tail = body.split("@")
    validate_name(name, f"model name in {what}")
    validate_name(tail, f"run id or alias in {what}")
    return ref


def latest_pointer(parent: str) -> str:
    """<parent>/_latest: the pointer file in a directory a LakeLayout built (curated_root,
    models_root, checkpoints), naming its newest complete entry."""
    return f"{parent.rstrip('/')}/{LATEST}"


def _split(split: str) -> str:
    if split not in SPLITS:
        raise InvalidValue(split, "split", f"expected one of {list(SPLITS)}")
    return split


def _relative(rel: str, what: str) -> str:
    parts = rel.strip("/").split("/")
    if not rel.strip("/") or any(p in ("", "..") for p in parts) or "\n" in rel:
        raise InvalidValue(rel, what, "expected a relative path under lake.root without empty or '..' "
                                      "components; give an absolute path or a URI for data outside the lake")
    return "/".join(parts)


@dataclass(frozen=True)
class LakeLayout:
    """Every path in the lake, from its root URI (file://, hdfs://, s3a://, ...)."""

    root: str

    def __post_init__(self) -> None:
        if not isinstance(self.root, str) or "://" not in self.root:
            raise InvalidValue(self.root, "lake.root", "expected a URI such as file:///data/lake or s3a://bucket/lake")
        object.__setattr__(self, "root", self.root.rstrip("/"))

    @classmethod
    def of(cls, cfg: Any) -> LakeLayout:
        """The layout of a Config's lake (cfg.lake.root, already a URI once load_config ran)."""
        return cls(cfg.lake.root)

    def _join(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def under(self, rel: str, what: str = "path under lake.root") -> str:
        """A relative path from the config (dataset.source, ...) under the root; no '..'."""
        return self._join(_relative(rel, what))

    # --- curated datasets ---------------------------------------------------------------------

    def curated_root(self, dataset: str) -> str:
        """curated/<dataset>: the parent of its versions and of its _latest pointer."""
        return self._join("curated", validate_name(dataset, "dataset name"))

    def curated_version(self, dataset: str, version: str) -> str:
        """curated/<dataset>/v=<run id>; version as 'v=<run id>' or the bare run id."""
        return f"{self.curated_root(dataset)}/{version_dir_name(version)}"

    def curated_split(self, dataset: str, version: str, split: str) -> str:
        """curated/<dataset>/v=<run id>/<train|val|test>."""
        return f"{self.curated_version(dataset, version)}/{_split(split)}"

    def curated_staging(self, dataset: str, version: str) -> str:
        """curated/<dataset>/v=<run id>/_staging: preprocess' plans and staged records."""
        return f"{self.curated_version(dataset, version)}/{STAGING}"

    def preprocess_plan(self, dataset: str, version: str, step: str) -> str:
        """curated/<dataset>/v=<run id>/_staging/_plan (step 'stage'), _keys (step 'keys'), _write
        (step 'write') or _drift (step 'drift')."""
        sub = {"stage": "_plan", "keys": "_keys", "write": "_write", "drift": "_drift"}.get(step)
        if sub is None:
            raise InvalidValue(step, "preprocess plan step", "expected 'stage', 'keys', 'write' or 'drift'")
        return f"{self.curated_staging(dataset, version)}/{sub}"

    # --- quarantine -----------------------------------------------------------------------------

    def quarantine_version(self, dataset: str, version: str) -> str:
        """quarantine/<dataset>/<run id>: the bad records of one preprocess run (no 'v=')."""
        return self._join("quarantine", validate_name(dataset, "dataset name"), validate_version(version))

    def quarantine_score(self, dataset: str, job_id: str) -> str:
        """quarantine/<dataset>/score-<job id>: the bad records of one score job."""
        return self._join("quarantine", validate_name(dataset, "dataset name"),
                          "score-" + validate_run_id(job_id, "score job id"))

    # --- models ---------------------------------------------------------------------------------

    def models_root(self, model: str) -> str:
        """models/<model>: the parent of its runs and of its _latest pointer."""
        return self._join("models", validate_name(model, "model name"))

    def model_run(self, model: str, run_id: str) -> str:
        """models/<model>/<run id>: one training run's artifact."""
        return f"{self.models_root(model)}/{validate_run_id(run_id, 'training run id')}"

    def checkpoints(self, model: str, run_id: str) -> str:
        """models/<model>/<run id>/checkpoints: per-epoch checkpoints and their _latest."""
        return f"{self.model_run(model, run_id)}/checkpoints"

    def elastic_run(self, model: str, elastic_id: str) -> str:
        """models/<model>/_elastic/<sha256 of the id>: the run id a torchrun job (its
        TORCHELASTIC_RUN_ID, any string) trains, read by its restarted ranks."""
        return f"{self.models_root(model)}/{ELASTIC}/{hashlib.sha256(elastic_id.encode()).hexdigest()[:32]}.json"

    # --- predictions ----------------------------------------------------------------------------

    def predictions_root(self, model: str) -> str:
        """predictions/<model>."""
        return self._join("predictions", validate_name(model, "model name"))

    def predictions_partition(self, model: str, day: str) -> str:
        """predictions/<model>/dt=<YYYY-MM-DD>: one date's published predictions."""
        return f"{self.predictions_root(model)}/dt={validate_date(day)}"

    def score_job(self, model: str, job_id: str) -> str:
        """predictions/<model>/_staging/<job id>: everything one score job writes before the swap."""
        return f"{self.predictions_root(model)}/{STAGING}/{validate_run_id(job_id, 'score job id')}"

    def score_staging(self, model: str, job_id: str, day: str) -> str:
        """predictions/<model>/_staging/<job id>/dt=<date>: the partition being written."""
        return f"{self.score_job(model, job_id)}/dt={validate_date(day)}"

    def score_plan(self, model: str, job_id: str) -> str:
        """predictions/<model>/_staging/<job id>/_plan: each scoring task's share of the input."""
        return f"{self.score_job(model, job_id)}/_plan"

    def predictions_trash(self, model: str, job_id: str) -> str:
        """predictions/<model>/_trash/<job id>: the partition a score job replaced."""
        return f"{self.predictions_root(model)}/{TRASH}/{validate_run_id(job_id, 'score job id')}"

    # --- output locks (pipeline.core.locks) -------------------------------------------------------

    def score_lock(self, model: str, day: str) -> str:
        """predictions/<model>/_locks/dt=<date>.lock: one score job per model and date."""
        return f"{self.predictions_root(model)}/{LOCKS}/dt={validate_date(day)}.lock"

    def preprocess_lock(self, dataset: str) -> str:
        """curated/<dataset>/_locks/preprocess.lock: one preprocess run per dataset."""
        return f"{self.curated_root(dataset)}/{LOCKS}/preprocess.lock"

    def train_lock(self, model: str) -> str:
        """models/<model>/_locks/train.lock: one training run per model."""
        return f"{self.models_root(model)}/{LOCKS}/train.lock"

    # --- raw sample data --------------------------------------------------------------------------

    def holdout_labels_file(self, dataset: str, day: str) -> str:
        """raw/<dataset>/holdout_labels/dt=<date>.csv (pipeline.samples.sample_data)."""
        return self._join("raw", validate_name(dataset, "dataset name"), "holdout_labels",
                          f"dt={validate_date(day)}.csv")

    def holdout_labels_dir(self, dataset: str, day: str) -> str:
        """raw/<dataset>/holdout_labels/dt=<date>/ (pipeline.samples.synthetic, one CSV per task)."""
        return self._join("raw", validate_name(dataset, "dataset name"), "holdout_labels", f"dt={validate_date(day)}")

    @staticmethod
    def dated(source: str, day: str) -> str:
        """A score source path for one date: '{date}' substituted, else <source>/dt=<date>."""
        day = validate_date(day)
        return source.replace("{date}", day) if "{date}" in source else f"{source.rstrip('/')}/dt={day}"

    # --- the embedded MLflow store ----------------------------------------------------------------

    def mlflow_store(self) -> str:
        """mlflow: the embedded tracking store (tracking.uri "")."""
        return self._join(MLFLOW)

    def mlflow_db(self) -> str:
        """mlflow/mlflow.db: its SQLite database."""
        return f"{self.mlflow_store()}/mlflow.db"

    def mlflow_artifacts(self) -> str:
        """mlflow/artifacts: its default artifact root."""
        return f"{self.mlflow_store()}/artifacts"
