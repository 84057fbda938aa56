"""Metrics against values computed by hand."""

import math

import pytest

from shoprank.data.metrics import (
    dcg,
    mean_metrics,
    ndcg_at_k,
    paired_bootstrap_gain,
    recall_at_k,
    reciprocal_rank,
    roc_auc,
)


def test_dcg_by_hand():
    # gains 3, 1, 0 at ranks 1..3: 3/log2(2) + 1/log2(3) + 0
    assert dcg([3, 1, 0]) == pytest.approx(3 + 1 / math.log2(3))
    assert dcg([]) == 0.0


def test_ndcg_by_hand():
    grades = {10: 3, 11: 1, 12: 0, 13: 2}
    # ranking 11, 10, 99: gains 1, 7, 0 → 1 + 7/log2(3); ideal 7, 3, 1 (all judged products)
    got = ndcg_at_k([11, 10, 99], grades, k=3)
    want = (1 + 7 / math.log2(3)) / (7 + 3 / math.log2(3) + 1 / math.log2(4))
    assert got == pytest.approx(want)
    assert ndcg_at_k([10, 13, 11], grades, k=3) == pytest.approx(1.0)
    assert ndcg_at_k([12], {12: 0}, k=10) == 0.0


def test_ndcg_counts_only_top_k():
    grades = {1: 3}
    assert ndcg_at_k([5, 6, 1], grades, k=2) == 0.0
    assert ndcg_at_k([5, 6, 1], grades, k=3) == pytest.approx(1 / math.log2(4))


def test_recall_and_mrr_by_hand():
    grades = {1: 3, 2: 2, 3: 1, 4: 2}
    assert recall_at_k([9, 1, 3], grades, k=3) == pytest.approx(1 / 3)  # relevant = grade >= 2
    assert recall_at_k([9, 1, 3, 2, 4], grades, k=5) == 1.0
    assert reciprocal_rank([9, 3, 2], grades) == pytest.approx(1 / 3)
    assert reciprocal_rank([9, 3], grades) == 0.0


def test_auc_by_hand_with_ties():
    # positives 0.9, 0.5; negatives 0.5, 0.1: pairs (0.9>0.5) (0.9>0.1) (0.5=0.5 → ½) (0.5>0.1)
    assert roc_auc([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1]) == pytest.approx(3.5 / 4)
    assert roc_auc([1, 0], [0.1, 0.9]) == 0.0
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_mean_metrics_averages_judged_queries():
    rankings = {1: [10, 11], 2: [20, 21], 3: [30]}
    judgements = {1: {10: 3}, 2: {21: 3}}
    m = mean_metrics(rankings, judgements)
    assert m["queries"] == 2
    assert m["ndcg@10"] == pytest.approx((1.0 + 1 / math.log2(3)) / 2)
    assert m["mrr"] == pytest.approx(0.75)
    with pytest.raises(ValueError):
        mean_metrics({5: [1]}, judgements)


def test_paired_bootstrap_gain_by_hand():
    base = [0.2, 0.4, 0.6, 0.8]
    # The same scores: no gain, and no resample can show one.
    same = paired_bootstrap_gain(base, base)
    assert (same["relative"], same["ci95_low"], same["ci95_high"]) == (0.0, 0.0, 0.0)
    # Every unit 10% better: every resample's ratio of means is exactly 1.1.
    scaled = paired_bootstrap_gain(base, [1.1 * b for b in base])
    assert scaled["relative"] == pytest.approx(0.1)
    assert scaled["ci95_low"] == pytest.approx(0.1) and scaled["ci95_high"] == pytest.approx(0.1)
    # Mixed: mean 0.55 vs 0.5 → +10%, with an interval around it that is not a point.
    mixed = paired_bootstrap_gain(base, [0.4, 0.2, 0.8, 0.8])
    assert mixed["relative"] == pytest.approx(0.1)
    assert mixed["ci95_low"] < 0.1 < mixed["ci95_high"]
    with pytest.raises(ValueError):
        paired_bootstrap_gain(base, base[:2])
