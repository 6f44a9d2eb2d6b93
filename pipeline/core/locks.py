"""One job at a time per output: an exclusive lock held while a job writes and publishes it.

Two score jobs for the same model and date, two preprocess runs of one dataset or two trainings
of one model would otherwise race where they publish (a partition swapped in twice, a nested
``dt=X/dt=X``, a ``_latest`` moved under a reader). The second job waits up to
``lake.lock_wait_s`` seconds for the first, then gives up with ``OutputBusy`` (exit 5).

On a ``file://`` lake the lock is ``fcntl.flock`` on a file under ``_locks/``: the kernel drops it
when its process dies, even by SIGKILL, so a killed job never leaves a stale lock. On shared
filesystems that is as good as their flock (NFS v4: yes). Object stores and HDFS have no such
lock: there the job logs that it runs unguarded.
"""
from __future__ import annotations

import fcntl
import logging
import os
import time
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger(__name__)


class OutputBusy(RuntimeError):
    """Another live job holds the output's lock (exit 5)."""


class Terminated(BaseException):
    """The job got SIGTERM (a scheduler or a person stopping it): raised in the main thread so the
    job cleans up its partial output and ends its MLflow run as KILLED on the way out."""


def is_held(lock_uri: str) -> bool:
    """Whether a live job holds the lock now (False where locks are not supported)."""
    if not lock_uri.startswith("file://"):
        return False
    path = lock_uri[len("file://"):]
    if not os.path.exists(path):
        return False
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


@contextmanager
def output_lock(lock_uri: str, what: str, wait_s: float, poll_s: float = 0.2) -> Iterator[None]:
    """Hold the exclusive lock ``lock_uri`` (from pipeline.core.layout) for the block."""
    if not lock_uri.startswith("file://"):
        log.warning("%s: no lock on %s (only file:// lakes have one); do not run two such jobs at once",
                    what, lock_uri)
        yield
        return
    path = lock_uri[len("file://"):]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        deadline = time.monotonic() + wait_s
        waited = False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise OutputBusy(f"{what} is being written by another job (lock {path}); waited {wait_s:g} s "
                                     f"(lake.lock_wait_s); run again when it has finished") from None
                if not waited:
                    log.info("%s: another job holds %s; waiting up to %g s", what, path, wait_s)
                    waited = True
                time.sleep(poll_s)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
