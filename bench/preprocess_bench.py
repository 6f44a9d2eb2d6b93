"""Preprocessing throughput: the Spark job against a single-process loop doing the same work.

    source scripts/env.sh
    python bench/preprocess_bench.py                    # defaults, a few minutes on 2 cores
    python bench/preprocess_bench.py --images 50000 --rows 2000000 --repeats 3
    python bench/preprocess_bench.py --only tabular --conf spark.sql.shuffle.partitions=2
    python bench/preprocess_bench.py --only sources --cores 2 --repeats 2   # readers vs Spark ML (bench_sources)

Data: ``pipeline.samples.synthetic`` writes ``--images`` JPEGs of ``--raw-size`` pixels (the job
resizes them to ``conf/synthetic_images.yaml``'s 32x32x3) and ``--rows`` rows of
``conf/synthetic_tabular.yaml`` (20 numeric, 2 categorical columns) as CSV into a temporary
lake (``--lake`` to choose it).

Spark: ``pipeline.preprocess.run(spark, cfg)`` on a session built by ``pipeline.spark.session.get_spark``
with master ``local[1]``, then on a fresh one with ``local[2]`` (``--cores``). Each session first
does one untimed run on a small data set, so JVM start-up and Python worker start-up are not
counted; then the ``run()`` call is timed ``--repeats`` times and the best is reported. The JVM's
JIT compiler is still busy in the first timed runs (several CPU-seconds per run, falling run over
run); every run is printed, so the cold numbers a one-off ``spark-submit`` pays are visible too. Timed: listing, reading, decoding/validating, the statistics, fitting, the Parquet
writes of the three splits, the manifest and ``_latest``.

Loop: one Python process, pyarrow limited to one thread, doing the same work on the same
files with the job's own code, without Spark. Images: the job's task function
(``pipeline.ingest.image_tasks.write_splits``) over ``files_per_split`` chunks. Tabular: every file read
whole with the job's reader and validated, split, fitted and encoded in memory with the job's
functions (``pipeline.ingest.tabular``); it does not stage records between two passes as the
distributed job must. Both write the same columns to the same number of Parquet files per split,
the quarantine and a manifest. Timed: from listing the files to the written manifest; imports
and one warm-up run are not. Both sides read files that are in the page cache (they were just
written).

Reported per kind: records/s of each, records/s per core for Spark, and the ratio
``(spark_rate / cores) / loop_rate``. "cores" is the ``local[N]`` task slots; the CPU time
actually used (driver, JVM and Python workers together; workers that exit during a run are
not counted) is printed next to it, because ``local[1]`` runs a JVM thread, the JVM's own
threads and a Python worker at once and can use more than one core. The loop's outputs are
checked against the job's manifest (counts per split and class, statistics) so both did the
same work.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.ingest import image_tasks
from pipeline.core import lake, splits
from pipeline import preprocess  # noqa: E402
from pipeline.ingest import tabular  # noqa: E402
from pipeline.kinds import images as images_kind  # noqa: E402
from pipeline.samples import synthetic
from pipeline.core.config import Config, load_config  # noqa: E402
from pipeline.ingest.images import ImageSpec  # noqa: E402
from pipeline.spark.session import get_spark  # noqa: E402
from measure import timed  # noqa: E402  (bench/, first on sys.path)

IMAGES_CONF = str(ROOT / "conf" / "synthetic_images.yaml")
TABULAR_CONF = str(ROOT / "conf" / "synthetic_tabular.yaml")
BATCH = 1024  # the job's spark.sql.execution.arrow.maxRecordsPerBatch (pipeline/session.py)


# --- the single-process loops ---------------------------------------------------------------

def _write_split(table: pa.Table, out_dir: str, files: int) -> None:
    os.makedirs(out_dir, exist_ok=True)
    for k, idx in enumerate(np.array_split(np.arange(table.num_rows), files)):
        pq.write_table(table.take(pa.array(idx)), f"{out_dir}/part-{k:05d}.parquet")


def _split_counts(splits: np.ndarray, labels: np.ndarray) -> dict:
    out = {}
    for s in preprocess.SPLITS:
        mask = splits == s
        names, counts = np.unique(labels[mask], return_counts=True)
        out[s] = {"count": int(mask.sum()), "class_counts": dict(zip(names.tolist(), counts.tolist()))}
    return out


def images_loop(cfg: Config, out_dir: str) -> dict:
    """The job's plan (pipeline.ingest.image_tasks.plan: list, label, split, deal), then the job's task code
    (pipeline.ingest.image_tasks.write_splits: read, decode, write Parquet, count, pixel sums) over
    files_per_split chunks in this one process; statistics and manifest as the job does."""
    spec = ImageSpec.from_conf(cfg.dataset.image)
    plans, names = image_tasks.plan(cfg.resolve(cfg.dataset.source), None, cfg.preprocess.split,
                                     cfg.preprocess.files_per_split)
    names = images_kind.sort_labels(names)
    results = []
    for k, table in enumerate(plans):
        chunk = table.to_pandas()
        batches = (chunk.iloc[i:i + BATCH] for i in range(0, len(chunk), BATCH))
        results += list(image_tasks.write_splits(batches, spec, f"file://{out_dir}", names,
                                                  cfg.preprocess.row_group_mb * 1024 * 1024, part=k))
    res = pd.concat(results, ignore_index=True)
    good = res[res["reason"].isna()]
    train = good[(good["split"] == "train") & good["px_sum"].notna()]
    s = np.sum(np.stack(train["px_sum"].tolist()), axis=0)
    q = np.sum(np.stack(train["px_sumsq"].tolist()), axis=0)
    n_train = int(good.loc[good["split"] == "train", "n"].sum())
    norm = images_kind.moments(list(s), list(q), n_train * spec.height * spec.width)
    split_stats = {sp: {"count": int(good.loc[good["split"] == sp, "n"].sum()),
                   "class_counts": {k: int(v) for k, v in
                                    good[good["split"] == sp].groupby("label_name")["n"].sum().items()}}
              for sp in preprocess.SPLITS}
    result = {"input_count": sum(t.num_rows for t in plans), "output_count": int(good["n"].sum()),
              "quarantined_count": int(res["reason"].notna().sum()), "label_names": names,
              "splits": split_stats, "normalization": norm}
    lake.write_json(f"file://{out_dir}/_manifest.json", result)
    return result


def tabular_loop(cfg: Config, out_dir: str) -> dict:
    """The job's work without Spark and without staging: every file read whole with the job's
    reader, validated, split, fitted and encoded in memory with the job's functions
    (pipeline.ingest.tabular), files_per_split Parquet files per split, the quarantine and a manifest."""
    tab = cfg.dataset.tabular
    files = [u for u, size in lake.list_files(cfg.resolve(cfg.dataset.source)) if size > 0]
    recs = [tabular.validate(*tabular.read_piece((u, 0, -1), tab), tab) for u in files]
    rec = tabular.Records(
        *(np.concatenate([getattr(r, k) for r in recs]) for k in ("ids", "labels")),
        {c: np.concatenate([r.numeric[c] for r in recs]) for c in tab.numeric},
        {c: np.concatenate([r.categorical[c] for r in recs]) for c in tab.categorical},
        *(np.concatenate([getattr(r, k) for r in recs]) for k in ("reason", "detail", "source")))
    ok = rec.good()
    bad = rec.take(np.flatnonzero(~ok))
    os.makedirs(f"{out_dir}/quarantine", exist_ok=True)
    pq.write_table(pa.table({"source": bad.source.astype(str), "reason": bad.reason.astype(str),
                             "stage": ["preprocess.validate"] * len(bad), "detail": bad.detail.astype(str)}),
                   f"{out_dir}/quarantine/part-00000.parquet")
    good = rec.take(np.flatnonzero(ok))
    which = splits.assign(list(good.ids), cfg.preprocess.split)
    params = tabular.merge_fits([tabular.partial_fit(good.take(np.flatnonzero(which == 0)), tab)], tab)
    names = images_kind.sort_labels(sorted(set(good.labels.tolist())))
    index = {name: i for i, name in enumerate(names)}
    for k, split in enumerate(splits.NAMES):
        part = good.take(np.flatnonzero(which == k))
        table = pa.table({"id": pa.array(part.ids, pa.string()),
                          "features": tabular.features_array(tabular.encode(part, tab, params)),
                          "label": pa.array([index[x] for x in part.labels], pa.int32())})
        _write_split(table, f"{out_dir}/{split}", cfg.preprocess.files_per_split)
    by_reason = {str(r): int(n) for r, n in zip(*np.unique(bad.reason.astype(str), return_counts=True))}
    result = {"input_count": len(rec), "output_count": len(good), "quarantined_count": len(bad),
              "quarantined_by_reason": by_reason, "label_names": names,
              "splits": _split_counts(np.asarray(splits.NAMES)[which], good.labels), "tabular": params}
    lake.write_json(f"file://{out_dir}/_manifest.json", result)
    return result


# --- the sources comparison: the job's two readers against Spark ML's feature pipeline ---------

def spark_ml_pipeline(spark, cfg: Config, out_uri: str) -> int:
    """What a Spark user would write instead of the job: Spark's reader, the same hash split,
    Imputer, StandardScaler over the assembled numerics, StringIndexer + OneHotEncoder per
    categorical, VectorAssembler, vector_to_array, Parquet partitioned by split. No validation,
    no quarantine."""
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import Imputer, OneHotEncoder, StandardScaler, StringIndexer, VectorAssembler
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    tab, sp = cfg.dataset.tabular, cfg.preprocess.split
    src = cfg.resolve(cfg.dataset.source)
    if tab.format == "csv":
        ddl = ", ".join([f"{tab.id_column} string", f"{tab.label_column} string",
                         *[f"{c} double" for c in tab.numeric], *[f"{c} string" for c in tab.categorical]])
        df = spark.read.schema(ddl).option("header", "true").csv(src)
    else:
        df = spark.read.format(tab.format).load(src)
    u = F.pmod(F.xxhash64(F.lit(sp.seed), F.col(tab.id_column)), F.lit(1_000_000)) / 1_000_000.0
    df = df.withColumn("split", F.when(u < sp.train, "train").when(u < sp.train + sp.val, "val").otherwise("test"))
    imputed = [f"{c}__imp" for c in tab.numeric]
    idx = [f"{c}__idx" for c in tab.categorical]
    ohe = [f"{c}__ohe" for c in tab.categorical]
    model = Pipeline(stages=[
        Imputer(inputCols=tab.numeric, outputCols=imputed),
        VectorAssembler(inputCols=imputed, outputCol="numeric", handleInvalid="keep"),
        StandardScaler(inputCol="numeric", outputCol="scaled", withMean=True, withStd=True),
        StringIndexer(inputCols=tab.categorical, outputCols=idx, handleInvalid="keep"),
        OneHotEncoder(inputCols=idx, outputCols=ohe, handleInvalid="keep", dropLast=False),
        StringIndexer(inputCol=tab.label_column, outputCol="label_index", handleInvalid="keep"),
        VectorAssembler(inputCols=["scaled", *ohe], outputCol="features"),
    ]).fit(df.where(F.col("split") == "train"))
    (model.transform(df)
     .select(tab.id_column, vector_to_array("features", "float32").alias("features"),
             F.col("label_index").cast("int").alias("label"), "split")
     .write.mode("overwrite").partitionBy("split").parquet(out_uri))
    return spark.read.parquet(out_uri).count()


def bench_sources(lake_dir: str, cores: int, repeats: int, rows: int, confs: dict[str, str]) -> list[str]:
    """On the same rows as CSV and as typed Parquet (pipeline.samples.synthetic, same seed): the job with
    its fast path (the tasks read the files with pyarrow), the job through Spark's reader
    (dataset.tabular.reader=spark: spark.read + mapInArrow into the same validation), and Spark
    ML's standard feature pipeline. One warm session; every variant warmed up once."""
    base = [f"lake.root={lake_dir}", f"spark.master=local[{cores}]"]

    def conf(fmt: str, warm: bool, *more: str) -> Config:
        name = f"src_{fmt}{'_warm' if warm else ''}"
        return load_config(TABULAR_CONF, [*base, f"dataset.name={name}", f"dataset.source=raw/{name}/labelled",
                                          f"dataset.tabular.format={fmt}", *more])
    cfg0 = conf("csv", False)
    cfg0.spark.conf.update(confs)
    spark = get_spark(f"bench:sources:local[{cores}]", cfg0)
    lines = []
    try:
        for fmt in ("csv", "parquet"):
            for warm in (False, True):
                opts = synthetic.Options(rows=5000 if warm else rows, seed=1 if warm else 0, overwrite=True)
                synthetic.run(spark, conf(fmt, warm), opts)
        variants = {
            "job, fast path (pyarrow in tasks)": lambda fmt, warm: preprocess.run(
                spark, conf(fmt, warm))["output_count"],
            "job, Spark reader + mapInArrow": lambda fmt, warm: preprocess.run(
                spark, conf(fmt, warm, "dataset.tabular.reader=spark"))["output_count"],
            "Spark ML feature pipeline": lambda fmt, warm: spark_ml_pipeline(
                spark, conf(fmt, warm), f"file://{lake_dir}/ml_{fmt}"),
        }
        best: dict[tuple[str, str], float] = {}
        for fmt in ("csv", "parquet"):
            for name, fn in variants.items():
                fn(fmt, True)
            runs: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(repeats):  # interleaved, so all variants see the same machine
                for name, fn in variants.items():
                    seconds, _, n = timed(lambda: fn(fmt, False))
                    runs[name].append(round(seconds, 2))
            for name in variants:
                best[(fmt, name)] = min(runs[name])
                print(f"  sources {fmt}: {name}: runs {runs[name]} s", flush=True)
        names = list(variants)
        lines.append(f"sources: {rows} rows, local[{cores}], best of {repeats}; seconds (rows/s)")
        lines.append(f"  {'':<36}{'CSV':>20}{'typed Parquet':>20}")
        for name in names:
            lines.append(f"  {name:<36}" + "".join(f"{best[(f, name)]:>9.2f} ({rows / best[(f, name)]:>7.0f})"
                                                  for f in ("csv", "parquet")))
        fast, reader, ml = names
        for label, a, b in [("Spark reader path vs Spark ML pipeline (target >= 2)", ml, reader),
                            ("Spark reader path vs fast path", fast, reader),
                            ("Spark ML pipeline vs fast path", fast, ml)]:
            lines.append(f"  {label:<54}" + "".join(f"{f}: {best[(f, a)] / best[(f, b)]:.2f}x   "
                                                     for f in ("csv", "parquet")))
    finally:
        spark.stop()
    return lines


# --- measuring --------------------------------------------------------------------------------

def _matches(kind: str, job: dict, loop: dict) -> list[str]:
    """Differences between the job's manifest and the loop's result ([] = the same work was done)."""
    diffs = []
    for k in ("input_count", "output_count", "quarantined_count", "label_names"):
        if job[k] != loop[k]:
            diffs.append(f"{k}: job {job[k]} loop {loop[k]}")
    for s in preprocess.SPLITS:
        if job["splits"][s]["count"] != loop["splits"][s]["count"]:
            diffs.append(f"{s} count: job {job['splits'][s]['count']} loop {loop['splits'][s]['count']}")
        jc = {k: v for k, v in job["splits"][s]["class_counts"].items() if v}
        if jc != loop["splits"][s]["class_counts"]:
            diffs.append(f"{s} class counts differ")
    if kind == "images":
        for k in ("mean", "std"):
            if not np.allclose(job["normalization"][k], loop["normalization"][k], rtol=1e-6):
                diffs.append(f"normalization {k}: job {job['normalization'][k]} loop {loop['normalization'][k]}")
    else:
        if job["tabular"]["categorical"] != loop["tabular"]["categorical"]:
            diffs.append("category vocabularies differ")
        for c, p in job["tabular"]["numeric"].items():
            q = loop["tabular"]["numeric"][c]
            if not (math.isclose(p["mean"], q["mean"], rel_tol=1e-6, abs_tol=1e-9)
                    and math.isclose(p["std"], q["std"], rel_tol=1e-6)):
                diffs.append(f"{c} standardisation differs")
    return diffs


def generate(lake_root: str, args) -> dict[str, Config]:
    """The benchmark data and the small warm-up sets, written by pipeline.samples.synthetic on local[2]."""
    base = [f"lake.root={lake_root}", "spark.master=local[2]"]
    cfgs = {
        "images": load_config(IMAGES_CONF, base),
        "tabular": load_config(TABULAR_CONF, base),
        "images_warmup": load_config(IMAGES_CONF, [*base, "dataset.name=warmup_images",
                                                   "dataset.source=raw/warmup_images/labelled"]),
        "tabular_warmup": load_config(TABULAR_CONF, [*base, "dataset.name=warmup_tabular",
                                                     "dataset.source=raw/warmup_tabular/labelled"]),
    }
    size = (args.raw_size, args.raw_size)
    opts = {
        "images": synthetic.Options(rows=args.images, image_format="jpeg", image_size=size, overwrite=True),
        "images_warmup": synthetic.Options(rows=300, image_format="jpeg", image_size=size, seed=1, overwrite=True),
        "tabular": synthetic.Options(rows=args.rows, overwrite=True),
        "tabular_warmup": synthetic.Options(rows=5000, seed=1, overwrite=True),
    }
    wanted = [k for k in cfgs if k.split("_")[0] in args.only]
    cfgs["images"].spark.conf["spark.ui.showConsoleProgress"] = "false"
    spark = get_spark("bench:generate", cfgs["images"])
    try:
        for k in wanted:
            t0 = time.perf_counter()
            s = synthetic.run(spark, cfgs[k], opts[k])
            if not k.endswith("warmup"):
                mb = sum(p.stat().st_size for p in Path(lake.local_path(s["uri"])).rglob("*") if p.is_file()) / 1e6
                print(f"  generated {k}: {s['rows']} records, {mb:.1f} MB in {time.perf_counter() - t0:.1f} s "
                      f"(pipeline.samples.synthetic on local[2])", flush=True)
    finally:
        spark.stop()
    return {k: v for k, v in cfgs.items() if k in wanted}


def bench_kind(kind: str, cfgs: dict, out_root: str, cores: list[int], repeats: int,
               confs: dict[str, str]) -> tuple[dict, dict[int, dict]]:
    """Per core count: a fresh session and an untimed warm-up run, then loop and job runs alternately,
    so both see the same (shared, noisy) machine."""
    fn = images_loop if kind == "images" else tabular_loop
    out = f"{out_root}/loop_{kind}"

    def loop(c):
        shutil.rmtree(out, ignore_errors=True)
        return fn(cfgs[c], out)

    loop(f"{kind}_warmup")  # imports, PIL/pyarrow initialisation
    path, root = IMAGES_CONF if kind == "images" else TABULAR_CONF, f"lake.root={cfgs[kind].lake.root}"
    loop_runs, spark_runs = [], {}
    for c in cores:
        cfg = load_config(path, [root, f"spark.master=local[{c}]"])
        warm = load_config(path, [root, f"spark.master=local[{c}]",
                                  f"dataset.name={cfgs[kind + '_warmup'].dataset.name}",
                                  f"dataset.source={cfgs[kind + '_warmup'].dataset.source}"])
        # Set directly: --set splits keys at every dot, so it cannot name a Spark conf key.
        cfg.spark.conf.update(confs)
        spark = get_spark(f"bench:{kind}:local[{c}]", cfg)
        runs = []
        try:
            if spark.sparkContext.master != f"local[{c}]":
                raise RuntimeError(f"session master is {spark.sparkContext.master}, expected local[{c}]")
            preprocess.run(spark, warm)
            for _ in range(repeats):
                loop_runs.append(timed(lambda: loop(kind)))
                runs.append(timed(lambda: preprocess.run(spark, cfg)))
        finally:
            spark.stop()
        spark_runs[c] = _summarise(runs)
        print(f"  {kind}: spark local[{c}] runs {spark_runs[c]['all_seconds']} s, "
              f"loop runs {[round(r[0], 2) for r in loop_runs[-repeats:]]} s", flush=True)
    return _summarise(loop_runs), spark_runs


def _summarise(runs):
    best = min(runs, key=lambda r: r[0])
    return {"seconds": best[0], "cpu_seconds": best[1], "result": best[2],
            "all_seconds": [round(r[0], 2) for r in runs]}


def report(kind: str, n: int, loop: dict, spark_runs: dict[int, dict]) -> list[str]:
    unit = "images" if kind == "images" else "rows"
    loop_rate = n / loop["seconds"]
    head = (f"  {'':<22}{'seconds':>9}{unit + '/s':>12}{unit + '/s/core':>15}{'ratio/core':>12}"
            f"{'CPU s':>8}{'cores busy':>12}{'ratio by CPU':>14}   runs (s)")
    lines = [f"{kind}: {n} {unit}", head,
             f"  {'python loop (1 proc)':<22}{loop['seconds']:9.2f}{loop_rate:12.0f}{loop_rate:15.0f}{'1.00':>12}"
             f"{loop['cpu_seconds']:8.1f}{loop['cpu_seconds'] / loop['seconds']:12.2f}{'1.00':>14}   {loop['all_seconds']}"]
    for cores, r in spark_runs.items():
        rate = n / r["seconds"]
        lines.append(f"  {f'spark local[{cores}]':<22}{r['seconds']:9.2f}{rate:12.0f}{rate / cores:15.0f}"
                     f"{rate / cores / loop_rate:12.2f}{r['cpu_seconds']:8.1f}{r['cpu_seconds'] / r['seconds']:12.2f}"
                     f"{loop['cpu_seconds'] / r['cpu_seconds']:14.2f}   {r['all_seconds']}")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=10_000, help="number of JPEG files")
    p.add_argument("--raw-size", type=int, default=64, help="side of the raw JPEGs (the job resizes to 32x32)")
    p.add_argument("--rows", type=int, default=300_000, help="tabular rows")
    p.add_argument("--cores", default="1,2", help="local[N] masters to measure, comma-separated")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed runs per measurement; the best is reported (the JVM is still JIT-compiling "
                        "Spark's code paths in the first runs after the warm-up; all runs are printed)")
    p.add_argument("--only", choices=["images", "tabular", "sources"], nargs="+", default=["images", "tabular"],
                   help="sources: the job's fast path and Spark-reader path against Spark ML's feature pipeline, "
                        "on CSV and typed Parquet, at local[max --cores]")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                   help="extra Spark conf for the measured sessions (reported in the output)")
    p.add_argument("--lake", help="directory for the data (default: a new temporary directory, removed after)")
    p.add_argument("--keep", action="store_true", help="keep the temporary lake")
    args = p.parse_args(argv)

    lake_dir = args.lake or tempfile.mkdtemp(prefix="preprocess-bench-")
    confs = dict(c.split("=", 1) for c in args.conf)
    cores = [int(c) for c in args.cores.split(",")]
    print(f"preprocess benchmark: {os.cpu_count()} CPUs visible, load average {os.getloadavg()[0]:.1f}; "
          f"lake {lake_dir}", flush=True)
    print(f"spark confs: pipeline/session.py's + {confs or 'nothing else'}", flush=True)
    confs["spark.ui.showConsoleProgress"] = "false"  # cosmetic
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    lines, mismatches = [], []
    try:
        if "sources" in args.only:
            lines += bench_sources(lake_dir, max(cores), args.repeats, args.rows, confs)
        cfgs = generate(lake_dir, args) if set(args.only) - {"sources"} else {}
        for kind in [k for k in args.only if k != "sources"]:
            n = args.images if kind == "images" else args.rows
            loop, spark_runs = bench_kind(kind, cfgs, lake_dir, cores, args.repeats, confs)
            for c, r in spark_runs.items():
                diffs = _matches(kind, r["result"], loop["result"])
                if diffs:
                    mismatches.append(f"{kind} local[{c}]: {diffs}")
            lines += report(kind, n, loop, spark_runs)
    finally:
        if not args.lake and not args.keep:
            shutil.rmtree(lake_dir, ignore_errors=True)
    print()
    print("\n".join(lines))
    if not set(args.only) - {"sources"}:
        return 0
    print(f"ratio/core = (spark rows/s / local[N] cores) / loop rows/s; target >= 0.7. "
          f"Best of {args.repeats} timed runs each; load average now {os.getloadavg()[0]:.1f}.")
    print("Timed: Spark: the preprocess.run() call on a warm session (listing, read, decode/validate, stats, "
          "fit, 3 split writes, manifest). Loop: listing to manifest. Not timed: data generation, JVM and "
          "session start-up, Python worker start-up, imports, the warm-up runs.")
    print("CPU s = CPU time of driver + JVM + Python workers (or of the loop's process); cores busy = CPU s / seconds; "
          "ratio by CPU = loop CPU s / job CPU s (records per CPU-second relative to the loop; less sensitive "
          "to other load on a shared machine than the wall-clock ratio).")
    if mismatches:
        print("OUTPUTS DIFFER between the job and the loop:\n  " + "\n  ".join(mismatches))
        return 1
    print("outputs checked: the loop's counts per split and class, and its statistics, equal the job's manifest.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
