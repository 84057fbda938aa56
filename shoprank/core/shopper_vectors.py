"""The served half of the sequential recommender (`shoprank.models.sequential`): the history
encoder's ONNX graph and the item vectors e_i precomputed at conversion. numpy and ONNX
Runtime only, so the Triton `ranker` and `recommender` models never import torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shoprank import contract


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


def load_item_vectors(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(item vectors (N, d), popularity (N,)); ValueError naming the file when unreadable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["item_vectors"].astype(np.float32), z["popularity"].astype(np.float32)
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"item vectors {path} are missing or corrupt: {exc}") from None


class ShopperVectors:
    """The served half of the model: the history encoder in ONNX plus the item vectors
    e_i (N, d) precomputed at conversion. Used by `recommender` and, as a search signal,
    by `ranker`."""

    def __init__(self, session, items: np.ndarray) -> None:
        self.session = session
        self.items = items

    @classmethod
    def load(cls, version_dir: Path, threads: int = 1) -> tuple[ShopperVectors, np.ndarray]:
        """(shopper vectors, popularity (N,)) from a model version folder holding
        SEQUENTIAL_ONNX_FILE and ITEM_VECTORS_FILE; a missing file is named."""
        from shoprank.core.sessions import cpu_session  # onnxruntime: serving only

        version_dir = Path(version_dir)
        for name in (contract.SEQUENTIAL_ONNX_FILE, contract.ITEM_VECTORS_FILE):
            if not (version_dir / name).is_file():
                raise FileNotFoundError(f"{version_dir / name} is missing: rebuild the repository")
        items, popularity = load_item_vectors(version_dir / contract.ITEM_VECTORS_FILE)
        session = cpu_session(version_dir / contract.SEQUENTIAL_ONNX_FILE, threads)
        return cls(session, items), popularity

    def users(self, histories: list[np.ndarray]) -> np.ndarray:
        """Shopper vectors (B, d) for non-empty histories (catalog rows, most recent last)."""
        rows, mask = left_pad([list(h) for h in histories], contract.MAX_HISTORY)
        (user,) = self.session.run(
            [contract.ONNX_SEQ_USER],
            {contract.ONNX_SEQ_HISTORY: self.items[rows], contract.ONNX_SEQ_MASK: mask},
        )
        return user
