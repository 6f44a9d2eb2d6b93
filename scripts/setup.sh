#!/usr/bin/env bash
# Creates the virtual environment of a stack profile. Idempotent: a second run with nothing
# changed only verifies and exits.
#   PROFILE=default  .venv/         PySpark 3.5, pyarrow 14, numpy 1, Petastorm, Horovod 0.28.1
#                                   (built locally, once, into the cache)
#   PROFILE=modern   .venv-modern/  PySpark 4.1, pyarrow >= 18, numpy 2, pandas 3, no Horovod or
#                                   Petastorm (training: torch.distributed + the pyarrow reader);
#                                   the pins are in requirements/modern.txt and modern-dev.txt
#   PYTHON=python3.11        interpreter to build the venv from
#   PIPELINE_CACHE=~/.cache/spark-dl-pipeline   where the horovod wheel and the built stacks
#                            (stacks/<profile>-<stamp>/, copied into each clone) are kept
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROFILE="${PROFILE:-default}"
case "$PROFILE" in
  default) VENV="$ROOT/.venv" ;;
  modern) VENV="$ROOT/.venv-modern" ;;
  *) echo "setup: ERROR: PROFILE=$PROFILE is not a profile; use PROFILE=default (or unset) or PROFILE=modern." >&2; exit 2 ;;
esac
PYTHON="${PYTHON:-python3.11}"
CACHE="${PIPELINE_CACHE:-$HOME/.cache/spark-dl-pipeline}"
TORCH_VERSION="2.13.0"
HOROVOD_VERSION="0.28.1"
WHEEL_DIR="$CACHE/horovod-$HOROVOD_VERSION-torch$TORCH_VERSION"

die() { echo "setup: ERROR: $*" >&2; exit 1; }
log() { echo "setup: $*" >&2; }

# --- system prerequisites ------------------------------------------------------------
command -v "$PYTHON" >/dev/null || die "$PYTHON not found. Install Python 3.11 (e.g. 'apt-get install python3.11 python3.11-venv python3.11-dev' or pyenv) or set PYTHON=/path/to/python3.11."
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null \
  || die "$PYTHON is $("$PYTHON" --version 2>&1); this stack needs Python 3.11. Set PYTHON=/path/to/python3.11."
command -v java >/dev/null || die "java not found. Spark needs Java 17: 'apt-get install openjdk-17-jdk-headless' (Debian/Ubuntu) or 'brew install openjdk@17', then put it on PATH or set JAVA_HOME."
JAVA_MAJOR="$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)"
if [ "$PROFILE" = modern ]; then  # Spark 4 runs on Java 17 or 21
  [ "$JAVA_MAJOR" = "17" ] || [ "$JAVA_MAJOR" = "21" ] || die "java is version '$JAVA_MAJOR'; Spark 4 needs Java 17 or 21. Install openjdk-17 and put it first on PATH (or set JAVA_HOME)."
else
  [ "$JAVA_MAJOR" = "17" ] || die "java is version '$JAVA_MAJOR'; this project is tested with Java 17. Install openjdk-17 and put it first on PATH (or set JAVA_HOME)."
fi

# What the stack is built from: pyproject.toml's [project] table (the dependencies), this script
# and the modern pins. The tools' settings in pyproject.toml (mypy, pytest) rebuild nothing.
project_table() {
  "$PYTHON" -c 'import json, sys, tomllib; print(json.dumps(tomllib.load(open(sys.argv[1], "rb"))["project"], sort_keys=True))' \
    "$ROOT/pyproject.toml"
}
stamp_value() { { project_table; cat "$ROOT/scripts/setup.sh" "$ROOT"/requirements/*.txt; } | sha256sum | cut -d' ' -f1; }
STAMP="$VENV/.setup-stamp"
if [ "$PROFILE" = modern ]; then
  IMPORTS='import pyspark, pyarrow, torch, pipeline; assert pyspark.__version__.startswith("4.")'
else
  IMPORTS='import horovod.torch, pyspark, petastorm, pipeline'
fi
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(stamp_value)" ] \
   && "$VENV/bin/python" -c "$IMPORTS" 2>/dev/null; then
  log "environment up to date ($VENV)"
  exit 0
fi

# --- building the stack (into the cache, see below) ---------------------------------------
build_stack() {  # build_stack DIR: a venv at DIR with the profile's pinned stack, not the project
  local venv=$1
  "$PYTHON" -m venv "$venv"
  local pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
  # torch goes first and pinned exactly: horovod's build must see this torch, and a looser
  # spec would pull a multi-GB CUDA build.
  "${pip[@]}" install "torch==$TORCH_VERSION" "setuptools<80" wheel
  if [ "$PROFILE" = modern ]; then
    # pyproject.toml's dependencies are the default stack's pins; this profile takes its pins
    # from requirements/ and installs the package itself without them.
    "${pip[@]}" install -r "$ROOT/requirements/modern-dev.txt"
    "$venv/bin/python" - <<'PY' || die "the modern environment is not what requirements/modern.txt asks for (see above)"
import importlib.util, sys
import numpy, pandas, pyarrow, pyspark, torch
bad = [m for m in ("horovod", "petastorm") if importlib.util.find_spec(m)]
assert not bad, f"{bad} installed: the modern profile has neither"
assert pyspark.__version__.startswith("4."), pyspark.__version__
assert int(pyarrow.__version__.split(".")[0]) >= 18 and numpy.__version__.startswith("2."), (pyarrow.__version__, numpy.__version__)
print(f"setup: pyspark {pyspark.__version__}, pyarrow {pyarrow.__version__}, numpy {numpy.__version__}, "
      f"pandas {pandas.__version__}, torch {torch.__version__}", file=sys.stderr)
PY
    return
  fi
  # the project's dependencies and extras, then the project itself out again: each clone
  # installs its own copy editable
  "${pip[@]}" install -e "$ROOT[test]"
  "${pip[@]}" uninstall -y spark-dl-pipeline
  build_horovod "$venv"
}

build_horovod() {  # build_horovod DIR: horovod from the wheel cache, compiled into it the first time
  local venv=$1
  local pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
  WHEEL="$(ls "$WHEEL_DIR"/horovod-"$HOROVOD_VERSION"-*.whl 2>/dev/null | head -1 || true)"
  if [ -z "$WHEEL" ]; then
    command -v g++ >/dev/null || die "g++ not found; horovod is compiled from source. 'apt-get install build-essential'."
    CMAKE_BIN="$(command -v cmake || true)"
    [ -n "$CMAKE_BIN" ] || die "cmake not found; horovod is compiled from source. 'apt-get install cmake' (3.13 to 3.x)."
    CMAKE_MAJOR="$("$CMAKE_BIN" --version | sed -n 's/cmake version \([0-9]*\).*/\1/p')"
    # cmake 4 refuses gloo's old cmake_minimum_required unless told otherwise.
    [ "$CMAKE_MAJOR" -ge 4 ] && export CMAKE_POLICY_VERSION_MINIMUM=3.5
    log "building horovod $HOROVOD_VERSION against torch $TORCH_VERSION (one-off, ~3-5 min on 2 cores)"
    BUILD="$(mktemp -d)"
    trap 'rm -rf "$BUILD"' EXIT
    "${pip[@]}" download --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" -d "$BUILD"
    tar -xzf "$BUILD"/horovod-"$HOROVOD_VERSION".tar.gz -C "$BUILD"
    SRC="$BUILD/horovod-$HOROVOD_VERSION"
    # torch >= 2.1 headers need C++17, and gloo must use the same standard or the link fails.
    sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' "$SRC/CMakeLists.txt" "$SRC/horovod/torch/CMakeLists.txt"
    grep -q 'CMAKE_CXX_STANDARD 17' "$SRC/horovod/torch/CMakeLists.txt" || die "C++17 patch did not apply to the horovod sdist"
    mkdir -p "$WHEEL_DIR"
    (cd "$SRC" && HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
       HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_CPU_OPERATIONS=GLOO \
       MAKEFLAGS="-j$(nproc)" \
       "$venv/bin/python" -m pip wheel --no-build-isolation --no-deps -w "$WHEEL_DIR" . > "$BUILD/build.log" 2>&1) \
       || { tail -40 "$BUILD/build.log" >&2; die "horovod build failed (log above)"; }
    WHEEL="$(ls "$WHEEL_DIR"/horovod-"$HOROVOD_VERSION"-*.whl | head -1)"
  fi
  "${pip[@]}" install --no-deps --force-reinstall "$WHEEL"
  CHECK="$("$venv/bin/horovodrun" --check-build 2>&1)"
  echo "$CHECK" | grep -q '\[X\] PyTorch' || { echo "$CHECK" >&2; die "horovod was built without PyTorch support"; }
  echo "$CHECK" | grep -q '\[X\] Gloo' || { echo "$CHECK" >&2; die "horovod was built without Gloo"; }
}

# --- the pinned stack, built once per profile into the cache ------------------------------
# Installing the stack takes minutes (pip unpacks torch; horovod is compiled the first time).
# It is built once into $CACHE/stacks/<profile>-<stamp>/ without the project, and each clone's
# venv is a hard-linked copy of it (seconds) with the project installed editable on top.
# A change to the dependencies, requirements/ or this script builds a new one.
KEY="$PROFILE-$(stamp_value | cut -c1-16)"
BASE="$CACHE/stacks/$KEY"
mkdir -p "$CACHE/stacks"
exec 9>"$CACHE/stacks/$PROFILE.lock"
flock 9  # two set-ups at once (two clones' CI) build it once
if [ ! -f "$BASE/.complete" ]; then
  rm -rf "$BASE"
  log "building the $PROFILE stack into $BASE (once; later set-ups copy it)"
  build_stack "$BASE"
  touch "$BASE/.complete"
  # older stacks of this profile: clones made from them keep their hard-linked files
  find "$CACHE/stacks" -mindepth 1 -maxdepth 1 -type d -name "$PROFILE-*" ! -name "$KEY" -exec rm -rf {} +
fi
flock -u 9

log "creating $VENV from $BASE"
rm -rf "$VENV"
cp -al "$BASE" "$VENV" 2>/dev/null || { rm -rf "$VENV"; cp -a "$BASE" "$VENV"; }  # another filesystem: a copy
rm -f "$VENV/.complete"
# Scripts name their interpreter by absolute path. sed -i writes a new file, so the cache's
# hard-linked original is left as it is.
grep -rlIZ -- "$BASE" "$VENV/bin" | xargs -0 -r sed -i "s#$BASE#$VENV#g"
"$VENV/bin/python" -m pip --disable-pip-version-check -q install --no-deps --no-build-isolation -e "$ROOT"
"$VENV/bin/python" -c "$IMPORTS" || die "$VENV does not import the stack ($IMPORTS); remove $BASE and run again"
stamp_value > "$STAMP"
log "ready: $VENV (profile $PROFILE)"
