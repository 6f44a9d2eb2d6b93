"""Train a model on the curated dataset with Horovod or torch.distributed (DDP) ranks.

  spark-submit jobs/train.py --config conf/digits.yaml                       # ranks on Spark executors
  horovodrun -np 2 python jobs/train.py --config conf/digits.yaml            # ranks started by horovodrun
  torchrun --nproc_per_node 2 jobs/train.py --config conf/digits.yaml        # ranks started by torchrun (DDP)
  python jobs/train.py --config conf/digits.yaml --launcher local            # one process, for debugging
Under spark-submit, train.backend picks horovod.spark.run (horovod) or TorchDistributor (torch).
Add --resume RUN_ID to continue a run from its latest checkpoint.
"""
import logging
import os
import sys

from pipeline.core.layout import validate_run_id
from pipeline.spark import cli
from pipeline import train


def add_args(p):
    p.add_checked("--resume", check=validate_run_id, metavar="RUN_ID", help="continue this run from its latest checkpoint")
    p.add_argument("--launcher", choices=["spark", "horovodrun", "torchrun", "local"],
                   help="default: horovodrun or torchrun when started by one of them, else spark")


def launcher(args):
    # horovodrun exports HOROVOD_RANK to every process it starts, torchrun TORCHELASTIC_RUN_ID.
    if args.launcher:
        return args.launcher
    if "HOROVOD_RANK" in os.environ:
        return "horovodrun"
    return "torchrun" if "TORCHELASTIC_RUN_ID" in os.environ else "spark"


def main(spark, cfg, args):
    mode = launcher(args)
    result: train.TrainResult | None
    if mode == "spark":
        result = train.run(spark, cfg, run_id=args.resume)
    elif mode == "horovodrun":
        result = train.run_horovodrun(cfg, run_id=args.resume)
    elif mode == "torchrun":
        result = train.run_torchrun(cfg, run_id=args.resume)
    else:
        result = train.run_local(cfg, run_id=args.resume)
    if result is not None:  # rank 0
        # One line per test metric, the monitored one first: "test accuracy: 0.9812 (model ...)".
        for k, v in result.test_metrics().items():
            print(f"test {k.removeprefix('test_')}: {v:.4f} (model {result.model_uri})")


def leave(code: int) -> None:
    if code and "TORCHELASTIC_RUN_ID" in os.environ:
        # A torchrun rank that failed still holds its process group: torch's C++ threads can abort
        # the interpreter's shutdown (SIGABRT, "terminate called without an active exception"),
        # which torchrun would report instead of the job's exit code. Leave without that shutdown.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    leave(cli.run_job("train", __doc__, main, add_args, needs_spark=lambda a: launcher(a) == "spark"))
