"""What lets the same stages run on both stack profiles (scripts/setup.sh: default and modern).

- Frames that mapInPandas bodies yield reach Spark whatever pandas makes of them (pandas 3's
  pyarrow-backed strings, an empty frame's float columns).
- The modules a bare GPU node or a Spark-less rank imports need neither pyspark nor horovod nor
  petastorm nor the sample-data, plotting and benchmark extras.
"""
from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from conftest import ROOT
from pipeline import tasks

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
SPARKLESS_MODULES = ["pipeline.config", "pipeline.lake", "pipeline.manifest", "pipeline.artifact",
                     "pipeline.checkpoints", "pipeline.images", "pipeline.splits", "pipeline.schedule",
                     "pipeline.models", "pipeline.cli"]


def test_rank_side_modules_import_without_spark_or_extras():
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'scripts')!r}); import gpu_check; "
            f"gpu_check.forbid({BARE!r}); sys.path.insert(0, {str(ROOT)!r}); "
            "import importlib; [importlib.import_module(m) for m in sys.argv[1:]]; "
            "import pyspark")
    p = subprocess.run([sys.executable, "-c", code, *SPARKLESS_MODULES], capture_output=True, text=True, timeout=120)
    # every listed module imported; the last line proves the blocker was active
    assert p.returncode == 1 and "No module named 'pyspark'" in p.stderr, p.stderr[-3000:]
