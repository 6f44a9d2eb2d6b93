"""Two jobs writing the same output: exactly one complete result, never a nested or mixed one.
The publish step raced by many processes, a lock that dies with its holder, and two real score
jobs through spark-submit."""
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from conftest import CLEAN_DATE, ROOT, job_env, sets, spark_submit, submit_command
from pipeline import score, train
from pipeline.core import lake, locks, manifest
from pipeline.core.config import load_config
from pipeline.core.layout import LakeLayout
from untouched import Fence

ROUNDS, RACERS = 120, 4  # 480 publishes, 120 rounds of four at once


def _racer(k: int, root: str, barrier, errors) -> None:
    lock, final = f"file://{root}/_locks/dt=D.lock", f"file://{root}/dt=D"
    for r in range(ROUNDS):
        staging = f"file://{root}/_staging/{k}-{r}/dt=D"
        for part in range(3):  # a partition of three files, all naming their writer
            lake.write_bytes(f"{staging}/part-{part}", f"{k}-{r}".encode())
        barrier.wait()
        try:
            with locks.output_lock(lock, "partition D", wait_s=60, poll_s=0.01):
                score._swap_in(staging, final, f"file://{root}/_trash/{k}-{r}")
        except Exception as e:  # noqa: BLE001 - reported below
            errors.put(f"round {r}, racer {k}: {e!r}")
        barrier.wait()
        if k == 0:
            names = lake.listdir(final)
            writers = {lake.read_bytes(f"{final}/{n}").decode() for n in names if n.startswith("part-")}
            # One writer of this round, whole: three parts, nothing nested, nothing of another writer.
            if names != ["part-0", "part-1", "part-2"] or len(writers) != 1 or not next(iter(writers)).endswith(f"-{r}"):
                errors.put(f"round {r}: {names} written by {writers}")
        barrier.wait()


def test_racing_publishers_leave_one_whole_partition(tmp_path):
    ctx = mp.get_context("fork")
    barrier, errors = ctx.Barrier(RACERS), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(k, str(tmp_path), barrier, errors)) for k in range(RACERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0] * RACERS
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert found == []
    assert lake.listdir(f"file://{tmp_path}/dt=D") == ["part-0", "part-1", "part-2"]
    assert not any(n.startswith("dt=") for n in os.listdir(tmp_path / "dt=D"))


def test_a_second_job_waits_then_gives_up_and_a_killed_holder_frees_the_lock(tmp_path):
    lock = f"file://{tmp_path}/_locks/x.lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pipeline.core import locks\n"
        f"with locks.output_lock({lock!r}, 'x', wait_s=0):\n"
        "    print('held', flush=True); time.sleep(600)\n")], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert locks.is_held(lock)
        t0 = time.monotonic()
        with pytest.raises(locks.OutputBusy, match="being written by another job"):
            with locks.output_lock(lock, "x", wait_s=0.5):
                pass
        assert time.monotonic() - t0 >= 0.5  # it waited the bound, then gave up
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert not locks.is_held(lock)  # the kernel released it with the process
    with locks.output_lock(lock, "x", wait_s=0):
        pass


@pytest.mark.e2e
def test_two_score_jobs_for_one_date_publish_one_partition(digits_curated, tmp_path):
    cfg, _ = digits_curated
    cfg = load_config("conf/digits.yaml", [f"lake.root={cfg.lake.root}", "train.model_name=race-cnn",
                                           "train.epochs=1", "tracking.enabled=false"])
    train.run_local(cfg)
    common = ["--config", "conf/digits.yaml", *sets(f"lake.root={cfg.lake.root}", "tracking.enabled=false"),
              "--date", CLEAN_DATE, "--model", "race-cnn@latest"]
    lock = LakeLayout.of(cfg).score_lock("race-cnn", CLEAN_DATE)
    fence = Fence(cfg.lake.root)
    first = subprocess.Popen(submit_command("jobs/score.py", *common), cwd=ROOT, env=job_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not locks.is_held(lock) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert locks.is_held(lock), "the first job never took the lock"
        second = spark_submit("jobs/score.py", *common, "--set", "lake.lock_wait_s=0", check=False)
        out, err = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err[-3000:]
    assert second.returncode == 5, second.stderr[-2000:]
    said = [ln for ln in (second.stdout + second.stderr).splitlines() if ln.startswith("score: ")]
    assert len(said) == 1 and said[0].startswith("score: output busy: predictions of race-cnn for"), said
    assert "lake.lock_wait_s" in said[0] and "Traceback" not in second.stdout + second.stderr
    final = LakeLayout.of(cfg).predictions_partition("race-cnn", CLEAN_DATE)
    m = manifest.read(final)
    rows = pq.read_table(lake.local_path(final)).num_rows
    assert rows == m["output_count"] > 0 and not [n for n in lake.listdir(final) if n.startswith("dt=")]
    fence.check(may_write=("predictions/race-cnn/",))  # the one partition; the lake's data as it was
