"""Scoring throughput and worker memory: the Spark job against a single-process loop doing the same work.

    source scripts/env.sh
    python bench/score_bench.py                          # defaults, ~2 min on 2 cores
    python bench/score_bench.py --conf spark.sql.files.openCostInBytes=4194304   # Spark's default: ~11 min
    python bench/score_bench.py --data synthetic --rows 5000     # 64x64 JPEGs, a heavier model input
    python bench/score_bench.py --rows 20000 --repeats 3 --conf KEY=VALUE

Lake (a temporary directory, ``--lake`` to choose it). ``--data digits`` (default):
``pipeline.samples.sample_data.write_digits`` writes the bundled digits (8x8 PNGs of about 120 bytes,
so Spark's cost per file dominates). ``--data synthetic``: ``pipeline.samples.synthetic`` writes 4,000
labelled and 500 held-out 64x64 RGB JPEGs for ``conf/synthetic_images.yaml`` (scored at 32x32x3,
more work per file, as with real images). ``pipeline.preprocess.run`` curates them (local[2]) and
``pipeline.train.run_local`` trains the config's CNN in this process with ``train.epochs=2``.
The held-out files are then copied under new names into three scoring partitions:
``--warmup-rows`` files (warm-up), ``--rows`` files (1x) and ``--scale`` times as many (10x by
default).

Spark: ``pipeline.score.run(spark, cfg, date)`` on a session built by ``pipeline.spark.session.get_spark``
(plus any ``--conf``) with master ``local[1]``, then on a fresh one with ``local[2]`` (``--cores``).
Each session first scores the small warm-up partition untimed (Python worker start-up, the per-worker model load),
then the 1x partition untimed: 40k rows' worth in the first session, once in the others (the
JVM's per-row cost settles only after some 30-50k rows, and the sessions share one JVM, so
without this the session measured last would look better). Then the ``run()`` call on the 1x partition is timed
``--repeats`` times and the best is reported (a run over 60 s is not repeated; one over
``--timeout-s`` is cancelled and reported as a bound). Timed: listing, reading the files, decoding, the
model, the count by reason, the Parquet write, the manifest and the partition swap. On the last
session the 10x partition is scored once, for memory (its rate is printed too).

Loop: one Python process, torch and pyarrow limited to one thread, scoring the same files with
the same model artifact and the same code where the job has Python code: read the bytes,
``pipeline.ingest.images.decode_image`` with the artifact's image parameters,
``LoadedModel.predict_proba`` in batches of ``score.batch_size``, then one Parquet file with the
job's output columns and a manifest, written with pyarrow. Timed: from listing the files to the
written manifest; the model load and one warm-up run are not. Loop and job runs alternate, so
both see the same (shared, noisy) machine. Both read files that are in the page cache.

Reported: rows/s of each, Spark rows/s per ``local[N]`` core and the ratio
``(spark_rate / cores) / loop_rate`` (target >= 0.7), and the CPU time actually used (driver,
JVM and Python workers together). The loop's predictions are checked against the job's output.
Results and their analysis: docs/scoring-performance.md.

Memory: while every Spark run is in flight a thread polls, every ``--poll-ms`` ms, the RSS of
this driver process and of its descendants: the Spark JVM, the ``pyspark.daemon`` it starts,
and the Python workers forked from that daemon (or started as ``pyspark.worker``). Other
processes on the machine (other Spark applications included) are not counted. Reported: the
peak RSS of the largest single worker, the peak of the workers' sum, the daemon's, the JVM's and
the driver's, for the 1x and the 10x input, and their ratios. RSS counts pages a worker still
shares with the daemon it was forked from, so the worker figures are upper bounds.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.model import artifact
from pipeline.core import lake
from pipeline.core.layout import LakeLayout
from pipeline import preprocess, score, train  # noqa: E402
from pipeline.samples import sample_data, synthetic
from pipeline.core.config import Config, load_config  # noqa: E402
from pipeline.ingest.images import ImageSpec, Rejected, decode_image  # noqa: E402
from pipeline.spark.session import get_spark  # noqa: E402
from measure import MemoryPoller, cpu_seconds, timed  # noqa: E402  (bench/, first on sys.path)

# --data: the config, and what each scored file is. digits: the bundled 8x8 PNGs (about 120
# bytes each, so Spark's cost per file dominates); synthetic: 64x64 RGB JPEGs the job resizes
# to 32x32x3, closer to the work per file of real images.
DATA = {"digits": (str(ROOT / "conf" / "digits.yaml"), "8x8 PNG"),
        "synthetic": (str(ROOT / "conf" / "synthetic_images.yaml"), "64x64 JPEG -> 32x32x3")}
SETUP_DATE, WARM_DATE, DATE_1X, DATE_NX = "2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"
MB = 1024 * 1024


# --- the lake ----------------------------------------------------------------------------------

def build_lake(lake_dir: str, args) -> tuple[Config, dict[str, int]]:
    """Sample data, curated Parquet, a trained model, and the scoring partitions."""
    cfg = load_config(args.conf_path, [f"lake.root={lake_dir}", "spark.master=local[2]", "train.epochs=2"])
    cfg.spark.conf.update(args.confs)
    t0 = time.perf_counter()
    spark = get_spark("bench:setup", cfg)
    try:
        if args.data == "digits":
            sample_data.write_digits(cfg, SETUP_DATE)
        else:
            raw = dict(image_format="jpeg", image_size=(64, 64))
            synthetic.run(spark, cfg, synthetic.Options(rows=4000, **raw))
            synthetic.run(spark, cfg, synthetic.Options(rows=500, seed=1, score_date=SETUP_DATE, **raw))
        preprocess.run(spark, cfg)
    finally:
        spark.stop()
    metrics = train.run_local(cfg).metrics
    one_torch_thread()
    print(f"  lake: {args.data} written, preprocessed, CNN trained for 2 epochs in-process "
          f"(test accuracy {metrics['test_accuracy']:.3f}) in {time.perf_counter() - t0:.1f} s", flush=True)

    incoming = cfg.resolve(cfg.dataset.score_source)
    held = sorted(p for p in Path(lake.local_path(LakeLayout.dated(incoming, SETUP_DATE))).iterdir()
                  if p.suffix in (".png", ".jpg"))
    contents = [(p.read_bytes(), p.suffix) for p in held]
    t0 = time.perf_counter()
    sizes = {WARM_DATE: args.warmup_rows, DATE_1X: args.rows, DATE_NX: args.rows * args.scale}
    for date, n in sizes.items():
        replicate(contents, lake.local_path(LakeLayout.dated(incoming, date)), n)
    print(f"  inputs: {len(held)} held-out files copied under new names into dt={WARM_DATE} "
          f"({args.warmup_rows}), dt={DATE_1X} ({args.rows}) and dt={DATE_NX} ({args.rows * args.scale}) "
          f"in {time.perf_counter() - t0:.1f} s", flush=True)
    return cfg, sizes


def one_torch_thread() -> None:
    """The loop runs on one core, like a Spark task (Spark gives Python workers OMP_NUM_THREADS=1);
    train_rank left torch at one thread per core."""
    import torch

    torch.set_num_threads(1)


def replicate(contents: list[tuple[bytes, str]], out_dir: str, n: int) -> None:
    shutil.rmtree(out_dir, ignore_errors=True)  # a reused --lake must not keep files of a larger run
    os.makedirs(out_dir)
    for i in range(n):
        data, suffix = contents[i % len(contents)]
        with open(os.path.join(out_dir, f"{i:07d}{suffix}"), "wb") as f:
            f.write(data)


# --- the single-process loop -------------------------------------------------------------------

def loop_score(cfg: Config, m: artifact.LoadedModel, date: str, out_dir: str) -> dict:
    """What score.run does for images, in one process: list, read, decode, predict, write, manifest."""
    img = m.spec["input"]["image"]
    spec = ImageSpec.from_dict(img)
    batch = cfg.score.batch_size
    names = np.asarray(m.label_names, dtype=object)
    source = lake.local_path(LakeLayout.dated(cfg.resolve(cfg.dataset.score_source), date))
    paths = sorted(os.path.join(source, f) for f in os.listdir(source) if not f.startswith((".", "_")))
    ok_paths, probs, bad = [], [], {}
    for start in range(0, len(paths), batch):
        arrays = []
        for p in paths[start:start + batch]:
            with open(p, "rb") as f:
                data = f.read()
            try:
                arrays.append(decode_image(data, spec))
                ok_paths.append(p)
            except Rejected as r:
                bad[r.reason] = bad.get(r.reason, 0) + 1
        if arrays:
            probs.append(m.predict_proba(np.stack(arrays).transpose(0, 3, 1, 2), batch))
    p = np.concatenate(probs) if probs else np.zeros((0, len(names)), np.float32)
    top = p.argmax(1).astype(np.int32)
    n, k = p.shape
    scored_at = datetime.now(timezone.utc)
    table = pa.table({
        "path": pa.array(["file:" + q for q in ok_paths], pa.string()),
        "prediction": pa.array(names[top].tolist(), pa.string()),
        "label_index": pa.array(top),
        "probability": pa.array(p[np.arange(n), top]),
        "probabilities": pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32)),
                                                  pa.array(p.ravel())),
        "model_name": pa.array([m.name] * n, pa.string()),
        "run_id": pa.array([m.run_id] * n, pa.string()),
        "dataset_version": pa.array([m.spec["dataset"]["version"]] * n, pa.string()),
        "scored_at": pa.array([scored_at] * n, pa.timestamp("us", tz="UTC")),
    })
    os.makedirs(out_dir, exist_ok=True)
    pq.write_table(table, os.path.join(out_dir, "part-00000.parquet"))
    result = {"input_count": len(paths), "output_count": n, "quarantined_by_reason": bad}
    lake.write_json(f"file://{out_dir}/_manifest.json", result)
    return {**result, "predictions": dict(zip(table["path"].to_pylist(), top.tolist())),
            "probability": dict(zip(table["path"].to_pylist(), table["probability"].to_pylist()))}


def check_same(cfg: Config, date: str, loop: dict) -> list[str]:
    """Differences between the job's partition for ``date`` and the loop's result ([] = same)."""
    t = pq.read_table(lake.local_path(LakeLayout.of(cfg).predictions_partition(cfg.train.model_name, date)))
    job = dict(zip(t["path"].to_pylist(), t["label_index"].to_pylist()))
    prob = dict(zip(t["path"].to_pylist(), t["probability"].to_pylist()))
    diffs = []
    if job.keys() != loop["predictions"].keys():
        diffs.append(f"paths differ: job {len(job)}, loop {len(loop['predictions'])}")
    else:
        wrong = [p for p in job if job[p] != loop["predictions"][p]
                 or abs(prob[p] - loop["probability"][p]) > 1e-5]
        if wrong:
            diffs.append(f"{len(wrong)} predictions differ, e.g. {wrong[0]}")
    return diffs


# --- measuring ---------------------------------------------------------------------------------

def _timed_job(spark, fn, timeout_s: float):
    """timed, but the Spark jobs are cancelled after timeout_s; then the result is None."""
    timer = threading.Timer(timeout_s, spark.sparkContext.cancelAllJobs)
    timer.start()
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    try:
        out = fn()
    except Exception:
        if timer.is_alive():
            raise  # a real failure, not our cancel
        out = None
    finally:
        timer.cancel()
    return time.perf_counter() - t0, cpu_seconds() - cpu0, out


SLOW_S = 60  # a Spark run this long is not repeated: noise matters little at that length


JVM_WARM_ROWS = 40_000  # rows the JVM needs before its per-row cost settles (measured, see warm_up_jvm)


def warm_up_jvm(spark, run_cfg: Config, runs: int, timeout_s: float, label: str) -> None:
    """Score the 1x input ``runs`` times, untimed.

    The JVM keeps getting cheaper per row for some 30-50k rows (JIT compilation, heap sizing):
    measured JVM CPU per 10k rows in a fresh JVM 4.6, 4.0, 3.5 s, then 1.9-2.5 s in the sessions
    after. Sessions share one JVM, so without this the session measured last would look better.
    A run slower than SLOW_S ends the warm-up: the JVM's warm-up is noise at that length.
    """
    times: list[float] = []
    for _ in range(runs):
        secs, _, mf = _timed_job(spark, lambda: score.run(spark, run_cfg, DATE_1X), timeout_s)
        times.append(secs)
        if mf is None or secs > SLOW_S:
            break
    print(f"  {label} JVM warm-up on the 1x input (untimed): {[round(t, 2) for t in times]} s", flush=True)


def bench(cfg: Config, sizes: dict[str, int], args, lake_dir: str) -> dict:
    """Per core count: a fresh session and an untimed warm-up run, then loop and job runs alternately."""
    m = artifact.load_model(cfg.lake.root, cfg.score.model, device="cpu")
    out = os.path.join(lake_dir, "loop_out")

    def loop(date):
        shutil.rmtree(out, ignore_errors=True)
        return loop_score(cfg, m, date, out)

    loop(WARM_DATE)  # imports, PIL and torch initialisation
    poller = MemoryPoller(args.poll_ms / 1000.0)
    n, big_n = sizes[DATE_1X], sizes[DATE_NX]
    loop_runs, spark_runs, memory, mismatches, big = [], {}, {}, [], None

    def scored(spark, run_cfg, date, expected, label):
        with poller:
            r = _timed_job(spark, lambda: score.run(spark, run_cfg, date), args.timeout_s)
        mf = r[2]
        peak = poller.peaks()["worker_mb"]
        if mf is None:
            print(f"  {label}: spark CANCELLED after {r[0]:.0f} s (--timeout-s): < {expected / r[0]:.0f} rows/s "
                  f"(peak worker RSS {peak:.0f} MB)", flush=True)
            return r
        # A model load in a timed run means a worker was replaced (e.g. idle timeout): it is shown.
        print(f"  {label}: spark {r[0]:.2f} s = {expected / r[0]:.0f} rows/s "
              f"(model loads {mf.manifest['model_loads']}, peak worker RSS {peak:.0f} MB)", flush=True)
        if mf.output_count != expected:
            mismatches.append(f"{label}: output_count {mf.output_count} of {expected}")
        return r

    for c in args.cores:
        run_cfg = load_config(args.conf_path, [f"lake.root={cfg.lake.root}", f"spark.master=local[{c}]"])
        run_cfg.spark.conf.update(args.confs)
        spark = get_spark(f"bench:score:local[{c}]", run_cfg)
        runs = []
        try:
            if spark.sparkContext.master != f"local[{c}]":
                raise RuntimeError(f"session master is {spark.sparkContext.master}, expected local[{c}]")
            t0 = time.perf_counter()
            score.run(spark, run_cfg, WARM_DATE)
            print(f"  local[{c}] warm-up ({sizes[WARM_DATE]} rows, untimed): {time.perf_counter() - t0:.1f} s", flush=True)
            first = c == args.cores[0]
            warm_up_jvm(spark, run_cfg, -(-JVM_WARM_ROWS // n) if first else 1, args.timeout_s, f"local[{c}]")
            for i in range(args.repeats):
                loop_runs.append(timed(lambda: loop(DATE_1X)))
                print(f"  local[{c}] 1x run {i + 1}: loop {loop_runs[-1][0]:.2f} s = {n / loop_runs[-1][0]:.0f} rows/s",
                      flush=True)
                runs.append(scored(spark, run_cfg, DATE_1X, n, f"local[{c}] 1x run {i + 1}"))
                memory.setdefault((c, "1x"), []).append(poller.peaks())
                if runs[-1][2] is None or runs[-1][0] > SLOW_S:
                    break
            if runs[-1][2] is not None:
                diffs = check_same(run_cfg, DATE_1X, loop_runs[-1][2])
                if diffs:
                    mismatches.append(f"local[{c}]: {diffs}")
            if c == args.cores[-1] and args.scale > 1:
                big = scored(spark, run_cfg, DATE_NX, big_n, f"local[{c}] {args.scale}x")
                memory[(c, f"{args.scale}x")] = [poller.peaks()]
        finally:
            spark.stop()
        spark_runs[c] = _summarise(runs)
    return {"loop": _summarise(loop_runs), "spark": spark_runs, "memory": memory, "big": big,
            "mismatches": mismatches}


def _summarise(runs):
    done = [r for r in runs if r[2] is not None]
    best = min(done or runs, key=lambda r: r[0])
    return {"seconds": best[0], "cpu_seconds": best[1], "result": best[2], "cancelled": not done,
            "all_seconds": [round(r[0], 2) if r[2] is not None else f">{r[0]:.0f}" for r in runs]}


def _peak(runs: list[dict]) -> dict:
    return {k: max(r[k] for r in runs) for k in runs[0]}


def _row(label: str, secs: float, rows: int, cores: int, loop_rate: float, cpu: float, cancelled: bool,
         runs: str) -> str:
    """A cancelled run shows bounds (time >, rates <) and no CPU figures (its workers were killed)."""
    rate = rows / secs
    gt, lt = (">", "<") if cancelled else ("", "")
    cpu_cols = f"{'n/a':>8}{'n/a':>12}{'n/a':>12}" if cancelled else \
        f"{cpu:8.1f}{cpu / secs:12.2f}{cpu / rows * 1000:12.3f}"
    return (f"  {label:<24}{gt + f'{secs:.2f}':>9}{lt + f'{rate:.0f}':>10}{lt + f'{rate / cores:.0f}':>13}"
            f"{lt + f'{rate / cores / loop_rate:.2f}':>12}{cpu_cols}   {runs}")


def report(n: int, res: dict, args) -> list[str]:
    loop = res["loop"]
    loop_rate = n / loop["seconds"]
    lines = [f"throughput: {n} images ({DATA[args.data][1]}), score.batch_size={args.batch_size}",
             f"  {'':<24}{'seconds':>9}{'rows/s':>10}{'rows/s/core':>13}{'ratio/core':>12}"
             f"{'CPU s':>8}{'cores busy':>12}{'CPU ms/row':>12}   runs (s)",
             _row("python loop (1 proc)", loop["seconds"], n, 1, loop_rate, loop["cpu_seconds"], False,
                  str(loop["all_seconds"]))]
    for cores, r in res["spark"].items():
        lines.append(_row(f"spark local[{cores}]", r["seconds"], n, cores, loop_rate, r["cpu_seconds"],
                          r["cancelled"], str(r["all_seconds"])))
    c, big_n = args.cores[-1], n * args.scale
    if res["big"]:
        secs, cpu, mf = res["big"]
        lines.append(_row(f"spark local[{c}] {args.scale}x", secs, big_n, c, loop_rate, cpu, mf is None,
                          f"(one run, {big_n} images)"))
        small = res["spark"][c]
        if mf is not None and not small["cancelled"] and secs > small["seconds"]:
            marginal = (big_n - n) / (secs - small["seconds"])
            fixed = small["seconds"] - n / marginal
            tail = (f"plus {fixed:.1f} s per run that does not grow with the input" if fixed >= 0 else
                    "fixed cost per run not measurable (the 10x run was slower per row: noise)")
            lines.append(f"  local[{c}] from the 1x and {args.scale}x runs: {marginal:.0f} rows/s per extra row "
                         f"({marginal / c / loop_rate:.2f} per core of the loop's rate), {tail}")
    lines += ["", "peak RSS while scoring, MB (max over the runs of each row; growth = driver peak - driver at start)",
              f"  {'':<24}{'per worker':>11}{'workers':>9}{'sum':>8}{'daemon':>8}{'JVM':>8}{'driver':>8}"
              f"{'(growth)':>10}{'samples':>9}{'poller CPU s':>14}"]
    for (cores, size), runs in res["memory"].items():
        p = _peak(runs)
        label = f"local[{cores}] {size} ({n if size == '1x' else big_n})"
        lines.append(f"  {label:<24}{p['worker_mb']:11.0f}{p['workers']:9d}{p['worker_sum_mb']:8.0f}{p['daemon_mb']:8.0f}"
                     f"{p['jvm_mb']:8.0f}{p['driver_mb']:8.0f}{p['driver_growth_mb']:+10.0f}{p['samples']:9d}"
                     f"{p['poller_cpu_s']:14.2f}")
    if args.scale > 1 and (c, f"{args.scale}x") in res["memory"]:
        a, b = _peak(res["memory"][(c, "1x")]), _peak(res["memory"][(c, f"{args.scale}x")])
        partial = " (the large run was cancelled: over part of its input)" if res["big"][2] is None else ""
        lines.append(f"  {args.scale}x / 1x at local[{c}]: per worker {b['worker_mb'] / a['worker_mb']:.2f}, "
                     f"workers' sum {b['worker_sum_mb'] / a['worker_sum_mb']:.2f}, JVM {b['jvm_mb'] / a['jvm_mb']:.2f}, "
                     f"driver {b['driver_mb'] / a['driver_mb']:.2f}{partial}")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=sorted(DATA), default="digits",
                   help="digits: the bundled 8x8 PNGs; synthetic: 64x64 JPEGs scored at 32x32x3")
    p.add_argument("--rows", type=int, default=10_000, help="images in the 1x scoring input")
    p.add_argument("--scale", type=int, default=10, help="the large input is this many times --rows")
    p.add_argument("--warmup-rows", type=int, default=512, help="images in the untimed warm-up input")
    p.add_argument("--cores", default="1,2", help="local[N] masters to measure, comma-separated")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per measurement; the best is reported")
    p.add_argument("--poll-ms", type=float, default=50, help="RSS sampling interval")
    p.add_argument("--timeout-s", type=float, default=180,
                   help="cancel a Spark run after this long and report a bound instead of a rate")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                   help="extra Spark conf for every session (reported in the output)")
    p.add_argument("--lake", help="directory for the data (default: a new temporary directory, removed after)")
    p.add_argument("--keep", action="store_true", help="keep the temporary lake")
    args = p.parse_args(argv)
    if min(args.rows, args.scale, args.warmup_rows, args.repeats) < 1:
        p.error("--rows, --scale, --warmup-rows and --repeats must be >= 1")
    args.cores = [int(c) for c in args.cores.split(",")]
    args.confs = {"spark.ui.showConsoleProgress": "false", **dict(c.split("=", 1) for c in args.conf)}
    args.conf_path = DATA[args.data][0]
    args.batch_size = load_config(args.conf_path).score.batch_size

    lake_dir = os.path.abspath(args.lake) if args.lake else tempfile.mkdtemp(prefix="score-bench-")
    print(f"score benchmark: {os.cpu_count()} CPUs visible, load average {os.getloadavg()[0]:.1f}; "
          f"lake {lake_dir}", flush=True)
    print(f"spark confs: pipeline/session.py's + {args.confs}", flush=True)
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    try:
        cfg, sizes = build_lake(lake_dir, args)
        res = bench(cfg, sizes, args, lake_dir)
    finally:
        if not args.lake and not args.keep:
            shutil.rmtree(lake_dir, ignore_errors=True)
    print()
    print("\n".join(report(args.rows, res, args)))
    print(f"ratio/core = (spark rows/s / local[N] cores) / loop rows/s; target >= 0.7. "
          f"Best of up to {args.repeats} timed runs each; load average now {os.getloadavg()[0]:.1f}.")
    print("Timed: Spark: the score.run() call on a warm session with the model already loaded in each worker "
          "(listing, reading, decoding, model, count by reason, Parquet write, manifest, swap). Loop: listing "
          "to manifest. Not timed: building the lake, JVM/session start-up, Python worker start-up, model "
          "loads, imports, the warm-up runs.")
    print("CPU s = CPU time of driver + JVM + Python workers (or of the loop's process); cores busy = CPU s / seconds; "
          "on a shared machine CPU ms/row is the steadier comparison.")
    if res["mismatches"]:
        print("OUTPUTS DIFFER between the job and the loop:\n  " + "\n  ".join(res["mismatches"]))
        return 1
    print("outputs checked: every path has the same prediction and probability in the job's partition "
          "and the loop's output.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
