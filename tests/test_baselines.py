"""BM25 and popularity baselines on hand-made shops and the tiny synthetic one."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from shoprank.core.lexical import LexicalIndex, s_stem
from shoprank.data.datasets import ShopData, validate
from shoprank.data.metrics import top_k_rankings
from shoprank.training.baselines import (
    NO_EVENTS,
    bm25_metrics,
    bm25_rankings,
    popularity_metrics,
    popularity_ranking,
    run_baselines,
    session_popularity_metrics,
)
from shoprank.training.synthetic import generate

TITLES = [
    "Nordvik Aria Grey Velvet Sofa",
    "Lumo Oak Dining Table",
    "Brightway Red Table Lamp",
    "Trailpeak Blue Running Shoes",
    "Kasa Steel Kettle",
]


def _catalog(titles: list[str]) -> pd.DataFrame:
    n = len(titles)
    return pd.DataFrame(
        {
            "product_id": np.arange(1, n + 1, dtype=np.int64),
            "title": titles,
            "description": [""] * n,
            "category": [""] * n,
            "brand": [""] * n,
            "color": [""] * n,
            "material": [""] * n,
            "size": [""] * n,
            "price": np.ones(n),
        }
    )


def _shop(with_events: bool) -> ShopData:
    """Five products, two test queries, and clicks that make product 5 the most popular."""
    catalog = _catalog(TITLES)
    queries = pd.DataFrame(
        {
            "query_id": np.array([1, 2, 3], dtype=np.int64),
            "query": ["lumo oak dining table", "red lamp", "kettle"],
            "split": ["test", "test", "train"],
        }
    )
    judgements = pd.DataFrame(
        {
            "query_id": np.array([1, 1, 2, 3], dtype=np.int64),
            "product_id": np.array([2, 3, 3, 5], dtype=np.int64),
            "relevance": np.array([3, 0, 3, 3], dtype=np.int64),
        }
    )
    events = None
    if with_events:
        # (session, product, position, clicked, bought, split); product 5 > 4 > 1 in clicks.
        rows = [
            (1, 5, 0, 1, 0, "train"),
            (2, 5, 0, 1, 0, "train"),
            (3, 5, 0, 1, 0, "train"),
            (1, 4, 1, 1, 0, "train"),
            (2, 4, 1, 1, 0, "train"),
            (3, 1, 1, 1, 0, "train"),
            (1, 2, 2, 0, 0, "train"),
            # held-out session: product 2 shown first and bought, popular 5 shown second
            (9, 2, 0, 1, 1, "test"),
            (9, 5, 1, 0, 0, "test"),
            (9, 3, 2, 0, 0, "test"),
        ]
        ev = []
        for sid, pid, pos, clicked, bought, split in rows:
            kinds = ["impression"] + ["click"] * clicked + ["purchase"] * bought
            ev += [(sid, 1, 3, sid * 10 + len(ev), k, pid, pos, split) for k in kinds]
        events = pd.DataFrame(
            ev,
            columns=[
                "session_id",
                "user_id",
                "query_id",
                "timestamp",
                "event_type",
                "product_id",
                "position",
                "split",
            ],
        )
        for col in ("session_id", "user_id", "query_id", "timestamp", "product_id", "position"):
            events[col] = events[col].astype(np.int64)
    data = ShopData(catalog, queries, judgements, events=events)
    validate(data)
    return data


def test_s_stem_folds_plurals():
    assert [s_stem(w) for w in ("sofas", "batteries", "boxes", "glass", "bus", "lamp")] == [
        "sofa",
        "battery",
        "boxe",
        "glass",
        "bus",
        "lamp",
    ]


IDS = np.arange(1, len(TITLES) + 1)


def test_bm25_ranks_exact_title_first():
    index = LexicalIndex.build(_catalog(TITLES))
    queries = [t.lower() for t in TITLES]
    rankings = bm25_rankings(index, queries, list(range(len(TITLES))), IDS, k=3)
    for i, ranking in rankings.items():
        assert ranking[0] == i + 1  # product ids are 1-based
        assert len(ranking) <= 3
    # Plural and singular meet through the stemmer.
    assert bm25_rankings(index, ["sofas"], [0], IDS)[0][0] == 1


def test_bm25_metrics_on_hand_made_shop():
    data = _shop(with_events=False)
    m = bm25_metrics(data, "test")
    assert m["queries"] == 2
    assert m["ndcg@10"] == pytest.approx(1.0)
    assert m["mrr"] == pytest.approx(1.0)


def test_bm25_unknown_words_score_zero_and_retrieve_nothing():
    index = LexicalIndex.build(_catalog(TITLES))
    scores = index.score_matrix(["zzzz qqqq"])
    assert scores.shape == (1, len(TITLES)) and not scores.any()
    assert bm25_rankings(index, ["zzzz"], [7], IDS)[7] == []


def test_top_k_breaks_ties_by_catalog_order():
    scores = np.array([[0.0, 2.0, 1.0, 2.0, 0.0]])
    got = top_k_rankings(scores, [1], np.array([10, 11, 12, 13, 14]), k=4)
    assert got == {1: [11, 13, 12, 10]}


def test_popularity_ranks_by_train_clicks():
    data = _shop(with_events=True)
    assert popularity_ranking(data, k=3) == [5, 4, 1]  # test-split clicks do not count
    m = popularity_metrics(data, "test")
    assert m["queries"] == 2
    # query 1 wants product 2 (4th), query 2 wants product 3 (5th)
    assert m["mrr"] == pytest.approx((1 / 4 + 1 / 5) / 2)


def test_popularity_skips_without_events():
    data = _shop(with_events=False)
    assert popularity_metrics(data) == {"skipped": NO_EVENTS}
    assert session_popularity_metrics(data) == {"skipped": NO_EVENTS}
    out = run_baselines(data)
    assert out["popularity"]["skipped"] and "ndcg@10" in out["bm25"]


def test_session_popularity_by_hand():
    m = session_popularity_metrics(_shop(with_events=True), "test")
    # scores: product 5 → 3 clicks, product 2 → 0, product 3 → 0; only 2 was clicked/bought
    assert m["impressions"] == 3 and m["sessions_with_purchase"] == 1
    assert m["click_auc"] == pytest.approx(0.25)  # below 5, tied with 3 (one half)
    # bought product at rank 2 or 3 (tie with product 3 broken at random)
    assert m["purchase_ndcg@10"] in (pytest.approx(1 / math.log2(3)), pytest.approx(0.5))


def test_baselines_on_tiny_synthetic_shop():
    out = run_baselines(generate("tiny"), "test")
    assert 0.0 < out["bm25"]["ndcg@10"] <= 1.0
    assert out["bm25"]["queries"] == out["popularity"]["queries"]
    assert 0.0 <= out["session_popularity"]["click_auc"] <= 1.0
