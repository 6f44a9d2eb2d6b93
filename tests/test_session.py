"""The session's tuned defaults, and who wins over them: spark-submit --conf, then the config."""
from conftest import ROOT, job_env, spark_submit

PROBE = """
import sys
from pipeline.core.config import load_config
from pipeline.spark.session import get_spark
spark = get_spark("probe", load_config(None, sys.argv[1:]))
for k in ("spark.sql.files.openCostInBytes", "spark.sql.codegen.hugeMethodLimit",
          "spark.sql.execution.arrow.maxRecordsPerBatch"):
    print(f"CONF {k}={spark.conf.get(k)}")
spark.stop()
"""


def _probe(tmp_path, submit_args=(), overrides=()):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = job_env()
    env["PYTHONPATH"] = str(ROOT)
    out = spark_submit(script, *overrides, master="local[1]", spark_args=submit_args, env=env, timeout=300)
    return dict(line[5:].split("=", 1) for line in out.stdout.splitlines() if line.startswith("CONF "))


def test_shipped_defaults_and_who_wins_over_them(tmp_path):
    got = _probe(tmp_path, ["--conf", "spark.sql.files.openCostInBytes=12345"],
                 ["spark.conf.spark.sql.execution.arrow.maxRecordsPerBatch=64"])
    assert got == {"spark.sql.files.openCostInBytes": "12345",            # spark-submit --conf
                   "spark.sql.codegen.hugeMethodLimit": "8000",           # shipped default
                   "spark.sql.execution.arrow.maxRecordsPerBatch": "64"}  # config spark.conf
