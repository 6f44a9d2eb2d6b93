#!/usr/bin/env bash
# Builds what a cluster needs to run the jobs, shipped the way one ships to YARN or Kubernetes:
#   dist/pipeline.zip  the `pipeline` package             -> spark-submit --py-files dist/pipeline.zip
#   dist/env.tar.gz    a lean executor Python environment -> --archives dist/env.tar.gz#env
#                      (the runtime dependencies of pyproject.toml + horovod; no pipeline, none of
#                      its extras: no sample-data, benchmark or test tools)
#                      --conf spark.pyspark.python=./env/bin/python
#
# The environment is built in its own venv under the cache and packed with venv-pack. The archive
# is cached under a key made from pyproject.toml's dependencies, scripts/setup.sh, this script, the Python
# version and the horovod wheel, so a second run only copies it (seconds).
#
#   scripts/package.sh             both artifacts
#   scripts/package.sh --zip-only  only dist/pipeline.zip (nodes that already have the stack)
#
#   PYTHON=python3.11                           interpreter of the executor environment
#   PIPELINE_CACHE=~/.cache/spark-dl-pipeline   where the horovod wheel and the packed env are kept
#   DIST=<repo>/dist                            where the two artifacts are written
#
# venv-pack does not ship the interpreter: env/bin/python links to the Python this script used.
# Every node must have that same Python at the same path (build this inside the node image, see
# docker/), or pass the node's prefix with PYTHON_PREFIX=/usr/local (venv-pack --python-prefix).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3.11}"
CACHE="${PIPELINE_CACHE:-$HOME/.cache/spark-dl-pipeline}"
DIST="${DIST:-$ROOT/dist}"
TORCH_VERSION="2.13.0"
HOROVOD_VERSION="0.28.1"
WHEEL_DIR="$CACHE/horovod-$HOROVOD_VERSION-torch$TORCH_VERSION"
# venv-pack: the project's (.venv, from the test extra), else one on PATH
VENV_PACK="${VENV_PACK:-$ROOT/.venv/bin/venv-pack}"
[ -x "$VENV_PACK" ] || VENV_PACK="$(command -v venv-pack || echo "$VENV_PACK")"

die() { echo "package: ERROR: $*" >&2; exit 1; }
log() { echo "package: $*" >&2; }

ZIP_ONLY=0
case "${1:-}" in
  "") ;;
  --zip-only) ZIP_ONLY=1 ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument '$1' (usage: scripts/package.sh [--zip-only])" ;;
esac

command -v "$PYTHON" >/dev/null || die "$PYTHON not found; set PYTHON=/path/to/python3.11 (the interpreter the cluster nodes have)."
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null \
  || die "$PYTHON is $("$PYTHON" --version 2>&1); the stack needs Python 3.11. Set PYTHON=/path/to/python3.11."
mkdir -p "$DIST"

# --- dist/pipeline.zip: the package, nothing else ------------------------------------------
# Written by Python's zipfile so that no `zip` binary is needed; sorted entries and a fixed
# timestamp make the archive depend only on the sources.
"$PYTHON" - "$ROOT" "$DIST/pipeline.zip" <<'PY'
import os, sys, zipfile
root, out = sys.argv[1], sys.argv[2]
files = sorted(os.path.relpath(os.path.join(d, f), root)  # sources and any package data
               for d, dirs, fs in os.walk(os.path.join(root, "pipeline"))
               if "__pycache__" not in d for f in fs if not f.endswith((".pyc", ".pyo")))
if "pipeline/__init__.py" not in files:
    sys.exit(f"package: ERROR: no pipeline/__init__.py under {root}")
tmp = out + ".tmp"
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
    for rel in files:
        info = zipfile.ZipInfo(rel, date_time=(2000, 1, 1, 0, 0, 0))
        info.external_attr = 0o644 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        with open(os.path.join(root, rel), "rb") as f:
            z.writestr(info, f.read())
os.replace(tmp, out)
PY
log "wrote $DIST/pipeline.zip ($(du -h "$DIST/pipeline.zip" | cut -f1))"
[ "$ZIP_ONLY" = 1 ] && exit 0

# --- dist/env.tar.gz: the executor environment, cached ----------------------------------------
WHEEL="$(ls "$WHEEL_DIR"/horovod-"$HOROVOD_VERSION"-*.whl 2>/dev/null | head -1 || true)"
if [ -z "$WHEEL" ] || [ ! -x "$VENV_PACK" ]; then
  log "horovod wheel or venv-pack missing; running scripts/setup.sh to build them"
  PYTHON="$PYTHON" PIPELINE_CACHE="$CACHE" bash "$ROOT/scripts/setup.sh"
  WHEEL="$(ls "$WHEEL_DIR"/horovod-"$HOROVOD_VERSION"-*.whl 2>/dev/null | head -1 || true)"
  [ -n "$WHEEL" ] || die "no horovod wheel in $WHEEL_DIR after scripts/setup.sh"
  [ -x "$VENV_PACK" ] || die "venv-pack not found at $VENV_PACK; 'pip install venv-pack==0.2.0' or set VENV_PACK=/path/to/venv-pack"
fi

# pyproject.toml's [project] table (the dependencies), not the tools' settings beside it
KEY="$( { "$PYTHON" -c 'import json, sys, tomllib; print(json.dumps(tomllib.load(open(sys.argv[1], "rb"))["project"], sort_keys=True))' \
            "$ROOT/pyproject.toml"; cat "$ROOT/scripts/setup.sh" "$ROOT/scripts/package.sh";
          "$PYTHON" -c 'import sys; print(sys.version, sys.base_prefix)'; basename "$WHEEL";
          echo "${PYTHON_PREFIX:-}"; } | sha256sum | cut -c1-16)"
ENV_CACHE="$CACHE/executor-env"
ARCHIVE="$ENV_CACHE/env-$KEY.tar.gz"

if [ -f "$ARCHIVE" ]; then
  log "executor environment up to date (cache key $KEY)"
else
  log "building the executor environment (cache key $KEY; a few minutes on first run)"
  mkdir -p "$ENV_CACHE"
  BUILD="$(mktemp -d "$ENV_CACHE/build-$KEY.XXXXXX")"
  trap 'rm -rf "$BUILD"' EXIT
  VENV="$BUILD/venv"
  "$PYTHON" -m venv "$VENV"
  PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
  # The runtime dependencies are read from pyproject.toml, so the two never drift apart.
  mapfile -t DEPS < <("$PYTHON" - "$ROOT/pyproject.toml" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
PY
)
  [ "${#DEPS[@]}" -gt 0 ] || die "no [project] dependencies found in pyproject.toml"
  # torch first and pinned exactly: a looser spec pulls a multi-GB CUDA build.
  "${PIP[@]}" install "torch==$TORCH_VERSION" || die "pip could not install torch==$TORCH_VERSION"
  "${PIP[@]}" install "${DEPS[@]}" || die "pip could not install the dependencies of pyproject.toml"
  "${PIP[@]}" install --no-deps "$WHEEL" || die "pip could not install $WHEEL"
  # Fail here, not on the cluster, when the stack does not import.
  # Only the runtime dependencies: the sample data, benchmark and test tools (the extras of
  # pyproject.toml: scikit-learn, SciPy, OpenCV, pytest) are not needed on an executor.
  IMPORT_CHECK='import horovod.torch, horovod.spark, petastorm.pytorch, pyarrow.parquet, torch, fsspec, pandas, PIL, yaml, matplotlib.pyplot, mlflow.pytorch, sqlalchemy, alembic'
  "$VENV/bin/python" -c "$IMPORT_CHECK" \
    || die "the executor environment in $VENV does not import the stack (see the traceback above)"
  "${PIP[@]}" uninstall -y pip
  # Left out because no executor uses them, and every byte is unpacked on every executor:
  #   pyspark/jars   the executor's Python takes pyspark from the cluster's own Spark
  #                  (PYTHONPATH holds $SPARK_HOME/python/lib/pyspark.zip ahead of site-packages);
  #   torch/include, torch/test, torch/bin test binaries: C++ headers and tests, build-time only;
  #   */tests/*      the packages' own test suites (about 160 MB and 7000 files).
  # The packed archive is unpacked and imported below, so an exclude that breaks an import fails here.
  PACK_ARGS=(--prefix "$VENV" --output "$BUILD/env.tar.gz" --quiet
             --exclude '*/site-packages/pyspark/jars/*'
             --exclude '*/site-packages/*/tests/*'
             --exclude '*/site-packages/torch/include/*'
             --exclude '*/site-packages/torch/test/*'
             --exclude '*/site-packages/torch/bin/test_*'
             --exclude '*/site-packages/torch/bin/*StoreTest')
  if [ -n "${PYTHON_PREFIX:-}" ]; then PACK_ARGS+=(--python-prefix "$PYTHON_PREFIX"); fi
  "$VENV_PACK" "${PACK_ARGS[@]}" || die "venv-pack failed on $VENV"
  mkdir "$BUILD/check"
  tar -xzf "$BUILD/env.tar.gz" -C "$BUILD/check"
  "$BUILD/check/bin/python" -c "$IMPORT_CHECK" \
    || die "the packed environment does not import the stack (an --exclude went too far?)"
  chmod 644 "$BUILD/env.tar.gz"
  mv "$BUILD/env.tar.gz" "$ARCHIVE"
  # Older keys are stale by definition; keep the cache to one archive.
  find "$ENV_CACHE" -maxdepth 1 -name 'env-*.tar.gz' ! -name "env-$KEY.tar.gz" -delete
  log "packed $(du -h "$ARCHIVE" | cut -f1) into $ARCHIVE"
fi

# A hard link when the cache and dist/ share a file system, a copy otherwise.
if ! [ "$ARCHIVE" -ef "$DIST/env.tar.gz" ]; then
  rm -f "$DIST/env.tar.gz"
  ln "$ARCHIVE" "$DIST/env.tar.gz" 2>/dev/null || cp "$ARCHIVE" "$DIST/env.tar.gz"
fi
log "wrote $DIST/env.tar.gz ($(du -h "$DIST/env.tar.gz" | cut -f1))"
