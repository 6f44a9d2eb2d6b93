"""Typed, validated configuration.

Defaults live in ``conf/*.yaml``; ``--set a.b=value`` overrides them. Every section is a
dataclass, so an unknown key or a value of the wrong type fails at start-up with the dotted
key in the message, before Spark starts.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml
from yaml.reader import ReaderError

from pipeline.core.layout import InvalidValue, LakeLayout, validate_model_ref, validate_name, validate_version


MAX_CATEGORY_BYTES = 1024


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key."""


@dataclass
class LakeConf:
    # URI under which the jobs write raw/, curated/, models/, predictions/, quarantine/.
    # A relative path is taken relative to the working directory and made a file:// URI.
    root: str = "lake"
    # How long a job waits for another job writing the same output (same model and date for
    # score, same dataset for preprocess, same model for train) before it exits 5.
    lock_wait_s: float = 60.0


@dataclass
class SparkConf:
    # Used only when spark-submit did not set a master (local runs, tests).
    master: str = "local[2]"
    shuffle_partitions: int = 4
    conf: dict[str, str] = field(default_factory=dict)


@dataclass
class ImageConf:
    height: int = 8
    width: int = 8
    channels: Literal[1, 3] = 1
    resize: Literal["stretch", "crop", "pad"] = "stretch"
    # Images with more pixels than this are quarantined before decoding (decompression bombs).
    max_pixels: int = 40_000_000
    # JPEGs at least twice the target size on both sides are decoded at 1/2, 1/4 or 1/8 scale
    # (Pillow's draft mode: the decoder skips detail the resize would drop), then resized.
    draft: bool = True
    # An images source that is a table or query (table:/query:): its binary column of encoded
    # image bytes and its label column. Folders of files ignore these.
    content_column: str = "content"
    label_column: str = "label"


@dataclass
class TabularConf:
    # Any format Spark reads: csv, json, parquet, orc, text (avro, delta with their packages).
    format: str = "csv"
    # Spark reader options, passed through unchanged (sep, quote, escape, encoding, multiLine, ...).
    options: dict[str, str] = field(default_factory=dict)
    # "auto": plain CSV/JSON/Parquet files without options go through the pyarrow reader, everything
    # else through Spark's reader; "spark" always uses Spark's. Both give the same curated output.
    reader: Literal["auto", "spark"] = "auto"
    # Empty: no id column; the split key is a hash of the record's declared values.
    id_column: str = ""
    label_column: str = "label"
    numeric: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    # Columns present in the files but not used; any other undeclared column is schema drift.
    ignore: list[str] = field(default_factory=list)
    # Per categorical column, the most frequent values (train split) get their own slot;
    # the rest, unseen values and nulls share the unknown slot.
    max_categories: int = 50
    # Rows sharing an id (preprocess and score): "quarantine" quarantines every row of an id whose
    # rows differ (duplicate_id) and keeps one of identical rows (the copies: duplicate_row);
    # "keep_first" keeps the first row by (file, position in the file); "error" stops the job.
    # Without an id column only identical rows share an id: one is kept whatever this says.
    duplicates: Literal["quarantine", "keep_first", "error"] = "quarantine"

    def columns(self) -> list[str]:
        return [*([self.id_column] if self.id_column else []), self.label_column, *self.numeric,
                *self.categorical, *self.ignore]


@dataclass
class SequenceConf:
    # A long table: one row per (series, time). No series column: the whole table is one series.
    format: Literal["csv", "parquet"] = "csv"
    series_column: str = ""
    time_column: str = "time"
    target_column: str = "value"
    # Covariate columns fed to the model next to the target's history.
    features: list[str] = field(default_factory=list)
    # Steps of history per window, steps predicted, steps between window starts.
    window: int = 24
    horizon: int = 1
    stride: int = 1
    # Runs of up to this many consecutive missing values are interpolated linearly; a longer run
    # (or a gap in time longer than 1.5 steps) ends a segment: no window spans it.
    max_fill: int = 3


@dataclass
class PrivacyConf:
    # Personal columns of a table or sequence: column -> hash (HMAC-SHA256 with the key, as hex) or drop.
    # The README's "Personal data" section.
    pii_columns: dict[str, str] = field(default_factory=dict)
    # The environment variable that holds the HMAC key; the key itself is never stored.
    key_env: str = "PIPELINE_PII_KEY"
    # A hashed column used as a feature is a categorical over int(hash[:8], 16) % buckets.
    buckets: int = 64


@dataclass
class DatasetConf:
    name: str = "digits"
    kind: str = "images"  # one of pipeline.kinds.KINDS: images, tabular, sequence
    # Raw labelled input that preprocess reads; relative URIs resolve under lake.root.
    source: str = "raw/digits/labelled"
    # Root of new, unlabelled input for scoring, partitioned as dt=YYYY-MM-DD/.
    score_source: str = "raw/digits/incoming"
    # "folder": class from the parent folder name; "file": a path,label CSV (labels_file).
    label_source: Literal["folder", "file"] = "folder"
    labels_file: str = ""
    image: ImageConf = field(default_factory=ImageConf)
    tabular: TabularConf = field(default_factory=TabularConf)
    sequence: SequenceConf = field(default_factory=SequenceConf)
    privacy: PrivacyConf = field(default_factory=PrivacyConf)


@dataclass
class SplitConf:
    train: float = 0.8
    val: float = 0.1
    test: float = 0.1
    # Changing the seed reshuffles which records land in which split.
    seed: int = 17


@dataclass
class PreprocessConf:
    split: SplitConf = field(default_factory=SplitConf)
    # Parquet files per split. Each file holds one or more row groups (of at most
    # row_group_mb) and Petastorm shards by row group, so use at least train.num_proc files,
    # ideally a multiple, to keep the ranks' Petastorm shards near-equal.
    files_per_split: int = 4
    # Upper bound on a Parquet row group. Above ~32 MB every row group's temporary arrays are
    # fresh mmaps that the reader faults in again each time, and the Petastorm feed slows down
    # by more than half (measured in docs/data-layout.md).
    row_group_mb: int = 8
    # Fail the run if more than this fraction of the input is quarantined.
    max_bad_fraction: float = 0.05
    # An id, label or categorical value longer than this many UTF-8 bytes quarantines its row
    # (value_too_long), in preprocess and in score.
    max_category_bytes: int = MAX_CATEGORY_BYTES


@dataclass
class AugmentConf:
    # Image augmentation of the train split, on uint8 batches on the training device (0/false = off).
    crop_padding: int = 0
    hflip: bool = False
    rotate_degrees: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0


@dataclass
class DPConf:
    # DP-SGD with Opacus (train.backend torch; arch mlp or cnn): per-example gradients clipped to
    # max_grad_norm, Gaussian noise of noise_multiplier * max_grad_norm; 0 = off. The README's
    # "Differentially private training" section.
    noise_multiplier: float = 0.0
    max_grad_norm: float = 1.0
    # The delta of the (epsilon, delta) reported as dp_epsilon each epoch.
    delta: float = 1e-5


@dataclass
class TrainConf:
    model_name: str = "digits-cnn"
    # cnn, resnet, resnet18, strided_cnn, mlp, lstm, gru, torchvision:<name> or module.path:factory (a callable given
    # the model spec that returns an nn.Module; ship the module with --py-files).
    arch: str = "cnn"
    num_proc: int = 2
    # horovod (the default stack) or torch (DistributedDataParallel); auto: horovod if installed.
    backend: Literal["auto", "horovod", "torch"] = "auto"
    # petastorm (make_batch_reader) or arrow (plain pyarrow, same sharding); auto: petastorm if installed.
    reader: Literal["auto", "petastorm", "arrow"] = "auto"
    # The metric that picks the best epoch and drives early stopping (val_loss, val_accuracy,
    # val_macro_f1, val_rmse, val_r2, ...); auto: val_accuracy for classification, val_rmse for regression.
    monitor: str = "auto"
    # "latest" follows curated/<dataset>/_latest; or name a version.
    dataset_version: str = "latest"
    epochs: int = 20
    batch_size: int = 32
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    # Linear warm-up to lr * world_size over this many epochs, then `schedule`.
    warmup_epochs: int = 1
    schedule: Literal["cosine", "constant"] = "cosine"
    scale_lr_by_world_size: bool = True
    fp16_allreduce: bool = False
    # Stop when train.monitor has not improved for this many epochs (0 = never).
    early_stopping_patience: int = 0
    shuffle_buffer: int = 2048
    # Checkpoints kept per run (the newest ones); 0 keeps every epoch's.
    keep_checkpoints: int = 3
    # Times the job restarts its ranks from the last checkpoint after one dies (0 = the job fails);
    # under torchrun its own --max-restarts does the restarting (README, "Restarts").
    max_restarts: int = 0
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mixed_precision: Literal["none", "bf16", "fp16"] = "none"
    task: Literal["classification", "regression"] = "classification"
    # Regression loss on the standardised label.
    loss: Literal["mse", "mae", "huber"] = "mse"
    # "auto": weight the loss by inverse class frequency of the train split; "none": unweighted.
    class_weights: Literal["none", "auto"] = "none"
    # A state dict (torch.save) to start from, loaded with weights_only=True; "" = random init.
    init_weights: str = ""
    # Layer sizes of the lstm/gru stack.
    hidden: list[int] = field(default_factory=lambda: [64, 64, 64])
    # lstm/gru: take the history relative to its last target value and predict the change from it.
    predict_change: bool = False
    augment: AugmentConf = field(default_factory=AugmentConf)
    privacy: DPConf = field(default_factory=DPConf)


@dataclass
class DriftConf:
    # A feature whose PSI against the train split is above this fails the score job (exit 4) after
    # its predictions are published; 0 = report only.
    fail_above: float = 0.0
    # Quantile bins of each numeric feature's reference (preprocess: the train split's deciles for 10).
    bins: int = 10


EXPLAIN_METHODS = ("", "integrated_gradients", "input_x_gradient", "saliency")


@dataclass
class ExplainConf:
    # Attributions of each scored row (README: Explanations), computed with Captum in the scoring
    # batch: integrated_gradients, input_x_gradient or saliency; "" = off.
    method: str = ""
    # Tabular and sequence models: the features with the largest |attribution| kept per row.
    top_k: int = 3
    # integrated_gradients: points on the path from the baseline to the input.
    n_steps: int = 50


@dataclass
class ScoreConf:
    # NAME@RUN_ID or NAME@latest (the lake), NAME@ALIAS or models:/NAME@ALIAS (the MLflow registry).
    model: str = "digits-cnn@latest"
    batch_size: int = 256
    # Input columns copied into every prediction row (business keys, dt, ...), to join back.
    passthrough: list[str] = field(default_factory=list)
    # Also write predictions to this catalog table (db.name), partitioned by dt; "" = no table.
    output_table: str = ""
    # Drift of the scored data against the train split (the README's Drift section).
    drift: DriftConf = field(default_factory=DriftConf)
    explain: ExplainConf = field(default_factory=ExplainConf)


@dataclass
class TrackingConf:
    # Log every job to MLflow (params, per-epoch metrics, artifacts, the model in the registry).
    enabled: bool = True
    # "" = an SQLite store in the lake (<lake>/mlflow/mlflow.db, artifacts under <lake>/mlflow/artifacts;
    # needs a file:// lake), or any MLflow tracking URI, e.g. http://mlflow.internal:5000.
    uri: str = ""
    # false: an unreachable server only warns and the job goes on; true: the job fails.
    required: bool = False
    # MLflow experiment the runs go to; "" = the dataset name.
    experiment: str = ""


@dataclass
class Config:
    lake: LakeConf = field(default_factory=LakeConf)
    spark: SparkConf = field(default_factory=SparkConf)
    dataset: DatasetConf = field(default_factory=DatasetConf)
    preprocess: PreprocessConf = field(default_factory=PreprocessConf)
    train: TrainConf = field(default_factory=TrainConf)
    score: ScoreConf = field(default_factory=ScoreConf)
    tracking: TrackingConf = field(default_factory=TrackingConf)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def uri(self, *parts: str) -> str:
        """A URI under lake.root (no '..'). Prefer the named paths of ``LakeLayout.of(cfg)``."""
        layout = LakeLayout.of(self)
        return layout.under("/".join(p.strip("/") for p in parts)) if parts else layout.root

    def resolve(self, uri: str) -> str:
        """URIs, table:/query: sources and absolute paths pass through (paths as file:// URIs);
        relative paths resolve under lake.root."""
        if "://" in uri or uri.startswith(("table:", "query:")):
            return uri
        return "file://" + uri if uri.startswith("/") else LakeLayout.of(self).under(uri)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(tp, value, key)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): str(v) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in known:
            where = f"{prefix}.{k}" if prefix else k
            raise ConfigError(f"unknown config key '{where}'; known keys here: {sorted(known)}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    # Spark conf keys contain dots themselves: everything after spark.conf. is one key.
    if dotted.startswith("spark.conf."):
        tree.setdefault("spark", {}).setdefault("conf", {})[dotted[len("spark.conf."):]] = value
        return
    *parents, leaf = dotted.split(".")
    node = tree
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"'{p}' is not a section")
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``dotted.key=value`` -> (key, value), the value parsed as YAML (3 -> int, 0.1 -> float,
    true -> bool, [1,2] -> list). The caller names the ``--set`` argument in errors."""
    key, eq, raw = text.partition("=")
    key = key.strip()
    if not eq or not key or "" in key.split("."):
        raise ConfigError("expects dotted.key=value, e.g. --set train.epochs=5")
    try:
        return key, yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"the value is not valid YAML ({_yaml_problem(e)}); quote a string value") from None


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error's problem on one line, without the file excerpt yaml appends."""
    if isinstance(e, yaml.MarkedYAMLError):
        return ", ".join(str(t) for t in (e.context, e.problem) if t) or type(e).__name__
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _read_yaml(path: str) -> dict[str, Any]:
    """The config file's top-level mapping; every way it can fail is a ConfigError naming the path."""
    if not path:
        raise ConfigError("the config path is empty; name a YAML file such as conf/digits.yaml")
    try:
        # Bytes, so yaml detects the encoding (UTF-8, or UTF-16 with a BOM) whatever the locale.
        with open(path, "rb") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a YAML file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it: {e.strerror or e}") from None
    except ReaderError as e:  # undecodable bytes or control characters: not a text file
        char = ord(e.character) if isinstance(e.character, str) else e.character
        what = (f"character #x{char:04x} at position {e.position} is not allowed in YAML"
                if e.encoding == "unicode" else f"byte {e.position} is not {e.encoding} ({e.reason})")
        raise ConfigError(f"{path}: not a YAML text file: {what}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: YAML error{where}: {_yaml_problem(e)}") from None
    if data is None:  # an empty file (or only comments): the defaults
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections (lake, dataset, train, ...), "
                          f"got {type(data).__name__} {_short(data)}")
    return data


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _normalise_root(root: str) -> str:
    if "://" in root:
        return root.rstrip("/")
    return "file://" + os.path.abspath(root)


def load_config(path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML file (or the defaults), apply ``dotted.key=value`` overrides, validate.

    Each error names where it came from: the file (a YAML error with its line and column), or the
    ``--set`` argument as given. Nothing here touches Spark or the lake."""
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_yaml(path)
        try:
            _build(Config, data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    for text in overrides or []:
        try:
            key, value = parse_override(text)
            _set_dotted(data, key, value)
            _build(Config, data)  # an unknown key or a wrong type is this argument's fault
        except ConfigError as e:
            raise ConfigError(f"--set {text!r}: {e}") from None
    cfg = _build(Config, data)
    cfg.lake.root = _normalise_root(cfg.lake.root)
    _check(cfg)
    return cfg


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config saved with ``to_dict`` (e.g. from a manifest or checkpoint)."""
    return _build(Config, data)


def _check(cfg: Config) -> None:
    s = cfg.preprocess.split
    if min(s.train, s.val, s.test) < 0 or abs(s.train + s.val + s.test - 1.0) > 1e-6:
        raise ConfigError(
            f"preprocess.split: train+val+test must be 1 and each >= 0, got {s.train}+{s.val}+{s.test}"
        )
    for key, v in [("train.num_proc", cfg.train.num_proc), ("train.epochs", cfg.train.epochs),
                   ("train.batch_size", cfg.train.batch_size), ("score.batch_size", cfg.score.batch_size),
                   ("preprocess.files_per_split", cfg.preprocess.files_per_split),
                   ("preprocess.max_category_bytes", cfg.preprocess.max_category_bytes),
                   ("dataset.image.height", cfg.dataset.image.height),
                   ("dataset.image.width", cfg.dataset.image.width)]:
        if v < 1:
            raise ConfigError(f"{key} must be >= 1, got {v}")
    if cfg.train.max_restarts < 0:
        raise ConfigError(f"train.max_restarts must be >= 0 (0 = no restarts), got {cfg.train.max_restarts}")
    if not cfg.score.drift.fail_above >= 0:  # NaN too
        raise ConfigError(f"score.drift.fail_above must be >= 0 (0 = report only), got {cfg.score.drift.fail_above}")
    ex = cfg.score.explain
    if ex.method not in EXPLAIN_METHODS:
        raise ConfigError(f"score.explain.method: {ex.method!r} is not one of {list(EXPLAIN_METHODS)} (\"\" = off)")
    for key, v in [("score.explain.top_k", ex.top_k), ("score.explain.n_steps", ex.n_steps)]:
        if v < 1:
            raise ConfigError(f"{key} must be >= 1, got {v}")
    if cfg.score.drift.bins < 2:
        raise ConfigError(f"score.drift.bins must be >= 2, got {cfg.score.drift.bins}")
    if not 0 <= cfg.preprocess.max_bad_fraction <= 1:
        raise ConfigError(f"preprocess.max_bad_fraction must be in [0, 1], got {cfg.preprocess.max_bad_fraction}")
    _check_names(cfg)
    _check_task(cfg)
    _check_privacy(cfg)
    if cfg.dataset.label_source == "file" and not cfg.dataset.labels_file:
        raise ConfigError("dataset.labels_file must be set when dataset.label_source is 'file'")


def _check_names(cfg: Config) -> None:
    """The values that become lake paths (pipeline/core/layout.py), checked before any job starts."""
    try:
        validate_name(cfg.dataset.name, "dataset.name")
        validate_name(cfg.train.model_name, "train.model_name")
        validate_model_ref(cfg.score.model, "score.model")
        if cfg.train.dataset_version != "latest":
            validate_version(cfg.train.dataset_version, "train.dataset_version")
        layout = LakeLayout.of(cfg)
        for key, path in [("dataset.source", cfg.dataset.source), ("dataset.score_source", cfg.dataset.score_source),
                          ("dataset.labels_file", cfg.dataset.labels_file)]:
            if path and "://" not in path and not path.startswith(("table:", "query:", "/")):
                layout.under(path, key)
    except InvalidValue as e:
        raise ConfigError(str(e)) from None


BUILT_IN_ARCHS = ("cnn", "resnet", "resnet18", "strided_cnn", "mlp", "lstm", "gru")


def _check_task(cfg: Config) -> None:
    t = cfg.train
    if t.arch not in BUILT_IN_ARCHS and ":" not in t.arch:
        raise ConfigError(f"train.arch: {t.arch!r} is not one of {list(BUILT_IN_ARCHS)}, "
                          f"torchvision:<name> or module.path:factory")
    if t.monitor != "auto" and not t.monitor.startswith(("val_", "train_")):
        raise ConfigError(f"train.monitor: {t.monitor!r} must be auto or a history metric such as val_loss")
    if any(h < 1 for h in t.hidden) or not t.hidden:
        raise ConfigError(f"train.hidden: layer sizes must be >= 1, got {t.hidden}")


DP_ARCHS = ("mlp", "cnn")  # the built-in networks without BatchNorm (Opacus clips per example)


def _check_privacy(cfg: Config) -> None:
    p = cfg.dataset.privacy
    for col, how in p.pii_columns.items():
        if how not in ("hash", "drop"):
            raise ConfigError(f"dataset.privacy.pii_columns.{col}: {how!r} is not one of ['hash', 'drop']")
    if not p.key_env.isidentifier():
        raise ConfigError(f"dataset.privacy.key_env: {p.key_env!r} is not an environment variable name")
    if p.buckets < 1:
        raise ConfigError(f"dataset.privacy.buckets must be >= 1, got {p.buckets}")
    dp = cfg.train.privacy
    if not dp.noise_multiplier >= 0:
        raise ConfigError(f"train.privacy.noise_multiplier must be >= 0 (0 = off), got {dp.noise_multiplier}")
    if not dp.noise_multiplier:
        return
    if not dp.max_grad_norm > 0:
        raise ConfigError(f"train.privacy.max_grad_norm must be > 0, got {dp.max_grad_norm}")
    if not 0 < dp.delta < 1:
        raise ConfigError(f"train.privacy.delta must be in (0, 1), got {dp.delta}")
    if cfg.train.arch not in DP_ARCHS:
        raise ConfigError(f"train.privacy: DP-SGD trains only {list(DP_ARCHS)} (no BatchNorm, no recurrent "
                          f"layers), not train.arch={cfg.train.arch!r}; set train.privacy.noise_multiplier=0 "
                          f"or another arch")
    if cfg.train.backend == "horovod":
        raise ConfigError("train.privacy: DP-SGD runs on train.backend=torch (Opacus' distributed optimizer), "
                          "not horovod; set train.backend=torch")
