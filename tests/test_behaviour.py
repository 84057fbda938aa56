"""From behaviour logs to fusion examples: no future leaks in, and session metrics by hand."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from shoprank.core.features import ItemTables
from shoprank.core.lexical import LexicalIndex, tokenize
from shoprank.models.fusion import FusionConfig, FusionRanker
from shoprank.training import behaviour


def _events() -> pd.DataFrame:
    """User 1: session 1 clicks 10, session 2 buys 11, session 3 only looks; user 2: one
    session that clicks 12. Products 10..13 are catalog rows 0..3."""
    rows = [
        # session, user, query, time, type, product, position, split
        (1, 1, 1, 100, "impression", 10, 0, "train"),
        (1, 1, 1, 100, "impression", 11, 1, "train"),
        (1, 1, 1, 105, "click", 10, 0, "train"),
        (2, 1, 1, 200, "impression", 11, 0, "test"),
        (2, 1, 1, 200, "impression", 12, 1, "test"),
        (2, 1, 1, 200, "impression", 13, 2, "test"),
        (2, 1, 1, 205, "click", 11, 0, "test"),
        (2, 1, 1, 210, "purchase", 11, 0, "test"),
        (3, 1, 1, 300, "impression", 12, 0, "test"),
        (4, 2, 1, 150, "impression", 12, 0, "train"),
        (4, 2, 1, 155, "click", 12, 0, "train"),
    ]
    columns = ["session_id", "user_id", "query_id", "timestamp", "event_type", "product_id"]
    return pd.DataFrame(rows, columns=[*columns, "position", "split"])


ROW_OF = {10: 0, 11: 1, 12: 2, 13: 3}


def test_histories_hold_only_earlier_sessions_of_the_same_shopper():
    hist = behaviour.session_histories(_events(), ROW_OF)
    # The click and the purchase of 11 in session 2 both count, for later sessions only.
    assert hist == {1: [], 2: [0], 3: [0, 1, 1], 4: []}
    assert behaviour.session_histories(_events(), ROW_OF, max_history=2)[3] == [1, 1]


def test_examples_are_impressions_labelled_within_their_session():
    ev = _events()
    ex = behaviour.build_examples(
        ev, "test", {1: 0}, ROW_OF, behaviour.session_histories(ev, ROW_OF)
    )
    assert len(ex) == 4  # session 2's three impressions + session 3's one
    assert ex.item_rows.tolist() == [1, 2, 3, 2]
    assert ex.clicked.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert ex.purchased.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert ex.history_mask.sum(axis=1).tolist() == [1.0, 1.0, 1.0, 3.0]


def _catalog() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "product_id": [10, 11, 12, 13],
            "title": ["red sofa", "blue sofa", "oak table", "grey lamp"],
            "category": ["s", "s", "t", "l"],
            "brand": ["a", "b", "a", "c"],
            "price": [100.0, 200.0, 300.0, 40.0],
        }
    )


def test_features_are_attached_once_with_negatives_from_other_sessions():
    ev = _events()
    hist = behaviour.session_histories(ev, ROW_OF)
    ex = behaviour.build_examples(ev, "test", {1: 0}, ROW_OF, hist)
    tables = ItemTables.from_catalog(_catalog())
    lexical = LexicalIndex.build(_catalog())
    behaviour.attach_features(ex, [tokenize("blue sofa")], lexical, tables, negatives=3)
    assert ex.candidates.shape == (4, 4) and ex.lexical.shape[:2] == (4, 4)
    assert (ex.candidates[:, 0] == ex.item_rows).all()
    assert set(ex.candidates[:, 1:].ravel()) <= set(ex.item_rows)  # shown products only
    # The shown blue sofa (row 1) covers both query words; the oak table (row 2) none.
    coverage = behaviour.LEXICAL_FEATURES.index("title_coverage")
    assert ex.lexical[0, 0, coverage] == 1.0 and ex.lexical[1, 0, coverage] == 0.0
    # Session 3's history is [0, 1, 1]: the shown 12 (row 2) is in no history category.
    assert ex.user_item[3, 0].tolist()[0] == 0.0


def test_session_purchase_ndcg_by_hand():
    ev = _events()
    ex = behaviour.build_examples(
        ev, "test", {1: 0}, ROW_OF, behaviour.session_histories(ev, ROW_OF)
    )
    tables = ItemTables.from_catalog(_catalog())
    behaviour.attach_features(ex, [tokenize("zzz")], LexicalIndex.build(_catalog()), tables)
    # The query is item 12's direction, then 13, then 11: the purchased 11 ranks third.
    items = F.normalize(torch.tensor([[0.0, 0, 1], [0.2, 0, 1], [1, 0, 0], [0.8, 0.6, 0]]), dim=-1)
    ranker = FusionRanker(FusionConfig(dim=3)).eval()
    query = np.array([[1.0, 0.0, 0.0]], dtype=np.float32)
    metrics, ndcgs = behaviour.score_sessions(
        ranker, query, items.numpy(), tables, ex, relevance_only=True
    )
    assert ndcgs.tolist() == pytest.approx([1 / math.log2(4)])  # only session 2 has a purchase
    assert metrics["purchase_ndcg@10"] == pytest.approx(float(ndcgs.mean()))
    assert metrics["sessions_with_purchase"] == 1
    # Click AUC: the clicked 11 scores below every unclicked impression.
    assert metrics["click_auc"] == 0.0
