"""Photos to 224x224x3: the preprocess job's decode + resize + encode rate per core against a
single-process Pillow loop doing the same work, with and without JPEG draft mode.

    source scripts/env.sh
    nice -n 5 python bench/photo_bench.py                      # 1000 photos, best of 2; minutes on 2 cores
    nice -n 5 python bench/photo_bench.py --photos 4000 --repeats 3 --cores 1,2

Data: ``pipeline.samples.synthetic --style photos`` writes ``--photos`` JPEGs (quality 90) of
256-512 px per side, drawn per photo, into a temporary lake (not timed); ``conf/synthetic_photos.yaml``
resizes them to 224x224x3 (``stretch``, bilinear).

Loop (the baseline, and the per-core limit on a CPU): one Python process, pyarrow held to one
thread, for every file: read the bytes, ``Image.open``, ``Image.draft`` (draft on), ``convert("RGB")``,
``resize((224, 224), BILINEAR)``, ``tobytes``; rows (id, path, image, label) collected and written
as one snappy Parquet file per 8 MB row group's worth, like the job's. No validation, no
quarantine, no statistics: plain Pillow, the least a program can do for the same output.

Job: ``pipeline.preprocess.run(spark, cfg)`` on a ``local[N]`` session per ``--cores`` value
(one untimed warm-up run on 50 photos first), with ``dataset.image.draft`` on and, on the last
session, off. Timed: the ``run()`` call, listing to ``_latest`` (validation, splits, pixel
statistics, quarantine and manifest included).

Reported: photos/s; for the job per core, and **ratio/core** = ``(job rate / N) / loop rate``
(same draft setting); CPU-seconds of each side (the job's: this process and its descendants,
sampled) and **ratio by CPU** = loop CPU-s / job CPU-s. Both sides' pixels are checked equal on
a sample of photos.
"""
from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from pipeline import preprocess  # noqa: E402
from pipeline.core import lake  # noqa: E402
from pipeline.core.config import Config, load_config  # noqa: E402
from pipeline.samples import synthetic  # noqa: E402
from pipeline.spark.session import get_spark  # noqa: E402
from measure import MemoryPoller  # noqa: E402  (bench/, first on sys.path)

CONF = str(ROOT / "conf" / "synthetic_photos.yaml")
ROW_GROUP_BYTES = 8 * 1024 * 1024  # preprocess.row_group_mb's default


def pillow_loop(files: list[Path], out: Path, size: tuple[int, int], draft: bool) -> tuple[int, float]:
    """(photos written, CPU seconds): decode, resize, encode every file in this one process."""
    from PIL import Image

    cpu0 = time.process_time()
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list] = {"id": [], "path": [], "image": [], "label": []}
    buffered, part, n = 0, 0, 0
    schema = pa.schema([("id", pa.string()), ("path", pa.string()), ("image", pa.binary()), ("label", pa.int32())])
    writer = pq.ParquetWriter(out / "part-00000.parquet", schema)
    for f in files:
        img = Image.open(io.BytesIO(f.read_bytes()))
        if draft:
            img.draft("RGB", size)
        blob = img.convert("RGB").resize(size, Image.Resampling.BILINEAR).tobytes()
        for k, v in zip(rows, (f.name, str(f), blob, int(f.parent.name))):
            rows[k].append(v)
        buffered += len(blob)
        n += 1
        if buffered >= ROW_GROUP_BYTES:
            writer.write_table(pa.table(rows, schema=schema))
            rows, buffered, part = {k: [] for k in rows}, 0, part + 1
    if rows["id"]:
        writer.write_table(pa.table(rows, schema=schema))
    writer.close()
    return n, time.process_time() - cpu0


def job(spark, cfg: Config, poll_ms: float) -> tuple[int, float, float]:
    """(photos curated, wall seconds, CPU seconds) of one preprocess.run."""
    with MemoryPoller(poll_ms / 1000.0, tree_every=1, ranks=True) as poller:
        t0 = time.perf_counter()
        m = preprocess.run(spark, cfg)
        wall = time.perf_counter() - t0
    return m.output_count, wall, poller.core_seconds()


def check_same_pixels(lake_dir: str, loop_dir: Path, cfg: Config, sample: int = 20) -> None:
    """The job's stored blobs equal the loop's for the same files (draft on both sides)."""
    from pipeline import train

    uri, _ = train.resolve_dataset(cfg)
    job_rows = {Path(r["path"].removeprefix("file:")).name: r["image"]
                for split in ("train", "val", "test")
                for p in Path(lake.local_path(f"{uri}/{split}")).glob("*.parquet")
                for r in pq.read_table(p, columns=["path", "image"]).to_pylist()}
    loop_rows = {r["id"]: r["image"] for r in pq.read_table(loop_dir).to_pylist()}
    assert len(job_rows) == len(loop_rows), (len(job_rows), len(loop_rows))
    for name in sorted(loop_rows)[:sample]:
        if job_rows[name] != loop_rows[name]:
            raise AssertionError(f"{name}: the job's pixels differ from the Pillow loop's")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--photos", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=2, help="timed rounds; the best is reported")
    p.add_argument("--cores", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2])
    p.add_argument("--poll-ms", type=float, default=200)
    p.add_argument("--dir", help="where the lake goes (default: a temporary directory, deleted)")
    args = p.parse_args(argv)
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    root = args.dir or tempfile.mkdtemp(prefix="photo-bench-")
    base = [f"lake.root={root}", "tracking.enabled=false"]
    warm_base = [f"lake.root={root}/warm-up", "tracking.enabled=false"]
    cfg = load_config(CONF, base)
    t0 = time.perf_counter()
    spark = get_spark("bench:photos:generate", cfg)
    try:
        synthetic.run(spark, cfg, synthetic.Options(rows=args.photos, style="photos", image_format="jpeg",
                                                    overwrite=True))
        synthetic.run(spark, load_config(CONF, warm_base), synthetic.Options(rows=50, style="photos",
                                                                             image_format="jpeg", overwrite=True))
    finally:
        spark.stop()
    files = sorted(Path(lake.local_path(cfg.resolve(cfg.dataset.source))).rglob("*.jpg"))
    mb = sum(f.stat().st_size for f in files) / 1e6
    print(f"data: {len(files)} photos, {mb:.0f} MB of JPEG, generated in {time.perf_counter() - t0:.0f} s", flush=True)
    size = (cfg.dataset.image.width, cfg.dataset.image.height)

    results: dict[str, tuple[float, float]] = {}  # label -> (best photos/s, CPU-s of that run)

    def keep(label: str, n: int, wall: float, cpu: float) -> None:
        rate = n / wall
        print(f"  {label}: {n} photos in {wall:.2f} s ({rate:.1f}/s), {cpu:.1f} CPU-s", flush=True)
        if label not in results or rate > results[label][0]:
            results[label] = (rate, cpu)

    try:
        for c in args.cores:
            last = c == args.cores[-1]
            sets = [f"spark.master=local[{c}]"]
            spark = get_spark(f"bench:photos:local[{c}]", load_config(CONF, base + sets))
            try:
                preprocess.run(spark, load_config(CONF, warm_base + sets))  # warm-up, not timed
                for _ in range(args.repeats):
                    for draft in ((True, False) if last else (True,)):
                        loop_dir = Path(root) / f"loop-{draft}"
                        shutil.rmtree(loop_dir, ignore_errors=True)
                        t0 = time.perf_counter()
                        n, cpu = pillow_loop(files, loop_dir, size, draft)
                        keep(f"loop draft={'on' if draft else 'off'}", n, time.perf_counter() - t0, cpu)
                        run_cfg = load_config(CONF, base + sets + [f"dataset.image.draft={str(draft).lower()}"])
                        n, wall, cpu = job(spark, run_cfg, args.poll_ms)
                        keep(f"job local[{c}] draft={'on' if draft else 'off'}", n, wall, cpu)
                        if draft and c == args.cores[0]:
                            check_same_pixels(root, Path(root) / "loop-True", run_cfg)
            finally:
                spark.stop()
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)

    print(f"\n{len(files)} photos of 256-512 px -> 224x224x3, best of {args.repeats}")
    print("| side | photos/s | per core | ratio/core | CPU-s | ratio by CPU |")
    print("|---|---|---|---|---|---|")
    for label, (rate, cpu) in results.items():
        if label.startswith("loop"):
            print(f"| {label} | {rate:.1f} | {rate:.1f} | 1.00 | {cpu:.1f} | 1.00 |")
            continue
        cores = int(label.split("[")[1].split("]")[0])
        loop_rate, loop_cpu = results[f"loop {label.split()[-1]}"]
        print(f"| {label} | {rate:.1f} | {rate / cores:.1f} | {rate / cores / loop_rate:.2f} | {cpu:.1f} "
              f"| {loop_cpu / cpu:.2f} |")
    on, off = results.get("loop draft=on"), results.get("loop draft=off")
    if on and off:
        print(f"draft mode: the loop {on[0] / off[0]:.2f}x as fast with it as without")
    print("Timed: loop from the first file read to the closed Parquet file; job: preprocess.run on a warm session. "
          "Not timed: generation, session start-up, the warm-up run.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
