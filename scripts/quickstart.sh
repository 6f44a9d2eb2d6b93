#!/usr/bin/env bash
# Sets up the environment (first run: ~5 min, then seconds) and runs the whole pipeline on the
# bundled digits: sample images into the lake -> preprocess -> train (2 ranks on Spark: Horovod,
# or with PROFILE=modern torch.distributed under TorchDistributor) -> score.
# LAKE=<dir or URI> picks the lake (default ./lake), DATE the scoring partition, PROFILE the
# stack (scripts/setup.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
source scripts/env.sh

LAKE="${LAKE:-$ROOT/lake}"
DATE="${DATE:-$(date -u +%F)}"
CONF=(--config conf/digits.yaml --set "lake.root=$LAKE")

step() {  # step NAME CMD...: run, time, stop on failure
  local name=$1; shift
  local t0=$SECONDS
  echo "==> $name"
  "$@"
  echo "    ($name took $((SECONDS - t0)) s)"
}

step "sample data" python -m pipeline.sample_data "${CONF[@]}" --date "$DATE"
step "preprocess" spark-submit --master 'local[2]' jobs/preprocess.py "${CONF[@]}"
step "train" spark-submit --master 'local[2]' jobs/train.py "${CONF[@]}"
step "score" spark-submit --master 'local[2]' jobs/score.py "${CONF[@]}" --date "$DATE"
python - "$LAKE" "$DATE" <<'PY'
import sys
from pipeline import artifact, lake
from pipeline.config import load_config
cfg = load_config("conf/digits.yaml", [f"lake.root={sys.argv[1]}"])
name, run_id, uri = artifact.resolve(cfg.lake.root, cfg.score.model)
metrics = lake.read_json(f"{uri}/metrics.json")
pred = cfg.uri("predictions", name, f"dt={sys.argv[2]}")
print(f"\ntest accuracy: {metrics['test_accuracy']:.4f}  (model {name}@{run_id})")
print(f"predictions:   {pred}")
PY
