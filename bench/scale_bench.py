"""Scale curve: preprocess -> train (1 epoch) -> score at 1x, 4x and 16x of a base size.

    source scripts/env.sh
    nice -n 5 python bench/scale_bench.py                                  # full: 2.5k-40k photos, 0.5M-8M rows
    nice -n 5 python bench/scale_bench.py --photos 250 --rows 50000        # a short version, minutes
    nice -n 5 python bench/scale_bench.py --only images --photos 1500 --factors 1 --resnet   # ResNet-18 at 224 px

Data: ``pipeline.samples.synthetic`` writes ``--photos`` x factor JPEG photos (``--style photos``:
256-512 px per side, resized by preprocess to 224x224x3 with ``conf/synthetic_photos.yaml``)
and ``--rows`` x factor rows of ``conf/synthetic_tabular.yaml`` (CSV), each into its own
temporary lake under ``--dir``, plus a held-out set of ``--score-fraction`` of that size for
scoring. Generation is not timed.

Timed, one after the other on one warm ``local[2]`` session (``--master``): ``preprocess.run``,
``train.run`` (Horovod or DDP ranks on the executors, ``--num-proc`` ranks, 1 epoch; photos
train ``strided_cnn``, about 0.1 GFLOP per 224 px image, so the curve stays within reach of 2
CPU cores; tables train the ``mlp`` with batches of ``--tabular-batch`` rows) and
``score.run`` on the held-out set. MLflow tracking is off (its cost does not scale with the data).

Reported per size: wall seconds (per stage and in all), core-seconds (CPU time of this process
and all its descendants: the JVM, the Python workers, the ranks), and the peak RSS of the driver
(this Python process; its growth over the run), of the JVM (in local mode it holds the driver's
and the executors' heaps) and of the largest single Python worker or rank, sampled every
``--poll-ms`` ms; then each as a ratio to the 1x run. Linear time means the time ratio equals
the factor (``time/x`` = 1.0); flat memory means a memory ratio near 1.0.

Before each size the free disk under ``--dir`` is checked against an estimate of what the size
writes (raw + curated + predictions), and the size (and the larger ones) are skipped if it does
not fit; each lake is deleted after it is measured (``--keep`` keeps them).

``--resnet``: at 1x also trains ``resnet18`` for 1 epoch on the curated photos and reports the
feed's rows/s (the trainer's reader alone over the train split, one rank, no model:
``bench/loader_bench.py``'s ``run_epoch``), the model's step rate and samples/s, the share of the
step time spent waiting for input (the trainer's ``data_wait_fraction``) and the ranks' peak
RSS (the trainer's own ``ru_maxrss`` per rank, and the poller's).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import preprocess, score, train  # noqa: E402
from pipeline.core import lake  # noqa: E402
from pipeline.core.config import Config, load_config  # noqa: E402
from pipeline.samples import synthetic  # noqa: E402
from pipeline.spark.session import get_spark  # noqa: E402
from measure import MemoryPoller  # noqa: E402  (bench/, first on sys.path)

CONF = {"images": str(ROOT / "conf" / "synthetic_photos.yaml"),
        "tabular": str(ROOT / "conf" / "synthetic_tabular.yaml")}
# Bytes a record leaves on disk (raw + curated + a scored share), with room to spare: photos
# about 120 kB as noisy JPEG and 147 kB as a 224x224x3 blob; CSV rows about 250 B, Parquet 200 B.
DISK_PER_RECORD = {"images": 400_000, "tabular": 1_000}
DATE = "2026-02-01"
STAGES = ("preprocess", "train", "score")
WARM_UP = {"images": 100, "tabular": 5_000}  # records in the untimed first round


def make_config(kind: str, lake_dir: str, args, arch: str | None = None) -> Config:
    sets = [f"lake.root={lake_dir}", f"spark.master={args.master}", "train.epochs=1", "train.warmup_epochs=0",
            f"train.num_proc={args.num_proc}", "tracking.enabled=false"]
    if kind == "images":
        arch = arch or "strided_cnn"
        sets += [f"train.arch={arch}", f"train.model_name=photos-{arch.replace('_', '-')}",
                 f"score.model=photos-{arch.replace('_', '-')}@latest", f"train.batch_size={args.image_batch}"]
    else:
        sets += [f"train.batch_size={args.tabular_batch}"]
    return load_config(CONF[kind], sets)


def generate(spark, cfg: Config, kind: str, n: int, n_score: int) -> float:
    t0 = time.perf_counter()
    photos = kind == "images"
    style, fmt = ("photos", "jpeg") if photos else ("shapes", "png")
    synthetic.run(spark, cfg, synthetic.Options(rows=n, style=style, image_format=fmt))
    synthetic.run(spark, cfg, synthetic.Options(rows=n_score, seed=1, score_date=DATE, style=style, image_format=fmt))
    return time.perf_counter() - t0


def measure(spark, cfg: Config, poll_ms: float) -> dict:
    """The three stages, each under its own poller: wall, core-seconds and peak RSS per stage."""
    out: dict = {}
    peaks: list[dict] = []
    for stage in STAGES:
        with MemoryPoller(poll_ms / 1000.0, tree_every=1, ranks=True) as poller:
            t0 = time.perf_counter()
            if stage == "preprocess":
                out["curated_rows"] = preprocess.run(spark, cfg).output_count
            elif stage == "train":
                out["train_metrics"] = train.run(spark, cfg).metrics
            else:
                out["scored_rows"] = score.run(spark, cfg, DATE).output_count
            wall = time.perf_counter() - t0
        out[stage] = (wall, poller.core_seconds())
        peaks.append(poller.peaks())
    out["memory"] = {k: max(p[k] for p in peaks) for k in ("worker_mb", "worker_sum_mb", "jvm_mb", "driver_mb")}
    out["memory"]["driver_growth_mb"] = out["memory"]["driver_mb"] - peaks[0]["driver_mb"] + peaks[0]["driver_growth_mb"]
    out["memory"]["worker_mb_by_stage"] = {s: p["worker_mb"] for s, p in zip(STAGES, peaks)}
    out["wall_s"] = sum(out[s][0] for s in STAGES)
    out["core_s"] = sum(out[s][1] for s in STAGES)
    return out


def feed_rate(cfg: Config, metrics: dict) -> float:
    """rows/s of the trainer's own feed over the curated train split, one rank, no model."""
    from loader_bench import run_epoch  # noqa: E402  (bench/)
    from pipeline.ingest.images import ImageLayout

    uri, m = train.resolve_dataset(cfg)
    rows = m["splits"]["train"]["count"]
    img = cfg.dataset.image
    run_epoch(f"{uri}/train", min(rows, 256), ImageLayout(img.height, img.width, img.channels),
              cfg.train.batch_size, cfg.train.shuffle_buffer, 0, metrics["reader"])  # warm: imports, page cache
    t0 = time.perf_counter()
    n = run_epoch(f"{uri}/train", rows, ImageLayout(img.height, img.width, img.channels), cfg.train.batch_size,
                  cfg.train.shuffle_buffer, 0, metrics["reader"])
    return n / (time.perf_counter() - t0)


def free_bytes(path: str) -> int:
    return shutil.disk_usage(path).free


def run_kind(kind: str, base: int, args, out_root: str) -> list[dict]:
    rows: list[dict] = []
    spark = None
    try:
        for f in args.factors:
            n = base * f
            n_score = max(1, int(n * args.score_fraction))
            need = DISK_PER_RECORD[kind] * (n + n_score)
            free = free_bytes(out_root)
            if free < need * 1.2:
                print(f"  {kind} {f}x ({n}): skipped, needs about {need / 1e9:.1f} GB, {free / 1e9:.1f} GB free "
                      f"under {out_root}", flush=True)
                break
            lake_dir = f"{out_root}/{kind}-{n}"
            cfg = make_config(kind, lake_dir, args)
            if spark is None:
                spark = get_spark("bench:scale", cfg)
                warm_up(spark, kind, args, out_root)
            gen_s = generate(spark, cfg, kind, n, n_score)
            print(f"  {kind} {f}x: {n} records + {n_score} to score generated in {gen_s:.0f} s "
                  f"(free disk {free / 1e9:.1f} GB)", flush=True)
            try:
                r = measure(spark, cfg, args.poll_ms)
            except Exception as e:  # noqa: BLE001 - report the sizes that finished
                print(f"  {kind} {f}x ({n}): failed, {type(e).__name__}: {str(e)[:300]}", flush=True)
                break
            r.update(kind=kind, factor=f, n=n, n_score=n_score)
            mem = r["memory"]
            print(f"  {kind} {f}x: " + ", ".join(f"{s} {r[s][0]:.1f} s" for s in STAGES)
                  + f" | {r['wall_s']:.1f} s wall, {r['core_s']:.0f} core-s | peak RSS MB: driver {mem['driver_mb']:.0f} "
                  f"(+{mem['driver_growth_mb']:.0f}), JVM {mem['jvm_mb']:.0f}, largest worker {mem['worker_mb']:.0f}, "
                  f"workers together {mem['worker_sum_mb']:.0f} (largest by stage: "
                  + ", ".join(f"{s} {v:.0f}" for s, v in mem["worker_mb_by_stage"].items()) + ") | test accuracy "
                  f"{r['train_metrics'].get('test_accuracy', float('nan')):.3f}", flush=True)
            if kind == "images" and args.resnet and f == args.factors[0]:
                r["resnet"] = resnet_at(spark, lake_dir, args)
            rows.append(r)
            if not args.keep:
                shutil.rmtree(lake_dir, ignore_errors=True)
    finally:
        if spark is not None:
            spark.stop()
    return rows


def warm_up(spark, kind: str, args, out_root: str) -> None:
    """One untimed round at a small size: JVM start-up and JIT, Python workers, first imports."""
    lake_dir = f"{out_root}/{kind}-warm-up"
    cfg = make_config(kind, lake_dir, args)
    n = WARM_UP[kind]
    t0 = time.perf_counter()
    generate(spark, cfg, kind, n, max(1, int(n * args.score_fraction)))
    measure(spark, cfg, args.poll_ms)
    shutil.rmtree(lake_dir, ignore_errors=True)
    print(f"  {kind}: warm-up round ({n} records) in {time.perf_counter() - t0:.0f} s, not counted", flush=True)


def resnet_at(spark, lake_dir: str, args) -> dict:
    """resnet18, 1 epoch on the curated photos already in lake_dir."""
    cfg = make_config("images", lake_dir, args, arch="resnet18")
    with MemoryPoller(args.poll_ms / 1000.0, tree_every=1, ranks=True) as poller:
        t0 = time.perf_counter()
        m = train.run(spark, cfg).metrics
        wall = time.perf_counter() - t0
    cpu = poller.core_seconds()
    mem = poller.peaks()
    feed = feed_rate(cfg, m)
    steps_per_s = m["samples_per_s"] / (cfg.train.batch_size * m["world_size"])  # every rank steps together
    out = {"wall_s": wall, "core_s": cpu, "feed_rows_per_s": feed, "samples_per_s": m["samples_per_s"],
           "steps_per_epoch": m["steps_per_epoch"], "data_wait_fraction": m["data_wait_fraction"],
           "rank_peak_rss_mb": [r["peak_rss_mb"] for r in m["ranks"]], "worker_mb": mem["worker_mb"],
           "driver_mb": mem["driver_mb"], "test_accuracy": m.get("test_accuracy"), "reader": m["reader"],
           "backend": m["backend"], "steps_per_s": steps_per_s}
    print(f"  resnet18 1 epoch: {wall:.0f} s wall, {cpu:.0f} core-s; model {m['samples_per_s']:.1f} samples/s "
          f"({steps_per_s:.3f} steps/s of {cfg.train.batch_size} per rank x "
          f"{m['world_size']} ranks, {m['steps_per_epoch']} steps); feed alone {feed:.0f} rows/s "
          f"({feed / m['samples_per_s']:.0f}x the model); waiting for input "
          f"{100 * m['data_wait_fraction']:.1f}% of the step time; peak RSS per rank "
          f"{', '.join(f'{v:.0f}' for v in out['rank_peak_rss_mb'])} MB (poller: largest worker "
          f"{mem['worker_mb']:.0f} MB); test accuracy {m.get('test_accuracy', float('nan')):.3f} "
          f"({m['backend']}, {m['reader']} reader)", flush=True)
    return out


def report(rows: list[dict]) -> list[str]:
    lines = ["| data | x | records | preprocess s | train s | score s | wall s | time/x | core-s | core-s/x "
             "| driver MB (growth) | driver/1x | JVM MB | largest worker MB | worker/1x |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    base: dict[str, dict] = {}
    for r in rows:
        b = base.setdefault(r["kind"], r)
        m, bm = r["memory"], b["memory"]
        x = r["factor"] / b["factor"]
        lines.append(
            f"| {r['kind']} | {x:g} | {r['n']} | {r['preprocess'][0]:.1f} | {r['train'][0]:.1f} | {r['score'][0]:.1f} "
            f"| {r['wall_s']:.1f} | {r['wall_s'] / b['wall_s'] / x:.2f} | {r['core_s']:.0f} "
            f"| {r['core_s'] / b['core_s'] / x:.2f} | {m['driver_mb']:.0f} (+{m['driver_growth_mb']:.0f}) "
            f"| {m['driver_mb'] / bm['driver_mb']:.2f} | {m['jvm_mb']:.0f} | {m['worker_mb']:.0f} "
            f"| {m['worker_mb'] / max(bm['worker_mb'], 1):.2f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=("images", "tabular"), help="one kind of data (default: both)")
    p.add_argument("--photos", type=int, default=2500, help="photos at 1x")
    p.add_argument("--rows", type=int, default=500_000, help="table rows at 1x")
    p.add_argument("--factors", type=lambda s: [int(v) for v in s.split(",")], default=[1, 4, 16])
    p.add_argument("--score-fraction", type=float, default=0.25, help="held-out records scored, per record trained")
    p.add_argument("--image-batch", type=int, default=32)
    p.add_argument("--tabular-batch", type=int, default=1024)
    p.add_argument("--num-proc", type=int, default=2)
    p.add_argument("--master", default="local[2]")
    p.add_argument("--resnet", action="store_true", help="also train resnet18 at the first size (photos)")
    p.add_argument("--poll-ms", type=float, default=200)
    p.add_argument("--dir", help="where the lakes go (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep each lake")
    args = p.parse_args(argv)
    if args.tabular_batch < 512:
        p.error("--tabular-batch must be >= 512")
    if sorted(args.factors) != args.factors or args.factors[0] < 1:
        p.error("--factors must be increasing positive integers, e.g. 1,4,16")
    out_root = args.dir or tempfile.mkdtemp(prefix="scale-bench-")
    Path(out_root).mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    try:
        for kind, base in (("images", args.photos), ("tabular", args.rows)):
            if args.only in (None, kind):
                rows += run_kind(kind, base, args, out_root)
    finally:
        if not args.dir and not args.keep:
            shutil.rmtree(out_root, ignore_errors=True)
    print("\n".join(["", *report(rows)]))
    for r in rows:
        if "resnet" in r:
            print(f"resnet18 at {r['n']} photos: {r['resnet']}")
    print("Timed: preprocess.run, train.run and score.run on one warm session; not timed: data generation, "
          "session start-up. Memory: peak RSS, sampled.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
