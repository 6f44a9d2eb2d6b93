"""Tables: declared id, label, numeric and categorical columns; numeric standardisation and
categorical vocabularies fitted on the train split; an MLP."""
from __future__ import annotations

import json
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from pipeline.core import drift, lake, privacy
from pipeline.core.config import ConfigError, TabularConf
from pipeline.kinds.base import SPLITS, Curated, Kind, Prepared, Scored, Target
from pipeline.kinds.images import sort_labels
from pipeline.model import explain
from pipeline.model.spec import ModelSpec

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import SparkSession

    from pipeline.core.config import Config, ExplainConf


class Tabular(Kind):
    name = "tabular"
    archs = ("mlp",)
    personal_columns = True

    def check_config(self, cfg: Config) -> None:
        tab = cfg.dataset.tabular
        if not tab.numeric and not tab.categorical:
            raise ConfigError("dataset.tabular: declare at least one numeric or categorical column")
        cols = tab.columns()
        dupes = sorted({c for c in cols if cols.count(c) > 1})
        if dupes:
            raise ConfigError(f"dataset.tabular: columns declared twice: {dupes}")
        unknown = [c for c in cfg.score.passthrough if c not in cols]
        if unknown:
            raise ConfigError(f"score.passthrough: {unknown} are not declared columns (dataset.tabular); "
                              f"declare them, e.g. in dataset.tabular.ignore")
        _check_personal(cfg.dataset.privacy.pii_columns, tab, cfg.score.passthrough)
        privacy.from_config(cfg.dataset.privacy)  # the key: exit 2 before anything runs when it is missing

    # --- preprocess --------------------------------------------------------------------------
    def preprocess(self, spark: SparkSession, cfg: Config, source: str, target: Target) -> Curated:
        """Two passes of Python tasks (pipeline/ingest/tabular_tasks.py): read, validate and stage,
        then encode and write with the parameters fitted on the train split in between. The first
        pass reads through Spark's reader (pipeline/ingest/sources.py), or, for plain files, with
        pyarrow in the tasks; both feed the same validation."""
        from pipeline.core import quarantine
        from pipeline.ingest import sources, tabular, tabular_tasks
        from pipeline.spark import tasks

        pii = privacy.from_config(cfg.dataset.privacy)
        tab = privacy.effective(cfg.dataset.tabular, pii)
        regression = cfg.train.task == "regression"
        n_tasks = tasks.num_tasks(spark, cfg.preprocess.files_per_split)
        staging, quarantine_uri = target.staging, target.quarantine
        kw: dict[str, Any] = dict(tab=tab, split=cfg.preprocess.split, staging_uri=staging, quarantine_uri=quarantine_uri,
                  stage_name="preprocess.validate", regression=regression,
                  max_bytes=cfg.preprocess.max_category_bytes, pii=pii)
        files = sources.listing(source) if sources.kind(source) == "path" else []
        if sources.fast_path(source, tab, files):
            pieces = tabular.plan(source, tab, n_tasks, sources.max_piece_bytes(spark), listing=files)
            tabular_tasks.write_pieces(pieces, target.plan("stage"))
            stage = partial(tabular_tasks.stage, plan_uri=target.plan("stage"), **kw)
            rows = tasks.numbers(spark, n_tasks).mapInPandas(stage, tabular_tasks.STAGE_DDL).collect()
        else:
            df = sources.load(spark, source, tab)
            tabular.check_columns([c for c in df.columns if c != sources.CORRUPT], tab, source)
            df = tabular_tasks.with_positions(sources.declared(df, tab, regression))
            with sources.reading(spark, 16_384):
                rows = df.mapInArrow(partial(tabular_tasks.stage_arrow, **kw), tabular_tasks.STAGE_DDL).collect()
        # Rows that share an id, before the statistics are merged: a shuffle of the staged ids.
        results = tabular_tasks.deduplicate(spark, [json.loads(r["stats"]) for r in rows], tab, cfg.preprocess.split,
                                            staging, quarantine_uri, target.plan("keys"), regression)
        by_reason: dict[str, int] = {}
        split_class: dict[tuple[str, str], int] = {}
        for r in results:
            for reason, n in r["bad"].items():
                by_reason[reason] = by_reason.get(reason, 0) + n
            for s, label, n in r["counts"]:
                split_class[(s, label)] = split_class.get((s, label), 0) + n
        output = sum(split_class.values())
        input_count = output + sum(by_reason.values())
        if input_count == 0:
            raise sources.SourceError(f"source {source} has no records")
        quarantine.check_fraction(by_reason, input_count, cfg.preprocess.max_bad_fraction, quarantine_uri)

        label_names = [] if regression else sort_labels(sorted({label for _, label in split_class}))
        fits = [f for r in results for f in r["fits"]]
        params = tabular.merge_fits(fits, tab, pii)
        tasks.write_plans(tabular_tasks.deal(results, n_tasks), target.plan("write"))
        write = partial(tabular_tasks.write_curated, tab=tab, params=params, label_names=label_names,
                        staging_uri=staging, plan_uri=target.plan("write"), split_uris=target.splits(),
                        row_group_bytes=cfg.preprocess.row_group_mb * 1024 * 1024, regression=regression)
        written = sum(r["n"] for r in
                      tasks.numbers(spark, n_tasks).mapInPandas(write, tabular_tasks.WRITE_DDL).collect())
        if written != output:
            raise RuntimeError(f"wrote {written} curated rows, expected {output}: a task's staged input changed")
        train_counts = {label: n for (s, label), n in split_class.items() if s == "train"}
        reference = _drift_reference(spark, cfg, tab, target, results, fits, params, label_names, train_counts,
                                     pii.hashed if pii else [])
        lake.remove(staging)
        return Curated(
            input_count=input_count, output_count=output, by_reason=by_reason,
            split_counts={s: sum(n for (sp, _), n in split_class.items() if sp == s) for s in SPLITS},
            split_class_counts=split_class, label_names=label_names,
            fitted={"tabular": params, **({"label_stats": tabular.label_stats(fits)} if regression else {}),
                    **({"privacy": pii.describe()} if pii else {})},
            schema={"id": "string", "label": "float32" if regression else "int32",
                    "features": f"array<float>[{params['num_features']}]"},
            warnings=[{"code": "all_null_feature", "column": c,
                       "detail": "no value in the train split: the model sees a constant"}
                      for c in tabular.empty_features(fits, tab)],
            drift_reference=reference)

    # --- model -----------------------------------------------------------------------------------
    def input_spec(self, m: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        """The columns as the dataset version was encoded (a hashed numeric is a categorical) and
        its personal columns (never the key: scoring and serving read it from ``key_env``)."""
        pii = privacy.of(m.get("privacy"), need_key=False)
        columns = privacy.effective(TabularConf(**m["config"]["dataset"]["tabular"]), pii)
        return ({"kind": self.name, "field": "features", "tabular": m["tabular"], "columns": vars(columns),
                 **({"privacy": pii.describe()} if pii else {})}, [m["tabular"]["num_features"]])

    # --- scoring ---------------------------------------------------------------------------------
    def score(self, spark: SparkSession, cfg: Config, spec: dict[str, Any], source: str, date: str,
              plan_uri: str, kw: dict[str, Any]) -> Scored:
        """Read, validated and encoded in the scoring tasks themselves (pipeline/ingest/tabular_tasks.py),
        with the parameters fitted when the model's dataset version was preprocessed."""
        import pyarrow as pa
        from pyspark.sql import types as T
        from pyspark.sql.pandas.types import to_arrow_schema
        from pyspark.sql.types import _parse_datatype_string

        from pipeline.ingest import sources, tabular, tabular_tasks
        from pipeline.kinds import predict
        from pipeline.spark import tasks

        tab = _score_columns(spec, cfg)
        passthrough = cfg.score.passthrough
        pii = privacy.of(spec["input"].get("privacy"))
        if pii is not None:
            dropped = [c for c in passthrough if pii.columns.get(c) == privacy.DROP]
            if dropped:
                raise ConfigError(f"score.passthrough: {dropped} are dropped personal columns "
                                  f"(dataset.privacy.pii_columns); hash them to pass them through")
        columns = predict.prediction_columns(spec, kw["explain"])
        max_bytes = cfg.preprocess.max_category_bytes
        carry = [tabular_tasks.HASH, tabular_tasks.FILE, tabular_tasks.POS, drift.VALUES]
        ddl = f"{predict.scored_ddl(spec, kw['explain'])}, {tabular_tasks.CARRY_DDL}"
        files = sources.listing(source) if sources.kind(source) == "path" else []
        if sources.fast_path(source, tab, files, passthrough):
            n = sources.num_read_tasks(spark, sum(size for _, size in files))
            tabular_tasks.write_pieces(tabular.plan(source, tab, n, sources.max_piece_bytes(spark),
                                                    label_required=False, listing=files), plan_uri)
            records = partial(tabular_tasks.score_records, plan_uri=plan_uri, tab=tab,
                              params=spec["input"]["tabular"], batch_size=kw["batch_size"], max_bytes=max_bytes,
                              pii=pii)
            body = partial(predict.score_frames, prepare=_prepare_encoded, key="id", carry=carry, **kw)
            frame, check = tabular_tasks.scored_duplicates(
                tasks.numbers(spark, n).mapInPandas(lambda it: body(frames=records(it)), ddl), tab)
            return Scored(frame, "id", columns, check=check)
        df = sources.load(spark, source, tab, date)
        tabular.check_columns([c for c in df.columns if c != sources.CORRUPT], tab, source, label_required=False)
        absent = [c for c in passthrough if c not in df.columns]
        if absent:
            raise tabular.SchemaDriftError(f"score.passthrough: {absent} not in {source}; it has {df.columns}")
        df = tabular_tasks.with_positions(sources.declared(df, tab, extra=passthrough))
        # A hashed passthrough column carries its hash (text), whatever its type in the input.
        extra = [T.StructField(c, T.StringType() if pii and c in pii.hashed else df.schema[sources.PASSTHROUGH + c].dataType)
                 for c in passthrough]
        scored_schema = _parse_datatype_string(ddl)
        assert isinstance(scored_schema, T.StructType)  # a DDL of several columns is a struct
        out = T.StructType(scored_schema.fields + extra)
        arrow = to_arrow_schema(out)
        params = spec["input"]["tabular"]

        def scored_batches(batches):
            for pdf, rec in tabular_tasks.score_batches(batches, tab, params, kw["batch_size"], passthrough, max_bytes,
                                                        pii):
                (scored,) = predict.score_frames(iter([pdf]), _prepare_encoded, "id", carry=carry, **kw)
                cols = pa.RecordBatch.from_pandas(scored, schema=pa.schema(list(arrow)[:len(arrow) - len(extra)]),
                                                  preserve_index=False).columns
                cols += [rec.extra[sources.PASSTHROUGH + f.name].cast(arrow.field(f.name).type) for f in extra]
                yield pa.RecordBatch.from_arrays(cols, schema=arrow)
        frame, check = tabular_tasks.scored_duplicates(df.mapInArrow(scored_batches, out), tab)
        return Scored(frame, "id", columns, check=check)

    def explaining(self, spec: dict[str, Any], conf: ExplainConf) -> explain.Request:
        """Attributions summed per declared column (a categorical's one-hot block into its name),
        from the train split's means: 0 for a standardised numeric, each value's share of the
        train rows for a one-hot block (from the dataset version's drift reference; 0 without one)."""
        from pipeline.core import manifest

        tab = TabularConf(**spec["input"]["columns"])
        params = spec["input"]["tabular"]
        try:
            reference = (manifest.read(spec["dataset"]["uri"]).get("drift_reference") or {}).get("features", {})
        except FileNotFoundError:
            reference = {}
        baseline = np.zeros(params["num_features"])
        member = np.zeros((params["num_features"], len(tab.numeric) + len(tab.categorical)))
        member[np.arange(len(tab.numeric)), np.arange(len(tab.numeric))] = 1.0
        col = len(tab.numeric)
        for j, c in enumerate(tab.categorical, start=len(tab.numeric)):
            width = len(params["categorical"][c]) + 1  # slot 0: unknown, then the vocabulary
            member[col:col + width, j] = 1.0
            ref = reference.get(c)
            if ref is not None and len(ref["shares"]) == width - 1:
                baseline[col:col + width] = [ref["unknown_share"], *ref["shares"]]
            col += width
        return explain.Request(conf.method, conf.n_steps, baseline, "top_features", explain.TOP_FEATURES_DDL,
                               partial(_top_declared, member=member, names=[*tab.numeric, *tab.categorical],
                                       k=conf.top_k))

    def prepare_frame(self, pdf: pd.DataFrame, spec: dict[str, Any]) -> Prepared:
        """Raw records (the declared id, if any, numeric and categorical columns, as text or numbers)."""
        import pandas as pd
        import pyarrow as pa

        from pipeline.ingest import tabular

        tab = TabularConf(**spec["input"]["columns"])
        needed = [*([tab.id_column] if tab.id_column else []), *tab.numeric, *tab.categorical]
        missing = [c for c in needed if c not in pdf.columns]
        if missing:
            raise ValueError(f"input frame lacks the columns {missing}; the model needs {needed}")
        cols = {}
        for c in needed:
            col = pa.chunked_array([pa.array(pdf[c].tolist())])
            cols[c] = col if c in tab.numeric else tabular.as_text(col)  # typed numbers are validated as numbers
        cols[tab.label_column] = pa.chunked_array([pa.nulls(len(pdf), pa.string())])
        rec = tabular.validate(pa.table(cols), [], tab, label_required=False,
                               pii=privacy.of(spec["input"].get("privacy")))
        ok = np.flatnonzero(rec.good())
        features = np.full(len(rec), None, dtype=object)
        if len(ok):
            x = tabular.encode(rec.take(ok), tab, spec["input"]["tabular"])
            for j, i in enumerate(ok):
                features[i] = x[j]
        return _prepare_encoded(pd.DataFrame({"reason": rec.reason, "detail": rec.detail, "features": features}), spec)

    def input_example(self, spec: dict[str, Any], rows: int = 2) -> pd.DataFrame:
        """Raw rows made from the fitted encoding (each numeric column's train mean, each
        categorical column's first category), not read from the source: a catalog table or a
        query has no files to read, and no personal value can reach the registry this way."""
        import pandas as pd

        tab = TabularConf(**spec["input"]["columns"])
        fitted = spec["input"]["tabular"]
        pdf = pd.DataFrame({tab.id_column: [f"example-{i}" for i in range(rows)]} if tab.id_column else {})
        for c in tab.numeric:
            pdf[c] = [float(fitted["numeric"][c]["mean"])] * rows
        for c in tab.categorical:
            pdf[c] = [(fitted["categorical"].get(c) or [""])[0]] * rows
        for c in (spec["input"].get("privacy") or {}).get("columns", {}):  # stand-ins, not even hashes
            if c in pdf:
                pdf[c] = [f"example-{i}" for i in range(rows)]
        return pdf


def _top_declared(attr: np.ndarray, member: np.ndarray, names: list[str], k: int) -> list:
    """(rows, encoded features) attributions -> each row's top ``k`` declared columns."""
    return explain.top_features(attr @ member, names, k)


def _drift_reference(spark: SparkSession, cfg: Config, tab: TabularConf, target: Target, results: list[dict[str, Any]],
                     fits: list[dict[str, Any]], params: dict[str, Any], label_names: list[str],
                     train_counts: dict[str, int], personal: list[str]) -> dict[str, Any]:
    """The train split's reference for drift (pipeline/core/drift.py), from the staged rows:
    numerics by a Spark job over the staged train rows (``approxQuantile`` cut points, then the
    rows per bin), categoricals and class labels from the counts the fit merged already. A
    personal column has none: no statistic of it is kept."""
    from pipeline.ingest import tabular_tasks
    from pipeline.kinds import drift as spark_drift
    from pipeline.spark import tasks

    regression = cfg.train.task == "regression"
    numbers: dict[str, dict[str, Any]] = {}
    parts = [r["part"] for r in results if r["batch_rows"]]
    columns = {c: f"f{i}" for i, c in enumerate(tab.numeric)} | ({tab.label_column: "label"} if regression else {})
    if parts and columns:
        tasks.write_plans([pa.table({"part": pa.array([p], pa.int32())}) for p in parts], target.plan("drift"))
        body = partial(tabular_tasks.staged_train, staging_uri=target.staging, plan_uri=target.plan("drift"),
                       tab=tab, regression=regression)
        df = tasks.numbers(spark, len(parts)).mapInPandas(body, tabular_tasks.train_numbers_ddl(tab, regression))
        df = df.persist()
        try:
            numbers = spark_drift.numeric_references(df, columns, cfg.score.drift.bins)
        finally:
            df.unpersist()
    features = {c: numbers.get(c) or drift.numeric_reference([], [0, 0]) for c in tab.numeric}
    n_train = sum(train_counts.values())
    for c in [c for c in tab.categorical if c not in personal]:
        seen: dict[str, int] = {}
        for p in fits:
            for v, k in p["categorical"][c].items():
                seen[v] = seen.get(v, 0) + k
        counts = [seen.get(v, 0) for v in params["categorical"][c]]
        features[c] = drift.categorical_reference(params["categorical"][c], [*counts, n_train - sum(counts)])
    for i, ref in enumerate(features.values()):
        ref["position"] = i  # in the scoring rows' values (tabular_tasks.drift_values): numerics, then categoricals
    prediction = (numbers.get(tab.label_column) if regression else
                  drift.categorical_reference(label_names, [*(train_counts.get(n, 0) for n in label_names), 0]))
    return {"features": features, "prediction": prediction}


def _prepare_encoded(pdf: pd.DataFrame, spec: dict[str, Any]) -> Prepared:
    """Frames of (reason, detail, features) from the scoring tasks -> the good rows' features."""
    import pandas as pd  # not at the top: the training ranks import this module without pandas

    # pandas 3 infers a text dtype for a column of text and None, where a missing value reads NaN.
    reasons = [None if pd.isna(r) else r for r in pdf["reason"]]
    ok = [i for i, r in enumerate(reasons) if r is None]
    n = ModelSpec.from_dict(spec["model"]).input_shape[0]
    x = np.stack([pdf["features"].iloc[i] for i in ok]).astype(np.float32) if ok else np.zeros((0, n), np.float32)
    return ok, x, reasons, [None if pd.isna(d) else d for d in pdf["detail"]]


def _score_columns(spec: dict[str, Any], cfg: Config) -> TabularConf:
    """The model's declared columns, read with this run's format, reader options and reader, and
    its handling of duplicate ids."""
    tab = cfg.dataset.tabular
    return TabularConf(**{**spec["input"]["columns"], "format": tab.format, "options": tab.options,
                          "reader": tab.reader, "duplicates": tab.duplicates})


def _check_personal(columns: dict[str, str], tab: TabularConf, passthrough: list[str]) -> None:
    """dataset.privacy.pii_columns against the declared columns: each one declared, never the
    label; a dropped one neither the id, a feature nor passed through."""
    for c, how in columns.items():
        key = f"dataset.privacy.pii_columns.{c}"
        if c == tab.label_column:
            raise ConfigError(f"{key}: the label ({c}) cannot be a personal column")
        if c not in tab.columns():
            raise ConfigError(f"{key}: {c!r} is not a declared column (dataset.tabular: the id, a numeric, "
                              f"a categorical or an ignored column)")
        if how == privacy.DROP:
            role = ("the id" if c == tab.id_column else "a feature" if c in (*tab.numeric, *tab.categorical)
                    else "in score.passthrough" if c in passthrough else "")
            if role:
                raise ConfigError(f"{key}: a dropped column cannot be {role}; hash it, or move it to "
                                  f"dataset.tabular.ignore (and out of score.passthrough)")
