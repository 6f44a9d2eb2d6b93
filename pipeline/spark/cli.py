"""Shared command line of the jobs: --config, --set, checked arguments, one session, exit codes.

Library code raises; this is the only place an exception becomes an exit code. Arguments that
become lake paths (a date, a model reference, a run id) and the config's names are checked
before anything starts: a malformed one is one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import warnings
from typing import Any, Callable

from pipeline.core.config import ConfigError, load_config
from pipeline.core.layout import InvalidValue
from pipeline.core.locks import OutputBusy, Terminated
from pipeline.core.restarts import RestartsExhausted

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_CONFIG = 2  # invalid config, or a malformed argument (date, model reference, run id, name)
EXIT_NO_INPUT = 3  # score: nothing to score for the requested date
EXIT_DRIFT = 4  # score: predictions published, but a feature drifted past score.drift.fail_above
EXIT_BUSY = 5  # another job is writing the same output (pipeline.core.locks)
EXIT_RESTARTS_EXHAUSTED = 6  # train: a rank died again after train.max_restarts restarts
EXIT_TERMINATED = 143  # stopped by SIGTERM (128 + 15), after cleaning up


def _terminate(signum, frame):
    raise Terminated(f"stopped by signal {signum}")


class NoInput(RuntimeError):
    """Raised when a job finds no input to process (a scheduler may treat this as 'skip')."""


class Drifted(RuntimeError):
    """Raised after the predictions are published when a feature's PSI is above
    score.drift.fail_above; ``manifest`` is the published score manifest."""

    def __init__(self, message: str, manifest: dict[str, Any]):
        super().__init__(message)
        self.manifest = manifest


class InputError(RuntimeError):
    """The input named in the config is wrong (a missing path, an unknown table, a failing query):
    reported as one line naming it, exit code 1, without a traceback, since the user must fix it."""


def _quiet_py4j_retries(record: logging.LogRecord) -> bool:
    # py4j logs a traceback at INFO on the root logger whenever it retries on a stale pooled
    # connection (horovod.spark.run's background thread triggers it); it is recovered, not an error.
    return not (record.levelno < logging.WARNING and "py4j" in record.pathname)


class JobParser(argparse.ArgumentParser):
    """argparse, plus values checked after parsing by the rules of pipeline/core/layout.py."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.checks: list[tuple[str, str, Callable[[str, str], str]]] = []

    def add_checked(self, *flags: str, check: Callable[[str, str], str], **kwargs: Any) -> argparse.Action:
        """An option whose value, when given, must pass ``check(value, flag)`` (e.g.
        layout.validate_date), which raises InvalidValue naming the flag."""
        action = self.add_argument(*flags, **kwargs)
        self.checks.append((action.dest, flags[0], check))
        return action

    def check(self, args: argparse.Namespace) -> None:
        """Raises InvalidValue for the first malformed value."""
        for dest, flag, check in self.checks:
            value = getattr(args, dest)
            if value is not None:
                setattr(args, dest, check(value, flag))


def parser(description: str) -> JobParser:
    p = JobParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config, e.g. conf/digits.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=5 (repeatable)")
    return p


def parse(job: str, p: JobParser, argv: list[str] | None = None) -> tuple[Any, argparse.Namespace] | int:
    """(config, arguments), or the exit code after one line on stderr naming a malformed
    argument or config value. Nothing has started yet: no session, no lake I/O."""
    args = p.parse_args(argv)
    try:
        p.check(args)
    except InvalidValue as e:
        report(f"{job}: invalid argument: {one_line(e)}")
        return EXIT_BAD_CONFIG
    try:
        return load_config(args.config, args.overrides), args
    except (ConfigError, InvalidValue) as e:
        report(f"{job}: invalid config: {one_line(e)}")
        return EXIT_BAD_CONFIG


def report(line: str) -> None:
    """One line on stderr in one write: every rank of a training reports its own exit reason
    through the same pipe, and print's separate write of the newline lets two ranks' lines run
    together."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def one_line(e: BaseException) -> str:
    """The message with its line breaks escaped: a value from the user (a path, a key) may hold
    one, and the reason must stay one line."""
    return str(e).replace("\r", "\\r").replace("\n", "\\n")


def run_job(job: str, description: str, body: Callable[[Any, Any, argparse.Namespace], Any],
            add_args: Callable[[JobParser], None] | None = None,
            argv: list[str] | None = None,
            needs_spark: Callable[[argparse.Namespace], bool] = lambda args: True) -> int:
    p = parser(description)
    if add_args:
        add_args(p)
    parsed = parse(job, p, argv)
    if isinstance(parsed, int):
        return parsed
    cfg, args = parsed
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stdout)
    for noisy in ("py4j", "petastorm", "horovod", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_quiet_py4j_retries)

    warnings.filterwarnings("ignore", category=FutureWarning)  # see session.quiet_warnings
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    signal.signal(signal.SIGTERM, _terminate)
    spark = None
    if needs_spark(args):  # a job run without Spark (training under torchrun) never imports pyspark
        from pipeline.spark.session import get_spark

        spark = get_spark(f"{job}:{cfg.dataset.name}", cfg)
    try:
        body(spark, cfg, args)
        return EXIT_OK
    except NoInput as e:
        report(f"{job}: no input: {e}")
        return EXIT_NO_INPUT
    except Drifted as e:
        report(f"{job}: drift: {e}")
        return EXIT_DRIFT
    except ConfigError as e:  # a check made once the job runs (a kind's own settings)
        report(f"{job}: invalid config: {one_line(e)}")
        return EXIT_BAD_CONFIG
    except InputError as e:
        report(f"{job}: FAILED: {type(e).__name__}: {e}")
        return EXIT_FAILED
    except OutputBusy as e:
        report(f"{job}: output busy: {e}")
        return EXIT_BUSY
    except RestartsExhausted as e:
        report(f"{job}: restarts exhausted: {one_line(e)}")
        return EXIT_RESTARTS_EXHAUSTED
    except Terminated as e:
        report(f"{job}: terminated: {e}; partial output removed, nothing published")
        return EXIT_TERMINATED
    except Exception as e:  # noqa: BLE001 - the one place errors become an exit code
        logging.getLogger(job).exception("failed")
        report(f"{job}: FAILED: {type(e).__name__}: {e}")
        return EXIT_FAILED
    finally:
        if spark is not None:
            spark.stop()
