"""Promotion: move a registered model's alias (``candidate`` -> ``champion``) only when its gates hold.

A gate is ``METRIC OP NUMBER`` (``test_accuracy>=0.95``; OP one of >= <= > < == !=), checked against
the metrics of the training run behind the version the source alias points at.
"""
from __future__ import annotations

import logging
import operator
import re
from typing import Any

from pipeline.ops import tracking
from pipeline.core.config import Config
from pipeline.spark.cli import InputError

log = logging.getLogger(__name__)

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq,
        "!=": operator.ne}
_GATE = re.compile(r"^\s*([A-Za-z0-9_.\-/]+)\s*(>=|<=|==|!=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


class NotPromoted(InputError):
    """The alias was not moved, for a reason the message gives in full (exit code 1, one line,
    no traceback): a gate that does not hold, or no version behind the source alias."""


class GateFailed(NotPromoted):
    pass


class AliasNotFound(NotPromoted):
    pass


def parse_gate(text: str) -> tuple[str, str, float]:
    m = _GATE.match(text)
    if not m:
        raise ValueError(f"gate {text!r} must read METRIC OP NUMBER, e.g. 'test_accuracy>=0.95' "
                         f"(OP one of {' '.join(_OPS)})")
    return m.group(1), m.group(2), float(m.group(3))


def run(cfg: Config, name: str, from_alias: str, to_alias: str, gates: list[tuple[str, str, float]]) -> dict[str, Any]:
    """Point ``to_alias`` at the version ``from_alias`` names, if every gate holds; GateFailed
    otherwise, AliasNotFound where no version has ``from_alias``."""
    s = tracking.settings(cfg)
    client = tracking.registry_client(s)
    try:
        mv = tracking.version_by_alias(s, name, from_alias)
    except LookupError as e:
        raise AliasNotFound(f"{e}; @{to_alias} not moved") from None
    metrics = client.get_run(mv.run_id).data.metrics
    checked = []
    for metric, op, threshold in gates:
        if metric not in metrics:
            raise GateFailed(f"gate {metric}{op}{threshold:g}: the training run {mv.run_id} of {name} version "
                             f"{mv.version} has no metric {metric!r} (it has {sorted(metrics)})")
        value = metrics[metric]
        if not _OPS[op](value, threshold):
            raise GateFailed(f"gate failed: {metric} = {value:.6g} is not {op} {threshold:g} "
                             f"({name} version {mv.version} @{from_alias}); @{to_alias} not moved")
        checked.append({"metric": metric, "op": op, "threshold": threshold, "value": value})
    client.set_registered_model_alias(name, to_alias, mv.version)
    client.set_model_version_tag(name, mv.version, f"promoted_to_{to_alias}",
                                 ", ".join(f"{c['metric']}={c['value']:.6g}" for c in checked) or "no gate")
    log.info("%s version %s: @%s -> @%s", name, mv.version, from_alias, to_alias)
    return {"name": name, "version": str(mv.version), "from": from_alias, "to": to_alias, "gates": checked,
            "training_mlflow_run_id": mv.run_id}
