"""Recommend mode at serving time: the work behind the Triton model `recommender`.

A shopper's history (catalog rows, most recent last) scores every product with the model
training chose on validation (`shoprank.core.covisits.next_item_scores`): the sequential
model's shopper vector (history encoder in ONNX) dotted with the product's vector, the
history's co-visits, or a blend of both, with popularity breaking ties. Products already
in the history are left out and the top k come back. An empty history (cold start) ranks
by popularity: how many shoppers in the training logs interacted with each product.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shoprank import contract
from shoprank.core.catalog import CatalogIndex
from shoprank.core.covisits import POPULARITY_PART, next_item_parts
from shoprank.core.filters import Facets, Filters
from shoprank.core.scoring import Ranked, explanation
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

    def parts(self, histories: list[np.ndarray]) -> dict[str, np.ndarray]:
        """The served score's parts (B, N) for non-empty histories."""
        return next_item_parts(
            self.shoppers.blend,
            self.shoppers.dots(histories),
            self.shoppers.covisit_scores(histories),
            self.popularity,
        )

    def scores(
        self, requests: Sequence[RecommendRequest]
    ) -> tuple[np.ndarray, list[dict[str, np.ndarray]]]:
        """Scores (B, N) of every product per row, history products -inf, and each row's
        parts (N,) that add up to them (popularity alone at cold start): computed once,
        for the ranking and the explanations alike."""
        out = np.broadcast_to(self.popularity, (len(requests), len(self.items))).copy()
        row_parts = [{POPULARITY_PART: self.popularity} for _ in requests]
        warm = [i for i, r in enumerate(requests) if len(r.history)]
        if warm:
            parts = self.parts([requests[i].history for i in warm])
            out[warm] = sum(parts.values())
            for j, i in enumerate(warm):  # popularity is (N,), shared by every row
                row_parts[i] = {k: v[j] if v.ndim == 2 else v for k, v in parts.items()}
        for i, r in enumerate(requests):
            out[i, r.history] = -np.inf
            allowed = self.facets.allowed(r.filters) if r.filters is not None else None
            if allowed is not None:
                out[i, ~allowed] = -np.inf
        return out, row_parts

    def recommend(self, requests: Sequence[RecommendRequest]) -> list[Ranked]:
        """Answers in request order."""
        if not requests:
            return []
        scores, row_parts = self.scores(requests)
        answers = []
        for i, r in enumerate(requests):
            best = top_k_rows(scores[i], r.k)
            answers.append(
                Ranked(
                    self.catalog.product_ids[best],
                    scores[i, best].astype(np.float32),
                    self.catalog.titles[best],
                    len(self.items),
                    self.explain(r, best, scores[i, best], row_parts[i]) if r.explain else None,
                )
            )
        return answers

    def explain(
        self,
        request: RecommendRequest,
        rows: np.ndarray,
        scores: np.ndarray,
        parts: dict[str, np.ndarray],
    ):
        """JSON per result: the parts (N,) that add up to its score (the served blend's, or
        popularity alone at cold start) and the history products whose vectors are closest
        to it."""
        unit = self.items / np.maximum(np.linalg.norm(self.items, axis=1, keepdims=True), 1e-9)
        history_ids = self.catalog.product_ids[request.history]
        return np.array(
            [
                explanation(
                    score,
                    {k: float(v[row]) for k, v in parts.items()},
                    history_ids,
                    unit[request.history],
                    unit[row],
                )
                for row, score in zip(rows, scores, strict=True)
            ],
            dtype=object,
        )
