"""The quality gate every converted encoder must pass to be served, and its measures."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine per row; NaN rows (a broken model) count as -1 so they can never pass."""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.nan_to_num(np.sum(a * b, axis=1), nan=-1.0)


class QualityError(RuntimeError):
    """A converted variant lost more quality than the gate allows."""


@dataclass
class QualityGate:
    """Thresholds a converted encoder must meet against fp32 to be served.

    min_cosine catches collapsed embeddings; max_ndcg_loss (relative) is the budget for
    ranking quality on held-out queries.
    """

    min_cosine: float = 0.95
    max_ndcg_loss: float = 0.01

    def check(
        self,
        name: str,
        mean_cosine: float,
        ndcg: float | None = None,
        ndcg_fp32: float | None = None,
    ) -> None:
        """Raise QualityError naming the variant and the failed threshold."""
        if not mean_cosine >= self.min_cosine:  # also catches NaN
            raise QualityError(
                f"{name}: mean cosine vs fp32 {mean_cosine:.4f} < "
                f"{self.min_cosine} (embeddings collapsed or drifted)"
            )
        if ndcg is not None and ndcg_fp32 is not None and ndcg_fp32 > 0:
            loss = (ndcg_fp32 - ndcg) / ndcg_fp32
            if loss > self.max_ndcg_loss:
                raise QualityError(
                    f"{name}: NDCG@10 {ndcg:.4f} is {loss:.1%} below fp32 "
                    f"{ndcg_fp32:.4f} (budget {self.max_ndcg_loss:.1%})"
                )

    def verdict(
        self,
        name: str,
        mean_cosine: float,
        ndcg: float | None = None,
        ndcg_fp32: float | None = None,
    ) -> tuple[bool, str]:
        """(accepted, "" or the reason it was refused): `check` as a value."""
        try:
            self.check(name, mean_cosine, ndcg, ndcg_fp32)
        except QualityError as exc:
            return False, str(exc)
        return True, ""
