"""A model whose files are there but do not load is one clear error naming the file, raised on
the driver before any Spark task runs."""
import shutil

import pytest

from conftest import CLEAN_DATE, sets, spark_submit
from pipeline import score, train
from pipeline.core import lake
from pipeline.core.config import load_config
from pipeline.core.layout import LakeLayout
from pipeline.model import artifact
from untouched import Fence


@pytest.fixture(scope="module")
def trained(digits_curated):
    """(config, run id, model.pt's bytes) of a 1-epoch model trained in the session's digits lake."""
    cfg, _ = digits_curated
    cfg = load_config("conf/digits.yaml", [f"lake.root={cfg.lake.root}", "train.model_name=broken-cnn",
                                           "train.epochs=1", "tracking.enabled=false"])
    run_id = lake.get_latest(train.run_local(cfg).model_uri.rsplit("/", 1)[0])
    return cfg, run_id, lake.read_bytes(f"{LakeLayout.of(cfg).model_run('broken-cnn', run_id)}/model.pt")


def test_truncated_or_foreign_model_file_names_the_file(spark, trained):
    cfg, run_id, whole = trained
    model_pt = f"{LakeLayout.of(cfg).model_run('broken-cnn', run_id)}/model.pt"
    jobs_before = len(spark.sparkContext.statusTracker().getJobIdsForGroup())
    try:
        for damaged in (whole[: len(whole) // 2], b"not a torch file"):
            lake.write_bytes(model_pt, damaged)
            with pytest.raises(artifact.BadModel) as e:
                score.run(spark, cfg, CLEAN_DATE, "broken-cnn@latest")
            assert f"{model_pt} does not load" in str(e.value) and "\n" not in str(e.value)
    finally:
        lake.write_bytes(model_pt, whole)
    assert len(spark.sparkContext.statusTracker().getJobIdsForGroup()) == jobs_before  # no task ran
    assert not lake.exists(LakeLayout.of(cfg).predictions_partition("broken-cnn", CLEAN_DATE))


def test_score_job_with_a_truncated_model_is_exit_1_and_one_line(trained, tmp_path):
    """Through spark-submit, on a copy of the model in a lake of its own, cut in half."""
    cfg, run_id, whole = trained
    root = tmp_path / "lake"
    mine = LakeLayout.of(load_config("conf/digits.yaml", [f"lake.root={root}"]))
    shutil.copytree(lake.local_path(LakeLayout.of(cfg).model_run("broken-cnn", run_id)),
                    lake.local_path(mine.model_run("broken-cnn", run_id)))
    lake.set_latest(mine.models_root("broken-cnn"), run_id)
    model_pt = f"{mine.model_run('broken-cnn', run_id)}/model.pt"
    lake.write_bytes(model_pt, whole[: len(whole) // 2])
    fence = Fence(root)
    p = spark_submit("jobs/score.py", "--config", "conf/digits.yaml",
                     *sets(f"lake.root={root}", "tracking.enabled=false",
                           f"dataset.score_source={cfg.resolve(cfg.dataset.score_source)}"),
                     "--date", CLEAN_DATE, "--model", "broken-cnn@latest", check=False)
    out = p.stdout + p.stderr
    assert p.returncode == 1, out[-4000:]
    # spark-submit forwards the Python driver's stderr on its stdout.
    said = [ln for ln in out.splitlines() if ln.startswith("score: ") or " ERROR " in ln]
    assert len(said) == 1 and said[0].startswith(f"score: FAILED: BadModel: {model_pt} does not load into cnn: "), said
    assert "Traceback" not in out
    fence.check()
