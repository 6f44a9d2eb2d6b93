import pytest

from pipeline.core.config import ConfigError, config_from_dict, load_config

DIGITS = "conf/digits.yaml"


def test_loads_defaults_and_makes_root_a_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, [])
    assert cfg.lake.root == f"file://{tmp_path}/lake"
    assert cfg.uri("curated", "digits") == f"file://{tmp_path}/lake/curated/digits"


def test_bundled_config_and_overrides_are_typed():
    cfg = load_config(DIGITS, ["train.epochs=3", "train.lr=0.5", "train.fp16_allreduce=true",
                               "lake.root=s3a://bucket/lake"])
    assert cfg.train.epochs == 3 and cfg.train.lr == 0.5 and cfg.train.fp16_allreduce is True
    assert cfg.lake.root == "s3a://bucket/lake"
    assert cfg.resolve("raw/x") == "s3a://bucket/lake/raw/x"
    assert cfg.resolve("hdfs://nn/data") == "hdfs://nn/data"


@pytest.mark.parametrize("override, key", [
    ("train.epoch=3", "train.epoch"),
    ("nope.x=1", "nope"),
    ("dataset.image.depth=3", "dataset.image.depth"),
])
def test_unknown_keys_are_named(override, key):
    with pytest.raises(ConfigError, match=f"unknown config key '{key}'"):
        load_config(DIGITS, [override])


@pytest.mark.parametrize("override, key", [
    ("train.epochs=ten", "train.epochs"),
    ("train.epochs=2.5", "train.epochs"),
    ("train.fp16_allreduce=1", "train.fp16_allreduce"),
    ("dataset.image.resize=squash", "dataset.image.resize"),
    ("train.arch=vit", "train.arch"),
    ("spark=3", "spark"),
])
def test_wrong_types_are_named(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(DIGITS, [override])


def test_semantic_checks():
    with pytest.raises(ConfigError, match="train\\+val\\+test must be 1"):
        load_config(DIGITS, ["preprocess.split.train=0.9"])
    with pytest.raises(ConfigError, match="train.num_proc must be >= 1"):
        load_config(DIGITS, ["train.num_proc=0"])
    with pytest.raises(ConfigError, match="NAME@RUN_ID"):
        load_config(DIGITS, ["score.model=digits-cnn"])
    with pytest.raises(ConfigError, match="expects dotted.key=value"):
        load_config(DIGITS, ["train.epochs"])
    with pytest.raises(ConfigError, match="not found"):
        load_config("conf/missing.yaml")


def test_round_trips_through_a_manifest_dict():
    cfg = load_config(DIGITS, ["train.epochs=4"])
    assert config_from_dict(cfg.to_dict()) == cfg


def test_spark_conf_override_keeps_dotted_key_whole():
    cfg = load_config(DIGITS, ["spark.conf.spark.sql.files.openCostInBytes=16384"])
    assert cfg.spark.conf == {"spark.sql.files.openCostInBytes": "16384"}
