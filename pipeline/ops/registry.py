"""Model references, resolved in the lake or through the MLflow registry."""
from __future__ import annotations

from typing import Any

from pipeline.core.layout import REGISTRY_PREFIX, is_run_id
from pipeline.model.artifact import ModelNotFound, resolve
from pipeline.ops import tracking as tr


def resolve_ref(lake_root: str, ref: str, tracking: dict[str, Any] | None = None
                ) -> tuple[str, str, str, dict[str, str] | None]:
    """Any model reference -> (name, lake run id, artifact uri, registry facts or None).

    ``NAME@latest`` and ``NAME@RUN_ID`` resolve in the lake (no tracking needed);
    ``models:/NAME@ALIAS`` and ``NAME@ALIAS`` (any other word: ``champion``, ``candidate``) through
    the MLflow registry (``tracking``: pipeline.ops.tracking.settings), whose version points back to
    the lake artifact its training run wrote. Raises ModelNotFound.
    """
    from_registry = ref.startswith(REGISTRY_PREFIX)
    body = ref[len(REGISTRY_PREFIX):] if from_registry else ref
    if "@" not in body:
        raise ModelNotFound(f"model reference {ref!r} must be NAME@RUN_ID, NAME@latest, NAME@ALIAS or "
                            f"models:/NAME@ALIAS")
    name, tail = body.split("@", 1)
    if not from_registry and (tail == "latest" or is_run_id(tail) or tracking is None or not tracking["enabled"]):
        return (*resolve(lake_root, ref), None)
    if tracking is None:
        raise ModelNotFound(f"model {ref} is a registry reference; pass the tracking settings to resolve it")
    try:
        run_id, facts = tr.lake_run_of(tracking, name, tail)
    except (LookupError, tr.TrackingError) as e:
        raise ModelNotFound(f"model {ref}: {e}") from None
    name, run_id, uri = resolve(lake_root, f"{name}@{run_id}")
    return name, run_id, uri, facts


