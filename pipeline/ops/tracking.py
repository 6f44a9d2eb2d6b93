"""Experiment tracking and the model registry, with MLflow.

Every job logs one MLflow run: preprocess (dataset version, counts, cost), train (the resolved
config as params, tags, per-epoch metrics, final metrics, artifacts and the model, registered
with the alias ``candidate``), score (counts, the model version, the date, cost). Its run id goes
into the job's manifest, which is how a predictions partition leads back to its model version,
training run and dataset version (``python -m pipeline.ops.lineage``).

``tracking.uri`` "" is an SQLite store inside the lake (``<lake>/mlflow/mlflow.db``, artifacts
under ``<lake>/mlflow/artifacts``); any other value is an MLflow tracking URI (a server:
``http://host:5000``). Tracking never loses what the lake has: the model artifact keeps its own
metrics, so when the store cannot be reached the job warns and goes on, unless
``tracking.required`` is true.

The settings travel as plain values (``settings(cfg)``) so that training rank 0, on an executor,
can attach to the run the driver started (``Tracker.attach``).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

from pipeline.core import lake
from pipeline.core.layout import LakeLayout

log = logging.getLogger(__name__)

CANDIDATE = "candidate"

# An unreachable server must not hold a job for minutes of retries (MLflow's default is 7
# retries with exponential back-off and a 120 s timeout). A user's own values win.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


class TrackingError(RuntimeError):
    """The tracking store failed and tracking.required is true."""


def settings(cfg) -> dict[str, Any]:
    """Plain values every process needs to log: where, and what to do when it fails."""
    t = cfg.tracking
    uri, artifacts, problem = t.uri, None, None
    if t.enabled and not uri and not cfg.lake.root.startswith("file://"):
        problem = (f"tracking.uri is empty, which means an SQLite store inside the lake, but lake.root "
                   f"{cfg.lake.root} is not a local directory: set tracking.uri to an MLflow server (http://...)")
    elif t.enabled and not uri:
        layout = LakeLayout.of(cfg)
        uri = f"sqlite:///{Path(lake.local_path(layout.mlflow_db()))}"
        artifacts = f"file://{Path(lake.local_path(layout.mlflow_artifacts()))}"
    return {"enabled": t.enabled, "uri": uri, "required": t.required, "problem": problem,
            "experiment": t.experiment or cfg.dataset.name, "artifact_location": artifacts}


def ui_command(s: dict[str, Any]) -> str | None:
    """The one command that opens the MLflow UI on the embedded store (None for a server)."""
    if not s["enabled"] or not s["uri"].startswith("sqlite:"):
        return None
    return f"mlflow ui --backend-store-uri {s['uri']} --default-artifact-root {s['artifact_location']} --port 5000"


def _reachable(uri: str) -> str | None:
    """None if an http(s) tracking server answers its health check, else why not."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5) as r:
            return None if r.status == 200 else f"HTTP {r.status}"
    except (urllib.error.URLError, OSError) as e:
        return str(getattr(e, "reason", e))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and key != "spark.conf":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return out


class Tracker:
    """One MLflow run, or nothing: every call is a no-op once tracking is off or has failed."""

    def __init__(self, s: dict[str, Any], run_id: str | None = None):
        self.s = s
        self.run_id = run_id
        self.client = None
        self.ended = False
        if s["enabled"] and run_id is not None:
            try:
                from mlflow import MlflowClient

                self.client = MlflowClient(tracking_uri=s["uri"], registry_uri=s["uri"])
            except Exception as e:  # noqa: BLE001 - e.g. an executor environment without mlflow
                self._failed("opening the run", e)

    @property
    def active(self) -> bool:
        return self.client is not None

    def _failed(self, what: str, e: BaseException) -> None:
        where = self.s["uri"]
        if self.s["required"]:
            raise TrackingError(f"MLflow tracking at {where} failed ({what}): {e}; "
                                f"tracking.required is true, so the job stops") from e
        log.warning("MLflow tracking at %s failed (%s): %s; going on without tracking "
                    "(the lake keeps the job's own manifest and metrics)", where, what, e)
        self.client = None

    def _call(self, what: str, method: str, *args, **kwargs):
        """self.client.<method>(...), or nothing when inactive; a failure goes to _failed."""
        if not self.active:
            return None
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - tracking failures are handled per tracking.required
            self._failed(what, e)
            return None

    # --- lifecycle -----------------------------------------------------------------------------

    @classmethod
    def start(cls, s: dict[str, Any], run_name: str, params: dict[str, Any] | None = None,
              tags: dict[str, Any] | None = None) -> "Tracker":
        """Start a run in the experiment (created on first use); an inactive Tracker if off or unreachable."""
        off = cls(s)
        if not s["enabled"]:
            return off
        problem = s["problem"] or _reachable(s["uri"])
        if problem is not None:
            off._failed("server unreachable", ConnectionError(problem))
            return off
        try:
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=s["uri"], registry_uri=s["uri"])
            exp = client.get_experiment_by_name(s["experiment"])
            exp_id = exp.experiment_id if exp else client.create_experiment(
                s["experiment"], artifact_location=s["artifact_location"])
            run = client.create_run(exp_id, run_name=run_name, tags={k: str(v) for k, v in (tags or {}).items()})
        except Exception as e:  # noqa: BLE001
            off._failed("starting a run", e)
            return off
        t = cls(s, run.info.run_id)
        try:  # the run exists now: a SIGTERM or a required tracking's failure must still end it
            if params:
                t.log_params(params)
        except BaseException as e:
            t.end(ending_status(e))
            raise
        log.info("MLflow run %s in experiment %r at %s", t.run_id, s["experiment"], s["uri"])
        if ui_command(s):
            log.info("open the MLflow UI with: %s", ui_command(s))
        return t

    @classmethod
    def reopen(cls, s: dict[str, Any], tags: dict[str, str]) -> "Tracker | None":
        """The latest run in the experiment with these tags, set RUNNING again (a resumed
        training continues its run, so its metric history stays whole); None if there is none."""
        found = _runs(s, tags)
        if not found:
            return None
        t = cls(s, found[0].info.run_id)
        t._call("reopening the run", "update_run", t.run_id, status="RUNNING")
        log.info("MLflow run %s continues", t.run_id)
        return t

    @classmethod
    def fail_stale(cls, s: dict[str, Any], tags: dict[str, str]) -> list[str]:
        """Mark FAILED the runs with these tags still RUNNING. Call only while holding the
        output's lock (pipeline.core.locks): then no live job owns them; their job was killed."""
        stale = [r.info.run_id for r in _runs(s, tags, status="RUNNING")]
        for run_id in stale:
            t = cls(s, run_id)
            t.set_tags({"ended_by": "the next run of the same output: its job died without ending it"})
            t.end("FAILED")
            log.warning("MLflow run %s was still RUNNING but its job is gone: marked FAILED", run_id)
        return stale

    @classmethod
    def attach(cls, s: dict[str, Any], run_id: str | None) -> "Tracker":
        """The run another process started (training rank 0 on an executor)."""
        return cls(s, run_id if s["enabled"] else None)

    def end(self, status: str = "FINISHED") -> None:
        """End the run once; a second call (a failure after the run finished) changes nothing."""
        if self.ended:
            return
        self.ended = True
        self._call("ending the run", "set_terminated", self.run_id, status)

    # --- logging -------------------------------------------------------------------------------

    def log_params(self, params: dict[str, Any]) -> None:
        if not self.active:
            return
        from mlflow.entities import Param

        flat = [Param(k[:250], v[:6000]) for k, v in _flatten(params).items()]
        for i in range(0, len(flat), 100):
            self._call("logging params", "log_batch", self.run_id, params=flat[i:i + 100])

    def set_tags(self, tags: dict[str, Any]) -> None:
        if not self.active:
            return
        from mlflow.entities import RunTag

        self._call("setting tags", "log_batch", self.run_id,
                   tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None, prefix: str = "") -> None:
        if not self.active:
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(f"{prefix}{k}", float(v), now, step or 0) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for i in range(0, len(batch), 1000):
            self._call("logging metrics", "log_batch", self.run_id, metrics=batch[i:i + 1000])

    def log_epoch(self, record: dict[str, Any]) -> None:
        """One history record (epoch, lr, train_loss, val_<metric>..., samples_per_s, ...) at step=epoch."""
        self.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=int(record["epoch"]))

    def log_file(self, name: str, data: bytes, artifact_path: str | None = None) -> None:
        if not self.active:
            return
        with tempfile.TemporaryDirectory() as d:
            p = Path(d, name)
            p.write_bytes(data)
            self._call(f"logging {name}", "log_artifact", self.run_id, str(p), artifact_path)

    def log_json(self, name: str, obj: Any, artifact_path: str | None = None) -> None:
        self.log_file(name, json.dumps(obj, indent=2, default=str).encode(), artifact_path)

    def log_cost(self, cost: dict[str, Any]) -> None:
        self.log_metrics({k: v for k, v in cost.items() if v is not None}, prefix="cost_")

    # --- the model -----------------------------------------------------------------------------

    def register_model(self, name: str, log_model: Callable[[str, str], str], alias: str = CANDIDATE) -> str | None:
        """Register a new version of ``name`` with ``log_model(tracking uri, mlflow run id)``, which
        logs the model into this run and returns the version, and point alias at it."""
        if self.client is None or self.run_id is None:  # inactive (a client needs a run id)
            return None
        try:
            version = log_model(self.s["uri"], self.run_id)
            self.client.set_registered_model_alias(name, alias, version)
        except Exception as e:  # noqa: BLE001
            self._failed("logging and registering the model", e)
            return None
        log.info("registered %s version %s as @%s", name, version, alias)
        return version


def _runs(s: dict[str, Any], tags: dict[str, str], status: str | None = None) -> list:
    """Runs of the experiment with these tags (and status), newest first; [] where tracking is
    off or unreachable (nothing to find then)."""
    if not s["enabled"] or s["problem"] or _reachable(s["uri"]):
        return []
    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=s["uri"], registry_uri=s["uri"])
        exp = client.get_experiment_by_name(s["experiment"])
        if exp is None:
            return []
        where = [f"tags.{k} = '{v}'" for k, v in tags.items()]  # values are checked names and run ids
        if status:
            where.append(f"attributes.status = '{status}'")
        return list(client.search_runs([exp.experiment_id], " and ".join(where), order_by=["attributes.start_time DESC"]))
    except Exception as e:  # noqa: BLE001 - a lookup that fails finds nothing; the job goes on
        log.warning("MLflow at %s: looking up runs %s failed: %s", s["uri"], tags, e)
        return []


# --- the registry ----------------------------------------------------------------------------------

def registry_client(s: dict[str, Any]):
    if not s["enabled"]:
        raise TrackingError("this model reference needs the MLflow registry, but tracking.enabled is false")
    problem = s["problem"] or _reachable(s["uri"])
    if problem is not None:
        raise TrackingError(f"the MLflow registry at {s['uri']} cannot be reached: {problem}")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=s["uri"], registry_uri=s["uri"])


def version_by_alias(s: dict[str, Any], name: str, alias: str):
    """The registered ModelVersion behind NAME@ALIAS; LookupError naming both if there is none."""
    from mlflow.exceptions import MlflowException

    client = registry_client(s)
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        code = e.error_code
    try:
        aliases = client.get_registered_model(name).aliases
        known = ", ".join(f"@{a} (version {v})" for a, v in sorted(aliases.items())) or "none"
        there = f"its aliases: {known}"
    except MlflowException:
        there = "no model of that name is registered there"
    raise LookupError(f"no version of registered model {name!r} has the alias {alias!r} in {s['uri']} "
                      f"({code}); {there}")


def lake_run_of(s: dict[str, Any], name: str, alias: str) -> tuple[str, dict[str, str]]:
    """(lake run id, registry facts) of NAME@ALIAS: the version's training run carries the lake run id."""
    mv = version_by_alias(s, name, alias)
    lake_run = mv.tags.get("lake_run_id")
    if not lake_run:
        lake_run = registry_client(s).get_run(mv.run_id).data.tags.get("lake_run_id")
    if not lake_run:
        raise LookupError(f"{name}@{alias} (version {mv.version}) has no lake_run_id tag: it was not registered "
                          f"by jobs/train.py")
    return lake_run, {"registered_name": name, "alias": alias, "version": str(mv.version),
                      "training_mlflow_run_id": mv.run_id}


# --- one job's run -------------------------------------------------------------------------------

class Job:
    """A job's MLflow run and its cost meter, started when the job starts.

    ``fields()`` gives what the manifest carries (``mlflow_run_id``, ``cost``); ``finish(manifest)``
    logs the counts, the cost and the manifest to the run and ends it. Used as ``with Job(...) as
    job:`` around the job's body, so that an error or a SIGTERM ends the run too.
    """

    def __init__(self, cfg, spark, stage: str, run_name: str, tags: dict[str, Any] | None = None,
                 params: dict[str, Any] | None = None, output: dict[str, str] | None = None,
                 resume: dict[str, str] | None = None):
        """``output``: tags naming the output this job writes, whose lock the caller holds: a run
        with them still RUNNING belongs to a killed job and is marked FAILED. ``resume``: tags of
        the run to continue instead of starting one."""
        from pipeline.spark import cost
        from pipeline.core import manifest

        self.meter = cost.Meter(spark)
        self.stage = stage
        self.cost: dict[str, Any] | None = None
        base = {"stage": stage, "code_version": manifest.code_version()}
        if spark is not None:
            base["spark_application_id"] = spark.sparkContext.applicationId
        s = settings(cfg)
        if output:
            Tracker.fail_stale(s, {"stage": stage, **output})
        self.tracker = (resume and Tracker.reopen(s, {"stage": stage, **resume})) or \
            Tracker.start(s, run_name, params=params, tags={**base, **(tags or {})})

    @property
    def run_id(self) -> str | None:
        """The MLflow run, if one was started (kept even if logging to it failed later)."""
        return self.tracker.run_id

    def fields(self, **cost_kw: Any) -> dict[str, Any]:
        self.cost = self.meter.stop(**cost_kw)
        return {"mlflow_run_id": self.run_id, "cost": self.cost}

    def finish(self, m: dict[str, Any], metrics: dict[str, Any] | None = None) -> None:
        from pipeline.spark import cost

        t = self.tracker
        t.log_metrics({k: m[k] for k in ("input_count", "output_count", "quarantined_count")})
        t.log_metrics({f"quarantined_{k}": v for k, v in m["quarantined_by_reason"].items()})
        t.log_metrics(metrics or {})
        c = m.get("cost") or self.cost or {}
        t.log_cost(c)
        per_1k = cost.core_hours_per_1k(c, m["input_count"]) if c else None
        if per_1k is not None:
            t.log_metrics({"cost_core_hours_per_1k_records": per_1k})
        t.log_json("_manifest.json", m)
        t.end()

    def __enter__(self) -> "Job":
        return self

    def __exit__(self, kind, error, tb) -> None:
        """Whatever stops the job once its run exists ends the run: FAILED, or KILLED when the job
        is being stopped (SIGTERM); a run the job finished stays FINISHED."""
        if error is not None:
            self.tracker.end(ending_status(error))


def ending_status(error: BaseException | None) -> str:
    from pipeline.core.locks import Terminated

    return "KILLED" if isinstance(error, Terminated) else "FAILED"


# --- training --------------------------------------------------------------------------------------
