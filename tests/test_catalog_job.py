"""The catalog job on Ray (conversion/catalog_job.py) against the single-process build.

A local Ray cluster of two simulated nodes (Ray's own `ray.cluster_utils.Cluster`, one CPU
and a small object store each) runs the job on the tiny shop; its item index, dense index
and lexical index must answer as training's and conversion's own files do. With one CPU
per node and one per encoder actor, the two actors necessarily run on different nodes.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import ray

from shoprank import contract
from shoprank.core.ann import DenseConfig, DenseIndex
from shoprank.core.lexical import LexicalIndex
from shoprank.data.artifacts import load_item_index

pytestmark = pytest.mark.slow
OBJECT_STORE = 80 * 2**20  # bytes per node: Ray's minimum is 75 MiB
K = 100


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[str]:
    """A Ray cluster of two one-CPU nodes on this machine; this process is its driver."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": OBJECT_STORE},
    )
    cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level=logging.WARNING)
    yield cluster.address
    ray.shutdown()
    cluster.shutdown()


def job_inputs(src: contract.ArtifactPaths, out: Path) -> contract.ArtifactPaths:
    """A fresh folder holding only what the job reads: the tables, the encoder folder (its
    tokenizer), the conversion's encoder file and the item tables."""
    paths = contract.ArtifactPaths(out)
    shutil.copytree(src.data, paths.data)
    shutil.copytree(src.encoder, paths.encoder)
    paths.onnx.mkdir(parents=True)
    shutil.copy2(src.encoder_onnx, paths.encoder_onnx)
    shutil.copy2(src.item_tables, paths.item_tables)
    return paths


def served_test_queries(paths: contract.ArtifactPaths) -> tuple[list[str], np.ndarray]:
    """The test-split queries and their embeddings as served (tokenizer and fp32 encoder)."""
    import pandas as pd

    from shoprank.core.requests import pad_rows
    from shoprank.core.sessions import cpu_session, encoder_feeds
    from shoprank.core.tokenizer import QueryTokenizer, tokenizer_file

    queries = pd.read_parquet(paths.queries)
    texts = queries[queries["split"] == "test"]["query"].tolist()
    encoded = QueryTokenizer(tokenizer_file(paths.encoder)).encode(texts)
    feeds = encoder_feeds(pad_rows([i for i, _ in encoded]), pad_rows([m for _, m in encoded]))
    session = cpu_session(paths.encoder_onnx)
    return texts, session.run([contract.ONNX_SENTENCE_EMBEDDING], feeds)[0]


def assert_same_postings(got: LexicalIndex, want: LexicalIndex) -> None:
    """Every token's documents and BM25 weights agree (token ids are not compared: bm25s
    numbers the vocabulary in an order that varies from process to process)."""
    assert got.vocab.keys() == want.vocab.keys() and got.num_docs == want.num_docs
    for token, i in want.vocab.items():
        j = got.vocab[token]
        lo, hi = want.bm25.indptr[i], want.bm25.indptr[i + 1]
        glo, ghi = got.bm25.indptr[j], got.bm25.indptr[j + 1]
        np.testing.assert_array_equal(got.bm25.rows[glo:ghi], want.bm25.rows[lo:hi])
        np.testing.assert_array_equal(got.bm25.weights[glo:ghi], want.bm25.weights[lo:hi])


def assert_same_artifacts(job: contract.ArtifactPaths, ref: contract.ArtifactPaths) -> None:
    """The job's files answer as the single-process build's: same products in the same
    order, embeddings within float tolerance, the same top 100 of every test query from
    the dense and the lexical index."""
    got, want = load_item_index(job.item_index), load_item_index(ref.item_index)
    np.testing.assert_array_equal(got["product_ids"], want["product_ids"])
    np.testing.assert_allclose(got["embeddings"], want["embeddings"], atol=1e-6)
    np.testing.assert_array_equal(got["features"], want["features"])

    texts, q = served_test_queries(ref)
    dense, ref_dense = DenseIndex.load(job.dense_index), DenseIndex.load(ref.dense_index)
    assert dense.size == ref_dense.size == len(want["product_ids"])
    assert (dense.config.kind, dense.config.nlist, dense.config.nprobe) == (
        ref_dense.config.kind,
        ref_dense.config.nlist,
        ref_dense.config.nprobe,
    )
    rows, scores = dense.search(q, K)
    ref_rows, ref_scores = ref_dense.search(q, K)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)

    lexical = LexicalIndex.load(job.lexical_index)
    ref_lexical = LexicalIndex.load(ref.lexical_index)
    assert_same_postings(lexical, ref_lexical)
    matched = 0
    for text in texts:
        rows, scores = lexical.search(text, K)
        ref_rows, ref_scores = ref_lexical.search(text, K)
        np.testing.assert_array_equal(rows, ref_rows)
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-6)
        matched += len(rows) > 0
    assert matched > len(texts) // 2  # the comparison saw real result lists


def test_job_on_two_nodes_equals_the_single_process_build(
    tiny_artifacts, two_nodes, tmp_path: Path
) -> None:
    """Two encoder actors (one per node), the IVF filled in 3 shards and merged, the lexical
    index built in a task: the same artifacts as training's embedding, conversion's dense
    index and training's lexical index."""
    from shoprank.conversion.catalog_job import CatalogJobConfig, run

    paths = job_inputs(tiny_artifacts, tmp_path / "job")
    report = run(CatalogJobConfig(out=paths.root, workers=2, block_rows=50, shards=3))
    assert report["cluster_cpus"] == 2
    assert report["embed"]["products"] == len(
        load_item_index(tiny_artifacts.item_index)["product_ids"]
    )
    assert_same_artifacts(paths, tiny_artifacts)


def encoder_actor_pids() -> list[int]:
    """Processes of the job's encoder actors (Ray titles them after the actor class)."""
    import psutil

    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if any("ProductEncoder" in part for part in proc.info["cmdline"] or ()):
            pids.append(proc.info["pid"])
    return pids


class KillOneActor(logging.Handler):
    """On the job's first progress line before the last block, kills one encoder actor."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.killed: int | None = None
        self.done_at_kill = self.total = -1

    def emit(self, record: logging.LogRecord) -> None:
        done, total = record.args if isinstance(record.args, tuple) else (0, 0)
        if self.killed is not None or not record.getMessage().startswith("embedded"):
            return
        if done < total:
            pid = encoder_actor_pids()[0]
            os.kill(pid, signal.SIGKILL)
            self.killed, self.done_at_kill, self.total = pid, done, total


def test_killed_encoder_actor_mid_job_still_gives_the_same_artifacts(
    tiny_artifacts, two_nodes, tmp_path: Path
) -> None:
    """An encoder actor killed with SIGKILL after the first blocks came back: Ray restarts
    it and retries its blocks; the files are still the single-process build's."""
    import psutil

    from shoprank.conversion.catalog_job import CatalogJobConfig, run

    paths = job_inputs(tiny_artifacts, tmp_path / "job")
    logger = logging.getLogger("shoprank.conversion.catalog_job")
    killer, level = KillOneActor(), logger.level
    logger.addHandler(killer)
    logger.setLevel(logging.INFO)
    try:
        run(CatalogJobConfig(out=paths.root, workers=2, block_rows=10))
    finally:
        logger.removeHandler(killer)
        logger.setLevel(level)
    assert killer.killed is not None and 0 < killer.done_at_kill < killer.total
    assert not psutil.pid_exists(killer.killed)
    assert_same_artifacts(paths, tiny_artifacts)


@pytest.mark.parametrize("kind", ["ivf_sq8", "flat"])
def test_shards_merged_in_row_order_equal_one_index(two_nodes, kind: str) -> None:
    """Rows added to copies of the trained empty index by Ray tasks, then merged: the same
    faiss index, byte for byte, as adding every row to one index."""
    from shoprank.conversion.catalog_job import sharded_dense_index

    rng = np.random.default_rng(3)
    x = rng.standard_normal((6000, 24)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    config = DenseConfig(kind=kind, train_size=2000)
    sharded = sharded_dense_index(x, config, shards=5)
    whole = DenseIndex.build(x, config)
    assert sharded.config == whole.config
    np.testing.assert_array_equal(sharded.to_bytes(), whole.to_bytes())
    np.testing.assert_array_equal(sharded.search(x[:50], K)[0], whole.search(x[:50], K)[0])


def test_bench_scale_ray_path_builds_the_local_files(
    tiny_artifacts, two_nodes, tmp_path: Path, monkeypatch
) -> None:
    """`bench-scale --catalog-job ray` runs the job in its own process, which joins the
    cluster at RAY_ADDRESS: the lexical and ANN indexes equal those built in process."""
    from shoprank.bench.scale import prepare_size

    monkeypatch.setenv("RAY_ADDRESS", two_nodes)
    local = prepare_size(tiny_artifacts, 400, tmp_path / "local", "local")
    on_ray = prepare_size(tiny_artifacts, 400, tmp_path / "ray", "ray")
    np.testing.assert_array_equal(local.embeddings, on_ray.embeddings)
    assert on_ray.ann is not None
    whole = DenseIndex.build(local.embeddings, DenseConfig())
    np.testing.assert_array_equal(on_ray.ann.to_bytes(), whole.to_bytes())
    got = LexicalIndex.load(contract.ArtifactPaths(tmp_path / "ray").lexical_index)
    want = LexicalIndex.load(contract.ArtifactPaths(tmp_path / "local").lexical_index)
    assert_same_postings(got, want)
    for text in served_test_queries(tiny_artifacts)[0]:
        np.testing.assert_array_equal(got.search(text, K)[0], want.search(text, K)[0])
