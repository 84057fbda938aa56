"""The served ranking's cost follows its work: behaviour only inside the re-rank depth, the
relevance from its own small graph, BM25 and the shopper vectors while the queries encode."""

from __future__ import annotations

import numpy as np
import onnx

from shoprank import contract
from shoprank.conversion import export


class _Spy:
    """An ONNX Runtime session that records how many candidates each call scored."""

    def __init__(self, session) -> None:
        self.session = session
        self.widths: list[int] = []

    def run(self, names, feeds):
        self.widths.append(feeds[contract.ONNX_RANKER_CANDIDATES].shape[1])
        return self.session.run(names, feeds)


def test_behaviour_is_scored_only_inside_the_rerank_depth(in_process, search_workload, monkeypatch):
    ranker = in_process.ranker
    spy = _Spy(ranker.session)
    monkeypatch.setattr(ranker, "session", spy)
    depth = 5  # the demo's; the tiny shop's validation chose one beyond its candidates
    monkeypatch.setattr(ranker.config, "depth", depth)
    monkeypatch.setattr(ranker.config, "cold_start_depth", 2)
    queries = [r["query"] for r in search_workload]
    histories = [r["history"] for r in search_workload]
    served = in_process.search_many(queries, histories, 10)
    assert spy.widths == [depth]  # one call, the depth's columns alone
    # Explaining scores every candidate in one call; the served scores are the same.
    explained = in_process.search_many(queries, histories, 10, explain=True)
    assert spy.widths[-1] > depth
    for a, b in zip(served, explained, strict=True):
        assert a.product_ids.tolist() == b.product_ids.tolist()
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-5)
        for score, note in zip(b.scores, b.explanations, strict=True):
            assert abs(sum(note["parts"].values()) - score) < 1e-4


def test_relevance_graph_is_cut_from_the_ranker_graph(tiny_artifacts, tmp_path):
    from shoprank.data.artifacts import load_item_index

    items = load_item_index(tiny_artifacts.item_index)["embeddings"]
    feeds = export.ranker_sample(items, items[:4], seed=5, candidates=23)
    out = export.export_relevance(tiny_artifacts.ranker_onnx, tmp_path / "relevance.onnx", feeds)
    cut, whole = onnx.load(str(out)).graph, onnx.load(str(tiny_artifacts.ranker_onnx)).graph
    assert [i.name for i in cut.input] == list(export.RELEVANCE_INPUTS)
    assert [o.name for o in cut.output] == [contract.ONNX_RANKER_RELEVANCE]
    assert len(cut.node) < len(whole.node)


def test_prefetched_work_matches_the_inline_work(in_process, search_workload):
    """BM25 and the shopper vectors computed ahead on the ranker's thread (`prefetch`) are
    each row's own: the same scores as computed in line, with or without the thread."""
    from shoprank.core.lexical import tokenize
    from shoprank.core.ranking import Request, relevance_features

    ranker = in_process.ranker
    queries = [r["query"] for r in search_workload]
    histories = [r["history"] for r in search_workload]
    embeddings = in_process.encode(queries)
    requests = [
        Request(q, e, ranker.catalog.rows_of(np.asarray(h, np.int64)), 10)
        for q, e, h in zip(queries, embeddings, histories, strict=True)
    ]
    prefetched = ranker.prefetch(requests)
    lexical, users = prefetched.pending.result()
    k = ranker.config.lexical_k
    for rows, q in zip(lexical, queries, strict=True):
        np.testing.assert_array_equal(rows, ranker.lexical.search(tokenize(q), k)[0])
    candidates = ranker.candidates(requests, embeddings, prefetched)
    features = relevance_features(
        ranker.dense.vectors, ranker.lexical, embeddings, prefetched.tokens, candidates
    )
    assert users is not None and len(users) == sum(len(r.history) > 0 for r in requests)
    ahead, _ = ranker.score(requests, features, users)
    inline, _ = ranker.score(requests, features)  # each row's vector from its own history
    np.testing.assert_array_equal(ahead.scores, inline.scores)

    pool, ranker.pool = ranker.pool, None  # no thread: the same answers
    try:
        alone = in_process.search_many(queries, histories, 10)
    finally:
        ranker.pool = pool
    for a, b in zip(in_process.search_many(queries, histories, 10), alone, strict=True):
        assert a.product_ids.tolist() == b.product_ids.tolist()
        np.testing.assert_array_equal(a.scores, b.scores)
