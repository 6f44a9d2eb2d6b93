"""The tabular tasks of preprocess and score: Spark schedules them, pyarrow and numpy do the work.

Preprocess runs two Spark jobs:

1. stage: read and validate the records, assign splits, write the good records to
   ``<out>/_staging/part-<n>.arrow`` and the bad ones to the quarantine, and return counts and
   partial statistics of the train split (one small JSON row per task). Either ``stage_arrow``,
   a ``mapInArrow`` over the source read by Spark (pipeline/sources.py; n is the partition), or,
   on the fast path, ``stage`` over task numbers, each task reading its pieces of the files
   with pyarrow (pipeline/tabular.py; n is the task). Both hand Arrow tables to ``Stager``.
2. ``write_curated``, once the driver has merged the statistics into the fitted parameters:
   encode the range of staged rows ``deal`` gave each task and write ``<out>/<split>/part-<task>.parquet``
   (preprocess.files_per_split files per split, however many input partitions there were).

The input is parsed once; staging costs a write and a read of the parsed columns (Arrow IPC,
uncompressed). Every file goes through a hidden temporary name and a rename, so a retried
task attempt replaces its files whole.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core import lake, quarantine, splits
from pipeline.ingest import sources, tabular
from pipeline.spark import tasks
from pipeline.core.config import SplitConf, TabularConf

STAGE_DDL = "part int, stats string"
STAGE_SCHEMA = pa.schema([("part", pa.int32()), ("stats", pa.string())])
WRITE_DDL = "part int, split string, n long"
PIECES = pa.schema([("uri", pa.string()), ("start", pa.int64()), ("length", pa.int64())])
BATCHES = pa.schema([("part", pa.int64()), ("batch", pa.int64()), ("offset", pa.int64()), ("length", pa.int64())])
ENCODE_ROWS = 65_536  # rows encoded at once: a dense float32 matrix of rows x features


def curated_schema(regression: bool) -> pa.Schema:
    return pa.schema([("id", pa.string()), ("features", pa.list_(pa.float32())),
                      ("label", pa.float32() if regression else pa.int32())])


def _staging_schema(tab: TabularConf, regression: bool) -> pa.Schema:
    return pa.schema([("id", pa.string()), ("label", pa.float64() if regression else pa.string()),
                      ("split", pa.int8()), *[(c, pa.float64()) for c in tab.numeric],
                      *[(c, pa.string()) for c in tab.categorical]])


# --- preprocess, job 1: validate, split, stage ------------------------------------------------

class Stager:
    """One task's staging file (``<staging>/part-<part>.arrow``), its quarantine part and its
    statistics: counts per (split, label) and bad counts by reason, partial fits of the train
    split, the rows of each batch staged."""

    def __init__(self, part: int, tab: TabularConf, split: SplitConf, staging_uri: str, quarantine_uri: str,
                 stage_name: str, regression: bool):
        self.part, self.tab, self.split, self.regression = part, tab, split, regression
        self.quarantine_uri, self.stage_name = quarantine_uri, stage_name
        self.schema = _staging_schema(tab, regression)
        self.counts: dict[tuple[int, str], int] = {}
        self.bad_counts: dict[str, int] = {}
        self.bad: list[tabular.Records] = []
        self.fits: list[dict[str, Any]] = []
        self.batch_rows: list[int] = []
        self.fs, self.path, self.tmp = lake.temporary_name(f"{staging_uri}/part-{part:05d}.arrow", tasks.attempt())
        self.file = self.fs.open(self.tmp, "wb")
        self.writer = pa.ipc.new_file(self.file, self.schema)

    def add(self, t: pa.Table, malformed: list[str]) -> None:
        rec = tabular.validate(t, malformed, self.tab, regression=self.regression)
        ok = rec.good()
        if not ok.all():
            b = rec.take(np.flatnonzero(~ok))
            for r, n in zip(*np.unique(b.reason.astype(str), return_counts=True)):
                self.bad_counts[r] = self.bad_counts.get(r, 0) + int(n)
            self.bad.append(b)
        good = rec.take(np.flatnonzero(ok))
        if not len(good):
            return
        which = splits.assign(list(good.ids), self.split)
        key = np.full(len(good), "", dtype=object) if self.regression else good.labels
        for (s, label), n in pd.DataFrame({"s": which, "l": key}).value_counts().items():
            self.counts[(int(s), label)] = self.counts.get((int(s), label), 0) + int(n)
        self.fits.append(tabular.partial_fit(good.take(np.flatnonzero(which == 0)), self.tab))
        self.writer.write_table(pa.table(
            {"id": pa.array(good.ids, pa.string()), "label": pa.array(good.labels, self.schema.field("label").type),
             "split": pa.array(which, pa.int8()),
             **{c: pa.array(good.numeric[c], pa.float64()) for c in self.tab.numeric},
             **{c: pa.array(good.categorical[c], pa.string()) for c in self.tab.categorical}}, schema=self.schema))
        self.batch_rows.append(len(good))

    def close(self) -> dict[str, Any]:
        self.writer.close()
        self.file.close()
        self.fs.mv(self.tmp, self.path)
        if self.bad:
            quarantine.write_part(self.quarantine_uri, self.part, tasks.attempt(),
                                  np.concatenate([b.source for b in self.bad]),
                                  np.concatenate([b.reason for b in self.bad]),
                                  np.concatenate([b.detail for b in self.bad]), self.stage_name)
        return {"part": self.part, "batch_rows": self.batch_rows, "bad": self.bad_counts, "fits": self.fits,
                "counts": [[splits.NAMES[s], label, n] for (s, label), n in self.counts.items()]}


def write_pieces(pieces: list[list[tabular.Piece]], plan_uri: str) -> None:
    """Each task's pieces as its plan file (pipeline/tasks.py)."""
    tasks.write_plans([pa.table({"uri": [p[0] for p in ps], "start": [p[1] for p in ps],
                                 "length": [p[2] for p in ps]}, schema=PIECES) for ps in pieces], plan_uri)


def read_pieces(plan_uri: str, task: int) -> list[tabular.Piece]:
    plan = tasks.read_plan(plan_uri, task)
    return list(zip(plan["uri"], plan["start"].astype(int), plan["length"].astype(int)))


def stage(frames: Iterator[pd.DataFrame], plan_uri: str, **kw) -> Iterator[pd.DataFrame]:
    """The fast path: mapInPandas body over task numbers -> STAGE_DDL; each task reads its own
    pieces of the files with pyarrow (pipeline/tabular.py)."""
    for t in tasks.each(frames):
        stager = Stager(t, **kw)
        for piece in read_pieces(plan_uri, t):
            stager.add(*tabular.read_piece(piece, kw["tab"]))
        yield tasks.to_spark(pd.DataFrame({"part": [t], "stats": [json.dumps(stager.close())]}))


def tables(batches: Iterator[pa.RecordBatch], rows: int = ENCODE_ROWS) -> Iterator[pa.Table]:
    """Arrow batches gathered into tables of at least ``rows`` rows (the last may be smaller)."""
    pending: list[pa.RecordBatch] = []
    n = 0
    for b in batches:
        pending.append(b)
        n += b.num_rows
        if n >= rows:
            yield pa.Table.from_batches(pending)
            pending, n = [], 0
    if n:
        yield pa.Table.from_batches(pending)


def split_corrupt(t: pa.Table) -> tuple[pa.Table, list[str]]:
    """(the parsed records, the text of those Spark's reader could not parse)."""
    if sources.CORRUPT not in t.column_names:
        return t, []
    corrupt = t[sources.CORRUPT]
    bad = pc.is_valid(corrupt)
    return t.filter(pc.invert(bad)).drop([sources.CORRUPT]), corrupt.filter(bad).to_pylist()


def stage_arrow(batches: Iterator[pa.RecordBatch], **kw) -> Iterator[pa.RecordBatch]:
    """The Spark-reader path: mapInArrow body over the source's declared columns
    (pipeline/sources.py) -> STAGE_DDL; the part number is the Spark partition."""
    stager = Stager(tasks.partition(), **kw)
    for t in tables(batches):
        stager.add(*split_corrupt(t))
    yield pa.RecordBatch.from_pydict({"part": [stager.part], "stats": [json.dumps(stager.close())]},
                                     schema=STAGE_SCHEMA)


def deal(stats: list[dict[str, Any]], n_tasks: int) -> list[pa.Table]:
    """The staged rows cut into n_tasks near-equal contiguous ranges, as (part, batch, offset,
    length) slices of the staged batches: every output file gets its share of rows, however many
    input partitions (or however few rows) there were."""
    sizes = [(s["part"], b, n) for s in sorted(stats, key=lambda s: s["part"]) for b, n in enumerate(s["batch_rows"])]
    total = sum(n for _, _, n in sizes)
    bounds = [total * t // n_tasks for t in range(n_tasks + 1)]
    out: list[list[tuple[int, int, int, int]]] = [[] for _ in range(n_tasks)]
    start = 0
    for part, b, n in sizes:
        for t in range(n_tasks):  # the tasks whose range overlaps rows [start, start + n)
            lo, hi = max(start, bounds[t]), min(start + n, bounds[t + 1])
            if lo < hi:
                out[t].append((part, b, lo - start, hi - lo))
        start += n
    return [pa.table({k: [row[i] for row in rows] for i, k in enumerate(BATCHES.names)}, schema=BATCHES)
            for rows in out]


def _staged(staging_uri: str, plan: pd.DataFrame, tab: TabularConf
            ) -> Iterator[tuple[pa.RecordBatch, tabular.Records]]:
    for part, slices in plan.groupby("part", sort=True):
        fs, path = fsspec.core.url_to_fs(f"{staging_uri}/part-{int(part):05d}.arrow")
        with fs.open(path, "rb") as f:
            reader = pa.ipc.open_file(f)
            for b, offset, length in zip(slices["batch"], slices["offset"], slices["length"]):
                whole = reader.get_batch(int(b)).slice(int(offset), int(length))
                for lo in range(0, whole.num_rows, ENCODE_ROWS):  # encoded in slices, to bound the memory
                    s = whole.slice(lo, ENCODE_ROWS)
                    yield s, _records(s, tab)


def _records(b: pa.RecordBatch, tab: TabularConf) -> tabular.Records:
    cols = {name: b.column(name) for name in b.schema.names}
    none = np.full(b.num_rows, None, dtype=object)
    return tabular.Records(
        ids=cols["id"].to_numpy(zero_copy_only=False), labels=cols["label"].to_numpy(zero_copy_only=False),
        numeric={c: cols[c].to_numpy() for c in tab.numeric},
        categorical={c: cols[c].to_numpy(zero_copy_only=False) for c in tab.categorical},
        reason=none, detail=none, source=none)


# --- preprocess, job 2 ------------------------------------------------------------------------

def write_curated(frames: Iterator[pd.DataFrame], tab: TabularConf, params: dict[str, Any], label_names: list[str],
                  staging_uri: str, plan_uri: str, out_uri: str, row_group_bytes: int,
                  regression: bool = False) -> Iterator[pd.DataFrame]:
    """mapInPandas body over task numbers -> WRITE_DDL: encodes the staged batches ``deal`` gave
    the task and writes ``<out>/<split>/part-<task>.parquet``."""
    index = {n: i for i, n in enumerate(label_names)}
    schema = curated_schema(regression)
    for t in tasks.each(frames):
        writers: dict[int, lake.ParquetPart] = {}
        for batch, rec in _staged(staging_uri, tasks.read_plan(plan_uri, t), tab):
            x = tabular.encode(rec, tab, params)
            labels = (rec.labels.astype(np.float32) if regression
                      else pd.Series(rec.labels).map(index).to_numpy(np.int32))
            which = batch.column("split").to_numpy()
            for s in np.unique(which):
                sel = np.flatnonzero(which == s)
                if s not in writers:
                    writers[s] = lake.ParquetPart(f"{out_uri}/{splits.NAMES[s]}/part-{t:05d}.parquet", schema,
                                                  row_group_bytes, tasks.attempt())
                writers[s].write(pa.table({"id": batch.column("id").take(pa.array(sel)),
                                           "features": tabular.features_array(x[sel]),
                                           "label": pa.array(labels[sel], schema.field("label").type)},
                                          schema=schema))
        for w in writers.values():
            w.close()
        yield tasks.to_spark(pd.DataFrame({"part": [t] * len(writers), "split": [splits.NAMES[s] for s in writers],
                                           "n": [w.rows for w in writers.values()]}))


# --- score ------------------------------------------------------------------------------------

def _score_frames(rec: tabular.Records, tab: TabularConf, params: dict[str, Any], batch_size: int
                  ) -> Iterator[tuple[pd.DataFrame, tabular.Records]]:
    for lo in range(0, len(rec), batch_size):
        r = rec.take(np.arange(lo, min(lo + batch_size, len(rec))))
        ok = np.flatnonzero(r.good())
        features = np.full(len(r), None, dtype=object)
        if len(ok):
            x = tabular.encode(r.take(ok), tab, params)
            for j, i in enumerate(ok):
                features[i] = x[j]
        yield pd.DataFrame({"id": r.ids, "source": r.source, "reason": r.reason, "detail": r.detail,
                            "features": features}), r


def score_records(frames: Iterable[pd.DataFrame], plan_uri: str, tab: TabularConf, params: dict[str, Any],
                  batch_size: int) -> Iterator[pd.DataFrame]:
    """The fast path: the tasks' records (plans under plan_uri), validated (no label needed) and
    encoded with the dataset version's parameters, in frames of batch_size: id, source, reason,
    detail, features (None if bad)."""
    for t in tasks.each(frames):
        for piece in read_pieces(plan_uri, t):
            rec = tabular.validate(*tabular.read_piece(piece, tab, label_required=False), tab, label_required=False)
            for pdf, _ in _score_frames(rec, tab, params, batch_size):
                yield pdf


def score_batches(batches: Iterator[pa.RecordBatch], tab: TabularConf, params: dict[str, Any], batch_size: int,
                  extra: Sequence[str] = ()) -> Iterator[tuple[pd.DataFrame, tabular.Records]]:
    """The Spark-reader path: (frame as score_records gives, its Records with the ``extra``
    columns) of the source's declared columns (pipeline/sources.py)."""
    for t in tables(batches):
        t, malformed = split_corrupt(t)
        rec = tabular.validate(t, malformed, tab, label_required=False, extra=[sources.PASSTHROUGH + c for c in extra])
        yield from _score_frames(rec, tab, params, batch_size)
