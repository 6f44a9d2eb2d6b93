# Sourced by the other scripts: the venv on PATH, Spark pointed at it, quiet local logging.
# PROFILE=modern picks .venv-modern/ (see scripts/setup.sh); the default is .venv/.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ "${PROFILE:-default}" = modern ]; then VENV="$ROOT/.venv-modern"; else VENV="$ROOT/.venv"; fi
export PATH="$VENV/bin:$PATH"
export PYSPARK_PYTHON="$VENV/bin/python"
export PYSPARK_DRIVER_PYTHON="$VENV/bin/python"
export SPARK_CONF_DIR="${SPARK_CONF_DIR:-$ROOT/conf/spark}"
export PYTHONWARNINGS="ignore::FutureWarning,ignore::DeprecationWarning"
