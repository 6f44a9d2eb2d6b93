"""The accuracy cost of DP-SGD (train.privacy) on the real breast-cancer table, against the same
training without it, in the same run.

    source scripts/env.sh
    nice -n 5 python bench/dp_bench.py                       # sigma 1.0 and 0.5, 3 seeds; a few minutes
    python bench/dp_bench.py --noise 1.0 --seeds 1 --epochs 30

One preprocess of ``conf/breast_cancer.yaml`` (569 real cases) in a local Spark session, then
``train.run_local`` (one rank, train.backend=torch, the conf's MLP, ``--epochs`` epochs, batch 16)
per seed: once without DP-SGD, then once per ``--noise`` multiplier (max_grad_norm ``--clip``,
delta 1e-5). Printed per variant: the median test accuracy and macro F1 over the seeds, epsilon,
and the accuracy as a ratio of the non-private run's.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--noise", type=float, nargs="+", default=[1.0, 0.5])
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()

    from pipeline import preprocess, train
    from pipeline.core.config import load_config
    from pipeline.samples import sample_data
    from pipeline.spark.session import get_spark

    with tempfile.TemporaryDirectory() as d:
        base = [f"lake.root={d}", "tracking.enabled=false", "train.backend=torch", "train.num_proc=1",
                f"train.epochs={args.epochs}"]
        cfg = load_config(str(ROOT / "conf/breast_cancer.yaml"), base)
        spark = get_spark("dp-bench", cfg)
        try:
            sample_data.write_breast_cancer(cfg, "2024-01-01")
            preprocess.run(spark, cfg)
        finally:
            spark.stop()
        variants = {"no DP": []} | {f"DP sigma={s}": [f"train.privacy.noise_multiplier={s}",
                                                        f"train.privacy.max_grad_norm={args.clip}"] for s in args.noise}
        results: dict[str, list[dict]] = {v: [] for v in variants}
        for seed in range(args.seeds):
            for name, extra in variants.items():
                m = train.run_local(load_config(str(ROOT / "conf/breast_cancer.yaml"),
                                                [*base, f"train.seed={42 + seed}", *extra]))
                results[name].append(m.metrics)
    ref = statistics.median(m["test_accuracy"] for m in results["no DP"])
    print(f"{'variant':<16} {'test acc':>9} {'macro F1':>9} {'epsilon':>8} {'acc / no DP':>12}")
    for name, ms in results.items():
        acc = statistics.median(m["test_accuracy"] for m in ms)
        f1 = statistics.median(m["test_macro_f1"] for m in ms)
        eps = ms[0].get("dp_epsilon")
        print(f"{name:<16} {acc:>9.4f} {f1:>9.4f} {'-' if eps is None else f'{eps:.2f}':>8} {acc / ref:>12.3f}")


if __name__ == "__main__":
    main()
