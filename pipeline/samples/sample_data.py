"""Writes real, bundled sample data (scikit-learn's, no network) into the lake's raw zone.

    python -m pipeline.samples.sample_data --config conf/digits.yaml [--date YYYY-MM-DD] [--bad-records]
    python -m pipeline.samples.sample_data --config conf/breast_cancer.yaml ...

images (digits: 1797 real 8x8 scans): labelled PNGs go to ``<dataset.source>/<class>/<n>.png``;
a held-out tenth goes, unlabelled, to ``<dataset.score_source>/dt=<date>/<n>.png`` as new
input for scoring.

tabular (breast cancer: 569 real cases, 30 numeric measurements, plus a categorical
``size_band`` derived from the mean radius): ``<dataset.source>/cases.csv`` with id and
diagnosis; a held-out tenth without the diagnosis under ``<dataset.score_source>/dt=<date>/``.
``conf/wine.yaml``: the wine table without an id column; ``conf/diabetes.yaml``: the diabetes
table, a regression target.

sequence (statsmodels' yearly ``sunspots``, 1700-2008, or weekly ``co2``, 1958-2001, with
missing values left empty): ``<dataset.source>/series.csv`` (time, value) without the last
``horizon`` steps; the ``window`` + 8 steps before them under ``<dataset.score_source>/dt=<date>/``
as the recent history to forecast from; the held-out steps are the truth.

The held-out truth is written under ``raw/<dataset>/holdout_labels/`` so predictions can be
checked. ``--bad-records`` adds one record of every kind the pipeline must quarantine.
"""
from __future__ import annotations

import argparse
import io
import logging
import sys
from datetime import date

import numpy as np

from pipeline.core import lake
from pipeline.core.config import Config, ConfigError, load_config
from pipeline.spark.cli import EXIT_BAD_CONFIG
from pipeline.core.layout import InvalidValue, LakeLayout, validate_date

log = logging.getLogger(__name__)
HOLDOUT_FRACTION = 0.1


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _split_holdout(n: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(0).permutation(n)
    k = int(n * HOLDOUT_FRACTION)
    return order[:k], order[k:]


def _write_truth(cfg: Config, score_date: str, rows: list[tuple[str, object]]) -> None:
    text = "path,label\n" + "".join(f"{k},{v}\n" for k, v in rows)
    lake.write_bytes(LakeLayout.of(cfg).holdout_labels_file(cfg.dataset.name, score_date), text.encode())


def bad_image_files() -> dict[str, bytes]:
    """One file per image quarantine reason (name -> bytes)."""
    from PIL import Image

    noisy = _png(np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8))
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint16) + 1000).save(buf, format="PNG")  # 16-bit: unsupported
    big = io.BytesIO()
    Image.new("L", (7000, 7000)).save(big, format="PNG")  # 49M pixels, ~50 kB: a decompression bomb
    return {
        "empty.png": b"",
        "truncated.png": noisy[: len(noisy) // 2],
        "not_an_image.png": b"name,value\nthis is a csv file with a png extension\n",
        "sixteen_bit.png": buf.getvalue(),
        "bomb.png": big.getvalue(),
    }


def write_digits(cfg: Config, score_date: str, bad_records: bool = False) -> dict[str, int]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # sklearn's scans are 0..16; spread to 0..255 as a scanner would.
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    holdout, labelled = _split_holdout(len(images))

    source = cfg.resolve(cfg.dataset.source)
    incoming = LakeLayout.dated(cfg.resolve(cfg.dataset.score_source), score_date)
    for i in labelled:
        lake.write_bytes(f"{source}/{digits.target[i]}/{i:04d}.png", _png(images[i]))
    for i in holdout:
        lake.write_bytes(f"{incoming}/{i:04d}.png", _png(images[i]))
    _write_truth(cfg, score_date, [(f"{i:04d}.png", digits.target[i]) for i in holdout])
    bad = bad_image_files() if bad_records else {}
    for name, data in bad.items():
        lake.write_bytes(f"{source}/{digits.target[0]}/{name}", data)
        lake.write_bytes(f"{incoming}/{name}", data)
    log.info("wrote %d labelled images under %s and %d held-out images under %s",
             len(labelled), source, len(holdout), incoming)
    return {"labelled": len(labelled) + len(bad), "holdout": len(holdout) + len(bad), "bad": len(bad)}


def bad_tabular_lines(good: list[str]) -> list[str]:
    """One CSV line per tabular quarantine reason, built from a good row (``good`` = its fields)."""
    i_num = 2  # first numeric column (after id and label)
    def with_value(tag: str, value: str) -> str:
        row = list(good)
        row[0], row[i_num] = f"bad-{tag}", value
        return ",".join(row)
    missing_label = list(good)
    missing_label[0], missing_label[1] = "bad-missing_label", ""
    return [
        ",".join(["bad-malformed", *good[1:], "an-extra-field"]),  # one field too many
        with_value("wrong_type", "twelve"),
        ",".join(missing_label),
        with_value("nan", "NaN"),
        with_value("inf", "inf"),
    ]


def write_breast_cancer(cfg: Config, score_date: str, bad_records: bool = False) -> dict[str, int]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    tab = cfg.dataset.tabular
    names = [n.replace(" ", "_") for n in data.feature_names]
    if tab.numeric and tab.numeric != names:
        raise ValueError(f"dataset.tabular.numeric must list the breast-cancer features in order: {names}")
    radius = data.data[:, 0]
    cuts = np.quantile(radius, [1 / 3, 2 / 3])
    band = np.where(radius < cuts[0], "small", np.where(radius < cuts[1], "medium", "large"))
    diagnosis = np.asarray(data.target_names)[data.target]
    holdout, labelled = _split_holdout(len(data.target))

    def line(i: int, with_label: bool) -> list[str]:
        return [f"case-{i:04d}", *([diagnosis[i]] if with_label else []), *(repr(float(v)) for v in data.data[i]), band[i]]

    header = [tab.id_column, tab.label_column, *names, "size_band"]
    rows = [",".join(line(i, True)) for i in labelled]
    new = [",".join(line(i, False)) for i in holdout]
    bad = bad_tabular_lines(line(int(labelled[0]), True)) if bad_records else []
    bad_new = [ln.replace(f",{diagnosis[labelled[0]]},", ",", 1) for ln in bad if "missing_label" not in ln] \
        if bad_records else []
    source = cfg.resolve(cfg.dataset.source)
    incoming = LakeLayout.dated(cfg.resolve(cfg.dataset.score_source), score_date)
    lake.write_bytes(f"{source}/cases.csv", ("\n".join([",".join(header), *rows, *bad]) + "\n").encode())
    new_header = [c for c in header if c != tab.label_column]
    lake.write_bytes(f"{incoming}/cases.csv", ("\n".join([",".join(new_header), *new, *bad_new]) + "\n").encode())
    _write_truth(cfg, score_date, [(f"case-{i:04d}", diagnosis[i]) for i in holdout])
    log.info("wrote %d labelled rows to %s and %d new rows to %s", len(rows) + len(bad), source,
             len(new) + len(bad_new), incoming)
    return {"labelled": len(rows) + len(bad), "holdout": len(new) + len(bad_new), "bad": len(bad)}


def write_wine(cfg: Config, score_date: str, bad_records: bool = False) -> dict[str, int]:
    """scikit-learn's wine table (178 real wines, 13 measurements, 3 cultivars) as a table without
    an id column, as the Palmer penguins or most exports come: a categorical ``hue_band`` derived
    from the hue, and a ``lot`` business key that several wines share (not an id). New wines go
    to ``dt=<date>/`` without the cultivar."""
    from sklearn.datasets import load_wine

    data = load_wine()
    tab = cfg.dataset.tabular
    names = [n.replace("/", "_") for n in data.feature_names]
    hue = data.data[:, names.index("hue")]
    band = np.where(hue < np.quantile(hue, 0.5), "dark", "bright")
    cultivar = np.asarray([f"cultivar_{t}" for t in data.target])
    holdout, labelled = _split_holdout(len(data.target))
    header = [tab.label_column, *names, "hue_band", "lot"]

    def line(i: int, with_label: bool) -> str:
        return ",".join([*([cultivar[i]] if with_label else []), *(repr(float(v)) for v in data.data[i]), band[i],
                         f"lot-{i // 4:03d}"])

    source = cfg.resolve(cfg.dataset.source)
    incoming = LakeLayout.dated(cfg.resolve(cfg.dataset.score_source), score_date)
    lake.write_bytes(f"{source}/wines.csv",
                     "\n".join([",".join(header), *(line(i, True) for i in labelled), ""]).encode())
    lake.write_bytes(f"{incoming}/wines.csv", "\n".join([",".join(header[1:]), *(line(i, False) for i in holdout),
                                                         ""]).encode())
    _write_truth(cfg, score_date, [(f"lot-{i // 4:03d}", cultivar[i]) for i in holdout])
    return {"labelled": len(labelled), "holdout": len(holdout), "bad": 0}


def write_diabetes(cfg: Config, score_date: str, bad_records: bool = False) -> dict[str, int]:
    """scikit-learn's diabetes table (442 real patients, 10 baseline measurements, a numeric
    disease progression one year later: a regression target), with a ``patient`` id."""
    from sklearn.datasets import load_diabetes

    data = load_diabetes(scaled=False)
    tab = cfg.dataset.tabular
    names = list(data.feature_names)
    sex = np.where(data.data[:, names.index("sex")] == 1, "f", "m")  # coded 1/2 in the raw table
    numeric = [n for n in names if n != "sex"]
    holdout, labelled = _split_holdout(len(data.target))
    header = [tab.id_column, tab.label_column, *numeric, "sex"]

    def line(i: int, with_label: bool) -> list[str]:
        return [f"patient-{i:03d}", *([repr(float(data.target[i]))] if with_label else []),
                *(repr(float(data.data[i, names.index(n)])) for n in numeric), sex[i]]

    rows = [",".join(line(i, True)) for i in labelled]
    bad = []
    if bad_records:
        good = line(int(labelled[0]), True)
        bad = [",".join([f"bad-{tag}", value, *good[2:]]) for tag, value in
               (("wrong_type", "high"), ("nan", "NaN"), ("missing_label", ""))]
    source = cfg.resolve(cfg.dataset.source)
    incoming = LakeLayout.dated(cfg.resolve(cfg.dataset.score_source), score_date)
    lake.write_bytes(f"{source}/patients.csv", ("\n".join([",".join(header), *rows, *bad]) + "\n").encode())
    new = [",".join(line(i, False)) for i in holdout]
    lake.write_bytes(f"{incoming}/patients.csv",
                     ("\n".join([",".join(h for h in header if h != tab.label_column), *new]) + "\n").encode())
    _write_truth(cfg, score_date, [(f"patient-{i:03d}", float(data.target[i])) for i in holdout])
    return {"labelled": len(rows) + len(bad), "holdout": len(new), "bad": len(bad)}


def write_series(cfg: Config, score_date: str, bad_records: bool = False) -> dict[str, int]:
    import statsmodels.api as sm

    seq = cfg.dataset.sequence
    if cfg.dataset.name == "co2":
        data = sm.datasets.co2.load_pandas().data["co2"]
        times = [d.date().isoformat() for d in data.index]
        values = data.to_numpy()
    else:
        data = sm.datasets.sunspots.load_pandas().data
        times = [str(int(y)) for y in data["YEAR"]]
        values = data["SUNACTIVITY"].to_numpy()
    cut = len(values) - seq.horizon
    head = f"{seq.time_column},{seq.target_column}\n"
    body = lambda rows: "".join(f"{times[i]},{'' if np.isnan(values[i]) else repr(float(values[i]))}\n" for i in rows)
    bad = ([f"not-a-time,1.0", f"{times[0]},twelve", f"{times[1]},inf", f"{times[2]},1.0,extra"]
           if bad_records else [])
    source = cfg.resolve(cfg.dataset.source)
    lake.write_bytes(f"{source}/series.csv", (head + body(range(cut)) + "".join(b + "\n" for b in bad)).encode())
    recent = range(max(0, cut - seq.window - 8), cut)
    incoming = LakeLayout.dated(cfg.resolve(cfg.dataset.score_source), score_date)
    lake.write_bytes(f"{incoming}/series.csv", (head + body(recent)).encode())
    _write_truth(cfg, score_date, [(times[i], float(values[i])) for i in range(cut, len(values))])
    log.info("wrote %d rows of %s to %s", cut + len(bad), cfg.dataset.name, source)
    return {"labelled": cut + len(bad), "holdout": len(recent), "bad": len(bad)}


WRITERS = {"breast_cancer": write_breast_cancer, "wine": write_wine, "diabetes": write_diabetes}


def _iso_date(text: str) -> str:
    try:
        return validate_date(text, "--date")
    except InvalidValue as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--date", type=_iso_date, default=date.today().isoformat(),
                   help="partition for the held-out records, YYYY-MM-DD")
    p.add_argument("--bad-records", action="store_true", help="add one record of every kind that must be quarantined")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:  # one line and exit 2, as every job (pipeline/spark/cli.py)
        print(f"sample_data: invalid config: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_CONFIG)
    write = {"images": write_digits, "sequence": write_series}.get(cfg.dataset.kind) or \
        WRITERS.get(cfg.dataset.name, write_breast_cancer)
    counts = write(cfg, args.date, args.bad_records)
    print(f"sample data: {counts['labelled']} labelled, {counts['holdout']} held out for dt={args.date}"
          f" ({counts['bad']} bad records each)")


if __name__ == "__main__":
    main()
