"""Training that restarts its ranks after one dies (``train.max_restarts``).

``retry(launch, max_restarts, ...)`` calls ``launch(restarts)`` until it returns: after a failure
it calls it again, with the count of restarts so far, and the launcher resumes the run from its
last checkpoint. When the failure comes after ``max_restarts`` restarts, ``RestartsExhausted``
(exit 6) names the budget and the last failure. ``Terminated`` (SIGTERM to the job) is a
BaseException and is never retried: restarts are for dead ranks, not for a job being stopped.
"""
from __future__ import annotations

import logging
from typing import Callable, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class RestartsExhausted(RuntimeError):
    """A rank died again after ``train.max_restarts`` restarts (exit 6)."""


class RankDied(RuntimeError):
    """A rank's process ended without a result (killed by a signal, or its interpreter exited)."""


def retry(launch: Callable[[int], T], max_restarts: int, what: str,
          retry_on: tuple[type[BaseException], ...] = (Exception,)) -> tuple[T, int]:
    """(launch's result, restarts used). With ``max_restarts`` 0 a failure propagates as it is."""
    restarts = 0
    while True:
        try:
            return launch(restarts), restarts
        except retry_on as e:
            if max_restarts == 0:
                raise
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if restarts >= max_restarts:
                raise RestartsExhausted(
                    f"{what} failed after {restarts} restart(s), all that train.max_restarts={max_restarts} allows; "
                    f"last failure: {reason}. Resume it with --resume <run id> once the cause is fixed, or raise "
                    f"train.max_restarts") from e
            restarts += 1
            log.warning("%s failed (%s); restart %d of %d from its last checkpoint", what, reason, restarts,
                        max_restarts)
