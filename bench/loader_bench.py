"""Training-input throughput: the trainer's feed, through Petastorm or the pyarrow reader, against a
plain pyarrow scan.

    source scripts/env.sh                 # or PROFILE=modern source scripts/env.sh (no Petastorm: (a), (d), (d0))
    python bench/loader_bench.py          # 300k 28x28x1 rows: 1-2 min on 2 quiet cores, 2-4 min under load
    python bench/loader_bench.py --files 4 --row-group-rows 75000     # row groups as row_group_mb=64 writes them
    python bench/loader_bench.py --rows 100000 --image-size 32x32x3 --batch-size 64 --repeats 7
    python bench/loader_bench.py --no-experiments --no-naive --profile

Data: ``--rows`` rows in the curated layout ``pipeline.preprocess`` writes (``id`` string,
``path`` string, ``image`` binary holding one uint8 HxWxC row-major blob, ``label`` int32),
written with pyarrow (no Spark) as ``--files`` snappy Parquet files with ``--row-group-rows``
rows per row group, into a temporary directory (``--dir`` to keep it). The pixels come from
``pipeline.samples.synthetic.render_image`` (``--distinct`` different images, drawn at random for the
rows), so they compress like real small images, not like noise.

Measured, each as rows/s of uint8 NCHW image tensors + label tensors reaching the caller:

(a)  baseline: ``pq.ParquetFile(f).iter_batches(columns=[image, label])`` over the files; each
     Arrow batch's image buffer is viewed as (N, H, W, C) uint8 without a copy, transposed to
     NCHW and handed to ``torch.from_numpy``. The ceiling for reading these files in Python.
(b)  the trainer's path with ``train.reader=petastorm`` (``pipeline.training.trainer.Batches.train_stream``,
     one rank of one): ``feed.endless_row_groups`` with the trainer's decode, ``feed.shuffled_batches``
     with ``--batch-size`` and ``--shuffle-buffer``, ``torch.from_numpy(np.ascontiguousarray(x))``
     and ``torch.from_numpy(y)`` per step, for ``schedule.steps_per_epoch(rows, batch, 1)`` steps,
     then ``chunks.close()``: one epoch, reader start-up included, as the trainer runs it.
(b0) for decomposition: one ``feed.shard_batches`` pass (Petastorm) with the same decode, no
     re-batching or shuffling.
(d)  as (b) with ``train.reader=arrow``: the same shard and order, row groups read with pyarrow,
     the blobs viewed out of the Arrow buffer (the default on the modern profile).
(d0) one ``feed.shard_batches`` pass with the pyarrow reader and the decode.
(c)  a naive Petastorm loader for reference: ``make_batch_reader`` with its defaults (10 worker
     threads) and a ``TransformSpec`` doing ``np.frombuffer`` per row, read through
     ``petastorm.pytorch.BatchedDataLoader`` with the same batch size, no shuffling queue
     (``--naive-shuffle`` gives it one of ``--shuffle-buffer`` rows: about 10 times slower).

(b), (b0) and (c) need Petastorm and are left out where it is not installed.

Every variant reads once untimed first (page cache, imports, lazy initialisation); then the
variants are timed in turn, ``--repeats`` rounds, so a burst of load from other processes hits
all of them alike, and the median of each is reported. Wall-clock rows/s is the headline; on a
shared machine it moves with other people's load, so rows per CPU-second of this process (all
its threads) is printed next to it as the steadier figure, with the minor page faults per row.
(a), (b0) and (d0) are checked to deliver the same pixels and labels.

``--experiments`` (on by default) also times (b) with local, modified copies of the feed
functions or settings, labelled EXPERIMENT: candidates, not what the trainer runs.

x2  ``shuffled_batches`` filling one reused pool instead of ``np.concatenate``; checked, before
    it is timed, to yield exactly the batches ``feed.shuffled_batches`` yields.
x3  batch 256 instead of ``--batch-size`` (a config change, no code).

docs/data-layout.md has the numbers. With 59 MB row groups the feeds drop a lot: page faults on
the row-group-sized temporaries, which glibc maps fresh for every allocation above 32 MB.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import resource
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)
# (a) hands torch read-only views of Arrow memory, as a zero-copy reader would; nothing writes to them.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.training import feed
from pipeline.training import schedule  # noqa: E402
from pipeline.ingest.images import ImageLayout, images_to_tensor_layout  # noqa: E402

FIELDS = ["image", "label"]


# --- data ------------------------------------------------------------------------------------

def render_pool(n: int, layout: ImageLayout, seed: int = 0, noise: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """n distinct synthetic images (n, H, W, C) uint8 and their labels, from pipeline.samples.synthetic."""
    from pipeline.samples.synthetic import render_image

    labels, images = zip(*(render_image(i, seed, 0, 10, layout.height, layout.width, layout.channels, noise)
                           for i in range(n)))
    return np.stack(images), np.asarray(labels, dtype=np.int32)


def blob_array(images: np.ndarray) -> pa.Array:
    """(N, H, W, C) uint8 -> Arrow binary column of N row-major blobs, built without per-row bytes."""
    n = len(images)
    size = int(np.prod(images.shape[1:]))
    offsets = pa.py_buffer((np.arange(n + 1, dtype=np.int32) * size).tobytes())
    return pa.Array.from_buffers(pa.binary(), n, [None, offsets, pa.py_buffer(np.ascontiguousarray(images).tobytes())])


def write_blob_dataset(out: Path, images: np.ndarray, labels: np.ndarray, files: int, row_group_rows: int) -> None:
    """The curated image layout (id, path, image blob, label int32) as plain snappy Parquet files."""
    out.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(images), files + 1).astype(int)
    for f, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        ids = [f"{i:010d}" for i in range(lo, hi)]
        table = pa.table({
            "id": pa.array(ids),
            "path": pa.array([f"raw/{i}.png" for i in ids]),
            "image": blob_array(images[lo:hi]),
            "label": pa.array(labels[lo:hi], type=pa.int32()),
        })
        pq.write_table(table, out / f"part-{f:05d}.parquet", row_group_size=row_group_rows, compression="snappy")


def write_curated(out: Path, rows: int, files: int, row_group_rows: int, layout: ImageLayout,
                  distinct: int, seed: int = 0) -> None:
    """rows images drawn at random from a pool of distinct rendered ones, in the curated layout."""
    pool, pool_labels = render_pool(min(distinct, rows), layout, seed)
    pick = np.random.default_rng(seed).integers(0, len(pool), rows)
    write_blob_dataset(out, pool[pick], pool_labels[pick], files, row_group_rows)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --- (a) the baseline ------------------------------------------------------------------------

def arrow_blobs_as_nchw(col: pa.Array, layout: ImageLayout) -> np.ndarray:
    """A binary Arrow array of fixed-size blobs -> (N, C, H, W) uint8 view of its data buffer."""
    n, size = len(col), layout.height * layout.width * layout.channels
    offsets = np.frombuffer(col.buffers()[1], dtype=np.int32, count=n + 1, offset=col.offset * 4)
    if offsets[-1] - offsets[0] != n * size:
        raise ValueError(f"image blobs are not all {size} bytes")
    flat = np.frombuffer(col.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
    return flat.reshape(n, layout.height, layout.width, layout.channels).transpose(0, 3, 1, 2)


def scan_batches(files: list[Path], layout: ImageLayout) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for f in files:
        for b in pq.ParquetFile(f).iter_batches(columns=FIELDS):
            yield arrow_blobs_as_nchw(b.column(0), layout), b.column(1).to_numpy().astype(np.int64)


def run_scan(files: list[Path], layout: ImageLayout) -> int:
    import torch

    n = 0
    for x, y in scan_batches(files, layout):
        xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)
        n += len(yt)
    return n


# --- (b) the trainer's feed ------------------------------------------------------------------

def trainer_decode(layout: ImageLayout) -> Callable:
    def decode(batch) -> tuple[np.ndarray, np.ndarray]:  # as pipeline.training.trainer.Batches.decode
        return images_to_tensor_layout(batch.image, layout), np.asarray(batch.label, dtype=np.int64)
    return decode


def run_epoch(url: str, rows: int, layout: ImageLayout, batch_size: int, buffer: int, seed: int, reader: str,
              endless=feed.endless_row_groups, shuffled=feed.shuffled_batches) -> int:
    """One training epoch's input, exactly as pipeline.training.trainer consumes it (rank 0 of 1)."""
    import torch

    steps = schedule.steps_per_epoch(rows, batch_size, 1)
    rng = np.random.default_rng(seed)
    chunks = endless(url, 0, 1, fields=FIELDS, reader=reader, seed=seed * 1000, decode=trainer_decode(layout))
    n = 0
    try:
        batches = shuffled(chunks, batch_size, buffer, rng)
        for _ in range(steps):
            x, y = next(batches)
            xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)
            n += len(yt)
    finally:
        chunks.close()
    return n


def single_pass(url: str, layout: ImageLayout, reader: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    decode = trainer_decode(layout)
    for batch in feed.shard_batches(url, 0, 1, fields=FIELDS, reader=reader, seed=1, shuffle=True):
        yield decode(batch)


def run_single_pass(url: str, layout: ImageLayout, reader: str) -> int:
    return sum(len(y) for _, y in single_pass(url, layout, reader))


# --- (c) a naive petastorm loader ------------------------------------------------------------

def run_naive(url: str, layout: ImageLayout, batch_size: int, shuffle_capacity: int) -> int:
    """make_batch_reader (its defaults) + a per-row np.frombuffer TransformSpec + BatchedDataLoader."""
    import torch
    from petastorm import make_batch_reader
    from petastorm.pytorch import BatchedDataLoader
    from petastorm.transform import TransformSpec

    h, w, c = layout.height, layout.width, layout.channels

    def per_row(pdf):
        pdf["image"] = pdf["image"].map(lambda b: np.frombuffer(b, dtype=np.uint8))
        return pdf

    spec = TransformSpec(per_row, edit_fields=[("image", np.uint8, (h * w * c,), False)])
    n = 0
    with make_batch_reader(url, schema_fields=FIELDS, num_epochs=1, transform_spec=spec, seed=1) as reader:
        for batch in BatchedDataLoader(reader, batch_size=batch_size, shuffling_queue_capacity=shuffle_capacity):
            x = batch["image"].view(-1, h, w, c).permute(0, 3, 1, 2)
            y = batch["label"].to(torch.int64)
            n += len(y)
    return n


# --- EXPERIMENTS: modified local copies of pipeline/feed.py functions -------------------------

def experiment_shuffled_batches(chunks, batch_size: int, buffer: int, rng) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """EXPERIMENT x2: feed.shuffled_batches without np.concatenate: one pool array, reused.

    New row groups are copied into a preallocated pool (grown only when a larger chunk comes),
    and the kept half-buffer is moved to its front, so no pool-sized array is allocated per
    row group. Same rng calls, same rows in the same batches in the same order as
    feed.shuffled_batches (checked before it is timed).
    """
    pool_x: np.ndarray | None = None
    pool_y: np.ndarray | None = None
    n = 0
    for x, y in chunks:
        need = n + len(y)
        if pool_x is None or need > len(pool_x):
            cap = max(need, 2 * len(y) + buffer)
            new_x, new_y = np.empty((cap,) + x.shape[1:], x.dtype), np.empty(cap, y.dtype)
            if n:
                new_x[:n], new_y[:n] = pool_x[:n], pool_y[:n]
            pool_x, pool_y = new_x, new_y
        pool_x[n:need], pool_y[n:need] = x, y
        n = need
        if n < max(buffer, batch_size):
            continue
        keep = buffer // 2
        n_emit = (n - keep) // batch_size * batch_size
        if n_emit <= 0:
            continue
        perm = rng.permutation(n) if buffer else np.arange(n)
        for i in range(0, n_emit, batch_size):
            idx = perm[i:i + batch_size]
            yield pool_x[idx], pool_y[idx]
        rest = perm[n_emit:]
        pool_x[:len(rest)], pool_y[:len(rest)] = pool_x[rest], pool_y[rest]
        n = len(rest)
    if n:
        perm = rng.permutation(n) if buffer else np.arange(n)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            yield pool_x[idx], pool_y[idx]


def check_experiment_matches(layout: ImageLayout, batch_size: int, buffer: int) -> None:
    """x2 must yield exactly what feed.shuffled_batches yields, for the same chunks and seed."""
    rng = np.random.default_rng(7)
    sizes = [37, 1000, 3, 2500, 999, 10_000, 1]
    chunks = [(rng.integers(0, 256, (n, layout.channels, layout.height, layout.width), dtype=np.uint8),
               rng.integers(0, 10, n)) for n in sizes]
    for buf in (buffer, 0):
        ref = list(feed.shuffled_batches(iter(chunks), batch_size, buf, np.random.default_rng(1)))
        new = list(experiment_shuffled_batches(iter(chunks), batch_size, buf, np.random.default_rng(1)))
        if len(ref) != len(new) or any(not (np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]))
                                        for a, b in zip(ref, new)):
            raise AssertionError(f"EXPERIMENT x2 differs from feed.shuffled_batches (buffer={buf})")


# --- measuring -------------------------------------------------------------------------------

def check_same_data(files: list[Path], url: str, layout: ImageLayout, readers: list[str]) -> None:
    """(a), (b0) and (d0) must deliver the same rows: compare order-free checksums."""
    def sums(it):
        px, lab, n = 0, 0, 0
        for x, y in it:
            px += int(x.sum(dtype=np.int64)); lab += int(y.sum()); n += len(y)
        return n, px, lab
    a = sums(scan_batches(files, layout))
    for reader in readers:
        b = sums(single_pass(url, layout, reader))
        if a != b:
            raise AssertionError(f"baseline and the {reader} reader read different data: "
                                 f"(rows, pixel sum, label sum) {a} != {b}")


def timed(fn: Callable[[], int]) -> tuple[int, float, float, int]:
    """(rows, wall seconds, CPU seconds of this process, minor page faults) of one call."""
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    w0, c0 = time.perf_counter(), time.process_time()
    n = fn()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return n, wall, cpu, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0


def profile(fn: Callable[[], int], top: int = 15) -> None:
    prof = cProfile.Profile()
    prof.runcall(fn)
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    print(out.getvalue())


def parse_size(text: str) -> ImageLayout:
    parts = [int(p) for p in text.lower().split("x")]
    if len(parts) == 2:
        parts.append(1)
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"--image-size wants HxW or HxWxC, e.g. 28x28x1, not {text!r}")
    return ImageLayout(*parts)


BASE = "(a)  pyarrow iter_batches -> torch"
TRAINER = "(b)  trainer, petastorm: endless_row_groups + shuffled_batches"
SINGLE = "(b0) petastorm reader + decode only, one pass"
ARROW = "(d)  trainer, arrow: endless_row_groups + shuffled_batches"
ARROW_SINGLE = "(d0) arrow reader + decode only, one pass"
NAIVE = "(c)  naive: per-row TransformSpec + BatchedDataLoader"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--image-size", type=parse_size, default=ImageLayout(28, 28, 1), help="HxW or HxWxC")
    ap.add_argument("--files", type=int, default=6)
    ap.add_argument("--row-group-rows", type=int, default=10_000)
    ap.add_argument("--distinct", type=int, default=4096, help="distinct images drawn for the rows")
    ap.add_argument("--batch-size", type=int, default=32, help="train.batch_size (config default 32)")
    ap.add_argument("--shuffle-buffer", type=int, default=2048, help="train.shuffle_buffer (config default 2048)")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds; the median is reported")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", type=Path, help="write the data here and keep it (default: a temporary directory)")
    ap.add_argument("--no-naive", dest="naive", action="store_false", help="skip (c)")
    ap.add_argument("--naive-shuffle", action="store_true",
                    help="give (c) BatchedDataLoader(shuffling_queue_capacity=--shuffle-buffer); about 10x slower")
    ap.add_argument("--no-experiments", dest="experiments", action="store_false")
    ap.add_argument("--profile", action="store_true", help="cProfile one epoch of (b) and print the top functions")
    args = ap.parse_args(argv)
    layout = args.image_size

    tmp = None if args.dir else Path(tempfile.mkdtemp(prefix="loader_bench_"))
    data = (args.dir or tmp) / "train"
    try:
        t0 = time.perf_counter()
        if not (data.exists() and any(data.glob("*.parquet"))):
            write_curated(data, args.rows, args.files, args.row_group_rows, layout, args.distinct, args.seed)
        files = sorted(data.glob("*.parquet"))
        meta = [pq.ParquetFile(f).metadata for f in files]
        rows = sum(m.num_rows for m in meta)
        print(f"data: {rows} rows of {layout.height}x{layout.width}x{layout.channels} uint8 blobs, {len(files)} files, "
              f"{sum(m.num_row_groups for m in meta)} row groups, {dir_bytes(data) / 2**20:.1f} MiB "
              f"(written in {time.perf_counter() - t0:.1f}s)")
        print(f"batch {args.batch_size}, shuffle buffer {args.shuffle_buffer}, {args.repeats} timed rounds, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start")
        url = data.resolve().as_uri()

        petastorm = feed.default_reader() == "petastorm"
        readers = ["petastorm", "arrow"] if petastorm else ["arrow"]
        main_reader = readers[0]
        print(f"readers: {', '.join(readers)}" + ("" if petastorm else " (petastorm is not installed: no (b), (b0), (c))"))

        def epoch(**kw) -> Callable[[], int]:
            opts = dict(batch_size=args.batch_size, buffer=args.shuffle_buffer, seed=args.seed, reader=main_reader)
            opts.update(kw)
            return lambda: run_epoch(url, rows, layout, **opts)

        variants: dict[str, Callable[[], int]] = {BASE: lambda: run_scan(files, layout)}
        if petastorm:
            variants[TRAINER] = epoch(reader="petastorm")
            variants[SINGLE] = lambda: run_single_pass(url, layout, "petastorm")
        variants[ARROW] = epoch(reader="arrow")
        variants[ARROW_SINGLE] = lambda: run_single_pass(url, layout, "arrow")
        if args.naive and petastorm:
            variants[NAIVE + (" (shuffling)" if args.naive_shuffle else "")] = lambda: run_naive(
                url, layout, args.batch_size, args.shuffle_buffer if args.naive_shuffle else 0)
        if args.experiments:
            check_experiment_matches(layout, args.batch_size, args.shuffle_buffer)
            variants[f"EXPERIMENT x2: {main_reader} trainer with a reused pool, no concatenate"] = epoch(
                shuffled=experiment_shuffled_batches)
            big = max(256, args.batch_size)
            variants[f"EXPERIMENT x3: {main_reader} trainer with batch {big} (config only)"] = epoch(batch_size=big)

        check_same_data(files, url, layout, readers)
        for fn in variants.values():  # warm-up: page cache, imports, lazy initialisation
            fn()
        results: dict[str, list[tuple[int, float, float, int]]] = {k: [] for k in variants}
        for _ in range(args.repeats):
            for name, fn in variants.items():
                results[name].append(timed(fn))

        def wall(name: str) -> float:
            return statistics.median(r[0] / r[1] for r in results[name])

        def cpu(name: str) -> float:
            return statistics.median(r[0] / r[2] for r in results[name])

        width = max(map(len, variants))
        print(f"\n{'':{width}}  {'rows/s median':>13}  {'best':>10}  {'rows/CPU-s':>10}  "
              f"{'/(a) wall':>9}  {'/(a) CPU':>8}  {'faults/row':>10}")
        for name in variants:
            best = max(r[0] / r[1] for r in results[name])
            faults = statistics.median(r[3] / r[0] for r in results[name])
            print(f"{name:{width}}  {wall(name):13,.0f}  {best:10,.0f}  {cpu(name):10,.0f}  "
                  f"{wall(name) / wall(BASE):9.2f}  {cpu(name) / cpu(BASE):8.2f}  {faults:10.2f}")
        print("\nevery round, wall rows/s:")
        for name in variants:
            print(f"  {name.split(':')[0][:13]:13} " + " ".join(f"{r[0] / r[1]:10,.0f}" for r in results[name]))
        if petastorm:
            print(f"\n(b)/(a) = {wall(TRAINER) / wall(BASE):.2f} wall, {cpu(TRAINER) / cpu(BASE):.2f} per CPU-second "
                  f"(petastorm; target >= 0.5)")
        print(f"(d)/(a) = {wall(ARROW) / wall(BASE):.2f} wall, {cpu(ARROW) / cpu(BASE):.2f} per CPU-second "
              f"(arrow; target >= 0.8)")
        naive = next((k for k in variants if k.startswith(NAIVE)), None)
        if naive:
            print(f"(c)/(a) = {wall(naive) / wall(BASE):.2f} wall, {cpu(naive) / cpu(BASE):.2f} per CPU-second")
        print(f"load average {os.getloadavg()[0]:.1f} at the end")

        if args.profile:
            print("\ncProfile of one trainer epoch, (b) or (d) (main thread only):")
            profile(variants[TRAINER if petastorm else ARROW])
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
