"""The dense ANN index over the fine-tuned product embeddings, tuned by measurement.

The index kind (`shoprank.core.ann.KINDS`) is a flag; its search knob (efSearch for HNSW,
nprobe for IVF) is the smallest whose recall@k against the exact scan reaches the target
on validation queries, embedded by the served encoder; the report records every trial
and the recall on the test queries.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from shoprank.core.ann import KINDS, DenseConfig, DenseIndex, exact_top_k

log = logging.getLogger(__name__)


@dataclass
class DenseIndexOptions:
    """The dense index's knobs, declared once for the stages that build it (conversion and
    the catalog job extend this)."""

    dense_kind: str = field(
        default=DenseConfig().kind,
        metadata={"help": "dense index: " + ", ".join(KINDS), "choices": KINDS},
    )
    hnsw_m: int = field(default=DenseConfig().hnsw_m, metadata={"help": "HNSW graph degree"})
    ef_construction: int = DenseConfig().ef_construction
    train_size: int = field(
        default=DenseConfig().train_size,
        metadata={"help": "vectors the quantizer and IVF centroids are fitted on"},
    )
    ann_recall_target: float = field(
        default=0.97, metadata={"help": "recall@100 vs the exact scan the search knob must reach"}
    )
    selection_texts: int = field(
        default=256, metadata={"help": "val queries that tune the search knob (and QDQ exclusions)"}
    )

    def dense_config(self) -> DenseConfig:
        return DenseConfig(
            kind=self.dense_kind,
            hnsw_m=self.hnsw_m,
            ef_construction=self.ef_construction,
            train_size=self.train_size,
        )


def build_dense_index(
    embeddings: np.ndarray,
    config: DenseConfig,
    tune_queries: np.ndarray,
    check_queries: np.ndarray,
    out_path: Path,
    k: int = 100,
    target: float = 0.97,
    index: DenseIndex | None = None,
) -> dict:
    """Build (unless `index` is already built over `embeddings`), tune on `tune_queries`,
    check on `check_queries`, save; return the report."""
    index = index if index is not None else DenseIndex.build(embeddings, config)
    k = min(k, len(embeddings))
    stats = index.tune(tune_queries, exact_top_k(embeddings, tune_queries, k), k, target)
    recall = index.recall_at(check_queries, exact_top_k(embeddings, check_queries, k), k)
    index.save(out_path)
    log.info(
        "dense index %s over %d products: recall@%d %.4f (target %.2f), %.1fs",
        config.kind,
        index.size,
        k,
        recall,
        target,
        index.build_s,
    )
    return {
        "path": str(out_path),
        "config": asdict(index.config),
        "products": index.size,
        "build_s": index.build_s,
        "size_mb": round(out_path.stat().st_size / 1e6, 2),
        "tuning": stats,
        f"test_recall@{k}": round(recall, 4),
    }
