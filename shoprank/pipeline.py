"""The served pipeline (tokenize → encode → rank) run in-process on ONNX Runtime.

Same files, same `ops` functions and same session settings as the Triton models, without
the server: the reference the integration tests hold Triton's answers against, and the
"ONNX Runtime in process" row of the benchmark.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shoprank import contract
from shoprank.runtime import (
    CatalogIndex,
    QueryTokenizer,
    cpu_session,
    decode_query,
    pad_rows,
    rank,
    validate_top_k,
)


@dataclass
class Ranked:
    """Top-k answer for one query."""

    product_ids: np.ndarray
    scores: np.ndarray
    titles: list[str]


class InProcessPipeline:
    """Loads a generated model repository's files and answers searches in this process."""

    def __init__(self, repository: Path, version: int = 1, threads: int = 1) -> None:
        v = str(version)
        tokenizer_dir = repository / contract.TOKENIZER_MODEL / v
        encoder_dir = repository / contract.ENCODER_MODEL / v
        ranker_dir = repository / contract.RANKER_MODEL / v
        self.tokenizer = QueryTokenizer(tokenizer_dir / contract.TOKENIZER_FILE)
        self.encoder = cpu_session(encoder_dir / contract.ENCODER_ONNX_FILE, threads)
        self.ranker = cpu_session(ranker_dir / contract.RANKER_ONNX_FILE, threads)
        self.catalog = CatalogIndex.load(ranker_dir / contract.CATALOG_FILE)

    def encode(self, queries: Sequence[str | bytes]) -> np.ndarray:
        """Query embeddings (B, D) exactly as the served tokenizer + encoder compute them."""
        encoded = self.tokenizer.encode([decode_query(q) for q in queries])
        ids = pad_rows([e[0] for e in encoded])
        mask = pad_rows([e[1] for e in encoded])
        return self.encoder.run(
            [contract.ONNX_SENTENCE_EMBEDDING],
            {contract.ONNX_INPUT_IDS: ids, contract.ONNX_ATTENTION_MASK: mask},
        )[0]

    def search_many(
        self, queries: Sequence[str | bytes], histories: Sequence[Sequence[int]], k: int
    ) -> list[Ranked]:
        """Top-k for a batch of (query, history) pairs."""
        k = validate_top_k(k)
        embeddings = self.encode(queries)
        results = rank(
            self.ranker,
            self.catalog,
            embeddings,
            [self.catalog.rows_of(np.asarray(h)) for h in histories],
            [k] * len(queries),
        )
        return [
            Ranked(product_ids=ids, scores=scores, titles=[t.decode("utf-8") for t in titles])
            for ids, scores, titles in results
        ]

    def search(
        self, query: str | bytes, history: Sequence[int] = (), k: int = contract.DEFAULT_TOP_K
    ) -> Ranked:
        """Top-k for one query."""
        return self.search_many([query], [history], k)[0]
