"""The served half of the recommender: the sequential model's history encoder (ONNX graph)
and item vectors e_i precomputed at conversion, and the co-visits and blend weights
training chose on validation (`shoprank.core.covisits`). numpy and ONNX Runtime only, so
the Triton `ranker` and `recommender` models never import torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shoprank import contract
from shoprank.core.covisits import (
    SEQUENTIAL_ONLY,
    Blend,
    CoVisits,
    blend_arrays,
    blend_from,
    next_item_scores,
)


def left_pad(histories: list[list[int]], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows (B, L), mask (B, L)) with the last `max_len` items of each history right-aligned
    (most recent last); L is the longest kept history, at least 1."""
    width = max(1, min(max_len, max((len(h) for h in histories), default=1)))
    rows = np.zeros((len(histories), width), np.int64)
    mask = np.zeros((len(histories), width), np.float32)
    for i, h in enumerate(histories):
        kept = list(h)[-width:]
        if kept:
            rows[i, width - len(kept) :] = kept
            mask[i, width - len(kept) :] = 1.0
    return rows, mask


def save_item_vectors(
    path: Path,
    items: np.ndarray,
    popularity: np.ndarray,
    blend: Blend = SEQUENTIAL_ONLY,
    covisits: CoVisits | None = None,
) -> None:
    """ITEM_VECTORS_FILE: what `ShopperVectors.load` serves."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        item_vectors=items.astype(np.float32),
        popularity=popularity.astype(np.float32),
        **blend_arrays(blend, covisits),
    )


def load_item_vectors(path: Path) -> tuple[np.ndarray, np.ndarray, Blend, CoVisits | None]:
    """(item vectors (N, d), popularity (N,), blend, co-visits or None); ValueError naming
    the file when unreadable. A file without a blend serves the sequential model alone."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return (
                z["item_vectors"].astype(np.float32),
                z["popularity"].astype(np.float32),
                *blend_from(z),
            )
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"item vectors {path} are missing or corrupt: {exc}") from None


class ShopperVectors:
    """The served half of the model: the history encoder in ONNX plus the item vectors
    e_i (N, d) precomputed at conversion. Used by `recommender` and, as a search signal,
    by `ranker`."""

    def __init__(
        self,
        session,
        items: np.ndarray,
        blend: Blend = SEQUENTIAL_ONLY,
        covisits: CoVisits | None = None,
    ) -> None:
        if blend.cooccurrence and covisits is None:
            raise ValueError(f"blend {blend.name} weighs co-visits but none were saved")
        self.session = session
        self.items = items
        self.blend = blend
        self.covisits = covisits

    @classmethod
    def load(cls, version_dir: Path, threads: int = 1) -> tuple[ShopperVectors, np.ndarray]:
        """(shopper vectors, popularity (N,)) from a model version folder holding
        SEQUENTIAL_ONNX_FILE and ITEM_VECTORS_FILE; a missing file is named."""
        from shoprank.core.sessions import cpu_session  # onnxruntime: serving only

        version_dir = Path(version_dir)
        for name in (contract.SEQUENTIAL_ONNX_FILE, contract.ITEM_VECTORS_FILE):
            if not (version_dir / name).is_file():
                raise FileNotFoundError(f"{version_dir / name} is missing: rebuild the repository")
        items, popularity, blend, covisits = load_item_vectors(
            version_dir / contract.ITEM_VECTORS_FILE
        )
        session = cpu_session(version_dir / contract.SEQUENTIAL_ONNX_FILE, threads)
        return cls(session, items, blend, covisits), popularity

    def users(self, histories: list[np.ndarray]) -> np.ndarray:
        """Shopper vectors (B, d) for non-empty histories (catalog rows, most recent last)."""
        rows, mask = left_pad([list(h) for h in histories], contract.MAX_HISTORY)
        (user,) = self.session.run(
            [contract.ONNX_SEQ_USER],
            {contract.ONNX_SEQ_HISTORY: self.items[rows], contract.ONNX_SEQ_MASK: mask},
        )
        return user

    def dots(
        self,
        histories: list[np.ndarray],
        rows: np.ndarray | None = None,
        users: np.ndarray | None = None,
    ) -> np.ndarray | None:
        """⟨u, e_i⟩ of every product (B, N), or of candidate rows (B, C) (-1 padding: any
        value); None when the blend does not weigh the sequential model (nothing run).
        `users`: the histories' shopper vectors, when already computed."""
        if not self.blend.sequential:
            return None
        users = self.users(histories) if users is None else users
        if rows is None:
            return users @ self.items.T
        return np.einsum("bd,bcd->bc", users, self.items[np.maximum(rows, 0)])

    def covisit_scores(
        self, histories: list[np.ndarray], rows: np.ndarray | None = None
    ) -> np.ndarray | None:
        """Co-visit scores like `dots`; None when the blend does not weigh them."""
        if not self.blend.cooccurrence or self.covisits is None:
            return None
        if rows is None:
            return self.covisits.scores(histories)
        return self.covisits.scores_at(histories, rows)

    def scores_at(
        self, histories: list[np.ndarray], rows: np.ndarray, users: np.ndarray | None = None
    ) -> np.ndarray:
        """The served next-product score (no tie-break) of candidate rows (B, C) for
        non-empty histories: the search signal (`users`: as in `dots`)."""
        return next_item_scores(
            self.blend, self.dots(histories, rows, users), self.covisit_scores(histories, rows)
        ).astype(np.float32)
