"""The dense ANN index over the fine-tuned product embeddings, tuned by measurement.

The index kind (`shoprank.core.ann.KINDS`) is a flag; its search knob (efSearch for HNSW,
nprobe for IVF) is the smallest whose recall@k against the exact scan reaches the target
on validation queries, embedded by the served encoder; the report records every trial
and the recall on the test queries.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

from shoprank.core.ann import DenseConfig, DenseIndex, exact_top_k

log = logging.getLogger(__name__)


def build_dense_index(
    embeddings: np.ndarray,
    config: DenseConfig,
    tune_queries: np.ndarray,
    check_queries: np.ndarray,
    out_path: Path,
    k: int = 100,
    target: float = 0.97,
) -> dict:
    """Build, tune on `tune_queries`, check on `check_queries`, save; return the report."""
    index = DenseIndex.build(embeddings, config)
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
