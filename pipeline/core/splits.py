"""Deterministic train/val/test assignment from a hash of each record's id.

split = pmod(xxhash64(seed, id), 1e6) / 1e6 against the configured fractions, computed in numpy
by the tasks (which parse their records in Python) and equal bit for bit to the same formula in
Spark SQL (tests/test_preprocess_transforms.py), so a split can be reproduced in SQL. A record
gets the same split on every run, whatever the partitioning.
"""
from __future__ import annotations

import numpy as np

from pipeline.core.config import SplitConf
from pipeline.core.layout import SPLITS as NAMES

_P1, _P2, _P3, _P4, _P5 = (np.uint64(p) for p in (
    11400714785074694791, 14029467366897019727, 1609587929392839161, 9650029242287828579, 2870177450012600261))


def _rotl(x, r):
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


def _round(acc, lane):
    return _rotl(acc + lane * _P2, 31) * _P1


def _fmix(h):
    h = (h ^ (h >> np.uint64(33))) * _P2
    h = (h ^ (h >> np.uint64(29))) * _P3
    return h ^ (h >> np.uint64(32))


def _lanes(data: np.ndarray, offset: int, width: int) -> np.ndarray:
    return np.ascontiguousarray(data[:, offset:offset + width]).view("<u8" if width == 8 else "<u4").ravel().astype(np.uint64)


def _xxh64_fixed(data: np.ndarray, seed: np.uint64) -> np.ndarray:
    """XXH64 of n byte strings of one length (an (n, L) uint8 array)."""
    n, length = data.shape
    off = 0
    zeros = np.zeros(n, np.uint64)
    with np.errstate(over="ignore"):
        if length >= 32:
            v = [zeros + seed + _P1 + _P2, zeros + seed + _P2, zeros + seed, zeros + seed - _P1]
            while off + 32 <= length:
                v = [_round(v[k], _lanes(data, off + 8 * k, 8)) for k in range(4)]
                off += 32
            h = _rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)
            for k in range(4):
                h = (h ^ _round(zeros, v[k])) * _P1 + _P4
        else:
            h = zeros + seed + _P5
        h = h + np.uint64(length)
        while off + 8 <= length:
            h = _rotl(h ^ _round(zeros, _lanes(data, off, 8)), 27) * _P1 + _P4
            off += 8
        if off + 4 <= length:
            h = _rotl(h ^ (_lanes(data, off, 4) * _P1), 23) * _P2 + _P3
            off += 4
        while off < length:
            h = _rotl(h ^ (data[:, off].astype(np.uint64) * _P5), 11) * _P1
            off += 1
        return _fmix(h)


def _xxh64_int(value: int, seed: int) -> np.uint64:
    with np.errstate(over="ignore"):
        h = np.array([seed], np.uint64) + _P5 + np.uint64(4)
        h = _rotl(h ^ (np.uint64(value & 0xFFFFFFFF) * _P1), 23) * _P2 + _P3
        return _fmix(h)[0]


def xxhash64(seed: int, ids: list[str]) -> np.ndarray:
    """Spark's xxhash64(seed, id) (an int then a string column), as int64."""
    s = _xxh64_int(seed, 42)  # Spark starts from 42 and chains the columns
    encoded = [x.encode() for x in ids]
    lengths = np.fromiter((len(b) for b in encoded), np.int64, len(encoded))
    out = np.empty(len(encoded), np.uint64)
    for length in np.unique(lengths):  # vectorised over the ids of each length
        idx = np.flatnonzero(lengths == length)
        data = np.frombuffer(b"".join(encoded[i] for i in idx), np.uint8).reshape(len(idx), int(length))
        out[idx] = _xxh64_fixed(data, s)
    return out.view(np.int64)


def assign(ids: list[str], split: SplitConf) -> np.ndarray:
    """Index into NAMES of each id's split (int8)."""
    u = (xxhash64(split.seed, ids) % 1_000_000) / 1_000_000.0  # numpy % is pmod for a positive divisor
    return np.where(u < split.train, 0, np.where(u < split.train + split.val, 1, 2)).astype(np.int8)
