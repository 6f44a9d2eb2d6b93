"""A lake written by the release before the package reorganisation (the last commit with the flat
``pipeline`` package) still works: today's jobs train on its curated version, score with its
model and trace its lineage, through spark-submit as a user runs them."""
import os
import subprocess

import pytest

from conftest import ROOT, job_env, run, sets, spark_submit
from pipeline.core import lake, manifest

pytestmark = pytest.mark.e2e
OLD = "2d44a31"  # main before the layered packages; the lake layout has not changed since
DATE = "2026-05-04"


@pytest.fixture(scope="module")
def old_lake(tmp_path_factory):
    """Sample data, a curated version and a trained model, written by the old release's code."""
    if subprocess.run(["git", "cat-file", "-e", f"{OLD}^{{commit}}"], cwd=ROOT, capture_output=True).returncode:
        pytest.skip(f"this checkout lacks the history with commit {OLD} (a shallow clone)")
    old = tmp_path_factory.mktemp("old-release")
    archive = subprocess.run(["git", "archive", OLD, "pipeline", "jobs", "conf"], cwd=ROOT, capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    root = tmp_path_factory.mktemp("old-lake")
    env = {**job_env(), "PYTHONPATH": str(old)}
    where = subprocess.run(["python", "-c", "import pipeline.tracking; print(pipeline.__file__)"], cwd=old, env=env,
                           capture_output=True, text=True)
    assert where.stdout.startswith(str(old)), where  # the old flat package, not this checkout's
    common = sets(f"lake.root={root}", "tracking.enabled=false", "preprocess.files_per_split=1")
    for args in (["python", "-m", "pipeline.sample_data", "--config", "conf/digits.yaml", *common, "--date", DATE],
                 ["spark-submit", "--master", "local[2]", "jobs/preprocess.py", "--config", "conf/digits.yaml", *common],
                 ["python", "jobs/train.py", "--config", "conf/digits.yaml", "--launcher", "local",
                  *common, *sets("train.epochs=2")]):
        p = subprocess.run(args, cwd=old, env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, (args, p.stdout[-2000:], p.stderr[-2000:])
    return root


def test_todays_jobs_read_a_lake_the_old_release_wrote(old_lake):
    common = sets(f"lake.root={old_lake}", "tracking.enabled=false", "preprocess.files_per_split=1")
    old_model = lake.get_latest(f"file://{old_lake}/models/digits-cnn")
    old_version = lake.get_latest(f"file://{old_lake}/curated/digits")

    # Score with the old model, then train a new one on the old curated version.
    spark_submit("jobs/score.py", "--config", "conf/digits.yaml", *common, "--date", DATE,
                 "--model", f"digits-cnn@{old_model}")
    scored = manifest.read(f"file://{old_lake}/predictions/digits-cnn/dt={DATE}")
    assert scored["model"]["run_id"] == old_model and scored["model"]["dataset_version"] == old_version.removeprefix("v=")
    assert scored["output_count"] == scored["input_count"] > 0
    run(["python", "jobs/train.py", "--config", "conf/digits.yaml", "--launcher", "local", *common,
         *sets("train.epochs=1", "train.model_name=digits-new")])
    new_model = lake.get_latest(f"file://{old_lake}/models/digits-new")
    spec = lake.read_json(f"file://{old_lake}/models/digits-new/{new_model}/model.json")
    assert spec["dataset"]["version"] == old_version.removeprefix("v=")

    lineage = run(["python", "-m", "pipeline.lineage", "--config", "conf/digits.yaml", *common, "--date", DATE])
    assert old_model in lineage.stdout and old_version.removeprefix("v=") in lineage.stdout, lineage.stdout
    assert not os.path.exists(f"{old_lake}/mlflow")  # tracking off: nothing but the lake
