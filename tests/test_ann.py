"""Dense retrieval indexes (shoprank.core.ann): every kind searches, tunes, decodes and persists."""

from __future__ import annotations

import numpy as np
import pytest

from shoprank.core.ann import (
    KINDS,
    DenseConfig,
    DenseIndex,
    exact_top_k,
    omp_threads,
    training_sample,
)


@pytest.fixture(scope="module")
def vectors() -> tuple[np.ndarray, np.ndarray]:
    """Clustered unit vectors (as product embeddings are) and queries near them."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 32))
    items = centres[rng.integers(40, size=4000)] + 0.5 * rng.normal(size=(4000, 32))
    queries = centres[rng.integers(40, size=50)] + 0.5 * rng.normal(size=(50, 32))
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    return unit(items), unit(queries)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_tunes_to_the_recall_target(vectors, kind) -> None:
    items, queries = vectors
    exact = exact_top_k(items, queries, 20)
    index = DenseIndex.build(items, DenseConfig(kind=kind, train_size=2000))
    stats = index.tune(queries, exact, 20, target=0.9)
    assert index.recall_at(queries, exact, 20) >= 0.9
    assert stats["recall"] >= 0.9
    rows, scores = index.search(queries[:3], 20)
    assert rows.shape == (3, 20) and np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    # 8-bit vectors decode to within quantization error of the originals.
    np.testing.assert_allclose(index.vectors(rows[0]), items[rows[0]], atol=0.05)


def test_the_default_kind_is_the_measured_choice() -> None:
    assert DenseConfig().kind == "ivf_sq8"
    with pytest.raises(ValueError, match="kind"):
        DenseConfig(kind="lsh")


def test_save_load_round_trip_and_errors_naming_the_file(vectors, tmp_path) -> None:
    items, queries = vectors
    index = DenseIndex.build(items, DenseConfig(train_size=2000))
    index.tune(queries, exact_top_k(items, queries, 10), 10, target=0.9)
    path = tmp_path / "dense.faiss"
    index.save(path)
    loaded = DenseIndex.load(path)
    assert loaded.config == index.config
    np.testing.assert_array_equal(loaded.search(queries, 10)[0], index.search(queries, 10)[0])
    path.write_bytes(b"not an index")
    with pytest.raises(ValueError, match=r"dense\.faiss"):
        DenseIndex.load(path)
    with pytest.raises(ValueError, match=r"missing\.faiss"):
        DenseIndex.load(tmp_path / "missing.faiss")


def test_ivf_rows_decode_bit_for_bit_as_faiss_reconstructs_them(vectors, tmp_path) -> None:
    """The batched decode of IVF-SQ8 rows is faiss's own per-row reconstruction, exactly:
    in any order, repeated, after a reload and after shards were merged."""
    items, _ = vectors
    rng = np.random.default_rng(1)
    rows = np.concatenate([rng.permutation(len(items))[:700], [5, 5, 0, len(items) - 1]])
    index = DenseIndex.build(items, DenseConfig(train_size=2000))
    assert index.index.by_residual  # the centroids are added back
    want = index.index.reconstruct_batch(rows)
    np.testing.assert_array_equal(index.vectors(rows), want)
    np.testing.assert_array_equal(index.vectors(rows[::-1]), want[::-1])
    assert index.vectors(np.zeros(0, np.int64)).shape == (0, items.shape[1])
    index.save(tmp_path / "dense.faiss")
    np.testing.assert_array_equal(DenseIndex.load(tmp_path / "dense.faiss").vectors(rows), want)
    # Shards filled apart and merged in row order: the rows' codes follow the merge.
    config = DenseConfig(train_size=2000)
    merged = DenseIndex.trained(training_sample(items, config), len(items), config)
    half = len(items) // 2
    shard = DenseIndex.from_bytes(merged.to_bytes(), merged.config)
    merged.add_rows(items[:half], 0)
    first = rows[rows < half]
    np.testing.assert_array_equal(merged.vectors(first), index.index.reconstruct_batch(first))
    shard.add_rows(items[half:], half)
    merged.merge(shard)  # the codes decoded above no longer cover every row
    merged.finished(0.0)
    np.testing.assert_array_equal(merged.vectors(rows), want)


def test_a_search_runs_on_the_threads_it_is_given_and_leaves_the_setting_as_it_was(
    vectors,
) -> None:
    faiss = pytest.importorskip("faiss")
    items, queries = vectors
    index = DenseIndex.build(items, DenseConfig(kind="ivf_sq8", train_size=2000))
    before = faiss.omp_get_max_threads()
    with omp_threads(1):
        assert faiss.omp_get_max_threads() == 1
    assert faiss.omp_get_max_threads() == before
    with pytest.raises(RuntimeError), omp_threads(1):
        raise RuntimeError("the setting is restored on the way out")
    assert faiss.omp_get_max_threads() == before
    # One thread finds what the whole team finds.
    one, one_scores = index.search(queries, 20, threads=1)
    team, team_scores = index.search(queries, 20)
    np.testing.assert_array_equal(one, team)
    np.testing.assert_array_equal(one_scores, team_scores)
    assert faiss.omp_get_max_threads() == before
