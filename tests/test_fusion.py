"""The fusion ranker: relevance, the behaviour terms, cold start, combine, features, save/load."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from shoprank.core.features import USER_ITEM_FEATURES, ItemTables, user_item_features
from shoprank.core.lexical import LEXICAL_FEATURES
from shoprank.core.scoring import (
    BELOW_DEPTH_GAP,
    SCORE_PARTS,
    combine,
    explained_parts,
    in_depth,
    row_depths,
)
from shoprank.models.fusion import (
    FUSIONS,
    FusionConfig,
    FusionRanker,
    as_tensors,
    load_ranker,
    save_ranker,
)

DIM = 8


def make(fusion="weighted", seed=0, hidden=0):
    torch.manual_seed(seed)
    ranker = FusionRanker(FusionConfig(dim=DIM, fusion=fusion, relevance_hidden=hidden, hidden=16))
    with torch.no_grad():  # non-zero weights so that every term shows up in the scores
        ranker.relevance.lexical_weights.copy_(torch.linspace(-0.5, 1.0, len(LEXICAL_FEATURES)))
        ranker.user_item_weights.copy_(torch.tensor([0.5, 0.3, 0.4, 0.2, 0.6]))
        ranker.feature_weights.copy_(torch.tensor([0.1, -0.2]))
        ranker.beta.fill_(0.7)
        ranker.log_gamma.fill_(0.3)
        ranker.mlp[2].weight.normal_(0, 0.1)
    return ranker.eval()


def inputs(b=3, h=4, c=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(b, DIM, generator=g), dim=-1)
    hist = F.normalize(torch.randn(b, h, DIM, generator=g), dim=-1)
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])[:b, :h]
    cand = F.normalize(torch.randn(b, c, DIM, generator=g), dim=-1)
    lex = torch.rand(b, c, len(LEXICAL_FEATURES), generator=g)
    item = torch.randn(b, c, 2, generator=g)
    ui = torch.rand(b, c, len(USER_ITEM_FEATURES), generator=g)
    return q, hist * mask.unsqueeze(-1), mask, cand, lex, item, ui


@pytest.mark.parametrize("fusion", FUSIONS)
def test_every_fusion_shapes_and_cold_start(fusion):
    r = make(fusion)
    q, hist, mask, cand, lex, item, ui = inputs()
    with torch.no_grad():
        relevance, full = r(q, hist, mask, cand, lex, item, ui)
    assert relevance.shape == full.shape == (3, 6)
    # Relevance: s·cosine + w·lexical, nothing else.
    cosine = torch.einsum("bd,bcd->bc", q, cand)
    want = r.relevance.log_scale.exp() * cosine + lex @ r.relevance.lexical_weights
    torch.testing.assert_close(relevance, want)
    # Cold start (row 2 has no history): γ·R + item prior, the user terms are off.
    prior = item @ r.feature_weights + r.bias
    torch.testing.assert_close(full[2], r.log_gamma.exp() * relevance[2] + prior[2])
    # With a history the user terms move the score.
    assert not torch.allclose(full[0], r.log_gamma.exp() * relevance[0] + prior[0])


def test_weighted_formula_by_hand():
    r = make("weighted")
    q, hist, mask, cand, lex, item, ui = inputs()
    with torch.no_grad():
        relevance, full = r(q, hist, mask, cand, lex, item, ui)
    user = F.normalize(hist[0, :3].mean(0), dim=-1)  # three items in row 0's history
    want = (
        r.log_gamma.exp() * relevance[0]
        + r.beta * (cand[0] @ user)
        + ui[0] @ r.user_item_weights
        + item[0] @ r.feature_weights
        + r.bias
    )
    torch.testing.assert_close(full[0], want, atol=1e-5, rtol=1e-5)
    assert 0 < r.alpha < 1


def test_target_attention_prefers_history_relevant_to_the_query():
    r = make("target_attention")
    q = F.normalize(torch.tensor([[1.0, 0, 0, 0, 0, 0, 0, 0]]), dim=-1)
    near = F.normalize(torch.tensor([1.0, 0.1, 0, 0, 0, 0, 0, 0]), dim=-1)
    far = F.normalize(torch.tensor([0, 0, 1.0, 0, 0, 0, 0, 0]), dim=-1)
    hist = torch.stack([near, far]).unsqueeze(0)
    with torch.no_grad():
        user = r.user_vector(q, hist, torch.ones(1, 2))[0]
    assert float(user @ near) > 0.9 and float(user @ far) < 0.2


def test_mlp_relevance_starts_as_the_linear_one():
    q, hist, mask, cand, lex, item, ui = inputs()
    linear, mlp = make(hidden=0), make(hidden=8)
    with torch.no_grad():
        torch.testing.assert_close(
            linear(q, hist, mask, cand, lex, item, ui)[0],
            mlp(q, hist, mask, cand, lex, item, ui)[0],
        )


def test_combine_lets_behaviour_reorder_only_the_most_relevant():
    relevance = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]])
    full = np.array([[0.0, 10.0, 0.0, 99.0, 0.0]])  # behaviour loves candidate 3
    valid = np.array([[True, True, True, True, False]])
    out = combine(relevance, full, depth=3, valid=valid)
    # The 3 most relevant keep their full score; candidate 3 (4th by relevance) does not,
    # and its relevance (2.0) moves just under the lowest of them (0.0).
    assert out[0, :3].tolist() == [0.0, 10.0, 0.0]
    assert out[0, 3] == pytest.approx(-BELOW_DEPTH_GAP)
    assert out[0, 4] == -np.inf  # padding never ranks
    assert np.argmax(out[0]) == 1


def test_scores_below_the_depth_stay_on_the_scale_and_in_relevance_order():
    rng = np.random.default_rng(0)
    relevance = rng.normal(size=(4, 30)).astype(np.float32)
    full = relevance + rng.normal(scale=3.0, size=(4, 30)).astype(np.float32)
    extra = rng.normal(size=(4, 30)).astype(np.float32)
    valid = np.ones((4, 30), bool)
    valid[3, 20:] = False
    depths = np.array([5, 0, 30, 5])
    out = combine(relevance, full, depths, valid, extra)
    kept = in_depth(relevance, depths, valid)
    np.testing.assert_array_equal(out[kept], (full + extra)[kept])
    for i in range(4):
        rest = valid[i] & ~kept[i]
        if kept[i].any() and rest.any():  # every re-ranked one first, by at least the gap
            gap = out[i, kept[i]].min() - out[i, rest].max()
            assert gap == pytest.approx(BELOW_DEPTH_GAP, abs=1e-5) or gap > BELOW_DEPTH_GAP
        # the rest keep their relevance differences: one shift per row, never upwards
        shift = relevance[i, rest] - out[i, rest]
        np.testing.assert_allclose(shift, shift.max(initial=0.0), atol=1e-5)
        assert (shift >= 0).all()
        assert np.isfinite(out[i, valid[i]]).all() and np.abs(out[i, valid[i]]).max() < 100
    np.testing.assert_array_equal(out[1], relevance[1])  # depth 0: the relevance as is
    assert np.isneginf(out[3, 20:]).all()


def test_combine_takes_one_depth_per_row_and_cold_start_rows_their_own():
    relevance = np.array([[5.0, 4.0, 3.0], [5.0, 4.0, 3.0]])
    full = np.array([[0.0, 0.0, 99.0], [0.0, 0.0, 99.0]])
    valid = np.ones((2, 3), bool)
    depths = row_depths(np.array([2, 0]), depth=3, cold_start_depth=0)
    assert depths.tolist() == [3, 0]
    out = combine(relevance, full, depths, valid)
    assert np.argmax(out[0]) == 2  # with a history, behaviour reorders all three
    assert out[1].tolist() == pytest.approx(relevance[1].tolist())  # none: relevance as is
    assert row_depths(np.array([0]), depth=7, cold_start_depth=None).tolist() == [7]


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("hidden", [0, 8])
def test_score_parts_add_up_to_the_scores(fusion, hidden):
    ranker = make(fusion, hidden=hidden)
    with torch.no_grad():
        if hidden:
            ranker.relevance.mlp[2].weight.normal_(0, 0.3)
        ranker.bias.fill_(0.25)
        args = inputs()
        relevance, full = ranker(*args)
        parts = ranker.parts(*args)
    n = len(SCORE_PARTS)
    assert parts.shape == (*full.shape, n + 2)
    torch.testing.assert_close(parts[..., :n].sum(-1), full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parts[..., n:].sum(-1), relevance, rtol=1e-5, atol=1e-5)
    # cold start (row 2 has no history): no behaviour part
    history_parts = [SCORE_PARTS.index("history_similarity"), SCORE_PARTS.index("revisit")]
    assert (parts[2][:, history_parts] == 0).all() and (parts[0][:, history_parts] != 0).any()
    # the served score, inside and below the re-rank depth
    served = combine(relevance.numpy(), full.numpy(), 2, np.ones(full.shape, bool))
    kept = in_depth(relevance.numpy(), 2, np.ones(full.shape, bool))
    for i, j in np.ndindex(*full.shape):
        below = float(served[i, j] - relevance[i, j])
        named = explained_parts(parts[i, j].numpy(), bool(kept[i, j]), below=below)
        assert sum(named.values()) == pytest.approx(float(served[i, j]), rel=1e-5, abs=1e-3)


@pytest.fixture
def tables():
    catalog = pd.DataFrame(
        {
            "product_id": np.arange(100, 110),
            "category": ["a", "a", "b", "b", "a", "c", "a", "b", "c", "a"],
            "brand": ["x", "y", "x", "x", "x", "z", "y", "y", "z", "x"],
            "price": [10, 20, 30, np.nan, 50, 60, 70, 80, 90, 100.0],
        }
    )
    return ItemTables.from_catalog(catalog)


def test_item_tables_from_the_catalog(tables):
    assert tables.categories.tolist() == [0, 0, 1, 1, 0, 2, 0, 1, 2, 0]
    assert tables.brands.tolist() == [0, 1, 0, 0, 0, 2, 1, 1, 2, 0]
    # (category, brand) pairs numbered densely: (a,x) (a,y) (b,x) (b,y) (c,z)
    assert len(set(tables.pairs.tolist())) == 5
    assert tables.log_prices[3] == pytest.approx(
        np.median(np.log1p([10, 20, 30, 50, 60, 70, 80, 90, 100]))
    )


def test_user_item_features_by_hand(tables):
    history = np.array([[0, 1, 4, 0]])  # a/x, a/y, a/x; the 4th is padding
    mask = np.array([[1.0, 1.0, 1.0, 0.0]])
    cand = np.array([[9, 6, 2, 0]])  # a/x, a/y, b/x, a/x (itself in the history)
    f = dict(
        zip(
            USER_ITEM_FEATURES,
            np.moveaxis(user_item_features(tables, history, mask, cand), -1, 0)[:, 0],
            strict=True,
        )
    )
    np.testing.assert_allclose(f["category_affinity"], [1, 1, 0, 1])
    np.testing.assert_allclose(f["brand_affinity"], [2 / 3, 1 / 3, 2 / 3, 2 / 3])
    # n(category & brand) / (n(category) + 1): a/x 2/4, a/y 1/4, b/x 0/1
    np.testing.assert_allclose(f["brand_in_category"], [2 / 4, 1 / 4, 0, 2 / 4])
    mean_price = np.mean(np.log1p([10, 20, 50]))
    np.testing.assert_allclose(
        f["price_match"], -np.abs(tables.log_prices[cand[0]] - mean_price), rtol=1e-5
    )
    np.testing.assert_allclose(f["revisit"], [0, 0, 0, 1 / 3])
    empty = user_item_features(tables, np.zeros((1, 1), np.int64), np.zeros((1, 1)), cand)
    assert not empty.any()  # cold start: every shopper↔item feature is 0


def test_learns_to_use_history_when_it_predicts_clicks():
    """Clicks go to candidates close to the shopper's history: β must grow."""
    torch.manual_seed(0)
    r = FusionRanker(FusionConfig(dim=DIM))
    r.freeze_relevance()
    opt = torch.optim.Adam([p for p in r.parameters() if p.requires_grad], lr=0.05)
    start = float(r.beta)
    for _ in range(60):
        q, hist, mask, cand, lex, item, ui = inputs(b=3, c=6, seed=int(torch.randint(1000, (1,))))
        mask = torch.ones_like(mask)
        user = F.normalize(hist.mean(1), dim=-1)
        labels = (torch.einsum("bd,bcd->bc", user, cand) > 0.2).float()
        _, full = r(q, hist, mask, cand, lex, item, ui)
        loss = F.binary_cross_entropy_with_logits(full, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(r.beta) > start + 0.5


def test_save_load_roundtrip(tmp_path):
    r = make("concat_mlp", hidden=8)
    save_ranker(r, tmp_path / "ranker")
    loaded = load_ranker(tmp_path / "ranker")
    assert loaded.config == r.config
    args = inputs()
    with torch.no_grad():
        for a, b in zip(r(*args), loaded(*args), strict=True):
            torch.testing.assert_close(a, b)


def test_as_tensors_keeps_integers():
    ints, floats = as_tensors(np.arange(3), np.ones(2, np.float64))
    assert ints.dtype == torch.int64 and floats.dtype == torch.float32
