#!/usr/bin/env bash
# The `submit` service of docker/docker-compose.yml: the quickstart's pipeline (sample data ->
# preprocess -> train -> score), submitted to the standalone master in client mode.
#   SPARK_MASTER  spark://master:7077
#   LAKE          file:///lake  (a volume mounted at the same path on the workers and here)
#   DATE          scoring partition, default today (UTC)
#   WORKERS       how many workers to wait for, default 2
#   SUBMIT_OPTS   extra spark-submit options, e.g. the GPU settings in docker/README.md
#   JOB_SETS      extra --set overrides for the jobs, e.g. "--set train.device=cuda"
# Every node runs the same image, so the executors already have the Python environment; only
# the code travels with the job (--py-files). On YARN/Kubernetes see docs/cluster.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MASTER="${SPARK_MASTER:-spark://master:7077}"
LAKE="${LAKE:-file:///lake}"
DATE="${DATE:-$(date -u +%F)}"
WORKERS="${WORKERS:-2}"
read -r -a EXTRA <<< "${SUBMIT_OPTS:-}"
read -r -a SETS <<< "${JOB_SETS:-}"
CONF=(--config conf/digits.yaml --set "lake.root=$LAKE" "${SETS[@]}")

# The master's web UI reports the registered workers; train needs all task slots at once.
HOSTPORT="${MASTER#spark://}"
MASTER_UI="${MASTER_UI:-http://${HOSTPORT%:*}:8080}"
python - "$MASTER_UI" "$WORKERS" <<'PY'
import json, sys, time, urllib.request
url, want = sys.argv[1] + "/json/", int(sys.argv[2])
for _ in range(120):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            if json.load(r).get("aliveworkers", 0) >= want:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(2)
sys.exit(f"submit: fewer than {want} workers registered at {url} after 4 minutes")
PY

bash scripts/package.sh --zip-only
SUBMIT=(spark-submit --master "$MASTER" --py-files dist/pipeline.zip
        --conf spark.executor.cores=1 --conf "spark.cores.max=$WORKERS" --conf spark.executor.memory=2g
        "${EXTRA[@]}")

step() {  # step NAME CMD...: run and time
  local name=$1; shift
  local t0=$SECONDS
  echo "==> $name"
  "$@"
  echo "    ($name took $((SECONDS - t0)) s)"
}
step "sample data" python -m pipeline.samples.sample_data "${CONF[@]}" --date "$DATE"
step "preprocess" "${SUBMIT[@]}" jobs/preprocess.py "${CONF[@]}"
step "train" "${SUBMIT[@]}" jobs/train.py "${CONF[@]}" --set "train.num_proc=$WORKERS"
step "score" "${SUBMIT[@]}" jobs/score.py "${CONF[@]}" --date "$DATE"
