"""Two-stage ranking: candidates from dense ANN and BM25, re-ranked by the fusion ranker.

    ranker = CandidateRanker.load(folder)            # what the searcher (or `ranker`) holds
    answers = ranker.rank(requests)                  # one call per dynamic batch

For each request: candidates are the union of the dense index's `dense_k` nearest products
to the query embedding and BM25's `lexical_k` best matches for the query text (search),
or the ids the caller sent (re-rank). Every candidate gets the fusion ranker's relevance
(cosine and lexical features; one ONNX call for the batch); only the candidates inside
each row's re-rank depth get the shopper's features (history vectors, item and
shopper↔item features) and the full score (a second call), and `scoring.combine` ranks
the rest by relevance below them. BM25 and the shopper vectors need no query embedding:
they run on the ranker's thread while the queries are encoded (`CandidateRanker.prefetch`).

The same functions build the candidates and features during training and offline
evaluation, so what is trained, measured and served cannot drift apart.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from shoprank import contract
from shoprank.core.ann import DenseIndex
from shoprank.core.catalog import CatalogIndex
from shoprank.core.features import (
    ITEM_FEATURES,
    USER_ITEM_FEATURES,
    ItemTables,
    user_item_features,
)
from shoprank.core.filters import Facets, Filters, row_filters
from shoprank.core.lexical import LEXICAL_FEATURES, LexicalIndex, search_dir, tokenize
from shoprank.core.requests import (
    InvalidInput,
    pad_rows,
    query_row,
    required,
    row_flags,
    row_values,
    validate_top_k,
)
from shoprank.core.scoring import (
    Ranked,
    combine,
    explained_parts,
    explanation,
    in_depth,
    row_depths,
)
from shoprank.core.sessions import cpu_session
from shoprank.core.shopper_vectors import ShopperVectors


@dataclass
class CandidateConfig:
    """How many candidates each retriever contributes (training's and cross-validation's
    configs extend it, so the served values are the trained ones)."""

    dense_k: int = field(default=200, metadata={"help": "dense candidates per query"})
    lexical_k: int = field(default=100, metadata={"help": "BM25 candidates per query"})


@dataclass
class RetrievalConfig(CandidateConfig):
    """The candidates, the re-rank depth and the sequential search signal the ranker serves."""

    depth: int = 10  # behaviour reorders only the `depth` most relevant candidates
    cold_start_depth: int | None = None  # the same for an empty history; None: `depth`
    # The sequential model's shopper vector as a search signal (0: off; chosen on validation
    # sessions by training): see `sequential_part`.
    sequential_weight: float = 0.0
    sequential_mean: float = 0.0
    sequential_std: float = 1.0

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> RetrievalConfig:
        return cls(**json.loads(Path(path).read_text()))


def sequential_part(raw: np.ndarray, config: RetrievalConfig) -> np.ndarray:
    """What the shopper vector adds to a candidate's score: w · (⟨u, e_i⟩ - mean) / std, the
    standardisation fixed on validation impressions so that training and serving agree."""
    scale = config.sequential_weight / max(config.sequential_std, 1e-9)
    return (scale * (np.asarray(raw, np.float32) - config.sequential_mean)).astype(np.float32)


def union_candidates(*lists: np.ndarray) -> np.ndarray:
    """Rows of every list, each once, in first-seen order (padding -1 dropped)."""
    rows = np.concatenate([np.asarray(r, np.int64).reshape(-1) for r in lists])
    rows = rows[rows >= 0]
    _, first = np.unique(rows, return_index=True)
    return rows[np.sort(first)]


@dataclass
class Prefetched:
    """What ranking a batch needs that does not wait for its query embeddings: each row's
    query tokens and, computed on the ranker's thread (`pending`), BM25's candidates of the
    rows that search and the shopper vectors (W, d) of the rows with a history (None when
    the search signal does not use them)."""

    tokens: list[list[str]]
    pending: Future  # -> (list[np.ndarray], np.ndarray | None)


# A filter that allows at most this many products is met by an exact scan over them; a
# broader one by a deeper ANN search, rather than decoding that many vectors per request.
WIDEN_EXACT_MAX = 100_000


def widen(
    dense: DenseIndex, query: np.ndarray, allowed: np.ndarray, k: int, threads: int | None = None
) -> np.ndarray:
    """Up to k allowed catalog rows nearest to `query` (D,), for a filter that left
    retrieval short of TOP_K: filtering must not shorten the answer while products match
    (`threads`: the dense search's, as in `DenseIndex.search`)."""
    rows = np.flatnonzero(allowed)
    if len(rows) == 0:
        return rows
    if len(rows) <= WIDEN_EXACT_MAX:
        scores = dense.vectors(rows) @ np.asarray(query, np.float32)
        best = np.argsort(-scores, kind="stable")[:k]
        return rows[best]
    # Broad filter: search deep enough that about k allowed rows are expected.
    depth = min(dense.size, int(np.ceil(4 * k * len(allowed) / len(rows))))
    found, _ = dense.search(query[None, :], depth, threads)
    found = found[0][found[0] >= 0]
    return found[allowed[found]][:k]


@dataclass
class Features:
    """Everything the fusion ranker scores, for a batch padded to (B, C) candidates."""

    query: np.ndarray  # (B, D)
    history: np.ndarray  # (B, H, D)
    history_mask: np.ndarray  # (B, H)
    candidates: np.ndarray  # (B, C, D)
    lexical: np.ndarray  # (B, C, L)
    item_features: np.ndarray  # (B, C, F)
    user_item: np.ndarray  # (B, C, U)
    rows: np.ndarray  # (B, C) candidate catalog rows, 0-padded
    valid: np.ndarray  # (B, C) bool

    def columns(self, cols: np.ndarray, valid: np.ndarray) -> Features:
        """The candidates at `cols` (B, m) of each row (`valid` marks real ones)."""

        def take(a: np.ndarray) -> np.ndarray:
            index = cols.reshape(*cols.shape, *([1] * (a.ndim - 2)))
            return np.take_along_axis(a, index, axis=1)

        return replace(
            self,
            candidates=take(self.candidates),
            lexical=take(self.lexical),
            item_features=take(self.item_features),
            user_item=take(self.user_item),
            rows=np.take_along_axis(self.rows, cols, axis=1),
            valid=valid,
        )

    def relevance_feeds(self) -> dict[str, np.ndarray]:
        """ONNX feeds of the relevance graph (RELEVANCE_ONNX_FILE)."""
        return {
            contract.ONNX_RANKER_QUERY: self.query,
            contract.ONNX_RANKER_CANDIDATES: self.candidates,
            contract.ONNX_RANKER_LEXICAL: self.lexical,
        }

    def feeds(self) -> dict[str, np.ndarray]:
        """ONNX feeds of the ranker graph."""
        return {
            contract.ONNX_RANKER_QUERY: self.query,
            contract.ONNX_RANKER_HISTORY: self.history,
            contract.ONNX_RANKER_HISTORY_MASK: self.history_mask,
            contract.ONNX_RANKER_CANDIDATES: self.candidates,
            contract.ONNX_RANKER_LEXICAL: self.lexical,
            contract.ONNX_RANKER_ITEM_FEATURES: self.item_features,
            contract.ONNX_RANKER_USER_ITEM: self.user_item,
        }


def gather_features(
    vectors,  # callable: rows (n,) -> (n, D) float32
    lexical: LexicalIndex,
    tables: ItemTables,
    query_embeddings: np.ndarray,
    query_tokens: Sequence[Sequence[str]],
    histories: Sequence[np.ndarray],
    candidates: Sequence[np.ndarray],
) -> Features:
    """Pad a batch and gather every feature of every candidate (see `Features`)."""
    relevance = relevance_features(vectors, lexical, query_embeddings, query_tokens, candidates)
    return with_behaviour(relevance, vectors, tables, histories)


def relevance_features(
    vectors,  # callable: rows (n,) -> (n, D) float32
    lexical: LexicalIndex,
    query_embeddings: np.ndarray,
    query_tokens: Sequence[Sequence[str]],
    candidates: Sequence[np.ndarray],
) -> Features:
    """What the relevance R needs (query and candidate vectors, lexical features) for a
    padded batch; the behaviour inputs stay empty (`with_behaviour` fills them)."""
    b = len(candidates)
    rows = pad_rows([np.asarray(c, np.int64) for c in candidates], pad=0)
    valid = pad_rows([np.ones(len(c), bool) for c in candidates], pad=False).astype(bool)
    dim = query_embeddings.shape[1]
    # Only real rows are decoded: padding stays zero, and the ranker scores each candidate
    # apart from the others, so what padding holds never reaches a real candidate's score.
    cand_vec = np.zeros((b, rows.shape[1], dim), np.float32)
    cand_vec[valid] = vectors(rows[valid])
    lex = np.zeros((b, rows.shape[1], len(LEXICAL_FEATURES)), np.float32)
    for i, (tokens, cand) in enumerate(zip(query_tokens, candidates, strict=True)):
        lexical.features_into(lex[i, : len(cand)], tokens, cand)
    return Features(
        query=np.ascontiguousarray(query_embeddings, dtype=np.float32),
        history=np.zeros((b, 1, dim), np.float32),
        history_mask=np.zeros((b, 1), np.float32),
        candidates=cand_vec,
        lexical=lex,
        item_features=np.zeros((b, rows.shape[1], len(ITEM_FEATURES)), np.float32),
        user_item=np.zeros((b, rows.shape[1], len(USER_ITEM_FEATURES)), np.float32),
        rows=rows,
        valid=valid,
    )


def with_behaviour(
    features: Features, vectors, tables: ItemTables, histories: Sequence[np.ndarray]
) -> Features:
    """`features` with the shopper's inputs filled in: history vectors, item features and
    shopper↔item features of its candidates."""
    b, dim = len(histories), features.query.shape[1]
    hist = pad_rows([np.asarray(h, np.int64) for h in histories], pad=0)
    hist_mask = pad_rows([np.ones(len(h), np.float32) for h in histories], pad=0.0)
    present = hist_mask > 0
    hist_vec = np.zeros((b, hist.shape[1], dim), np.float32)
    hist_vec[present] = vectors(hist[present])
    return replace(
        features,
        history=hist_vec,
        history_mask=hist_mask.astype(np.float32),
        item_features=tables.item_features[features.rows].astype(np.float32),
        user_item=user_item_features(tables, hist, hist_mask, features.rows),
    )


def depth_columns(within: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(columns (B, m), valid (B, m)): each row's candidates inside its re-rank depth
    (`within` (B, C)), in candidate order, padded with column 0 (valid False)."""
    counts = within.sum(axis=1)
    m = int(counts.max()) if within.size else 0
    # A stable sort puts each row's kept columns first, in their order.
    order = np.argsort(~within, axis=1, kind="stable")[:, :m]
    valid = np.arange(m)[None, :] < counts[:, None]
    return np.where(valid, order, 0), valid


@dataclass
class Request:
    """One ranking request after validation: text, embedding, history rows, k, candidates."""

    query: str
    embedding: np.ndarray | None  # (D,); None: not encoded yet (`pipeline.SearchPipeline`)
    history: np.ndarray  # catalog rows, most recent last
    k: int
    candidates: np.ndarray | None = None  # catalog rows to re-rank; None: retrieve
    filters: Filters | None = None  # None: everything may be returned
    explain: bool = False  # also answer each result's score broken into its parts


@dataclass
class ParsedRequest:
    """One Triton request's rows, validated, and the re-rank ids it sent that were ignored."""

    rows: list[Request]
    unknown_ids: int = 0  # CANDIDATE_IDS not in the catalog
    duplicate_ids: int = 0  # CANDIDATE_IDS sent more than once in a row


def parse_request(arrays: Mapping[str, np.ndarray], catalog: CatalogIndex) -> ParsedRequest:
    """The rows of one `ranker` or `searcher` request, from its input tensors by name
    (absent optional inputs are simply not there; the searcher's rows have no
    QUERY_EMBEDDING yet). Raises InvalidInput, naming what is wrong, to refuse the whole
    request."""
    queries = required(arrays, contract.QUERY.name).reshape(-1)
    if queries.size == 0:
        raise InvalidInput(f"{contract.QUERY.name} is missing", "query_empty")
    embeddings = arrays.get(contract.QUERY_EMBEDDING.name)
    top_k = required(arrays, contract.TOP_K.name).reshape(-1)
    b = len(queries)
    if top_k.size != b:
        raise InvalidInput(f"{contract.TOP_K.name} must hold one value per row, got {top_k.size}")
    histories = row_values(arrays.get(contract.HISTORY.name), b, contract.HISTORY.name)
    sent = arrays.get(contract.CANDIDATE_IDS.name)
    candidates = None if sent is None else row_values(sent, b, contract.CANDIDATE_IDS.name)
    filters = row_filters(arrays, b, catalog)
    explain = row_flags(arrays.get(contract.EXPLAIN.name), b, "EXPLAIN")
    parsed = ParsedRequest([])
    for row in range(b):
        rows = None
        if candidates is not None:
            ids = candidates[row]
            rows, unknown, duplicates = catalog.candidate_rows(ids[ids != contract.PADDING_ID])
            parsed.unknown_ids += unknown
            parsed.duplicate_ids += duplicates
        parsed.rows.append(
            Request(
                query=query_row(queries[row], row, b),
                embedding=None
                if embeddings is None
                else np.asarray(embeddings[row], np.float32).reshape(-1),
                history=catalog.rows_of(histories[row]),
                k=validate_top_k(top_k[row]),
                candidates=rows,
                filters=filters[row],
                explain=explain[row],
            )
        )
    return parsed


@dataclass
class BatchCounts:
    """What one ranked batch adds to the serving metrics, summed per label set, so a
    batch costs one update per series rather than one per row (each update of a Triton
    custom metric is a round trip to the server process)."""

    rows: dict[tuple[str, str], int] = field(default_factory=dict)  # (mode, history) → rows
    results: dict[str, int] = field(default_factory=dict)  # mode → products returned
    candidates: dict[str, list[int]] = field(default_factory=dict)  # mode → per-row counts


def mode_of(request: Request) -> str:
    """The ensemble a row came through: re-rank when it carried candidate ids."""
    return contract.RERANK_MODEL if request.candidates is not None else contract.ENSEMBLE_MODEL


def batch_counts(rows: Sequence[Request], answers: Sequence[Ranked]) -> BatchCounts:
    """The metric updates of one `rank` call's rows and answers (see BatchCounts)."""
    counts = BatchCounts()
    for row, answer in zip(rows, answers, strict=True):
        mode = mode_of(row)
        key = (mode, "present" if len(row.history) else "empty")
        counts.rows[key] = counts.rows.get(key, 0) + 1
        counts.results[mode] = counts.results.get(mode, 0) + len(answer.product_ids)
        n = len(row.candidates) if row.candidates is not None else answer.candidates
        counts.candidates.setdefault(mode, []).append(n)
    return counts


@dataclass
class Scored:
    """The ranker's outputs for a batch (B, C), or for one request's row (C,) (`row`)."""

    relevance: np.ndarray
    scores: np.ndarray  # served: relevance + behaviour inside the re-rank depth
    within_depth: np.ndarray  # inside the row's re-rank depth
    sequential: np.ndarray | None  # the sequential shopper vector's part; None: off
    parts: np.ndarray | None  # (..., parts) score parts; None unless a request explains

    def row(self, i: int) -> Scored:
        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[i]

        return Scored(
            self.relevance[i],
            self.scores[i],
            pick(self.within_depth),
            pick(self.sequential),
            pick(self.parts),
        )


class CandidateRanker:
    """Retrieval + re-ranking over one catalog: the work of the Triton `ranker` model."""

    def __init__(
        self,
        session,
        relevance_session,
        dense: DenseIndex,
        lexical: LexicalIndex,
        tables: ItemTables,
        catalog: CatalogIndex,
        config: RetrievalConfig,
        shoppers: ShopperVectors | None = None,
        parallel: bool = True,
        threads: int | None = 1,
    ) -> None:
        if shoppers is not None and len(shoppers.items) != len(catalog.product_ids):
            raise ValueError(
                f"{len(shoppers.items)} item vectors for {len(catalog.product_ids)} products"
            )
        self.session = session  # the ranker graph: relevance, full score, score parts
        self.relevance_session = relevance_session  # its relevance alone
        self.shoppers = shoppers  # the sequential search signal, when the config weighs it
        self.dense = dense
        self.lexical = lexical
        self.tables = tables
        self.catalog = catalog
        self.config = config
        self.facets = Facets.of(catalog)
        # One thread for BM25 and the shopper vectors beside the encoder or the dense search
        # (`prefetch`); None: one after the other.
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="prefetch") if parallel else None
        # The dense search's OpenMP threads: the instance's own, like its ONNX sessions'
        # (`ann.omp_threads`; None: faiss's setting, all cores).
        self.threads = threads
        # What the last `rank` call spent per stage (seconds), for the serving metrics.
        self.last_timings: dict[str, float] = {}

    @classmethod
    def load(cls, folder: Path, threads: int = 1, dense=None) -> CandidateRanker:
        """From a model version folder written by the repository builder; `dense` replaces
        the folder's dense index (the GPU scan of `shoprank.models.gpu`)."""
        folder = Path(folder)
        for name in (
            contract.RANKER_ONNX_FILE,
            contract.RELEVANCE_ONNX_FILE,
            *(() if dense is not None else (contract.DENSE_INDEX_FILE,)),
            contract.LEXICAL_INDEX_FILE,
            search_dir(Path(contract.LEXICAL_INDEX_FILE)).name,
            contract.ITEM_TABLES_FILE,
            contract.CATALOG_FILE,
            contract.RETRIEVAL_CONFIG_FILE,
        ):
            if not (folder / name).exists():
                raise FileNotFoundError(f"{folder / name} is missing: rebuild the repository")
        config = RetrievalConfig.load(folder / contract.RETRIEVAL_CONFIG_FILE)
        shoppers = (
            ShopperVectors.load(folder, threads)[0] if config.sequential_weight != 0 else None
        )
        return cls(
            cpu_session(folder / contract.RANKER_ONNX_FILE, threads),
            cpu_session(folder / contract.RELEVANCE_ONNX_FILE, threads),
            dense if dense is not None else DenseIndex.load(folder / contract.DENSE_INDEX_FILE),
            LexicalIndex.load(folder / contract.LEXICAL_INDEX_FILE),
            ItemTables.load(folder / contract.ITEM_TABLES_FILE),
            CatalogIndex.load(folder / contract.CATALOG_FILE),
            config,
            shoppers,
            threads=threads,
        )

    def sequential_scores(
        self,
        requests: Sequence[Request],
        rows: np.ndarray,
        within: np.ndarray,
        users: np.ndarray | None = None,
    ) -> np.ndarray | None:
        """(B, C) `sequential_part` of each candidate `rows` (B, C) marked `within` its row's
        re-rank depth, for rows with a history, 0 elsewhere; None when the signal is off.
        Like the rest of behaviour, it reorders only the depth's most relevant candidates."""
        if self.shoppers is None:
            return None
        out = np.zeros(rows.shape, np.float32)
        warm = [i for i, r in enumerate(requests) if len(r.history)]
        if warm:
            histories = [requests[i].history for i in warm]
            raw = self.shoppers.scores_at(histories, rows[warm], users)
            out[warm] = np.where(within[warm], sequential_part(raw, self.config), 0.0)
        return out

    def prefetch(self, requests: Sequence[Request]) -> Prefetched:
        """Start the batch's work that needs no query embedding: BM25 and the shopper
        vectors run on the ranker's thread (both release the GIL) while the caller encodes
        the queries, or, when `rank` is called without it, while the dense search runs."""
        tokens = [tokenize(r.query) for r in requests]
        searching = [tokens[i] for i, r in enumerate(requests) if r.candidates is None]
        uses_users = self.shoppers is not None and bool(self.shoppers.blend.sequential)
        histories = [r.history for r in requests if len(r.history)] if uses_users else []

        def work() -> tuple[list[np.ndarray], np.ndarray | None]:
            k = self.config.lexical_k
            found = [self.lexical.search(t, k)[0] for t in searching]
            return found, self.shoppers.users(histories) if histories else None

        if self.pool is not None:
            return Prefetched(tokens, self.pool.submit(work))
        done: Future = Future()
        done.set_result(work())
        return Prefetched(tokens, done)

    def rank(
        self, requests: Sequence[Request], prefetched: Prefetched | None = None
    ) -> list[Ranked]:
        """Answers in request order; one retrieval pass and one relevance call for the
        batch, and one behaviour call for the candidates inside the re-rank depths."""
        if not requests:
            return []
        clock = time.perf_counter()
        timings: dict[str, float] = {}

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[stage] = now - clock
            clock = now

        prefetched = prefetched or self.prefetch(requests)
        tokens = prefetched.tokens
        embeddings = np.stack([r.embedding for r in requests]).astype(np.float32)
        candidates = self.candidates(requests, embeddings, prefetched)
        lap("retrieve")
        features = relevance_features(
            self.dense.vectors, self.lexical, embeddings, tokens, candidates
        )
        lap("features")
        scored, behaviour = self.score(requests, features, prefetched.pending.result()[1])
        lap("score")
        out = [
            self.answer(r, candidates[i], scored.row(i), behaviour, i)
            for i, r in enumerate(requests)
        ]
        lap("select")
        self.last_timings = timings
        return out

    def candidates(
        self, requests: Sequence[Request], embeddings: np.ndarray, prefetched: Prefetched
    ) -> list[np.ndarray]:
        """Catalog rows to score per request: the caller's (re-rank) or retrieved (search),
        then filtered; a filtered search short of its k widens the dense search."""
        to_retrieve = [i for i, r in enumerate(requests) if r.candidates is None]
        candidates: list[np.ndarray] = [
            r.candidates if r.candidates is not None else np.zeros(0, np.int64) for r in requests
        ]
        if to_retrieve:
            dense_query = embeddings[to_retrieve]
            dense_rows, _ = self.dense.search(dense_query, self.config.dense_k, self.threads)
            lexical_rows, _ = prefetched.pending.result()
            for j, (i, rows) in enumerate(zip(to_retrieve, lexical_rows, strict=True)):
                candidates[i] = union_candidates(dense_rows[j], rows)
        for i, r in enumerate(requests):
            allowed = self.facets.allowed(r.filters) if r.filters is not None else None
            if allowed is None:
                continue
            passed = candidates[i][allowed[candidates[i]]]
            if r.candidates is None and len(passed) < r.k:
                k = max(self.config.dense_k, r.k)
                more = widen(self.dense, embeddings[i], allowed, k, self.threads)
                passed = union_candidates(passed, more)
            candidates[i] = passed
        return candidates

    def score(
        self, requests: Sequence[Request], features: Features, users: np.ndarray | None = None
    ) -> tuple[Scored, Features]:
        """The served scores, and the features the behaviour was scored on.

        Relevance for every candidate (one ONNX call on `relevance_features`), then the
        shopper's inputs and the full score only for the candidates inside each row's
        re-rank depth (a second call): the rest are ranked by relevance alone (`combine`).
        A batch with a request that explains scores every candidate in one call, as its
        answers list the parts of results below the depth too. `users`: the shopper vectors
        of the rows with a history (`prefetch`), computed here when not given.
        """
        histories = [r.history for r in requests]
        depths = row_depths(
            np.array([len(h) for h in histories]), self.config.depth, self.config.cold_start_depth
        )
        if any(r.explain for r in requests):
            behaviour = with_behaviour(features, self.dense.vectors, self.tables, histories)
            names = [contract.ONNX_RANKER_RELEVANCE, contract.ONNX_RANKER_SCORES]
            relevance, full, parts = self.session.run(
                [*names, contract.ONNX_RANKER_PARTS], behaviour.feeds()
            )
            within = in_depth(relevance, depths, features.valid)
            sequential = self.sequential_scores(requests, features.rows, within, users)
            scores = combine(relevance, full, depths, features.valid, sequential)
            return Scored(relevance, scores, within, sequential, parts), behaviour
        (relevance,) = self.relevance_session.run(None, features.relevance_feeds())
        within = in_depth(relevance, depths, features.valid)
        full, sequential = relevance.copy(), None
        cols, kept = depth_columns(within)
        if cols.shape[1]:
            behaviour = with_behaviour(
                features.columns(cols, kept), self.dense.vectors, self.tables, histories
            )
            (top,) = self.session.run([contract.ONNX_RANKER_SCORES], behaviour.feeds())
            b, c = np.nonzero(kept)
            full[b, cols[b, c]] = top[b, c]
            part = self.sequential_scores(requests, behaviour.rows, kept, users)
            if part is not None:
                sequential = np.zeros_like(relevance)
                sequential[b, cols[b, c]] = part[b, c]
        scores = combine(relevance, full, depths, features.valid, sequential)
        return Scored(relevance, scores, within, sequential, None), features

    def answer(
        self, r: Request, candidates: np.ndarray, scored: Scored, features: Features, i: int
    ) -> Ranked:
        """Request `r`'s top k (row `i` of the batch), best first, ties by catalog row; with
        each result's explanation when asked."""
        n = len(candidates)
        k = min(r.k, n)
        if k == 0:
            return Ranked(np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, object))
        row_scores = scored.scores[:n]
        best = np.argpartition(-row_scores, k - 1)[:k]
        best = best[np.lexsort((candidates[best], -row_scores[best]))]
        picked = candidates[best]
        explained = None
        if r.explain:
            history_ids = self.catalog.product_ids[r.history]
            explained = np.array(
                [
                    explanation(
                        row_scores[j],
                        explained_parts(
                            scored.parts[j],
                            bool(scored.within_depth[j]),
                            float(scored.sequential[j])
                            if scored.sequential is not None and len(r.history)
                            else None,
                            float(row_scores[j] - scored.relevance[j]),
                        ),
                        history_ids,
                        features.history[i, : len(r.history)],
                        features.candidates[i, j],
                    )
                    for j in best
                ],
                dtype=object,
            )
        return Ranked(
            self.catalog.product_ids[picked],
            row_scores[best].astype(np.float32),
            self.catalog.titles[picked],
            n,
            explained,
        )
