"""Lexical retrieval: tokenization of codes, sizes and units; BM25 index; features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shoprank.core import lexical
from shoprank.core.lexical import LEXICAL_FEATURES, LexicalIndex, tokenize


@pytest.mark.parametrize(
    "forms",
    [
        ("NV-4521B", "nv 4521b", "nv4521b", "Nv-4521b"),
        ("55-inch", "55 inch", '55"', "55in", "55″", "55 inches"),
        ("1.5L", "1.5 l", "1.5 litre", "1.5ltr"),
        ("r-13", "r13", "R13"),
        ("5 gal.", "5-gal", "5gal", "5 gallon"),
        ("28cm", "28 cm", "28-cm"),
    ],
)
def test_surface_forms_of_one_thing_share_their_tokens(forms):
    """Every spelling of a code or a size yields the same distinguishing tokens."""
    token_sets = [set(tokenize(f)) for f in forms]
    core = set.intersection(*token_sets)
    joined = {t for t in core if lexical.has_digit(t) and any(c.isalpha() for c in t)}
    assert joined, (forms, token_sets)  # e.g. "nv4521b", "55inch", "1.5l", "r13"


def test_words_are_folded_and_stopwords_dropped():
    assert tokenize("Red Sofas in the Living-Room") == [
        "red",
        "sofa",
        "living",
        "room",
        "livingroom",
    ]
    assert tokenize("Crème BRÛLÉE") == ["creme", "brulee"]
    assert tokenize("batteries") == ["battery"]
    assert tokenize("") == [] and tokenize("   ,;  ") == []


def test_a_unit_needs_a_number():
    assert "inch" not in tokenize("sofa in grey")  # "in" here is a stopword, not a size
    assert "55inch" in tokenize("tv 55 in")
    assert tokenize("1/2 in. copper tee")[:3] == ["1/2", "1/2inch", "inch"]


def test_code_detection():
    assert lexical.is_code("nv4521b") and lexical.is_code("r2d2")
    assert (
        not lexical.is_code("4521") and not lexical.is_code("sofa") and not lexical.is_code("r13")
    )


@pytest.fixture(scope="module")
def catalog() -> pd.DataFrame:
    rows = [
        ("Nordvik Aria Grey Velvet 3-Seat Sofa NV-4521B", "Nordvik", "grey", "velvet", "3-Seat"),
        ("Nordvik Aria Blue Linen 2-Seat Sofa NV-4522C", "Nordvik", "blue", "linen", "2-Seat"),
        ("Lumen 55-inch 4K Smart TV LU-1001A", "Lumen", "black", "", "55-inch"),
        ("Lumen 65-inch 4K Smart TV LU-1002B", "Lumen", "black", "", "65-inch"),
        ("Solly Glass Blender 1.5L", "Solly", "red", "glass", "1.5L"),
    ]
    return pd.DataFrame(
        {
            "product_id": np.arange(100, 100 + len(rows)),
            "title": [r[0] for r in rows],
            "brand": [r[1] for r in rows],
            "category": ["Furniture > Sofas"] * 2
            + ["Electronics > TVs"] * 2
            + ["Kitchen > Blenders"],
            "color": [r[2] for r in rows],
            "material": [r[3] for r in rows],
            "size": [r[4] for r in rows],
            "description": ["A product with a hydraulic disc brake."] + [""] * (len(rows) - 1),
        }
    )


@pytest.fixture(scope="module")
def index(catalog) -> LexicalIndex:
    return LexicalIndex.build(catalog)


def test_search_finds_codes_however_they_are_typed(index):
    for query in ("nv-4521b", "nv4521b", "NV 4521B", "nordvik nv4521b"):
        rows, scores = index.search(query, 3)
        assert rows[0] == 0 and scores[0] > scores[1], query


def test_search_matches_sizes_across_spellings_and_ranks_by_bm25(index):
    rows, _ = index.search('55" tv', 5)
    assert rows[0] == 2
    rows, scores = index.search("red velvet sofa", 5)
    assert rows[0] == 0 and list(scores) == sorted(scores, reverse=True)
    assert len(index.search("zzzz unknown", 5)[0]) == 0  # nothing matches: no candidates


def test_bm25_scores_agree_with_bm25s(catalog, index):
    """Our lookups over bm25s's postings give bm25s's own scores."""
    import bm25s

    rows = np.arange(len(catalog))
    query = "nordvik grey sofa 55 inch"
    ours = index.bm25_scores(index.query_ids(query), rows)
    texts = lexical.field_texts(catalog)
    docs = [
        [
            t
            for name, w in lexical.DEFAULT_FIELD_WEIGHTS.items()
            for _ in range(w)
            for t in tokenize(texts[name][i])
        ]
        for i in range(len(catalog))
    ]
    model = bm25s.BM25(k1=index.k1, b=index.b)
    model.index(docs, show_progress=False)
    # float16 weights: each term within 4.9e-4 relative, so their sum too
    np.testing.assert_allclose(ours, model.get_scores(tokenize(query)), rtol=5e-4)
    assert index.bm25.weights.dtype == np.float16 and index.bm25.indptr.dtype == np.int32


def test_top_k_search_agrees_with_the_exact_scores(catalog, index):
    """tantivy's top k are the exact BM25 (bm25s) top k, scores in proportion: the same
    formula up to a constant and one-byte document-length norms."""
    for query in ("grey sofa", "nordvik sofa 55 inch", "red glass blender", "tv"):
        exact = index.score_matrix([query])[0]
        k = int((exact > 0).sum())
        rows, scores = index.search(query, k)
        assert sorted(rows.tolist()) == sorted(np.flatnonzero(exact).tolist()), query
        ratio = scores / exact[rows]
        np.testing.assert_allclose(ratio, ratio[0], rtol=0.05, err_msg=query)
        assert exact[rows[0]] == exact.max(), query


def test_features_by_hand(index):
    rows = np.array([0, 1, 2, 4])
    f = dict(zip(LEXICAL_FEATURES, index.features("nordvik nv-4521b sofa", rows).T, strict=True))
    query = set(tokenize("nordvik nv-4521b sofa"))  # nordvik nv 4521 4521b nv4521b sofa
    assert f["code_match"].tolist() == [1, 0, 0, 0]
    assert f["all_covered"].tolist() == [1, 0, 0, 0]
    # Product 1 shares "nordvik", "nv", "sofa" of the six query tokens in its title.
    assert f["title_coverage"][1] == pytest.approx(3 / len(query))
    assert f["title_coverage"][0] == pytest.approx(1.0)
    assert f["attribute_coverage"][0] == pytest.approx(1 / len(query))  # the brand
    assert f["bm25_relative"][0] == 1.0 and 0 < f["bm25_relative"][1] < 1
    assert f["has_numbers"].tolist() == [1, 1, 1, 1]
    assert f["number_match"][0] == 1.0 and f["number_match"][2] == 0.0
    no_numbers = index.features("grey sofa", rows)
    assert not no_numbers[:, LEXICAL_FEATURES.index("has_numbers")].any()


def test_title_trigrams_still_match_a_typo(index):
    rows = np.array([0, 1, 2, 4])
    f = dict(zip(LEXICAL_FEATURES, index.features("nordvk", rows).T, strict=True))
    assert not f["title_coverage"].any()  # the misspelt token matches nothing whole
    # " nordvk " has 6 trigrams; " no", "nor", "ord", "rdv" are in "nordvik".
    assert f["title_trigrams"][0] == pytest.approx(4 / 6)
    assert f["title_trigrams"][1] == pytest.approx(4 / 6)
    assert f["title_trigrams"][2] < 4 / 6


def test_save_load_round_trip_and_a_clear_error(index, tmp_path):
    path = tmp_path / "lexical.npz"
    index.save(path)
    loaded = LexicalIndex.load(path)
    for query in ("nv4521b", "red glass blender 1.5 l"):
        np.testing.assert_array_equal(index.search(query, 5)[0], loaded.search(query, 5)[0])
        np.testing.assert_allclose(
            index.features(query, np.arange(5)), loaded.features(query, np.arange(5))
        )
    path.write_bytes(b"not an index")
    with pytest.raises(ValueError, match=r"lexical\.npz"):
        LexicalIndex.load(path)
    with pytest.raises(ValueError, match=r"missing\.npz"):
        LexicalIndex.load(tmp_path / "missing.npz")


def test_a_missing_search_index_is_named(index, tmp_path):
    import shutil

    path = tmp_path / "lexical.npz"
    index.save(path)
    shutil.rmtree(lexical.search_dir(path))
    with pytest.raises(ValueError, match=r"lexical\.tantivy"):
        LexicalIndex.load(path)


def test_bm25_beside_the_dense_search_changes_no_answer(in_process, search_workload):
    """The ranker runs BM25 on its own thread while the dense search runs (`retrieve`);
    the answers must be those of running the two one after the other."""
    from shoprank.core.ranking import Request

    ranker = in_process.ranker
    queries = [w["query"] for w in search_workload[:24]]
    embeddings = in_process.encode(queries)
    none = np.zeros(0, np.int64)
    requests = [Request(q, e, none, 10) for q, e in zip(queries, embeddings, strict=True)]
    assert ranker.pool is not None
    parallel = ranker.rank(requests)
    pool, ranker.pool = ranker.pool, None
    try:
        sequential = ranker.rank(requests)
    finally:
        ranker.pool = pool
    for a, b in zip(parallel, sequential, strict=True):
        assert a.product_ids.tolist() == b.product_ids.tolist()
        np.testing.assert_array_equal(a.scores, b.scores)


# -- lexical features against a per-candidate reference ---------------------------------------
_WORDS = ["sofa", "grey", "velvet", "lamp", "oak", "table", "chair", "red", "glass", "kettle"]
_BRANDS = ["Nordvik", "Lumen", "Solly", "Arkon"]


def _random_catalog(rng: np.random.Generator, n: int) -> pd.DataFrame:
    def words(k: int) -> str:
        return " ".join(rng.choice(_WORDS, size=k))

    codes = [
        f"{rng.choice(['NV', 'LU', 'AR'])}-{rng.integers(1000, 1020)}{'ab'[i % 2]}"
        for i in range(n)
    ]
    return pd.DataFrame(
        {
            "product_id": np.arange(n),
            "title": [f"{rng.choice(_BRANDS)} {words(3)} {codes[i]}" for i in range(n)],
            "brand": rng.choice(_BRANDS, size=n),
            "category": rng.choice(["Furniture > Sofas", "Kitchen > Kettles"], size=n),
            "color": rng.choice(["grey", "red", "oak"], size=n),
            "material": rng.choice(["velvet", "glass", ""], size=n),
            "size": [f"{rng.integers(1, 4)}-seat" for _ in range(n)],
            "description": [words(5) for _ in range(n)],
        }
    )


def _reference_features(index: LexicalIndex, catalog, tokens: list[str], rows) -> np.ndarray:
    """LEXICAL_FEATURES candidate by candidate, from each product's own tokens (title,
    brand and attributes re-tokenized) and a (token, row) → BM25 weight table."""
    texts = lexical.field_texts(catalog)
    weight = {}
    for t in range(len(index.bm25.indptr) - 1):
        lo, hi = index.bm25.indptr[t], index.bm25.indptr[t + 1]
        for row, w in zip(index.bm25.rows[lo:hi], index.bm25.weights[lo:hi], strict=True):
            weight[t, int(row)] = np.float32(w)
    distinct = list(dict.fromkeys(tokens))
    grams = lexical.trigrams(tokens)
    out = np.zeros((len(rows), len(LEXICAL_FEATURES)), np.float32)
    for c, row in enumerate(int(r) for r in rows):
        title = set(tokenize(texts["title"][row]))
        attributes = set(tokenize(texts["brand"][row])) | set(tokenize(texts["attributes"][row]))
        bm25 = np.float32(0.0)
        held = []
        for t in distinct:
            key = (index.vocab.get(t, -1), row)
            held.append(key in weight)
            bm25 = np.float32(bm25 + weight.get(key, np.float32(0.0)))
        numeric = [h for t, h in zip(distinct, held, strict=True) if lexical.has_digit(t)]
        codes = [h for t, h in zip(distinct, held, strict=True) if lexical.is_code(t)]
        out[c] = [
            np.log1p(bm25),
            bm25,  # divided by the best candidate's below
            sum(t in title for t in distinct) / len(distinct),
            sum(t in attributes for t in distinct) / len(distinct),
            all(held),
            np.mean(numeric) if numeric else 0.0,
            any(codes),
            1.0 if numeric else 0.0,
            len(grams & lexical.trigrams(tokenize(texts["title"][row]))) / len(grams),
        ]
    best = out[:, 1].max() if len(rows) else 0.0
    out[:, 1] = out[:, 1] / best if best > 0 else 0.0
    return out


def test_features_match_a_per_candidate_reference_on_random_catalogs():
    rng = np.random.default_rng(7)
    catalog = _random_catalog(rng, 400)
    index = LexicalIndex.build(catalog)
    queries = [
        "grey velvet sofa nv-1003a",
        "lumen 2 seat lamp",
        "oak table chair red glass kettle",
        "unknownword",  # nothing in the catalog: all zeros but the trigram share
        "sofaa ar 1011b",  # a typo and a code typed apart
    ]
    for query in queries:
        tokens = tokenize(query)
        for rows in (
            rng.permutation(len(catalog))[:120],  # unsorted, as retrieval hands them over
            np.array([5, 3, 5, 399, 0]),  # a duplicate row gets the same features twice
            np.zeros(0, np.int64),
        ):
            got = index.features(tokens, rows)
            want = _reference_features(index, catalog, tokens, rows)
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=query)


def test_a_batch_decodes_only_its_real_rows(index, catalog):
    """Padding in a batch of uneven rows is never decoded, and stays zero."""
    from shoprank.core.features import ItemTables
    from shoprank.core.ranking import gather_features

    vectors = np.arange(len(catalog) * 3, dtype=np.float32).reshape(-1, 3) + 1.0
    asked: list[int] = []

    def decode(rows: np.ndarray) -> np.ndarray:
        asked.extend(np.asarray(rows).tolist())
        return vectors[rows]

    candidates = [np.array([4, 0, 2]), np.array([1])]
    histories = [np.array([3]), np.zeros(0, np.int64)]
    f = gather_features(
        decode,
        index,
        ItemTables.from_catalog(catalog.assign(price=np.arange(len(catalog)) + 10.0)),
        np.ones((2, 3), np.float32),
        [tokenize("grey sofa"), tokenize("tv")],
        histories,
        candidates,
    )
    assert sorted(asked) == [0, 1, 2, 3, 4]  # 4 candidates and 1 history row, no padding
    np.testing.assert_array_equal(f.candidates[0], vectors[[4, 0, 2]])
    np.testing.assert_array_equal(f.candidates[1], [vectors[1], [0, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(f.history[:, 0], [vectors[3], [0, 0, 0]])
    assert f.valid.tolist() == [[True, True, True], [True, False, False]]
    np.testing.assert_array_equal(f.lexical[1, 1:], 0.0)
