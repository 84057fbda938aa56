"""Dense retrieval over the product embeddings: an exact scan or an ANN index (faiss).

    index = DenseIndex.build(embeddings, DenseConfig(kind="ivf_sq8"))
    rows, scores = index.search(query_embeddings, k=200)   # (B, k) each, best first
    vectors = index.vectors(rows)                          # what the ranker scores with

The same index in shards (the catalog job fills them in parallel, conversion/catalog_job.py):
`DenseIndex.trained(training_sample(x, config), len(x), config)` is the empty index, each
copy gets `add_rows(x[a:b], a)`, `merge` appends the shards in row order, `finished`
makes it searchable; the result equals `build(x, config)` byte for byte.

Kinds:
- "flat": the exact inner-product scan (faiss IndexFlatIP, float32): the reference that
  ANN recall is measured against, and fine for small catalogs.
- "hnsw_sq8": HNSW graph over 8-bit scalar-quantized vectors (faiss IndexHNSWSQ): a
  quarter of the memory of float32; `ef_search` trades recall for speed.
- "ivf_sq8": inverted lists over 8-bit vectors (faiss IndexIVFScalarQuantizer): the
  cheapest to build; `nprobe` trades recall for speed.

Which kind is served, and with which search parameter, was chosen by measurement on this
machine (`make bench-ann`, docs/benchmarks.md "ANN libraries"); conversion then picks the
parameter per catalog as the smallest that reaches the recall target on held-out queries
(`tune`). Embeddings are L2-normalised, so inner product is cosine.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

KINDS = ("flat", "hnsw_sq8", "ivf_sq8")


@contextmanager
def omp_threads(threads: int | None) -> Iterator[None]:
    """faiss's OpenMP threads for the calling thread inside the block (None: unchanged).

    A team of OpenMP threads spins after each parallel region; on cores a model instance
    shares with its own prefetch thread, the server and other instances, that spinning
    costs more than the team saves: at batches of 2-8 queries the searcher spent 39 % less
    CPU per request with one thread (/proc CPU time under concurrency 8: 4.78 → 2.90 ms).
    """
    if threads is None:
        yield
        return
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


@dataclass
class DenseConfig:
    """How to build (and search) a dense index; every field is recorded beside it."""

    # IVF-SQ8 by measurement (`make bench-ann`, docs/benchmarks.md "ANN libraries"): the
    # highest recall@100 at the lowest latency of the candidates, and the fastest to build.
    kind: str = "ivf_sq8"
    hnsw_m: int = 32  # graph degree
    ef_construction: int = 80
    ef_search: int = 128  # HNSW: candidates kept while searching
    nlist: int = 0  # IVF lists; 0: 4·sqrt(N)
    nprobe: int = 32  # IVF: lists visited per query
    train_size: int = 100_000  # vectors the quantizer (and IVF centroids) are fitted on
    threads: int = 0  # faiss OpenMP threads; 0: faiss's default (all cores)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"dense index kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def search_param(self) -> str:
        """The knob `tune` turns: ef_search for HNSW, nprobe for IVF, none for flat."""
        return {"hnsw_sq8": "ef_search", "ivf_sq8": "nprobe"}.get(self.kind, "")


@dataclass
class DenseIndex:
    """A built faiss index over N normalised vectors of width D; row i = catalog row i."""

    index: object  # faiss.Index
    config: DenseConfig
    build_s: float = 0.0
    stats: dict = field(default_factory=dict)  # recall/latency measured by `tune`
    # ivf_sq8: every row's code in row order, made on the first `vectors` call
    _codes: _RowCodes | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    # -- building -----------------------------------------------------------------------
    @classmethod
    def build(cls, embeddings: np.ndarray, config: DenseConfig | None = None) -> DenseIndex:
        """Index `embeddings` (N, D) float32, rows in catalog order."""
        x = np.ascontiguousarray(embeddings, dtype=np.float32)
        started = time.perf_counter()
        index = cls.trained(training_sample(x, config or DenseConfig()), len(x), config)
        index.index.add(x)
        return index.finished(started)

    @classmethod
    def trained(cls, sample: np.ndarray, n: int, config: DenseConfig | None = None) -> DenseIndex:
        """An empty index for `n` vectors, its quantizer (and IVF centroids) fitted on
        `sample` (`training_sample` of them): what `build` fills in one go, and what
        `add_rows` shards fill in parallel before `merge` (`mergeable` kinds)."""
        import faiss

        config = config or DenseConfig()
        d = sample.shape[1]
        if config.threads:
            faiss.omp_set_num_threads(config.threads)
        if config.kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif config.kind == "hnsw_sq8":
            index = faiss.IndexHNSWSQ(
                d, faiss.ScalarQuantizer.QT_8bit, config.hnsw_m, faiss.METRIC_INNER_PRODUCT
            )
            index.hnsw.efConstruction = config.ef_construction
            index.train(sample)
        else:
            nlist = config.nlist or max(1, min(n // 39, int(4 * np.sqrt(max(n, 1)))))
            quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFScalarQuantizer(
                quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
            )
            index.cp.seed = config.seed
            index.train(sample)
            config = DenseConfig(**{**asdict(config), "nlist": nlist})
        return cls(index, config)

    def add_rows(self, vectors: np.ndarray, first_row: int) -> None:
        """Add catalog rows first_row, first_row + 1, ... to a copy of a `trained` index
        (one shard of the catalog, to be merged in row order)."""
        self._codes = None
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.config.kind == "ivf_sq8":
            self.index.add_with_ids(x, np.arange(first_row, first_row + len(x), dtype=np.int64))
        else:  # flat: ids are positions, and shards are merged in row order
            self.index.add(x)

    def merge(self, shard: DenseIndex) -> None:
        """Append `shard`'s rows (the next rows of the catalog) to this index: each inverted
        list gets the shard's entries after its own, as adding all rows here in order would."""
        if not mergeable(self.config.kind):
            raise ValueError(f"{self.config.kind} shards cannot be merged")
        self._codes = None
        self.index.merge_from(shard.index, 0)

    def finished(self, started: float) -> DenseIndex:
        """Ready to search once every row is in: build time since `started`, the row → vector
        map `vectors` needs (IVF), the configured search knob."""
        self._codes = None
        if self.config.kind == "ivf_sq8":
            self.index.make_direct_map()  # so `vectors` can decode any row
        self.build_s = round(time.perf_counter() - started, 2)
        self.apply_search_params()
        return self

    def to_bytes(self) -> np.ndarray:
        """The faiss index serialized (uint8), to send to another process."""
        import faiss

        return faiss.serialize_index(self.index)

    @classmethod
    def from_bytes(cls, data: np.ndarray, config: DenseConfig) -> DenseIndex:
        """Inverse of `to_bytes`."""
        import faiss

        return cls(faiss.deserialize_index(np.asarray(data, dtype=np.uint8)), config)

    def apply_search_params(self) -> None:
        """Set the configured search knob on the faiss index."""
        if self.config.kind == "hnsw_sq8":
            self.index.hnsw.efSearch = self.config.ef_search
        elif self.config.kind == "ivf_sq8":
            self.index.nprobe = self.config.nprobe

    # -- searching ----------------------------------------------------------------------
    def search(
        self, queries: np.ndarray, k: int, threads: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(rows (B, k) int64, scores (B, k) float32), best first; -1 rows pad a short list.
        `threads`: OpenMP threads for this search (`omp_threads`; None: faiss's setting)."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = max(1, min(int(k), self.size))
        with omp_threads(threads):
            if self.config.kind == "hnsw_sq8" and self.config.ef_search < k:
                # HNSW returns at most efSearch results.
                self.index.hnsw.efSearch = k
                try:
                    scores, rows = self.index.search(q, k)
                finally:
                    self.apply_search_params()
            else:
                scores, rows = self.index.search(q, k)
        return rows.astype(np.int64), scores.astype(np.float32)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The stored vectors of `rows` (decoded from 8 bits for the SQ kinds), (len, D):
        what faiss's `reconstruct_batch` returns, bit for bit."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) == 0:
            return np.zeros((0, self.dim), np.float32)
        if self.config.kind == "ivf_sq8":
            if self._codes is None:
                self._codes = _RowCodes.of(self.index)
            return self._codes.decode(self.index, rows)
        return self.index.reconstruct_batch(rows).astype(np.float32, copy=False)

    # -- measuring ----------------------------------------------------------------------
    def recall_at(self, queries: np.ndarray, exact_rows: np.ndarray, k: int) -> float:
        """Mean share of the exact top-k rows (B, k) that this index also returns."""
        got, _ = self.search(queries, k)
        hits = [
            len(set(g.tolist()) & set(e.tolist())) / k for g, e in zip(got, exact_rows, strict=True)
        ]
        return float(np.mean(hits))

    def tune(
        self,
        queries: np.ndarray,
        exact_rows: np.ndarray,
        k: int,
        target: float,
        values: Sequence[int] | None = None,
    ) -> dict:
        """Set the smallest search knob value whose recall@k against `exact_rows` reaches
        `target` (else the largest tried); record every trial in `stats` and return it."""
        param = self.config.search_param
        if not param:
            self.stats = {"param": None, "recall": 1.0, "k": k, "trials": []}
            return self.stats
        if values is None:
            # HNSW returns at most efSearch results, so efSearch below k is never tried.
            values = (
                [v for v in (100, 128, 192, 256, 384, 512, 768) if v >= k] or [k]
                if param == "ef_search"
                else [4, 8, 16, 32, 64, 128, 256]
            )
        trials = []
        chosen = None
        for value in values:
            setattr(self.config, param, int(value))
            self.apply_search_params()
            recall = self.recall_at(queries, exact_rows, k)
            t0 = time.perf_counter()
            for q in queries[:200]:  # served one query at a time
                self.search(q[None, :], k)
            ms = (time.perf_counter() - t0) * 1e3 / max(min(len(queries), 200), 1)
            trials.append({param: int(value), "recall": round(recall, 4), "ms_per_query": ms})
            if recall >= target:
                chosen = int(value)
                break
        setattr(self.config, param, chosen if chosen is not None else int(values[-1]))
        self.apply_search_params()
        self.stats = {
            "param": param,
            "value": getattr(self.config, param),
            "target": target,
            "k": k,
            "reached": chosen is not None,
            "recall": trials[-1]["recall"],
            "trials": trials,
        }
        return self.stats

    # -- persistence --------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """The faiss index at `path`, its config and stats at `path`.json."""
        import faiss

        path.parent.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(path))
        meta = {"config": asdict(self.config), "build_s": self.build_s, "stats": self.stats}
        meta_path(path).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, path: Path) -> DenseIndex:
        """Inverse of `save`; raises ValueError naming the file when it is missing or corrupt."""
        import faiss

        try:
            meta = json.loads(meta_path(path).read_text())
            index = faiss.read_index(str(path))
        except (OSError, ValueError, RuntimeError) as exc:
            raise ValueError(f"dense index {path} is missing or corrupt: {exc}") from None
        loaded = cls(index, DenseConfig(**meta["config"]), meta["build_s"], meta.get("stats", {}))
        loaded.apply_search_params()
        return loaded


@dataclass
class _RowCodes:
    """An IVF-SQ8 index's codes in catalog-row order, and each row's inverted list.

    faiss reconstructs an IVF row alone: a direct-map lookup, a fresh decoder and the
    list's centroid per vector, ~1 µs each, so the ranker's ~300 candidates cost more than
    the ANN search that found them. One batched `ScalarQuantizer.decode` of the gathered
    codes plus the centroids is the same arithmetic (the same faiss decoder, then the same
    float32 addition) for a fraction of it. The price is a copy of the codes: N × D bytes
    (7.7 MB at 20,000 products of 384 dimensions).
    """

    codes: np.ndarray  # (N, code_size) uint8
    lists: np.ndarray  # (N,) int32, each row's inverted list
    centroids: np.ndarray | None  # (nlist, D) float32; None: codes are not residuals

    @classmethod
    def of(cls, index) -> _RowCodes:
        import faiss

        invlists, size = index.invlists, index.code_size
        codes = np.zeros((index.ntotal, size), np.uint8)
        lists = np.zeros(index.ntotal, np.int32)
        for number in range(index.nlist):
            n = invlists.list_size(number)
            if n == 0:
                continue
            ids = faiss.rev_swig_ptr(invlists.get_ids(number), n)
            codes[ids] = faiss.rev_swig_ptr(invlists.get_codes(number), n * size).reshape(n, size)
            lists[ids] = number
        centroids = index.quantizer.reconstruct_n(0, index.nlist) if index.by_residual else None
        return cls(codes, lists, centroids)

    def decode(self, index, rows: np.ndarray) -> np.ndarray:
        """(len(rows), D) float32, as `index.reconstruct_batch(rows)` computes them."""
        # `decode` forks an OpenMP team for any n; on cores shared with other model
        # instances a team waits for its slowest thread, which costs more than the decode.
        with omp_threads(1):
            out = index.sq.decode(self.codes[rows])
        if self.centroids is not None:
            out += self.centroids[self.lists[rows]]
        return out


def training_sample(x: np.ndarray, config: DenseConfig) -> np.ndarray:
    """The rows (at most `config.train_size`, drawn with `config.seed`) a quantizer is
    fitted on; the same rows whether the catalog is indexed at once or in shards."""
    n = len(x)
    if not n:
        return x
    rows = np.random.default_rng(config.seed).choice(
        n, size=min(n, config.train_size), replace=False
    )
    return np.ascontiguousarray(x[rows], dtype=np.float32)


def mergeable(kind: str) -> bool:
    """Whether shards of this kind merge into the index built at once (HNSW graphs do not)."""
    return kind in ("flat", "ivf_sq8")


def meta_path(index_path: Path) -> Path:
    """Where an index's config and tuning stats live (beside it)."""
    return index_path.with_suffix(index_path.suffix + ".json")


def exact_top_k(embeddings: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Rows of the exact top-k by inner product, (B, k): the reference for recall."""
    return DenseIndex.build(embeddings, DenseConfig(kind="flat")).search(queries, k)[0]
