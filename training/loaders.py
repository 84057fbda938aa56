"""Bring-your-own-data loaders: public relevance data sets into a validated `ShopData`.

Every loader returns catalog, queries and judgements (no users or events) and follows
the same rules:

- product ids: numeric source ids are kept as int64; string ids (ESCI's ASINs) or
  products without ids get 1, 2, 3, ... in order of first appearance. Query ids likewise.
- queries are split train/val/test by query (never by row), 70/15/15, deterministic for
  a given `seed` (`shoprank.data.datasets.split_by_key`), unless the source has its own split.
- missing text becomes ""; a missing price is NaN. Rows are kept: duplicates of a
  (query, product) pair are averaged (then rounded), and anything merged or filtered
  is counted in a logged warning, never dropped silently.
- malformed input (missing file, missing column, non-numeric or out-of-range grade,
  unknown label, empty query, bad JSON) raises `DataError` naming the file, the row and
  the column. CSV rows are 1-based data rows with the header excluded; JSONL rows are
  1-based line numbers.

Formats
- `load_relevance_csv`: Kaggle-style CSV/TSV (optionally .gz) with `query`
  (or `search_term`), `product_title`, optional `product_description` and a relevance
  column (`relevance` or `median_relevance`). Products are identified by their
  (title, description) pair. Grades are mapped onto 0..3 by `grades_to_0_3`.
- `load_table` / `load_jsonl`: the judgements join as one table, JSONL, JSON, CSV, TSV
  or Parquet: `query`, `title` (or `product_title`), `relevance` required;
  `description`, `product_id`, `category`, `brand`, `color`, `material`, `size`,
  `price` and `split` optional. Without `product_id`, (title, description) identifies a
  product.
- `load_esci`: Amazon ESCI (shopping_queries_dataset_examples / _products, Parquet or
  CSV). Labels E/S/C/I -> 3/2/1/0. Rows are filtered to `locale` ("us" by default) and,
  with `small_version=True`, to the reduced task-1 set. ESCI's own split is kept for
  test; 15% of its train queries become val.
- `load_wands`: Wayfair WANDS (tab-separated query.csv, product.csv, label.csv).
  Labels Exact/Partial/Irrelevant -> 3/2/0 (Partial means the right kind of product
  with some attribute wrong, our grade 2). `category hierarchy` ("A / B / C") becomes
  "A > B > C"; color and material are read from `product_features` when present.
- `load_any`: picks one of the above from a path (file or folder) or a format name.
"""

from __future__ import annotations

import codecs
import gzip
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from shoprank.contract import ArtifactPaths
from shoprank.data.datasets import (
    CATEGORY_SEPARATOR,
    MAX_GRADE,
    SPLITS,
    DataError,
    ShopData,
    load,
    split_by_key,
    validate,
)

logger = logging.getLogger(__name__)

ESCI_GRADES: dict[str, int] = {"E": 3, "S": 2, "C": 1, "I": 0}
WANDS_GRADES: dict[str, int] = {"Exact": 3, "Partial": 2, "Irrelevant": 0}
ESCI_EXAMPLES = "shopping_queries_dataset_examples"
ESCI_PRODUCTS = "shopping_queries_dataset_products"
WANDS_FILES = ("query.csv", "product.csv", "label.csv")
_TEXT_FIELDS = ("title", "description", "category", "brand", "color", "material", "size")


# ---------------------------------------------------------------------------------------
# Reading files into string tables that remember their row numbers
# ---------------------------------------------------------------------------------------
@dataclass
class _Table:
    """A source file read as strings ("" for missing), with row numbers for messages."""

    path: Path
    frame: pd.DataFrame
    rows: np.ndarray  # the number to report for each frame row
    row_word: str  # "data row" or "line"
    row_note: str = ""  # e.g. " (1-based, header excluded)"

    def error(self, pos: int, column: str, what: str, count: int = 1) -> DataError:
        more = f" ({count:,} rows have this problem)" if count > 1 else ""
        row = int(self.rows[pos])
        return DataError(
            f"{self.path}: {self.row_word} {row}{self.row_note}, column '{column}': {what}{more}",
            source=str(self.path),
            row=row,
            column=column,
        )

    def column(self, names: Sequence[str]) -> str | None:
        """The first of `names` that the file has, or None."""
        for name in names:
            if name in self.frame.columns:
                return name
        return None

    def need(self, names: Sequence[str]) -> str:
        """The first of `names` that the file has; DataError naming the column if none."""
        found = self.column(names)
        if found is None:
            also = f" (or {', '.join(repr(n) for n in names[1:])})" if len(names) > 1 else ""
            raise DataError(
                f"{self.path}: missing column '{names[0]}'{also}; "
                f"columns found: {list(self.frame.columns)}",
                source=str(self.path),
                column=names[0],
            )
        return found

    def get(self, names: Sequence[str]) -> pd.Series:
        """A column's stripped strings, or "" everywhere when the file lacks it."""
        col = self.column(names)
        if col is None:
            return pd.Series([""] * len(self.frame), index=self.frame.index, dtype=object)
        return self.frame[col].str.strip()

    def first_bad(self, bad: np.ndarray, column: str, what: str) -> None:
        """Raise for the first True in `bad` (with `what` formatted with the value)."""
        bad = np.asarray(bad, dtype=bool)
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            value = self.frame[column].iloc[pos]
            raise self.error(pos, column, what.format(value=repr(value)), int(bad.sum()))


def _stem(path: Path) -> str:
    name = path.name.lower()
    return name[:-3] if name.endswith(".gz") else name


def _raw(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


# Tried in this order on the whole file. Shop exports that are not UTF-8 are nearly always
# Windows-1252 (Latin-1 plus curly quotes, the euro sign, ...), which leaves five bytes
# undefined; Latin-1 decodes every byte, so a Western catalog always loads. No statistical
# guesser (charset-normalizer): on short product text it picks among dozens of single-byte
# code pages and can land on a Baltic or Arabic one, which garbles the accented letters.
# Other encodings are named with --data-encoding.
ENCODINGS = ("utf-8", "cp1252", "latin-1")


def _decodes(path: Path, encoding: str, chunk_bytes: int = 1 << 22) -> bool:
    """Whether the whole file decodes as `encoding` (read in chunks: files may be large)."""
    decoder = codecs.getincrementaldecoder(encoding)()
    with _raw(path) as fh:
        try:
            while chunk := fh.read(chunk_bytes):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return False
    return True


def detect_encoding(path: Path) -> str:
    """The text encoding of a file: UTF-8 with a BOM, else the first of `ENCODINGS` that
    decodes the whole file. Anything but UTF-8 is logged, so a wrong choice can be
    overridden with `encoding=` (--data-encoding)."""
    with _raw(path) as fh:
        if fh.read(3) == codecs.BOM_UTF8:
            return "utf-8-sig"
    *tried, last = ENCODINGS
    chosen = next((enc for enc in tried if _decodes(path, enc)), last)
    if chosen != "utf-8":
        logger.warning("%s is not UTF-8; reading it as %s (--data-encoding chooses)", path, chosen)
    return chosen


def _encoding_error(path: Path, exc: UnicodeDecodeError | LookupError) -> DataError:
    if isinstance(exc, LookupError) and not isinstance(exc, UnicodeDecodeError):
        return DataError(f"{path}: {exc}", source=str(path))  # an unknown encoding name
    return DataError(
        f"{path}: not valid {exc.encoding} text (byte 0x{exc.object[exc.start]:02x} at "
        f"offset {exc.start}); pass the file's encoding (--data-encoding latin-1, cp1252, ...)",
        source=str(path),
    )


def _open_text(path: Path, encoding: str | None = None) -> IO[str]:
    enc = encoding or detect_encoding(path)
    return (
        gzip.open(path, "rt", encoding=enc)
        if path.name.lower().endswith(".gz")
        else open(path, encoding=enc)
    )


def _as_strings(frame: pd.DataFrame) -> pd.DataFrame:
    """Every column as Python strings, missing values as ""."""
    out = {}
    for col in frame.columns:
        s = frame[col]
        if pd.api.types.is_float_dtype(s.dtype):
            # Whole floats ("12.0") usually are ids or grades that went through NaN.
            vals = [
                "" if pd.isna(v) else (str(int(v)) if float(v).is_integer() else repr(float(v)))
                for v in s
            ]
            out[str(col)] = pd.Series(vals, index=frame.index, dtype=object)
        else:  # strings, ints (nullable ones too), bools
            out[str(col)] = s.astype(object).where(s.notna(), "").astype(str).astype(object)
    return pd.DataFrame(out, index=frame.index)


def _read_jsonl(path: Path, encoding: str | None = None) -> _Table:
    records, rows = [], []
    with _open_text(path, encoding) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path}: line {lineno}: invalid JSON ({exc.msg} at column {exc.colno})",
                    source=str(path),
                    row=lineno,
                ) from None
            if not isinstance(obj, dict):
                raise DataError(
                    f"{path}: line {lineno}: expected a JSON object, got {type(obj).__name__}",
                    source=str(path),
                    row=lineno,
                )
            records.append(
                {k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in obj.items()}
            )
            rows.append(lineno)
    frame = _as_strings(pd.DataFrame.from_records(records)) if records else pd.DataFrame()
    return _Table(path, frame.reset_index(drop=True), np.array(rows, dtype=np.int64), "line")


def _read(path: str | Path, *, sep: str | None = None, encoding: str | None = None) -> _Table:
    """Read CSV/TSV (.gz ok), JSONL/JSON or Parquet as a string table; text files in
    `encoding`, or the one `detect_encoding` finds."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found", source=str(path))
    stem = _stem(path)
    if stem.endswith((".jsonl", ".ndjson")):
        return _read_jsonl(path, encoding)
    note = " (1-based, header excluded)"
    try:
        if stem.endswith(".json"):
            with _open_text(path, encoding) as fh:
                data = json.load(fh)
            if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                raise DataError(
                    f"{path}: expected a JSON array of objects (or use JSONL)", source=str(path)
                )
            frame = _as_strings(pd.DataFrame.from_records(data))
            return _Table(path, frame, np.arange(1, len(frame) + 1), "record", " (1-based)")
        if stem.endswith(".parquet"):
            frame = _as_strings(pd.read_parquet(path))
            note = " (1-based)"
        else:
            encoding = encoding or detect_encoding(path)
            if sep is None:
                with _open_text(path, encoding) as fh:
                    header = fh.readline()
                sep = "\t" if stem.endswith(".tsv") or "\t" in header else ","
            frame = pd.read_csv(
                path, sep=sep, dtype=str, keep_default_na=False, na_filter=False, encoding=encoding
            ).astype(object)
    except DataError:
        raise
    except (UnicodeDecodeError, LookupError) as exc:
        raise _encoding_error(path, exc) from None
    except (ValueError, OSError) as exc:
        # pandas' parser errors name the line; keep its words and add the file.
        raise DataError(f"{path}: cannot be parsed: {exc}", source=str(path)) from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    frame = frame.reset_index(drop=True)
    return _Table(path, frame, np.arange(1, len(frame) + 1), "data row", note)


# ---------------------------------------------------------------------------------------
# Grades
# ---------------------------------------------------------------------------------------
def _numbers(t: _Table, column: str) -> np.ndarray:
    s = t.frame[column].str.strip()
    values = pd.to_numeric(s, errors="coerce").to_numpy(dtype=float)
    t.first_bad(~np.isfinite(values), column, "{value} is not a number")
    return values


def infer_grade_range(values: np.ndarray, column: str = "relevance") -> tuple[float, float]:
    """The source scale (lo, hi) of numeric grades read from `column`.

    A `median_relevance` column or any value above 3 means 1..4 (CrowdFlower); whole
    numbers within 0..3 are taken as already 0..3; fractional values within 1..3 mean
    1..3 (Home Depot's averaged grades), other fractional values 0..3. Pass an explicit
    `grade_range` to the loaders when this would be wrong, e.g. a 0..3 file that
    happens to have no 0s and fractional values.
    """
    lo, hi = float(np.min(values)), float(np.max(values))
    integral = bool(np.all(values == np.round(values)))
    if column == "median_relevance" or hi > MAX_GRADE:
        return (1.0, 4.0)  # CrowdFlower: 1 (irrelevant) .. 4 (perfect)
    if integral:
        return (0.0, 3.0)
    return (1.0, 3.0) if lo >= 1 else (0.0, 3.0)  # Home Depot: averages of 1..3


def grades_to_0_3(values: np.ndarray, grade_range: tuple[float, float]) -> np.ndarray:
    """Grades on the scale `grade_range` = (lo, hi) mapped linearly onto 0..3.

    Rounds half up: on 1..4, 1/2/3/4 -> 0/1/2/3; on 1..3 (Home Depot), 1 -> 0,
    1.33 -> 0, 1.67 -> 1, 2 -> 2, 2.33 -> 2, 2.67 -> 3, 3 -> 3.
    """
    lo, hi = grade_range
    if hi <= lo:
        raise ValueError(f"grade_range must have lo < hi, got {grade_range}")
    scaled = (np.asarray(values, dtype=float) - lo) * MAX_GRADE / (hi - lo)
    return np.clip(np.floor(scaled + 0.5), 0, MAX_GRADE).astype(np.int64)


def _grades(t: _Table, column: str, grade_range: tuple[float, float] | None) -> np.ndarray:
    """Checked numeric grades of `column` on 0..3 (values outside the scale raise)."""
    values = _numbers(t, column)
    if len(values) == 0:
        return values.astype(np.int64)
    if grade_range is None:
        t.first_bad((values < 0) | (values > 4), column, "grade {value} is outside 0..4")
        grade_range = infer_grade_range(values, column)
        logger.info("%s: grades in column %r read on a %g..%g scale", t.path, column, *grade_range)
    lo, hi = grade_range
    t.first_bad((values < lo) | (values > hi), column, f"grade {{value}} is outside {lo:g}..{hi:g}")
    return grades_to_0_3(values, (lo, hi))


def _labels_to_grades(t: _Table, column: str, grades: Mapping[str, int]) -> np.ndarray:
    s = t.frame[column].str.strip()
    t.first_bad(
        ~s.isin(list(grades)).to_numpy(),
        column,
        f"unknown label {{value}}, expected one of {sorted(grades)}",
    )
    return s.map(grades).to_numpy(dtype=np.int64)


def _check_queries(t: _Table, column: str) -> pd.Series:
    s = t.frame[column]
    t.first_bad((s.str.strip() == "").to_numpy(), column, "empty query")
    return s


def _check_splits(t: _Table, column: str) -> pd.Series:
    """Lower-cased split names; "" (not given) is allowed."""
    s = t.frame[column].str.strip().str.lower()
    bad = ~s.isin([*SPLITS, ""]).to_numpy()
    t.first_bad(bad, column, f"split {{value}} is not one of {SPLITS}")
    return s


# ---------------------------------------------------------------------------------------
# Assembling tables into ShopData
# ---------------------------------------------------------------------------------------
def _ids_for(keys: pd.Series) -> tuple[np.ndarray, str]:
    """int64 ids for unique string keys: the keys themselves when all are integers."""
    if len(keys) and keys.str.fullmatch(r"-?\d{1,18}").all():
        return keys.astype(np.int64).to_numpy(), "kept"
    return np.arange(1, len(keys) + 1, dtype=np.int64), "assigned"


def _disagreements(frame: pd.DataFrame, key: str, column: str) -> int:
    """Rows whose `column` differs from the first row with the same `key`."""
    first = frame.groupby(key, sort=False)[column].transform("first")
    return int((frame[column] != first).sum())


# Long on purpose: the one place every loader's string-keyed rows become the ShopData
# schema (ids, dedup, splits, grades); each step's checks read the previous step's frames.
def _build(
    source: str,
    products: pd.DataFrame,
    queries: pd.DataFrame,
    judged: pd.DataFrame,
    seed: int,
) -> ShopData:
    """Catalog, queries and judgements from string-keyed frames.

    products: key + text fields (+ price), one row per occurrence (repeats allowed).
    queries: qkey + query (+ query_id int64, + split), one row per occurrence.
    judged: qkey, key, relevance (int64 0..3).
    """
    # -- catalog ------------------------------------------------------------------------
    for field in _TEXT_FIELDS:
        if field not in products.columns:
            products[field] = ""
    if "price" not in products.columns:
        products["price"] = np.nan
    dup = products.duplicated("key")
    conflicts = _disagreements(products, "key", "title")
    if conflicts:
        logger.warning(
            "%s: %d product rows repeat an id with a different title; the first one is kept",
            source,
            conflicts,
        )
    cat = products[~dup].reset_index(drop=True)
    missing = pd.Index(judged["key"].unique()).difference(pd.Index(cat["key"]))
    if len(missing):
        logger.warning(
            "%s: %d judged products are not in the product table; they are kept with empty text",
            source,
            len(missing),
        )
        extra = pd.DataFrame({"key": list(missing)})
        for field in _TEXT_FIELDS:
            extra[field] = ""
        extra["price"] = np.nan
        cat = pd.concat([cat, extra], ignore_index=True)
    product_ids, how = _ids_for(cat["key"])
    logger.info("%s: %d products (%s ids)", source, len(cat), how)
    catalog = pd.DataFrame({"product_id": product_ids})
    for field in _TEXT_FIELDS:
        catalog[field] = cat[field].astype(str).to_numpy()
    catalog["price"] = cat["price"].astype(np.float64).to_numpy()
    pid_of = pd.Series(product_ids, index=cat["key"].to_numpy())

    # -- queries ------------------------------------------------------------------------
    qdup = queries.duplicated("qkey")
    conflicts = _disagreements(queries, "qkey", "query")
    if conflicts:
        logger.warning(
            "%s: %d rows give another query string for a known query_id; the first one is kept",
            source,
            conflicts,
        )
    q = queries[~qdup].reset_index(drop=True)
    query_ids = (
        q["query_id"].astype(np.int64).to_numpy()
        if "query_id" in q.columns
        else np.arange(1, len(q) + 1, dtype=np.int64)
    )
    split = np.asarray(split_by_key(list(q["query"]), seed), dtype=object)
    if "split" in queries.columns:
        # A query takes the first split its rows give; queries without one get the hash's.
        given = queries[queries["split"] != ""]
        clash = _disagreements(given, "qkey", "split")
        if clash:
            logger.warning(
                "%s: %d rows put a query in another split than its first row; "
                "the first one is kept",
                source,
                clash,
            )
        first = given.drop_duplicates("qkey").set_index("qkey")["split"]
        chosen = first.reindex(q["qkey"].to_numpy()).to_numpy(dtype=object)
        has = pd.notna(chosen)
        split[has] = chosen[has]
    query_table = pd.DataFrame(
        {
            "query_id": query_ids,
            "query": q["query"].astype(str).to_numpy(),
            "split": np.asarray(split, dtype=object),
        }
    )
    qid_of = pd.Series(query_ids, index=q["qkey"].to_numpy())

    # -- judgements ---------------------------------------------------------------------
    jq = qid_of.reindex(judged["qkey"].to_numpy())
    if jq.isna().any():
        # A label whose query is absent from the query table cannot be attached.
        raise DataError(
            f"{source}: {int(jq.isna().sum())} judgements reference unknown "
            f"queries (first: {judged['qkey'].iloc[int(np.argmax(jq.isna()))]!r})",
            source=source,
            column="query_id",
        )
    jud = pd.DataFrame(
        {
            "query_id": jq.to_numpy(dtype=np.int64),
            "product_id": pid_of.reindex(judged["key"].to_numpy()).to_numpy(dtype=np.int64),
            "relevance": judged["relevance"].to_numpy(dtype=np.int64),
        }
    )
    pairs = jud.duplicated(["query_id", "product_id"], keep=False)
    if pairs.any():
        n_rows = int(pairs.sum())
        mean = jud.groupby(["query_id", "product_id"], sort=False)["relevance"].mean()
        jud = mean.reset_index()
        jud["relevance"] = np.floor(jud["relevance"].to_numpy() + 0.5).astype(np.int64)
        logger.warning(
            "%s: %d rows judge an already-judged (query, product) pair; their "
            "grades are averaged and rounded",
            source,
            n_rows,
        )
    data = ShopData(catalog=catalog, queries=query_table, judgements=jud.reset_index(drop=True))
    validate(data)
    logger.info("%s: %s", source, data.summary())
    return data


def _rows_to_shop(
    t: _Table,
    query_col: str,
    keys: pd.Series,
    products: pd.DataFrame,
    grades: np.ndarray,
    seed: int,
    split: pd.Series | None = None,
) -> ShopData:
    """One-table sources: every row carries query, product and grade."""
    qtext = t.frame[query_col]
    queries = pd.DataFrame({"qkey": qtext.to_numpy(), "query": qtext.to_numpy()})
    if split is not None:
        queries["split"] = split.to_numpy()
    products = products.assign(key=keys.to_numpy())
    judged = pd.DataFrame({"qkey": qtext.to_numpy(), "key": keys.to_numpy(), "relevance": grades})
    return _build(str(t.path), products, queries, judged, seed)


# ---------------------------------------------------------------------------------------
# Public loaders
# ---------------------------------------------------------------------------------------
def load_relevance_csv(
    path: str | Path,
    *,
    relevance_column: str | None = None,
    grade_range: tuple[float, float] | None = None,
    seed: int = 0,
    encoding: str | None = None,
) -> ShopData:
    """A Kaggle-style relevance CSV (CrowdFlower, Home Depot shape), optionally gzipped.

    Columns: `query` (or `search_term`), `product_title`, optional
    `product_description`, and `relevance_column` (default: `relevance`, else
    `median_relevance`). Product ids are assigned per unique (title, description), query
    ids per unique query string. Grades are mapped onto 0..3 from `grade_range`, or from
    the scale `infer_grade_range` finds.
    """
    t = _read(path, encoding=encoding)
    query_col = t.need(("query", "search_term"))
    title_col = t.need(("product_title", "title"))
    rel_col = t.need((relevance_column,) if relevance_column else ("relevance", "median_relevance"))
    _check_queries(t, query_col)
    grades = _grades(t, rel_col, grade_range)
    title = t.frame[title_col].str.strip()
    description = t.get(("product_description", "description"))
    keys = title + "\x1f" + description
    products = pd.DataFrame({"title": title, "description": description})
    return _rows_to_shop(t, query_col, keys, products, grades, seed)


def load_table(
    path: str | Path,
    *,
    grade_range: tuple[float, float] | None = None,
    seed: int = 0,
    encoding: str | None = None,
) -> ShopData:
    """The judgements join as one file: JSONL, JSON, CSV/TSV (.gz ok) or Parquet.

    Required: `query`, `title` (or `product_title`), `relevance` (0..3, or any scale
    `grades_to_0_3` understands). Optional: `description` (or `product_description`),
    `product_id` (int or string; without it (title, description) identifies a
    product), `category`, `brand`, `color`, `material`, `size`, `price`, and `split`
    (train/val/test, per query; assigned by hash when absent).
    """
    t = _read(path, encoding=encoding)
    query_col = t.need(("query",))
    title_col = t.need(("title", "product_title"))
    rel_col = t.need(("relevance",))
    _check_queries(t, query_col)
    grades = _grades(t, rel_col, grade_range)
    products = pd.DataFrame({"title": t.frame[title_col].str.strip()})
    products["description"] = t.get(("description", "product_description")).to_numpy()
    for field in ("category", "brand", "color", "material", "size"):
        products[field] = t.get((field,)).to_numpy()
    price_col = t.column(("price",))
    if price_col:
        raw = t.frame[price_col].str.strip()
        price = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
        t.first_bad(
            (raw != "").to_numpy() & ~np.isfinite(price), price_col, "price {value} is not a number"
        )
        t.first_bad(price < 0, price_col, "negative price {value}")
        products["price"] = price
    id_col = t.column(("product_id",))
    if id_col:
        keys = t.frame[id_col].str.strip()
        t.first_bad((keys == "").to_numpy(), id_col, "empty product id")
    else:
        keys = products["title"] + "\x1f" + products["description"]
    split_col = t.column(("split",))
    split = _check_splits(t, split_col) if split_col else None
    return _rows_to_shop(t, query_col, keys, products, grades, seed, split)


def load_jsonl(
    path: str | Path,
    *,
    grade_range: tuple[float, float] | None = None,
    seed: int = 0,
    encoding: str | None = None,
) -> ShopData:
    """`load_table` for a JSONL file (one JSON object per line; errors name the line)."""
    if not _stem(Path(path)).endswith((".jsonl", ".ndjson")):
        raise DataError(f"{path}: expected a .jsonl or .ndjson file", source=str(path))
    return load_table(path, grade_range=grade_range, seed=seed, encoding=encoding)


# Long on purpose: ESCI's columns, locales and splits are mapped in the order the files
# are read; split, each part would re-read or re-filter the same large frames.
def load_esci(
    examples_path: str | Path,
    products_path: str | Path,
    *,
    locale: str | None = "us",
    small_version: bool = False,
    seed: int = 0,
    encoding: str | None = None,
) -> ShopData:
    """Amazon ESCI (Shopping Queries Dataset) examples + products, Parquet or CSV.

    Examples: `query`, `query_id`, `product_id` (ASIN), `esci_label` (E/S/C/I -> 3/2/1/0),
    optional `product_locale`, `small_version`, `split`. Products: `product_id`, optional
    `product_title`, `product_description`, `product_bullet_point` (appended to the
    description), `product_brand`, `product_color`, `product_locale`. Rows of other
    locales (and, with `small_version`, outside the reduced set) are left out and counted
    in the log. ESCI's test split stays test; 15% of its train queries become val.
    """
    ex = _read(examples_path, encoding=encoding)
    pr = _read(products_path, encoding=encoding)
    for name in ("query", "query_id", "product_id", "esci_label"):
        ex.need((name,))
    pr.need(("product_id",))
    _check_queries(ex, "query")
    qids = pd.to_numeric(ex.frame["query_id"].str.strip(), errors="coerce").to_numpy(dtype=float)
    ex.first_bad(
        ~np.isfinite(qids) | (qids != np.round(qids)),
        "query_id",
        "query id {value} is not an integer",
    )
    grades = _labels_to_grades(ex, "esci_label", ESCI_GRADES)
    keep = np.ones(len(ex.frame), dtype=bool)
    if locale is not None and "product_locale" in ex.frame.columns:
        keep &= (ex.frame["product_locale"].str.strip() == locale).to_numpy()
    if small_version and "small_version" in ex.frame.columns:
        keep &= (ex.frame["small_version"].str.strip() == "1").to_numpy()
    if not keep.all():
        logger.warning(
            "%s: %d of %d example rows left out (locale=%r, small_version=%s)",
            ex.path,
            int((~keep).sum()),
            len(keep),
            locale,
            small_version,
        )
    exf = ex.frame[keep]
    if len(exf) == 0:
        raise DataError(
            f"{ex.path}: no example rows left for locale={locale!r}",
            source=str(ex.path),
            column="product_locale",
        )

    prf = pr.frame
    if locale is not None and "product_locale" in prf.columns:
        pkeep = (prf["product_locale"].str.strip() == locale).to_numpy()
        if not pkeep.all():
            logger.info(
                "%s: %d product rows of other locales left out", pr.path, int((~pkeep).sum())
            )
        prf = prf[pkeep]
    pt = _Table(pr.path, prf, pr.rows, pr.row_word, pr.row_note)
    description = pt.get(("product_description",))
    bullets = pt.get(("product_bullet_point",))
    products = pd.DataFrame(
        {
            "key": prf["product_id"].str.strip().to_numpy(),
            "title": pt.get(("product_title",)).to_numpy(),
            "description": (description + " " + bullets).str.strip().to_numpy(),
            "brand": pt.get(("product_brand",)).to_numpy(),
            "color": pt.get(("product_color",)).to_numpy(),
        }
    )
    queries = pd.DataFrame(
        {
            "qkey": exf["query_id"].str.strip().to_numpy(),
            "query": exf["query"].to_numpy(),
            "query_id": qids[keep].astype(np.int64),
        }
    )
    if "split" in exf.columns:
        all_splits = ex.frame["split"].str.strip().str.lower()
        source_split = all_splits[keep]
        ex.first_bad(
            ~all_splits.isin(["train", "test", ""]).to_numpy() & keep,
            "split",
            "split {value} is not train or test",
        )
        # Val comes out of train, by query, so ESCI's test set stays untouched.
        val = split_by_key(list(exf["query"]), seed, (0.85, 0.15, 0.0)) == "val"
        queries["split"] = np.where(source_split == "test", "test", np.where(val, "val", "train"))
    judged = pd.DataFrame(
        {
            "qkey": queries["qkey"].to_numpy(),
            "key": exf["product_id"].str.strip().to_numpy(),
            "relevance": grades[keep],
        }
    )
    return _build(f"ESCI {ex.path}", products, queries, judged, seed)


def _feature(features: pd.Series, name: str) -> list[str]:
    """The value of attribute `name` in WANDS "key : value|key:value" strings ("" if none).

    An exact key wins; otherwise the first key containing `name` (e.g. "dsprimarycolor").
    """
    out = []
    for text in features:
        exact = partial = ""
        for pair in text.split("|"):
            key, _, value = pair.partition(":")
            key, value = key.strip().lower(), value.strip()
            if not value:
                continue
            if key == name:
                exact = value
                break
            if not partial and name in key:
                partial = value
        out.append(exact or partial)
    return out


def load_wands(
    query_csv: str | Path,
    product_csv: str | Path,
    label_csv: str | Path,
    *,
    label_grades: Mapping[str, int] | None = None,
    seed: int = 0,
    encoding: str | None = None,
) -> ShopData:
    """Wayfair WANDS: tab-separated query.csv, product.csv and label.csv.

    query.csv: `query_id`, `query` (`query_class` unused). product.csv: `product_id`,
    `product_name`, optional `product_class`, `category hierarchy`,
    `product_description`, `product_features`. label.csv: `query_id`, `product_id`,
    `label` mapped by `label_grades` (default Exact 3, Partial 2, Irrelevant 0).
    Queries without labels are kept (they have no judgements).
    """
    grades_map = dict(label_grades or WANDS_GRADES)
    qt = _read(query_csv, sep="\t", encoding=encoding)
    pt = _read(product_csv, sep="\t", encoding=encoding)
    lt = _read(label_csv, sep="\t", encoding=encoding)
    for t, cols in (
        (qt, ("query_id", "query")),
        (pt, ("product_id", "product_name")),
        (lt, ("query_id", "product_id", "label")),
    ):
        for c in cols:
            t.need((c,))
    _check_queries(qt, "query")
    for t in (qt, pt, lt):
        for c in ("query_id", "product_id"):
            if c in t.frame.columns:
                s = t.frame[c].str.strip()
                t.first_bad(
                    ~s.str.fullmatch(r"\d{1,18}").to_numpy(),
                    c,
                    "id {value} is not a non-negative integer",
                )
    grades = _labels_to_grades(lt, "label", grades_map)

    hierarchy = pt.get(("category hierarchy", "category_hierarchy"))
    category = hierarchy.str.split("/").map(
        lambda parts: CATEGORY_SEPARATOR.join(p.strip() for p in parts if p.strip())
    )
    product_class = pt.get(("product_class",))
    category = category.where(category != "", product_class)
    features = pt.get(("product_features",))
    products = pd.DataFrame(
        {
            "key": pt.frame["product_id"].str.strip().to_numpy(),
            "title": pt.frame["product_name"].str.strip().to_numpy(),
            "description": pt.get(("product_description",)).to_numpy(),
            "category": category.to_numpy(),
            "color": _feature(features, "color"),
            "material": _feature(features, "material"),
        }
    )
    qkeys = qt.frame["query_id"].str.strip()
    queries = pd.DataFrame(
        {
            "qkey": qkeys.to_numpy(),
            "query": qt.frame["query"].to_numpy(),
            "query_id": qkeys.astype(np.int64).to_numpy(),
        }
    )
    judged = pd.DataFrame(
        {
            "qkey": lt.frame["query_id"].str.strip().to_numpy(),
            "key": lt.frame["product_id"].str.strip().to_numpy(),
            "relevance": grades,
        }
    )
    return _build(f"WANDS {lt.path}", products, queries, judged, seed)


FORMATS = ("auto", "shoprank", "relevance_csv", "table", "jsonl", "esci", "wands")


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in (".parquet", ".csv", ".csv.gz", ".tsv", ".jsonl"):
        for candidate in (folder / f"{stem}{suffix}", folder / "dataset" / f"{stem}{suffix}"):
            if candidate.is_file():
                return candidate
    return None


def _shoprank_root(folder: Path) -> Path | None:
    """The run folder of saved ShopData at `folder` (the run folder or its data folder)."""
    for root in (folder, folder.parent):
        paths = ArtifactPaths(root)
        if paths.catalog.is_file() and (root == folder or paths.data == folder):
            return root
    return None


def load_any(
    path_or_dir: str | Path, fmt: str = "auto", encoding: str | None = None, **options: Any
) -> ShopData:
    """Load any supported source; `fmt` one of `FORMATS`, "auto" guesses from the path.

    A folder is a saved shoprank run (see `shoprank.data.datasets.save`), an ESCI folder
    (shopping_queries_dataset_examples/_products files) or a WANDS folder (query.csv,
    product.csv, label.csv, directly or under dataset/). A file is a relevance CSV when it
    has a `product_title` column, `load_table` otherwise. `options` go to the loader; text
    files are read in `encoding`, or the one `detect_encoding` finds.
    """
    path = Path(path_or_dir)
    options["encoding"] = encoding or None
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {FORMATS}")
    if not path.exists():
        raise DataError(f"{path}: file or folder not found", source=str(path))
    if path.is_dir():
        root = _shoprank_root(path)
        examples, products = _find(path, ESCI_EXAMPLES), _find(path, ESCI_PRODUCTS)
        wands = [path / name for name in WANDS_FILES]
        if not all(p.is_file() for p in wands):
            wands = [path / "dataset" / name for name in WANDS_FILES]
        if fmt in ("auto", "shoprank") and root is not None:
            return load(ArtifactPaths(root))
        if fmt in ("auto", "esci") and examples and products:
            return load_esci(examples, products, **options)
        if fmt in ("auto", "wands") and all(p.is_file() for p in wands):
            return load_wands(*wands, **options)
        raise DataError(
            f"{path}: no {fmt if fmt != 'auto' else 'known'} data set found in this folder "
            f"(expected a shoprank run, ESCI {ESCI_EXAMPLES}/{ESCI_PRODUCTS} files or WANDS "
            f"{', '.join(WANDS_FILES)})",
            source=str(path),
        )
    if fmt in ("shoprank", "esci", "wands"):
        raise DataError(f"{path}: format {fmt!r} expects a folder", source=str(path))
    if fmt == "jsonl":
        return load_jsonl(path, **options)
    if fmt == "table":
        return load_table(path, **options)
    if fmt == "relevance_csv":
        return load_relevance_csv(path, **options)
    stem = _stem(path)
    if stem.endswith((".csv", ".tsv")):
        try:
            with _open_text(path, encoding) as fh:
                header = fh.readline()
        except (UnicodeDecodeError, LookupError) as exc:
            raise _encoding_error(path, exc) from None
        if "product_title" in header:
            return load_relevance_csv(path, **options)
    return load_table(path, **options)
