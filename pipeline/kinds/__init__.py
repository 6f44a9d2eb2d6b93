"""The kinds of dataset the pipeline handles, each behind one interface (``base.Kind``).

preprocess, train and score look a kind up by the manifest's or config's ``kind`` and call it;
no other code compares the kind's name. A new kind is one module here and one line below.
"""
from __future__ import annotations

from pipeline.core.config import Config, ConfigError
from pipeline.kinds.base import Kind
from pipeline.kinds.images import Images
from pipeline.kinds.sequence import Sequence
from pipeline.kinds.tabular import Tabular

KINDS: dict[str, Kind] = {k.name: k for k in (Images(), Tabular(), Sequence())}


def get(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise ConfigError(f"dataset.kind: {name!r} is not a kind; use one of {sorted(KINDS)}") from None


def for_config(cfg: Config) -> Kind:
    """The config's kind, after the checks of its own settings (ConfigError names the key)."""
    kind = get(cfg.dataset.kind)
    if cfg.dataset.privacy.pii_columns and not kind.personal_columns:
        raise ConfigError(f"dataset.privacy: {kind.name} datasets have no personal columns to hash or drop "
                          f"(tables and sequences do); remove dataset.privacy.pii_columns")
    kind.check_config(cfg)
    return kind
