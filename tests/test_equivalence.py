"""The two stack profiles train the same way on the same data.

The default profile (.venv) reads the curated Parquet with Petastorm and trains with Horovod; the
modern one (.venv-modern: PySpark 4, pyarrow 26, numpy 2, no Horovod or Petastorm) reads it with
plain pyarrow and trains with torch.distributed. With the same config and dataset version:

- every rank reads the same rows in every epoch (row-id multisets), on a train split of uneven
  files and row groups, at world sizes 1, 2 and 3; the pyarrow reader hands each rank the row
  groups, in the same order, that Petastorm's ``make_batch_reader(cur_shard=rank,
  shard_count=size)`` hands it;
- the final test accuracy agrees within 1 point at world size 1 and 2.

Each side runs under its own profile's interpreter, whichever profile runs the test; it skips,
naming the command, where one of the two environments is not set up (scripts/setup.sh).
"""
from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import PROFILES, ROOT, profile_env as _env, profile_python as _python
from pipeline.core import lake
from pipeline import preprocess
from pipeline.samples import sample_data
from pipeline.core.config import load_config

DATE = "2026-02-01"
READER = {"default": "petastorm", "modern": "arrow"}
SEED, BATCH, BUFFER = 42, 32, 2048


def _run(profile: str, args: list[str], timeout: int = 900) -> str:
    p = subprocess.run(args, cwd=ROOT, env=_env(profile), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{profile}: {args[:4]} exited {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout


@pytest.fixture(scope="module")
def dataset(spark, tmp_path_factory):
    """The digits, preprocessed; the train split rewritten as 3 files (all but 380 rows, 240, 140)
    in row groups of at most 100 rows: uneven row groups and shards."""
    for profile in PROFILES:
        _python(profile)
    root = tmp_path_factory.mktemp("lake")
    cfg = load_config("conf/digits.yaml", [f"lake.root={root}"])
    sample_data.write_digits(cfg, DATE)
    m = preprocess.run(spark, cfg).manifest
    path = lake.local_path(m["splits"]["train"]["uri"])
    t = pq.read_table(path)
    lake.remove(m["splits"]["train"]["uri"])
    os.makedirs(path)
    sizes = [t.num_rows - 380, 240, 140]
    start = 0
    for i, n in enumerate(sizes):
        pq.write_table(t.slice(start, n), f"{path}/part-{i:05d}.parquet", row_group_size=100)
        start += n
    return root, m


def test_both_readers_give_every_rank_the_same_rows_every_epoch(dataset):
    _, m = dataset
    url = m["splits"]["train"]["uri"]
    reads = {profile: json.loads(_run(profile, [str(_python(profile)), "tests/read_ids.py", url, READER[profile],
                                                "1,2,3", "2", str(BATCH), str(BUFFER), str(SEED)]))
             for profile in PROFILES}
    petastorm, arrow = reads["default"], reads["modern"]
    assert petastorm.keys() == arrow.keys()
    for key in petastorm:
        if key.startswith("order/"):  # one pass: the row groups of the shard, in reading order
            assert arrow[key] == petastorm[key], key
        else:
            assert Counter(arrow[key]) == Counter(petastorm[key]), key
    # Not vacuous: shards differ and are disjoint, epochs reshuffle, uneven shards are read in full.
    a, b = set(petastorm["ids/2/0/0"]), set(petastorm["ids/2/1/0"])
    assert a and b and not a & b
    assert petastorm["ids/2/0/0"] != petastorm["ids/2/0/1"]
    groups = sum(pq.ParquetFile(f).metadata.num_row_groups for f in Path(lake.local_path(url)).glob("*.parquet"))
    assert groups > 10 and sum(len(petastorm[f"order/3/{r}"]) for r in range(3)) == groups
    n = m["splits"]["train"]["count"]
    assert [len(petastorm[f"ids/2/{r}/0"]) for r in range(2)] == [n // (BATCH * 2) * BATCH] * 2  # equal steps


def _train(profile: str, root: Path, version: str, world_size: int, name: str) -> dict:
    py = str(_python(profile))
    over = [f"lake.root={root}", f"train.dataset_version={version}", "train.epochs=4", f"train.model_name={name}",
            "tracking.enabled=false"]
    if world_size == 1:
        cmd = [py, "jobs/train.py", "--launcher", "local"]
    elif profile == "default":
        cmd = [str(PROFILES[profile] / "bin" / "horovodrun"), "-np", "2", "-H", "localhost:2", "python", "jobs/train.py"]
    else:
        cmd = [str(PROFILES[profile] / "bin" / "torchrun"), "--nproc_per_node=2", "--standalone", "jobs/train.py"]
    _run(profile, [*cmd, "--config", "conf/digits.yaml", *[x for o in over for x in ("--set", o)]])
    run_id = lake.get_latest(f"file://{root}/models/{name}")
    return lake.read_json(f"file://{root}/models/{name}/{run_id}/metrics.json")


@pytest.mark.parametrize("world_size", [1, 2])
def test_both_stacks_reach_the_same_test_accuracy(dataset, world_size):
    root, m = dataset
    got = {p: _train(p, root, m["version"], world_size, f"{p}-{world_size}") for p in PROFILES}
    assert (got["default"]["backend"], got["default"]["reader"]) == ("horovod", "petastorm")
    assert (got["modern"]["backend"], got["modern"]["reader"]) == ("torch", "arrow")
    assert got["default"]["world_size"] == got["modern"]["world_size"] == world_size
    acc = {p: g["test_accuracy"] for p, g in got.items()}
    print(f"\nworld size {world_size}: test accuracy default (horovod, petastorm) {acc['default']:.4f}, "
          f"modern (torch DDP, arrow) {acc['modern']:.4f}")
    assert acc["default"] > 0.9 and abs(acc["default"] - acc["modern"]) <= 0.01, acc
