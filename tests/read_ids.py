"""The row ids each rank's training feed delivers, per epoch, as JSON on stdout.

    python tests/read_ids.py URL READER SIZES EPOCHS BATCH BUFFER SEED

Runs the trainer's input path (``feed.endless_row_groups`` + ``feed.shuffled_batches`` with the
trainer's per-epoch seeds, ``schedule.steps_per_epoch`` steps) with the ``id`` column in place of
the features, for every rank of every world size in SIZES (comma-separated). Also prints the
row-group order of one pass per rank: the first id of each row group. tests/test_equivalence.py
runs it under each stack profile's interpreter.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.training import feed
from pipeline.core import lake
from pipeline.training import schedule  # noqa: E402
from pipeline.training.trainer import _seed_all  # noqa: E402


def train_rows(url: str) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(lake.local_path(f)).metadata.num_rows for f, _ in lake.list_files(url))


def epoch_ids(url: str, reader: str, rank: int, size: int, epoch: int, batch: int, buffer: int, seed: int) -> list[str]:
    """What train_rank's Batches.train_stream yields to rank ``rank`` in ``epoch``, as ids."""
    steps = schedule.steps_per_epoch(train_rows(url), batch, size)
    rng = _seed_all(seed, rank, epoch)  # as train_epoch seeds it
    chunks = feed.endless_row_groups(url, rank, size, fields=["id", "label"], reader=reader,
                                     seed=seed * 1000 + epoch,
                                     decode=lambda b: (np.asarray(b.id, dtype=object), np.asarray(b.label)))
    try:
        batches = feed.shuffled_batches(chunks, batch, buffer, rng)
        return [str(i) for _ in range(steps) for i in next(batches)[0]]
    finally:
        chunks.close()


def row_group_order(url: str, reader: str, rank: int, size: int, seed: int) -> list[str]:
    return [str(np.asarray(b.id, dtype=object)[0]) for b in
            feed.shard_batches(url, rank, size, fields=["id"], reader=reader, seed=seed, shuffle=True)]


def main(url: str, reader: str, sizes: str, epochs: str, batch: str, buffer: str, seed: str) -> None:
    out = {}
    for size in map(int, sizes.split(",")):
        for rank in range(size):
            out[f"order/{size}/{rank}"] = row_group_order(url, reader, rank, size, int(seed))
            for epoch in range(int(epochs)):
                out[f"ids/{size}/{rank}/{epoch}"] = epoch_ids(url, reader, rank, size, epoch, int(batch),
                                                             int(buffer), int(seed))
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(*sys.argv[1:])
