"""Deterministic train/val/test assignment from a hash of each record's id.

split = pmod(xxhash64(seed, id), 1e6) / 1e6 against the configured fractions, computed in numpy
by the tasks (which parse their records in Python) and equal bit for bit to the same formula in
Spark SQL (tests/test_preprocess_transforms.py), so a split can be reproduced in SQL. A record
gets the same split on every run, whatever the partitioning.
"""
from __future__ import annotations

import struct

import numpy as np
import xxhash

from pipeline.core.config import SplitConf
from pipeline.core.layout import SPLITS as NAMES

def xxhash64(seed: int, ids: list[str]) -> np.ndarray:
    """Spark's xxhash64(seed, id) (an int then a string column), as int64: Spark hashes the int
    (4 bytes, little-endian) with seed 42, then the id's UTF-8 bytes with that hash as the seed."""
    s = xxhash.xxh64_intdigest(struct.pack("<i", seed), seed=42)
    return np.fromiter((xxhash.xxh64_intdigest(x.encode(), seed=s) for x in ids), np.uint64, len(ids)).view(np.int64)


def assign(ids: list[str], split: SplitConf) -> np.ndarray:
    """Index into NAMES of each id's split (int8)."""
    u = (xxhash64(split.seed, ids) % 1_000_000) / 1_000_000.0  # numpy % is pmod for a positive divisor
    return np.where(u < split.train, 0, np.where(u < split.train + split.val, 1, 2)).astype(np.int8)
