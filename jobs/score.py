"""spark-submit jobs/score.py --config conf/digits.yaml --date YYYY-MM-DD [--model NAME@RUN_ID|NAME@latest]

Exit codes: 0 success, 1 failure, 2 invalid config, 3 no input for the date.
"""
import sys
from datetime import date

from pipeline import cli, score


def add_args(p):
    p.add_argument("--date", default=date.today().isoformat(), help="partition to score (default: today)")
    p.add_argument("--model", help="NAME@RUN_ID or NAME@latest (default: score.model)")


def main(spark, cfg, args):
    m = score.run(spark, cfg, args.date, args.model)
    print(f"predictions: {m['output_count']} rows ({m['quarantined_count']} quarantined) -> {m['uri']}")


if __name__ == "__main__":
    sys.exit(cli.run_job("score", __doc__, main, add_args))
