"""A model whose files are there but do not load is one clear error naming the file, raised on
the driver before any Spark task runs."""
import pytest

from conftest import CLEAN_DATE
from pipeline import score, train
from pipeline.core import lake
from pipeline.core.config import load_config
from pipeline.core.layout import LakeLayout
from pipeline.model import artifact


def test_truncated_or_foreign_model_file_names_the_file(spark, digits_curated):
    cfg, _ = digits_curated
    cfg = load_config("conf/digits.yaml", [f"lake.root={cfg.lake.root}", "train.model_name=broken-cnn",
                                           "train.epochs=1", "tracking.enabled=false"])
    run_id = lake.get_latest(train.run_local(cfg)["model_uri"].rsplit("/", 1)[0])
    model_pt = f"{LakeLayout.of(cfg).model_run('broken-cnn', run_id)}/model.pt"
    whole = lake.read_bytes(model_pt)
    jobs_before = len(spark.sparkContext.statusTracker().getJobIdsForGroup())
    for damaged in (whole[: len(whole) // 2], b"not a torch file"):
        lake.write_bytes(model_pt, damaged)
        with pytest.raises(artifact.BadModel) as e:
            score.run(spark, cfg, CLEAN_DATE, "broken-cnn@latest")
        assert f"{model_pt} does not load" in str(e.value) and "\n" not in str(e.value)
    assert len(spark.sparkContext.statusTracker().getJobIdsForGroup()) == jobs_before  # no task ran
    assert not lake.exists(LakeLayout.of(cfg).predictions_partition("broken-cnn", CLEAN_DATE))
