"""Per-item tables and the shopper↔item features, computed the same way for training and
serving (numpy, from catalog rows).

`ItemTables` holds, per catalog row, what the ranker knows about a product besides its
embedding: category, brand, (category, brand) pair and log price, and the behaviour
features learned from the logs (ITEM_FEATURES). `user_item_features` turns a shopper's
history (catalog rows, most recent last) and candidate rows into USER_ITEM_FEATURES:

    category_affinity   share of the history in the candidate's category
    brand_affinity      share of the history in the candidate's brand
    brand_in_category   n(history in its category and brand) / (n(history in its category) + 1):
                        "which sofa brand does this shopper pick", shrunk when evidence is thin
    price_match         -|log price of the candidate - mean log price of the history|
    revisit             share of the history that is the candidate itself: shoppers come
                        back to what they looked at

With an empty history every feature is 0, so cold start is relevance plus the item prior.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ITEM_FEATURES = ("log_clicks", "clicks_over_expected")
USER_ITEM_FEATURES = (
    "category_affinity",
    "brand_affinity",
    "brand_in_category",
    "price_match",
    "revisit",
)


@dataclass
class ItemTables:
    """Per catalog row: attributes and behaviour features (rows in catalog order)."""

    product_ids: np.ndarray  # (N,) int64
    categories: np.ndarray  # (N,) int64, dense ids
    brands: np.ndarray  # (N,) int64
    pairs: np.ndarray  # (N,) int64, dense ids of (category, brand)
    log_prices: np.ndarray  # (N,) float32
    item_features: np.ndarray  # (N, len(ITEM_FEATURES)) float32, standardised

    def __len__(self) -> int:
        return len(self.product_ids)

    @classmethod
    def from_catalog(
        cls, catalog: pd.DataFrame, item_features: np.ndarray | None = None
    ) -> ItemTables:
        """Attributes from the catalog (missing prices → the median); behaviour features
        from `item_features` (zeros without logs)."""
        categories, _ = pd.factorize(catalog["category"].fillna(""), sort=True)
        brands, _ = pd.factorize(catalog["brand"].fillna(""), sort=True)
        pairs = np.unique(
            categories.astype(np.int64) * (brands.max() + 1) + brands, return_inverse=True
        )[1]
        price = pd.to_numeric(catalog["price"], errors="coerce").to_numpy(np.float64)
        log_price = np.log1p(np.where(np.isfinite(price) & (price > 0), price, np.nan))
        fill = np.nanmedian(log_price) if np.isfinite(log_price).any() else 0.0
        n = len(catalog)
        feats = (
            np.zeros((n, len(ITEM_FEATURES)), np.float32)
            if item_features is None
            else np.asarray(item_features, np.float32)
        )
        return cls(
            product_ids=catalog["product_id"].to_numpy(np.int64),
            categories=categories.astype(np.int64),
            brands=brands.astype(np.int64),
            pairs=pairs.astype(np.int64),
            log_prices=np.where(np.isnan(log_price), fill, log_price).astype(np.float32),
            item_features=feats,
        )

    def save(self, path: Path) -> None:
        """One .npz, no pickles."""
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **{k: getattr(self, k) for k in self.__dataclass_fields__})

    @classmethod
    def load(cls, path: Path) -> ItemTables:
        """Inverse of `save`; raises ValueError naming the file when it is missing or corrupt."""
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(**{k: z[k] for k in cls.__dataclass_fields__})
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"item tables {path} are missing or corrupt: {exc}") from None


def user_item_features(
    tables: ItemTables,
    history_rows: np.ndarray,
    history_mask: np.ndarray,
    candidate_rows: np.ndarray,
) -> np.ndarray:
    """(B, C, len(USER_ITEM_FEATURES)) float32 for histories (B, H) and candidates (B, C).

    `history_mask` is 1 where a history row is present (rows are 0-padded). Written as
    (B, C, H) comparisons: every feature is a masked count over the history.
    """
    h = np.asarray(history_rows, np.int64)
    m = np.asarray(history_mask, np.float32)
    c = np.asarray(candidate_rows, np.int64)
    count = m.sum(axis=1, keepdims=True)  # (B, 1)
    share = m / np.maximum(count, 1.0)  # (B, H)

    def shared(table: np.ndarray) -> np.ndarray:
        """(B, C) share of the history equal to the candidate in `table`."""
        same = table[c][:, :, None] == table[h][:, None, :]  # (B, C, H)
        return np.einsum("bch,bh->bc", same.astype(np.float32), share)

    category = shared(tables.categories)
    brand = shared(tables.brands)
    pair = shared(tables.pairs)
    # counts, not shares: n(cat & brand) / (n(cat) + 1)
    in_category = pair * count / (category * count + 1.0)
    has = (count > 0).astype(np.float32)  # (B, 1)
    mean_price = (tables.log_prices[h] * share).sum(axis=1, keepdims=True)  # (B, 1)
    price = -np.abs(tables.log_prices[c] - mean_price) * has
    revisit = np.einsum("bch,bh->bc", (c[:, :, None] == h[:, None, :]).astype(np.float32), share)
    return np.stack([category, brand, in_category, price, revisit], axis=-1).astype(np.float32)
