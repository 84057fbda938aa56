"""`python -m shoprank.bench.ann`: which ANN library and index serve the dense retrieval.

For each catalog size, over embeddings synthesized from the trained demo catalog
(`bench.synth`) and the demo's real held-out queries embedded by the fine-tuned encoder,
it builds every candidate index on this machine and measures build time, index size,
recall@100 against the exact scan, and batch-1 latency at a few search settings:

- faiss IndexHNSWSQ (8-bit vectors, HNSW graph), efSearch 64..512
- faiss IndexIVFScalarQuantizer (8-bit vectors, inverted lists), nprobe 8..128
- usearch HNSW with int8 vectors, expansion_search 64..512

Writes `<reports>/ann.md` and `ann.csv` (`make benchmarks-doc` puts the CSV into
docs/benchmarks.md).
"""

from __future__ import annotations

import csv
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shoprank import contract
from shoprank.bench.synth import describe, synthetic_embeddings
from shoprank.configargs import parse_config
from shoprank.core.ann import DenseConfig, DenseIndex, exact_top_k
from shoprank.data.artifacts import load_item_index

K = 100


@dataclass
class AnnBenchConfig:
    """Every knob of the ANN comparison; each is a flag."""

    out: Path = field(default=contract.DEFAULT_ARTIFACTS, metadata={"help": "trained demo"})
    reports: Path = field(default=Path("reports"), metadata={"help": "where to write"})
    sizes: str = field(default="200000,1000000", metadata={"help": "catalog sizes"})
    queries: int = field(default=300, metadata={"help": "held-out queries measured"})
    threads: int = field(default=2, metadata={"help": "build threads (search: 1)"})
    usearch: bool = field(default=True, metadata={"help": "include usearch"})


@dataclass
class Row:
    size: int
    library: str
    index: str
    param: str
    build_s: float
    index_mb: float
    recall_at_100: float
    ms_per_query: float


def _queries(paths: contract.ArtifactPaths, n: int) -> np.ndarray:
    from shoprank.data import datasets
    from shoprank.models.encoder import embed, load_encoder

    queries = datasets.load(paths).queries
    test = queries[queries["split"] == "test"]["query"].tolist()[:n]
    return embed(load_encoder(paths.encoder), test, max_seq_length=contract.MAX_QUERY_TOKENS)


def _latency(search, queries: np.ndarray) -> float:
    search(queries[:5])  # warm
    t0 = time.perf_counter()
    for q in queries:
        search(q[None, :])
    return (time.perf_counter() - t0) * 1e3 / len(queries)


def _recall(rows: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / K for a, b in zip(rows, exact, strict=True)]))


def _faiss_rows(size, x, queries, exact, kind, values, threads) -> list[Row]:
    import faiss

    faiss.omp_set_num_threads(threads)
    index = DenseIndex.build(x, DenseConfig(kind=kind))
    faiss.omp_set_num_threads(1)  # served: one request at a time per model instance
    mb = faiss.serialize_index(index.index).nbytes / 1e6
    rows = []
    param = index.config.search_param
    for v in values:
        setattr(index.config, param, v)
        index.apply_search_params()
        got = index.search(queries, K)[0]
        ms = _latency(lambda q, i=index: i.search(q, K), queries)
        rows.append(
            Row(size, "faiss", kind, f"{param}={v}", index.build_s, mb, _recall(got, exact), ms)
        )
    faiss.omp_set_num_threads(threads)
    return rows


def _usearch_rows(size, x, queries, exact, values, threads) -> list[Row]:
    from usearch.index import Index

    index = Index(ndim=x.shape[1], metric="ip", dtype="i8", connectivity=16, expansion_add=128)
    t0 = time.perf_counter()
    index.add(np.arange(len(x)), x, threads=threads)
    build_s = time.perf_counter() - t0
    mb = index.memory_usage / 1e6
    rows = []
    for v in values:
        index.expansion_search = v
        got = index.search(queries, K, threads=1).keys
        ms = _latency(lambda q: index.search(q, K, threads=1), queries)
        rows.append(
            Row(size, "usearch", "hnsw_i8", f"expansion={v}", build_s, mb, _recall(got, exact), ms)
        )
    return rows


def run(config: AnnBenchConfig) -> list[Row]:
    """Measure every candidate at every size; write the reports."""
    import faiss

    paths = contract.ArtifactPaths(config.out)
    base = load_item_index(paths.item_index)["embeddings"]
    queries = _queries(paths, config.queries)
    out: list[Row] = []
    for size in (int(s) for s in config.sizes.split(",")):
        x = synthetic_embeddings(base, size)
        faiss.omp_set_num_threads(config.threads)
        t0 = time.perf_counter()
        exact = exact_top_k(x, queries, K)
        flat_ms = (time.perf_counter() - t0) * 1e3 / len(queries)
        out.append(Row(size, "faiss", "flat", "exact", 0.0, x.nbytes / 1e6, 1.0, flat_ms))
        out += _faiss_rows(size, x, queries, exact, "hnsw_sq8", [64, 128, 256, 512], config.threads)
        out += _faiss_rows(size, x, queries, exact, "ivf_sq8", [8, 16, 32, 64, 128], config.threads)
        if config.usearch:
            out += _usearch_rows(size, x, queries, exact, [64, 128, 256, 512], config.threads)
        for r in out[-14:]:
            print(
                f"{r.size:>8} {r.library:8} {r.index:9} {r.param:14} build {r.build_s:6.1f}s "
                f"{r.index_mb:7.1f} MB recall {r.recall_at_100:.4f} {r.ms_per_query:6.2f} ms",
                file=sys.stderr,
            )
        del x
    _write(out, config.reports, len(queries))
    return out


def _write(rows: list[Row], reports: Path, n_queries: int) -> None:
    reports.mkdir(parents=True, exist_ok=True)
    with open(reports / "ann.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(Row.__dataclass_fields__)
        for r in rows:
            writer.writerow([getattr(r, k) for k in Row.__dataclass_fields__])
    lines = [
        "# Dense retrieval: ANN candidates on this machine",
        "",
        f"Catalog: {describe()}. Queries: {n_queries} held-out demo queries, fine-tuned encoder.",
        "Recall@100 against the exact scan; latency per query at batch 1, one search thread.",
        "",
        "| products | library | index | search | build s | MB | recall@100 | ms/query |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.size:,} | {r.library} | {r.index} | {r.param} | {r.build_s:.1f} | "
        f"{r.index_mb:.0f} | {r.recall_at_100:.4f} | {r.ms_per_query:.2f} |"
        for r in rows
    ]
    (reports / "ann.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    run(parse_config(AnnBenchConfig, argv, description=__doc__ or ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
