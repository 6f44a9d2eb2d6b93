"""Spark's file formats and reader options through the three jobs, through spark-submit: the wine
table (no id column) as typed ORC, as Parquet partitioned by a declared column, as CSV with
``sep=';'`` and a quoted newline (``multiLine``), and as Latin-1 CSV (``encoding``). Each is
preprocessed, one of them trains the model, and new wines in each format are scored."""
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.orc as orc
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, job_env
from pipeline import lake, manifest
from pipeline.config import load_config

pytestmark = pytest.mark.e2e
DATE = "2026-03-01"
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


def _submit(job, root, *args):
    p = subprocess.run(["spark-submit", "--master", "local[2]", f"jobs/{job}.py", "--config", "conf/wine.yaml",
                        "--set", f"lake.root={root}", *args], cwd=ROOT, env=job_env(), capture_output=True,
                       text=True, timeout=900)
    if p.returncode != 0:
        raise AssertionError(f"{job} {args} exited {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root, files = tmp_path_factory.mktemp("lake"), tmp_path_factory.mktemp("files")
    subprocess.run([sys.executable, "-m", "pipeline.sample_data", "--config", "conf/wine.yaml",
                    "--set", f"lake.root={root}", "--date", DATE], cwd=ROOT, env=job_env(), check=True)
    cfg = load_config("conf/wine.yaml", [f"lake.root={root}"])
    numeric = list(cfg.dataset.tabular.numeric)
    labelled = pd.read_csv(lake.local_path(cfg.resolve(cfg.dataset.source)) + "/wines.csv", dtype=str)
    new = pd.read_csv(lake.local_path(cfg.resolve(cfg.dataset.score_source)) + f"/dt={DATE}/wines.csv", dtype=str)
    out = {"cfg": cfg, "new": new, "curated": {}, "predictions": {}}
    for name, (_, sets) in FORMATS.items():
        _write(name, labelled, numeric, files / name / "labelled", True)
        _write(name, new, numeric, files / name / "incoming" / f"dt={DATE}", False)
        s = [x for kv in sets for x in ("--set", kv)]
        _submit("preprocess", root, "--set", f"dataset.name=wine_{name}",
                "--set", f"dataset.source={files / name / 'labelled'}", *s)
        out["curated"][name] = manifest.read(cfg.uri("curated", f"wine_{name}",
                                                     lake.get_latest(cfg.uri("curated", f"wine_{name}"))))
        if name == "orc":  # one model, trained on the typed input, scores every format
            out["train"] = _submit("train", root, "--set", "dataset.name=wine_orc", "--set", "train.epochs=10")
        _submit("score", root, "--date", DATE, "--set", f"dataset.score_source={files / name / 'incoming'}", *s)
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
    assert [ln for ln in run["train"].stdout.splitlines() if ln.startswith("test accuracy:")]
    new = run["new"]
    reference = None
    for name, (m, t) in run["predictions"].items():
        assert m["input_count"] == 17 == m["output_count"] and m["quarantined_count"] == 0, name
        got = sorted(zip(t["lot"].str.slice(0, 7), t["prediction"]))
        assert [lot for lot, _ in got] == sorted(new["lot"]), name
        reference = reference or got
        assert got == reference, name
    # The business key came through each reader's options intact.
    assert set(run["predictions"]["semi"][1]["lot"].str.slice(7)) == {"\nsecond line"}
    assert set(run["predictions"]["latin"][1]["lot"].str.slice(7)) == {" " + ACCENT}
