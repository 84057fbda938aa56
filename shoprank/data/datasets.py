"""Dataset schema and I/O shared by every training stage.

A shop is five tables, held in memory as pandas DataFrames by `ShopData` and stored as
Parquet files at the paths named by `contract.ArtifactPaths` (`.catalog`, `.queries`,
`.judgements`, `.users`, `.events`). `users` and `events` are optional: data sets that
only have relevance judgements (Kaggle CSVs, ESCI, WANDS) leave them out.

catalog — one row per product
    product_id   int64    unique
    title        str      product title, e.g. "Nordvik Aria Grey Velvet 3-Seat Sofa"
    description  str      free text, may be ""
    category     str      path from department to leaf, " > "-separated,
                          e.g. "Furniture > Living Room > Sofas"; may be "" when unknown
    brand        str      may be ""
    color        str      may be ""
    material     str      may be ""
    size         str      may be "" (not every category has sizes)
    price        float64  NaN when the source has no price
    in_stock     bool     optional: False when the product cannot be bought now (filters
                          may ask for in-stock products only); absent means all in stock

queries — one row per query string
    query_id     int64    unique
    query        str      non-empty, as typed by the shopper (typos included)
    split        str      "train" | "val" | "test", assigned per query (never per row), so
                          no query string is seen in two splits; about 70/15/15

judgements — graded relevance of (query, product) pairs
    query_id     int64    references queries.query_id
    product_id   int64    references catalog.product_id
    relevance    int64    0..3: 3 exact (right category, every stated attribute matches),
                          2 substitute (right category, most attributes), 1 related
                          (related category, or right category with conflicting
                          attributes), 0 irrelevant. (query_id, product_id) is unique.

users (optional) — one row per shopper
    user_id               int64  unique
    preferred_categories  str    category paths joined with " | "
    preferred_brands      str    brand names joined with " | "
    price_band            str    "budget" | "mid" | "premium"

events (optional) — one row per logged interaction
    session_id   int64    one search by one user; ids increase with session start time
    user_id      int64    references users.user_id (when users is present)
    query_id     int64    references queries.query_id
    timestamp    int64    unix seconds
    event_type   str      "impression" | "click" | "add_to_cart" | "purchase"
    product_id   int64    references catalog.product_id
    position     int64    0-based rank at which the product was shown; a click, cart or
                          purchase carries the position of its impression in that session
    split        str      "train" | "val" | "test", assigned per session by its start
                          time: the earliest ~80% of sessions are train, the next ~10%
                          val, the last ~10% test, so models never train on the future

Product text (`product_text`) puts the title first, then the key attributes — brand,
category leaf, color, material, size — and the description last, so that when the
encoder truncates at `contract.MAX_PRODUCT_TOKENS` tokens the part that is cut is
the least informative one. Empty attributes are skipped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from shoprank.contract import ArtifactPaths

SPLITS = ("train", "val", "test")
EVENT_TYPES = ("impression", "click", "add_to_cart", "purchase")
# The events that make up a shopper's history: what they clicked or bought, oldest first.
HISTORY_EVENTS = ("click", "purchase")
PRICE_BANDS = ("budget", "mid", "premium")
MAX_GRADE = 3
# Joins multi-valued user preferences; " > " is taken by category paths.
LIST_SEPARATOR = " | "
CATEGORY_SEPARATOR = " > "

# Column -> kind ("int", "str", "float"), in storage order.
CATALOG_COLUMNS: dict[str, str] = {
    "product_id": "int",
    "title": "str",
    "description": "str",
    "category": "str",
    "brand": "str",
    "color": "str",
    "material": "str",
    "size": "str",
    "price": "float",
}
IN_STOCK = "in_stock"
# Columns a table may have beyond its schema; kept by `save` when present.
OPTIONAL_COLUMNS: dict[str, tuple[str, ...]] = {"catalog": (IN_STOCK,)}
QUERY_COLUMNS: dict[str, str] = {"query_id": "int", "query": "str", "split": "str"}
JUDGEMENT_COLUMNS: dict[str, str] = {"query_id": "int", "product_id": "int", "relevance": "int"}
USER_COLUMNS: dict[str, str] = {
    "user_id": "int",
    "preferred_categories": "str",
    "preferred_brands": "str",
    "price_band": "str",
}
EVENT_COLUMNS: dict[str, str] = {
    "session_id": "int",
    "user_id": "int",
    "query_id": "int",
    "timestamp": "int",
    "event_type": "str",
    "product_id": "int",
    "position": "int",
    "split": "str",
}
SCHEMA: dict[str, dict[str, str]] = {
    "catalog": CATALOG_COLUMNS,
    "queries": QUERY_COLUMNS,
    "judgements": JUDGEMENT_COLUMNS,
    "users": USER_COLUMNS,
    "events": EVENT_COLUMNS,
}


class DataError(ValueError):
    """Input data that breaks the schema; the message names table or file, row and column."""

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        row: int | None = None,
        column: str | None = None,
    ) -> None:
        super().__init__(message)
        self.source = source
        self.row = row
        self.column = column


@dataclass
class ShopData:
    """The tables of one shop; `users` and `events` are None when the source has none."""

    catalog: pd.DataFrame
    queries: pd.DataFrame
    judgements: pd.DataFrame
    users: pd.DataFrame | None = None
    events: pd.DataFrame | None = None

    def tables(self) -> dict[str, pd.DataFrame]:
        """The present tables by name, in schema order."""
        tables = {name: getattr(self, name) for name in SCHEMA}
        return {name: table for name, table in tables.items() if table is not None}

    def summary(self) -> str:
        """One line of row counts, e.g. for a CLI to print."""
        tables = self.tables()
        return " ".join(
            f"{name}={len(tables[name]):,}" if name in tables else f"{name}=none" for name in SCHEMA
        )


# ---------------------------------------------------------------------------------------
# Persistence
# ---------------------------------------------------------------------------------------
def _as_paths(paths: ArtifactPaths | str | Path) -> ArtifactPaths:
    return paths if isinstance(paths, ArtifactPaths) else ArtifactPaths(Path(paths))


def _table_paths(paths: ArtifactPaths) -> dict[str, Path]:
    # Each table's ArtifactPaths property is named as in SCHEMA.
    return {name: getattr(paths, name) for name in SCHEMA}


def save(data: ShopData, paths: ArtifactPaths | str | Path) -> None:
    """Write every present table as Parquet under `paths.data` (the schema's columns only).

    `paths` may also be a run folder, taken as `ArtifactPaths(folder)`.

    An optional table that is None has its old file removed, so a later `load` cannot
    mix this run's catalog with a previous run's events.
    """
    paths = _as_paths(paths)
    paths.data.mkdir(parents=True, exist_ok=True)
    tables = data.tables()
    for name, path in _table_paths(paths).items():
        if name in tables:
            table = tables[name]
            extra = [c for c in OPTIONAL_COLUMNS.get(name, ()) if c in table.columns]
            frame = table[[*SCHEMA[name], *extra]].reset_index(drop=True)
            frame.to_parquet(path, index=False)
        elif path.exists():
            path.unlink()


def load(paths: ArtifactPaths | str | Path, *, check: bool = True) -> ShopData:
    """Read the tables written by `save`; missing optional tables come back as None.

    `paths` may also be a run folder. With `check` (the default) the result is passed
    through `validate`.
    """
    paths = _as_paths(paths)
    frames: dict[str, pd.DataFrame | None] = {}
    for name, path in _table_paths(paths).items():
        if path.exists():
            frames[name] = pd.read_parquet(path)
        elif name in ("users", "events"):
            frames[name] = None
        else:
            raise DataError(f"{path}: file not found (required table '{name}')", source=str(path))
    data = ShopData(**frames)  # type: ignore[arg-type]
    if check:
        validate(data)
    return data


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------
def _fail_rows(table: str, df: pd.DataFrame, bad: np.ndarray, column: str, what: str) -> None:
    """Raise a DataError for the first True in `bad`, if any."""
    bad = np.asarray(bad, dtype=bool)
    if not bad.any():
        return
    pos = int(np.flatnonzero(bad)[0])
    value = df[column].iloc[pos]
    count = int(bad.sum())
    more = f" ({count:,} bad rows in total)" if count > 1 else ""
    raise DataError(
        f"{table}: row {pos} (0-based position), column '{column}': {what}, got {value!r}{more}",
        source=table,
        row=pos,
        column=column,
    )


def _check_columns(table: str, df: pd.DataFrame, columns: Mapping[str, str]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(
            f"{table}: missing column(s) {missing}; has {list(df.columns)}",
            source=table,
            column=missing[0],
        )
    numeric = {"int": np.dtype(np.int64), "float": np.dtype(np.float64)}
    for col, kind in columns.items():
        s = df[col]
        if kind in numeric:
            if s.dtype != numeric[kind]:
                raise DataError(
                    f"{table}: column '{col}' must be {numeric[kind]}, got dtype {s.dtype}",
                    source=table,
                    column=col,
                )
        else:
            _fail_rows(table, df, s.isna().to_numpy(), col, "missing value (use '' for none)")
            if not pd.api.types.is_string_dtype(s.dtype) or (
                s.dtype == object and not all(isinstance(v, str) for v in s)
            ):
                bad = np.array([not isinstance(v, str) for v in s], dtype=bool)
                _fail_rows(table, df, bad, col, "expected a string")
                raise DataError(
                    f"{table}: column '{col}' must hold strings, got dtype {s.dtype}",
                    source=table,
                    column=col,
                )


def _check_unique(table: str, df: pd.DataFrame, column: str) -> None:
    _fail_rows(table, df, df[column].duplicated().to_numpy(), column, "duplicate id")


def _check_in(
    table: str, df: pd.DataFrame, column: str, allowed: Iterable[object], what: str
) -> None:
    allowed = list(allowed)
    _fail_rows(table, df, ~df[column].isin(allowed).to_numpy(), column, what)


def validate(data: ShopData) -> None:
    """Check columns, dtypes, value ranges and references; raise `DataError` on the first problem.

    Messages name the table, the 0-based row position and the column, plus how many rows
    share the problem.
    """
    cat, qry, jud = data.catalog, data.queries, data.judgements
    _check_columns("catalog", cat, CATALOG_COLUMNS)
    _check_unique("catalog", cat, "product_id")
    price = cat["price"].to_numpy()
    _fail_rows("catalog", cat, price < 0, "price", "negative price")
    _fail_rows("catalog", cat, np.isinf(price), "price", "infinite price")

    _check_columns("queries", qry, QUERY_COLUMNS)
    _check_unique("queries", qry, "query_id")
    _fail_rows("queries", qry, (qry["query"].str.strip() == "").to_numpy(), "query", "empty query")
    _check_in("queries", qry, "split", SPLITS, f"split must be one of {SPLITS}")

    _check_columns("judgements", jud, JUDGEMENT_COLUMNS)
    rel = jud["relevance"].to_numpy()
    _fail_rows("judgements", jud, (rel < 0) | (rel > MAX_GRADE), "relevance", "grade not in 0..3")
    _check_in("judgements", jud, "query_id", qry["query_id"], "query id not in queries")
    _check_in("judgements", jud, "product_id", cat["product_id"], "product id not in catalog")
    dup = jud.duplicated(["query_id", "product_id"]).to_numpy()
    _fail_rows("judgements", jud, dup, "product_id", "(query_id, product_id) judged twice")

    if data.users is not None:
        users = data.users
        _check_columns("users", users, USER_COLUMNS)
        _check_unique("users", users, "user_id")
        _check_in("users", users, "price_band", PRICE_BANDS, f"must be one of {PRICE_BANDS}")

    if data.events is not None:
        ev = data.events
        _check_columns("events", ev, EVENT_COLUMNS)
        _check_in("events", ev, "event_type", EVENT_TYPES, f"must be one of {EVENT_TYPES}")
        _check_in("events", ev, "split", SPLITS, f"split must be one of {SPLITS}")
        _fail_rows("events", ev, ev["position"].to_numpy() < 0, "position", "negative position")
        _check_in("events", ev, "query_id", qry["query_id"], "query id not in queries")
        _check_in("events", ev, "product_id", cat["product_id"], "product id not in catalog")
        if data.users is not None:
            _check_in("events", ev, "user_id", data.users["user_id"], "user id not in users")
        _check_event_positions(ev)


def _check_event_positions(ev: pd.DataFrame) -> None:
    """Every click/cart/purchase must match an impression of the same session, product, position."""
    keys = ["session_id", "product_id", "position"]
    acts = ev["event_type"].to_numpy() != "impression"
    if not acts.any():
        return
    shown = ev.loc[~acts, keys].drop_duplicates()
    hit = ev.loc[acts, keys].merge(shown, on=keys, how="left", indicator=True)["_merge"]
    orphan = np.zeros(len(ev), dtype=bool)
    orphan[np.flatnonzero(acts)] = (hit == "left_only").to_numpy()
    _fail_rows("events", ev, orphan, "position", "no impression at this position in the session")


# ---------------------------------------------------------------------------------------
# Helpers shared by the generator and the loaders
# ---------------------------------------------------------------------------------------
def split_by_key(
    keys: Sequence[str], seed: int = 0, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
) -> np.ndarray:
    """Deterministic train/val/test labels for `keys` (e.g. query strings), one per key.

    The distinct keys are ordered by a seeded hash and cut at the given fractions, so the
    proportions are exact over distinct keys, equal keys always share a label, and a key
    keeps its split when unrelated keys are added or removed (unless it sits at a cut).
    """
    distinct = list(dict.fromkeys(str(k) for k in keys))
    n = len(distinct)
    salt = str(seed).encode()
    digests = [hashlib.blake2b(k.encode(), key=salt, digest_size=8).digest() for k in distinct]
    order = sorted(range(n), key=lambda i: digests[i])
    n_train = round(fractions[0] * n)
    n_val = round((fractions[0] + fractions[1]) * n) - n_train
    labels = np.empty(n, dtype=object)
    labels[order] = ["train"] * n_train + ["val"] * n_val + ["test"] * (n - n_train - n_val)
    label_of = dict(zip(distinct, labels, strict=True))
    return np.array([label_of[str(k)] for k in keys], dtype=object)


def category_leaf(category: str) -> str:
    """The last element of a category path ("Furniture > Living Room > Sofas" -> "Sofas")."""
    return category.rsplit(">", 1)[-1].strip()


_TEXT_ATTRIBUTES = ("brand", "category", "color", "material", "size")


def _one_text(fields: Mapping[str, object]) -> str:
    def get(name: str) -> str:
        v = fields.get(name, "")
        if v is None or (not isinstance(v, str) and pd.isna(v)):
            return ""
        return str(v).strip()

    parts = [get("title")]
    for name in _TEXT_ATTRIBUTES:
        value = get(name)
        if name == "category":
            value = category_leaf(value)
        if value:
            parts.append(value if name == "category" else f"{name} {value}")
    parts.append(get("description"))
    return " | ".join(p for p in parts if p)


def product_text(product: pd.DataFrame | pd.Series | Mapping[str, object]) -> str | list[str]:
    """The encoder's text for one product (a row) or for every row of a DataFrame.

    Order: title, then brand, category leaf, color, material, size, then description,
    " | "-separated with empty fields skipped, e.g.
    "Nordvik Aria Grey Velvet 3-Seat Sofa | brand Nordvik | Sofas | color grey |
    material velvet | size 3-Seat | The Nordvik Aria sofa ...". The description goes
    last so truncation at `contract.MAX_PRODUCT_TOKENS` drops only its tail. Missing columns
    count as empty.
    """
    if isinstance(product, pd.DataFrame):
        cols = ["title", *_TEXT_ATTRIBUTES, "description"]
        present = [c for c in cols if c in product.columns]
        if not present:
            return [""] * len(product)
        columns = [product[c].tolist() for c in present]
        return [
            _one_text(dict(zip(present, values, strict=True)))
            for values in zip(*columns, strict=True)
        ]
    if isinstance(product, pd.Series):
        return _one_text(product.to_dict())
    return _one_text(product)


def judgement_grades(data: ShopData, query_ids: Sequence[int]) -> dict[int, dict[int, int]]:
    """{query_id: {product_id: grade}} for the given queries (those with judgements)."""
    wanted = {int(q) for q in query_ids}
    judged = data.judgements[data.judgements["query_id"].isin(wanted)]
    return {
        int(q): dict(zip(g["product_id"].tolist(), g["relevance"].tolist(), strict=True))
        for q, g in judged.groupby("query_id")
    }
