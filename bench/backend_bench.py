"""Training step rate of torch.distributed (DDP) against Horovod, world size 2 on the CPU, same data.

    source scripts/env.sh                       # the default profile: it has both backends
    python bench/backend_bench.py               # 3 variants x 2 rounds; about 3 minutes on 2 cores
    python bench/backend_bench.py --rows 40000 --epochs 4 --rounds 3

Data: ``--rows`` 8x8x1 images in the curated layout, written straight to Parquet by
``scripts/gpu_check.py``'s ``write_dataset`` (no Spark), ``--files`` files per split.

Each variant runs ``jobs/train.py`` on 2 ranks with the same config (``conf/digits.yaml``'s CNN,
``--epochs`` epochs, batch 32 per rank, the same seed):

- ``horovod``: ``horovodrun -np 2`` with ``train.backend=horovod``;
- ``torch``:   ``torchrun --nproc_per_node=2`` with ``train.backend=torch`` (DDP over gloo);

both with ``train.reader=arrow``, so only the backend differs, and for reference
``horovod+petastorm``, the default stack as it runs out of the box. The variants run in turn,
``--rounds`` times, so load from other processes hits all of them alike. A run's step rate is
its median epoch after the first (``history.json``: samples/s over all ranks / (batch x ranks)).
Printed: the median step rate of each variant and DDP / Horovod.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from pipeline.core import lake  # noqa: E402
from pipeline.core.layout import LakeLayout  # noqa: E402

BATCH = 32


def variants(python_bin: Path) -> dict[str, tuple[list[str], list[str]]]:
    hvd = [str(python_bin / "horovodrun"), "-np", "2", "-H", "localhost:2", "python", "jobs/train.py"]
    ddp = [str(python_bin / "torchrun"), "--nproc_per_node=2", "--standalone", "jobs/train.py"]
    return {
        "horovod": (hvd, ["train.backend=horovod", "train.reader=arrow"]),
        "torch": (ddp, ["train.backend=torch", "train.reader=arrow"]),
        "horovod+petastorm": (hvd, ["train.backend=horovod", "train.reader=petastorm"]),
    }


def run(lake_root: str, name: str, cmd: list[str], over: list[str], epochs: int) -> float:
    sets = [f"lake.root={lake_root}", "dataset.name=gpu_check", f"train.model_name={name}", f"train.epochs={epochs}",
            f"train.batch_size={BATCH}", "train.num_proc=2", "train.device=cpu", *over]
    p = subprocess.run([*cmd, "--config", "conf/digits.yaml", *[x for o in sets for x in ("--set", o)]],
                       cwd=ROOT, capture_output=True, text=True, timeout=1200)
    if p.returncode != 0:
        raise SystemExit(f"{name}: exited {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    layout = LakeLayout(lake_root)
    run_dir = layout.model_run(name, lake.get_latest(layout.models_root(name)))
    history = lake.read_json(f"{run_dir}/history.json")
    rates = [h["samples_per_s"] / (BATCH * 2) for h in history[1:]] or [history[0]["samples_per_s"] / (BATCH * 2)]
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    import gpu_check

    python_bin = Path(sys.executable).parent
    if not (python_bin / "horovodrun").exists():
        raise SystemExit("bench: horovodrun not found next to this Python: run it on the default profile "
                         "(source scripts/env.sh), which has both backends")
    tmp = Path(tempfile.mkdtemp(prefix="backend_bench_"))
    try:
        lake_root = f"file://{tmp}/lake"
        gpu_check.write_dataset(lake_root, args.rows, args.files)
        print(f"data: {args.rows} rows of 8x8x1 images, {args.files} files per split; 2 ranks, batch {BATCH} per "
              f"rank, {args.epochs} epochs, {args.rounds} rounds; {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f} at the start")
        rates: dict[str, list[float]] = {k: [] for k in variants(python_bin)}
        for r in range(args.rounds):
            for name, (cmd, over) in variants(python_bin).items():
                rates[name].append(run(lake_root, f"{name.replace('+', '-')}-{r}", cmd, over, args.epochs))
                print(f"  round {r + 1}: {name:18} {rates[name][-1]:8.1f} steps/s")
        med = {k: statistics.median(v) for k, v in rates.items()}
        print()
        for name, v in med.items():
            print(f"{name:18} {v:8.1f} steps/s (median of {len(rates[name])})")
        print(f"\nDDP / Horovod (both with the arrow reader) = {med['torch'] / med['horovod']:.2f}")
        print(f"DDP + arrow / Horovod + petastorm (each stack's default) = {med['torch'] / med['horovod+petastorm']:.2f}")
        print(f"load average {os.getloadavg()[0]:.1f} at the end")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
