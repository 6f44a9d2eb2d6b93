"""Petastorm -> numpy batches for one rank.

Each rank opens ``make_batch_reader`` on its own shard (``cur_shard=rank``). Columns arrive as
whole row groups; images are stored as fixed-size uint8 blobs, so a batch is turned into one
(N, C, H, W) array with a single join (no per-row Python work, which is what makes a naive
petastorm TransformSpec slow).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np


def open_reader(url: str, rank: int, size: int, *, fields: list[str], seed: int | None,
                infinite: bool, shuffle: bool, workers: int = 1):
    from petastorm import make_batch_reader

    # One worker thread keeps the row-group order, and so a training run, reproducible.
    return make_batch_reader(
        url, schema_fields=fields, cur_shard=rank, shard_count=size,
        num_epochs=None if infinite else 1, shuffle_row_groups=shuffle, seed=seed,
        workers_count=workers, reader_pool_type="thread",
    )


def endless_row_groups(url: str, rank: int, size: int, *, fields: list[str], seed: int,
                       decode) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """This rank's shard as an endless stream of row groups, reshuffled on every pass.

    Each pass opens a fresh single-pass reader seeded with (seed, pass). Petastorm's own
    ``num_epochs=None`` mode reorders row groups nondeterministically when the process is
    busy (a ventilator race, seen under load), which would make runs and resumes diverge.
    """
    p = 0
    while True:
        pass_seed = int(np.random.SeedSequence([seed, p]).generate_state(1)[0] % (2**31))
        with open_reader(url, rank, size, fields=fields, seed=pass_seed, infinite=False, shuffle=True) as reader:
            yield from row_group_batches(reader, decode)
        p += 1


def row_group_batches(reader, decode) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(features, labels) per row group, features decoded by ``decode(column)``."""
    for batch in reader:
        yield decode(batch), np.asarray(batch.label, dtype=np.int64)


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
