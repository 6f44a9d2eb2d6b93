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
    from pipeline.distributed import installed

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
    """(file, row group) pairs of this rank's shard, in reading order."""
    import pyarrow.parquet as pq

    from pipeline import lake

    groups = [(f, i) for f, _ in lake.list_files(url) if f.endswith(".parquet")
              for i in range(_parquet_file(f).metadata.num_row_groups)]
    mine = [g for i, g in enumerate(groups) if i % size == rank]
    if shuffle:
        # Petastorm's ventilator shuffles its items with np.random.RandomState(seed).
        order = np.arange(len(mine))
        np.random.RandomState(seed).shuffle(order)
        mine = [mine[i] for i in order]
    return mine


def _arrow_shard(url, rank, size, *, fields, seed, shuffle):
    files: dict = {}
    for f, i in shard_row_groups(url, rank, size, seed, shuffle):
        if f not in files:
            files[f] = _parquet_file(f)
        table = files[f].read_row_group(i, columns=fields)
        yield SimpleNamespace(**{name: _to_numpy(table.column(name)) for name in fields})


def _parquet_file(uri: str):
    import pyarrow.parquet as pq

    from pipeline import lake

    fs, path = lake._fs(uri)
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return pq.ParquetFile(path if "file" in protocols else fs.open(path, "rb"))


def _to_numpy(col) -> np.ndarray:
    import pyarrow as pa

    arr = col.combine_chunks()
    if pa.types.is_fixed_size_list(arr.type) or pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        flat = arr.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(len(arr), -1) if len(arr) else flat.reshape(0, 0)
    return arr.to_numpy(zero_copy_only=False)


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
                     rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Re-batch row-group chunks into fixed-size batches through a shuffle buffer.

    The pool fills to ``buffer`` rows, is permuted, and emits all but half a buffer; the rest
    mixes with the next row groups. With buffer=0 rows keep their order. A last partial batch
    is emitted when the input ends.
    """
    pool_x: np.ndarray | None = None
    pool_y: np.ndarray | None = None
    for x, y in chunks:
        pool_x = x if pool_x is None else np.concatenate([pool_x, x])
        pool_y = y if pool_y is None else np.concatenate([pool_y, y])
        if len(pool_y) < max(buffer, batch_size):
            continue
        keep = buffer // 2
        n_emit = (len(pool_y) - keep) // batch_size * batch_size
        if n_emit <= 0:
            continue
        perm = rng.permutation(len(pool_y)) if buffer else np.arange(len(pool_y))
        for i in range(0, n_emit, batch_size):
            idx = perm[i:i + batch_size]
            yield pool_x[idx], pool_y[idx]
        pool_x, pool_y = pool_x[perm[n_emit:]], pool_y[perm[n_emit:]]
    if pool_y is not None and len(pool_y):
        perm = rng.permutation(len(pool_y)) if buffer else np.arange(len(pool_y))
        for i in range(0, len(pool_y), batch_size):
            idx = perm[i:i + batch_size]
            yield pool_x[idx], pool_y[idx]
