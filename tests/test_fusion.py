"""The fusion ranker: shapes, the weighted formula, cold start, training signal, save/load."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shoprank.fusion import (
    FUSIONS,
    USER_ITEM_FEATURES,
    FusionRanker,
    TextOnlyRanker,
    load_ranker,
    save_ranker,
)


def make(fusion="weighted", n=50, dim=8, seed=0):
    torch.manual_seed(seed)
    items = F.normalize(torch.randn(n, dim), dim=-1)
    cats = torch.arange(n) % 5
    brands = torch.arange(n) % 7
    prices = torch.linspace(1.0, 6.0, n)
    ranker = FusionRanker(
        items, torch.randn(n, 2), cats, brands, prices, fusion=fusion, hidden=16, alpha_init=0.3
    )
    with torch.no_grad():  # non-zero weights so that every term shows up in the scores
        ranker.user_item_weights.copy_(torch.tensor([0.5, 0.3, 0.4, 0.2, 0.6]))
        ranker.feature_weights.copy_(torch.tensor([0.1, -0.2]))
        ranker.mlp[2].weight.normal_(0, 0.1)
    return ranker


@pytest.fixture
def ranker():
    return make()


@pytest.mark.parametrize("fusion", FUSIONS)
def test_every_fusion_shapes_and_cold_start(fusion):
    r = make(fusion)
    q = F.normalize(torch.randn(3, 8), dim=-1)
    rows = torch.randint(0, 50, (3, 4))
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    scores = r(q, rows, mask)
    assert scores.shape == (3, 50)
    cand = torch.randint(0, 50, (3, 6))
    torch.testing.assert_close(
        r.score_candidates(q, rows, mask, cand), torch.gather(scores, 1, cand), atol=1e-5, rtol=1e-5
    )
    # Cold start: the last row has no history, so it must equal text + item prior exactly.
    text = r.log_scale.exp() * (q[2:] @ r.item_embeddings.T) + r.item_prior()
    torch.testing.assert_close(scores[2:], text, atol=1e-5, rtol=1e-5)


def test_user_item_features_by_hand():
    r = make()
    rows = torch.tensor([[0, 5, 7]])  # categories 0, 0, 2; brands 0, 5, 0
    cand = torch.tensor([[10, 12, 1, 35, 5]])
    feats = r.user_item_features(rows, torch.ones(1, 3), cand)
    assert feats.shape == (1, 5, len(USER_ITEM_FEATURES))
    by_name = dict(zip(USER_ITEM_FEATURES, feats[0].T.tolist(), strict=True))
    # item 10: category 0 (2 of 3 in history), brand 3 (0 of 3)
    # item 12: category 2 (1 of 3), brand 5 (1 of 3, but in category 0: none in category 2)
    # item 1: category 1, brand 1 → nothing; item 35: category 0, brand 0 (item 0 of the
    # history: 1 of the 2 in category 0 → 1 / (2 + 1)); item 5 is in the history itself.
    assert by_name["category_affinity"] == pytest.approx([2 / 3, 1 / 3, 0, 2 / 3, 2 / 3])
    assert by_name["brand_affinity"] == pytest.approx([0, 1 / 3, 0, 2 / 3, 1 / 3])
    assert by_name["brand_in_category"] == pytest.approx([0, 0, 0, 1 / 3, 1 / 3])
    assert by_name["revisit"] == pytest.approx([0, 0, 0, 0, 1 / 3])
    user_price = float(r.item_log_prices[[0, 5, 7]].mean())
    want = [-abs(float(r.item_log_prices[i]) - user_price) for i in cand[0].tolist()]
    assert by_name["price_match"] == pytest.approx(want, abs=1e-6)


def test_full_scan_user_terms_equal_the_candidate_features():
    """The serving scan computes v·g without building g; both paths must agree."""
    r = make()
    rows = torch.tensor([[0, 5, 7, 5], [3, 0, 0, 0]])
    mask = torch.tensor([[1.0, 1, 1, 1], [1, 0, 0, 0]])
    all_items = torch.arange(50).expand(2, -1)
    want = r.user_item_features(rows, mask, all_items) @ r.user_item_weights
    torch.testing.assert_close(r.user_item_scores(rows, mask), want, atol=1e-6, rtol=1e-6)


def test_target_attention_prefers_history_relevant_to_the_query():
    r = make("target_attention")
    q = r.item_embeddings[3:4].clone()  # a query that is item 3's text
    user = r.user_embedding(q, torch.tensor([[3, 40]]), torch.ones(1, 2))
    mean_user = make("weighted").user_embedding(q, torch.tensor([[3, 40]]), torch.ones(1, 2))
    assert float(user @ r.item_embeddings[3]) > float(mean_user @ r.item_embeddings[3])


def test_shapes(ranker):
    q = F.normalize(torch.randn(4, 8), dim=-1)
    rows = torch.randint(0, 50, (4, 6))
    mask = torch.ones(4, 6)
    assert ranker(q, rows, mask).shape == (4, 50)
    assert ranker.score_candidates(q, rows, mask, torch.randint(0, 50, (4, 3))).shape == (4, 3)


def test_weighted_formula(ranker):
    q = F.normalize(torch.randn(1, 8), dim=-1)
    rows = torch.tensor([[3, 7]])
    h = ranker.fuse(q, rows, torch.ones(1, 2))
    user = F.normalize(ranker.item_embeddings[[3, 7]].mean(0, keepdim=True), dim=-1)
    a = ranker.alpha
    assert torch.allclose(h, (1 - a) * q + a * user, atol=1e-6)


def test_cold_start_is_text_only(ranker):
    """No history: h is the query itself, so the ranking is text score + item prior."""
    q = F.normalize(torch.randn(2, 8), dim=-1)
    rows = torch.zeros(2, 4, dtype=torch.long)
    h = ranker.fuse(q, rows, torch.zeros(2, 4))
    assert torch.allclose(h, q)
    # Padding must not leak into the user embedding either.
    with_pad = ranker.fuse(q, torch.tensor([[3, 0, 0, 0]] * 2), torch.tensor([[1.0, 0, 0, 0]] * 2))
    one = ranker.fuse(q, torch.tensor([[3]] * 2), torch.ones(2, 1))
    assert torch.allclose(with_pad, one, atol=1e-6)


def test_text_only_baseline_ignores_history():
    items = F.normalize(torch.randn(20, 8), dim=-1)
    base = TextOnlyRanker(items, torch.randn(20, 2))
    q = F.normalize(torch.randn(1, 8), dim=-1)
    a = base(q, torch.tensor([[1, 2]]), torch.ones(1, 2))
    b = base(q, torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1))
    assert torch.allclose(a, b, atol=1e-5)


def test_learns_alpha_when_history_predicts_clicks():
    """Clicks on products *like* the history (not the query) must push α up."""
    torch.manual_seed(0)
    items = F.normalize(torch.randn(40, 16), dim=-1)
    ranker = FusionRanker(items, torch.zeros(40, 2), alpha_init=0.1)
    # Not the history item itself: the revisit feature would explain that without α.
    nearest = (items @ items.T).fill_diagonal_(-2.0).argmax(dim=1)
    opt = torch.optim.Adam(ranker.parameters(), lr=0.05)
    for _ in range(150):
        hist = torch.randint(0, 40, (64, 1))
        q = F.normalize(torch.randn(64, 16), dim=-1)  # query carries no signal
        pos = nearest[hist]  # the shopper clicks the product most like their history
        neg = torch.randint(0, 40, (64, 1))
        cand = torch.cat([pos, neg], dim=1)
        logits = ranker.score_candidates(q, hist, torch.ones(64, 1), cand)
        labels = torch.tensor([[1.0, 0.0]]).expand(64, 2)
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(ranker.alpha) > 0.5


@pytest.mark.parametrize("fusion", FUSIONS)
def test_save_load_roundtrip(fusion, tmp_path):
    ranker = make(fusion)
    save_ranker(ranker, tmp_path / "r")
    loaded = load_ranker(tmp_path / "r")
    q = F.normalize(torch.randn(3, 8), dim=-1)
    rows, mask = torch.randint(0, 50, (3, 2)), torch.ones(3, 2)
    np.testing.assert_allclose(
        loaded(q, rows, mask).detach(), ranker(q, rows, mask).detach(), atol=1e-6
    )
