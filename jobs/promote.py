"""python jobs/promote.py --config conf/digits.yaml --model digits-cnn --from candidate --to champion \
      --require "test_accuracy>=0.95"

Moves the alias --to of a registered model to the version --from points at, only when every
--require gate holds against that version's training run. Exit codes: 0 promoted, 1 a gate
failed (the metric is named) or the registry failed, 2 invalid config, gate, name or alias.
"""
import sys

from pipeline.core.layout import validate_name
from pipeline.spark import cli
from pipeline.ops import promote


def add_args(p):
    p.add_checked("--model", check=validate_name, help="registered model name (default: train.model_name)")
    p.add_checked("--from", check=validate_name, dest="from_alias", default="candidate",
                  help="alias to promote (default: candidate)")
    p.add_checked("--to", check=validate_name, dest="to_alias", default="champion", help="alias to move (default: champion)")
    p.add_argument("--require", dest="gates", action="append", default=[], type=_gate, metavar="METRIC>=VALUE",
                   help="gate on a metric of the training run, e.g. 'test_accuracy>=0.95' (repeatable)")


def _gate(text):
    try:
        return promote.parse_gate(text)
    except ValueError as e:
        import argparse

        raise argparse.ArgumentTypeError(str(e)) from None


def main(spark, cfg, args):
    r = promote.run(cfg, args.model or cfg.train.model_name, args.from_alias, args.to_alias, args.gates)
    gates = ", ".join(f"{g['metric']}={g['value']:.4f} {g['op']} {g['threshold']:g}" for g in r["gates"]) or "no gate"
    print(f"promoted {r['name']} version {r['version']}: @{r['from']} -> @{r['to']} ({gates})")


if __name__ == "__main__":
    sys.exit(cli.run_job("promote", __doc__, main, add_args, needs_spark=lambda a: False))
