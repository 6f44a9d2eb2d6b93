"""Where preprocess and score read from: one thin adapter per kind of source.

``dataset.source`` and ``dataset.score_source`` take

- a path or URI (``file://``, ``hdfs://``, ``s3a://``, an absolute ``/path``; relative paths
  resolve under ``lake.root``), read with Spark's reader for ``dataset.tabular.format`` (any
  format Spark reads: csv, json, parquet, orc, text; avro or delta with their packages) and
  ``dataset.tabular.options`` passed through unchanged. Partition directories (``dt=.../``) give
  columns that are declared like any other;
- ``table:<db.name>``, a table of the session's catalog;
- ``query:<SQL>``, one read-only query that calls no Java method by reflection (checked on
  its parsed and analysed plans before it runs: ``QueryRefused`` otherwise); ``{date}`` in it
  is the date being scored, bound as a string parameter.

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

import re
from collections.abc import Sequence
from contextlib import contextmanager

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipeline.core import lake
from pipeline.core.layout import LakeLayout, validate_date
from pipeline.spark.cli import InputError
from pipeline.core.config import ConfigError, TabularConf

TABLE, QUERY = "table:", "query:"
CORRUPT = "_corrupt_record"
PASSTHROUGH = "__passthrough__"  # prefix of the extra columns ``declared`` carries along
FAST_FORMATS = ("csv", "json", "parquet")
_NUMBER_TYPES = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType, T.DecimalType)


class SourceError(InputError):
    """The source does not exist, is empty, or cannot be read; the message names it."""


class QueryRefused(ConfigError):
    """A ``query:`` source that is not one read-only query (an INSERT, a CREATE, a SET, ...):
    refused before it runs, as an invalid config (exit code 2)."""


def kind(source: str) -> str:
    return "table" if source.startswith(TABLE) else "query" if source.startswith(QUERY) else "path"


def for_date(source: str, date: str) -> str:
    """The score side's source for one date: ``{date}`` substituted in a path; a path without it
    gets ``/dt=<date>`` (the partition layout). A query keeps its ``{date}``, which ``load``
    binds as a parameter; a table is read as it is (and filtered on its ``dt`` column by
    ``load``). The date is checked (YYYY-MM-DD) whatever the source."""
    if kind(source) == "path":
        return LakeLayout.dated(source, date)
    validate_date(date)
    return source


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


# A string literal, a comment or a quoted identifier (left as they are, but for a ``{date}`` in a
# literal), or a bare ``{date}``: scanned left to right, so a ``{date}`` matches on its own only
# outside literals and comments.
_SQL_TOKENS = re.compile(r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|`(?:[^`]|``)*`|--[^\n]*|/\*.*?\*/|\{date\}""",
                         re.DOTALL)
DATE_MARKER = ":date"


def bind_date(sql: str) -> str:
    """The query with each ``{date}`` turned into the named parameter marker ``:date``, bound as
    a string by ``spark.sql(sql, args={"date": ...})``: ``'{date}'``, ``"{date}"`` and a bare
    ``{date}`` become ``:date``; a literal with more around it, ``'dt={date}'``, becomes
    ``concat('dt=', :date)``. The date's text never enters the SQL."""
    def sub(m: re.Match[str]) -> str:
        t = m.group()
        if t == "{date}":
            return DATE_MARKER
        if t[0] not in "'\"" or "{date}" not in t:
            return t
        q, parts = t[0], t[1:-1].split("{date}")
        pieces = [p for part in parts for p in (f"{q}{part}{q}", DATE_MARKER)][:-1]
        pieces = [p for p in pieces if p != q + q]
        return pieces[0] if len(pieces) == 1 else f"concat({', '.join(pieces)})"
    return _SQL_TOKENS.sub(sub, sql)


_COMMAND = "org.apache.spark.sql.catalyst.plans.logical.Command"
# Statements the parser gives as plain plan nodes rather than Commands (INSERT INTO, INSERT
# OVERWRITE DIRECTORY), and any other statement named like one.
_STATEMENT = re.compile(r"(Insert|Create|Drop|Alter|Delete|Update|Merge|Replace|Truncate|Cache|Uncache|Set|Use|"
                        r"Refresh|Load|Analyze|Msck|Repair|Rename|Comment|Overwrite|Append|Write)(?=[A-Z]|$)")
_KINDS = {"InsertIntoStatement": "INSERT", "InsertIntoDir": "INSERT OVERWRITE DIRECTORY",
          "SetCatalogAndNamespace": "USE", "CompoundBody": "BEGIN ... END script"}


def _statement_kind(simple_name: str) -> str:
    """A plan node's class name as the statement it parses from: DropTable -> DROP TABLE."""
    if simple_name in _KINDS:
        return _KINDS[simple_name]
    base = re.sub(r"(Command|Statement)$", "", simple_name) or simple_name
    return " ".join(re.findall(r"[A-Z][a-z0-9]*|[a-z0-9]+", base)).upper()


def _is_command(cls) -> bool:  # a py4j java.lang.Class
    todo, seen = [cls], set()
    while todo:
        c = todo.pop()
        if c is None or (name := c.getName()) in seen:
            continue
        if name == _COMMAND:
            return True
        seen.add(name)
        todo += [c.getSuperclass(), *c.getInterfaces()]
    return False


# The expressions that call a Java method named in the query (reflect, java_method; try_reflect
# since Spark 4.0, which wraps the first): a query could run any static method on the classpath.
# A function is refused if the catalog implements it with one of these classes, whatever its name,
# or if it has one of their names, whatever this Spark version has under it.
_REFLECTION = {f"org.apache.spark.sql.catalyst.expressions.{c}" for c in ("CallMethodViaReflection", "TryReflect")}
_REFLECTION_NAMES = {"reflect", "java_method", "try_reflect"}
_UNRESOLVED_FUNCTION = "org.apache.spark.sql.catalyst.analysis.UnresolvedFunction"


def check_read_only(spark: SparkSession, sql: str, source: str) -> None:
    """Parse ``sql`` with the session's parser and walk every node of the plan (children, CTE
    definitions, subqueries): QueryRefused naming the statement if one is a Command (CREATE,
    DROP, ALTER, SET, USE, CACHE, EXPLAIN, a script, ...) or an INSERT, or naming the function
    if an expression calls one that the session's catalog implements by Java reflection
    (``reflect``, ``java_method``, ``try_reflect``), before anything runs. A text that does not
    parse as one statement (``SELECT 1; DROP TABLE t``) is a SourceError."""
    try:
        plan = spark._jsparkSession.sessionState().sqlParser().parsePlan(sql)
    except Exception as e:  # noqa: BLE001 - Spark's ParseException
        raise SourceError(f"query failed: {_first_line(e)} (source {_one_line(source)})") from None
    checked: dict[str, str | None] = {}  # class name -> the statement it is, or None
    functions: dict[str, str | None] = {}  # function name as written -> the class implementing it
    for node in _plan_nodes(plan):
        cls = node.getClass()
        name = cls.getName()
        if name not in checked:
            simple = cls.getSimpleName()
            checked[name] = _statement_kind(simple) if _STATEMENT.match(simple) or _is_command(cls) else None
        if checked[name]:
            raise QueryRefused(f"query refused: {checked[name]} is not a read-only query; only read-only SELECT "
                               f"queries are allowed (source {_one_line(source)})")
        for expr in _expressions(node):
            if expr.getClass().getName() != _UNRESOLVED_FUNCTION:
                continue
            parts = [expr.nameParts().apply(i) for i in range(expr.nameParts().size())]
            written = ".".join(parts)
            if written not in functions:
                functions[written] = _function_class(spark, parts)
            if functions[written] in _REFLECTION or parts[-1].lower() in _REFLECTION_NAMES:
                _refuse_reflection(written, source)


def check_no_reflection(plan, source: str) -> None:
    """QueryRefused if an expression of the analysed ``plan`` calls a Java method by reflection:
    the parsed plan's check cannot see into a view, whose text the analyser expands."""
    for node in _plan_nodes(plan):
        for expr in _expressions(node):
            if expr.getClass().getName() in _REFLECTION:
                _refuse_reflection(expr.prettyName(), source)


def _refuse_reflection(function: str, source: str) -> None:
    raise QueryRefused(f"query refused: {function} calls a Java method by reflection; reflect, java_method and "
                       f"try_reflect are not allowed in a query source (source {_one_line(source)})")


def _plan_nodes(plan):
    """Every node of a Catalyst plan (py4j): children, CTE definitions, subqueries' plans."""
    todo = [plan]
    while todo:
        node = todo.pop()
        yield node
        for seq in (node.children(), node.innerChildren(), node.subqueries()):
            todo += [seq.apply(i) for i in range(seq.size())]


def _expressions(node):
    """Every expression of one plan node (py4j), nested ones included."""
    seq = node.expressions()
    todo = [seq.apply(i) for i in range(seq.size())]
    while todo:
        e = todo.pop()
        yield e
        children = e.children()
        todo += [children.apply(i) for i in range(children.size())]


def quoted(name: str) -> str:
    """``name`` as one Spark SQL identifier, whatever characters it holds."""
    return "`" + name.replace("`", "``") + "`"


def _function_class(spark: SparkSession, parts: list[str]) -> str | None:
    """The class the session's catalog implements a function with (None for an unknown function,
    which the analyser then refuses)."""
    name = ".".join(quoted(p) for p in parts)
    try:
        return spark.catalog.getFunction(name).className
    except Exception:  # noqa: BLE001 - AnalysisException: no such function
        return None


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
        args = None
        if date is not None and "{date}" in sql:
            sql, args = bind_date(sql), {"date": validate_date(date)}
        check_read_only(spark, sql, source)
        try:
            df = spark.sql(sql, args=args)
            df.schema  # analysed now: an unknown table or column fails here, not in a task
        except Exception as e:  # noqa: BLE001 - Spark's parse and analysis errors
            raise SourceError(f"query failed: {_first_line(e)} (source {source})") from None
        check_no_reflection(df._jdf.queryExecution().analyzed(), source)
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
