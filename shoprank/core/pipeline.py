"""The served pipeline (tokenize → encode → retrieve and rank).

`SearchPipeline` is what the CPU target's Triton `searcher` model runs. `InProcessPipeline`
loads the same files with the same session settings without the server: the reference the
integration tests hold Triton's answers against, the "ONNX Runtime in process" row of the
benchmark, and what `training.evaluate` measures as the served pipeline.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from shoprank import contract
from shoprank.core.filters import Filters
from shoprank.core.ranking import CandidateRanker, Request
from shoprank.core.recommender import Recommender, RecommendRequest
from shoprank.core.requests import decode_query, pad_rows, validate_top_k
from shoprank.core.scoring import Ranked
from shoprank.core.sessions import cpu_session, encoder_feeds
from shoprank.core.tokenizer import QueryTokenizer


@dataclass
class Answer:
    """Top-k answer for one query."""

    product_ids: np.ndarray
    scores: np.ndarray
    titles: list[str]
    explanations: list[dict] | None = None  # when asked: parts adding up to each score


def _answer(r) -> Answer:
    """The in-process answer of a scoring.Ranked (titles and explanations decoded)."""
    notes = None if r.explanations is None else [json.loads(e) for e in r.explanations]
    return Answer(r.product_ids, r.scores, [t.decode("utf-8") for t in r.titles], notes)


def query_feeds(tokenizer: QueryTokenizer, queries: Sequence[str | bytes]) -> dict[str, np.ndarray]:
    """Encoder feeds of a batch of queries as the served tokenizer builds them (validated,
    tokenized, padded to the longest row): what `encode` runs, and what the benchmark's
    encoder-alone row times."""
    encoded = tokenizer.encode([decode_query(q) for q in queries])
    return encoder_feeds(pad_rows([e[0] for e in encoded]), pad_rows([e[1] for e in encoded]))


class SearchPipeline:
    """Tokenizer, encoder and ranker over one model version folder: the work of the CPU
    target's Triton `searcher` model, and of this process's searches."""

    def __init__(self, tokenizer: QueryTokenizer, encoder, ranker: CandidateRanker) -> None:
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.ranker = ranker
        # The last `rank` call's seconds per stage (encode, then the ranker's stages).
        self.last_timings: dict[str, float] = {}

    @classmethod
    def load(
        cls, folder: Path, encoder_threads: int = 1, ranker_threads: int = 1
    ) -> SearchPipeline:
        """From a `searcher` version folder (the ranker's files, the tokenizer and the
        encoder's ONNX graph); a missing file is named."""
        folder = Path(folder)
        for name in (contract.TOKENIZER_FILE, contract.ENCODER_ONNX_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name} is missing: rebuild the repository")
        return cls(
            QueryTokenizer(folder / contract.TOKENIZER_FILE),
            cpu_session(folder / contract.ENCODER_ONNX_FILE, encoder_threads),
            CandidateRanker.load(folder, ranker_threads),
        )

    @property
    def catalog(self):
        return self.ranker.catalog

    def encode(self, queries: Sequence[str | bytes]) -> np.ndarray:
        """Query embeddings (B, D): one tokenizer pass and one encoder call."""
        feeds = query_feeds(self.tokenizer, queries)
        return self.encoder.run([contract.ONNX_SENTENCE_EMBEDDING], feeds)[0]

    def rank(self, requests: Sequence[Request]) -> list[Ranked]:
        """`CandidateRanker.rank`, after one encoder call for the rows without an embedding
        (while the ranker's thread runs what needs none: `CandidateRanker.prefetch`)."""
        start = time.perf_counter()
        prefetched = self.ranker.prefetch(requests)  # BM25 and shopper vectors meanwhile
        todo = [i for i, r in enumerate(requests) if r.embedding is None]
        if todo:
            embeddings = self.encode([requests[i].query for i in todo])
            requests = list(requests)
            for i, embedding in zip(todo, embeddings, strict=True):
                requests[i] = replace(requests[i], embedding=embedding)
        encoded = time.perf_counter() - start
        answers = self.ranker.rank(requests, prefetched)
        self.last_timings = {"encode": encoded, **self.ranker.last_timings}
        return answers


class InProcessPipeline:
    """Loads a generated CPU model repository's files and answers searches in this process."""

    def __init__(self, repository: Path, version: int = 1, threads: int = 1) -> None:
        v = str(version)
        self.search_pipeline = SearchPipeline.load(
            repository / contract.SEARCHER_MODEL / v, threads, threads
        )
        recommender_dir = repository / contract.RECOMMENDER_MODEL / v
        self.recommender = (
            Recommender.load(recommender_dir, threads) if recommender_dir.is_dir() else None
        )

    # Read through to the searcher's pipeline, so that what a caller swaps there (the
    # benchmark's fp32 encoder) is what every search runs.
    @property
    def tokenizer(self) -> QueryTokenizer:
        return self.search_pipeline.tokenizer

    @property
    def ranker(self) -> CandidateRanker:
        return self.search_pipeline.ranker

    @property
    def catalog(self):
        return self.ranker.catalog

    def encode(self, queries: Sequence[str | bytes]) -> np.ndarray:
        """Query embeddings (B, D) exactly as the served searcher computes them."""
        return self.search_pipeline.encode(queries)

    def search_many(
        self,
        queries: Sequence[str | bytes],
        histories: Sequence[Sequence[int]],
        k: int,
        candidates: Sequence[Sequence[int]] | None = None,
        filters: Sequence[Filters | None] | None = None,
        explain: bool = False,
    ) -> list[Answer]:
        """Top-k for a batch of (query, history[, candidate ids][, filters]) requests."""
        k = validate_top_k(k)
        requests = [
            Request(
                query=decode_query(q),
                embedding=None,
                history=self.catalog.rows_of(np.asarray(histories[i], dtype=np.int64)),
                k=k,
                candidates=None
                if candidates is None
                else self.catalog.candidate_rows(np.asarray(candidates[i], dtype=np.int64))[0],
                filters=None if filters is None else filters[i],
                explain=explain,
            )
            for i, q in enumerate(queries)
        ]
        return [_answer(r) for r in self.search_pipeline.rank(requests)]

    def search(
        self,
        query: str | bytes,
        history: Sequence[int] = (),
        k: int = contract.DEFAULT_TOP_K,
        filters: Filters | None = None,
        explain: bool = False,
    ) -> Answer:
        """Top-k for one query."""
        return self.search_many([query], [history], k, None, [filters], explain)[0]

    def rerank(
        self,
        query: str | bytes,
        candidates: Sequence[int],
        history: Sequence[int] = (),
        k: int = contract.DEFAULT_TOP_K,
        filters: Filters | None = None,
        explain: bool = False,
    ) -> Answer:
        """Top-k of the given candidate ids for one query."""
        return self.search_many([query], [history], k, [candidates], [filters], explain)[0]

    def recommend(
        self,
        history: Sequence[int] = (),
        k: int = contract.DEFAULT_TOP_K,
        filters: Filters | None = None,
        explain: bool = False,
    ) -> Answer:
        """Top-k from a history alone (the `recommend` ensemble), history products left out."""
        if self.recommender is None:
            raise ValueError("this repository has no recommender (trained without event logs)")
        rows = self.recommender.catalog.rows_of(np.asarray(history, dtype=np.int64))
        request = RecommendRequest(rows, validate_top_k(k), filters, explain)
        return _answer(self.recommender.recommend([request])[0])
