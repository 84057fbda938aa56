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
  together and each user's longest sequence kept.

Item ids are tokens; interactions with items missing from the item table are dropped and
counted (the log says how many), as products without text cannot be embedded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from shoprank.data.datasets import DataError
from shoprank.training.loaders import _read, _Table

log = logging.getLogger(__name__)

FORMATS = ("auto", "interactions", "recbole")
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".csv.gz", ".tsv.gz")


@dataclass
class Interactions:
    """A catalog with text and each shopper's ordered products."""

    catalog: pd.DataFrame  # product_id (int64), item_id (the source's token), title, ...
    sequences: list[list[int]]  # per shopper: catalog rows, oldest first, each once
    dropped: int = 0  # interactions whose item is not in the item table

    def summary(self) -> str:
        n = sum(len(s) for s in self.sequences)
        return (
            f"{len(self.catalog):,} items, {len(self.sequences):,} shoppers, {n:,} interactions"
            + (f" ({self.dropped:,} dropped: item not in the item table)" if self.dropped else "")
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
