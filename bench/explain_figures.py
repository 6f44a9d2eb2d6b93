"""Explanations of the bundled real data: what the README's Explanations section quotes.

    source scripts/env.sh
    nice -n 5 python bench/explain_figures.py                 # ~5 min on 2 cores
    python bench/explain_figures.py --epochs 10 --n-steps 50 --configs conf/wine.yaml

For each config (breast cancer, wine, diabetes, digits): the bundled sample data in a temporary
lake, ``pipeline.preprocess.run``, ``pipeline.train.run_local`` (``--epochs``), then
``pipeline.score.run`` of the held-out rows with integrated gradients (tracking off). Printed:
the rows explained, the manifest's completeness figures, and for tables the declared columns
most often ranked first and most often in the top 3; for images the share of the attribution
mass (|attribution|) in the central half of the image.
"""
from __future__ import annotations

import argparse
import collections
import os
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline import preprocess, score, train  # noqa: E402
from pipeline.core import lake  # noqa: E402
from pipeline.core.config import load_config  # noqa: E402
from pipeline.samples import sample_data  # noqa: E402
from pipeline.spark.session import get_spark  # noqa: E402

DATE = "2026-05-01"
WRITERS = {"breast_cancer": sample_data.write_breast_cancer, "wine": sample_data.write_wine,
           "diabetes": sample_data.write_diabetes, "digits": sample_data.write_digits}


def figures(spark, conf: str, root: str, args) -> None:
    import pyarrow.parquet as pq

    cfg = load_config(conf, [f"lake.root={root}", f"train.epochs={args.epochs}", "tracking.enabled=false",
                             "spark.master=local[2]", "score.explain.method=integrated_gradients",
                             f"score.explain.n_steps={args.n_steps}", "score.explain.top_k=3"])
    WRITERS[cfg.dataset.name](cfg, DATE)
    preprocess.run(spark, cfg)
    trained = train.run_local(cfg)
    m = score.run(spark, cfg, DATE)
    t = pq.read_table(lake.local_path(cfg.uri("predictions", cfg.train.model_name, f"dt={DATE}"))).to_pandas()
    ex = m.manifest["explain"]
    test = {k: round(float(v), 3) for k, v in trained.metrics.items() if k in ("test_accuracy", "test_r2")}
    print(f"{cfg.dataset.name} ({cfg.train.task}, {test}): {ex['rows']} rows explained, completeness "
          f"{ex['completeness']:.4f} of rows (max relative gap {ex['max_relative_gap']:.2e}, "
          f"p99 {ex['p99_relative_gap']:.2e})", flush=True)
    if "top_features" in t.columns:
        first = collections.Counter(top[0]["feature"] for top in t["top_features"])
        top3 = collections.Counter(f["feature"] for top in t["top_features"] for f in top)
        n = len(t)
        print("  ranked first: " + ", ".join(f"{c} {k / n:.0%}" for c, k in first.most_common(4)))
        print("  in the top 3: " + ", ".join(f"{c} {k / n:.0%}" for c, k in top3.most_common(5)), flush=True)
    else:
        img = cfg.dataset.image
        maps = np.abs(np.stack([np.frombuffer(b, np.float32).reshape(img.height, img.width) for b in t["attribution"]]))
        h, w = img.height // 4, img.width // 4
        central = maps[:, h:img.height - h, w:img.width - w].sum() / maps.sum()
        print(f"  |attribution| in the central half of the image (a quarter of the pixels): {central:.0%}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["conf/breast_cancer.yaml", "conf/wine.yaml",
                                                    "conf/diabetes.yaml", "conf/digits.yaml"])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--n-steps", type=int, default=50)
    args = p.parse_args()
    root = tempfile.mkdtemp(prefix="explain-figures-")
    spark = get_spark("explain figures", load_config(args.configs[0], ["spark.master=local[2]"]))
    try:
        for i, conf in enumerate(args.configs):
            figures(spark, conf, f"{root}/{i}", args)
    finally:
        spark.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
