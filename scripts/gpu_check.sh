#!/usr/bin/env bash
# GPU check without Spark (scripts/gpu_check.py has the details): writes a small curated dataset
# straight to Parquet, trains it under `torchrun --nproc_per_node=1` with the torch.distributed
# backend and the pyarrow reader in fp32, bf16 and fp16, kills and resumes a run, scores with the
# artifact, and prints device placement, samples/s against the CPU and peak GPU memory.
#
# Needs only Python with PyTorch (a CUDA build on a GPU node), numpy, pyarrow, PyYAML and fsspec:
# no Java, Spark, Horovod or Petastorm, no network. Without a GPU the CUDA parts are skipped
# (and reported as skipped); CI runs it that way.
#
#   bash scripts/gpu_check.sh                        # the python3 on PATH
#   PYTHON=/opt/venv/bin/python bash scripts/gpu_check.sh --work /tmp/gpu-check
#
# Exit codes: 0 passed, 1 a check failed, 2 a prerequisite is missing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

command -v "$PYTHON" >/dev/null || { echo "gpu_check: ERROR: $PYTHON not found; set PYTHON=/path/to/python" >&2; exit 2; }
if ! missing="$("$PYTHON" - <<'PY'
import importlib.util
need = {"torch": "torch", "numpy": "numpy", "pyarrow": "pyarrow", "yaml": "PyYAML", "fsspec": "fsspec"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))
PY
)"; then
  echo "gpu_check: ERROR: $PYTHON does not run" >&2; exit 2
fi
if [ -n "$missing" ]; then
  echo "gpu_check: ERROR: $PYTHON lacks: $missing (pip install $missing; on a node without network, from wheels)" >&2
  exit 2
fi
exec "$PYTHON" "$ROOT/scripts/gpu_check.py" "$@"
