"""What the Python-backend models do per dynamic batch, as plain functions: a ranker
request's tensors parsed into rows, a batch's metric updates summed per series, a batch of
tokenizer requests tokenized in one call and admitted under one lock, one-row answers
sent without padding copies."""

from __future__ import annotations

import numpy as np
import pytest

from shoprank import contract
from shoprank.core.admission import AdmissionTable
from shoprank.core.catalog import CatalogIndex
from shoprank.core.ranking import Request, batch_counts, parse_request
from shoprank.core.requests import InvalidInput, pad_answers
from shoprank.core.scoring import Ranked
from shoprank.core.tokenizer import QueryTokenizer, tokenize_requests, tokenize_rows


@pytest.fixture(scope="module")
def catalog() -> CatalogIndex:
    return CatalogIndex(
        product_ids=np.array([10, 11, 12, 13, 14], np.int64),
        titles=np.array([b"a", b"b", b"c", b"d", b"e"], dtype=object),
        prices=np.array([100.0, 50.0, np.nan, 300.0, 20.0]),
    )


def _search(b: int = 2) -> dict[str, np.ndarray]:
    """A batched search request's tensors by name (two rows unless told)."""
    return {
        contract.QUERY.name: np.array([[b"red sofa"], [b" lamp "]][:b], dtype=object),
        contract.QUERY_EMBEDDING.name: np.arange(b * 4, dtype=np.float32).reshape(b, 4),
        contract.TOP_K.name: np.array([[5], [3]][:b], np.int32),
        contract.HISTORY.name: np.array([[11, 99, 12], [-1, -1, 13]][:b], np.int64),
    }


def test_a_search_request_parses_into_its_rows(catalog):
    parsed = parse_request(
        {**_search(), contract.PRICE_MAX.name: np.array([[80.0], [np.nan]], np.float32)}, catalog
    )
    first, second = parsed.rows
    assert (first.query, first.k, second.query, second.k) == ("red sofa", 5, "lamp", 3)
    np.testing.assert_array_equal(second.embedding, [4, 5, 6, 7])
    assert first.history.tolist() == [1, 2] and second.history.tolist() == [3]  # 99, -1 unknown
    assert first.candidates is None and not first.explain
    assert first.filters.price_max == 80.0 and second.filters.price_max == np.inf
    assert (parsed.unknown_ids, parsed.duplicate_ids) == (0, 0)


def test_rerank_ids_are_counted_once_per_request(catalog):
    arrays = {
        **_search(),
        contract.CANDIDATE_IDS.name: np.array([[14, 10, 14, 77], [12, -1, -1, -1]], np.int64),
        contract.EXPLAIN.name: np.array([[True], [False]]),
    }
    parsed = parse_request(arrays, catalog)
    assert [r.candidates.tolist() for r in parsed.rows] == [[4, 0], [2]]  # padding dropped
    assert (parsed.unknown_ids, parsed.duplicate_ids) == (1, 1)
    assert [r.explain for r in parsed.rows] == [True, False]


def test_searcher_rows_wait_for_their_embedding(catalog):
    """Without QUERY_EMBEDDING (the searcher's requests) the rows are parsed all the same,
    to be encoded in one call for the batch (`pipeline.SearchPipeline.rank`)."""
    arrays = {k: v for k, v in _search().items() if k != contract.QUERY_EMBEDDING.name}
    parsed = parse_request(arrays, catalog)
    assert len(parsed.rows) == 2 and all(r.embedding is None for r in parsed.rows)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({contract.TOP_K.name: None}, "TOP_K is missing: the request must carry it"),
        ({contract.QUERY.name: np.zeros((0, 1), dtype=object)}, "QUERY is missing"),
        ({contract.TOP_K.name: np.array([[5]], np.int32)}, "TOP_K must hold one value per row"),
        ({contract.QUERY.name: np.array([[b"ok"], [b"  "]], dtype=object)}, "QUERY is empty"),
        ({contract.TOP_K.name: np.array([[5], [0]], np.int32)}, "TOP_K must be between"),
        ({contract.EXPLAIN.name: np.array([[True]])}, "EXPLAIN must hold one value per row"),
    ],
)
def test_a_bad_request_is_refused_naming_why(catalog, change, message):
    arrays = {k: v for k, v in {**_search(), **change}.items() if v is not None}
    with pytest.raises(InvalidInput, match=message):
        parse_request(arrays, catalog)


def test_a_batch_updates_each_metric_series_once_with_its_sum():
    def row(history: int, candidates: np.ndarray | None = None) -> Request:
        return Request("q", np.zeros(4, np.float32), np.arange(history), 5, candidates)

    def answer(results: int, ranked: int) -> Ranked:
        ids = np.arange(results)
        return Ranked(ids, ids.astype(np.float32), ids.astype(object), ranked)

    rows = [row(2), row(0), row(3), row(0, np.array([1, 2, 3]))]
    answers = [answer(5, 300), answer(4, 280), answer(5, 310), answer(2, 3)]
    counts = batch_counts(rows, answers)
    search, rerank = contract.ENSEMBLE_MODEL, contract.RERANK_MODEL
    assert counts.rows == {(search, "present"): 2, (search, "empty"): 1, (rerank, "empty"): 1}
    assert counts.results == {search: 14, rerank: 2}
    # A histogram keeps one observation per row: the retrieved count, or the ids sent.
    assert counts.candidates == {search: [300, 280, 310], rerank: [3]}


@pytest.fixture(scope="module")
def tokenizer() -> QueryTokenizer:
    return QueryTokenizer(contract.pretrained_encoder_path() / "tokenizer.json")


def test_a_batch_tokenizes_in_one_call_as_each_request_alone(tokenizer):
    raws = [
        np.array([[b"red leather sofa"]], dtype=object),
        np.array([[b"   "]], dtype=object),  # refused, the others still answered
        np.array([[b"lamp"], [b"a much longer query about garden tools"]], dtype=object),
        np.array([[b"ok"], [b"\xff"]], dtype=object),  # row 1 not UTF-8: the request refused
        np.zeros((0, 1), dtype=object),
    ]
    got = tokenize_requests(tokenizer, raws)
    assert len(got) == len(raws)
    for raw, result in zip(raws, got, strict=True):
        try:
            want = tokenize_rows(tokenizer, raw)
        except InvalidInput as exc:
            assert isinstance(result, InvalidInput)
            assert (str(result), result.reason) == (str(exc), exc.reason)
            continue
        assert not isinstance(result, InvalidInput)
        for a, b in zip(result, want, strict=True):
            np.testing.assert_array_equal(a, b)
    assert "(row 1)" in str(got[3]) and got[1].reason == "query_empty"
    # A request's rows are padded to its own longest, not to the batch's.
    assert got[0][0].shape == (1, 5)  # [CLS] red leather sofa [SEP]
    assert got[2][0].shape[1] > 5 and got[2][1][0].sum() == 3  # [CLS] lamp [SEP], padded
    assert tokenize_requests(tokenizer, []) == []


def test_admitting_a_batch_under_one_lock_is_admitting_each_in_turn(tmp_path):
    clock = iter(range(10**15, 10**15 + 10**9, 1000))
    batch = AdmissionTable(tmp_path / "a", limit=3, clock=lambda: next(clock))
    tickets = batch.admit_many(5)
    assert [t is None for t in tickets] == [False, False, False, True, True]
    assert len(set(tickets[:3])) == 3 and batch.in_flight() == 3
    batch.release(tickets[1])
    assert batch.admit_many(2)[1] is None and batch.in_flight() == 3
    assert AdmissionTable(tmp_path / "b", limit=0).admit_many(2) == [-1, -1]  # admission off


def test_a_one_row_answer_is_sent_as_views_of_the_row():
    ids, scores = np.array([3, 1], np.int64), np.array([0.5, 0.25], np.float32)
    titles = np.array([b"x", b"y"], dtype=object)
    got = pad_answers([(ids, scores, titles)])
    assert [a.shape for a in got] == [(1, 2)] * 3
    assert all(np.shares_memory(a, b) for a, b in zip(got, (ids, scores, titles), strict=True))
    padded = pad_answers([(ids, scores, titles), (ids[:1], scores[:1], titles[:1])])
    assert padded[0][1].tolist() == [3, contract.PADDING_ID] and padded[2][1, 1] == b""
