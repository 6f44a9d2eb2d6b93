"""dataset.privacy: personal values planted in a real table never reach the lake or MLflow; and
train.privacy (DP-SGD with Opacus)."""
import gzip
import hashlib
import hmac
import io
import json
import zipfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core import privacy
from pipeline.core.config import ConfigError, load_config

KEY = "k3y-ümlaut-Σ"
DATE = "2024-03-01"
NUMERIC = ["mean_radius", "mean_texture", "mean_perimeter", "mean_area", "mean_smoothness"]
PII = "{id: hash, email: hash, name: drop, city: hash, zip_code: hash}"


def _hmac(text: str, key: str = KEY) -> str:
    return hmac.new(key.encode(), text.encode(), hashlib.sha256).hexdigest()


def test_hash_is_python_hmac_on_awkward_input():
    pii = privacy.Pii({"c": "hash"}, 64, "K", key=KEY.encode())
    values = ["", "Zoë Ångström", "李小龍", "a\x00b", " ", None, "x" * 5000]
    got = pii.hmac_hex(pa.array(values, pa.string())).to_pylist()
    assert got == [None if v is None else _hmac(v) for v in values]
    assert all(g is None or (len(g) == 64 and g == g.lower()) for g in got)
    assert pii.bucket(pa.array(got)).to_pylist() == [None if g is None else str(int(g[:8], 16) % 64) for g in got]
    assert "k3y" not in repr(pii)


def _people(n: int) -> list[dict[str, str]]:
    """Planted personal values: unicode names, emails, cities, zip codes."""
    return [{"email": f"planted.person{i}@example.org", "name": f"Zoë Plantedname{i} Ångström",
             "city": f"Plantedcity{i % 7}ü", "zip_code": str(731_000_000_000 + 7919 * i)} for i in range(n)]


def _write(tmp_path: Path) -> tuple[Path, list[dict[str, str]]]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    people = _people(len(data.target))
    cols = [n.replace(" ", "_") for n in data.feature_names]
    idx = [cols.index(c) for c in NUMERIC]
    header = ["id", "diagnosis", *NUMERIC, "zip_code", "city", "email", "name"]

    def line(i: int, label: bool = True) -> str:
        p = people[i]
        return ",".join([f"case-{i:04d}", *([data.target_names[data.target[i]]] if label else []),
                         *(repr(float(data.data[i, j])) for j in idx), p["zip_code"], p["city"], p["email"], p["name"]])

    raw = tmp_path / "raw"
    labelled = [line(i) for i in range(500)]
    bad = [line(0).replace(repr(float(data.data[0, idx[0]])), "notanumber", 1),  # wrong_type: quarantined
           line(1) + ",one field too many",  # malformed: its text holds every planted value
           line(2)]  # a copy of case-0002: duplicate_row
    (raw / "labelled").mkdir(parents=True)
    (raw / "labelled" / "cases.csv").write_text("\n".join([",".join(header), *labelled, *bad]) + "\n")
    new_header = [h for h in header if h != "diagnosis"]
    incoming = raw / "incoming" / f"dt={DATE}"
    incoming.mkdir(parents=True)
    (incoming / "cases.csv").write_text("\n".join([",".join(new_header), *(line(i, False) for i in range(500, 569)),
                                                   line(500, False) + ",extra"]) + "\n")
    return raw, people


def _cfg(tmp_path: Path, raw: Path, *more: str):
    return load_config("conf/breast_cancer.yaml", [
        f"lake.root={tmp_path / 'lake'}", "dataset.name=patients", f"dataset.source={raw / 'labelled'}",
        f"dataset.score_source={raw / 'incoming'}", f"dataset.tabular.numeric=[{', '.join(NUMERIC)}, zip_code]",
        "dataset.tabular.categorical=[city]", "dataset.tabular.ignore=[email, name]",
        f"dataset.privacy.pii_columns={PII}", "score.passthrough=[email]", "preprocess.files_per_split=1",
        "train.backend=torch", "train.num_proc=1", "train.epochs=2", "train.model_name=patients-mlp",
        "score.model=patients-mlp@latest", *more])


def _blobs(path: Path):
    """Every byte of a file, and the decoded contents of what compresses or encodes them
    (Parquet pages, zip members, gzip), so a compressed copy of a value is found too."""
    data = path.read_bytes()
    yield data
    if data[:4] == b"PAR1":
        yield json.dumps(pq.read_table(path).to_pylist(), default=str, ensure_ascii=False).encode()
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            for name in z.namelist():
                yield z.read(name)
    if data[:2] == b"\x1f\x8b":
        yield gzip.decompress(data)


def _needles(people: list[dict[str, str]]) -> list[bytes]:
    out = []
    for p in people:
        for v in p.values():
            out += [v.encode(), json.dumps(v).strip('"').encode()]  # as UTF-8 and as JSON escapes it
    return out + [KEY.encode(), json.dumps(KEY).strip('"').encode()]


def _leaks(root: Path, needles: list[bytes]) -> list[str]:
    found = []
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        for blob in _blobs(f):
            hit = next((n for n in needles if n in blob), None)
            if hit:
                found.append(f"{f.relative_to(root)}: {hit[:40]!r}")
                break
    return found


def test_planted_personal_values_never_reach_the_lake_or_mlflow(spark, tmp_path, monkeypatch, capfd):
    """The three jobs on the breast-cancer table with planted personal values; training with
    DP-SGD, whose epsilon must reach the history, the manifest and MLflow."""
    from mlflow import MlflowClient
    import mlflow.pyfunc

    from pipeline import preprocess, score, train
    from pipeline.core import lake
    from pipeline.ops import tracking

    raw, people = _write(tmp_path)
    needles = _needles(people)
    assert _leaks(raw, needles), "the scan must find the planted values where they are"
    monkeypatch.setenv("PIPELINE_PII_KEY", KEY)
    cfg = _cfg(tmp_path, raw, "train.privacy.noise_multiplier=1.0")
    m = preprocess.run(spark, cfg).manifest
    trained = train.run_local(cfg)
    metrics = trained.metrics
    s = score.run(spark, cfg, DATE).manifest
    lake_root = tmp_path / "lake"

    assert _leaks(lake_root, needles) == []
    out, err = capfd.readouterr()
    assert KEY not in out + err

    # Every row accounted for; hashed columns as keyed hashes, a dropped one gone.
    assert m["quarantined_by_reason"] == {"wrong_type": 1, "malformed_record": 1, "duplicate_row": 1}
    assert m["input_count"] == 503 and m["privacy"] == {"columns": {"id": "hash", "email": "hash", "name": "drop",
                                                                    "city": "hash", "zip_code": "hash"},
                                                        "buckets": 64, "key_env": "PIPELINE_PII_KEY"}
    assert m["tabular"]["categorical"] == {"city": [str(i) for i in range(64)], "zip_code": [str(i) for i in range(64)]}
    assert set(m["drift_reference"]["features"]) == set(NUMERIC)  # no statistic of a personal column
    curated = pq.read_table(m["splits"]["train"]["uri"])
    assert set(curated.column("id").to_pylist()) <= {_hmac(f"case-{i:04d}") for i in range(500)}
    assert metrics["test_count"] > 0 and s["output_count"] == 69 and s["quarantined_count"] == 1
    preds = pq.read_table(s["uri"]).to_pandas()
    assert sorted(preds["email"]) == sorted(_hmac(people[i]["email"]) for i in range(500, 569))
    assert set(preds["id"]) == {_hmac(f"case-{i:04d}") for i in range(500, 569)}
    assert "name" not in preds.columns

    # DP-SGD: the cumulative epsilon of every epoch, growing, in the history, manifest and MLflow.
    eps = [r["dp_epsilon"] for r in lake.read_json(f"{trained.model_uri}/history.json")]
    assert len(eps) == 2 and 0 < eps[0] < eps[1] and metrics["dp_epsilon"] == eps[1]
    assert lake.read_json(f"{trained.model_uri}/_manifest.json")["metrics"]["dp_epsilon"] == eps[1]
    logged = MlflowClient(tracking.settings(cfg)["uri"]).get_metric_history(trained.mlflow_run_id, "dp_epsilon")
    assert [h.value for h in logged] == pytest.approx([*eps, eps[1]])  # per epoch, then the final value

    # The registered model hashes raw rows itself, with the key from the environment.
    mlflow.set_tracking_uri(tracking.settings(cfg)["uri"])
    model = mlflow.pyfunc.load_model("models:/patients-mlp/1")
    row = pd.DataFrame([{"id": "case-0501", **{c: 14.0 for c in NUMERIC}, "zip_code": "90501",
                         "city": people[501]["city"]}])
    assert model.predict(row)["reason"].isna().all()
    monkeypatch.delenv("PIPELINE_PII_KEY")
    with pytest.raises(Exception, match="PIPELINE_PII_KEY is not set"):
        model.predict(row)


def test_spark_reader_path_hashes_before_anything_is_written(spark, tmp_path, monkeypatch, capfd):
    """The same table through Spark's reader (dataset.tabular.reader=spark) in preprocess and
    score: no planted value and not the key anywhere in the lake, the same keyed hashes."""
    from pipeline import preprocess, score, train

    raw, people = _write(tmp_path)
    monkeypatch.setenv("PIPELINE_PII_KEY", KEY)
    cfg = _cfg(tmp_path, raw, "dataset.tabular.reader=spark", "train.epochs=1", "tracking.enabled=false")
    m = preprocess.run(spark, cfg).manifest
    train.run_local(cfg)
    s = score.run(spark, cfg, DATE).manifest
    assert _leaks(tmp_path / "lake", _needles(people)) == []
    out, err = capfd.readouterr()
    assert KEY not in out + err
    assert m["quarantined_by_reason"] == {"wrong_type": 1, "malformed_record": 1, "duplicate_row": 1}
    curated = pq.read_table(m["splits"]["train"]["uri"])
    assert set(curated.column("id").to_pylist()) <= {_hmac(f"case-{i:04d}") for i in range(500)}
    preds = pq.read_table(s["uri"]).to_pandas()
    assert s["output_count"] == 69 and s["quarantined_count"] == 1 and "name" not in preds.columns
    assert sorted(preds["email"]) == sorted(_hmac(people[i]["email"]) for i in range(500, 569))


@pytest.mark.parametrize("override, message", [
    ("dataset.privacy.pii_columns={nobody: hash}", "'nobody' is not a declared column"),
    ("dataset.privacy.pii_columns={diagnosis: hash}", "the label (diagnosis) cannot be a personal column"),
    ("dataset.privacy.pii_columns={city: drop}", "a dropped column cannot be a feature"),
    ("dataset.privacy.pii_columns={email: drop}", "a dropped column cannot be in score.passthrough"),
    ("dataset.privacy.pii_columns={email: mask}", "is not one of ['hash', 'drop']"),
])
def test_bad_personal_columns_are_config_errors(tmp_path, monkeypatch, override, message):
    from pipeline import kinds

    monkeypatch.setenv("PIPELINE_PII_KEY", KEY)
    with pytest.raises(ConfigError) as e:
        kinds.for_config(_cfg(tmp_path, tmp_path, override))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_key_and_images_are_exit_2(tmp_path, monkeypatch):
    from pipeline.spark.cli import EXIT_BAD_CONFIG, run_job
    from pipeline import kinds

    monkeypatch.delenv("PIPELINE_PII_KEY", raising=False)
    with pytest.raises(ConfigError, match="PIPELINE_PII_KEY is not set"):
        kinds.for_config(_cfg(tmp_path, tmp_path))
    images = load_config("conf/digits.yaml", ["dataset.privacy.pii_columns={label: hash}"])
    with pytest.raises(ConfigError, match="images datasets have no personal columns"):
        kinds.for_config(images)
    argv = ["--config", "conf/digits.yaml", "--set", "dataset.privacy.pii_columns={x: hash}"]
    assert run_job("preprocess", "", lambda spark, cfg, args: kinds.for_config(cfg), argv=argv,
                   needs_spark=lambda a: False) == EXIT_BAD_CONFIG


@pytest.mark.parametrize("override, message", [
    ("train.arch=resnet", "DP-SGD trains only ['mlp', 'cnn']"),
    ("train.backend=horovod", "DP-SGD runs on train.backend=torch"),
])
def test_dp_sgd_refuses_what_it_cannot_train(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config("conf/digits.yaml", ["train.privacy.noise_multiplier=1.0", override])


def test_a_sequence_series_column_is_hashed_as_it_is_read(spark, tmp_path, monkeypatch):
    """Sequences: the series column (a person's id) is hashed before validation sees it, and a
    malformed line's text is withheld from the quarantine."""
    from pipeline.core.config import SequenceConf
    from pipeline.ingest import sequence, tabular

    (tmp_path / "s.csv").write_text("patient,time,value\nZoë Ångström,1,1.5\nZoë Ångström,2,4.5\n"
                                    "Li Plantedname,1,2.5\nLi Plantedname,2,3,extra\n")
    seq = SequenceConf(series_column="patient", time_column="time", target_column="value")
    pii = privacy.Pii({"patient": "hash"}, 64, "PIPELINE_PII_KEY", key=KEY.encode())
    rows = sequence.validate(sequence.read(spark, seq, f"file://{tmp_path}", pii), seq).collect()
    assert sorted({r["series"] for r in rows if r["series"]}) == sorted({_hmac("Zoë Ångström"), _hmac("Li Plantedname")})
    text = json.dumps([r.asDict() for r in rows], ensure_ascii=False)
    assert "Zoë" not in text and "Planted" not in text and tabular.REDACTED in text
    assert {r["reason"] for r in rows} == {None, "malformed_record"}

    monkeypatch.setenv("PIPELINE_PII_KEY", KEY)
    from pipeline import kinds

    co2 = ["dataset.sequence.series_column=patient"]
    kinds.for_config(load_config("conf/co2.yaml", [*co2, "dataset.privacy.pii_columns={patient: hash}"]))
    with pytest.raises(ConfigError, match="only personal column is its series column"):
        kinds.for_config(load_config("conf/co2.yaml", [*co2, "dataset.privacy.pii_columns={co2: hash}"]))
