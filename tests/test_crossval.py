"""Query-grouped k-fold cross-validation: the folds, and one tiny end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shoprank.configargs import config_to_dict
from shoprank.data.datasets import ShopData
from shoprank.training.crossval import (
    MODES,
    PARTIAL,
    SYSTEMS,
    CrossvalConfig,
    _finished_folds,
    crossval,
    fold_data,
    judged_rankings,
    query_folds,
    write_results,
)
from shoprank.training.synthetic import generate


@pytest.fixture(scope="module")
def relevance_shop() -> ShopData:
    """40 queries of the tiny synthetic shop as a relevance data set (no events)."""
    data = generate("tiny")
    keep = data.queries.iloc[:40]
    judgements = data.judgements[data.judgements["query_id"].isin(keep["query_id"])]
    return ShopData(data.catalog, keep.reset_index(drop=True), judgements.reset_index(drop=True))


def test_folds_are_disjoint_and_cover_every_query_once():
    ids = np.arange(100, 153)
    folds = query_folds(np.concatenate([ids, ids[:5]]), folds=5, seed=1)  # repeats collapse
    assert len(folds) == 5
    together = np.concatenate(folds)
    assert sorted(together.tolist()) == ids.tolist()
    assert {len(f) for f in folds} <= {10, 11}
    assert [f.tolist() for f in query_folds(ids, 5, seed=1)] == [f.tolist() for f in folds]
    assert [f.tolist() for f in query_folds(ids, 5, seed=2)] != [f.tolist() for f in folds]


def test_fold_count_is_checked():
    with pytest.raises(ValueError):
        query_folds([1, 2, 3], folds=1)
    with pytest.raises(ValueError):
        query_folds([1, 2, 3], folds=4)


def test_fold_data_never_shares_a_query(relevance_shop):
    folds = query_folds(relevance_shop.queries["query_id"], folds=4, seed=0)
    seen_test: set[int] = set()
    for i, test_ids in enumerate(folds):
        fd = fold_data(relevance_shop, test_ids, val_fraction=0.2, seed=i)
        split = dict(zip(fd.queries["query_id"], fd.queries["split"], strict=True))
        test = {q for q, s in split.items() if s == "test"}
        train = {q for q, s in split.items() if s == "train"}
        val = {q for q, s in split.items() if s == "val"}
        assert test == set(test_ids.tolist())
        assert not test & train and not test & val and not train & val
        assert len(val) == round(0.2 * (40 - len(test)))
        assert test | train | val == set(relevance_shop.queries["query_id"])
        seen_test |= test
        # The original frame keeps its own splits: folds work on a copy.
        assert fd.queries is not relevance_shop.queries
    assert len(seen_test) == 40
    assert set(relevance_shop.queries["split"]) <= {"train", "val", "test"}


def test_judged_rankings_reorder_only_judged_products():
    scores = np.array([[0.1, 0.9, 0.5, 0.7]])
    grades = {7: {11: 3, 13: 0, 12: 1}}
    row_of = {10: 0, 11: 1, 12: 2, 13: 3}
    assert judged_rankings(scores, [7], grades, row_of) == {7: [11, 13, 12]}


@pytest.mark.slow  # trains and evaluates every fold
def test_tiny_crossval_end_to_end(relevance_shop, tmp_path):
    config = CrossvalConfig(
        data="tiny",
        out=tmp_path,
        folds=2,
        tiny_encoder=True,
        max_steps=5,
        batch_size=8,
        embed_batch_size=128,
    )
    result = crossval(relevance_shop, config)
    assert len(result["folds"]) == 2
    assert sum(f["queries"]["test"] for f in result["folds"]) == 40
    tested = [q for f in result["folds"] for q in f["test_query_ids"]]
    assert sorted(tested) == sorted(relevance_shop.queries["query_id"].tolist())
    for fold in result["folds"]:
        assert fold["loss_curve"] and fold["training_rows"]["contrastive"] > 0
        for system in SYSTEMS:
            for mode in MODES:
                assert 0.0 <= fold["systems"][system][mode]["ndcg@10"] <= 1.0
    s = result["summary"]["catalog"]["bm25"]["ndcg@10"]
    assert s["mean"] == pytest.approx(
        np.mean([f["systems"]["bm25"]["catalog"]["ndcg@10"] for f in result["folds"]])
    )
    assert not (tmp_path / "work").exists() and not (tmp_path / "crossval.partial.json").exists()
    paired = result["paired"]["catalog"]["fine_tuned - zero_shot"]
    diffs = [
        f["systems"]["fine_tuned"]["catalog"]["ndcg@10"]
        - f["systems"]["zero_shot"]["catalog"]["ndcg@10"]
        for f in result["folds"]
    ]
    assert paired["mean"] == pytest.approx(np.mean(diffs))
    assert paired["folds_better"] == sum(d > 0 for d in diffs)
    json_path, md_path = write_results(result, tmp_path)
    assert json.loads(json_path.read_text())["summary"] == result["summary"]
    text = md_path.read_text()
    assert "mean ± std" in text and "fine_tuned − zero_shot" in text


def test_resume_reuses_folds_only_with_the_same_settings(tmp_path):
    config = CrossvalConfig(data="x.csv", out=tmp_path, max_steps=5, resume_folds=True)
    path = tmp_path / PARTIAL
    assert _finished_folds(path, config) == []
    folds = [{"fold": 0, "test_query_ids": [1, 2]}]
    path.write_text(json.dumps({"config": config_to_dict(config), "folds": folds}))
    assert _finished_folds(path, config) == folds
    other = CrossvalConfig(data="x.csv", out=tmp_path, max_steps=6, resume_folds=True)
    assert _finished_folds(path, other) == []
