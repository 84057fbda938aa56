"""Bring your own interactions for recommend mode.

Two layouts, each read with the same encoding detection and one-line `DataError`s (file,
row, column, what is wrong) as the relevance loaders (`training/loaders.py`):

- `interactions`: a folder (or an interactions file with the item file beside it) holding
  `interactions.{csv,tsv,parquet}` with `user_id,item_id,timestamp[,event_type]` and
  `items.{csv,tsv,parquet}` with `item_id,title[,category,brand,price,description]`;
- `recbole`: RecBole atomic files, `*.inter` and `*.item` (tab-separated, headers
  `name:type`). Either the general layout (`user_id:token item_id:token timestamp:float`,
  one row per interaction) or the sequential benchmark one (`user_id:token
  item_id_list:token_seq item_id:token`, one row per user: the history, then the next
  item), as public Amazon review benchmarks ship them; `*.train/valid/test.inter` are read
  together and each user's longest sequence kept;
- `sequences`: the plain text layout of the sequential-recommendation literature, one line
  per shopper: the shopper's id, then the product ids oldest first, separated by spaces
  (`.txt` or `.txt.gz`). Product ids only: the items carry no text unless an `items` table
  sits beside the file, and the models then learn from ids alone.

Item ids are tokens; interactions with items missing from the item table are dropped and
counted (the log says how many), as products without text cannot be embedded (the
`sequences` layout without an item table has every product it names).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from shoprank.data.datasets import DataError
from shoprank.training.loaders import _open_text, _read, _Table

log = logging.getLogger(__name__)

FORMATS = ("auto", "interactions", "recbole", "sequences")
SEQUENCE_SUFFIXES = (".txt", ".txt.gz")
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".csv.gz", ".tsv.gz")


@dataclass
class Interactions:
    """A catalog with text and each shopper's ordered products."""

    catalog: pd.DataFrame  # product_id (int64), item_id (the source's token), title, ...
    sequences: list[list[int]]  # per shopper: catalog rows, oldest first, each once
    dropped: int = 0  # interactions whose item is not in the item table
    has_text: bool = True  # False: ids only (empty titles), the models learn from ids alone

    def summary(self) -> str:
        n = sum(len(s) for s in self.sequences)
        return (
            f"{len(self.catalog):,} items, {len(self.sequences):,} shoppers, {n:,} interactions"
            + (f" ({self.dropped:,} dropped: item not in the item table)" if self.dropped else "")
            + ("" if self.has_text else " (ids only, no item text)")
        )


def _strip_types(t: _Table) -> _Table:
    """RecBole headers are `name:type`; keep the names."""
    t.frame.columns = [c.split(":", 1)[0].strip() for c in t.frame.columns]
    return t


def _catalog(t: _Table) -> pd.DataFrame:
    item = t.need(["item_id", "product_id", "id"])
    title = t.need(["title", "name", "product_title"])
    ids = t.frame[item].str.strip()
    t.first_bad((ids == "").to_numpy(), item, "empty item id")
    t.first_bad(ids.duplicated().to_numpy(), item, "duplicate item id {value}")
    titles = t.frame[title].str.strip()
    t.first_bad((titles == "").to_numpy(), title, "empty title")
    price = pd.to_numeric(t.get(["price"]), errors="coerce")
    return pd.DataFrame(
        {
            "product_id": np.arange(1, len(ids) + 1, dtype=np.int64),
            "item_id": ids.to_numpy(object),
            "title": titles.to_numpy(object),
            "category": t.get(["category", "categories"]).to_numpy(object),
            "brand": t.get(["brand"]).to_numpy(object),
            "description": t.get(["description"]).to_numpy(object),
            "price": price.to_numpy(np.float64),
        }
    )


def _sequences(
    users: pd.Series, items: pd.Series, order: np.ndarray, row_of: dict[str, int]
) -> tuple[list[list[int]], int]:
    """Per user (first-seen order), known items in `order`, each once; and how many rows
    named an unknown item."""
    frame = pd.DataFrame({"user": users.to_numpy(), "item": items.to_numpy(), "order": order})
    known = frame["item"].map(row_of)
    dropped = int(known.isna().sum())
    frame = frame.assign(row=known).dropna(subset=["row"])
    frame = frame.sort_values(["user", "order"], kind="stable")
    out = []
    for _, rows in frame.groupby("user", sort=False)["row"]:
        seq = list(dict.fromkeys(int(r) for r in rows))
        out.append(seq)
    return out, dropped


def load_generic(interactions: Path, items: Path, encoding: str | None = None) -> Interactions:
    """`interactions` (user_id,item_id,timestamp[,event_type]) + `items` (item_id,title,...)."""
    catalog = _catalog(_read(items, encoding=encoding))
    t = _read(interactions, encoding=encoding)
    user, item = t.need(["user_id", "user"]), t.need(["item_id", "product_id", "item"])
    stamp = t.need(["timestamp", "time", "ts"])
    for column in (user, item):
        t.first_bad((t.frame[column].str.strip() == "").to_numpy(), column, "empty id")
    times = pd.to_numeric(t.frame[stamp].str.strip(), errors="coerce").to_numpy(np.float64)
    t.first_bad(~np.isfinite(times), stamp, "{value} is not a number")
    row_of = {str(i): r for r, i in enumerate(catalog["item_id"])}
    sequences, dropped = _sequences(
        t.frame[user].str.strip(), t.frame[item].str.strip(), times, row_of
    )
    return Interactions(catalog, sequences, dropped)


def load_recbole(folder: Path, encoding: str | None = None) -> Interactions:
    """RecBole atomic files in `folder`: one `*.item` and one or more `*.inter`."""
    item_files = sorted(folder.glob("*.item"))
    inter_files = sorted(folder.glob("*.inter"))
    if len(item_files) != 1 or not inter_files:
        raise DataError(
            f"{folder}: expected one *.item file and at least one *.inter file, found "
            f"{[p.name for p in item_files]} and {[p.name for p in inter_files]}",
            source=str(folder),
        )
    catalog = _catalog(_strip_types(_read(item_files[0], sep="\t", encoding=encoding)))
    row_of = {str(i): r for r, i in enumerate(catalog["item_id"])}
    best: dict[str, list[str]] = {}  # user → longest item sequence seen
    general: list[tuple[str, str, float]] = []
    for path in inter_files:
        t = _strip_types(_read(path, sep="\t", encoding=encoding))
        user = t.need(["user_id"])
        if "item_id_list" in t.frame.columns:  # sequential benchmark layout
            target = t.need(["item_id"])
            for pos, (u, history, nxt) in enumerate(
                zip(t.frame[user], t.frame["item_id_list"], t.frame[target], strict=True)
            ):
                if not nxt.strip():
                    raise t.error(pos, target, "empty next item")
                seq = [*history.split(), nxt.strip()]
                if len(seq) > len(best.get(u, [])):
                    best[u] = seq
        else:
            item, stamp = t.need(["item_id"]), t.need(["timestamp"])
            times = pd.to_numeric(t.frame[stamp], errors="coerce").to_numpy(np.float64)
            t.first_bad(~np.isfinite(times), stamp, "{value} is not a number")
            general += list(zip(t.frame[user], t.frame[item].str.strip(), times, strict=True))
    if general:
        users, items, times = zip(*general, strict=True)
        sequences, dropped = _sequences(
            pd.Series(users), pd.Series(items), np.asarray(times), row_of
        )
        return Interactions(catalog, sequences, dropped)
    sequences, dropped = [], 0
    for seq in best.values():
        rows = [row_of.get(i) for i in seq]
        dropped += sum(r is None for r in rows)
        kept = list(dict.fromkeys(r for r in rows if r is not None))
        if kept:
            sequences.append(kept)
    return Interactions(catalog, sequences, dropped)


def _id_only_catalog(ids: list[str]) -> pd.DataFrame:
    """A catalog of bare ids (no text), in first-seen order."""
    empty = np.full(len(ids), "", object)
    return pd.DataFrame(
        {
            "product_id": np.arange(1, len(ids) + 1, dtype=np.int64),
            "item_id": np.asarray(ids, object),
            "title": empty,
            "category": empty,
            "brand": empty,
            "description": empty,
            "price": np.full(len(ids), np.nan),
        }
    )


def load_sequences(
    path: Path, items: Path | None = None, encoding: str | None = None
) -> Interactions:
    """One line per shopper: `shopper item item ...`, oldest first (blank lines skipped).
    With an `items` table its texts are used and unknown ids dropped and counted; without
    one the catalog is every id the file names, in first-seen order, without text."""
    catalog = _catalog(_read(items, encoding=encoding)) if items is not None else None
    row_of = {str(i): r for r, i in enumerate(catalog["item_id"])} if catalog is not None else {}
    sequences, dropped = [], 0
    with _open_text(path, encoding) as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            user, *tokens = line.split()
            if not tokens:
                raise DataError(
                    f"{path}: line {number}: shopper {user!r} has no products "
                    "(expected: shopper id, then product ids oldest first)",
                    source=str(path),
                )
            rows = []
            for token in tokens:
                if catalog is None:
                    rows.append(row_of.setdefault(token, len(row_of)))
                elif token in row_of:
                    rows.append(row_of[token])
                else:
                    dropped += 1
            if rows:
                sequences.append(list(dict.fromkeys(rows)))
    if catalog is None:
        return Interactions(_id_only_catalog(list(row_of)), sequences, dropped, has_text=False)
    return Interactions(catalog, sequences, dropped)


def _is_sequence_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(SEQUENCE_SUFFIXES)


def _table_in(folder: Path, stem: str) -> Path | None:
    for suffix in TABLE_SUFFIXES:
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return None


def load_interactions(
    path: str | Path, fmt: str = "auto", encoding: str | None = None
) -> Interactions:
    """Load either layout; `fmt` "auto" picks RecBole when the folder has `*.inter` files."""
    path = Path(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown interactions format {fmt!r}; choose from {FORMATS}")
    if not path.exists():
        raise DataError(f"{path}: not found", source=str(path))
    folder = path if path.is_dir() else path.parent
    if fmt == "recbole" or (fmt == "auto" and path.is_dir() and any(folder.glob("*.inter"))):
        data = load_recbole(folder, encoding)
    elif fmt == "sequences" or (fmt == "auto" and _is_sequence_file(path)):
        if not path.is_file():
            raise DataError(f"{path}: the sequences layout is one file (.txt or .txt.gz)")
        data = load_sequences(path, _table_in(folder, "items"), encoding)
    else:
        interactions = path if path.is_file() else _table_in(folder, "interactions")
        items = _table_in(folder, "items")
        if interactions is None or items is None:
            raise DataError(
                f"{path}: expected interactions.{{csv,tsv,parquet}} and items.{{csv,tsv,parquet}}",
                source=str(path),
            )
        data = load_generic(interactions, items, encoding)
    if not data.sequences:
        raise DataError(f"{path}: no interaction names an item of the item table", source=str(path))
    log.info("interactions: %s", data.summary())
    return data
