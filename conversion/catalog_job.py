"""The catalog job on Ray: embed every product with the served encoder, build the dense ANN
index shard by shard and the lexical index, and write the files the repository builder reads.

    python -m shoprank.conversion.catalog_job --out artifacts/demo --workers 2
    RAY_ADDRESS=<head>:6379 python -m shoprank.conversion.catalog_job --out /shared/demo

Ray's own convention picks the cluster: with RAY_ADDRESS set the job joins that cluster,
without it Ray starts on this machine for the job's duration. The same code runs either way.

1. Embed (Ray Data). The product table is read in blocks (`read_parquet`) and embedded by a
   pool of `--workers` encoder actors (`ProductEncoder`, one CPU each), each holding the
   conversion's ONNX encoder (`--encoder fp32|int8`) and the encoder folder's fast
   tokenizer. Each block is tokenized and batched as training embeds the catalog
   (`training.base_encoder.embed_onnx`): truncated at MAX_PRODUCT_TOKENS, sorted by length,
   `--batch-size` products per call padded to the longest. A killed actor is restarted
   and its blocks retried (Ray Data's actor pool restarts its actors and retries their
   calls without limit); blocks come back in catalog order.
2. Dense index. The quantizer and IVF centroids are fitted once, on the driver, on the same
   sample `DenseIndex.build` draws; Ray tasks fill copies of that empty index with one
   shard of rows each; the shards are merged in row order (faiss `merge_from`), which gives
   the index that adding every row to one index gives, byte for byte. The search knob is
   then tuned on validation queries and checked on test queries as conversion does
   (`conversion.dense.build_dense_index`). A task whose worker dies is retried
   (`--task-retries`). HNSW graphs cannot be merged: that kind is built in one piece on
   the driver.
3. Lexical index, built once in one Ray task from the whole product table (at the same
   time as step 2): BM25 weights depend on catalog-wide statistics (each token's document
   frequency, the mean document length), so per-shard indexes would score differently and
   could not be concatenated without recomputing every weight.

Writes `model/item_index.safetensors` (ids, embeddings, the item tables' features),
`onnx/dense.faiss` (+ .json) and `model/lexical.npz` (+ `lexical.tantivy/`), the paths
`contract.ArtifactPaths` names. The artifact folder must be readable at the same path from
every node (a shared filesystem on a cluster): the read tasks open the product table and
the actors the encoder there. Only the driver writes files.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import ray

from shoprank import contract
from shoprank.configargs import config_to_dict, parse_config, setup_logging, user_errors
from shoprank.conversion.dense import DenseIndexOptions, build_dense_index
from shoprank.core.ann import KINDS, DenseConfig, DenseIndex, mergeable, training_sample
from shoprank.core.features import ItemTables
from shoprank.core.lexical import LexicalIndex, search_dir
from shoprank.core.sessions import cpu_session
from shoprank.core.tokenizer import embed_texts, product_tokenizer, tokenizer_file
from shoprank.data import datasets
from shoprank.data.artifacts import load_item_index, save_item_index

log = logging.getLogger(__name__)

ENCODERS = ("fp32", "int8")


@dataclass
class CatalogJobConfig(DenseIndexOptions):
    """Knobs of the catalog job; each is a command-line flag."""

    out: Path = field(default=contract.DEFAULT_ARTIFACTS, metadata={"help": "artifact folder"})
    workers: int = field(default=1, metadata={"help": "encoder actors"})
    threads: int = field(
        default=1, metadata={"help": "ONNX Runtime threads (and Ray CPUs) per encoder actor"}
    )
    encoder: str = field(
        default="fp32", metadata={"help": "the conversion's encoder file: fp32 or int8"}
    )
    embed: bool = field(
        default=True,
        metadata={"help": "embed the catalog (--no-embed: index the item index's embeddings)"},
    )
    batch_size: int = field(default=64, metadata={"help": "products per encoder call"})
    block_rows: int = field(
        default=1024, metadata={"help": "products per Ray Data block (one actor call)"}
    )
    shards: int = field(
        default=0, metadata={"help": "dense index shards filled in parallel (0: one per CPU)"}
    )
    task_retries: int = field(
        default=3, metadata={"help": "retries of a dense shard or lexical task whose worker died"}
    )

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(f"--encoder must be one of {ENCODERS}, got {self.encoder!r}")
        if self.dense_kind not in KINDS:
            raise ValueError(f"--dense-kind must be one of {KINDS}, got {self.dense_kind!r}")


# ---------------------------------------------------------------------------------------
# Ray
# ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def ray_session() -> Iterator[None]:
    """Ray for the job's duration: the cluster at RAY_ADDRESS, else one started here (and
    shut down after); a session the caller already opened is used as it is."""
    if ray.is_initialized():
        yield
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(logging_level=logging.WARNING)
    else:
        # "local": a Ray of its own, never one a stale `ray start` left behind; without
        # the dashboard, which ray[data] does not ship.
        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
    try:
        yield
    finally:
        ray.shutdown()


def cluster_cpus() -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


# ---------------------------------------------------------------------------------------
# Embedding (runs in the encoder actors)
# ---------------------------------------------------------------------------------------
class ProductEncoder:
    """A Ray Data actor: embeds blocks of the product table with the served ONNX encoder."""

    def __init__(
        self, encoder: str, tokenizer_json: str, batch_size: int, threads: int, max_tokens: int
    ) -> None:
        self.session = cpu_session(encoder, threads=threads)
        self.tokenizer = product_tokenizer(Path(tokenizer_json).read_text(), max_tokens)
        self.batch_size = batch_size

    def __call__(self, batch: pd.DataFrame) -> dict[str, np.ndarray]:
        texts = datasets.product_text(batch)
        return {
            "product_id": batch["product_id"].to_numpy(np.int64),
            "embedding": embed_texts(self.session, self.tokenizer, texts, self.batch_size),
        }


def encoder_path(paths: contract.ArtifactPaths, encoder: str) -> Path:
    return paths.encoder_onnx if encoder == "fp32" else paths.encoder_int8_onnx


@dataclass
class Embedded:
    """The catalog's embeddings in catalog order, and how long embedding took."""

    product_ids: np.ndarray
    embeddings: np.ndarray
    seconds: float  # reading the table, starting the actors, embedding
    encode_s: float  # from starting the actors to the last block

    def to_json(self) -> dict:
        n = len(self.product_ids)
        return {
            "products": n,
            "seconds": round(self.seconds, 2),
            "encode_s": round(self.encode_s, 2),
            "products_per_s": round(n / max(self.seconds, 1e-9), 1),
            "encode_products_per_s": round(n / max(self.encode_s, 1e-9), 1),
        }


def embed_catalog(paths: contract.ArtifactPaths, config: CatalogJobConfig) -> Embedded:
    """Every product of the catalog embedded by a pool of encoder actors (Ray Data)."""
    from ray.data import ActorPoolStrategy, DataContext

    started = time.perf_counter()
    expected = pd.read_parquet(paths.catalog, columns=["product_id"])["product_id"].to_numpy()
    n = len(expected)
    DataContext.get_current().execution_options.preserve_order = True  # blocks in row order
    # Read and split into blocks before the actors start: a pool holding every CPU of a
    # small cluster would otherwise leave none for those tasks, and none would finish.
    products = ray.data.read_parquet(str(paths.catalog))
    products = products.repartition(max(1, math.ceil(n / config.block_rows))).materialize()
    encoding = time.perf_counter()
    embedded = products.map_batches(
        ProductEncoder,
        fn_constructor_kwargs={  # paths: every node reads the artifact folder, as the table
            "encoder": str(encoder_path(paths, config.encoder)),
            "tokenizer_json": str(tokenizer_file(paths.encoder)),
            "batch_size": config.batch_size,
            "threads": config.threads,
            "max_tokens": contract.MAX_PRODUCT_TOKENS,
        },
        batch_size=None,  # one call per block
        batch_format="pandas",
        compute=ActorPoolStrategy(size=config.workers),
        num_cpus=config.threads,
    )
    ids, vectors, done = [], [], 0
    for block in embedded.iter_batches(batch_size=None, batch_format="numpy"):
        ids.append(block["product_id"])
        vectors.append(np.asarray(block["embedding"], np.float32))
        done += len(block["product_id"])
        log.info("embedded %d/%d products", done, n)
    product_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    if not np.array_equal(product_ids, expected):
        raise RuntimeError("the embedded products came back out of catalog order")
    emb = np.concatenate(vectors) if vectors else np.zeros((0, 0), np.float32)
    done_at = time.perf_counter()
    return Embedded(product_ids, emb, done_at - started, done_at - encoding)


# ---------------------------------------------------------------------------------------
# Dense index: trained once, filled in shards by Ray tasks, merged in row order
# ---------------------------------------------------------------------------------------
@ray.remote(num_cpus=1)
def fill_shard(empty: np.ndarray, config: DenseConfig, vectors: np.ndarray, first_row: int):
    """A copy of the trained empty index holding rows first_row.. (serialized)."""
    import faiss

    faiss.omp_set_num_threads(1)  # one task, one CPU
    shard = DenseIndex.from_bytes(empty, config)
    shard.add_rows(vectors, first_row)
    return shard.to_bytes()


def sharded_dense_index(
    embeddings: np.ndarray, config: DenseConfig, shards: int = 0, retries: int = 3
) -> DenseIndex:
    """The index `DenseIndex.build(embeddings, config)` gives, its rows added by `shards`
    parallel Ray tasks (0: one per CPU of the cluster) and merged in row order."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if not mergeable(config.kind) or len(x) == 0:
        log.info("%s is built in one piece (its shards cannot be merged)", config.kind)
        return DenseIndex.build(x, config)
    started = time.perf_counter()
    index = DenseIndex.trained(training_sample(x, config), len(x), config)
    empty = ray.put(index.to_bytes())
    step = math.ceil(len(x) / max(1, shards or cluster_cpus()))
    refs = [
        fill_shard.options(max_retries=retries).remote(
            empty, index.config, x[start : start + step], start
        )
        for start in range(0, len(x), step)
    ]
    for ref in refs:  # in row order; each shard freed once merged
        index.merge(DenseIndex.from_bytes(ray.get(ref), index.config))
    log.info("dense index: %d shards of up to %d rows merged", len(refs), step)
    return index.finished(started)


def query_texts(queries: pd.DataFrame, split: str, n: int | None = None) -> list[str]:
    return queries[queries["split"] == split]["query"].tolist()[:n]


def dense_index(
    paths: contract.ArtifactPaths, config: CatalogJobConfig, embeddings: np.ndarray
) -> dict:
    """Build the dense index over `embeddings`, tune it as conversion does (validation
    queries, else train; checked on test queries), save it; the report."""

    index = sharded_dense_index(
        embeddings, config.dense_config(), config.shards, config.task_retries
    )
    queries = pd.read_parquet(paths.queries) if paths.queries.exists() else None
    tune = check = []
    if queries is not None:
        tune = query_texts(queries, "val", config.selection_texts) or query_texts(
            queries, "train", config.selection_texts
        )
        check = query_texts(queries, "test")
    if not tune or not check:
        log.info("no queries to tune the search knob on: %s as configured", config.dense_kind)
        index.save(paths.dense_index)
        return {"path": str(paths.dense_index), "products": index.size, "build_s": index.build_s}
    session = cpu_session(encoder_path(paths, config.encoder), threads=config.threads)
    tok = product_tokenizer(tokenizer_file(paths.encoder).read_text(), contract.MAX_QUERY_TOKENS)
    return build_dense_index(
        embeddings,
        index.config,
        embed_texts(session, tok, tune, config.batch_size),
        embed_texts(session, tok, check, config.batch_size),
        paths.dense_index,
        target=config.ann_recall_target,
        index=index,
    )


# ---------------------------------------------------------------------------------------
# Lexical index: built once, in one task, from the whole product table
# ---------------------------------------------------------------------------------------
@ray.remote(num_cpus=1)
def lexical_files(catalog: str) -> dict[str, bytes]:
    """The lexical index of the product table at `catalog`: {path below the model folder:
    bytes} for `lexical.npz` and its tantivy folder, for the driver to write."""
    with tempfile.TemporaryDirectory(prefix="shoprank-lexical-") as tmp:
        path = Path(tmp) / contract.LEXICAL_INDEX_FILE
        LexicalIndex.build(pd.read_parquet(catalog)).save(path)
        return {
            str(f.relative_to(tmp)): f.read_bytes() for f in Path(tmp).rglob("*") if f.is_file()
        }


def write_lexical(files: dict[str, bytes], lexical_index: Path) -> None:
    """Put `lexical_files` output at `lexical_index` (and its search folder beside it)."""
    shutil.rmtree(search_dir(lexical_index), ignore_errors=True)
    produced = Path(contract.LEXICAL_INDEX_FILE)
    for name, data in files.items():
        rel = Path(name)
        if rel == produced:
            target = lexical_index
        else:  # below the produced search folder
            target = search_dir(lexical_index) / rel.relative_to(search_dir(produced))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


# ---------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------
def check_inputs(paths: contract.ArtifactPaths, config: CatalogJobConfig) -> None:
    needed = [paths.catalog]
    if config.embed:
        needed += [encoder_path(paths, config.encoder), paths.encoder, paths.item_tables]
    else:
        needed.append(paths.item_index)
    for path in needed:
        if not path.exists():
            raise FileNotFoundError(f"{path} missing: run `make train convert` first")


def run(config: CatalogJobConfig) -> dict:
    """Run the catalog job below `config.out`; return its report."""
    paths = contract.ArtifactPaths(Path(config.out))
    check_inputs(paths, config)
    started = time.perf_counter()
    report: dict = {"config": config_to_dict(config)}
    with ray_session():
        report["cluster_cpus"] = cluster_cpus()
        if config.embed:
            embedded = embed_catalog(paths, config)
            features = ItemTables.load(paths.item_tables).item_features
            save_item_index(paths.item_index, embedded.product_ids, embedded.embeddings, features)
            embeddings = embedded.embeddings
            report["embed"] = embedded.to_json()
        else:
            embeddings = load_item_index(paths.item_index)["embeddings"]
        lexical_started = time.perf_counter()
        lexical = lexical_files.options(max_retries=config.task_retries).remote(str(paths.catalog))
        report["dense_index"] = dense_index(paths, config, embeddings)
        write_lexical(ray.get(lexical), paths.lexical_index)
        report["lexical_index"] = {
            "path": str(paths.lexical_index),
            "seconds_with_dense": round(time.perf_counter() - lexical_started, 2),
        }
    report["seconds"] = round(time.perf_counter() - started, 2)
    return report


def summary_lines(report: dict) -> list[str]:
    lines = [f"catalog job on {report['cluster_cpus']} CPUs: {report['seconds']:.1f} s"]
    if "embed" in report:
        e = report["embed"]
        lines.append(
            f"  embedded {e['products']} products in {e['seconds']:.1f} s, "
            f"{e['products_per_s']:.1f}/s ({e['encode_products_per_s']:.1f}/s from the actors' "
            f"start), {report['config']['workers']} workers"
        )
    d = report["dense_index"]
    lines.append(f"  dense index {d['path']}: {d['products']} products, built in {d['build_s']} s")
    lines.append(f"  lexical index {report['lexical_index']['path']}")
    return lines


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    setup_logging("shoprank")
    with user_errors(FileNotFoundError, ValueError):
        config = parse_config(CatalogJobConfig, argv, description=__doc__ or "")
        report = run(config)
    print("\n".join(summary_lines(report)))


if __name__ == "__main__":
    # Run from the importable module, not __main__: Ray then ships the actor class and the
    # tasks by name, and the log lines carry the module's name.
    from shoprank.conversion.catalog_job import main as catalog_job_main

    catalog_job_main()
