"""A bad config file or --set override stops every job before anything starts: exit code 2 and
one line on stderr naming the file (and the line, for a YAML error) or the --set argument as given.
The jobs run in a subprocess from a working directory holding the default lake: nothing is
written to it or next to it (tests/untouched.py)."""
import subprocess
import sys

import pytest

from conftest import ROOT, job_env
from pipeline.core.config import ConfigError
from pipeline.spark import cli
from untouched import Fence

GOOD = "train:\n  epochs: 3\n"


def _job(tmp_path, *args):
    p = subprocess.run([sys.executable, *map(str, args)], cwd=tmp_path, env=job_env(), capture_output=True,
                       text=True, timeout=120)
    return p.returncode, p.stdout, p.stderr


def _one_line(tmp_path, stage, *args) -> str:
    existing = tmp_path / "lake" / "raw" / "kept.csv"  # the default lake, relative to the working directory
    existing.parent.mkdir(parents=True)
    existing.write_text("id\n1\n")
    fence = Fence(tmp_path / "lake")
    rc, out, err = _job(tmp_path, *args)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and out == "", (rc, out, err)
    assert lines[0].startswith(f"{stage}: invalid config: "), lines
    fence.check()  # nothing started: nothing in the lake or next to it, no session
    return lines[0]


def _file(tmp_path, name, content) -> str:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return name


# (case, config file content or None, --config as given, --set arguments, what the line must say)
CASES = [
    ("yaml syntax", "dataset:\n  name: x\n   bad: 1\n", "broken.yaml", [],
     ["broken.yaml: YAML error at line 3, column 7: mapping values are not allowed here"]),
    ("unclosed list", "train:\n  hidden: [64, 64\n  epochs: 3\n", "broken.yaml", [],
     ["broken.yaml: YAML error at line 3", "expected ',' or ']'"]),
    ("a directory", None, "conf.d", [], ["conf.d: is a directory, not a YAML file"]),
    ("a missing file", None, "nope.yaml", [], ["config file not found: nope.yaml"]),
    ("a binary file", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "image.yaml", [],
     ["image.yaml: not a YAML text file: byte 0 is not utf-8"]),
    ("control characters", "train:\n  epochs: 3\x00\n", "nul.yaml", [], ["nul.yaml: not a YAML text file: character #x0000"]),
    ("a list at the top", "- train\n- score\n", "list.yaml", [], ["list.yaml: top level must be a mapping"]),
    ("a scalar at the top", "false\n", "false.yaml", [], ["false.yaml: top level must be a mapping", "bool False"]),
    ("an unknown key in the file", "train:\n  epoch: 3\n", "typo.yaml", [], ["typo.yaml: unknown config key 'train.epoch'"]),
    ("--set unclosed list", GOOD, "ok.yaml", ["train.epochs=[3"], ["--set 'train.epochs=[3': the value is not valid YAML"]),
    ("--set without =", GOOD, "ok.yaml", ["noequals"], ["--set 'noequals': expects dotted.key=value"]),
    ("--set empty key", GOOD, "ok.yaml", ["=3"], ["--set '=3': expects dotted.key=value"]),
    ("--set unknown key", GOOD, "ok.yaml", ["train.epochs=4", "train.epoch=3"],
     ["--set 'train.epoch=3': unknown config key 'train.epoch'"]),
    ("--set wrong type", GOOD, "ok.yaml", ["train.epochs=ten"],
     ["--set 'train.epochs=ten': train.epochs: expected an integer, got 'ten'"]),
    ("--set below a value", GOOD, "ok.yaml", ["train.epochs.x=1"], ["--set 'train.epochs.x=1': 'epochs' is not a section"]),
]


@pytest.mark.parametrize("case, content, config, overrides, expected", CASES, ids=[c[0] for c in CASES])
def test_a_bad_config_is_one_line_and_exit_2(tmp_path, case, content, config, overrides, expected):
    if content is not None:
        _file(tmp_path, config, content)
    elif config == "conf.d":
        (tmp_path / config).mkdir()
    sets = [x for o in overrides for x in ("--set", o)]
    line = _one_line(tmp_path, "train", ROOT / "jobs" / "train.py", "--config", config, *sets)
    for text in expected:
        assert text in line, line


ENTRY_POINTS = [
    pytest.param("preprocess", [ROOT / "jobs" / "preprocess.py"], id="preprocess"),
    pytest.param("train", [ROOT / "jobs" / "train.py"], id="train"),
    pytest.param("score", [ROOT / "jobs" / "score.py", "--date", "2026-01-01"], id="score"),
    pytest.param("promote", [ROOT / "jobs" / "promote.py", "--model", "digits-cnn"], id="promote"),
    pytest.param("lineage", ["-m", "pipeline.lineage", "--date", "2026-01-01"], id="lineage"),
    pytest.param("synthetic", ["-m", "pipeline.synthetic", "--rows", "10"], id="synthetic"),
    pytest.param("sample_data", ["-m", "pipeline.sample_data"], id="sample_data"),
]


@pytest.mark.parametrize("stage, command", ENTRY_POINTS)
def test_every_entry_point_names_the_yaml_error(tmp_path, stage, command):
    _file(tmp_path, "broken.yaml", "train:\n  epochs: 3\n  lr: [0.1\n")
    line = _one_line(tmp_path, stage, *command, "--config", "broken.yaml")
    assert "broken.yaml: YAML error at line 4, column 1: while parsing a flow sequence" in line, line


def test_a_config_error_from_a_stage_check_is_exit_2_in_one_line(tmp_path, capsys):
    """A check that needs the stage (a kind's own settings) raises ConfigError after start-up."""
    def body(spark, cfg, args):
        raise ConfigError("score.passthrough: only tabular datasets carry input columns\ninto predictions")

    config = tmp_path / _file(tmp_path, "ok.yaml", GOOD)
    rc = cli.run_job("score", "", body, argv=["--config", str(config)], needs_spark=lambda args: False)
    err = capsys.readouterr().err
    assert rc == cli.EXIT_BAD_CONFIG == 2
    assert err == "score: invalid config: score.passthrough: only tabular datasets carry input columns\\ninto " \
                  "predictions\n"


def test_the_exit_reason_is_one_write(tmp_path, monkeypatch):
    """Both ranks of a training share one stderr pipe: a line written in two parts (print writes
    the newline apart) can run into the other rank's line, so each reason must be one write."""
    from pipeline.core.locks import OutputBusy

    class Writes:
        def __init__(self):
            self.calls: list[str] = []

        def write(self, text):
            self.calls.append(text)
            return len(text)

        def flush(self):
            pass

    def body(spark, cfg, args):
        raise OutputBusy("model m is being written by another job")

    writes = Writes()
    monkeypatch.setattr(sys, "stderr", writes)
    rc = cli.run_job("train", "", body, argv=["--config", str(tmp_path / _file(tmp_path, "ok.yaml", GOOD))],
                     needs_spark=lambda args: False)
    assert rc == cli.EXIT_BUSY
    assert writes.calls == ["train: output busy: model m is being written by another job\n"]


def test_an_empty_config_file_means_the_defaults(tmp_path):
    from pipeline.core.config import load_config

    (tmp_path / "empty.yaml").write_text("# nothing set\n")
    assert load_config(str(tmp_path / "empty.yaml")) == load_config(None)
