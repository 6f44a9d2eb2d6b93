"""Curated image files, written by the Python workers that decode the images.

Preprocessing images is decode-bound, and the decoding has to happen in Python. Handing the
pixels back to the JVM to cache, shuffle into splits and write again as Parquet cost as much CPU
again as the decoding (bench/README.md). Here Spark only schedules the work: the driver lists
the files and deals them, with their id, label and split, to one task per output file
(``plan``, written as one small Parquet file per task). Each task (``run_task``) reads and
decodes its files, writes one Parquet file per split straight to the lake with pyarrow, and
writes its bad records to the quarantine; only counts per (split, class), pixel sums per split
and counts of bad records by reason go back to Spark. With a ``drift_uri``, each task also writes
its train images' channel statistics there (``images.channel_stats``: a few floats per image,
from the arrays it decoded anyway), which the driver turns into the drift reference.

A task writes ``<out>/<split>/part-<partition>.parquet`` through ``lake.ParquetPart``: a hidden
temporary name and a rename, so a retried or speculative attempt replaces the file whole and
readers never see part of one. Nothing here moves ``_latest``: a failed run leaves no version
marked complete, and preprocess removes what it wrote.

The driver lists the input (as Spark's own file index would): about 300 bytes of driver memory
per file. For tens of millions of files, preprocess the input in parts.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.core import lake, quarantine, splits
from pipeline.spark import tasks
from pipeline.core.config import SplitConf
from pipeline.ingest.images import ImageSpec, Rejected, channel_stats, decode_image

MISSING_LABEL = "missing_label"
# write_splits: one row per (split, class) with counts and pixel sums, or per bad record.
RESULT_COLUMNS = ["split", "label_name", "reason", "detail", "source", "n", "px_sum", "px_sumsq"]
# run_task: the same without the bad records' text, which went to the quarantine.
TASK_DDL = "split string, label_name string, reason string, n long, px_sum array<double>, px_sumsq array<double>"
SCHEMA = pa.schema([("id", pa.string()), ("path", pa.string()), ("image", pa.binary()), ("label", pa.int32())])


def plan(source_uri: str, labels: dict[str, str] | None, split: SplitConf, n_tasks: int) -> tuple[list[pa.Table], list[str]]:
    """Every file under the source (zero-byte ones included: they are quarantined) as
    (uri, path, id, label_name, split), dealt round-robin to n_tasks (so every output file gets a
    mix of the classes), and the class names.

    id is the path relative to the source root; path is the file as Spark names it, so curated
    and quarantined rows match the other jobs'. label_name is the folder holding the file (None
    for a file directly in the source folder, which has no class folder), or with ``labels``
    (relative path -> label) the file's label, None where it has none. A file without a label
    is quarantined as missing_label.
    """
    uris = [u for u, _ in lake.list_files(source_uri)]
    root = lake.local_path(source_uri).rstrip("/") + "/"
    ids = [u.split("://", 1)[-1][len(root):] for u in uris]
    paths = [lake.spark_path(u) for u in uris]
    names: list[str | None]
    if labels is None:  # a file directly in the source folder has no class folder: no label
        top = lake.spark_path(source_uri.rstrip("/"))
        names = [None if p.rsplit("/", 1)[0] == top else p.rsplit("/", 2)[-2] for p in paths]
    else:
        names = [labels.get(i) for i in ids]
    table = pa.table({"uri": uris, "path": paths, "id": ids, "label_name": pa.array(names, pa.string()),
                      "split": np.asarray(splits.NAMES)[splits.assign(ids, split)]})
    classes = sorted({n for n in names if n is not None})
    return [table.take(pa.array(np.arange(t, len(uris), n_tasks))) for t in range(n_tasks)], classes


class _SplitWriter:
    """One split's Parquet file: buffers rows, writes row groups of about row_group_bytes, counts
    rows per class and, for the train split, histograms pixel values per channel (exact, and
    cheaper than summing floats image by image: bench/README.md) and, with ``stats``, keeps each
    image's channel statistics (the drift reference's features: ``images.channel_stats``)."""

    def __init__(self, uri: str, row_group_bytes: int, channels: int, moments: bool, stats: bool = False):
        self.row_group_bytes, self.channels = row_group_bytes, channels
        # Row groups are cut here (flush), so the file writes each flush as one.
        self.file = lake.ParquetPart(uri, SCHEMA, 0, tasks.attempt())
        self.rows: dict[str, list] = {k: [] for k in SCHEMA.names}
        self.buffered = 0
        self.counts: dict[int, int] = {}
        self.hist = np.zeros((channels, 256), np.int64) if moments else None
        self.keep_stats = moments and stats
        self.stats: list[np.ndarray] = []

    def add(self, id_: str, path: str, image: bytes, label: int) -> None:
        for k, v in zip(SCHEMA.names, (id_, path, image, label)):
            self.rows[k].append(v)
        self.buffered += len(image) + len(id_) + len(path) + 4
        if self.buffered >= self.row_group_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.rows["id"]:
            return
        labels, counts = np.unique(self.rows["label"], return_counts=True)
        for label, n in zip(labels.tolist(), counts.tolist()):
            self.counts[label] = self.counts.get(label, 0) + n
        if self.hist is not None:
            px = np.frombuffer(b"".join(self.rows["image"]), np.uint8).reshape(-1, self.channels)
            for c in range(self.channels):
                self.hist[c] += np.bincount(px[:, c], minlength=256)
            if self.keep_stats:
                self.stats.append(channel_stats(px.reshape(len(self.rows["id"]), -1, self.channels).transpose(0, 2, 1)))
        self.file.write(pa.Table.from_pydict(self.rows, SCHEMA))
        self.rows = {k: [] for k in SCHEMA.names}
        self.buffered = 0

    def moments(self) -> tuple[list[float], list[float]] | tuple[None, None]:
        """Sums of pixel values and of their squares per channel, as fractions of 255."""
        if self.hist is None:
            return None, None
        v = np.arange(256, dtype=np.float64) / 255.0
        return (self.hist @ v).tolist(), (self.hist @ (v * v)).tolist()

    def close(self) -> None:
        self.flush()
        self.file.close()


def write_splits(frames: Iterator[pd.DataFrame], spec: ImageSpec, split_uris: dict[str, str], label_names: list[str],
                 row_group_bytes: int, part: int | None = None, drift_uri: str | None = None) -> Iterator[pd.DataFrame]:
    """mapInPandas body: (uri, path, id, label_name, split) -> RESULT_COLUMNS, writing the good images.
    With a ``content`` column instead of ``uri`` the images come in the frames (a table source).

    ``part`` numbers the output files; in a Spark task it is the partition. With ``drift_uri``,
    the train images' channel statistics go to ``<drift_uri>/part-<part>.parquet`` (columns
    ``f0``, ``f1``, ... in ``images.stat_names`` order), for the drift reference.
    """
    if part is None:
        part = tasks.partition()
    index = {n: i for i, n in enumerate(label_names)}
    writers: dict[str, _SplitWriter] = {}
    bad: list[tuple] = []
    read: Callable[[str], bytes] | None = None
    for pdf in frames:
        inline = "content" in pdf  # images from a table: the bytes are in the frame
        if read is None and len(pdf) and not inline:
            read = lake.file_reader(pdf["uri"].iloc[0])
        for data, path, id_, label_name, split in zip(pdf["content"] if inline else pdf["uri"], pdf["path"], pdf["id"],
                                                      pdf["label_name"], pdf["split"]):
            if not inline:
                assert read is not None  # set above from the first frame with rows
                data = read(data)
            try:
                arr = decode_image(data, spec)
            except Rejected as r:
                bad.append((split, label_name, r.reason, r.detail[:500], path))
                continue
            if label_name not in index:
                bad.append((split, None, MISSING_LABEL, f"no label for {id_}", path))
                continue
            if split not in writers:
                writers[split] = _SplitWriter(f"{split_uris[split]}/part-{part:05d}.parquet", row_group_bytes,
                                              spec.channels, moments=split == "train", stats=drift_uri is not None)
            writers[split].add(id_, path, arr.tobytes(), index[label_name])
    rows = []
    for split, w in writers.items():
        w.close()
        if w.stats:
            _write_stats(np.concatenate(w.stats), f"{drift_uri}/part-{part:05d}.parquet")
        s, q = w.moments()
        # The split's pixel sums ride on its first class's row; the statistics add them up per split.
        for i, (label, n) in enumerate(sorted(w.counts.items())):
            rows.append((split, label_names[label], None, None, None, n, s if i == 0 else None, q if i == 0 else None))
    rows += [(sp, name, reason, detail, src, 1, None, None) for sp, name, reason, detail, src in bad]
    yield tasks.to_spark(pd.DataFrame(rows, columns=RESULT_COLUMNS))


def _write_stats(stats: np.ndarray, uri: str) -> None:
    table = pa.table({f"f{j}": stats[:, j] for j in range(stats.shape[1])})
    part = lake.ParquetPart(uri, table.schema, 1 << 62, tasks.attempt())
    part.write(table)
    part.close()


def run_task(frames: Iterator[pd.DataFrame], plan_uri: str, spec: ImageSpec, split_uris: dict[str, str], label_names: list[str],
             row_group_bytes: int, quarantine_uri: str, step: str, drift_uri: str | None = None) -> Iterator[pd.DataFrame]:
    """mapInPandas body over task numbers (pipeline/tasks.py) -> TASK_DDL: each task reads its
    plan (``<plan_uri>/part-<task>.parquet``), runs write_splits over it and writes its bad
    records to the quarantine; what comes back is counts and pixel sums, and counts of the bad
    records by reason."""
    for t in tasks.each(frames):
        planned = tasks.read_plan(plan_uri, t)
        batches = (planned.iloc[i:i + 1024] for i in range(0, len(planned), 1024))
        yield _finish(write_splits(batches, spec, split_uris, label_names, row_group_bytes, part=t, drift_uri=drift_uri),
                      t, quarantine_uri, step)


def content_ids(content: pd.Series) -> list[str]:
    """Ids of images from a table: a hash of the encoded bytes (identical images share a split)."""
    return [hashlib.sha1(b if b is not None else b"").hexdigest()[:16] for b in content]


def run_table_task(frames: Iterator[pd.DataFrame], split: SplitConf, spec: ImageSpec, split_uris: dict[str, str],
                   label_names: list[str], row_group_bytes: int, quarantine_uri: str, step: str,
                   drift_uri: str | None = None) -> Iterator[pd.DataFrame]:
    """mapInPandas body over a table's (content, label_name) rows -> TASK_DDL, as run_task; the
    part number is the Spark partition."""
    def planned():
        for pdf in frames:
            ids = content_ids(pdf["content"])
            yield pd.DataFrame({"content": pdf["content"], "path": ids, "id": ids, "label_name": pdf["label_name"],
                                "split": np.asarray(splits.NAMES)[splits.assign(ids, split)]})
    part = tasks.partition()
    yield _finish(write_splits(planned(), spec, split_uris, label_names, row_group_bytes, part=part,
                               drift_uri=drift_uri), part, quarantine_uri, step)


def _finish(results: Iterator[pd.DataFrame], part: int, quarantine_uri: str, step: str) -> pd.DataFrame:
    """write_splits' results with the bad records written to the quarantine and counted by reason."""
    res = pd.concat([*results, pd.DataFrame(columns=RESULT_COLUMNS)], ignore_index=True)
    bad = res[res["reason"].notna()]
    if len(bad):
        quarantine.write_part(quarantine_uri, part, tasks.attempt(), bad["source"].to_numpy(),
                              bad["reason"].to_numpy(), bad["detail"].to_numpy(), step)
        counts = bad.groupby(["split", "label_name", "reason"], dropna=False)["n"].sum().reset_index()
        res = pd.concat([res[res["reason"].isna()], counts], ignore_index=True)
    for c in ("px_sum", "px_sumsq"):  # lists, or None (not NaN) where the row has none
        res[c] = [v if isinstance(v, list) else None for v in res[c]]
    return tasks.to_spark(res.drop(columns=["detail", "source"]))
