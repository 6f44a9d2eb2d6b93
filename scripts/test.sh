#!/usr/bin/env bash
# Sets up the environment if needed, then runs the test suite. Extra arguments go to pytest,
# e.g. scripts/test.sh -m "not cluster" or scripts/test.sh tests/test_config.py
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
source scripts/env.sh
exec python -m pytest "$@"
