"""Runs a script as ``__main__`` the way ``python SCRIPT ARGS...`` would, and when it ends writes the
top-level modules its process imported, with the rank it ran as, to OUT_DIR/<pid>.json.

    horovodrun -np 2 python tests/rank_probe.py OUT_DIR jobs/train.py --config ...

tests/test_train.py starts training ranks this way to check what a rank imports (no pyspark).
"""
from __future__ import annotations

import json
import os
import runpy
import sys


def _dump(out_dir: str, script: str) -> None:
    rank = os.environ.get("HOROVOD_RANK", os.environ.get("RANK"))
    modules = sorted({name.split(".")[0] for name in list(sys.modules)})
    with open(os.path.join(out_dir, f"{os.getpid()}.json"), "w") as f:
        json.dump({"script": script, "rank": rank, "modules": modules}, f)


if __name__ == "__main__":
    out_dir, script = sys.argv[1], sys.argv[2]
    sys.argv = sys.argv[2:]
    sys.path[0] = os.path.dirname(os.path.abspath(script))  # as if started as python SCRIPT
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        _dump(out_dir, script)
