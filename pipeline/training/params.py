"""What every training rank receives: plain values only (pickled to Spark executors, Horovod
and torchrun ranks), built once by ``pipeline.train.plan``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.model.spec import ModelSpec


@dataclass
class RankParams:
    run_id: str                      # the lake run id of the model being trained
    train: dict[str, Any]            # the train config, resolved (backend, reader, augment, init_weights)
    task_info: dict[str, Any]        # what objectives.for_task needs (label names, class weights, label stats)
    monitor: str                     # the history metric early stopping and the best epoch follow
    config: dict[str, Any]           # the whole resolved config, saved with checkpoints and the artifact
    model_spec: ModelSpec            # what networks.build_model builds
    input: dict[str, Any]            # the kind's input spec (pipeline.kinds: field, normalisation, ...)
    train_url: str
    val_url: str
    test_url: str
    steps_per_epoch: int             # the same on every rank, so collectives line up
    model_uri: str
    checkpoint_dir: str
    resume: bool
    artifact_spec: dict[str, Any]    # model.json of the artifact
    tracking: dict[str, Any] | None = None  # the launcher's MLflow run, which rank 0 attaches to
