# Sourced by the other scripts: the venv on PATH, Spark pointed at it, quiet local logging.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$ROOT/.venv/bin:$PATH"
export PYSPARK_PYTHON="$ROOT/.venv/bin/python"
export PYSPARK_DRIVER_PYTHON="$ROOT/.venv/bin/python"
export SPARK_CONF_DIR="${SPARK_CONF_DIR:-$ROOT/conf/spark}"
export PYTHONWARNINGS="ignore::FutureWarning,ignore::DeprecationWarning"
