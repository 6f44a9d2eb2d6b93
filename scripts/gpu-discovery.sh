#!/usr/bin/env bash
# Spark resource discovery script for NVIDIA GPUs, for
#   spark.worker.resource.gpu.discoveryScript   (standalone workers)
#   spark.driver.resource.gpu.discoveryScript / spark.executor.resource.gpu.discoveryScript
# Prints the ResourceInformation JSON Spark expects, e.g. {"name": "gpu", "addresses": ["0","1"]}.
# Without nvidia-smi, or when it fails (no driver, no device), it prints an empty address list
# and exits 0, so a CPU node still starts; it then offers no GPU to the scheduler.
set -euo pipefail

addresses=""
if command -v nvidia-smi >/dev/null 2>&1; then
  # One index per line; anything that is not a plain index (a warning, an error) is dropped.
  if indices="$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null)"; then
    addresses="$(printf '%s\n' "$indices" | tr -d ' \r' | grep -E '^[0-9]+$' | sed 's/.*/"&"/' | paste -sd, - || true)"
  fi
fi
printf '{"name": "gpu", "addresses": [%s]}\n' "$addresses"
