"""Curated Parquet -> numpy batches for one rank, through Petastorm or a plain pyarrow reader.

Both readers give a rank the same row groups: the split's Parquet files in path order, their
row groups in file order, group *i* to rank *i* mod *N* (Petastorm's ``cur_shard`` rule), in an
order shuffled by a seed per pass. Columns arrive as whole row groups; images are stored as
fixed-size uint8 blobs, so a batch is turned into one (N, C, H, W) array with a single join (no
per-row Python work, which is what makes a naive Petastorm TransformSpec slow).
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Iterator

import numpy as np

READERS = ("petastorm", "arrow")


def default_reader() -> str:
    """Petastorm where it is installed (the default stack), the pyarrow reader otherwise."""
    from pipeline.training.distributed import installed

    return "petastorm" if installed("petastorm") else "arrow"


def shard_batches(url: str, rank: int, size: int, *, fields: list[str], reader: str, seed: int | None,
                  shuffle: bool) -> Iterator:
    """One pass over this rank's shard: a batch per row group, numpy columns by attribute."""
    if reader == "petastorm":
        yield from _petastorm_shard(url, rank, size, fields=fields, seed=seed, shuffle=shuffle)
    elif reader == "arrow":
        yield from _arrow_shard(url, rank, size, fields=fields, seed=seed, shuffle=shuffle)
    else:
        raise ValueError(f"unknown train.reader {reader!r}; use auto, petastorm or arrow")


def _petastorm_shard(url, rank, size, *, fields, seed, shuffle):
    from petastorm import make_batch_reader
    from petastorm.errors import NoDataAvailableError

    try:
        # One worker thread keeps the row-group order, and so a training run, reproducible.
        reader = make_batch_reader(url, schema_fields=fields, cur_shard=rank, shard_count=size, num_epochs=1,
                                   shuffle_row_groups=shuffle, seed=seed, workers_count=1,
                                   reader_pool_type="thread")
    except NoDataAvailableError:
        return  # fewer row groups than ranks: this rank's shard is empty
    with reader:
        yield from reader


def shard_row_groups(url: str, rank: int, size: int, seed: int | None, shuffle: bool) -> list[tuple[str, int]]:
    """(file, row group) pairs of this rank's shard, in reading order: what Petastorm 0.12's
    ``make_batch_reader(cur_shard=rank, shard_count=size, seed=seed, shuffle_row_groups=shuffle)``
    reads, step by step (tests/test_equivalence.py compares the two):

    1. every row group of the split, files in path order, groups in file order (their index);
    2. with a seed, that index list shuffled by ``random.Random(seed)`` (``Reader._partition_row_groups``),
       then the indexes with ``index % size == rank`` kept: the seed orders a shard, it never
       changes which row groups it holds;
    3. with ``shuffle``, those shuffled again by ``np.random.RandomState(seed)`` (the ventilator's
       ``randomize_item_order``).

    Fewer row groups than ranks gives every rank an empty shard (Petastorm raises
    ``NoDataAvailableError`` for each).
    """
    import random

    from pipeline.core import lake

    groups = [(f, i) for f, _ in lake.list_files(url) if f.endswith(".parquet")
              for i in range(_parquet_file(f).metadata.num_row_groups)]
    if len(groups) < size:
        return []
    indexes = list(range(len(groups)))
    if seed is not None:
        random.Random(seed).shuffle(indexes)
    mine = [i for i in indexes if i % size == rank]
    if shuffle:
        np.random.RandomState(seed).shuffle(mine)
    return [groups[i] for i in mine]


def _arrow_shard(url, rank, size, *, fields, seed, shuffle):
    """The shard's row groups in order, each read by one background thread while the caller
    works on the one before (pyarrow reads and decompresses without the GIL), as Petastorm's
    reader thread does; the order does not depend on timing."""
    from concurrent.futures import ThreadPoolExecutor

    groups = shard_row_groups(url, rank, size, seed, shuffle)
    if not groups:
        return
    files: dict = {}  # touched by the reading thread only

    def read(group):
        f, i = group
        if f not in files:
            files[f] = _parquet_file(f)
        table = files[f].read_row_group(i, columns=fields)
        return SimpleNamespace(**{name: _to_numpy(table.column(name)) for name in fields})

    # Closing this generator (the trainer does at the end of an epoch) waits for at most the
    # one read in flight.
    with ThreadPoolExecutor(1, thread_name_prefix="feed-arrow") as pool:
        pending = pool.submit(read, groups[0])
        for nxt in groups[1:]:
            batch = pending.result()
            pending = pool.submit(read, nxt)
            yield batch
        yield pending.result()


def _parquet_file(uri: str):
    import pyarrow.parquet as pq

    from pipeline.core import lake

    fs, path = lake._fs(uri)
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return pq.ParquetFile(path if "file" in protocols else fs.open(path, "rb"))


def _to_numpy(col) -> np.ndarray:
    import pyarrow as pa

    arr = col.combine_chunks()
    if pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type):
        blobs = _fixed_size_blobs(arr)
        if blobs is not None:
            return blobs
    if pa.types.is_fixed_size_list(arr.type) or pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        flat = arr.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(len(arr), -1) if len(arr) else flat.reshape(0, 0)
    return arr.to_numpy(zero_copy_only=False)


def _fixed_size_blobs(arr) -> np.ndarray | None:
    """A binary column whose values all have one length (the curated image blobs) as an
    (N, length) uint8 view of the Arrow data buffer: no bytes object per row, no copy. None if
    the lengths differ or a value is null (the caller then takes one bytes object per row)."""
    import pyarrow as pa

    n = len(arr)
    if n == 0 or arr.null_count:
        return None
    large = pa.types.is_large_binary(arr.type)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64 if large else np.int32, count=n + 1,
                            offset=arr.offset * (8 if large else 4))
    size = int(offsets[1] - offsets[0])
    if size == 0 or not (np.diff(offsets) == size).all():
        return None
    return np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]].reshape(n, size)


def endless_row_groups(url: str, rank: int, size: int, *, fields: list[str], reader: str, seed: int,
                       decode) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """This rank's shard as an endless stream of decoded row groups, reshuffled on every pass.

    Each pass opens a fresh single-pass reader seeded with (seed, pass). Petastorm's own
    ``num_epochs=None`` mode reorders row groups nondeterministically when the process is
    busy (a ventilator race, seen under load), which would make runs and resumes diverge.
    """
    p = 0
    while True:
        pass_seed = int(np.random.SeedSequence([seed, p]).generate_state(1)[0] % (2**31))
        empty = True
        for batch in shard_batches(url, rank, size, fields=fields, reader=reader, seed=pass_seed, shuffle=True):
            empty = False
            yield decode(batch)
        if empty:
            raise RuntimeError(f"rank {rank} of {size} has no row groups in {url}")
        p += 1


def shuffled_batches(chunks: Iterator[tuple[np.ndarray, np.ndarray]], batch_size: int, buffer: int,
                     rng: np.random.Generator | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Re-batch row-group chunks into fixed-size batches through a shuffle buffer.

    The pool fills to ``buffer`` rows, is permuted, and emits all but half a buffer; the rest
    mixes with the next row groups. With buffer=0 rows keep their order. A last partial batch
    is emitted when the input ends.
    """
    # The pool is conceptually concatenate([kept, chunk]); rows are gathered from the two parts
    # without building it, so each new row is copied once, into its batch.
    if buffer and rng is None:
        raise ValueError("shuffled_batches: a shuffle buffer needs an rng")
    kept_x: np.ndarray | None = None
    kept_y: np.ndarray | None = None
    for x, y in chunks:
        k = 0 if kept_y is None else len(kept_y)
        n = k + len(y)
        keep = buffer // 2
        n_emit = (n - keep) // batch_size * batch_size
        if n < max(buffer, batch_size) or n_emit <= 0:
            kept_x = x if kept_x is None else np.concatenate([kept_x, x])
            kept_y = y if kept_y is None else np.concatenate([kept_y, y])
            continue
        perm = rng.permutation(n) if buffer and rng is not None else np.arange(n)
        out_x, out_y = _take(kept_x, x, perm[:n_emit]), _take(kept_y, y, perm[:n_emit])
        for i in range(0, n_emit, batch_size):
            yield out_x[i:i + batch_size], out_y[i:i + batch_size]
        kept_x, kept_y = _take(kept_x, x, perm[n_emit:]), _take(kept_y, y, perm[n_emit:])
    if kept_x is not None and kept_y is not None and len(kept_y):
        perm = rng.permutation(len(kept_y)) if buffer and rng is not None else np.arange(len(kept_y))
        out_x, out_y = kept_x.take(perm, axis=0), kept_y.take(perm, axis=0)  # axis 0: multi-step labels are 2-D
        for i in range(0, len(kept_y), batch_size):
            yield out_x[i:i + batch_size], out_y[i:i + batch_size]


def _take(head: np.ndarray | None, tail: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """concatenate([head, tail]).take(idx, axis=0) without the concatenation: one gather from
    tail, then the few rows that come from head put in place."""
    k = 0 if head is None else len(head)
    out = tail.take(np.maximum(idx - k, 0), axis=0)
    if head is not None and k:
        at = np.flatnonzero(idx < k)
        out[at] = head.take(idx[at], axis=0)
    return out
