"""Recommend mode: sequences, leave-last-out ranking, the sequential model and its export."""

import numpy as np
import pandas as pd
import pytest
import torch

from shoprank import contract
from shoprank.conversion.export import export_sequential
from shoprank.core.catalog import CatalogIndex
from shoprank.core.covisits import Blend, CoVisitConfig, count
from shoprank.core.recommender import Recommender, RecommendRequest, top_k_rows
from shoprank.core.shopper_vectors import ShopperVectors, left_pad
from shoprank.data.metrics import HIT_RATE_AT_10, MRR, NDCG_AT_10, next_item_metrics
from shoprank.models.sequential import SequentialConfig, SequentialRecommender
from shoprank.training import recommend


def test_sequences_are_ordered_deduplicated_and_split_leave_last_out():
    events = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 1, 1, 2, 2],
            "session_id": [1, 1, 2, 2, 3, 4, 4],
            "timestamp": [10, 11, 20, 21, 30, 5, 6],
            "event_type": ["click", "purchase", "impression", "click", "click", "click", "click"],
            "product_id": [100, 100, 999, 101, 102, 103, 104],
        }
    )
    row_of = {100: 0, 101: 1, 102: 2, 103: 3, 104: 4, 999: 9}
    seqs = recommend.user_sequences(events, row_of)
    assert seqs == [[0, 1, 2], [3, 4]]  # purchase of a clicked product adds nothing
    split = recommend.leave_last_out(seqs)
    assert split.test == [([0, 1], 2)] and split.val == [([0], 1)]
    assert split.train == [[0], [3, 4]]  # short shoppers only train


def test_target_ranks_leave_out_the_history_and_split_ties():
    scores = np.array([[5.0, 4.0, 3.0, 3.0, 1.0]])
    scorer = lambda histories: np.repeat(scores, len(histories), axis=0)  # noqa: E731
    # Target 2 ties with 3; product 0 (better) is in the history and does not count.
    ranks = recommend.target_ranks(scorer, [([0], 2)])
    assert ranks.tolist() == [2.5]  # 1 (product 1) + 1 + 0.5 (the tie)


def test_next_item_metrics_by_hand():
    m = next_item_metrics(np.array([1.0, 3.0, 20.0]))
    assert m[HIT_RATE_AT_10] == pytest.approx(2 / 3)
    assert m[NDCG_AT_10] == pytest.approx((1.0 + 1.0 / np.log2(4.0)) / 3)
    assert m[MRR] == pytest.approx((1 + 1 / 3 + 1 / 20) / 3)


@pytest.fixture(scope="module")
def cyclic():
    """A shop where the next product is always the following one on a ring of 40: order
    matters, popularity knows nothing (every product equally common)."""
    rng = np.random.default_rng(0)
    text = rng.normal(size=(40, 16)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    sequences = []
    for start in rng.integers(0, 40, 300):
        length = int(rng.integers(4, 9))
        sequences.append([(int(start) + i) % 40 for i in range(length)])
    return text, recommend.leave_last_out(sequences)


@pytest.mark.slow  # trains the sequential model for 15 epochs
def test_the_sequential_model_learns_what_comes_next(cyclic):
    text, seqs = cyclic
    config = recommend.SequentialTraining(dim=16, heads=2, epochs=15, patience=15, lr=5e-3)
    model, curve = recommend.train_sequential(seqs, text, config, max_len=8)
    scorer = recommend.sequential_scorer(model, torch.from_numpy(text))
    learned = recommend.evaluate(scorer, seqs.test)
    pop = recommend.evaluate(
        recommend.popularity_scorer(recommend.popularity(seqs.train, 40)), seqs.test
    )
    assert learned[HIT_RATE_AT_10] > 0.9 > pop[HIT_RATE_AT_10] * 2
    assert curve[-1]["loss"] < curve[0]["loss"]


def test_training_shows_progress_within_each_epoch(cyclic, capsys):
    """On real logs one epoch takes minutes: a bar over batches, not only over epochs."""
    text, seqs = cyclic
    config = recommend.SequentialTraining(dim=16, heads=2, epochs=2, batch_size=64)
    recommend.train_sequential(seqs, text, config, max_len=8)
    err = capsys.readouterr().err
    batches = -(-len(recommend.training_windows(seqs.train, 8)) // config.batch_size)
    for epoch in (1, 2):  # the first render of each epoch's bar (later ones are throttled)
        assert f"epoch {epoch}:   0%" in err and f"0/{batches}" in err


@pytest.mark.parametrize("batching", ["random", "length"])
def test_batches_cover_every_window_once(batching):
    rng = np.random.default_rng(0)
    windows = [list(range(int(n))) for n in rng.integers(2, 30, 300)]
    config = recommend.SequentialTraining(batch_size=32, batching=batching)
    batches = recommend.batches_of(windows, config, rng)
    assert sorted(np.concatenate(batches).tolist()) == list(range(300))
    spread = np.mean([np.ptp([len(windows[i]) for i in b]) for b in batches])
    assert (spread <= 5) == (batching == "length")  # by length: near-equal lengths together
    with pytest.raises(ValueError, match="random or length"):
        recommend.batches_of(windows, recommend.SequentialTraining(batching="size"), rng)


def test_the_served_shopper_vector_is_the_last_state():
    """`user_vector` skips the last block's other positions: the same vector as
    `user_states` at the last position, padding or not."""
    torch.manual_seed(0)
    model = SequentialRecommender(SequentialConfig(text_dim=8, num_items=5, dim=8, layers=2))
    for p in model.parameters():  # blocks start as the identity: make them do something
        torch.nn.init.normal_(p, std=0.3)
    model.eval()
    items = torch.randn(3, 6, 8)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1] * 6, [0, 0, 0, 0, 0, 1]], dtype=torch.float32)
    with torch.no_grad():
        want = model.encoder.user_states(items, mask)[:, -1]
        torch.testing.assert_close(model.encoder.user_vector(items, mask), want)


def test_new_products_are_their_text_alone():
    model = SequentialRecommender(SequentialConfig(text_dim=8, num_items=3, dim=8))
    with torch.no_grad():
        model.item_id.weight.fill_(1.0)
    text = torch.randn(5, 8)
    vectors = model.item_vectors(text)
    with torch.no_grad():
        torch.testing.assert_close(vectors[3:], model.project(text[3:]))  # rows 3, 4 are new
        torch.testing.assert_close(vectors[:3], model.project(text[:3]) + 1.0)


def test_left_pad_keeps_the_most_recent_last():
    rows, mask = left_pad([[1, 2, 3], [], [4]], max_len=2)
    assert rows.tolist() == [[2, 3], [0, 0], [0, 4]]
    assert mask.tolist() == [[1, 1], [0, 0], [0, 1]]


@pytest.mark.parametrize("weights", [(1.0, 0.0), (1.0, 2.0), (0.0, 1.0)])
def test_exported_recommender_serves_the_blend_training_measured(cyclic, tmp_path, weights):
    """The served recommender scores exactly as training's candidate of the same blend
    (sequential alone, blend, co-visits alone), and serves the rules: history left out,
    cold start by popularity, explanations that add up."""
    import json

    text, seqs = cyclic
    config = recommend.SequentialTraining(dim=16, heads=2, epochs=2)
    model, _ = recommend.train_sequential(seqs, text, config, max_len=contract.MAX_HISTORY)
    popularity = np.arange(40, dtype=np.float32)  # product 39 the most popular
    blend = Blend("blend", *weights)
    covisits = count(seqs.train, 40, CoVisitConfig())
    diff = export_sequential(
        model,
        text,
        popularity,
        tmp_path / "seq.onnx",
        tmp_path / "vectors.npz",
        blend=blend,
        covisits=covisits,
    )
    assert diff < 1e-3
    catalog = CatalogIndex(
        product_ids=np.arange(40, dtype=np.int64) + 1000,
        titles=np.array([f"p{i}".encode() for i in range(40)], dtype=object),
    )
    (tmp_path / contract.SEQUENTIAL_ONNX_FILE).write_bytes((tmp_path / "seq.onnx").read_bytes())
    (tmp_path / contract.ITEM_VECTORS_FILE).write_bytes((tmp_path / "vectors.npz").read_bytes())
    shoppers, served_popularity = ShopperVectors.load(tmp_path)
    assert shoppers.blend == blend
    rec = Recommender(shoppers, served_popularity, catalog)
    history = np.array([3, 4, 5])
    (warm, cold) = rec.recommend(
        [RecommendRequest(history, 5, explain=True), RecommendRequest(history[:0], 3)]
    )
    dots = recommend.sequential_scorer(model, torch.from_numpy(text))
    want = recommend.blend_scorer(dots, covisits, blend, popularity)([history.tolist()])[0]
    want[history] = -np.inf
    np.testing.assert_array_equal(warm.product_ids, catalog.product_ids[top_k_rows(want, 5)])
    np.testing.assert_allclose(warm.scores, want[top_k_rows(want, 5)], rtol=1e-4, atol=1e-4)
    assert not set(warm.product_ids) & set(catalog.product_ids[history])  # history left out
    assert cold.product_ids.tolist() == [1039, 1038, 1037]  # cold start: popularity
    for score, note in zip(warm.scores, warm.explanations, strict=True):
        parts = json.loads(note)["parts"]
        assert sum(parts.values()) == pytest.approx(float(score), abs=1e-5)
        assert ("sequential" in parts) == bool(weights[0])
        assert ("cooccurrence" in parts) == bool(weights[1])


def test_covisits_count_neighbours_by_distance_and_direction():
    config = CoVisitConfig(window=2, backward=0.5, decay=0.5, degree_power=0.0)
    covisits = count([[0, 1, 2]], 4, config)
    dense = covisits.scores([[0], [1], [2], [3]])
    # 0→1 next (1), 0→2 two steps on (0.5); backwards half as much.
    np.testing.assert_allclose(dense[0], [0, 1.0, 0.5, 0])
    np.testing.assert_allclose(dense[1], [0.5, 0, 1.0, 0])
    np.testing.assert_allclose(dense[2], [0.25, 0.5, 0, 0])
    assert not dense[3].any()  # never seen: no neighbours
    # The most recent history product votes most: 1, then 2^-1.5 for the one before.
    votes = count([[0, 1, 2]], 4, CoVisitConfig(window=2, backward=0.5, decay=0.5)).votes([5, 7])
    np.testing.assert_allclose(votes[1], [2**-1.5, 1.0])
    # Row normalisation: a row's total^p divides it.
    normed = count([[0, 1, 2]], 4, CoVisitConfig(window=2, backward=0.5, decay=0.5))
    np.testing.assert_allclose(normed.scores([[0]])[0], dense[0] / 1.5**0.3, rtol=1e-6)
    rows = np.array([[2, -1, 1]])
    np.testing.assert_allclose(covisits.scores_at([[0]], rows), [[0.5, 0.0, 1.0]])


def test_the_served_model_never_loses_to_a_baseline_on_validation():
    def m(hr, ndcg):
        return {HIT_RATE_AT_10: hr, NDCG_AT_10: ndcg}

    val = {
        "popularity": m(0.02, 0.01),
        "cooccurrence": m(0.10, 0.06),
        "sequential": m(0.09, 0.07),  # better NDCG, worse HR than co-visits: not fair
        "blend": m(0.11, 0.065),
    }
    candidates, baselines = recommend.CANDIDATES, recommend.BASELINES
    assert recommend.choose_served(val, candidates, baselines) == "blend"
    val["blend"] = m(0.11, 0.05)
    assert recommend.choose_served(val, candidates, baselines) == "cooccurrence"
    val["text_only"] = m(0.2, 0.1)  # a baseline beats every candidate: loud failure
    with pytest.raises(recommend.RecommendationError, match=r"text_only hr@10 0\.2000"):
        recommend.choose_served(val, candidates, baselines)


def test_evaluation_records_what_is_served_and_why(cyclic):
    text, seqs = cyclic
    sequences = [[*h, t] for h, t in seqs.test] + [s for s in seqs.train if len(s) < 3]
    config = recommend.SequentialTraining(dim=16, heads=2, epochs=2)
    chosen = recommend.evaluate_sequences(sequences, text, config, max_len=8)
    report = chosen.report
    served = report["served"]
    assert served["name"] == chosen.blend.name in recommend.CANDIDATES
    assert served["test"] == report[served["name"]]
    for baseline in recommend.BASELINES:
        for metric in (HIT_RATE_AT_10, NDCG_AT_10):
            assert served["val"][metric] >= report["validation"][baseline][metric]
    assert len(report["cooccurrence_variants"]) == len(recommend.COVISIT_GRID)
    assert len(report["blend_val_by_weight"]) == len(recommend.BLEND_WEIGHTS)


def test_top_k_rows_skips_excluded_and_breaks_ties_by_row():
    scores = np.array([1.0, 3.0, -np.inf, 3.0, 2.0])
    assert top_k_rows(scores, 3).tolist() == [1, 3, 4]
    assert top_k_rows(np.full(3, -np.inf), 2).size == 0


def test_explanation_lists_each_history_product_once():
    import json

    from shoprank.core.scoring import explanation

    history_ids = np.array([7, 8, 7, 9])
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]], np.float32)
    note = json.loads(
        explanation(2.5, {"a": 2.0, "b": 0.5}, history_ids, vectors, np.array([1.0, 0.0]))
    )
    assert [h["product_id"] for h in note["similar_history"]] == [7, 9, 8]
    assert note["score"] == 2.5 and sum(note["parts"].values()) == 2.5


def test_seq_in_search_scores_held_out_sessions(tiny_artifacts):
    """The offline check of the sequential shopper vector in search: λ = 0 is the served
    score itself, and the sequential score is standardised over rows with a history."""
    from shoprank.training import seq_in_search as sis

    report = sis.run(sis.SeqInSearchConfig(out=tiny_artifacts.root, lambdas="0"))
    t = report["test_purchase_ndcg@10"]
    assert report["lambda"] == 0.0 and t["served_plus_sequential"] == t["served"]
    assert 0 < t["served"] <= 1 and 0 <= t["sequential_alone"] <= 1
    assert (tiny_artifacts.reports / "seq_in_search.json").exists()

    from shoprank.models.sequential import load_sequential
    from shoprank.training import behaviour

    seq = load_sequential(tiny_artifacts.sequential)
    n = seq.config.num_items
    with torch.no_grad():
        items = seq.item_vectors(torch.randn(n, seq.config.text_dim))
    hist = np.zeros((6, contract.MAX_HISTORY), np.int64)
    mask = np.zeros((6, contract.MAX_HISTORY), np.float32)
    hist[:4, :2], mask[:4, :2] = [[1, 2], [3, 4], [5, 6], [0, 7]], 1.0
    ex = behaviour.Examples(
        query_rows=np.zeros(6, np.int64),
        history_rows=hist % n,
        history_mask=mask,
        item_rows=np.arange(6) % n,
        positions=np.zeros(6, np.int64),
        clicked=np.zeros(6, np.float32),
        purchased=np.zeros(6, np.float32),
        session_ids=np.arange(6),
    )
    raw, warm = sis.raw_sequential_scores(seq, items, ex)
    assert warm.tolist() == [True] * 4 + [False] * 2
    assert raw[4] == 0 and raw[5] == 0  # no history: no sequential signal
    with torch.no_grad():
        user = seq.encoder.user_vector(items[torch.tensor([[3, 4]])], torch.ones(1, 2))[0]
    assert raw[1] == pytest.approx(float(user @ items[1]), rel=1e-5)


def test_search_serves_the_sequential_shopper_vector_within_the_rerank_depth(in_process):
    """The ranker adds weight·z(served recommender score) to in-depth candidates of rows with
    a history (the tiny training forces λ = 1), says so in the explanations, and leaves cold
    rows alone."""
    import copy
    import dataclasses
    import json

    from shoprank.core.ranking import Request, sequential_part

    assert in_process.ranker.shoppers is not None
    assert in_process.ranker.config.sequential_weight > 0
    ranker = copy.copy(in_process.ranker)  # a shallow re-rank depth, so some results are below it
    ranker.config = dataclasses.replace(ranker.config, depth=4, cold_start_depth=4)
    off = copy.copy(ranker)
    off.shoppers = None
    query = "usb cable"
    emb = in_process.encode([query])[0]
    history = np.array([3, 17, 42])
    warm = Request(query, emb, history, k=40, explain=True)  # below the depth too
    cold = Request(query, emb, history[:0], k=40, explain=True)
    (got_warm, got_cold), (base_warm, base_cold) = ranker.rank([warm, cold]), off.rank([warm, cold])
    np.testing.assert_array_equal(got_cold.product_ids, base_cold.product_ids)
    np.testing.assert_allclose(got_cold.scores, base_cold.scores, rtol=1e-6)
    # The served recommender's score, by its definition: w_seq·⟨u, e⟩ + w_co·log1p(co-visits).
    blend, covisits = ranker.shoppers.blend, ranker.shoppers.covisits
    user = ranker.shoppers.users([history])[0]
    co = covisits.scores([history])[0] if covisits is not None else None
    rows = ranker.catalog.rows_of(got_warm.product_ids)
    base = dict(zip(base_warm.product_ids.tolist(), base_warm.scores.tolist(), strict=True))
    in_depth = below = 0
    for row, pid, score, note in zip(
        rows, got_warm.product_ids, got_warm.scores, got_warm.explanations, strict=True
    ):
        parts = json.loads(note)["parts"]
        assert sum(parts.values()) == pytest.approx(float(score), rel=1e-4, abs=1e-3)
        if "below_rerank_depth" in parts:
            assert "sequential" not in parts
            below += 1
            continue
        in_depth += 1
        raw = blend.sequential * float(user @ ranker.shoppers.items[row])
        if blend.cooccurrence:
            raw += blend.cooccurrence * float(np.log1p(co[row]))
        want = float(sequential_part(np.array([raw]), ranker.config)[0])
        assert parts["sequential"] == pytest.approx(want, rel=1e-3, abs=1e-4)
        if pid in base:  # the same candidate without the signal scores exactly that less
            assert float(score) - base[pid] == pytest.approx(want, rel=1e-3, abs=1e-4)
    assert in_depth > 0 and below > 0
    for note in got_cold.explanations:
        assert "sequential" not in json.loads(note)["parts"]
