"""The tabular tasks of preprocess and score: Spark schedules them, pyarrow and numpy do the work.

Preprocess runs two Spark jobs:

1. stage: read and validate the records, assign splits, write the good records to
   ``<out>/_staging/part-<n>.arrow`` and the bad ones to the quarantine, and return counts and
   partial statistics of the train split (one small JSON row per task). Either ``stage_arrow``,
   a ``mapInArrow`` over the source read by Spark (pipeline/sources.py; n is the partition), or,
   on the fast path, ``stage`` over task numbers, each task reading its pieces of the files
   with pyarrow (pipeline/tabular.py; n is the task). Both hand Arrow tables to ``Stager``.
   Each staged row keeps where it came from (its file and position in the file) and a hash of
   its values.
2. ``deduplicate``: a Spark shuffle over the staged ids (``staged_keys``, ``mark_duplicates``)
   finds rows that share an id (dataset.tabular.duplicates); a task per staging file that has
   some (``restage``) quarantines them and stages the rest again with fresh statistics, under a
   new part number. Nothing more runs when no id repeats.
3. ``write_curated``, once the driver has merged the statistics into the fitted parameters:
   encode the range of staged rows ``deal`` gave each task and write ``<out>/<split>/part-<task>.parquet``
   (preprocess.files_per_split files per split, however many input partitions there were).

The input is parsed once; staging costs a write and a read of the parsed columns (Arrow IPC,
uncompressed). Every file goes through a hidden temporary name and a rename, so a retried
task attempt replaces its files whole.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from functools import partial
from typing import Any, Callable

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from pipeline.core import drift, lake, quarantine, splits
from pipeline.ingest import sources, tabular
from pipeline.spark import tasks
from pipeline.spark.cli import InputError
from pipeline.core.config import MAX_CATEGORY_BYTES, SplitConf, TabularConf
from pipeline.core.privacy import Pii

STAGE_DDL = "part int, stats string"
STAGE_SCHEMA = pa.schema([("part", pa.int32()), ("stats", pa.string())])
WRITE_DDL = "part int, split string, n long"
PIECES = pa.schema([("uri", pa.string()), ("start", pa.int64()), ("length", pa.int64())])
BATCHES = pa.schema([("part", pa.int64()), ("batch", pa.int64()), ("offset", pa.int64()), ("length", pa.int64())])
ENCODE_ROWS = 65_536  # rows encoded at once: a dense float32 matrix of rows x features
# Where a row came from and what it holds, for finding duplicates: its file, its position in the
# file (rows of a file in order; fast path: the piece's first byte + the row in the piece; Spark's
# reader: monotonically_increasing_id), a hash of its values.
FILE, POS, HASH = "_file", "_pos", "_hash"
KEYS_DDL = f"id string, {HASH} long, {FILE} string, {POS} long, part int, batch int, row int"
# What scoring carries next to its predictions (VALUES: each row's features for drift, ``drift_values``).
CARRY_DDL = f"{HASH} long, {FILE} string, {POS} long, {drift.VALUES} array<double>"
DUPLICATE = "_duplicate"


class DuplicateId(InputError):
    """dataset.tabular.duplicates: error, and an id repeats: one line naming the first."""


def curated_schema(regression: bool) -> pa.Schema:
    return pa.schema([("id", pa.string()), ("features", pa.list_(pa.float32())),
                      ("label", pa.float32() if regression else pa.int32())])


def _staging_schema(tab: TabularConf, regression: bool) -> pa.Schema:
    return pa.schema([("id", pa.string()), ("label", pa.float64() if regression else pa.string()),
                      ("split", pa.int8()), *[(c, pa.float64()) for c in tab.numeric],
                      *[(c, pa.string()) for c in tab.categorical],
                      (HASH, pa.int64()), (FILE, pa.int32()), (POS, pa.int64())])


def with_position(t: pa.Table, uri: str, start: int) -> pa.Table:
    """A piece's records with their file (one dictionary entry) and position (``start`` + row)."""
    n = t.num_rows
    return t.append_column(FILE, pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([uri]))) \
            .append_column(POS, pa.array(start + np.arange(n, dtype=np.int64)))


def with_positions(df: DataFrame) -> DataFrame:
    """Spark's reader: each record's file and an id that grows with its position in the file
    (the splits of a file are read in order)."""
    return df.withColumns({FILE: F.input_file_name(), POS: F.monotonically_increasing_id()})


# --- preprocess, job 1: validate, split, stage ------------------------------------------------

class Stager:
    """One task's staging file (``<staging>/part-<part>.arrow``), its quarantine part and its
    statistics: counts per (split, label) and bad counts by reason, partial fits of the train
    split, the rows of each batch staged, the files the rows came from."""

    def __init__(self, part: int, tab: TabularConf, split: SplitConf, staging_uri: str, quarantine_uri: str,
                 stage_name: str, regression: bool, max_bytes: int = MAX_CATEGORY_BYTES, pii: Pii | None = None):
        self.part, self.tab, self.split, self.regression, self.pii = part, tab, split, regression, pii
        self.quarantine_uri, self.stage_name, self.max_bytes = quarantine_uri, stage_name, max_bytes
        self.schema = _staging_schema(tab, regression)
        self.counts: dict[tuple[int, str], int] = {}
        self.bad_counts: dict[str, int] = {}
        self.bad: list[tabular.Records] = []
        self.fits: list[dict[str, Any]] = []
        self.batch_rows: list[int] = []
        self.files: dict[str, int] = {}
        self.fs, self.path, self.tmp = lake.temporary_name(_staging_part(staging_uri, part), tasks.attempt())
        self.file = self.fs.open(self.tmp, "wb")
        self.writer = pa.ipc.new_file(self.file, self.schema)

    def add(self, t: pa.Table, malformed: list[str]) -> None:
        """Records with their FILE and POS columns (``with_position``, ``with_positions``)."""
        files, pos = self._file_ids(t[FILE]), t[POS].to_numpy()
        rec = tabular.validate(t.drop([FILE, POS]), malformed, self.tab, regression=self.regression,
                               max_bytes=self.max_bytes, pii=self.pii)
        ok = rec.good()
        if not ok.all():
            self.quarantine(rec.take(np.flatnonzero(~ok)))
        idx = np.flatnonzero(ok)  # good records are parsed ones, never the malformed after them
        if len(idx):
            good = rec.take(idx)
            self.keep(good, splits.assign(list(good.ids), self.split), files[idx], pos[idx])

    def quarantine(self, b: tabular.Records) -> None:
        for r, n in zip(*np.unique(b.reason.astype(str), return_counts=True)):
            self.bad_counts[r] = self.bad_counts.get(r, 0) + int(n)
        self.bad.append(b)

    def keep(self, good: tabular.Records, which: np.ndarray, files: np.ndarray, pos: np.ndarray,
             hashes: np.ndarray | None = None) -> None:
        """Stage good records: counted, fitted (train split) and written as one batch."""
        if hashes is None:  # without an id column the id is the hash of the values already
            hashes = tabular.records_hash(good) if self.tab.id_column else np.zeros(len(good), np.int64)
        key = np.full(len(good), "", dtype=object) if self.regression else good.labels
        for (s, label), n in pd.DataFrame({"s": which, "l": key}).value_counts().items():
            self.counts[(int(s), label)] = self.counts.get((int(s), label), 0) + int(n)
        self.fits.append(tabular.partial_fit(good.take(np.flatnonzero(which == 0)), self.tab))
        self.writer.write_table(pa.table(
            {"id": pa.array(good.ids, pa.string()), "label": pa.array(good.labels, self.schema.field("label").type),
             "split": pa.array(which, pa.int8()),
             **{c: pa.array(good.numeric[c], pa.float64()) for c in self.tab.numeric},
             **{c: pa.array(good.categorical[c], pa.string()) for c in self.tab.categorical},
             HASH: pa.array(hashes, pa.int64()), FILE: pa.array(files, pa.int32()), POS: pa.array(pos, pa.int64())},
            schema=self.schema))
        self.batch_rows.append(len(good))

    def _file_ids(self, col: pa.ChunkedArray) -> np.ndarray:
        """Each row's file as an index into this stager's files."""
        enc = col if pa.types.is_dictionary(col.type) else pc.dictionary_encode(col)
        out = [np.zeros(0, np.int32)]
        for chunk in enc.chunks:
            ids = np.array([self.files.setdefault(str(u), len(self.files)) for u in chunk.dictionary.to_pylist()],
                           np.int32)
            out.append(ids[chunk.indices.to_numpy(zero_copy_only=False)])
        return np.concatenate(out)

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
                "counts": [[splits.NAMES[s], label, n] for (s, label), n in self.counts.items()],
                "files": list(self.files)}


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
            records, malformed = tabular.read_piece(piece, kw["tab"])
            stager.add(with_position(records, piece[0], piece[1]), malformed)
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
    (pipeline/sources.py) and ``with_positions`` -> STAGE_DDL; the part number is the Spark
    partition."""
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


# --- preprocess, job 2: rows that share an id --------------------------------------------------

def mark_duplicates(df: DataFrame, key: str, mode: str, has_id: bool, eligible: Column | None = None) -> DataFrame:
    """``df`` (``key``, HASH, FILE, POS, ...) plus DUPLICATE: the reason each row is quarantined as
    a duplicate, or null. Rows of a key are compared among the ``eligible`` ones (default: all),
    in order of (FILE, POS). ``mode`` is dataset.tabular.duplicates: quarantine (rows that differ:
    all duplicate_id; identical rows: the first kept, the others duplicate_row) or keep_first (the
    first kept; the others duplicate_row where identical to it, else duplicate_id). Without an id
    (``has_id`` false) rows share a key only when identical: the first is kept."""
    df = df.withColumn("_eligible", F.lit(True) if eligible is None else eligible)
    rows = Window.partitionBy(key, "_eligible")
    ordered = rows.orderBy(FILE, POS)
    later = F.row_number().over(ordered) > 1
    if not has_id:
        reason = F.when(later, tabular.DUPLICATE_ROW)
    elif mode == "keep_first":
        same = F.col(HASH) == F.first(HASH).over(ordered)
        reason = F.when(later, F.when(same, tabular.DUPLICATE_ROW).otherwise(tabular.DUPLICATE_ID))
    else:
        differ = F.min(HASH).over(rows) != F.max(HASH).over(rows)
        reason = F.when(differ, tabular.DUPLICATE_ID).when(later, tabular.DUPLICATE_ROW)
    return df.withColumn(DUPLICATE, F.when(F.col("_eligible"), reason)).drop("_eligible")


def check_unique(df: DataFrame, key: str, id_column: str) -> None:
    """DuplicateId naming the id whose first row comes first (by FILE, POS), if any repeats."""
    first = (df.groupBy(key).agg(F.count(F.lit(1)).alias("n"), F.min(F.struct(FILE, POS)).alias("at"))
             .where("n > 1").orderBy("at").limit(1).collect())
    if first:
        r = first[0]
        where = " ".join((r["at"][FILE] or "the source").split())  # one line
        raise DuplicateId(f"{id_column}={r[key]!r} is on {r['n']} rows (the first in {where}) "
                          f"and dataset.tabular.duplicates is error; fix the input, or set it to quarantine or "
                          f"keep_first to quarantine the extra rows")


def staged_keys(frames: Iterator[pd.DataFrame], staging_uri: str, plan_uri: str) -> Iterator[pd.DataFrame]:
    """mapInPandas body over task numbers -> KEYS_DDL: each staged row's id, hash, file, position
    and place in the staging file; task t reads the part its plan names (with the part's files)."""
    for t in tasks.each(frames):
        plan = tasks.read_plan(plan_uri, t)
        part, uris = int(plan["part"].iloc[0]), plan["uri"].to_numpy(object)
        for b, batch in _staged_batches(staging_uri, part):
            n = batch.num_rows
            yield tasks.to_spark(pd.DataFrame({
                "id": batch.column("id").to_numpy(zero_copy_only=False), HASH: batch.column(HASH).to_numpy(),
                FILE: uris[batch.column(FILE).to_numpy()], POS: batch.column(POS).to_numpy(),
                "part": np.full(n, part, np.int32), "batch": np.full(n, b, np.int32),
                "row": np.arange(n, dtype=np.int32)}))


def _staging_part(staging_uri: str, part: int) -> str:
    """The Arrow file a staging task writes and the later steps read."""
    return f"{staging_uri}/part-{int(part):05d}.arrow"


def _staged_batches(staging_uri: str, part: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    fs, path = fsspec.core.url_to_fs(_staging_part(staging_uri, part))
    with fs.open(path, "rb") as f:
        reader = pa.ipc.open_file(f)
        for b in range(reader.num_record_batches):
            yield b, reader.get_batch(b)


def restage(drops: pd.DataFrame, base: int, tab: TabularConf, split: SplitConf, staging_uri: str,
            quarantine_uri: str, regression: bool) -> pd.DataFrame:
    """applyInPandas body per staging part with duplicates (part, batch, row, DUPLICATE) ->
    STAGE_DDL: the dropped rows to the quarantine (the record as JSON), the others staged again
    as part ``base + part`` with their statistics; the stats name the part they replace."""
    part = int(drops["part"].iloc[0])
    stager = Stager(base + part, tab, split, staging_uri, quarantine_uri, "preprocess.deduplicate", regression)
    where = {int(b): g for b, g in drops.groupby("batch")}
    names = [*([("id", tab.id_column)] if tab.id_column else []), ("label", tab.label_column),
             *[(c, c) for c in [*tab.numeric, *tab.categorical]]]
    for b, batch in _staged_batches(staging_uri, part):
        rec = _records(batch, tab)
        reason = np.full(batch.num_rows, None, dtype=object)
        if b in where:
            reason[where[b]["row"].to_numpy()] = where[b][DUPLICATE].to_numpy(object)
        gone = np.flatnonzero(pd.notna(reason))
        if len(gone):
            raw = pa.Table.from_batches([batch]).take(pa.array(gone)).to_pylist()
            stager.quarantine(replace(
                rec.take(gone), reason=reason[gone],
                detail=np.array([f"{tab.id_column or 'id'}={r['id']}" for r in raw], dtype=object),
                source=np.array([json.dumps({name: r[c] for c, name in names if r[c] is not None and r[c] == r[c]},
                                            ensure_ascii=False) for r in raw], dtype=object)))
        kept = np.flatnonzero(pd.isna(reason))
        if len(kept):
            stager.keep(rec.take(kept), batch.column("split").to_numpy()[kept], batch.column(FILE).to_numpy()[kept],
                        batch.column(POS).to_numpy()[kept], batch.column(HASH).to_numpy()[kept])
    stats = stager.close()
    return pd.DataFrame({"part": [stats["part"]], "stats": [json.dumps({**stats, "replaces": part})]})


def deduplicate(spark: SparkSession, stats: list[dict[str, Any]], tab: TabularConf, split: SplitConf,
                staging_uri: str, quarantine_uri: str, plan_uri: str, regression: bool) -> list[dict[str, Any]]:
    """The staging tasks' stats with rows that share an id dealt with (dataset.tabular.duplicates):
    a shuffle of the staged ids finds them (nothing is collected but the first id, for
    ``error``); ``restage`` replaces each staging part that has some."""
    staged = [s for s in stats if s["batch_rows"]]
    if sum(n for s in staged for n in s["batch_rows"]) < 2:
        return stats
    tasks.write_plans([pa.table({"part": pa.array([s["part"]] * len(s["files"]), pa.int32()),
                                 "uri": pa.array(s["files"], pa.string())}) for s in staged], plan_uri)
    keys = tasks.numbers(spark, len(staged)).mapInPandas(
        partial(staged_keys, staging_uri=staging_uri, plan_uri=plan_uri), KEYS_DDL)
    if tab.duplicates == "error" and tab.id_column:
        check_unique(keys, "id", tab.id_column)
        return stats
    drops = (mark_duplicates(keys, "id", tab.duplicates, bool(tab.id_column))
             .where(F.col(DUPLICATE).isNotNull()).select("part", "batch", "row", DUPLICATE))
    body = partial(restage, base=max(s["part"] for s in stats) + 1, tab=tab, split=split, staging_uri=staging_uri,
                   quarantine_uri=quarantine_uri, regression=regression)
    fixed = {s["replaces"]: s for s in (json.loads(r["stats"]) for r in
                                        drops.groupBy("part").applyInPandas(body, STAGE_DDL).collect())}
    out = []
    for s in stats:
        if s["part"] in fixed:
            new = fixed[s["part"]]
            bad = dict(s["bad"])
            for reason, n in new["bad"].items():
                bad[reason] = bad.get(reason, 0) + n
            s = {**new, "bad": bad, "files": s["files"]}
        out.append(s)
    return out


def _staged(staging_uri: str, plan: pd.DataFrame, tab: TabularConf
            ) -> Iterator[tuple[pa.RecordBatch, tabular.Records]]:
    for part, slices in plan.groupby("part", sort=True):
        fs, path = fsspec.core.url_to_fs(_staging_part(staging_uri, part))
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


def train_numbers_ddl(tab: TabularConf, regression: bool) -> str:
    """``staged_train``'s columns: f<i> for the i-th numeric column, then a numeric label."""
    return ", ".join([f"f{i} double" for i in range(len(tab.numeric))] + (["label double"] if regression else []))


def staged_train(frames: Iterator[pd.DataFrame], staging_uri: str, plan_uri: str, tab: TabularConf,
                 regression: bool) -> Iterator[pd.DataFrame]:
    """mapInPandas body over task numbers -> ``train_numbers_ddl``: the numeric columns (and a
    numeric label) of the train split's staged rows, NaN where missing; task t reads the staging
    part its plan names. Preprocess computes the drift reference from them."""
    for t in tasks.each(frames):
        part = int(tasks.read_plan(plan_uri, t)["part"].iloc[0])
        for _, batch in _staged_batches(staging_uri, part):
            train = batch.filter(pc.equal(batch.column("split"), 0))
            cols = {f"f{i}": train.column(c).to_numpy(zero_copy_only=False) for i, c in enumerate(tab.numeric)}
            if regression:
                cols["label"] = train.column("label").to_numpy(zero_copy_only=False)
            yield pd.DataFrame(cols)


# --- preprocess, job 2 ------------------------------------------------------------------------

def write_curated(frames: Iterator[pd.DataFrame], tab: TabularConf, params: dict[str, Any], label_names: list[str],
                  staging_uri: str, plan_uri: str, split_uris: dict[str, str], row_group_bytes: int,
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
                    writers[s] = lake.ParquetPart(f"{split_uris[splits.NAMES[s]]}/part-{t:05d}.parquet", schema,
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

def _score_frames(rec: tabular.Records, tab: TabularConf, params: dict[str, Any], batch_size: int,
                  pii: Pii | None = None) -> Iterator[tuple[pd.DataFrame, tabular.Records]]:
    for lo in range(0, len(rec), batch_size):
        r = rec.take(np.arange(lo, min(lo + batch_size, len(rec))))
        ok = np.flatnonzero(r.good())
        features = np.full(len(r), None, dtype=object)
        if len(ok):
            x = tabular.encode(r.take(ok), tab, params)
            for j, i in enumerate(ok):
                features[i] = x[j]
        values = np.full(len(r), None, dtype=object)
        if len(ok):
            for j, v in zip(ok, drift_values(r.take(ok), tab, params, pii.hashed if pii else ())):
                values[j] = v
        hashes = np.zeros(len(r), np.int64)
        if len(ok) and tab.id_column:  # without one the id is the hash of the values already
            hashes[ok] = tabular.records_hash(r.take(ok))
        yield pd.DataFrame({"id": r.ids, "source": r.source, "reason": r.reason, "detail": r.detail,
                            "features": features, HASH: hashes,
                            FILE: r.extra[FILE].to_numpy(zero_copy_only=False),
                            POS: pc.fill_null(r.extra[POS], -1).to_numpy(zero_copy_only=False),
                            drift.VALUES: values}), r


def drift_values(rec: tabular.Records, tab: TabularConf, params: dict[str, Any], personal: Sequence[str] = ()
                 ) -> np.ndarray:
    """Each record's features as the drift reference describes them (float64, one row each): the
    numeric values as read (NaN where missing), then each categorical's index in the fitted
    vocabulary (NaN for an unknown value or null); ``personal`` columns have no reference."""
    cols = [rec.numeric[c] for c in tab.numeric]
    for c in [c for c in tab.categorical if c not in personal]:
        index = {v: float(i) for i, v in enumerate(params["categorical"][c])}
        cols.append(pd.Series(rec.categorical[c], dtype=object).map(index).to_numpy(np.float64, na_value=np.nan))
    return np.column_stack(cols) if cols else np.zeros((len(rec), 0))


def score_records(frames: Iterable[pd.DataFrame], plan_uri: str, tab: TabularConf, params: dict[str, Any],
                  batch_size: int, max_bytes: int = MAX_CATEGORY_BYTES, pii: Pii | None = None
                  ) -> Iterator[pd.DataFrame]:
    """The fast path: the tasks' records (plans under plan_uri), validated (no label needed) and
    encoded with the dataset version's parameters, in frames of batch_size: id, source, reason,
    detail, features (None if bad), and HASH, FILE, POS for finding duplicates."""
    for t in tasks.each(frames):
        for piece in read_pieces(plan_uri, t):
            records, malformed = tabular.read_piece(piece, tab, label_required=False)
            rec = tabular.validate(with_position(records, piece[0], piece[1]), malformed, tab, label_required=False,
                                   extra=[FILE, POS], max_bytes=max_bytes, pii=pii)
            for pdf, _ in _score_frames(rec, tab, params, batch_size, pii):
                yield pdf


def score_batches(batches: Iterator[pa.RecordBatch], tab: TabularConf, params: dict[str, Any], batch_size: int,
                  extra: Sequence[str] = (), max_bytes: int = MAX_CATEGORY_BYTES, pii: Pii | None = None
                  ) -> Iterator[tuple[pd.DataFrame, tabular.Records]]:
    """The Spark-reader path: (frame as score_records gives, its Records with the ``extra``
    columns) of the source's declared columns (pipeline/sources.py) and ``with_positions``. An
    ``extra`` column that is personal and hashed carries its hash."""
    hashed = [c for c in extra if pii is not None and c in pii.hashed]
    for t in tables(batches):
        t, malformed = split_corrupt(t)
        for c in hashed:
            assert pii is not None
            name = sources.PASSTHROUGH + c
            t = t.set_column(t.column_names.index(name), name, tabular.private(t[name], pii))
        rec = tabular.validate(t, malformed, tab, label_required=False, max_bytes=max_bytes, pii=pii,
                               extra=[sources.PASSTHROUGH + c for c in extra] + [FILE, POS])
        yield from _score_frames(rec, tab, params, batch_size, pii)


def scored_duplicates(frame: DataFrame, tab: TabularConf) -> tuple[DataFrame, Callable[[DataFrame], None] | None]:
    """Scoring: (the scored frame with rows that share an id quarantined, as preprocess does; or,
    for dataset.tabular.duplicates: error, the frame as it is and the check that raises
    DuplicateId on the scored rows). A quarantined duplicate's source is its file."""
    good = F.col("reason").isNull()
    if tab.duplicates == "error" and tab.id_column:
        return frame, lambda scored: check_unique(scored.where(good), "key", tab.id_column)
    dup = F.col(DUPLICATE)
    marked = mark_duplicates(frame, "key", tab.duplicates, bool(tab.id_column), eligible=good)
    return marked.withColumns({
        "reason": F.coalesce("reason", dup),
        "detail": F.when(dup.isNotNull(), F.concat(F.lit(f"{tab.id_column or 'id'}="), "key")).otherwise(F.col("detail")),
        "source": F.when(dup.isNotNull(), F.coalesce(F.nullif(F.col(FILE), F.lit("")), "key")).otherwise(F.col("source")),
    }).drop(DUPLICATE), None
