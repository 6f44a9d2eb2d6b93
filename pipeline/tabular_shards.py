"""The tabular tasks of preprocess and score: Spark schedules them, pyarrow and numpy do the work.

Preprocess runs two Spark jobs over the same task numbers (pipeline/tasks.py); ``plan`` in
pipeline/tabular.py gives each task its pieces of the input:

1. ``stage``: read and validate the task's pieces, assign splits, write the good records to
   ``<out>/_staging/part-<task>.arrow`` and the bad ones to the quarantine, and return counts
   and partial statistics of the train split (one small JSON row per task).
2. ``write_curated``, once the driver has merged the statistics into the fitted parameters:
   encode the staged records and write ``<out>/<split>/part-<task>.parquet``.

The input is parsed once; staging costs a write and a read of the parsed columns (Arrow IPC,
uncompressed). Every file goes through a hidden temporary name and a rename, so a retried
task attempt replaces its files whole.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline import lake, quarantine, splits, tabular, tasks
from pipeline.config import SplitConf, TabularConf

STAGE_DDL = "part int, stats string"
WRITE_DDL = "part int, split string, n long"
PIECES = pa.schema([("uri", pa.string()), ("start", pa.int64()), ("length", pa.int64())])
ENCODE_ROWS = 65_536  # rows encoded at once: a dense float32 matrix of rows x features
CURATED = pa.schema([("id", pa.string()), ("features", pa.list_(pa.float32())), ("label", pa.int32())])


def _staging_schema(tab: TabularConf) -> pa.Schema:
    return pa.schema([("id", pa.string()), ("label", pa.string()), ("split", pa.int8()),
                      *[(c, pa.float64()) for c in tab.numeric], *[(c, pa.string()) for c in tab.categorical]])


# --- preprocess, job 1 ------------------------------------------------------------------------

def write_pieces(pieces: list[list[tabular.Piece]], plan_uri: str) -> None:
    """Each task's pieces as its plan file (pipeline/tasks.py)."""
    tasks.write_plans([pa.table({"uri": [p[0] for p in ps], "start": [p[1] for p in ps],
                                 "length": [p[2] for p in ps]}, schema=PIECES) for ps in pieces], plan_uri)


def read_pieces(plan_uri: str, task: int) -> list[tabular.Piece]:
    plan = tasks.read_plan(plan_uri, task)
    return list(zip(plan["uri"], plan["start"].astype(int), plan["length"].astype(int)))


def stage(frames: Iterator[pd.DataFrame], plan_uri: str, tab: TabularConf, split: SplitConf,
          staging_uri: str, quarantine_uri: str, stage_name: str) -> Iterator[pd.DataFrame]:
    """mapInPandas body over task numbers -> STAGE_DDL."""
    for t in tasks.each(frames):
        stats = stage_task(read_pieces(plan_uri, t), t, tab, split, staging_uri, quarantine_uri, stage_name)
        yield tasks.to_spark(pd.DataFrame({"part": [t], "stats": [json.dumps(stats)]}))


def stage_task(pieces: list[tabular.Piece], part: int, tab: TabularConf, split: SplitConf, staging_uri: str,
               quarantine_uri: str, stage_name: str) -> dict[str, Any]:
    """Reads, validates and stages one task's pieces; returns counts and partial statistics."""
    schema = _staging_schema(tab)
    counts: dict[tuple[int, str], int] = {}
    bad_counts: dict[str, int] = {}
    bad: list[tabular.Records] = []
    fits = []
    fs, path, tmp = lake.temporary_name(f"{staging_uri}/part-{part:05d}.arrow", tasks.attempt())
    with fs.open(tmp, "wb") as f, pa.ipc.new_file(f, schema) as staged:
        for piece in pieces:
            rec = tabular.validate(*tabular.read_piece(piece, tab), tab)
            ok = rec.good()
            if not ok.all():
                b = rec.take(np.flatnonzero(~ok))
                for r, n in zip(*np.unique(b.reason.astype(str), return_counts=True)):
                    bad_counts[r] = bad_counts.get(r, 0) + int(n)
                bad.append(b)
            good = rec.take(np.flatnonzero(ok))
            which = splits.assign(list(good.ids), split)
            for (s, label), n in pd.DataFrame({"s": which, "l": good.labels}).value_counts().items():
                counts[(int(s), label)] = counts.get((int(s), label), 0) + int(n)
            fits.append(tabular.partial_fit(good.take(np.flatnonzero(which == 0)), tab))
            staged.write_table(pa.table(
                {"id": pa.array(good.ids, pa.string()), "label": pa.array(good.labels, pa.string()),
                 "split": pa.array(which, pa.int8()),
                 **{c: pa.array(good.numeric[c], pa.float64()) for c in tab.numeric},
                 **{c: pa.array(good.categorical[c], pa.string()) for c in tab.categorical}}, schema=schema))
    fs.mv(tmp, path)
    if bad:
        quarantine.write_part(quarantine_uri, part, tasks.attempt(), np.concatenate([b.source for b in bad]),
                              np.concatenate([b.reason for b in bad]), np.concatenate([b.detail for b in bad]),
                              stage_name)
    return {"counts": [[splits.NAMES[s], label, n] for (s, label), n in counts.items()],
            "bad": bad_counts, "fits": fits}


def _staged(staging_uri: str, part: int, tab: TabularConf) -> Iterator[tuple[pa.RecordBatch, tabular.Records]]:
    fs, path = fsspec.core.url_to_fs(f"{staging_uri}/part-{part:05d}.arrow")
    with fs.open(path, "rb") as f:
        reader = pa.ipc.open_file(f)
        for i in range(reader.num_record_batches):
            whole = reader.get_batch(i)  # a whole piece: encoded in slices, to bound the memory
            for lo in range(0, whole.num_rows, ENCODE_ROWS):
                b = whole.slice(lo, ENCODE_ROWS)
                yield b, _records(b, tab)


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
                  staging_uri: str, out_uri: str, row_group_bytes: int) -> Iterator[pd.DataFrame]:
    """mapInPandas body over spark.range(tasks) -> WRITE_DDL: encodes the staged records."""
    index = {n: i for i, n in enumerate(label_names)}
    for t in tasks.each(frames):
        writers: dict[int, lake.ParquetPart] = {}
        for batch, rec in _staged(staging_uri, t, tab):
            x = tabular.encode(rec, tab, params)
            labels = pd.Series(rec.labels).map(index).to_numpy(np.int32)
            which = batch.column("split").to_numpy()
            for s in np.unique(which):
                sel = np.flatnonzero(which == s)
                if s not in writers:
                    writers[s] = lake.ParquetPart(f"{out_uri}/{splits.NAMES[s]}/part-{t:05d}.parquet", CURATED,
                                                  row_group_bytes, tasks.attempt())
                writers[s].write(pa.table({"id": batch.column("id").take(pa.array(sel)),
                                           "features": tabular.features_array(x[sel]),
                                           "label": pa.array(labels[sel], pa.int32())}, schema=CURATED))
        for w in writers.values():
            w.close()
        yield tasks.to_spark(pd.DataFrame({"part": [t] * len(writers), "split": [splits.NAMES[s] for s in writers],
                                           "n": [w.rows for w in writers.values()]}))


# --- score ------------------------------------------------------------------------------------

def score_records(frames: Iterator[pd.DataFrame], plan_uri: str, tab: TabularConf, params: dict[str, Any],
                  batch_size: int) -> Iterator[pd.DataFrame]:
    """The tasks' records (plans under plan_uri), validated (no label needed) and encoded with
    the dataset version's parameters, in frames of batch_size: id, source, reason, detail,
    features (None if bad)."""
    for t in tasks.each(frames):
        for piece in read_pieces(plan_uri, t):
            rec = tabular.validate(*tabular.read_piece(piece, tab, label_required=False), tab, label_required=False)
            for lo in range(0, len(rec), batch_size):
                r = rec.take(np.arange(lo, min(lo + batch_size, len(rec))))
                ok = np.flatnonzero(r.good())
                features = np.full(len(r), None, dtype=object)
                if len(ok):
                    x = tabular.encode(r.take(ok), tab, params)
                    for j, i in enumerate(ok):
                        features[i] = x[j]
                yield tasks.to_spark(pd.DataFrame({"id": r.ids, "source": r.source, "reason": r.reason,
                                                   "detail": r.detail, "features": features}))
