"""The ``_manifest.json`` every job writes next to its output, and what a job returns.

Its invariant, checked before writing: input_count = output_count + quarantined_count.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.core import lake

MANIFEST = "_manifest.json"


class ReconciliationError(RuntimeError):
    pass


@dataclass(frozen=True)
class JobResult:
    """What preprocess and score return: the counts and where the output is, typed, and the
    manifest written next to it (the JSON document, read by key) for what is the stage's own."""
    stage: str
    run_id: str
    uri: str
    input_count: int
    output_count: int
    quarantined_count: int
    mlflow_run_id: str | None
    manifest: dict[str, Any]

    @classmethod
    def of(cls, m: dict[str, Any]) -> JobResult:
        return cls(stage=m["stage"], run_id=m["run_id"], uri=m["uri"], input_count=m["input_count"],
                   output_count=m["output_count"], quarantined_count=m["quarantined_count"],
                   mlflow_run_id=m.get("mlflow_run_id"), manifest=m)


def code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("spark-dl-pipeline")
    except PackageNotFoundError:
        v = "unknown"
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{v}+{sha}" if sha else v


def build(stage: str, run_id: str, config: dict, input_count: int, output_count: int,
          quarantined_by_reason: dict[str, int], **extra: Any) -> dict[str, Any]:
    quarantined = sum(quarantined_by_reason.values())
    if input_count != output_count + quarantined:
        raise ReconciliationError(
            f"{stage}: rows do not reconcile: input {input_count} != output {output_count} + quarantined {quarantined}"
        )
    return {
        "stage": stage,
        "run_id": run_id,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "code_version": code_version(),
        "input_count": input_count,
        "output_count": output_count,
        "quarantined_count": quarantined,
        "quarantined_by_reason": dict(sorted(quarantined_by_reason.items())),
        **extra,
        "config": config,
    }


def write(dir_uri: str, manifest: dict[str, Any]) -> str:
    uri = f"{dir_uri}/{MANIFEST}"
    lake.write_json(uri, manifest)
    return uri


def read(dir_uri: str) -> dict[str, Any]:
    return lake.read_json(f"{dir_uri}/{MANIFEST}")
