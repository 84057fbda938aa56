"""Fine-tuning: the losses by hand, hard negatives never judged-relevant, graded pairs."""

import numpy as np
import pandas as pd
import pytest
import torch

from shoprank.training import finetune
from shoprank.training.synthetic import generate


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
    from shoprank.models.encoder import load_encoder
    from shoprank.training.base_encoder import make_tiny_encoder

    model = load_encoder(make_tiny_encoder(tmp_path / "enc"))
    evaluator = finetune.validation_evaluator(shop, "val", distractors=50)
    result = evaluator(model)
    assert 0.0 <= result["val_ndcg@10"] <= 1.0


def test_embed_does_not_change_the_training_length(tmp_path):
    from shoprank.models.encoder import embed, load_encoder
    from shoprank.training.base_encoder import make_tiny_encoder

    model = load_encoder(make_tiny_encoder(tmp_path / "enc"), max_seq_length=64)
    embed(model, ["red sofa"], max_seq_length=8)
    assert model.max_seq_length == 64


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from shoprank.models.encoder import load_encoder
    from shoprank.training.base_encoder import make_tiny_encoder

    model = load_encoder(make_tiny_encoder(tmp_path_factory.mktemp("enc")))
    return model.eval()  # no dropout: the same text embeds the same way twice


def _unit(model, texts) -> np.ndarray:
    return model.encode(texts, convert_to_numpy=True, normalize_embeddings=True)


QUERIES = ["grey velvet sofa", "running shoes", "espresso machine"]
POSITIVES = ["Grey Velvet 3-Seat Sofa", "Knit Running Shoes UK 9", "Silver Coffee Machine"]
NEGATIVES = ["Oak Coffee Table", "Leather Chelsea Boots", "Glass Kettle 1.7L"]


def test_contrastive_loss_is_cross_entropy_over_scaled_cosines(tiny_model):
    loss = finetune.relevance_losses(tiny_model)["contrastive"]
    with torch.no_grad():
        got = loss([tiny_model.tokenize(t) for t in (QUERIES, POSITIVES, NEGATIVES)], None)
    q, p, n = (_unit(tiny_model, t) for t in (QUERIES, POSITIVES, NEGATIVES))
    logits = 20.0 * q @ np.concatenate([p, n]).T  # (3, 6): every product in the batch
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    want = -log_softmax[np.arange(3), np.arange(3)].mean()  # target: the query's own positive
    assert float(got) == pytest.approx(float(want), rel=1e-4)


def test_graded_loss_is_squared_error_of_the_cosine_gap_against_the_grade_margin(tiny_model):
    loss = finetune.relevance_losses(tiny_model)["graded"]
    labels = torch.tensor([3.0, 1.0, 2.0]) * finetune.GRADE_MARGIN
    with torch.no_grad():
        got = loss([tiny_model.tokenize(t) for t in (QUERIES, POSITIVES, NEGATIVES)], labels)
    q, p, n = (_unit(tiny_model, t) for t in (QUERIES, POSITIVES, NEGATIVES))
    gap = (q * p).sum(axis=1) - (q * n).sum(axis=1)
    want = ((gap - labels.numpy()) ** 2).mean()
    assert float(got) == pytest.approx(float(want), rel=1e-4, abs=1e-7)


def test_graded_loss_pulls_the_better_product_ahead(tmp_path):
    """A few steps on one (query, grade-3, grade-1) row move the cosine gap towards 0.2."""
    from shoprank.models.encoder import load_encoder
    from shoprank.training.base_encoder import make_tiny_encoder

    torch.manual_seed(0)
    model = load_encoder(make_tiny_encoder(tmp_path / "enc"))
    loss = finetune.relevance_losses(model)["graded"]
    label = torch.tensor([2.0 * finetune.GRADE_MARGIN])
    rows = [["grey velvet sofa"], ["Grey Velvet Sofa"], ["Oak Coffee Table"]]

    def gap() -> float:
        q, p, n = (_unit(model, t) for t in rows)
        return float((q * p).sum() - (q * n).sum())

    before = gap()
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(20):
        value = loss([model.tokenize(t) for t in rows], label)
        optim.zero_grad()
        value.backward()
        optim.step()
    model.eval()
    after = gap()
    assert after > before + 0.05
    assert abs(after - float(label)) < abs(before - float(label))
