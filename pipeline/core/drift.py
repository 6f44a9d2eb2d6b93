"""Drift of scored data against the train split: the population stability index (PSI).

A reference (the dataset manifest's ``drift_reference``, written by preprocess) describes each
feature's distribution on the train split as shares of buckets:

- numeric: ``{kind: numeric, edges: [...], shares: [...], null_share: x}``; ``edges`` are the
  train split's quantile cut points (deciles for 10 bins, ties merged), bucket i holds
  ``edges[i-1] < v <= edges[i]`` (``len(edges) + 1`` buckets), and missing values have a bucket of
  their own;
- categorical: ``{kind: categorical, values: [...], shares: [...], unknown_share: x}``: the fitted
  vocabulary, then one bucket for everything else (unseen values, nulls).

Scoring counts its rows into the same buckets (``bucket_shares`` lists them in that order) and
``psi`` compares the two. PSI = sum over buckets of (a - e) * ln(a / e), each share floored at 1e-4.
Each feature's ``position`` is its place in the values a kind's scoring tasks give per row (the
manifest's keys come back sorted). No Spark here: the counting is in pipeline/kinds/drift.py.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

FLOOR = 1e-4  # a share below this counts as this, so an empty bucket gives a finite PSI
VALUES = "_drift"  # scoring's column of the per-row feature values the reference describes (array<double>)


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index of ``actual`` shares against ``expected`` shares (bucket by bucket)."""
    if len(expected) != len(actual):
        raise ValueError(f"PSI of {len(actual)} buckets against {len(expected)}")
    total = 0.0
    for e, a in zip(expected, actual):
        e, a = max(e, FLOOR), max(a, FLOOR)
        total += (a - e) * math.log(a / e)
    return total


def bucket_shares(ref: dict[str, Any]) -> list[float]:
    """A reference entry's shares in bucket order: the bins (or values), then null (or unknown)."""
    last = ref["null_share"] if ref["kind"] == "numeric" else ref["unknown_share"]
    return [*ref["shares"], last]


def num_buckets(ref: dict[str, Any]) -> int:
    return len(ref["shares"]) + 1


def shares(counts: Sequence[int]) -> list[float]:
    n = sum(counts)
    return [c / n if n else 0.0 for c in counts]


def numeric_reference(edges: Sequence[float], counts: Sequence[int]) -> dict[str, Any]:
    """A numeric feature's reference from its edges and the train rows per bucket (null last)."""
    s = shares(counts)
    return {"kind": "numeric", "edges": [float(e) for e in edges], "shares": s[:-1], "null_share": s[-1]}


def categorical_reference(values: Sequence[str], counts: Sequence[int]) -> dict[str, Any]:
    """A categorical feature's reference from its vocabulary and the train rows per bucket (unknown last)."""
    s = shares(counts)
    return {"kind": "categorical", "values": list(values), "shares": s[:-1], "unknown_share": s[-1]}


def merge_edges(quantiles: Sequence[float]) -> list[float]:
    """Quantile cut points with ties merged (a feature with many equal values has fewer bins)."""
    return sorted({float(q) for q in quantiles if not math.isnan(q)})


def report(reference: dict[str, Any], counts: Mapping[str, Sequence[int]], prediction: Sequence[int] | None,
           fail_above: float) -> dict[str, Any]:
    """The score manifest's ``drift`` entry from the reference and the scored rows' bucket counts
    (``counts`` per feature, ``prediction`` those of the predictions): the PSI of each feature and
    of the predictions, and the features above ``fail_above`` (when > 0), highest PSI first."""
    features = {c: round(psi(bucket_shares(ref), shares(counts[c])), 6)
                for c, ref in reference["features"].items()}
    pred = reference.get("prediction")
    pred_psi = round(psi(bucket_shares(pred), shares(prediction)), 6) if pred and prediction is not None else None
    failed = [c for c, v in sorted(features.items(), key=lambda kv: -kv[1]) if fail_above > 0 and v > fail_above]
    return {"features": features, "prediction": pred_psi, "failed": failed}


def most_moved(report_: dict[str, Any], n: int = 3) -> list[tuple[str, float]]:
    """The ``n`` features with the highest PSI."""
    return sorted(report_["features"].items(), key=lambda kv: -kv[1])[:n]
