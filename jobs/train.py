"""spark-submit jobs/train.py --config conf/digits.yaml [--resume RUN_ID] [--set key=value ...]"""
import sys

from pipeline import cli, train


def add_args(p):
    p.add_argument("--resume", metavar="RUN_ID", help="continue this run from its latest checkpoint")


def main(spark, cfg, args):
    m = train.run(spark, cfg, run_id=args.resume)
    print(f"test accuracy: {m['test_accuracy']:.4f} (model {m['model_uri']})")


if __name__ == "__main__":
    sys.exit(cli.run_job("train", __doc__, main, add_args))
