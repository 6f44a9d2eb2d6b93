"""Tabular records: read, validate, fit on the train split, encode, with pyarrow and numpy.

One core for every source. ``validate`` takes Arrow columns (text, or typed numbers from
Parquet, ORC or a table) and gives Records; ``partial_fit``/``merge_fits`` fit on the train split;
``encode`` writes the feature matrix. Spark sources reach it through Spark's reader and
``mapInArrow`` (pipeline/sources.py, pipeline/tabular_tasks.py).

The fast path: for plain CSV, JSON-lines and Parquet files the driver cuts the input into pieces
(byte ranges of CSV and JSON-lines files, whole Parquet files) and each task reads its pieces
with pyarrow (``plan``, ``read_piece``), a column at a time, at a fraction of the cost of
Spark's row-at-a-time CSV reader (bench/README.md). It reads as Spark's reader does, which is the
reference (tests/test_parity.py): a header line per CSV file, an empty field, quoted or not, is
null, a record with the wrong number of fields is malformed, invalid UTF-8 is replaced; a piece
boundary moves to the next line end, so records may not contain newlines (files that need
``multiLine`` or other reader options go through Spark's reader).

The same functions serve preprocess (validate, fit, encode) and score (validate and encode
with the parameters saved in the dataset version), so training and serving cannot drift apart.

Feature vector (float32, fixed length): standardised numerics in declared order (a missing
value is imputed with the train mean), then one one-hot block per categorical column whose
slot 0 is "unknown" (unseen value or null).

Without an id column (``dataset.tabular.id_column`` empty) a record's id and split key is a hash
of its declared values as validated (``record_keys``): identical records share a split.
Regression (``train.task``): the label is a number, validated like the numeric columns.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.core import lake, splits
from pipeline.core.config import MAX_CATEGORY_BYTES, TabularConf
from pipeline.core.privacy import Pii

# Reason codes.
MALFORMED = "malformed_record"
MISSING_ID = "missing_id"
MISSING_LABEL = "missing_label"
WRONG_TYPE = "wrong_type"
NON_FINITE = "non_finite"
VALUE_TOO_LONG = "value_too_long"
DUPLICATE_ID = "duplicate_id"  # rows of one id that differ (or, keep_first, that differ from the kept row)
DUPLICATE_ROW = "duplicate_row"  # a copy of a kept row
# A malformed record's text in the quarantine when the dataset has personal columns.
REDACTED = "<redacted: the record could not be parsed and the dataset has personal columns>"

# The strings pyarrow's cast to double accepts (and Spark's cast does too); tested against it.
_NUMBER = r"^[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf|infinity|nan)$"
_NON_FINITE = r"^[+-]?(?:inf|infinity|nan)$"


class SchemaDriftError(ValueError):
    pass


def check_columns(found: list[str], tab: TabularConf, uri: str, label_required: bool = True) -> None:
    """The input's columns must be exactly the declared ones (the label may be absent when
    scoring, ignored columns may be absent)."""
    declared = tab.columns()
    optional = set(tab.ignore) | (set() if label_required else {tab.label_column})
    missing = [c for c in declared if c not in found and c not in optional]
    extra = [c for c in found if c not in declared]
    if missing or extra:
        parts = ([f"missing {missing}"] if missing else []) + ([f"not declared {extra}"] if extra else [])
        raise SchemaDriftError(
            f"schema drift in {uri}: {'; '.join(parts)}. Declared columns (dataset.tabular): {declared}. "
            f"Fix the input, or declare new columns (dataset.tabular.ignore to skip them) and retrain.")


# --- planning, on the driver --------------------------------------------------------------------

Piece = tuple[str, int, int]  # (file URI, first byte, length; -1 = to the end)


def _open(uri: str):
    """A binary file object; .gz, .bz2, .xz and other compressed files (by their suffix) come
    out decompressed. Those cannot be cut into byte ranges: one task reads each, as in Spark."""
    fs, path = fsspec.core.url_to_fs(uri)
    return fs.open(path, "rb", compression=fsspec.utils.infer_compression(path))


def file_columns(uri: str, fmt: str) -> list[str]:
    """The columns of one input file: the CSV header, the keys of the first JSON records, or the
    Parquet schema."""
    if fmt == "parquet":
        with _open(uri) as f:
            return pq.ParquetFile(f).schema_arrow.names
    with _open(uri) as f:
        if fmt == "csv":
            return next(csv.reader([f.readline().decode("utf-8-sig").rstrip("\r\n")]), [])
        keys: dict[str, None] = {}
        for line in f.read(1 << 20).splitlines()[:1000]:
            try:
                keys.update(dict.fromkeys(json.loads(line)))
            except (ValueError, TypeError):
                continue
        return list(keys)


def plan(source_uri: str, tab: TabularConf, tasks: int, max_piece_bytes: int, label_required: bool = True,
         listing: list[tuple[str, int]] | None = None) -> list[list[Piece]]:
    """The input cut into pieces of at most max_piece_bytes, dealt to ``tasks`` lists of about
    equal bytes (so the output files come out near-equal). Checks the first file's columns, so
    schema drift is reported before any task runs. ``listing``: lake.list_files(source_uri),
    where the caller has it already."""
    files = [(u, size) for u, size in (lake.list_files(source_uri) if listing is None else listing) if size > 0]
    if not files:
        raise FileNotFoundError(f"no input files under {source_uri}")
    found = file_columns(files[0][0], tab.format)
    if tab.format == "json":  # a JSON writer leaves null fields out: only undeclared keys are drift
        found += [c for c in tab.columns() if c not in found]
    check_columns(found, tab, files[0][0], label_required)
    total = sum(size for _, size in files)
    step = max(1, min(max_piece_bytes, math.ceil(total / tasks)))
    pieces: list[Piece] = []
    for uri, size in files:
        if tab.format == "parquet" or fsspec.utils.infer_compression(uri):
            pieces.append((uri, 0, -1))
        else:
            pieces += [(uri, start, min(step, size - start)) for start in range(0, size, step)]
    sizes = {u: s for u, s in files}
    out: list[list[Piece]] = [[] for _ in range(tasks)]
    load = [0] * tasks
    for p in sorted(pieces, key=lambda p: -(sizes[p[0]] if p[2] < 0 else p[2])):  # largest first
        t = load.index(min(load))
        out[t].append(p)
        load[t] += sizes[p[0]] if p[2] < 0 else p[2]
    return out


# --- reading, in the tasks ----------------------------------------------------------------------

def _line_range(f, start: int, length: int) -> bytes:
    """The whole lines that start inside [start, start + length): a line belongs to the piece
    where it starts, as in Hadoop's line reader."""
    if length < 0:
        return f.read()
    if start > 0:
        f.seek(start - 1)
        buf = f.read(length + 1)
        cut = buf.find(b"\n")
        if cut < 0:
            return b""
        buf = buf[cut + 1:]
    else:
        buf = f.read(length)
    if buf and not buf.endswith(b"\n"):
        while True:  # finish the last line
            more = f.read(1 << 16)
            if not more:
                break
            end = more.find(b"\n")
            if end >= 0:
                buf += more[:end + 1]
                break
            buf += more
    return buf


def _json_value(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (dict, list)):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, float):
        return java_double_text(v)
    # A lone surrogate escape ("\ud800") is valid JSON but not UTF-8: replaced, as Spark does.
    return str(v).encode("utf-8", "replace").decode("utf-8")


def _valid_utf8(data: bytes) -> bytes:
    """Invalid UTF-8 (a Latin-1 file, a corrupt byte) replaced with U+FFFD, as Spark's reader
    does, rather than failing the task."""
    try:
        data.decode("utf-8")
        return data
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace").encode("utf-8")


def read_piece(piece: Piece, tab: TabularConf, label_required: bool = True) -> tuple[pa.Table, list[str]]:
    """(declared columns as strings, raw text of the malformed records) of one piece."""
    uri, start, length = piece
    wanted = [c for c in tab.columns() if c not in tab.ignore]
    malformed: list[str] = []
    if tab.format == "parquet":
        with _open(uri) as f:
            pf = pq.ParquetFile(f)
            check_columns(pf.schema_arrow.names, tab, uri, label_required)
            t = pf.read(columns=[c for c in wanted if c in pf.schema_arrow.names])
        # Typed columns stay typed: validate takes numbers as they are and writes the rest as text.
    elif tab.format == "csv":
        header = file_columns(uri, "csv")
        check_columns(header, tab, uri, label_required)
        with _open(uri) as f:
            data = _valid_utf8(_line_range(f, start, length))
        if start == 0:  # the header line
            data = data[data.find(b"\n") + 1:] if b"\n" in data else b""
        include = [c for c in wanted if c in header]
        if not data.strip():
            return pa.table({c: pa.array([], pa.string()) for c in include}), []

        def on_invalid(row):  # Spark's PERMISSIVE mode: the record is kept as text
            malformed.append(row.text)
            return "skip"

        t = pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=header, use_threads=False),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in header}, include_columns=include,
                strings_can_be_null=True, null_values=[""], quoted_strings_can_be_null=True))
    else:  # JSON lines
        with _open(uri) as f:
            data = _line_range(f, start, length)
        if start == 0 and data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]  # a byte-order mark
        rows = []
        for raw in data.splitlines():  # on \n, \r and \r\n only, as Spark (str.splitlines cuts more)
            line = raw.decode("utf-8", "replace")
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("not an object")
            except ValueError:
                malformed.append(line)
                continue
            extra = [k for k in rec if k not in tab.columns()]
            if extra:
                check_columns([*tab.columns(), *extra], tab, uri, label_required)
            rows.append(rec)
        t = pa.table({c: pa.array([_json_value(r.get(c)) for r in rows], pa.string()) for c in wanted})
    if tab.label_column not in t.column_names:
        t = t.append_column(tab.label_column, pa.nulls(t.num_rows, pa.string()))
    return t, malformed


# --- validation -------------------------------------------------------------------------------

@dataclass
class Records:
    """One batch's records after validation; reason is None for a good record. labels are text
    (classification) or float64 (regression). extra: input columns carried along untouched
    (score.passthrough), as Arrow arrays."""
    ids: np.ndarray
    labels: np.ndarray
    numeric: dict[str, np.ndarray]  # float64, NaN where the value is missing (to be imputed)
    categorical: dict[str, np.ndarray]
    reason: np.ndarray
    detail: np.ndarray
    source: np.ndarray  # the raw record as text, for bad records only
    extra: dict[str, pa.Array] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.reason)

    def good(self) -> np.ndarray:
        return pd.isna(self.reason)

    def take(self, idx: np.ndarray) -> "Records":
        return Records(self.ids[idx], self.labels[idx], {c: v[idx] for c, v in self.numeric.items()},
                       {c: v[idx] for c, v in self.categorical.items()}, self.reason[idx], self.detail[idx],
                       self.source[idx], {c: v.take(pa.array(idx, pa.int64())) for c, v in self.extra.items()})


def _blank(col: pa.ChunkedArray) -> np.ndarray:
    return pc.fill_null(pc.equal(pc.utf8_trim_whitespace(col), ""), True).to_numpy(zero_copy_only=False)


def to_double(col: pa.ChunkedArray) -> np.ndarray:
    """Spark's cast(string as double) on a column: trimmed; null or not a number -> NaN. A value
    parses the same whatever else is in the column (the same parser on every path)."""
    s = pc.utf8_trim_whitespace(col)
    try:
        return pc.cast(s, pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:  # some value is not a number: null those, parse the rest
        number = pc.match_substring_regex(s, _NUMBER, ignore_case=True)
        return pc.cast(pc.if_else(number, s, pa.scalar(None, pa.string())), pa.float64()).to_numpy(
            zero_copy_only=False)


def _is_number_type(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def parse_number(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(float64 values with NaN where missing, wrong_type mask, non_finite mask) of a numeric
    column. A typed column (a double in Parquet, ORC or a table) is taken as it is; text is
    parsed as Spark's cast(string as double) does."""
    if _is_number_type(col.type):
        d = pc.cast(col, pa.float64())
        present = pc.is_valid(d).to_numpy(zero_copy_only=False)
        v = d.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
        return v, np.zeros(len(v), bool), present & ~np.isfinite(v)
    if not pa.types.is_string(col.type):
        col = pc.cast(col, pa.string())  # booleans, dates: text, which is not a number
    v = to_double(col)
    spelled = pc.fill_null(pc.match_substring_regex(pc.utf8_trim_whitespace(col), _NON_FINITE,
                                                    ignore_case=True), False).to_numpy(zero_copy_only=False)
    return v, ~_blank(col) & np.isnan(v) & ~spelled, spelled | np.isinf(v)


def as_text(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """A column as the text Spark's cast(... as string) gives: a float id, label or category is
    written as Java writes it (1.0 -> "1.0" where Arrow's cast gives "1"; 1e7 -> "1.0E7")."""
    if pa.types.is_string(col.type):
        return col
    if pa.types.is_large_string(col.type):
        return pc.cast(col, pa.string())
    if pa.types.is_floating(col.type):
        return pa.chunked_array([pa.array([None if v is None else java_double_text(v) for v in col.to_pylist()],
                                          pa.string())])
    return pc.cast(col, pa.string())


def java_double_text(v: float) -> str:
    """A double as Spark's cast to string writes it (Java's Double.toString): the shortest digits,
    plain between 1e-3 and 1e7 ("0.001", "123456.789"), else scientific ("1.0E7", "1.5E-5")."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    if v == 0 or 1e-3 <= abs(v) < 1e7:
        return repr(v)
    mantissa, exponent = np.format_float_scientific(v, unique=True, trim="0").split("e")
    return f"{mantissa}E{int(exponent)}"


def value_hash(labels: pa.ChunkedArray, numeric: dict[str, np.ndarray], categorical: dict[str, pa.ChunkedArray],
               ) -> np.ndarray:
    """An int64 hash of each record's declared values as validated (label, numerics as parsed,
    categories as text): equal for identical records."""
    parts = [pc.cast(labels, pa.string()) if not pa.types.is_string(labels.type) else labels]
    parts += [pc.cast(pa.array(v, pa.float64()), pa.string()) for v in numeric.values()]
    parts += list(categorical.values())
    joined = pc.binary_join_element_wise(*parts, "\x1f", null_handling="replace", null_replacement="\x00")
    return splits.xxhash64(0, joined.to_pylist())


def record_keys(labels: pa.ChunkedArray, numeric: dict[str, np.ndarray], categorical: dict[str, pa.ChunkedArray],
                ) -> np.ndarray:
    """Split keys of records without an id: ``value_hash`` as hex, so identical records share a
    key and a split."""
    h = value_hash(labels, numeric, categorical).view(np.uint64)
    return np.array([f"{x:016x}" for x in h.tolist()], dtype=object)


def records_hash(rec: Records) -> np.ndarray:
    """``value_hash`` of validated Records (good ones: the label may be null when scoring)."""
    return value_hash(pa.chunked_array([pa.array(rec.labels)]), rec.numeric,
                      {c: pa.chunked_array([pa.array(v, pa.string())]) for c, v in rec.categorical.items()})


def _too_long(col: pa.ChunkedArray, max_bytes: int) -> np.ndarray:
    return pc.fill_null(pc.greater(pc.binary_length(col), max_bytes), False).to_numpy(zero_copy_only=False)


def private(col: pa.ChunkedArray, pii: Pii) -> pa.ChunkedArray:
    """A personal column's values as their keyed hashes (hex) of the validated text."""
    return pa.chunked_array([pii.hmac_hex(as_text(col))], pa.string())


def _hide_personal(cols: dict[str, pa.ChunkedArray], tab: TabularConf, pii: Pii) -> None:
    """Hashed columns in place: the id as its hash, a feature as its bucket (score_batches hashes a
    passthrough column itself)."""
    for c in pii.hashed:
        if c not in cols:
            continue
        if c == tab.id_column:  # a blank id stays missing (missing_id), not the hash of blanks
            text = as_text(cols[c])
            cols[c] = private(pa.chunked_array([pc.if_else(_blank(text), pa.scalar(None, pa.string()),
                                                           text.combine_chunks())], pa.string()), pii)
        else:
            cols[c] = pa.chunked_array([pii.bucket(private(cols[c], pii).combine_chunks())])


def validate(t: pa.Table, malformed: list[str], tab: TabularConf, label_required: bool = True,
             regression: bool = False, extra: Sequence[str] = (), max_bytes: int = MAX_CATEGORY_BYTES,
             pii: Pii | None = None) -> Records:
    """Checks every record; the first failing check names the reason. Malformed records come last.

    ``t`` holds the declared columns: text, or typed numerics (a typed id, label or category is
    turned into text first). Without an id column the ids are ``record_keys``. An id, label or
    category longer than ``max_bytes`` UTF-8 bytes is value_too_long (preprocess.max_category_bytes).
    ``pii`` (dataset.privacy): personal columns are hashed before any check, so no record, reason
    or statistic holds their values, and a malformed record's text (which may) is withheld."""
    n = t.num_rows
    cols = {c: t[c] for c in t.column_names}
    if pii is not None:
        _hide_personal(cols, tab, pii)
        if malformed:
            malformed = [REDACTED] * len(malformed)
    if tab.label_column not in cols:
        cols[tab.label_column] = pa.chunked_array([pa.nulls(n, pa.string())])
    for c in [tab.id_column, *tab.categorical] + ([] if regression else [tab.label_column]):
        if c:
            cols[c] = as_text(cols[c])
    parsed = {c: parse_number(cols[c]) for c in tab.numeric}
    numeric = {c: v for c, (v, _, _) in parsed.items()}
    checks: list[tuple[np.ndarray, str, Any]] = []
    if tab.id_column:
        checks += [(_blank(cols[tab.id_column]), MISSING_ID, tab.id_column),
                   (_too_long(cols[tab.id_column], max_bytes), VALUE_TOO_LONG, tab.id_column)]
    labels: np.ndarray
    if regression:
        lv, lwrong, lnonfin = parse_number(cols[tab.label_column])
        if label_required:
            checks += [(np.isnan(lv) & ~lwrong & ~lnonfin, MISSING_LABEL, tab.label_column),
                       (lwrong, WRONG_TYPE, tab.label_column), (lnonfin, NON_FINITE, tab.label_column)]
        labels = lv
    else:
        if label_required:
            checks.append((_blank(cols[tab.label_column]), MISSING_LABEL, tab.label_column))
        checks.append((_too_long(cols[tab.label_column], max_bytes), VALUE_TOO_LONG, tab.label_column))
        labels = cols[tab.label_column].to_numpy(zero_copy_only=False)
    checks += [(wrong, WRONG_TYPE, c) for c, (_, wrong, _) in parsed.items()]
    checks += [(nonfin, NON_FINITE, c) for c, (_, _, nonfin) in parsed.items()]
    checks += [(_too_long(cols[c], max_bytes), VALUE_TOO_LONG, c) for c in tab.categorical]
    first = np.full(n, -1)
    for i in reversed(range(len(checks))):
        first[checks[i][0]] = i
    reason = np.full(n, None, dtype=object)
    detail = np.full(n, None, dtype=object)
    source = np.full(n, None, dtype=object)
    bad = np.flatnonzero(first >= 0)
    if len(bad):
        raw = pa.table({c: cols[c] for c in tab.columns() if c in cols}).take(pa.array(bad)).to_pylist()
        for j, i in enumerate(bad):
            _, code, col = checks[first[i]]
            reason[i] = code
            detail[i] = (col if code in (MISSING_ID, MISSING_LABEL) else
                         f"{col}: {len(raw[j][col].encode())} bytes, over {max_bytes}" if code == VALUE_TOO_LONG else
                         f"{col}={raw[j][col]}")
            source[i] = json.dumps({k: v for k, v in raw[j].items() if v is not None}, ensure_ascii=False,
                                   default=str)
    if tab.id_column:
        ids = cols[tab.id_column].to_numpy(zero_copy_only=False)
    else:
        ids = record_keys(pa.chunked_array([pa.array(labels)]) if regression else cols[tab.label_column],
                          numeric, {c: cols[c] for c in tab.categorical})
    m = len(malformed)
    none = np.full(m, None, dtype=object)
    return Records(
        ids=np.concatenate([ids, none]),
        labels=np.concatenate([labels, np.full(m, np.nan) if regression else none]),
        numeric={c: np.concatenate([v, np.full(m, np.nan)]) for c, v in numeric.items()},
        categorical={c: np.concatenate([cols[c].to_numpy(zero_copy_only=False), none]) for c in tab.categorical},
        reason=np.concatenate([reason, np.full(m, MALFORMED, dtype=object)]),
        detail=np.concatenate([detail, np.full(m, "unparseable record", dtype=object)]),
        source=np.concatenate([source, np.asarray(malformed, dtype=object)]),
        extra={c: pa.concat_arrays([*t[c].chunks, pa.nulls(m, t[c].type)]) if t[c].num_chunks
               else pa.nulls(n + m, t[c].type) for c in extra},
    )


# --- fitting: partial statistics per task, merged on the driver -------------------------------

def _moments(v: np.ndarray) -> list:
    v = v[~np.isnan(v)]
    mean = float(v.mean()) if len(v) else 0.0
    return [len(v), mean, float(((v - mean) ** 2).sum())]


def _merge_moments(parts: list[list]) -> tuple[float, float]:
    """(mean, population std) from partial [count, mean, M2] triples (Chan et al.'s pairwise update)."""
    n, mean, m2 = 0, 0.0, 0.0
    for nb, mb, m2b in parts:
        if nb:
            d = mb - mean
            n, mean, m2 = n + nb, mean + d * nb / (n + nb), m2 + m2b + d * d * n * nb / (n + nb)
    return mean, math.sqrt(m2 / n) if n else 0.0


def partial_fit(rec: Records, tab: TabularConf) -> dict[str, Any]:
    """Count, mean and sum of squared deviations per numeric (and of a numeric label), value
    counts per categorical."""
    out: dict[str, Any] = {"numeric": {c: _moments(rec.numeric[c]) for c in tab.numeric}, "categorical": {}}
    for c in tab.categorical:
        out["categorical"][c] = pd.Series(rec.categorical[c]).value_counts(dropna=True).to_dict()
    if rec.labels.dtype.kind == "f":
        out["label"] = _moments(rec.labels)
    return out


def label_stats(parts: list[dict[str, Any]]) -> dict[str, float]:
    """Train-split mean and std of a numeric label (regression), from the partial fits."""
    mean, std = _merge_moments([p["label"] for p in parts if "label" in p])
    return {"mean": mean, "std": std}


def empty_features(parts: list[dict[str, Any]], tab: TabularConf) -> list[str]:
    """The declared features with no value at all in the train split (every row null or NaN):
    the model then sees a constant (0, or only the unknown category)."""
    numeric = [c for c in tab.numeric if sum(p["numeric"][c][0] for p in parts) == 0]
    return numeric + [c for c in tab.categorical if not any(p["categorical"][c] for p in parts)]


def merge_fits(parts: list[dict[str, Any]], tab: TabularConf, pii: Pii | None = None) -> dict[str, Any]:
    """The fitted parameters from every task's partial_fit (Chan et al.'s pairwise update). A
    hashed personal column's vocabulary is every bucket, fitted on nothing."""
    params: dict[str, Any] = {"numeric": {}, "categorical": {}}
    for c in tab.numeric:
        mean, std = _merge_moments([p["numeric"][c] for p in parts])
        params["numeric"][c] = {"mean": mean, "std": std if std > 0 and not math.isnan(std) else 1.0}
    for c in tab.categorical:
        if pii is not None and c in pii.hashed:
            params["categorical"][c] = pii.vocabulary()
            continue
        counts: dict[str, int] = {}
        for p in parts:
            for v, k in p["categorical"][c].items():
                counts[v] = counts.get(v, 0) + k
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:tab.max_categories]
        params["categorical"][c] = [v for v, _ in top]
    params["num_features"] = len(tab.numeric) + sum(len(v) + 1 for v in params["categorical"].values())
    params["feature_names"] = (list(tab.numeric) +
                               [f"{c}={v}" for c, vocab in params["categorical"].items() for v in ["<unknown>", *vocab]])
    return params


# --- encoding ---------------------------------------------------------------------------------

def encode(rec: Records, tab: TabularConf, params: dict[str, Any]) -> np.ndarray:
    """The (n, num_features) float32 feature matrix of good records."""
    n = len(rec)
    out = np.zeros((n, params["num_features"]), np.float32)
    for j, c in enumerate(tab.numeric):
        p = params["numeric"][c]
        v = rec.numeric[c]
        out[:, j] = (np.where(np.isnan(v), p["mean"], v) - p["mean"]) / p["std"]
    col = len(tab.numeric)
    for c in tab.categorical:
        vocab = params["categorical"][c]
        slot = pd.Series(rec.categorical[c]).map({v: i + 1 for i, v in enumerate(vocab)}).fillna(0).to_numpy(np.int64)
        out[np.arange(n), col + slot] = 1.0
        col += len(vocab) + 1
    return out


def features_array(x: np.ndarray) -> pa.Array:
    """A (n, k) float32 matrix as an Arrow list<float> column, without copying row by row."""
    n, k = x.shape
    return pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32)),
                                    pa.array(np.ascontiguousarray(x).ravel()))
