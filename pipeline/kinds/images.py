"""Images: files (or a table's binary column) decoded, resized and stored as uint8 blobs;
per-channel mean/std fitted on the train split; a CNN-family network."""
from __future__ import annotations

import io
import math
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np

from pipeline.core import drift, lake
from pipeline.core.config import ConfigError
from pipeline.kinds.base import Curated, Kind, Prepared, Scored, Target
from pipeline.ingest.images import (ImageLayout, ImageSpec, Rejected, channel_stats, decode_image,
                                    images_to_tensor_layout, stat_names)
from pipeline.model import explain

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

    from pipeline.core.config import Config, ExplainConf


def sort_labels(names: list[str]) -> list[str]:
    """Numeric class names sort as numbers ("2" before "10"), others alphabetically."""
    return sorted(names, key=lambda n: (0, int(n), "") if n.lstrip("-").isdigit() else (1, 0, n))


class Images(Kind):
    name = "images"
    archs = ("cnn", "resnet", "resnet18", "strided_cnn")
    takes_torchvision = True
    augmentable = True

    def check_config(self, cfg: Config) -> None:
        if cfg.score.passthrough:
            raise ConfigError("score.passthrough: only tabular datasets carry input columns into predictions")

    # --- preprocess --------------------------------------------------------------------------
    def preprocess(self, spark: SparkSession, cfg: Config, source: str, target: Target) -> Curated:
        """One job of Python tasks (pipeline/ingest/image_tasks.py) that decode the images, write
        the curated files and the quarantine, and return counts and pixel sums."""
        from pipeline.core import quarantine
        from pipeline.ingest import image_tasks, sources
        from pipeline.spark import tasks

        ds = cfg.dataset
        n_tasks = tasks.num_tasks(spark, cfg.preprocess.files_per_split)
        quarantine_uri = target.quarantine
        common: dict[str, Any] = dict(spec=ImageSpec.from_conf(ds.image), split_uris=target.splits(), quarantine_uri=quarantine_uri,
                      row_group_bytes=cfg.preprocess.row_group_mb * 1024 * 1024, step="preprocess.validate",
                      drift_uri=target.plan("drift"))
        if sources.kind(source) != "path":  # a table or query with a binary content column
            df = image_table(spark, source, cfg)
            label_names = sort_labels([r[0] for r in df.select("label_name").distinct().collect() if r[0] is not None])
            body = partial(image_tasks.run_table_task, split=cfg.preprocess.split, label_names=label_names, **common)
            # Spread over n_tasks partitions, so each split gets files_per_split files whatever the table's layout.
            rows = df.repartition(n_tasks).mapInPandas(body, image_tasks.TASK_DDL).collect()
        else:
            sources.listing(source)  # a missing or empty source is an error before any task runs
            labels = _labels_file(cfg.resolve(ds.labels_file)) if ds.label_source == "file" else None
            plans, label_names = image_tasks.plan(source, labels, cfg.preprocess.split, n_tasks)
            label_names = sort_labels(label_names)
            plan_uri = target.plan("stage")
            tasks.write_plans(plans, plan_uri)
            body = partial(image_tasks.run_task, plan_uri=plan_uri, label_names=label_names, **common)
            rows = tasks.numbers(spark, n_tasks).mapInPandas(body, image_tasks.TASK_DDL).collect()
        if not rows or sum(r["n"] for r in rows) == 0:
            raise sources.SourceError(f"source {source} has no records")
        curated = _curated(rows, label_names, ds.image.channels, ds.image.height * ds.image.width)
        quarantine.check_fraction(curated.by_reason, curated.input_count, cfg.preprocess.max_bad_fraction,
                                  quarantine_uri)
        curated.drift_reference = _drift_reference(spark, cfg, target, curated)
        lake.remove(target.staging)
        curated.schema = {"id": "string", "path": "string", "label": "int32",
                          "image": f"binary: uint8 HxWxC {ds.image.height}x{ds.image.width}x{ds.image.channels}, "
                                   f"row-major"}
        return curated

    def manifest_fields(self, cfg: Config) -> dict[str, Any]:
        img = cfg.dataset.image
        return {"image": {"height": img.height, "width": img.width, "channels": img.channels,
                          "resize": img.resize, "max_pixels": img.max_pixels,
                          "draft": img.draft}}

    # --- model -----------------------------------------------------------------------------------
    def input_spec(self, m: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        img = m["image"]
        return ({"kind": self.name, "field": "image", "image": img, "normalization": m["normalization"]},
                [img["channels"], img["height"], img["width"]])

    def rank_decoder(self, inp: dict[str, Any]) -> Callable[[Any], np.ndarray]:
        layout = ImageLayout(**{k: inp["image"][k] for k in ("height", "width", "channels")})
        return lambda b: images_to_tensor_layout(b.image, layout)  # uint8 travels; normalised on the device

    # --- scoring ---------------------------------------------------------------------------------
    def score(self, spark: SparkSession, cfg: Config, spec: dict[str, Any], source: str, date: str,
              plan_uri: str, kw: dict[str, Any]) -> Scored:
        """The tasks read their share of the files themselves (pipeline/spark/tasks.py); a table
        source is read by Spark and its binary column scored as it comes."""
        import pyarrow as pa

        from pipeline.ingest import image_tasks, sources
        from pipeline.kinds import predict
        from pipeline.spark import tasks

        body = partial(predict.score_frames, prepare=prepare_images, key="path", drift_values=channel_stats, **kw)
        columns = predict.prediction_columns(spec, kw["explain"])
        ddl = f"{predict.scored_ddl(spec, kw['explain'])}, {drift.VALUES} array<double>"
        if sources.kind(source) != "path":  # a table with a binary column
            df = image_table(spark, source, cfg, date).drop("label_name")

            def with_ids(frames):
                for pdf in frames:
                    yield pdf.assign(path=image_tasks.content_ids(pdf["content"]))
            return Scored(df.mapInPandas(lambda it: body(frames=with_ids(it)), ddl), "path", columns)
        files = sources.listing(source)  # zero-byte files included: they are quarantined
        n = sources.num_read_tasks(spark, sum(size for _, size in files))
        uris = [u for u, _ in files]
        plan = pa.schema([("uri", pa.string()), ("path", pa.string())])
        tasks.write_plans([pa.table({"uri": uris[t::n], "path": [lake.spark_path(u) for u in uris[t::n]]}, schema=plan)
                           for t in range(n)], plan_uri)
        frames = partial(_image_frames, plan_uri=plan_uri, batch_size=kw["batch_size"])
        return Scored(tasks.numbers(spark, n).mapInPandas(lambda it: body(frames=frames(it)), ddl), "path", columns)

    def explaining(self, spec: dict[str, Any], conf: ExplainConf) -> explain.Request:
        """A map per image at the model's input size, summed over channels, from a baseline image
        of the train split's mean pixel (0 once normalised)."""
        img = spec["input"]["image"]
        return explain.Request(conf.method, conf.n_steps, np.zeros((img["channels"], img["height"], img["width"])),
                               ATTRIBUTION, "binary", _attribution_maps)

    def explain_artifacts(self, explained: DataFrame, spec: dict[str, Any]) -> dict[str, bytes]:
        """PNG overlays of the attribution maps on the first OVERLAYS images by path (red: towards
        the explained output, blue: against it)."""
        img = spec["input"]["image"]
        ispec = ImageSpec(**{k: img[k] for k in ("height", "width", "channels", "resize", "max_pixels")})
        rows = explained.select("key", ATTRIBUTION).orderBy("key").limit(OVERLAYS).collect()
        out = {}
        for i, r in enumerate(rows):
            attr = np.frombuffer(r[ATTRIBUTION], np.float32).reshape(ispec.height, ispec.width)
            try:  # the file the path names; a table source's content ids name none
                pixels = decode_image(lake.read_bytes(r["key"]), ispec)
            except (OSError, ValueError, Rejected):
                pixels = None
            stem = r["key"].rsplit("/", 1)[-1].rsplit(".", 1)[0]
            name = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in stem)[-80:]
            out[f"{i:02d}_{name}.png"] = overlay_png(attr, pixels)
        return out

    def prepare_frame(self, pdf: pd.DataFrame, spec: dict[str, Any]) -> Prepared:
        return prepare_images(pdf, spec)

    def input_example(self, spec: dict[str, Any], rows: int = 2) -> pd.DataFrame:
        import pandas as pd

        from pipeline.core import manifest

        source = manifest.read(spec["dataset"]["uri"])["source"]
        files = sorted(u for u, size in lake.list_files(source) if size > 0)[:rows]
        if files:
            return pd.DataFrame({"content": [lake.read_bytes(u) for u in files]})
        # A catalog table or a query has no files: grey PNGs at the model's input size instead.
        from PIL import Image

        layout = spec["input"]["image"]
        buf = io.BytesIO()
        Image.new("L" if layout["channels"] == 1 else "RGB", (layout["width"], layout["height"]), 128).save(buf, "PNG")
        return pd.DataFrame({"content": [buf.getvalue()] * rows})


ATTRIBUTION = "attribution"  # float32 HxW, row-major, summed over channels
OVERLAYS = 8


def _attribution_maps(attr: np.ndarray) -> list[bytes]:
    """(rows, C, H, W) attributions -> each row's HxW float32 map, summed over channels, as bytes."""
    return [m.tobytes() for m in attr.sum(1).astype(np.float32)]


def overlay_png(attr: np.ndarray, pixels: np.ndarray | None, side: int = 256) -> bytes:
    """An attribution map over its image in grey (or alone): red where it pushes the explained
    output up, blue where down, more opaque the larger it is; scaled up to about ``side`` pixels."""
    from PIL import Image

    h, w = attr.shape
    grey = np.full((h, w), 255.0) if pixels is None else pixels.astype(np.float64).mean(2)
    top = float(np.abs(attr).max()) or 1.0
    alpha = (np.abs(attr) / top)[..., None] * 0.8
    colour = np.where((attr >= 0)[..., None], [255.0, 0.0, 0.0], [0.0, 64.0, 255.0])
    rgb = grey[..., None] * (1 - alpha) + colour * alpha
    scale = max(1, side // max(h, w))
    im = Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB").resize((w * scale, h * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def prepare_images(pdf: pd.DataFrame, spec: dict[str, Any]) -> Prepared:
    """A ``content`` column of encoded images -> uint8 (N, C, H, W), bad images with a reason."""
    img = spec["input"]["image"]
    ispec = ImageSpec.from_dict(img)
    ok, arrays = [], []
    reasons: list[str | None] = [None] * len(pdf)
    details: list[str | None] = [None] * len(pdf)
    for i, content in enumerate(pdf["content"]):
        try:
            arrays.append(decode_image(content, ispec))
            ok.append(i)
        except Rejected as r:
            reasons[i], details[i] = r.reason, r.detail[:500]
    x = (np.stack(arrays).transpose(0, 3, 1, 2) if arrays
         else np.zeros((0, ispec.channels, ispec.height, ispec.width), np.uint8))
    return ok, x, reasons, details


def _image_frames(frames: Iterable[pd.DataFrame], plan_uri: str, batch_size: int) -> Iterator[pd.DataFrame]:
    """The task's files (its plan under plan_uri) as (path, content) frames of batch_size rows,
    read by the task itself: nothing per file passes through the JVM."""
    import pandas as pd

    from pipeline.spark import tasks

    for t in tasks.each(frames):
        planned = tasks.read_plan(plan_uri, t)
        if not len(planned):
            continue
        read = lake.file_reader(planned["uri"].iloc[0])
        for lo in range(0, len(planned), batch_size):
            chunk = planned.iloc[lo:lo + batch_size]
            yield tasks.to_spark(pd.DataFrame({"path": chunk["path"].to_numpy(),
                                               "content": [read(u) for u in chunk["uri"]]}))


def image_table(spark: SparkSession, source: str, cfg: Config, date: str | None = None) -> DataFrame:
    """An images table or query as (content, label_name) rows."""
    from pyspark.sql import functions as F

    from pipeline.ingest import sources

    img = cfg.dataset.image
    df = sources.load(spark, source, cfg.dataset.tabular, date)
    absent = [c for c in [img.content_column, img.label_column] if c not in df.columns]
    if img.content_column in absent:
        raise sources.SourceError(f"{source} has no column {img.content_column!r} (dataset.image.content_column); "
                                  f"it has {df.columns}")
    label = F.lit(None).cast("string") if absent else F.col(f"`{img.label_column}`").cast("string")
    return df.select(F.col(f"`{img.content_column}`").cast("binary").alias("content"), label.alias("label_name"))


def _drift_reference(spark: SparkSession, cfg: Config, target: Target, curated: Curated) -> dict[str, Any]:
    """The train split's reference for drift (pipeline/core/drift.py): quantile bins of each
    image's channel means and standard deviations, which the preprocess tasks computed from the
    decoded images as they wrote them (under ``target.plan("drift")``), and the class shares."""
    from pipeline.kinds import drift as spark_drift

    uri = target.plan("drift")
    df = spark.read.parquet(lake.spark_path(uri)).persist() if lake.list_files(uri) else None
    try:
        features = spark_drift.numeric_features(df, stat_names(cfg.dataset.image.channels), cfg.score.drift.bins)
    finally:
        if df is not None:
            df.unpersist()
    names = curated.label_names
    counts = [curated.split_class_counts.get(("train", n), 0) for n in names]
    return {"features": features, "prediction": drift.categorical_reference(names, [*counts, 0])}


def _labels_file(uri: str) -> dict[str, str]:
    """A ``path,label`` CSV (path relative to the source root) as a dict."""
    import pandas as pd

    t = pd.read_csv(io.BytesIO(lake.read_bytes(uri)), dtype=str, keep_default_na=False)
    if list(t.columns[:2]) != ["path", "label"]:
        raise ValueError(f"{uri}: a labels file needs the header path,label; found {list(t.columns)}")
    return {p: label for p, label in zip(t["path"], t["label"]) if label != ""}


def _curated(rows: list, label_names: list[str], channels: int, pixels_per_image: int) -> Curated:
    """Counts by (split, reason, class) and train-split pixel moments from the tasks' results."""
    by_reason: dict[str, int] = {}
    split_counts: dict[str, int] = {}
    split_class: dict[tuple[str, str], int] = {}
    s = np.zeros(channels)
    q = np.zeros(channels)
    pixels_n = 0
    for r in rows:
        if r["reason"] is not None:
            by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + r["n"]
            continue
        split_counts[r["split"]] = split_counts.get(r["split"], 0) + r["n"]
        split_class[(r["split"], r["label_name"])] = split_class.get((r["split"], r["label_name"]), 0) + r["n"]
        if r["split"] == "train":
            pixels_n += r["n"]
            if r["px_sum"] is not None:  # a split's sums ride on one of its rows
                s += r["px_sum"]
                q += r["px_sumsq"]
    total = sum(split_counts.values())
    return Curated(input_count=total + sum(by_reason.values()), output_count=total, by_reason=by_reason,
                   split_counts=split_counts, split_class_counts=split_class, label_names=label_names,
                   fitted={"normalization": moments(s.tolist(), q.tolist(), pixels_n * pixels_per_image)}, schema={})


def moments(s: list[float], q: list[float], n_pixels: int) -> dict[str, list[float]]:
    """Per-channel mean/std in [0, 1] units from summed pixel moments (train split only)."""
    if n_pixels == 0:
        return {"mean": [0.0] * len(s), "std": [1.0] * len(s)}
    mean = [si / n_pixels for si in s]
    std = [math.sqrt(max(qi / n_pixels - m * m, 0.0)) or 1.0 for qi, m in zip(q, mean)]
    return {"mean": mean, "std": std}
