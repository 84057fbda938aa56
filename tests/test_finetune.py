"""Fine-tuning data: hard negatives are never judged-relevant, graded pairs respect grades."""

import numpy as np
import pandas as pd
import pytest

from training import finetune
from training.synthetic import generate


@pytest.fixture(scope="module")
def shop():
    return generate("tiny", seed=1)


def test_hard_negatives_exclude_every_judged_relevant_product(shop):
    rng = np.random.default_rng(0)
    train = shop.queries[shop.queries["split"] == "train"]
    item_emb = rng.normal(size=(len(shop.catalog), 16)).astype(np.float32)
    # Queries embedded right next to their relevant products: the top of the ranking is
    # full of judged-relevant items, which the miner must skip.
    ids = shop.catalog["product_id"].to_numpy()
    q_emb = []
    for qid in train["query_id"]:
        rel = shop.judgements[
            (shop.judgements["query_id"] == qid) & (shop.judgements["relevance"] > 0)
        ]["product_id"]
        rows = np.flatnonzero(np.isin(ids, rel))
        q_emb.append(item_emb[rows].mean(0) if len(rows) else rng.normal(size=16))
    negatives = finetune.mine_hard_negatives(
        shop,
        train["query_id"].to_numpy(),
        np.array(q_emb, dtype=np.float32),
        item_emb,
        ranks=(0, 100),
    )
    assert negatives
    relevant = shop.judgements[shop.judgements["relevance"] > 0]
    for qid, rows in negatives.items():
        judged = set(relevant[relevant["query_id"] == qid]["product_id"])
        assert not judged & set(ids[rows].tolist())


def test_triplets_pair_each_query_with_its_own_negatives(shop):
    pairs = finetune.training_pairs(shop, "train")
    first_q = int(pairs["query_id"].iloc[0])
    negatives = {first_q: [0, 1]}
    triplets = finetune.add_hard_negatives(pairs, negatives, shop.catalog)
    assert len(triplets) == int((pairs["query_id"] == first_q).sum())
    assert set(triplets.columns) == {"anchor", "positive", "negative"}
    texts = set(pd.Series(finetune.product_text(shop.catalog.iloc[[0, 1]])))
    assert set(triplets["negative"]) <= texts


def test_graded_pairs_put_the_better_product_first(shop):
    graded = finetune.graded_pairs(shop, "train", per_query=30)
    assert len(graded) > 0
    assert (graded["label"] > 0).all()
    assert set(np.round(graded["label"] / finetune.GRADE_MARGIN).astype(int)) <= {1, 2, 3}
    # Spot-check one row against the judgements.
    row = graded.iloc[0]
    q = shop.queries[shop.queries["query"] == row["anchor"]]["query_id"].iloc[0]
    text_of = dict(
        zip(finetune.product_text(shop.catalog), shop.catalog["product_id"], strict=True)
    )
    grade = shop.judgements.set_index(["query_id", "product_id"])["relevance"]
    better, worse = grade[(q, text_of[row["positive"]])], grade[(q, text_of[row["negative"]])]
    assert better - worse == pytest.approx(row["label"] / finetune.GRADE_MARGIN)


def test_validation_evaluator_scores_a_model(shop, tmp_path):
    from training.encoder import load_encoder, make_tiny_encoder

    model = load_encoder(make_tiny_encoder(tmp_path / "enc"))
    evaluator = finetune.validation_evaluator(shop, "val", distractors=50)
    result = evaluator(model)
    assert 0.0 <= result["val_ndcg@10"] <= 1.0


def test_embed_does_not_change_the_training_length(tmp_path):
    from training.encoder import embed, load_encoder, make_tiny_encoder

    model = load_encoder(make_tiny_encoder(tmp_path / "enc"), max_seq_length=64)
    embed(model, ["red sofa"], max_seq_length=8)
    assert model.max_seq_length == 64
