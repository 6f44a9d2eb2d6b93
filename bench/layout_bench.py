"""The curated image layout: fixed-size uint8 blobs + make_batch_reader vs a Petastorm Unischema + make_reader.

    source scripts/env.sh
    python bench/layout_bench.py              # 50k 28x28x1 images: about 2.5 minutes on 2 busy cores
    python bench/layout_bench.py --noise 0    # noise-free images: what compression can do
    python bench/layout_bench.py --rows 20000 --image-size 32x32x3 --codecs png --repeats 5

The same ``--rows`` images (all different, from ``pipeline.samples.synthetic.render_image`` with
``--noise``) are stored three ways, each as ``--files`` Parquet files:

(ii) ours, the layout ``pipeline.preprocess`` writes: ``image`` a binary column holding the
     uint8 HxWxC row-major bytes, ``label`` int32 (plus ``id`` and ``path`` strings); snappy,
     ``--row-group-rows`` rows per row group; written with pyarrow.
(i)  a Petastorm Unischema dataset (``id`` string, ``image`` uint8 (H, W[, C]) with
     ``CompressedImageCodec('png')``, ``label`` int32), written by Spark (``local[2]``, UI off)
     under ``petastorm.etl.dataset_metadata.materialize_dataset`` with ``--row-group-mb``;
     the rows are encoded by ``dict_to_spark_row`` in Spark's Python workers from (ii).
(i') the same with ``NdarrayCodec()`` for the image (``np.save`` bytes per row).

Read, each as rows/s:

(i)  ``make_reader`` (petastorm's defaults: 10 worker threads, ``--reader-workers`` to change)
     iterated row by row ("rows": decoded numpy rows, no batches), and the same reader through
     ``petastorm.pytorch.DataLoader`` with ``--batch-size`` ("DataLoader": torch batches, what
     petastorm's PyTorch examples do).
(ii) ``pipeline.training.feed`` as the trainer uses it (``bench/loader_bench.py``'s (b): one epoch of
     ``endless_row_groups`` + ``shuffled_batches`` + ``torch.from_numpy``), and one plain
     ``feed.open_reader`` pass with the trainer's decode (b0).

On-disk size is every file of each dataset, Petastorm's metadata included. Every reader runs
once untimed (page cache, imports), then ``--repeats`` interleaved rounds; medians are printed,
wall-clock and per CPU-second of this process. The PNG dataset is checked to decode to the
original pixels before anything is timed.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loader_bench as lb  # noqa: E402  (also puts the repository root on sys.path)
from pipeline.core.config import load_config  # noqa: E402
from pipeline.ingest.images import ImageLayout  # noqa: E402
from pipeline.training import feed  # noqa: E402
from pipeline.spark.session import get_spark  # noqa: E402


def unischema(layout: ImageLayout, codec: str):
    from petastorm.codecs import CompressedImageCodec, NdarrayCodec, ScalarCodec
    from petastorm.unischema import Unischema, UnischemaField
    from pyspark.sql.types import IntegerType, StringType

    shape = (layout.height, layout.width) if layout.channels == 1 else (layout.height, layout.width, layout.channels)
    image_codec = CompressedImageCodec("png") if codec == "png" else NdarrayCodec()
    return Unischema(f"Images_{codec}", [
        UnischemaField("id", np.str_, (), ScalarCodec(StringType()), False),
        UnischemaField("image", np.uint8, shape, image_codec, False),
        UnischemaField("label", np.int32, (), ScalarCodec(IntegerType()), False),
    ])


def write_unischema(spark, blob_uri: str, out_uri: str, layout: ImageLayout, codec: str, files: int,
                    row_group_mb: int) -> None:
    """(ii)'s rows re-encoded into a Petastorm dataset by Spark, as materialize_dataset wants it."""
    from petastorm.etl.dataset_metadata import materialize_dataset
    from petastorm.unischema import dict_to_spark_row

    schema = unischema(layout, codec)
    shape = schema.fields["image"].shape

    def encode(rows):
        for r in rows:
            img = np.frombuffer(r.image, dtype=np.uint8).reshape(shape)
            yield dict_to_spark_row(schema, {"id": r.id, "image": img, "label": np.int32(r.label)})

    with materialize_dataset(spark, out_uri, schema, row_group_mb):
        rows = spark.read.parquet(blob_uri).select("id", "image", "label").rdd.mapPartitions(encode)
        (spark.createDataFrame(rows, schema.as_spark_schema()).repartition(files)
         .write.mode("overwrite").parquet(out_uri))


def check_png_roundtrip(url: str, images: np.ndarray, layout: ImageLayout, n: int = 500) -> None:
    from petastorm import make_reader

    with make_reader(url, schema_fields=["id", "image"], num_epochs=1, shuffle_row_groups=False) as reader:
        for k, row in enumerate(reader):
            if k == n:
                break
            want = images[int(row.id)].reshape(row.image.shape)
            if not np.array_equal(row.image, want):
                raise AssertionError(f"{url}: row {row.id} does not decode to the pixels written")


def read_rows(url: str, workers: int) -> int:
    from petastorm import make_reader

    n = 0
    with make_reader(url, schema_fields=["image", "label"], num_epochs=1, workers_count=workers, seed=1) as reader:
        for row in reader:
            n += 1
    return n


def read_dataloader(url: str, workers: int, batch_size: int, layout: ImageLayout) -> int:
    from petastorm import make_reader
    from petastorm.pytorch import DataLoader

    h, w, c = layout.height, layout.width, layout.channels
    n = 0
    with make_reader(url, schema_fields=["image", "label"], num_epochs=1, workers_count=workers, seed=1) as reader:
        for batch in DataLoader(reader, batch_size=batch_size):
            x = batch["image"].view(-1, h, w, c).permute(0, 3, 1, 2)  # NCHW, as the trainer's input
            n += len(batch["label"])
    return n


def row_groups(path: Path) -> int:
    return sum(pq.ParquetFile(f).metadata.num_row_groups for f in path.glob("*.parquet"))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--image-size", type=lb.parse_size, default=ImageLayout(28, 28, 1), help="HxW or HxWxC")
    ap.add_argument("--files", type=int, default=4, help="files per dataset (preprocess.files_per_split)")
    ap.add_argument("--row-group-rows", type=int, default=10_000, help="rows per row group of the blob layout")
    ap.add_argument("--noise", type=float, default=0.15,
                    help="pixel noise of the synthetic images (pipeline.samples.synthetic's default 0.15); "
                         "0 compresses far better")
    ap.add_argument("--row-group-mb", type=int, default=8, help="materialize_dataset's row_group_size_mb")
    ap.add_argument("--codecs", default="png,ndarray", help="Unischema image codecs to compare: png, ndarray")
    ap.add_argument("--reader-workers", type=int, default=10, help="make_reader workers_count (its default: 10)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--shuffle-buffer", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", type=Path, help="keep the datasets here (default: a temporary directory)")
    args = ap.parse_args(argv)
    layout = args.image_size
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    if not codecs or set(codecs) - {"png", "ndarray"}:
        ap.error(f"--codecs takes png and/or ndarray, not {args.codecs!r}")

    tmp = None if args.dir else Path(tempfile.mkdtemp(prefix="layout_bench_"))
    root = (args.dir or tmp).resolve()
    spark = None
    try:
        t0 = time.perf_counter()
        images, labels = lb.render_pool(args.rows, layout, noise=args.noise)
        blob = root / "blob"
        lb.write_blob_dataset(blob, images, labels, args.files, args.row_group_rows)
        print(f"{args.rows} distinct {layout.height}x{layout.width}x{layout.channels} images rendered and written "
              f"as blobs in {time.perf_counter() - t0:.1f}s")

        (root / "spark-local").mkdir()
        cfg = load_config(None, ["spark.master=local[2]", "spark.shuffle_partitions=2",
                                 f"spark.conf={{spark.ui.showConsoleProgress: 'false', "
                                 f"spark.local.dir: '{root / 'spark-local'}'}}"])
        spark = get_spark("bench:layout", cfg)
        spark.sparkContext.setLogLevel("ERROR")
        datasets: dict[str, Path] = {"blob": blob}
        for codec in codecs:
            t0 = time.perf_counter()
            datasets[codec] = root / f"unischema_{codec}"
            write_unischema(spark, blob.as_uri(), datasets[codec].as_uri(), layout, codec, args.files,
                            args.row_group_mb)
            print(f"Unischema/{codec} written by Spark in {time.perf_counter() - t0:.1f}s")
        spark.stop()
        spark = None
        if "png" in datasets:
            check_png_roundtrip(datasets["png"].as_uri(), images, layout)

        rows = args.rows
        url = {k: p.as_uri() for k, p in datasets.items()}
        reader = feed.default_reader()  # the trainer's: Petastorm where it is installed
        variants: dict[str, Callable[[], int]] = {
            "(ii) blob + pipeline.training.feed, trainer epoch (b)": lambda: lb.run_epoch(
                url["blob"], rows, layout, args.batch_size, args.shuffle_buffer, 0, reader),
            "(ii) blob + feed.open_reader pass (b0)": lambda: lb.run_single_pass(url["blob"], layout, reader),
        }
        for codec in codecs:
            tag = "(i) " if codec == "png" else "(i')"
            variants[f"{tag} Unischema/{codec} make_reader rows"] = (
                lambda u=url[codec]: read_rows(u, args.reader_workers))
            variants[f"{tag} Unischema/{codec} make_reader + DataLoader"] = (
                lambda u=url[codec]: read_dataloader(u, args.reader_workers, args.batch_size, layout))

        for fn in variants.values():
            fn()
        results: dict[str, list[tuple[int, float, float, int]]] = {k: [] for k in variants}
        for _ in range(args.repeats):
            for name, fn in variants.items():
                results[name].append(lb.timed(fn))

        print(f"\nbatch {args.batch_size}, {args.repeats} timed rounds, make_reader workers_count="
              f"{args.reader_workers}\n")
        print(f"{'dataset':22} {'MiB':>7} {'bytes/image':>11} {'files':>5} {'row groups':>10}")
        for k, p in datasets.items():
            size = lb.dir_bytes(p)
            print(f"{k:22} {size / 2**20:7.1f} {size / rows:11.0f} {len(list(p.glob('*.parquet'))):5d} "
                  f"{row_groups(p):10d}")
        width = max(map(len, variants))
        base = next(iter(variants))
        wall = {k: statistics.median(r[0] / r[1] for r in v) for k, v in results.items()}
        cpu = {k: statistics.median(r[0] / r[2] for r in v) for k, v in results.items()}
        print(f"\n{'':{width}}  {'rows/s median':>13}  {'rows/CPU-s':>10}  {'(ii)(b) is x faster':>19}")
        for name in variants:
            print(f"{name:{width}}  {wall[name]:13,.0f}  {cpu[name]:10,.0f}  "
                  f"{wall[base] / wall[name]:9.1f} wall {cpu[base] / cpu[name]:4.1f} CPU")
    finally:
        if spark is not None:
            spark.stop()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
