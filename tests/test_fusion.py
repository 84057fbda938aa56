"""The fusion ranker: shapes, the weighted formula, cold start, training signal, save/load."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.fusion import FusionRanker, TextOnlyRanker, load_ranker, save_ranker


@pytest.fixture
def ranker():
    torch.manual_seed(0)
    items = F.normalize(torch.randn(50, 8), dim=-1)
    feats = torch.randn(50, 2)
    return FusionRanker(items, feats, alpha_init=0.3)


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
    """Clicks that follow the user's history, not the query, must push α up."""
    torch.manual_seed(0)
    items = F.normalize(torch.randn(40, 16), dim=-1)
    ranker = FusionRanker(items, torch.zeros(40, 2), alpha_init=0.1)
    opt = torch.optim.Adam(ranker.parameters(), lr=0.05)
    for _ in range(150):
        hist = torch.randint(0, 40, (64, 1))
        q = F.normalize(torch.randn(64, 16), dim=-1)  # query carries no signal
        pos = hist  # the shopper re-clicks their history item
        neg = torch.randint(0, 40, (64, 1))
        cand = torch.cat([pos, neg], dim=1)
        logits = ranker.score_candidates(q, hist, torch.ones(64, 1), cand)
        labels = torch.tensor([[1.0, 0.0]]).expand(64, 2)
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(ranker.alpha) > 0.5


def test_save_load_roundtrip(ranker, tmp_path):
    save_ranker(ranker, tmp_path / "r")
    loaded = load_ranker(tmp_path / "r")
    q = F.normalize(torch.randn(3, 8), dim=-1)
    rows, mask = torch.randint(0, 50, (3, 2)), torch.ones(3, 2)
    np.testing.assert_allclose(
        loaded(q, rows, mask).detach(), ranker(q, rows, mask).detach(), atol=1e-6
    )
