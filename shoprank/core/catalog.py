"""The served catalog: product ids ↔ rows, titles and the facets filters read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shoprank import contract
from shoprank.core.requests import InvalidInput


@dataclass
class CatalogIndex:
    """Product ids ↔ catalog rows, titles, and the facets filters look at."""

    product_ids: np.ndarray  # (N,) int64, row order of the item table
    titles: np.ndarray  # (N,) object (bytes), same order
    categories: np.ndarray | None = None  # (N,) str category paths; None: unknown
    prices: np.ndarray | None = None  # (N,) float64, NaN unknown
    in_stock: np.ndarray | None = None  # (N,) bool; None: everything in stock

    def __post_init__(self) -> None:
        self._order = np.argsort(self.product_ids, kind="stable")
        self._sorted = self.product_ids[self._order]

    @classmethod
    def load(cls, path: Path) -> CatalogIndex:
        """From the `catalog.npz` written by the repository builder."""
        with np.load(path, allow_pickle=False) as z:
            titles = np.array([t.encode("utf-8") for t in z["titles"].tolist()], dtype=object)
            optional = {k: z[k] for k in ("categories", "prices", "in_stock") if k in z.files}
            return cls(product_ids=z["product_ids"].astype(np.int64), titles=titles, **optional)

    def save(self, path: Path) -> None:
        """Write ids, titles (as unicode, no pickles) and the known facets for `load`."""
        titles = np.array(
            [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in self.titles]
        )
        facets = {
            k: v
            for k, v in (
                ("categories", self.categories),
                ("prices", self.prices),
                ("in_stock", self.in_stock),
            )
            if v is not None
        }
        np.savez(path, product_ids=self.product_ids, titles=titles, **facets)

    def rows_of(self, history: np.ndarray) -> np.ndarray:
        """Catalog rows of the last MAX_HISTORY known ids of `history`; unknown ids dropped."""
        ids = np.asarray(history, dtype=np.int64).reshape(-1)
        if ids.size > contract.MAX_HISTORY_IDS:
            raise InvalidInput(
                f"{contract.HISTORY.name} holds {ids.size} ids; at most "
                f"{contract.MAX_HISTORY_IDS} per row (the last {contract.MAX_HISTORY} are used)",
                "history_too_long",
            )
        return self.known_rows(ids)[-contract.MAX_HISTORY :]

    def known_rows(self, ids: np.ndarray) -> np.ndarray:
        """Catalog rows of the ids that are in the catalog, in order; unknown ids dropped."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 0 or len(self._sorted) == 0:
            return np.zeros(0, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self._sorted, ids), len(self._sorted) - 1)
        return self._order[pos[self._sorted[pos] == ids]]

    def candidate_rows(self, ids: np.ndarray) -> tuple[np.ndarray, int, int]:
        """(rows of the known ids, each once in first-seen order, #unknown, #duplicates).

        Raises InvalidInput for more than MAX_CANDIDATES ids; an empty or all-unknown list
        is fine (it ranks to zero results).
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size > contract.MAX_CANDIDATES:
            raise InvalidInput(
                f"{contract.CANDIDATE_IDS.name} holds {ids.size} ids; at most "
                f"{contract.MAX_CANDIDATES} may be re-ranked per request",
                "too_many_candidates",
            )
        if ids.size == 0 or len(self._sorted) == 0:
            return np.zeros(0, dtype=np.int64), int(ids.size), 0
        pos = np.minimum(np.searchsorted(self._sorted, ids), len(self._sorted) - 1)
        known = self._sorted[pos] == ids
        rows = self._order[pos[known]]
        _, first = np.unique(rows, return_index=True)
        unique = rows[np.sort(first)]
        return unique, int((~known).sum()), int(len(rows) - len(unique))
