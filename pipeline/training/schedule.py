"""Learning-rate schedule and step planning: plain functions, testable without Horovod."""
from __future__ import annotations

import math


def peak_lr(base_lr: float, world_size: int, scale: bool) -> float:
    # Horovod's recipe: the effective batch grows with the world size, so does the step size.
    return base_lr * world_size if scale else base_lr


def lr_at(epoch: float, base_lr: float, world_size: int, warmup_epochs: int, total_epochs: int,
          scale: bool = True, schedule: str = "cosine") -> float:
    """Linear warm-up from base_lr to the peak, then constant or cosine decay to zero at the end."""
    peak = peak_lr(base_lr, world_size, scale)
    if warmup_epochs > 0 and epoch < warmup_epochs:
        return base_lr + (peak - base_lr) * epoch / warmup_epochs
    if schedule == "constant":
        return peak
    span = max(total_epochs - warmup_epochs, 1)
    progress = min(max((epoch - warmup_epochs) / span, 0.0), 1.0)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def steps_per_epoch(train_rows: int, batch_size: int, world_size: int) -> int:
    """The same step count for every rank, whatever its shard size.

    Petastorm shards by row group, so shards differ in size. Each rank reads its shard as an
    endless stream and takes exactly this many batches per epoch; one epoch therefore
    processes train_rows samples in total (to within a batch per rank), and ranks with a
    smaller shard see their rows slightly more often. No rank waits in a collective for a
    peer that has run out of data.
    """
    return max(1, train_rows // (batch_size * world_size))
