"""Serving functions behind the Triton Python models: validation, tokenization, lookups."""

import numpy as np
import pytest

from shoprank import contract
from shoprank.core.catalog import CatalogIndex
from shoprank.core.requests import InvalidInput, decode_query, pad_rows, validate_top_k
from shoprank.core.tokenizer import QueryTokenizer


@pytest.mark.parametrize("raw", ["", "   ", b"\t\n", "\u3000"])
def test_empty_queries_are_invalid(raw):
    with pytest.raises(InvalidInput, match="empty"):
        decode_query(raw)


def test_non_utf8_is_invalid_and_names_the_byte():
    with pytest.raises(InvalidInput, match=r"UTF-8 \(byte 0xff at offset 3\)"):
        decode_query(b"abc\xff")


def test_query_is_trimmed_and_capped():
    assert decode_query(b"  red   sofa \n") == "red sofa"
    assert len(decode_query("x" * 10_000)) == contract.MAX_QUERY_CHARS
    assert decode_query("caf\u00e9".encode()) == "caf\u00e9"


@pytest.mark.parametrize("k", [0, -1, contract.MAX_TOP_K + 1])
def test_top_k_bounds(k):
    with pytest.raises(InvalidInput, match=contract.TOP_K.name):
        validate_top_k(k)
    assert validate_top_k(contract.MAX_TOP_K) == contract.MAX_TOP_K


@pytest.fixture(scope="module")
def tokenizer():
    return QueryTokenizer(contract.pretrained_encoder_path() / "tokenizer.json")


def test_tokenizer_pads_to_bucket_not_maximum(tokenizer):
    (ids, mask), (long_ids, _) = tokenizer.encode(["red sofa", "word " * 500])
    assert len(ids) == 4  # [CLS] red sofa [SEP]: the query's own length, no padding
    assert mask.tolist() == [1, 1, 1, 1]
    assert ids[0] == 101 and ids[3] == 102  # [CLS] ... [SEP]
    path = contract.pretrained_encoder_path() / "tokenizer.json"
    bucketed = QueryTokenizer(path, bucket=8).encode(["red sofa"])[0]
    assert bucketed[1].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]  # a bucket pads up to its multiple
    assert len(long_ids) == contract.MAX_QUERY_TOKENS  # truncated, never rejected


def test_pad_rows():
    out = pad_rows([np.array([1, 2, 3]), np.array([4])])
    assert out.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert pad_rows([np.zeros(0, dtype=np.int64)]).shape == (1, 1)


def test_catalog_rows_ignore_unknown_ids_and_keep_order():
    catalog = CatalogIndex(
        product_ids=np.array([50, 10, 30]), titles=np.array([b"a", b"b", b"c"], dtype=object)
    )
    assert catalog.rows_of(np.array([30, 999, 50, -4, 10])).tolist() == [2, 0, 1]
    assert catalog.rows_of(np.array([], dtype=np.int64)).tolist() == []


def test_catalog_keeps_most_recent_history():
    ids = np.arange(1000)
    catalog = CatalogIndex(product_ids=ids, titles=np.array([b"t"] * 1000, dtype=object))
    rows = catalog.rows_of(ids[:200])
    assert len(rows) == contract.MAX_HISTORY
    assert rows[-1] == 199 and rows[0] == 200 - contract.MAX_HISTORY


def test_catalog_save_load(tmp_path):
    catalog = CatalogIndex(
        product_ids=np.array([7, 3]),
        titles=np.array(["Sofa \u00e9".encode(), b"Lamp"], dtype=object),
    )
    catalog.save(tmp_path / "c.npz")
    loaded = CatalogIndex.load(tmp_path / "c.npz")
    assert loaded.product_ids.tolist() == [7, 3]
    assert loaded.titles.tolist() == ["Sofa \u00e9".encode(), b"Lamp"]


def test_candidate_rows_drop_unknown_and_duplicate_ids_and_count_them():
    catalog = CatalogIndex(product_ids=np.array([7, 3, 9]), titles=np.array([b"a", b"b", b"c"]))
    rows, unknown, duplicates = catalog.candidate_rows(np.array([9, 42, 7, 9, -1, 3, 7]))
    assert rows.tolist() == [2, 0, 1]  # first-seen order
    assert (unknown, duplicates) == (2, 2)
    assert catalog.candidate_rows(np.array([], dtype=np.int64))[0].size == 0
    with pytest.raises(InvalidInput, match="at most"):
        catalog.candidate_rows(np.arange(contract.MAX_CANDIDATES + 1))


def test_a_serving_instance_caps_every_blas_library_at_its_threads():
    import threadpoolctl

    from shoprank.core.sessions import limit_blas_threads

    before = {i["filepath"]: i["num_threads"] for i in threadpoolctl.threadpool_info()}
    limiter = limit_blas_threads(1)
    try:
        blas = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
        assert blas, "numpy brings a BLAS library"
        assert {i["num_threads"] for i in blas} == {1}
        # Matrix products still answer, on one thread.
        a = np.arange(12.0).reshape(3, 4)
        np.testing.assert_array_equal(a @ a.T, np.einsum("ij,kj->ik", a, a))
    finally:
        limiter.restore_original_limits()
    after = {i["filepath"]: i["num_threads"] for i in threadpoolctl.threadpool_info()}
    assert after == before
