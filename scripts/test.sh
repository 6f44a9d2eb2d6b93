#!/usr/bin/env bash
# Sets up the environment if needed, then runs the test suite on two pytest-xdist workers (the
# tests that share a pipeline run stay on one worker: tests/conftest.py). Extra arguments go to
# pytest, e.g. scripts/test.sh -m "not cluster", scripts/test.sh tests/test_config.py, or
# scripts/test.sh -n 0 to run in one process. PYTEST_WORKERS=4 for more workers.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
source scripts/env.sh
exec python -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadgroup "$@"
