"""LakeLayout: every lake path keeps today's on-disk shape, and no value can leave the lake."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core import lake
from pipeline.core.config import ConfigError, load_config
from pipeline.core.layout import (InvalidValue, LakeLayout, validate_date, validate_model_ref, validate_name,
                                  validate_run_id, validate_version)
from pipeline.model import artifact
from pipeline.ops import tracking
from pipeline.spark import cli

ROOT = Path(__file__).resolve().parents[1]
R = "file:///data/lake"
RUN = "20261122T031500Z-1a2b3c"
JOB = "20261123T031500Z-abcdef"
L = LakeLayout(R)


@pytest.mark.parametrize("built, literal", [
    (L.curated_root("digits"), f"{R}/curated/digits"),
    (L.curated_version("digits", RUN), f"{R}/curated/digits/v={RUN}"),
    (L.curated_version("digits", f"v={RUN}"), f"{R}/curated/digits/v={RUN}"),
    (L.curated_split("digits", RUN, "val"), f"{R}/curated/digits/v={RUN}/val"),
    (L.curated_staging("digits", RUN), f"{R}/curated/digits/v={RUN}/_staging"),
    (L.preprocess_plan("digits", RUN, "stage"), f"{R}/curated/digits/v={RUN}/_staging/_plan"),
    (L.preprocess_plan("digits", RUN, "write"), f"{R}/curated/digits/v={RUN}/_staging/_write"),
    (L.quarantine_version("digits", f"v={RUN}"), f"{R}/quarantine/digits/{RUN}"),
    (L.quarantine_score("digits", JOB), f"{R}/quarantine/digits/score-{JOB}"),
    (L.models_root("digits-cnn"), f"{R}/models/digits-cnn"),
    (L.model_run("digits-cnn", RUN), f"{R}/models/digits-cnn/{RUN}"),
    (L.checkpoints("digits-cnn", RUN), f"{R}/models/digits-cnn/{RUN}/checkpoints"),
    (L.predictions_root("digits-cnn"), f"{R}/predictions/digits-cnn"),
    (L.predictions_partition("digits-cnn", "2026-11-22"), f"{R}/predictions/digits-cnn/dt=2026-11-22"),
    (L.score_job("digits-cnn", JOB), f"{R}/predictions/digits-cnn/_staging/{JOB}"),
    (L.score_staging("digits-cnn", JOB, "2026-11-22"), f"{R}/predictions/digits-cnn/_staging/{JOB}/dt=2026-11-22"),
    (L.score_plan("digits-cnn", JOB), f"{R}/predictions/digits-cnn/_staging/{JOB}/_plan"),
    (L.predictions_trash("digits-cnn", JOB), f"{R}/predictions/digits-cnn/_trash/{JOB}"),
    (L.holdout_labels_file("digits", "2026-11-22"), f"{R}/raw/digits/holdout_labels/dt=2026-11-22.csv"),
    (L.holdout_labels_dir("wine", "2026-11-22"), f"{R}/raw/wine/holdout_labels/dt=2026-11-22"),
    (L.dated(f"{R}/raw/digits/incoming/", "2026-11-22"), f"{R}/raw/digits/incoming/dt=2026-11-22"),
    (L.dated("/in/{date}/x", "2026-11-22"), "/in/2026-11-22/x"),
    (L.under("raw/digits/labelled"), f"{R}/raw/digits/labelled"),
    (L.mlflow_db(), f"{R}/mlflow/mlflow.db"),
    (L.mlflow_artifacts(), f"{R}/mlflow/artifacts"),
    (LakeLayout("s3a://bucket/lake/").models_root("m"), "s3a://bucket/lake/models/m"),
    (LakeLayout(R + "/").model_run("digits-cnn", RUN), f"{R}/models/digits-cnn/{RUN}"),
])
def test_each_path_has_todays_shape(built, literal):
    assert built == literal


def test_the_config_and_the_embedded_mlflow_store_keep_their_paths(tmp_path):
    cfg = load_config("conf/digits.yaml", [f"lake.root={tmp_path}/lake"])
    assert LakeLayout.of(cfg).root == f"file://{tmp_path}/lake"
    assert cfg.resolve("raw/digits/labelled") == f"file://{tmp_path}/lake/raw/digits/labelled"
    assert cfg.uri("curated", "digits") == f"file://{tmp_path}/lake/curated/digits"
    s = tracking.settings(cfg)
    assert s["uri"] == f"sqlite:///{tmp_path}/lake/mlflow/mlflow.db"
    assert s["artifact_location"] == f"file://{tmp_path}/lake/mlflow/artifacts"


def test_the_latest_pointer_is_read_and_written_where_it_was(tmp_path):
    parent = LakeLayout(f"file://{tmp_path}").curated_root("digits")
    lake.set_latest(parent, f"v={RUN}")
    assert (tmp_path / "curated" / "digits" / "_latest").read_text() == f"v={RUN}\n"
    assert lake.get_latest(parent) == f"v={RUN}"


HOSTILE = ["..", "a/b", "/abs", "a'b", 'a"b', "a\nb", "", "x" * 65, "a..b", ".hidden", "-x", "a b", "a\\b",
           "2026-01-01/../../x"]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_names_are_refused(value):
    with pytest.raises(InvalidValue):
        validate_name(value, "dataset name")
    for build in (L.curated_root, L.models_root, L.predictions_root):
        with pytest.raises(InvalidValue):
            build(value)
    with pytest.raises(InvalidValue):
        L.model_run("digits-cnn", value)
    with pytest.raises(InvalidValue):
        L.quarantine_score(value, JOB)


@pytest.mark.parametrize("value", ["2026-02-30", "2026-1-1", "2026-01-01/../../x", "2026-01-01\n", "", "20260101",
                                   "../2026-01-01", "2026-13-01", "x"])
def test_hostile_dates_are_refused(value):
    with pytest.raises(InvalidValue, match="YYYY-MM-DD"):
        validate_date(value, "--date")
    with pytest.raises(InvalidValue):
        L.predictions_partition("digits-cnn", value)
    with pytest.raises(InvalidValue):
        L.dated(f"{R}/raw/digits/incoming", value)


@pytest.mark.parametrize("value", ["latest", "..", f"{RUN}/..", f"{RUN}x", "20261122T031500Z-1A2B3C", "v=..",
                                   "", "x" * 65])
def test_hostile_run_ids_and_versions_are_refused(value):
    with pytest.raises(InvalidValue):
        validate_run_id(value)
    with pytest.raises(InvalidValue):
        L.curated_version("digits", value)
    with pytest.raises(InvalidValue):
        L.quarantine_version("digits", value)


@pytest.mark.parametrize("value", ["../x", "a/../../b", "", "/"])
def test_relative_config_paths_stay_under_the_root(value):
    with pytest.raises(InvalidValue):
        L.under(value)


def test_the_message_is_one_line_naming_value_flag_and_rule():
    with pytest.raises(InvalidValue) as e:
        validate_date("2026-01-01\n../../x", "--date")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("--date '2026-01-01\\n../../x'") and "YYYY-MM-DD" in msg


@pytest.mark.parametrize("ref", ["digits-cnn@latest", f"digits-cnn@{RUN}", "digits-cnn@champion",
                                 "models:/digits-cnn@candidate"])
def test_model_references_that_are_well_formed(ref):
    assert validate_model_ref(ref, "--model") == ref


@pytest.mark.parametrize("ref", ["digits-cnn", "../x@latest", "a/b@latest", "digits-cnn@../../x", "digits-cnn@",
                                 "@latest", "a@b@c", "models:/a/b@c", "digits-cnn@late st"])
def test_malformed_model_references_are_refused(ref):
    with pytest.raises(InvalidValue):
        validate_model_ref(ref, "--model")


def test_versions_accept_both_spellings():
    assert validate_version(f"v={RUN}") == validate_version(RUN) == RUN


@pytest.mark.parametrize("override", ["dataset.name=../x", "train.model_name=a/b", "score.model=x@../y",
                                      "train.dataset_version=../v", "dataset.source=../../etc"])
def test_config_values_that_become_paths_are_checked_at_load(override):
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        load_config("conf/digits.yaml", [override])


def test_a_well_formed_missing_model_is_still_not_found(tmp_path):
    root = f"file://{tmp_path}"
    with pytest.raises(artifact.ModelNotFound, match="no trained model named 'ghost'"):
        artifact.resolve(root, "ghost@latest")
    with pytest.raises(artifact.ModelNotFound, match="runs available"):
        artifact.resolve(root, f"ghost@{RUN}")


def _score_args(p):
    from datetime import date

    p.add_checked("--date", check=validate_date, default=date.today().isoformat())
    p.add_checked("--model", check=validate_model_ref)


@pytest.mark.parametrize("args", [["--date", "2026-01-01/../../x"], ["--date", "2026-02-30"],
                                  ["--model", "../../x@latest"], ["--model", "digits-cnn@a/b"],
                                  ["--set", "dataset.name=../../x"]])
def test_the_job_command_line_refuses_with_exit_2_before_anything_runs(tmp_path, capsys, args):
    ran = []
    rc = cli.run_job("score", "test", lambda spark, cfg, a: ran.append(a), _score_args,
                     argv=["--config", "conf/digits.yaml", "--set", f"lake.root={tmp_path}/lake", *args],
                     needs_spark=lambda a: ran.append("spark") or False)
    err = capsys.readouterr().err
    assert rc == cli.EXIT_BAD_CONFIG and ran == []
    assert len(err.strip().splitlines()) == 1 and err.startswith("score: invalid ")
    assert list(tmp_path.iterdir()) == []


def test_score_job_refuses_a_traversing_date_without_writing(tmp_path):
    """The real jobs/score.py, as a user runs it (python, not spark-submit: it fails before Spark)."""
    before = set(os.listdir(tmp_path.parent))
    p = subprocess.run([sys.executable, "jobs/score.py", "--config", "conf/digits.yaml", "--set",
                        f"lake.root={tmp_path}/lake", "--date", "2026-01-01/../../x"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == [
        "score: invalid argument: --date '2026-01-01/../../x' is invalid: expected an ISO date YYYY-MM-DD that "
        "exists, e.g. 2026-11-22"]
    assert list(tmp_path.iterdir()) == [] and set(os.listdir(tmp_path.parent)) == before
