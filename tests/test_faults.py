"""Hostile input through the real jobs: each gets its exit code and one line, writes nothing
outside the lake and loses nothing already there (tests/untouched.py). The jobs run as a user
runs them and fail before Spark does any work. README's "What bad input gets" names the test of
each case; the cases other files run already carry the same checks."""
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, job_env, run, sets, spark_submit
from pipeline import train
from pipeline.core import lake, locks, restarts
from pipeline.core.config import ConfigError, load_config
from pipeline.core.layout import LakeLayout
from pipeline.training import distributed
from untouched import Fence

RUN = "20260101T000000Z-abc123"


def _lake_with_outputs(root):
    """A lake holding a model run and a published prediction partition, as earlier jobs left them."""
    cfg = load_config("conf/digits.yaml", [f"lake.root={root}"])
    layout = LakeLayout.of(cfg)
    lake.write_bytes(f"{layout.model_run('digits-cnn', RUN)}/model.pt", b"weights")
    lake.set_latest(layout.models_root("digits-cnn"), RUN)
    part = layout.predictions_partition("digits-cnn", "2026-01-01")
    lake.write_bytes(f"{part}/part-00000.parquet", b"rows")
    lake.write_json(f"{part}/_manifest.json", {"output_count": 1})
    return cfg


def _reason(p, job) -> list[str]:
    """The job's own lines: spark-submit forwards the Python driver's stderr on its stdout."""
    return [ln for ln in (p.stdout + p.stderr).splitlines() if ln.startswith(f"{job}: ")]


REFUSED_ARGUMENTS = {
    "date climbing out of the lake": (
        ["--date", "2026-01-01/../../../../victim"],
        "score: invalid argument: --date '2026-01-01/../../../../victim' is invalid: expected an ISO date "
        "YYYY-MM-DD that exists, e.g. 2026-11-22"),
    "model climbing out of the lake": (
        ["--date", "2026-01-01", "--model", f"../../outside/models/good@{RUN}"],
        "score: invalid argument: model name in --model '../../outside/models/good' is invalid: expected 1-64 "
        "characters of letters, digits, '.', '_' or '-', starting with a letter or digit, without '..'"),
    "date with SQL in it, for a query source": (
        ["--date", "2026-01-01' OR '1'='1", "--set", "dataset.score_source=query:SELECT * FROM t WHERE dt = '{date}'"],
        "score: invalid argument: --date \"2026-01-01' OR '1'='1\" is invalid: expected an ISO date YYYY-MM-DD"),
}


@pytest.mark.parametrize("case", REFUSED_ARGUMENTS)
def test_score_refuses_arguments_that_would_leave_the_lake(tmp_path, case):
    args, said = REFUSED_ARGUMENTS[case]
    cfg = _lake_with_outputs(tmp_path / "lake")
    # A whole lake next to this one, with a model where the climbing reference points.
    outside = load_config("conf/digits.yaml", [f"lake.root={tmp_path}/outside"])
    lake.write_bytes(f"{LakeLayout.of(outside).model_run('good', RUN)}/model.pt", b"weights")
    fence = Fence(tmp_path / "lake")
    p = spark_submit("jobs/score.py", "--config", "conf/digits.yaml", "--set", f"lake.root={cfg.lake.root}", *args,
                     check=False)
    assert p.returncode == 2, p.stdout[-3000:] + p.stderr[-3000:]
    (line,) = _reason(p, "score")
    assert line.startswith(said), line
    assert "Traceback" not in p.stdout + p.stderr
    fence.check()  # not even a lock or an MLflow store: the job stopped before it began


def test_promote_without_a_version_behind_the_alias_is_one_line(digits_pipeline):
    if not digits_pipeline["tracked"]:
        pytest.skip("the full mlflow (its server) is not installed here: the test extra of the default profile")
    from mlflow import MlflowClient

    t = digits_pipeline
    client = MlflowClient(tracking_uri=t["uri"], registry_uri=t["uri"])
    champion = client.get_model_version_by_alias("digits-cnn", "champion").version
    fence = Fence(t["root"])
    p = run([sys.executable, "jobs/promote.py", *t["s"], "--model", "digits-cnn", "--from", "staging",
             "--to", "champion"], check=False)
    assert p.returncode == 1, p.stdout[-3000:] + p.stderr[-3000:]
    assert p.stderr.strip().splitlines() == [
        f"promote: FAILED: AliasNotFound: no version of registered model 'digits-cnn' has the alias 'staging' in "
        f"{t['uri']} (INVALID_PARAMETER_VALUE); its aliases: @candidate (version {champion}), @champion (version "
        f"{champion}); @champion not moved"], p.stderr
    assert "Traceback" not in p.stdout + p.stderr
    assert client.get_model_version_by_alias("digits-cnn", "champion").version == champion
    fence.check()


# --- one training of a model at a time, whichever launcher started its ranks ------------------

def test_rank_0_alone_holds_the_model_lock_and_every_rank_hears_when_it_is_busy(tmp_path):
    cfg = load_config("conf/digits.yaml", [f"lake.root={tmp_path}", "train.model_name=ranked", "lake.lock_wait_s=0"])
    lock = LakeLayout.of(cfg).train_lock("ranked")
    told = []
    with train._held_by_rank_0(cfg, 0, lambda busy: told.append(busy) or busy):
        assert locks.is_held(lock) and told == [None]
        # Rank 1 takes nothing; it hears rank 0's outcome.
        with train._held_by_rank_0(cfg, 1, lambda busy: None):
            pass
        # A second training's rank 0 finds the model busy and says so to its ranks.
        with pytest.raises(locks.OutputBusy, match="model ranked is being written by another job"):
            with train._held_by_rank_0(cfg, 0, lambda busy: told.append(busy) or busy):
                pass
        assert "lake.lock_wait_s" in told[-1]
        with pytest.raises(locks.OutputBusy, match="model ranked is being written"):
            with train._held_by_rank_0(cfg, 1, lambda busy: told[-1]):
                pass
    assert not locks.is_held(lock)


LAUNCHERS = {
    "horovodrun": (["horovodrun", "-np", "2", "-H", "localhost:2", "python"], ()),
    "torchrun": (["torchrun", "--nproc_per_node=2", "--standalone"], ("train.backend=torch",)),
}


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_second_training_under_a_launcher_exits_5_on_every_rank(tmp_path, launcher):
    if launcher == "horovodrun" and not distributed.installed("horovod"):
        pytest.skip("horovod is not installed (the modern profile)")
    command, overrides = LAUNCHERS[launcher]
    root = tmp_path / "lake"
    cfg = load_config("conf/digits.yaml", [f"lake.root={root}", "train.model_name=busy-cnn"])
    with locks.output_lock(LakeLayout.of(cfg).train_lock("busy-cnn"), "model busy-cnn", wait_s=0):
        fence = Fence(root)
        p = subprocess.run([*command, "jobs/train.py", "--config", "conf/digits.yaml",
                            *sets(f"lake.root={root}", "train.model_name=busy-cnn", "lake.lock_wait_s=0", *overrides)],
                           cwd=ROOT, env=job_env(), capture_output=True, text=True, timeout=300)
    out = p.stdout + p.stderr
    said = [ln.split("train: ", 1)[1] for ln in out.splitlines() if "train: output busy: " in ln]
    assert p.returncode != 0 and len(said) == 2, out[-4000:]  # each rank: one line, exit 5
    assert said[0] == said[1] and said[0].startswith("output busy: model busy-cnn is being written by another job")
    assert "exit code: 5" in out.lower().replace("exitcode", "exit code"), out[-4000:]
    fence.check()  # no run, no MLflow store: the ranks stopped before the plan


# --- restarts (train.max_restarts) -------------------------------------------------------------

def test_restarts_retry_dead_ranks_but_never_a_stopped_job():
    calls = []

    def dies_once(k):
        calls.append(k)
        if k == 0:
            raise restarts.RankDied("killed")
        return "done"

    assert restarts.retry(dies_once, 2, "run r") == ("done", 1) and calls == [0, 1]
    with pytest.raises(restarts.RankDied, match="killed"):  # 0: the failure as it is, as before
        restarts.retry(dies_once, 0, "run r")
    with pytest.raises(locks.Terminated):  # SIGTERM to the job ends it; it is not a dead rank
        restarts.retry(lambda k: (_ for _ in ()).throw(locks.Terminated("stopped by signal 15")), 3, "run r")
    with pytest.raises(ValueError):  # not what this launcher restarts
        restarts.retry(lambda k: int("x"), 3, "run r", retry_on=(restarts.RankDied,))


def test_launchers_that_cannot_restart_as_configured_refuse_before_starting(tmp_path, monkeypatch):
    cfg = load_config("conf/digits.yaml", [f"lake.root={tmp_path}", "train.max_restarts=2"])
    for key in ("TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_RESTART_COUNT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ConfigError, match=r"train.max_restarts=2 but torchrun was started with --max-restarts 0"):
        train.run_torchrun(cfg)
    if distributed.installed("horovod"):
        with pytest.raises(ConfigError, match=r"train.max_restarts=2: horovodrun cannot restart"):
            train.run_horovodrun(cfg)
    with pytest.raises(ConfigError, match=r"train.max_restarts must be >= 0"):
        load_config("conf/digits.yaml", [f"lake.root={tmp_path}", "train.max_restarts=-1"])


DIES = """import os
import signal


def build(spec):  # every rank that builds this network dies at once, as a SIGKILLed rank does
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_rank_that_dies_after_every_restart_exhausts_the_budget_with_exit_6(digits_curated, tmp_path):
    cfg, _ = digits_curated
    (tmp_path / "dying_models.py").write_text(DIES)
    env = job_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp_path), env.get("PYTHONPATH")) if p)
    p = subprocess.run([sys.executable, "jobs/train.py", "--config", "conf/digits.yaml", "--launcher", "local",
                        *sets(f"lake.root={cfg.lake.root}", "train.model_name=dying-cnn", "train.max_restarts=1",
                              "train.arch=dying_models:build", "tracking.enabled=false")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 6, p.stdout[-3000:] + p.stderr[-3000:]
    (line,) = _reason(p, "train")
    assert line.startswith("train: restarts exhausted: training run "), line
    assert "failed after 1 restart(s), all that train.max_restarts=1 allows; last failure: RankDied: the rank's " \
           "process" in line and "(exit code -9)" in line, line
    assert "Traceback" not in p.stdout + p.stderr
    assert not lake.exists(f"{LakeLayout.of(cfg).models_root('dying-cnn')}/_latest")  # nothing published
