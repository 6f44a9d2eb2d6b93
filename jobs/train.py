"""Train a model on the curated dataset with Horovod ranks.

  spark-submit jobs/train.py --config conf/digits.yaml                 # ranks on Spark executors
  horovodrun -np 2 python jobs/train.py --config conf/digits.yaml      # ranks started by horovodrun
  python jobs/train.py --config conf/digits.yaml --launcher local      # one process, for debugging
Add --resume RUN_ID to continue a run from its latest checkpoint.
"""
import os
import sys

from pipeline import cli, train


def add_args(p):
    p.add_argument("--resume", metavar="RUN_ID", help="continue this run from its latest checkpoint")
    p.add_argument("--launcher", choices=["spark", "horovodrun", "local"],
                   help="default: horovodrun when started by horovodrun, else spark")


def launcher(args):
    # horovodrun exports HOROVOD_RANK to every process it starts.
    return args.launcher or ("horovodrun" if "HOROVOD_RANK" in os.environ else "spark")


def main(spark, cfg, args):
    mode = launcher(args)
    if mode == "spark":
        m = train.run(spark, cfg, run_id=args.resume)
    elif mode == "horovodrun":
        m = train.run_horovodrun(cfg, run_id=args.resume)
    else:
        m = train.run_local(cfg, run_id=args.resume)
    if m is not None:  # rank 0
        print(f"test accuracy: {m['test_accuracy']:.4f} (model {m['model_uri']})")


if __name__ == "__main__":
    sys.exit(cli.run_job("train", __doc__, main, add_args, needs_spark=lambda a: launcher(a) == "spark"))
