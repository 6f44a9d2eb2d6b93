"""The cost of explanations: scoring time with ``score.explain`` on against the same scoring off.

    source scripts/env.sh
    nice -n 5 python bench/explain_bench.py                  # breast cancer and digits, ~3 min on 2 cores
    python bench/explain_bench.py --rows 20000 --images 2000 --repeats 3 --n-steps 50

Lake (a temporary directory): ``pipeline.samples.sample_data`` writes the bundled breast-cancer
table and digits; ``pipeline.preprocess.run`` curates them and ``pipeline.train.run_local``
trains each config's model (the MLP, the digits CNN) with ``train.epochs=2``. The held-out rows
are repeated under new ids to ``--rows`` table rows (one CSV) and the held-out digits copied
under new names to ``--images`` files: one scoring partition each.

Timed: ``pipeline.score.run(spark, cfg, date)`` on one warm local[2] session (tracking off),
explanations off (the baseline) and on (integrated gradients, ``--n-steps``), same model, same
partition, alternating, best of ``--repeats`` each after one untimed run of each (Python worker
start-up, the per-worker model load). Printed: the seconds of each and on / off; the manifest's
completeness figures of the explained run.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline import preprocess, score, train  # noqa: E402
from pipeline.core import lake  # noqa: E402
from pipeline.core.config import load_config  # noqa: E402
from pipeline.samples import sample_data  # noqa: E402
from pipeline.spark.session import get_spark  # noqa: E402

HELD_OUT, BENCH_DATE = "2026-05-01", "2026-05-02"


def _table_partition(cfg, rows: int) -> None:
    src = cfg.resolve(cfg.dataset.score_source)
    lines = [line for f, _ in lake.list_files(f"{src}/dt={HELD_OUT}")
             for line in lake.read_bytes(f).decode().splitlines()]
    header, body = lines[0], [line for line in lines[1:] if line and line != lines[0]]
    out = [header]
    for i in range(rows):
        first, rest = body[i % len(body)].split(",", 1)
        out.append(f"{first}-{i},{rest}")
    lake.write_bytes(f"{src}/dt={BENCH_DATE}/rows.csv", ("\n".join(out) + "\n").encode())


def _image_partition(cfg, images: int) -> None:
    src = cfg.resolve(cfg.dataset.score_source)
    files = sorted(u for u, _ in lake.list_files(f"{src}/dt={HELD_OUT}"))
    for i in range(images):
        lake.write_bytes(f"{src}/dt={BENCH_DATE}/{i:06d}.png", lake.read_bytes(files[i % len(files)]))


def _time(spark, cfg) -> tuple[float, dict]:
    t0 = time.perf_counter()
    m = score.run(spark, cfg, BENCH_DATE)
    return time.perf_counter() - t0, m.manifest


def bench(spark, conf: str, root: str, write, make_partition, size: int, args) -> None:
    base = [f"lake.root={root}", "train.epochs=2", "tracking.enabled=false", "spark.master=local[2]"]
    cfg = load_config(conf, base)
    write(cfg, HELD_OUT)
    preprocess.run(spark, cfg)
    train.run_local(cfg)
    make_partition(cfg, size)
    on = load_config(conf, [*base, "score.explain.method=integrated_gradients", f"score.explain.n_steps={args.n_steps}"])
    _time(spark, cfg), _time(spark, on)  # warm-up: workers, model loads
    off_s, on_s, m = [], [], {}
    for _ in range(args.repeats):
        off_s.append(_time(spark, cfg)[0])
        t, m = _time(spark, on)
        on_s.append(t)
    print(f"{cfg.dataset.name}: {m['output_count']} rows scored; off {min(off_s):.2f} s, explained "
          f"{min(on_s):.2f} s (integrated gradients, n_steps={args.n_steps}): on / off = {min(on_s) / min(off_s):.2f}; "
          f"completeness {m['explain']['completeness']:.4f} of rows, max relative gap "
          f"{m['explain']['max_relative_gap']:.2e}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=20_000, help="table rows scored")
    p.add_argument("--images", type=int, default=2_000, help="images scored (0: skip images)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--n-steps", type=int, default=50)
    p.add_argument("--lake", default="", help="a directory for the lake (default: a temporary one, removed)")
    args = p.parse_args()
    root = args.lake or tempfile.mkdtemp(prefix="explain-bench-")
    spark = get_spark("bench:explain", load_config("conf/breast_cancer.yaml", ["spark.master=local[2]"]))
    try:
        bench(spark, "conf/breast_cancer.yaml", f"{root}/tables", sample_data.write_breast_cancer, _table_partition,
              args.rows, args)
        if args.images:
            bench(spark, "conf/digits.yaml", f"{root}/images", sample_data.write_digits, _image_partition,
                  args.images, args)
    finally:
        spark.stop()
        if not args.lake:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
