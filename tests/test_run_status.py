"""MLflow runs end with the true status: KILLED on SIGTERM; a run left RUNNING by a SIGKILLed job
is marked FAILED by the next run of the same model; --resume continues the same MLflow run, so
its metric history is whole. Training in one process (--launcher local) on the session's digits."""
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, job_env, sets
from pipeline.core.config import load_config
from pipeline.core.locks import Terminated
from pipeline.ops import tracking
from pipeline.spark import cli
from untouched import Fence

mlflow = pytest.importorskip("mlflow")


def _train(cfg, *args, model="status-cnn", epochs=4):
    return subprocess.Popen([sys.executable, "jobs/train.py", "--config", "conf/digits.yaml", "--launcher", "local",
                             *sets(f"lake.root={cfg.lake.root}", f"train.model_name={model}", f"train.epochs={epochs}",
                                   "train.batch_size=8"), *args],
                            cwd=ROOT, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _runs(cfg, model):
    return tracking._runs(tracking.settings(cfg), {"stage": "train", "model_name": model})


def _wait_for(check, what, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (found := check()):
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _kill_when_running(cfg, p, model, sig, after_checkpoint=False):
    def ready():
        runs = _runs(cfg, model)
        if not runs or runs[0].info.status != "RUNNING":
            return None
        ck = f"{cfg.lake.root}/models/{model}/{runs[0].data.tags['lake_run_id']}/checkpoints/epoch=0001.pt"
        return runs[0] if not after_checkpoint or __import__("os").path.exists(ck.removeprefix("file://")) else None
    run = _wait_for(ready, f"a RUNNING run of {model}")
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    return run, out, err


def test_sigterm_sigkill_and_resume_leave_true_run_statuses(digits_curated):
    cfg, _ = digits_curated
    cfg = load_config("conf/digits.yaml", [f"lake.root={cfg.lake.root}"])
    client = mlflow.MlflowClient(tracking.settings(cfg)["uri"])
    fence = Fence(cfg.lake.root)

    # SIGTERM: the run ends KILLED, the job exits 143 with one line.
    term = _train(cfg, model="term-cnn")
    run, _, err = _kill_when_running(cfg, term, "term-cnn", signal.SIGTERM)
    assert client.get_run(run.info.run_id).info.status == "KILLED" and term.returncode == 143
    said = [ln for ln in err.splitlines() if ln.startswith("train: ")]
    assert len(said) == 1 and said[0].startswith("train: terminated"), err[-2000:]

    # SIGKILL after a checkpoint: the run stays RUNNING; --resume continues it to the end.
    killed, _, _ = _kill_when_running(cfg, _train(cfg), "status-cnn", signal.SIGKILL, after_checkpoint=True)
    assert client.get_run(killed.info.run_id).info.status == "RUNNING"
    lake_run = killed.data.tags["lake_run_id"]
    resumed = _train(cfg, "--resume", lake_run)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    runs = _runs(cfg, "status-cnn")
    assert [r.info.run_id for r in runs] == [killed.info.run_id]  # no second run for the resumed training
    assert runs[0].info.status == "FINISHED"
    history = client.get_metric_history(killed.info.run_id, "val_loss")
    assert sorted({h.step for h in history}) == [0, 1, 2, 3], history  # every epoch, before and after the kill

    # SIGKILL, then a new run of the model: the orphan is marked FAILED.
    orphan, _, _ = _kill_when_running(cfg, _train(cfg, model="orphan-cnn"), "orphan-cnn", signal.SIGKILL)
    nxt = _train(cfg, model="orphan-cnn", epochs=1)
    out, err = nxt.communicate(timeout=600)
    assert nxt.returncode == 0, err[-3000:]
    gone = client.get_run(orphan.info.run_id)
    assert gone.info.status == "FAILED" and "died" in gone.data.tags.get("ended_by", ""), gone.data.tags
    assert [r.info.status for r in _runs(cfg, "orphan-cnn")] == ["FINISHED", "FAILED"]
    # The three models and their MLflow store; nothing else in the lake or next to it.
    fence.check(may_write=("models/term-cnn", "models/status-cnn", "models/orphan-cnn", "mlflow"))


def test_whatever_stops_a_job_once_its_run_exists_ends_the_run(tmp_path, monkeypatch):
    """A job's run ends KILLED on SIGTERM and FAILED on an error from the moment MLflow created
    it, even while its parameters are still being logged; a finished run stays FINISHED."""
    cfg = load_config("conf/digits.yaml", [f"lake.root={tmp_path}"])
    s = tracking.settings(cfg)
    previous = signal.signal(signal.SIGTERM, cli._terminate)  # as every job installs it
    try:
        log_params = tracking.Tracker.log_params

        def stopped_while_logging(self, params):
            log_params(self, params)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)  # the handler raises Terminated here

        monkeypatch.setattr(tracking.Tracker, "log_params", stopped_while_logging)
        with pytest.raises(Terminated):
            _job(cfg, "starting", params={"epochs": 1})
        monkeypatch.undo()
        [started] = _statuses(s, "starting")
        assert started == "KILLED"

        with pytest.raises(Terminated), _job(cfg, "stopped"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)
        with pytest.raises(ValueError), _job(cfg, "fails"):
            raise ValueError("a bad batch")
        with pytest.raises(ValueError), _job(cfg, "done") as job:
            job.tracker.end()  # finished, then an error (as score's drift exit after publishing)
            raise ValueError("after the run finished")
        assert [_statuses(s, m) for m in ("stopped", "fails", "done")] == [["KILLED"], ["FAILED"], ["FINISHED"]]
    finally:
        signal.signal(signal.SIGTERM, previous)


def _job(cfg, model, **kw):
    return tracking.Job(cfg, None, "train", f"train {model}", tags={"model_name": model},
                        output={"model_name": model}, **kw)


def _statuses(s, model):
    return [r.info.status for r in tracking._runs(s, {"stage": "train", "model_name": model})]
