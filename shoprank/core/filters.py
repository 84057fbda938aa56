"""Result filters for search, rerank and recommend: category prefix, price range, excluded
ids, in stock only.

The catalog's facets (category path, price, stock) travel with the served catalog
(`CatalogIndex`); a request's filters become one boolean mask over the catalog rows, which
every mode applies before its top k. Filtering never silently shortens an answer: search
widens its candidates with an exact dense scan over the allowed products when retrieval
found fewer than k of them (`ranking.widen`), recommend ranks the whole catalog anyway,
and rerank ranks only what the caller sent (its list is the universe).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from shoprank import contract
from shoprank.core.catalog import CatalogIndex
from shoprank.core.requests import InvalidInput, row_flags, row_values


@dataclass(frozen=True)
class Filters:
    """One request row's filters; the defaults filter nothing."""

    category_prefix: str = ""  # case-insensitive prefix of the " > " category path
    price_min: float = -math.inf
    price_max: float = math.inf
    exclude_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    in_stock_only: bool = False

    def __post_init__(self) -> None:
        if math.isnan(self.price_min) or math.isnan(self.price_max):
            raise InvalidInput("price bounds must be numbers", "price_range")
        if self.price_min > self.price_max:
            raise InvalidInput(
                f"price range is empty: min {self.price_min} > max {self.price_max}",
                "price_range",
            )

    @property
    def active(self) -> bool:
        return bool(
            self.category_prefix.strip()
            or self.price_min > -math.inf
            or self.price_max < math.inf
            or len(self.exclude_rows)
            or self.in_stock_only
        )


@dataclass
class Facets:
    """What filters look at, per catalog row."""

    categories: np.ndarray  # (N,) str, category path as in the catalog ("" unknown)
    prices: np.ndarray  # (N,) float64, NaN unknown
    in_stock: np.ndarray  # (N,) bool

    def __post_init__(self) -> None:
        names, self._category_ids = np.unique(
            np.char.lower(self.categories.astype(str)), return_inverse=True
        )
        self._category_names = names.tolist()
        self._prices32 = self.prices.astype(np.float32)

    @classmethod
    def of(cls, catalog: CatalogIndex) -> Facets:
        """The served catalog's facets; what it lacks is unknown (no category, no price,
        in stock)."""
        n = len(catalog.product_ids)
        return cls(
            np.full(n, "", dtype=str) if catalog.categories is None else catalog.categories,
            np.full(n, np.nan) if catalog.prices is None else catalog.prices.astype(np.float64),
            np.ones(n, bool) if catalog.in_stock is None else catalog.in_stock.astype(bool),
        )

    def allowed(self, f: Filters) -> np.ndarray | None:
        """(N,) bool of the rows `f` lets through; None when `f` filters nothing."""
        if not f.active:
            return None
        ok = np.ones(len(self.prices), bool)
        prefix = " ".join(f.category_prefix.lower().split())
        if prefix:
            # Matched on the few distinct paths, not on every row.
            names = [i for i, name in enumerate(self._category_names) if name.startswith(prefix)]
            ok &= np.isin(self._category_ids, names)
        if f.price_min > -math.inf or f.price_max < math.inf:
            # At the wire's precision (PRICE_MIN/MAX are FP32): a bound typed as a price
            # arrives as that price rounded to float32, and must still keep it.
            low, high = np.float32(f.price_min), np.float32(f.price_max)
            with np.errstate(invalid="ignore"):  # unknown prices never match a price filter
                ok &= (self._prices32 >= low) & (self._prices32 <= high)
        if f.in_stock_only:
            ok &= self.in_stock
        ok[f.exclude_rows] = False
        return ok


def _one_per_row(value: np.ndarray | None, rows: int, name: str) -> list | None:
    if value is None:
        return None
    flat = np.asarray(value).reshape(-1)
    if flat.size != rows:
        raise InvalidInput(f"{name} must hold one value per row, got {flat.size}", "shape")
    return flat.tolist()


def _text(value: object) -> str:
    if isinstance(value, bytes | np.bytes_):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(
                f"{contract.CATEGORY_PREFIX.name} is not valid UTF-8", "filter_not_utf8"
            ) from None
    return str(value)


def _bound(value: float, unbounded: float) -> float:
    """A price bound; NaN means none (so batched rows can leave theirs open)."""
    return unbounded if math.isnan(value) else float(value)


def row_filters(
    inputs: Mapping[str, np.ndarray | None], rows: int, catalog: CatalogIndex
) -> list[Filters]:
    """Each row's Filters from a request's optional filter inputs (name → array or None).

    A batched request pads shorter EXCLUDE_IDS rows with PADDING_ID; a NaN price bound
    means no bound. Raises InvalidInput for wrong shapes, bad text or an empty range.
    """
    prefixes = _one_per_row(inputs.get(contract.CATEGORY_PREFIX.name), rows, "CATEGORY_PREFIX")
    lows = _one_per_row(inputs.get(contract.PRICE_MIN.name), rows, contract.PRICE_MIN.name)
    highs = _one_per_row(inputs.get(contract.PRICE_MAX.name), rows, contract.PRICE_MAX.name)
    stock = row_flags(inputs.get(contract.IN_STOCK_ONLY.name), rows, "IN_STOCK_ONLY")
    excluded = row_values(inputs.get(contract.EXCLUDE_IDS.name), rows, contract.EXCLUDE_IDS.name)
    out = []
    for i in range(rows):
        if excluded[i].size > contract.MAX_EXCLUDE_IDS:
            raise InvalidInput(
                f"{contract.EXCLUDE_IDS.name} holds {excluded[i].size} ids; at most "
                f"{contract.MAX_EXCLUDE_IDS} per row",
                "too_many_excluded",
            )
        out.append(
            Filters(
                category_prefix=_text(prefixes[i]) if prefixes else "",
                price_min=_bound(lows[i], -math.inf) if lows else -math.inf,
                price_max=_bound(highs[i], math.inf) if highs else math.inf,
                exclude_rows=catalog.known_rows(excluded[i]),
                in_stock_only=stock[i],
            )
        )
    return out
