"""Recommend mode at serving time: the work behind the Triton model `recommender`.

A shopper's history (catalog rows, most recent last) goes through the sequential model's
history encoder (ONNX) to a shopper vector; every product is scored by its dot product with
the product's vector (precomputed at conversion), products already in the history are left
out, and the top k come back. An empty history (cold start) ranks by popularity: how many
shoppers in the training logs interacted with each product.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shoprank import contract
from shoprank.core.catalog import CatalogIndex
from shoprank.core.filters import Facets, Filters
from shoprank.core.scoring import SEQUENTIAL_PART, Ranked, explanation
from shoprank.core.shopper_vectors import ShopperVectors


@dataclass
class RecommendRequest:
    """One validated recommend row."""

    history: np.ndarray  # catalog rows, most recent last (empty: cold start)
    k: int
    filters: Filters | None = None
    explain: bool = False


def top_k_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows of the k best finite scores, best first, ties by row (deterministic)."""
    finite = np.flatnonzero(np.isfinite(scores))
    k = min(k, len(finite))
    if k == 0:
        return np.zeros(0, np.int64)
    best = finite[np.argpartition(-scores[finite], k - 1)[:k]]
    return best[np.lexsort((best, -scores[best]))]


class Recommender:
    """History → top-k products, one ONNX call per batch of rows with a history."""

    def __init__(
        self, shoppers: ShopperVectors, popularity: np.ndarray, catalog: CatalogIndex
    ) -> None:
        if len(shoppers.items) != len(catalog.product_ids):
            raise ValueError(
                f"{len(shoppers.items)} item vectors for {len(catalog.product_ids)} products"
            )
        self.shoppers = shoppers
        self.items = shoppers.items
        self.popularity = popularity
        self.catalog = catalog
        self.facets = Facets.of(catalog)

    @classmethod
    def load(cls, version_dir: Path, threads: int = 1) -> Recommender:
        """From a `recommender` model version folder (the repository builder writes it)."""
        version_dir = Path(version_dir)
        shoppers, popularity = ShopperVectors.load(version_dir, threads)
        return cls(shoppers, popularity, CatalogIndex.load(version_dir / contract.CATALOG_FILE))

    def scores(self, requests: Sequence[RecommendRequest]) -> np.ndarray:
        """Scores (B, N) of every product per row; history products -inf."""
        out = np.broadcast_to(self.popularity, (len(requests), len(self.items))).copy()
        warm = [i for i, r in enumerate(requests) if len(r.history)]
        if warm:
            users = self.shoppers.users([requests[i].history for i in warm])
            out[warm] = users @ self.items.T
        for i, r in enumerate(requests):
            out[i, r.history] = -np.inf
            allowed = self.facets.allowed(r.filters) if r.filters is not None else None
            if allowed is not None:
                out[i, ~allowed] = -np.inf
        return out

    def recommend(self, requests: Sequence[RecommendRequest]) -> list[Ranked]:
        """Answers in request order."""
        if not requests:
            return []
        scores = self.scores(requests)
        answers = []
        for i, r in enumerate(requests):
            best = top_k_rows(scores[i], r.k)
            answers.append(
                Ranked(
                    self.catalog.product_ids[best],
                    scores[i, best].astype(np.float32),
                    self.catalog.titles[best],
                    len(self.items),
                    self.explain(r, best, scores[i, best]) if r.explain else None,
                )
            )
        return answers

    def explain(self, request: RecommendRequest, rows: np.ndarray, scores: np.ndarray):
        """JSON per result: the one part of its score (the sequential model's, or popularity
        at cold start) and the history products whose vectors are closest to it."""
        part = SEQUENTIAL_PART if len(request.history) else "popularity"
        unit = self.items / np.maximum(np.linalg.norm(self.items, axis=1, keepdims=True), 1e-9)
        history_ids = self.catalog.product_ids[request.history]
        return np.array(
            [
                explanation(
                    score, {part: float(score)}, history_ids, unit[request.history], unit[row]
                )
                for row, score in zip(rows, scores, strict=True)
            ],
            dtype=object,
        )
