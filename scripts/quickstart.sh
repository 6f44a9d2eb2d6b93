#!/usr/bin/env bash
# Sets up the environment (first run: ~5 min, then seconds) and runs the whole pipeline on the
# bundled digits: sample images into the lake -> preprocess -> train (2 ranks on Spark: Horovod,
# or with PROFILE=modern torch.distributed under TorchDistributor; tracked in MLflow, registered
# as @candidate) -> promote to @champion through a gate -> score with @champion.
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

step "sample data" python -m pipeline.samples.sample_data "${CONF[@]}" --date "$DATE"
step "preprocess" spark-submit --master 'local[2]' jobs/preprocess.py "${CONF[@]}"
step "train" spark-submit --master 'local[2]' jobs/train.py "${CONF[@]}"
# train registered a new version of the model with the alias @candidate; promote it to
# @champion only if it is good enough, and score with whatever @champion is.
step "promote" python jobs/promote.py "${CONF[@]}" --model digits-cnn --from candidate --to champion \
  --require "test_accuracy>=0.95"
step "score" spark-submit --master 'local[2]' jobs/score.py "${CONF[@]}" --date "$DATE" --model digits-cnn@champion
python - "$LAKE" "$DATE" <<'PY'
import sys
from pipeline.core.config import load_config
from pipeline.core.layout import LakeLayout
from pipeline.ops import lineage, tracking
from pipeline.spark import cost
cfg = load_config("conf/digits.yaml", [f"lake.root={sys.argv[1]}"])
pred = LakeLayout.of(cfg).predictions_partition("digits-cnn", sys.argv[2])
chain = lineage.trace(pred)
model, train, data = chain["model"], chain["training"], chain["dataset"]
print(f"\ntest accuracy: {train['metrics']['test_accuracy']:.4f}  (model {model['name']}@{model['run_id']}, "
      f"registered version {model['registered_version']}, @champion)")
print(f"predictions:   {pred}")
print(f"lineage:       python -m pipeline.lineage --config conf/digits.yaml --set lake.root={sys.argv[1]} --date {sys.argv[2]}")
print(f"               dataset {data['name']} v={data['version']} -> training run {train['mlflow_run_id']} -> "
      f"scoring run {chain['score']['mlflow_run_id']}")
print("cost:          job        wall s  driver CPU s  task run s  task CPU s  records  core-h/1k records")
for stage in ("dataset", "training", "score"):
    c, n = chain[stage]["cost"], chain[stage]["input_count"]
    print(f"               {stage:<10} {c['wall_s']:6.1f}  {c['driver_cpu_s']:12.1f}  {c['executor_task_run_s']:10.1f}"
          f"  {c['executor_task_cpu_s']:10.1f}  {n:7d}  {cost.core_hours_per_1k(c, n):.6f}")
ui = tracking.ui_command(tracking.settings(cfg))
if ui:
    print(f"MLflow UI:     {ui}   (then open http://127.0.0.1:5000)")
PY
