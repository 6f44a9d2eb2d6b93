"""Personal columns (``dataset.privacy``): hashed with a keyed HMAC, or dropped, before anything
is written.

``hash`` is HMAC-SHA256 keyed with the UTF-8 bytes of the environment variable ``key_env`` names,
over the UTF-8 bytes of the validated text; the result is lowercase hex and a null stays null.
The same key gives the same hash in preprocess, score and the served model, so rows can be joined
back; without the key nobody can recompute one from a guessed value. A hashed column used as a
feature is a categorical over ``int(hex[:8], 16) % buckets``. The key is read from the
environment and held in memory only: ``Pii`` leaves it out of its repr, and nothing writes it.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa

from pipeline.core.config import ConfigError, PrivacyConf, TabularConf

HASH, DROP = "hash", "drop"


@dataclass(frozen=True)
class Pii:
    """A dataset's personal columns (column -> hash or drop), its feature buckets, and the key."""
    columns: dict[str, str]
    buckets: int
    key_env: str
    key: bytes = field(default=b"", repr=False, compare=False)

    @property
    def hashed(self) -> list[str]:
        return [c for c, how in self.columns.items() if how == HASH]

    def describe(self) -> dict[str, Any]:
        """What the manifest and the model spec record: never the key."""
        return {"columns": dict(self.columns), "buckets": self.buckets, "key_env": self.key_env}

    def hmac_hex(self, texts: pa.Array | pa.ChunkedArray) -> pa.Array:
        """HMAC-SHA256 of each string as lowercase hex; null stays null."""
        key = self.key
        return pa.array([None if v is None else hmac.new(key, v.encode("utf-8"), hashlib.sha256).hexdigest()
                         for v in texts.to_pylist()], pa.string())

    def bucket(self, hexes: pa.Array) -> pa.Array:
        """The feature value of a hashed column: its bucket, as text (a categorical's value)."""
        n = self.buckets
        return pa.array([None if h is None else str(int(h[:8], 16) % n) for h in hexes.to_pylist()], pa.string())

    def vocabulary(self) -> list[str]:
        """Every bucket: a hashed feature's fixed vocabulary, fitted on nothing."""
        return [str(i) for i in range(self.buckets)]


def of(spec: dict[str, Any] | None, need_key: bool = True) -> Pii | None:
    """The ``Pii`` a manifest's or model spec's ``privacy`` entry describes, with the key from the
    environment (ConfigError naming the variable when a column is hashed and it is not set)."""
    if not spec or not spec.get("columns"):
        return None
    pii = Pii(dict(spec["columns"]), int(spec["buckets"]), str(spec["key_env"]))
    return with_key(pii) if need_key else pii


def with_key(pii: Pii) -> Pii:
    if not pii.hashed:
        return pii
    value = os.environ.get(pii.key_env)
    if not value:
        raise ConfigError(f"dataset.privacy.key_env: the environment variable {pii.key_env} is not set (or is "
                          f"empty) and {pii.hashed} are hashed; export the key in it")
    return replace(pii, key=value.encode("utf-8"))


def effective(tab: TabularConf, pii: Pii | None) -> TabularConf:
    """The table as the rest of the pipeline sees it: a hashed numeric column becomes a categorical
    (its buckets), after the declared categoricals."""
    if pii is None:
        return tab
    moved = [c for c in tab.numeric if c in pii.hashed]
    if not moved:
        return tab
    return replace(tab, numeric=[c for c in tab.numeric if c not in moved], categorical=[*tab.categorical, *moved])


def from_config(conf: PrivacyConf) -> Pii | None:
    """dataset.privacy as a ``Pii`` with the key (None when no column is personal)."""
    if not conf.pii_columns:
        return None
    return with_key(Pii(dict(conf.pii_columns), conf.buckets, conf.key_env))
