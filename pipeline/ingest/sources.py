"""Where preprocess and score read from: one thin adapter per kind of source.

``dataset.source`` and ``dataset.score_source`` take

- a path or URI (``file://``, ``hdfs://``, ``s3a://``, an absolute ``/path``; relative paths
  resolve under ``lake.root``), read with Spark's reader for ``dataset.tabular.format`` (any
  format Spark reads: csv, json, parquet, orc, text; avro or delta with their packages) and
  ``dataset.tabular.options`` passed through unchanged. Partition directories (``dt=.../``) give
  columns that are declared like any other;
- ``table:<db.name>``, a table of the session's catalog;
- ``query:<SQL>``, a query; ``{date}`` in it is the date being scored.

Every adapter gives a DataFrame of the declared columns, typed columns kept typed (a double
stays a double; ids, labels and categories are cast to text by Spark), plus Spark's
``_corrupt_record`` for CSV and JSON records its reader could not parse. What comes after is one
implementation on Arrow batches (pipeline/tabular.py).

Plain CSV, JSON-lines or Parquet files without reader options may instead be read by the tasks
themselves with pyarrow (``fast_path``), which gives the same output (tests/test_parity.py).

A missing or empty path, an unknown table or a query that fails raises ``SourceError``, a
one-line message naming the source, before any task runs.
"""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipeline.core import lake
from pipeline.core.layout import LakeLayout, validate_date
from pipeline.spark.cli import InputError
from pipeline.core.config import TabularConf

TABLE, QUERY = "table:", "query:"
CORRUPT = "_corrupt_record"
PASSTHROUGH = "__passthrough__"  # prefix of the extra columns ``declared`` carries along
FAST_FORMATS = ("csv", "json", "parquet")
_NUMBER_TYPES = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType, T.DecimalType)


class SourceError(InputError):
    """The source does not exist, is empty, or cannot be read; the message names it."""


def kind(source: str) -> str:
    return "table" if source.startswith(TABLE) else "query" if source.startswith(QUERY) else "path"


def for_date(source: str, date: str) -> str:
    """The score side's source for one date: ``{date}`` substituted in a query or path; a path
    without it gets ``/dt=<date>`` (the partition layout), a table is read as it is (and
    filtered on its ``dt`` column by ``read``)."""
    if kind(source) == "table":
        return source
    if kind(source) == "query":  # a checked date (YYYY-MM-DD) holds no quote
        return source.replace("{date}", validate_date(date))
    return LakeLayout.dated(source, date)


def listing(source: str) -> list[tuple[str, int]]:
    """The non-empty files under a path source; SourceError if there are none."""
    files = lake.list_files(source)
    if not files and not lake.exists(source):
        raise SourceError(f"source {source} does not exist")
    if not [f for f in files if f[1] > 0]:
        raise SourceError(f"source {source} is empty: no files with data under it")
    return files


def fast_path(source: str, tab: TabularConf, files: list[tuple[str, int]], extra: Sequence[str] = ()) -> bool:
    """Whether the tasks can read the files themselves with pyarrow: plain CSV (header, comma,
    double quote), JSON lines or Parquet, no reader options, no partition directories, no
    passthrough columns."""
    if tab.reader != "auto" or kind(source) != "path" or tab.format not in FAST_FORMATS or extra:
        return False
    if {k.lower(): v.lower() for k, v in tab.options.items()} not in ({}, {"header": "true"}):
        return False
    root = source.rstrip("/") + "/"
    return not any("=" in seg for u, _ in files for seg in u[len(root):].split("/")[:-1])


@contextmanager
def reading(spark: SparkSession, arrow_rows: int | None = None):
    """Session settings while a job reads a source: CSV records are checked against all their
    fields whichever columns are selected (with Spark's column pruning a ragged record is only
    malformed if a selected field is affected), and, if given, Arrow batches of ``arrow_rows``
    rows into the Python tasks (validation works a column at a time)."""
    settings = {"spark.sql.csv.parser.columnPruning.enabled": "false",
                **({"spark.sql.execution.arrow.maxRecordsPerBatch": str(arrow_rows)} if arrow_rows else {})}
    before = {k: spark.conf.get(k, None) for k in settings}
    for k, v in settings.items():
        spark.conf.set(k, v)
    try:
        yield
    finally:
        for k, old in before.items():
            spark.conf.unset(k) if old is None else spark.conf.set(k, old)


def max_piece_bytes(spark: SparkSession) -> int:
    """spark.sql.files.maxPartitionBytes: the most input bytes one task reads at a time."""
    return int(spark._jsparkSession.sessionState().conf().filesMaxPartitionBytes())


def num_read_tasks(spark: SparkSession, total_bytes: int) -> int:
    """One per core at least, and one per spark.sql.files.maxPartitionBytes of input."""
    return max(spark.sparkContext.defaultParallelism, -(-total_bytes // max_piece_bytes(spark)))


def _first_line(e: BaseException) -> str:
    text = str(getattr(e, "desc", None) or e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load(spark: SparkSession, source: str, tab: TabularConf, date: str | None = None) -> DataFrame:
    """The source as a DataFrame with every column it has (nothing is validated yet)."""
    k = kind(source)
    if k == "table":
        name = source[len(TABLE):].strip()
        if not spark.catalog.tableExists(name):
            raise SourceError(f"unknown table {name} (source {source}): not in the session's catalog "
                              f"({spark.conf.get('spark.sql.catalogImplementation', 'in-memory')})")
        df = spark.table(name)
        if date is not None and "dt" in df.columns:
            df = df.where(F.col("dt").cast("string") == date)
        return df
    if k == "query":
        sql = source[len(QUERY):].strip()
        try:
            df = spark.sql(sql)
            df.schema  # analysed now: an unknown table or column fails here, not in a task
        except Exception as e:  # noqa: BLE001 - Spark's parse and analysis errors
            raise SourceError(f"query failed: {_first_line(e)} (source {source})") from None
        return df
    listing(source)
    fmt = tab.format.lower()
    opts = {**({"header": "true"} if fmt == "csv" else {}), **tab.options}
    try:
        reader = spark.read.format(fmt).options(**opts)
        df = reader.load(source)
        if fmt == "csv":
            # Every column as text, plus the records the parser could not split (PERMISSIVE mode).
            schema = T.StructType([T.StructField(c, T.StringType()) for c in df.columns] +
                                  [T.StructField(CORRUPT, T.StringType())])
            df = reader.schema(schema).option("columnNameOfCorruptRecord", CORRUPT).load(source)
    except Exception as e:  # noqa: BLE001 - e.g. an unknown format, a file that is not Parquet
        raise SourceError(f"cannot read {source} as {fmt}: {_first_line(e)}") from None
    return df


def declared(df: DataFrame, tab: TabularConf, regression: bool = False, extra: Sequence[str] = ()) -> DataFrame:
    """The declared columns (and ``extra`` untouched, named PASSTHROUGH + name): numerics kept as
    numbers where typed, the id, label and categories as Spark's text; the corrupt-record column
    if the reader has one."""
    types = {f.name: f.dataType for f in df.schema.fields}
    numeric = set(tab.numeric) | ({tab.label_column} if regression else set())
    cols = []
    for c in [tab.id_column, tab.label_column, *tab.numeric, *tab.categorical]:
        if not c or c not in types:
            continue
        typed_number = c in numeric and isinstance(types[c], _NUMBER_TYPES)
        cols.append(F.col(f"`{c}`") if typed_number or isinstance(types[c], T.StringType)
                    else F.col(f"`{c}`").cast("string").alias(c))
    cols += [F.col(f"`{c}`").alias(PASSTHROUGH + c) for c in extra]
    if CORRUPT in types:
        cols.append(F.col(CORRUPT))
    return df.select(*cols)
