"""Per-epoch checkpoints, written atomically by rank 0.

A checkpoint holds everything a resume needs: model and optimizer state, epoch, history,
early-stopping state, the model spec and the resolved config. Random streams are re-derived
from (seed, rank, epoch) at the start of every epoch, so no per-rank RNG state is needed for
a resume to replay the remaining epochs exactly.
"""
from __future__ import annotations

import io
from typing import Any

from pipeline.core import lake


def _name(epoch: int) -> str:
    return f"epoch={epoch:04d}.pt"


def save(checkpoint_dir: str, epoch: int, state: dict[str, Any], keep: int = 0) -> str:
    """Write epoch's checkpoint, move _latest to it, then drop all but the newest ``keep`` (0 = keep all)."""
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    uri = f"{checkpoint_dir}/{_name(epoch)}"
    lake.write_bytes(uri, buf.getvalue())
    lake.set_latest(checkpoint_dir, _name(epoch))
    if keep > 0:
        names = sorted(n for n in lake.listdir(checkpoint_dir) if n.startswith("epoch=") and n.endswith(".pt"))
        for old in names[:-keep]:
            lake.remove(f"{checkpoint_dir}/{old}")
    return uri


def latest(checkpoint_dir: str) -> str | None:
    try:
        return f"{checkpoint_dir}/{lake.get_latest(checkpoint_dir)}"
    except FileNotFoundError:
        return None


def load(uri: str) -> dict[str, Any]:
    import torch

    return torch.load(io.BytesIO(lake.read_bytes(uri)), weights_only=True, map_location="cpu")
