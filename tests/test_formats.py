"""Spark's file formats and reader options through preprocess and score: the wine table (no id
column) as typed ORC, as Parquet partitioned by a declared column, as CSV with ``sep=';'`` and a
quoted newline (``multiLine``), and as Latin-1 CSV (``encoding``). Each is preprocessed, and new
wines in each format are scored by the session's one wine model (conftest.wine_pipeline, trained
on the same wines read from a catalog table through spark-submit). The stages run on the
session's Spark: what is tested here is the readers, not the command line."""
import pandas as pd
import pyarrow as pa
import pyarrow.orc as orc
import pyarrow.parquet as pq
import pytest

from conftest import WINE_DATE as DATE
from pipeline import preprocess, score
from pipeline.core import lake, manifest
from pipeline.core.config import load_config
ACCENT = "fonc\u00e9"  # 'dark' in French: one byte in Latin-1, two in UTF-8

# name: (how the files are written, the settings that read them)
FORMATS = {
    "orc": ("orc", ["dataset.tabular.format=orc"]),
    "parts": ("parquet partitioned by hue_band", ["dataset.tabular.format=parquet"]),
    "semi": ("csv, sep ';', a quoted newline in lot", ["dataset.tabular.options={sep: ';', multiLine: 'true'}"]),
    "latin": ("csv in Latin-1, accents in hue_band (labelled) and lot", ["dataset.tabular.options={encoding: ISO-8859-1}"]),
}


def _write(kind: str, table: pd.DataFrame, numeric: list[str], directory, labelled: bool) -> None:
    directory.mkdir(parents=True)
    if kind == "orc":  # typed: numbers as doubles, not text
        orc.write_table(pa.Table.from_pandas(table.astype({c: "float64" for c in numeric}), preserve_index=False),
                        str(directory / "part-0.orc"))
    elif kind == "parts":  # hue_band=dark/, hue_band=bright/
        pq.write_to_dataset(pa.Table.from_pandas(table.astype({c: "float64" for c in numeric}), preserve_index=False),
                            str(directory), partition_cols=["hue_band"])
    elif kind == "semi":
        odd = table.assign(lot=table["lot"] + "\nsecond line")
        odd.to_csv(directory / "w.csv", sep=";", index=False, quoting=1)
    else:
        # New wines keep 'dark', the category the model knows; the accent rides in the business key.
        band = table["hue_band"].replace({"dark": ACCENT}) if labelled else table["hue_band"]
        latin = table.assign(hue_band=band, lot=table["lot"] + " " + ACCENT)
        (directory / "w.csv").write_bytes(latin.to_csv(index=False).encode("latin-1"))


@pytest.fixture(scope="module")
def run(wine_pipeline, spark, tmp_path_factory):
    cfg, root, files = wine_pipeline["cfg"], wine_pipeline["root"], tmp_path_factory.mktemp("files")
    numeric = list(cfg.dataset.tabular.numeric)
    labelled = pd.read_csv(lake.local_path(cfg.resolve(cfg.dataset.source)) + "/wines.csv", dtype=str)
    new = pd.read_csv(lake.local_path(cfg.resolve(cfg.dataset.score_source)) + f"/dt={DATE}/wines.csv", dtype=str)
    out = {"cfg": cfg, "new": new, "curated": {}, "predictions": {}, "catalog": wine_pipeline["predictions"][1]}

    def config(*overrides):
        return load_config("conf/wine.yaml", [f"lake.root={root}", *overrides])
    for name, (_, options) in FORMATS.items():
        _write(name, labelled, numeric, files / name / "labelled", True)
        _write(name, new, numeric, files / name / "incoming" / f"dt={DATE}", False)
        preprocess.run(spark, config(f"dataset.name=wine_{name}", f"dataset.source={files / name / 'labelled'}",
                                     *options))
        out["curated"][name] = manifest.read(cfg.uri("curated", f"wine_{name}",
                                                     lake.get_latest(cfg.uri("curated", f"wine_{name}"))))
        score.run(spark, config(f"dataset.score_source={files / name / 'incoming'}", *options), DATE)
        part = cfg.uri("predictions", "wine-mlp", f"dt={DATE}")  # replaced by each run for the date
        out["predictions"][name] = (manifest.read(part), pq.read_table(lake.local_path(part)).to_pandas())
    return out


def test_every_format_preprocesses_to_the_same_curated_data(run):
    ms = run["curated"]
    for name, m in ms.items():
        assert m["input_count"] == 161 == m["output_count"] + m["quarantined_count"] and m["quarantined_count"] == 0, name
        if name == "latin":  # another hue_band value: other split keys (hashes of the declared values)
            continue
        assert {s: v["count"] for s, v in m["splits"].items()} == \
            {s: v["count"] for s, v in ms["orc"]["splits"].items()}, name
        for c, p in ms["orc"]["tabular"]["numeric"].items():
            assert m["tabular"]["numeric"][c] == pytest.approx(p, rel=1e-9), (name, c)
    # The partition column was read from the directory names; Latin-1 was decoded, not mangled.
    assert sorted(ms["parts"]["tabular"]["categorical"]["hue_band"]) == ["bright", "dark"]
    assert sorted(ms["latin"]["tabular"]["categorical"]["hue_band"]) == ["bright", ACCENT]

    def train_ids(m):
        return sorted(pq.read_table(lake.local_path(m["splits"]["train"]["uri"]), columns=["id"]).column(0).to_pylist())
    assert train_ids(ms["semi"]) == train_ids(ms["orc"]) == train_ids(ms["parts"])


def test_every_format_scores_the_same_predictions(run):
    new = run["new"]
    # the catalog run's predictions, from the same model on the same wines read from a table
    reference = sorted(zip(run["catalog"]["lot"], run["catalog"]["prediction"]))
    for name, (m, t) in run["predictions"].items():
        assert m["input_count"] == 17 == m["output_count"] and m["quarantined_count"] == 0, name
        got = sorted(zip(t["lot"].str.slice(0, 7), t["prediction"]))
        assert [lot for lot, _ in got] == sorted(new["lot"]), name
        assert got == reference, name
    # The business key came through each reader's options intact.
    assert set(run["predictions"]["semi"][1]["lot"].str.slice(7)) == {"\nsecond line"}
    assert set(run["predictions"]["latin"][1]["lot"].str.slice(7)) == {" " + ACCENT}
