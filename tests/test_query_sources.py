"""``query:`` sources: one read-only query, checked on its parsed plan before it runs, and the
score date bound as a parameter, never pasted into the SQL."""
import pytest

from pipeline.core.config import ConfigError, load_config
from pipeline.core.layout import InvalidValue
from pipeline.ingest import sources
from conftest import spark_submit
from untouched import Fence

TAB = load_config("conf/wine.yaml").dataset.tabular


@pytest.fixture(scope="module")
def tables(spark):
    """qs.events: rows of two dates; qs.keep: a table the refused statements would change."""
    spark.sql("CREATE DATABASE IF NOT EXISTS qs")
    spark.createDataFrame([("2026-01-01", 1, "a"), ("2026-01-01", 2, "b"), ("2026-01-02", 3, "a")],
                          "dt string, v int, k string").write.mode("overwrite").saveAsTable("qs.events")
    spark.createDataFrame([("a", "left"), ("b", "right")], "k string, side string") \
        .write.mode("overwrite").saveAsTable("qs.keep")
    yield spark
    spark.sql("DROP DATABASE IF EXISTS qs CASCADE")


def _load(spark, sql, date=None):
    return sources.load(spark, "query:" + sql, TAB, date)


REFUSED = {
    "create table as select": ("CREATE TABLE qs.made AS SELECT 1 AS a", "CREATE TABLE AS SELECT"),
    "insert into": ("INSERT INTO qs.keep SELECT 'c', 'new'", "INSERT"),
    "insert from a cte": ("WITH x AS (SELECT 'c' k, 'new' side) INSERT INTO qs.keep SELECT * FROM x", "INSERT"),
    "insert overwrite directory": ("INSERT OVERWRITE DIRECTORY '{tmp}/x' SELECT 1", "INSERT OVERWRITE DIRECTORY"),
    "drop table": ("DROP TABLE qs.keep", "DROP TABLE"),
    "set": ("SET spark.sql.shuffle.partitions=7", "SET"),
    "cache table": ("CACHE TABLE qs.keep", "CACHE TABLE"),
    "use": ("USE qs", "USE"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_statement_that_is_not_a_read_only_query_is_refused_before_it_runs(tables, tmp_path, case):
    spark = tables
    sql, statement = REFUSED[case]
    sql = sql.format(tmp=tmp_path)
    before = dict(partitions=spark.conf.get("spark.sql.shuffle.partitions"), db=spark.catalog.currentDatabase(),
                  keep=sorted(map(tuple, spark.table("qs.keep").collect())))
    with pytest.raises(sources.QueryRefused) as e:
        _load(spark, sql)
    msg = str(e.value)
    assert msg == (f"query refused: {statement} is not a read-only query; only read-only SELECT queries are "
                   f"allowed (source query:{sql})")
    assert isinstance(e.value, ConfigError) and not isinstance(e.value, sources.SourceError)  # exit 2, not 1 or 3
    # Nothing ran: no table, directory, setting, cache entry or current database changed.
    assert not (tmp_path / "x").exists() and not spark.catalog.tableExists("qs.made")
    assert sorted(map(tuple, spark.table("qs.keep").collect())) == before["keep"]
    assert spark.conf.get("spark.sql.shuffle.partitions") == before["partitions"]
    assert spark.catalog.currentDatabase() == before["db"] and not spark.catalog.isCached("qs.keep")


# Each would set a JVM system property if it ran.
CALL = "'java.lang.System', 'setProperty', 'qs.reflected', '{case}'"
REFLECTING = {
    "reflect": ("SELECT reflect({call}) AS r", "reflect"),
    "java_method in a filter": ("SELECT k FROM qs.keep WHERE java_method({call}) IS NULL", "java_method"),
    "upper case in a subquery": ("SELECT k FROM qs.keep WHERE k IN (SELECT REFLECT({call}))", "REFLECT"),
    "in a cte": ("WITH x AS (SELECT `java_method`({call}) AS r) SELECT * FROM x", "java_method"),
    "inside a lambda": ("SELECT transform(array(1), i -> reflect({call})) AS r", "reflect"),
    "try_reflect": ("SELECT try_reflect({call}) AS r", "try_reflect"),
}


@pytest.mark.parametrize("case", REFLECTING)
def test_a_query_calling_java_methods_is_refused_before_it_runs(tables, case):
    spark = tables
    sql, function = REFLECTING[case]
    sql = sql.format(call=CALL.format(case=case))
    with pytest.raises(sources.QueryRefused) as e:
        _load(spark, sql)
    assert str(e.value) == (f"query refused: {function} calls a Java method by reflection; reflect, java_method and "
                            f"try_reflect are not allowed in a query source (source query:{sql})")
    assert isinstance(e.value, ConfigError)  # exit 2
    assert spark._jvm.java.lang.System.getProperty("qs.reflected") is None  # nothing was called


def test_a_view_that_calls_java_methods_is_refused_on_the_analysed_plan(tables):
    """The parsed query names only the view; the analyser expands its text, and the reflection
    in it is refused there, before anything runs."""
    spark = tables
    spark.sql(f"CREATE OR REPLACE TEMPORARY VIEW qs_reflecting AS SELECT reflect({CALL.format(case='view')}) AS r")
    try:
        with pytest.raises(sources.QueryRefused, match=r"^query refused: reflect calls a Java method by reflection"):
            _load(spark, "SELECT r FROM qs_reflecting")
    finally:
        spark.catalog.dropTempView("qs_reflecting")
    assert spark._jvm.java.lang.System.getProperty("qs.reflected") is None


def test_a_second_statement_does_not_parse_and_does_not_run(tables):
    with pytest.raises(sources.SourceError, match="PARSE_SYNTAX_ERROR"):
        _load(tables, "SELECT 1; DROP TABLE qs.keep")
    assert tables.table("qs.keep").count() == 2


def test_a_refusal_is_one_line_whatever_the_query_looks_like(tables):
    with pytest.raises(sources.QueryRefused) as e:
        _load(tables, "DROP TABLE\n  qs.keep")
    assert str(e.value).splitlines() == [str(e.value)] and "source query:DROP TABLE qs.keep)" in str(e.value)


ACCEPTED = {
    "cte": ("WITH x AS (SELECT k, v FROM qs.events WHERE v > 1) SELECT k, v FROM x", [("a", 3), ("b", 2)]),
    "join": ("SELECT e.k, k.side FROM qs.events e JOIN qs.keep k ON e.k = k.k WHERE e.v = 2", [("b", "right")]),
    "subquery": ("SELECT v FROM qs.events WHERE k IN (SELECT k FROM qs.keep WHERE side = 'left') "
                 "AND EXISTS (SELECT 1 FROM qs.keep)", [(1,), (3,)]),
    "union": ("SELECT k FROM qs.keep UNION SELECT 'z' AS k", [("a",), ("b",), ("z",)]),
    "names that are not calls": ("SELECT k AS reflect FROM qs.keep WHERE side = 'java_method' OR k = 'a'",
                                 [("a",)]),
    "window": ("SELECT v, row_number() OVER (PARTITION BY k ORDER BY v DESC) AS n FROM qs.events",
               [(1, 2), (2, 1), (3, 1)]),
}


@pytest.mark.parametrize("case", ACCEPTED)
def test_read_only_queries_are_accepted(tables, case):
    sql, rows = ACCEPTED[case]
    assert sorted(map(tuple, _load(tables, sql).collect())) == rows


def test_the_date_is_bound_as_a_string_parameter(tables):
    spark = tables
    for sql in ("SELECT v FROM qs.events WHERE dt = '{date}'", 'SELECT v FROM qs.events WHERE dt = "{date}"',
                "SELECT v FROM qs.events WHERE dt = {date}", "SELECT v FROM qs.events WHERE concat('dt=', dt) = 'dt={date}'"):
        assert sorted(r["v"] for r in _load(spark, sql, "2026-01-01").collect()) == [1, 2], sql
        assert [r["v"] for r in _load(spark, sql, "2026-01-02").collect()] == [3], sql
    # The date never enters the SQL text: a quote in it is a value compared, not SQL.
    bound = sources.bind_date("SELECT v FROM qs.events WHERE dt = '{date}' -- {date}")
    assert bound == "SELECT v FROM qs.events WHERE dt = :date -- {date}"
    assert spark.sql(bound, args={"date": "x' OR '1'='1"}).count() == 0
    assert sources.bind_date("SELECT 'a{date}b', `{date}`") == "SELECT concat('a', :date, 'b'), `{date}`"
    # ... and the date is checked first anyway; so is it through for_date, which keeps the query.
    with pytest.raises(InvalidValue):
        _load(spark, "SELECT v FROM qs.events WHERE dt = '{date}'", "2026-01-01' OR '1'='1")
    q = "query:SELECT v FROM qs.events WHERE dt = '{date}'"
    assert sources.for_date(q, "2026-01-02") == q
    with pytest.raises(InvalidValue):
        sources.for_date(q, "2026-01-02'--")


def test_a_failing_read_only_query_is_still_a_source_error(tables):
    with pytest.raises(sources.SourceError, match="TABLE_OR_VIEW_NOT_FOUND"):
        _load(tables, "SELECT * FROM qs.nope")


JOB_REFUSED = {
    "insert overwrite directory": ("INSERT OVERWRITE DIRECTORY '{out}' SELECT 1",
                                   "INSERT OVERWRITE DIRECTORY is not a read-only query; only read-only SELECT "
                                   "queries are allowed"),
    "reflect": ("SELECT java_method('java.nio.file.Files', 'createDirectory', '{out}') AS made",
                "java_method calls a Java method by reflection; reflect, java_method and try_reflect are not "
                "allowed in a query source"),
}


@pytest.mark.parametrize("case", JOB_REFUSED)
def test_preprocess_job_refuses_a_writing_query_with_exit_code_2(tmp_path, case):
    """Either query would make the directory ``x`` next to the lake; neither runs."""
    sql, why = JOB_REFUSED[case]
    out = tmp_path / "x"
    sql = sql.format(out=out)
    raw = tmp_path / "lake" / "raw" / "kept.csv"  # the lake's data so far
    raw.parent.mkdir(parents=True)
    raw.write_text("id,label\n1,a\n")
    fence = Fence(tmp_path / "lake")
    p = spark_submit("jobs/preprocess.py", "--config", "conf/breast_cancer.yaml", "--set", f"lake.root={tmp_path}/lake",
                     "--set", f"dataset.source=query:{sql}", check=False)
    reasons = [line for line in (p.stdout + p.stderr).splitlines() if line.startswith("preprocess: ")]
    assert p.returncode == 2, p.stdout[-3000:] + p.stderr[-3000:]
    assert reasons == [f"preprocess: invalid config: query refused: {why} (source query:{sql})"]
    assert "Traceback" not in p.stdout + p.stderr
    assert not out.exists()
    fence.check(may_write=("curated/breast_cancer/_locks/", "mlflow/"))  # the job's lock and its (failed) MLflow run
