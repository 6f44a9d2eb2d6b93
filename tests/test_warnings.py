"""What preprocess accepts but a user must hear about lands in the manifest's ``warnings`` (and
in MLflow): a feature with no value in the train split, a class with no train rows."""
import numpy as np

from pipeline import preprocess
from pipeline.core import lake, manifest
from pipeline.core.config import load_config
from pipeline.core.splits import NAMES, assign
from untouched import Fence


def test_all_null_feature_and_class_without_training_rows_are_warned(spark, tmp_path):
    root = tmp_path / "lake"
    cfg = load_config("conf/breast_cancer.yaml", [
        f"lake.root={root}", "dataset.name=warned", "dataset.source=raw/warned", "tracking.enabled=false",
        "dataset.tabular.label_column=label", "dataset.tabular.numeric=[x, empty]",
        "dataset.tabular.categorical=[]", "preprocess.max_bad_fraction=0.5"])
    ids = [f"r{i}" for i in range(400)]
    split = np.asarray(NAMES)[assign(ids, cfg.preprocess.split)]
    rare = next(i for i, s in zip(ids, split) if s == "test")  # the only row of class "rare"
    rows = [f"{i},{'rare' if i == rare else ('a' if n % 2 else 'b')},{n * 0.5}," for n, i in enumerate(ids)]
    lake.write_bytes(f"file://{root}/raw/warned/part.csv", ("id,label,x,empty\n" + "\n".join(rows) + "\n").encode())

    fence = Fence(root)
    result = preprocess.run(spark, cfg)
    fence.check(may_write=("curated/warned", "quarantine/warned"))  # the source as it was, nothing outside the lake
    m = result.manifest  # what the job returns is what it wrote next to its output
    assert m == manifest.read(result.uri) and (result.stage, result.run_id, result.output_count) == \
        ("preprocess", m["version"], 400)
    assert m["input_count"] == m["output_count"] == 400
    codes = {(w["code"], w["column"]) for w in m["warnings"]}
    assert codes == {("all_null_feature", "empty"), ("class_without_training_rows", "label")}, m["warnings"]
    rare_warning = next(w for w in m["warnings"] if w["code"] == "class_without_training_rows")
    assert "'rare'" in rare_warning["detail"] and "test 1" in rare_warning["detail"]
