"""Where a predictions partition came from, through the manifests (no MLflow needed to read it).

    python -m pipeline.ops.lineage --config conf/digits.yaml --date 2026-11-22 [--model digits-cnn]
    python -m pipeline.ops.lineage --config conf/digits.yaml --partition <lake>/predictions/digits-cnn/dt=2026-11-22

prints, as JSON: the partition and its scoring run; the model (name, lake run id, registered
version and alias when it was scored through the registry) and its training run; the dataset
version it was trained on and the preprocess run that wrote it. Each step carries its MLflow run
id (null when tracking was off) and its cost.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pipeline.core import lake, manifest
from pipeline.core.config import ConfigError, load_config
from pipeline.core.layout import InvalidValue, LakeLayout, validate_date, validate_name


def _step(m: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"run_id": m["run_id"], "mlflow_run_id": m.get("mlflow_run_id"), "created_at": m["created_at"],
            "code_version": m["code_version"], "input_count": m["input_count"], "output_count": m["output_count"],
            "quarantined_count": m["quarantined_count"], "cost": m.get("cost"), **extra}


def trace(partition_uri: str) -> dict[str, Any]:
    """Predictions partition -> score manifest -> training manifest -> preprocess manifest."""
    score = manifest.read(partition_uri)
    model = score["model"]
    out: dict[str, Any] = {"predictions": partition_uri,
                           "score": _step(score, date=score.get("date"), source=score.get("source"))}
    model_out = {"name": model["name"], "run_id": model["run_id"], "uri": model["uri"],
                 "registry": model.get("registry")}
    if lake.exists(f"{model['uri']}/{manifest.MANIFEST}"):
        train = manifest.read(model["uri"])
        out["model"] = {**model_out, "registered_version": (train.get("registry") or {}).get("version")}
        out["training"] = _step(train, metrics={k: v for k, v in train["metrics"].items()
                                                if k.startswith("test_") or k in ("val_accuracy", "world_size")})
        ds = train["dataset"]
    else:  # trained before manifests carried lineage: the artifact still names its dataset
        out["model"] = model_out
        ds = lake.read_json(f"{model['uri']}/model.json")["dataset"]
    pre = manifest.read(ds["uri"])
    out["dataset"] = _step(pre, name=pre["dataset"], version=pre["version"], uri=ds["uri"], source=pre["source"])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--date", help="the dt=<date> partition of --model's predictions")
    g.add_argument("--partition", help="a predictions partition URI")
    p.add_argument("--model", help="model name (default: train.model_name)")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"lineage: invalid config: {e}", file=sys.stderr)
        return 2
    try:
        uri = args.partition or LakeLayout.of(cfg).predictions_partition(
            validate_name(args.model or cfg.train.model_name, "--model"), validate_date(args.date, "--date"))
    except InvalidValue as e:
        print(f"lineage: invalid argument: {e}", file=sys.stderr)
        return 2
    if not lake.exists(f"{uri}/{manifest.MANIFEST}"):
        print(f"lineage: no predictions manifest at {uri}", file=sys.stderr)
        return 3
    print(json.dumps(trace(uri), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
