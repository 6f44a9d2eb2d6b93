import io
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from pyspark.sql import SparkSession

    tmp = tmp_path_factory.mktemp("spark")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    s = (SparkSession.builder.master("local[2]").appName("tests")
         .config("spark.ui.enabled", "false")
         .config("spark.sql.shuffle.partitions", "2")
         .config("spark.sql.warehouse.dir", str(tmp / "warehouse"))
         .config("spark.local.dir", str(tmp / "local"))
         .config("spark.driver.memory", "2g")
         .getOrCreate())
    s.sparkContext.setLogLevel("ERROR")
    yield s
    s.stop()


def png_bytes(arr: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format=fmt)
    return buf.getvalue()


def job_env() -> dict[str, str]:
    """The environment scripts/env.sh gives the jobs."""
    venv_bin = str(Path(sys.executable).parent)
    env = dict(os.environ)
    env.update(PATH=venv_bin + os.pathsep + env.get("PATH", ""), PYSPARK_PYTHON=sys.executable,
               PYSPARK_DRIVER_PYTHON=sys.executable, SPARK_CONF_DIR=str(ROOT / "conf" / "spark"))
    return env


def hive_conf(directory) -> list[str]:
    """spark-submit flags for a persistent catalog: Spark's Hive support with a local Derby
    metastore and warehouse under ``directory``, shared by every application given them."""
    return ["--conf", "spark.sql.catalogImplementation=hive",
            "--conf", f"spark.sql.warehouse.dir={directory}/warehouse",
            "--conf", "spark.hadoop.javax.jdo.option.ConnectionURL="
                      f"jdbc:derby:;databaseName={directory}/metastore_db;create=true",
            "--driver-java-options", f"-Dderby.system.home={directory}"]
