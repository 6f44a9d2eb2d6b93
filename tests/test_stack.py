"""What lets the same stages run on both stack profiles (scripts/setup.sh: default and modern).

- Frames that mapInPandas bodies yield reach Spark whatever pandas makes of them (pandas 3's
  pyarrow-backed strings, an empty frame's float columns).
- The modules a bare GPU node or a Spark-less rank imports need neither pyspark nor horovod nor
  petastorm nor the sample-data, plotting and benchmark extras, and do not import them where
  they are installed (a rank's own sys.modules is checked in tests/test_train.py).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from conftest import ROOT
from pipeline.spark import tasks

DDL = "part int, split string, n long"


def test_frames_reach_spark_on_either_pandas(spark):
    def _yield_frames(frames):  # a closure: pickled by value to the workers
        for pdf in frames:
            for t in pdf["id"]:
                t = int(t)
                if t == 0:  # strings as pandas infers them (pyarrow-backed under pandas 3)
                    yield tasks.to_spark(pd.DataFrame({"part": [t, t], "split": ["train", "val"], "n": [3, 4]}))
                elif t == 1:  # nothing written: an empty frame, float64 columns by default
                    yield tasks.to_spark(pd.DataFrame({"part": [], "split": [], "n": []}))
                else:  # missing strings
                    split = pd.Series(["x", None]).iloc[1:].reset_index(drop=True)  # NaN under pandas 3, None under 2
                    yield tasks.to_spark(pd.DataFrame({"part": [t], "split": split, "n": [0]}))

    rows = tasks.numbers(spark, 3).mapInPandas(_yield_frames, DDL).collect()
    assert sorted((r["part"], r["split"], r["n"]) for r in rows) == [(0, "train", 3), (0, "val", 4), (2, None, 0)]


# What scripts/gpu_check.py forbids: a GPU node has torch, numpy, pyarrow, PyYAML and fsspec only.
BARE = "pyspark,py4j,horovod,petastorm,sklearn,scipy,matplotlib,PIL,cv2,pandas"
SPARKLESS_MODULES = ["pipeline.core.config", "pipeline.core.lake", "pipeline.core.manifest", "pipeline.model.artifact",
                     "pipeline.training.checkpoints", "pipeline.ingest.images", "pipeline.core.splits",
                     "pipeline.training.schedule", "pipeline.model.networks", "pipeline.spark.cli",
                     "pipeline.kinds", "pipeline.training.trainer", "pipeline.training.params",
                     "pipeline.core.layout", "pipeline.core.locks"]
# Imports the modules given on the command line, each on its own; prints, as JSON, the errors
# and the forbidden top-level modules in sys.modules, before and after importing CONTROL (a
# module that must show up: proof that the check sees an import).
PROBE = """
import importlib, json, sys
sys.path.insert(0, {scripts!r}); import gpu_check
bare = set({bare!r}.split(","))
if sys.argv[1] == "forbid":
    gpu_check.forbid({bare!r})
sys.path.insert(0, {root!r})
errors = {{}}
for m in sys.argv[3:]:
    try:
        importlib.import_module(m)
    except Exception as e:
        errors[m] = f"{{type(e).__name__}}: {{e}}"
loaded = lambda: sorted(bare & {{n.split(".")[0] for n in sys.modules}})
out = {{"errors": errors, "loaded": loaded()}}
try:
    importlib.import_module(sys.argv[2])
    out["control"] = loaded()
except Exception as e:
    out["control"] = f"{{type(e).__name__}}: {{e}}"
print(json.dumps(out))
""".format(scripts=str(ROOT / "scripts"), root=str(ROOT), bare=BARE)


def _probe(mode: str, control: str, modules: list[str]) -> dict:
    p = subprocess.run([sys.executable, "-c", PROBE, mode, control, *modules], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.splitlines()[-1])


def test_rank_side_modules_import_without_spark_or_extras():
    # Installed but never imported: none of them is in sys.modules after the rank-side imports...
    got = _probe("installed", "pyspark.sql", SPARKLESS_MODULES)
    assert got["errors"] == {} and got["loaded"] == [], got
    assert "pyspark" in got["control"], got  # ...where an import of pyspark shows up
    # Hidden, as on a bare GPU node: every module still imports, while pyspark cannot.
    got = _probe("forbid", "pyspark", SPARKLESS_MODULES)
    assert got["errors"] == {} and got["loaded"] == [], got
    assert got["control"] == "ModuleNotFoundError: No module named 'pyspark'", got


def test_the_probe_sees_a_module_that_imports_spark():
    """Negative control: a module that imports pyspark at its top fails both checks."""
    spark_side = "pipeline.spark.session"
    got = _probe("installed", "json", [*SPARKLESS_MODULES, spark_side])
    assert "pyspark" in got["loaded"], got
    got = _probe("forbid", "json", [*SPARKLESS_MODULES, spark_side])
    assert list(got["errors"]) == [spark_side] and "pyspark" in got["errors"][spark_side], got
