"""spark-submit jobs/preprocess.py --config conf/digits.yaml [--set key=value ...]"""
import sys

from pipeline.spark import cli
from pipeline import preprocess


def main(spark, cfg, args):
    m = preprocess.run(spark, cfg)
    print(f"curated {m.output_count} of {m.input_count} records ({m.quarantined_count} quarantined) -> {m.uri}")


if __name__ == "__main__":
    sys.exit(cli.run_job("preprocess", __doc__, main))
