"""spark-submit jobs/score.py --config conf/digits.yaml --date YYYY-MM-DD [--model NAME@RUN_ID|NAME@latest|NAME@ALIAS]

Exit codes: 0 success, 1 failure, 2 invalid config or argument, 3 no input for the date,
4 drift: predictions published, but a feature's PSI is above score.drift.fail_above.
"""
import sys
from datetime import date

from pipeline.core.layout import validate_date, validate_model_ref
from pipeline.spark import cli
from pipeline import score


def add_args(p):
    p.add_checked("--date", check=validate_date, default=date.today().isoformat(),
                  help="partition to score, YYYY-MM-DD (default: today)")
    p.add_checked("--model", check=validate_model_ref,
                  help="NAME@RUN_ID, NAME@latest, NAME@ALIAS or models:/NAME@ALIAS (default: score.model)")


def main(spark, cfg, args):
    m = score.run(spark, cfg, args.date, args.model)
    print(f"predictions: {m.output_count} rows ({m.quarantined_count} quarantined) -> {m.uri}")


if __name__ == "__main__":
    sys.exit(cli.run_job("score", __doc__, main, add_args))
