"""From behaviour logs to fusion-ranker training examples, and the training loop itself.

Each impression in a session becomes one example: (query, the shopper's history *before*
that session, shown product, position, clicked?). History is built in time order from
earlier clicks and purchases only, so no example sees its own future.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from shoprank import contract
from shoprank.datasets import HISTORY_EVENTS
from shoprank.fusion import (
    ITEM_FEATURES,
    TRAINING_POSITIONS,
    USER_ITEM_FEATURES,
    FusionRanker,
)
from shoprank.metrics import CLICK_AUC, PURCHASE_NDCG_AT_10, ndcg_at_k, roc_auc


@dataclass
class Examples:
    """Impression-level examples as aligned arrays (M rows)."""

    query_rows: np.ndarray  # (M,) row into the query-embedding table
    history_rows: np.ndarray  # (M, H) catalog rows, 0-padded
    history_mask: np.ndarray  # (M, H) float32, 1 where a history item is present
    item_rows: np.ndarray  # (M,) catalog row of the shown product
    positions: np.ndarray  # (M,) shown position
    clicked: np.ndarray  # (M,) float32 label
    purchased: np.ndarray  # (M,) float32
    session_ids: np.ndarray  # (M,)

    def __len__(self) -> int:
        return int(self.item_rows.shape[0])


def item_features(
    events: pd.DataFrame,
    product_ids: np.ndarray,
    prior_weight: float = 20.0,
) -> np.ndarray:
    """Standardised per-item features in ITEM_FEATURES order, shape (N, F).

    The CTR feature is clicks over *expected* clicks (COEC): each impression expects the
    shop-wide CTR of the position it was shown at, so a product is not rewarded for having
    been shown at the top. It is smoothed with `prior_weight` pseudo-impressions so that a
    product shown twice and clicked once is not the best product in the shop.
    """
    impressions = events[events["event_type"] == "impression"]
    clicks_ev = events[events["event_type"] == "click"]
    position_ctr = (
        clicks_ev.groupby("position").size() / impressions.groupby("position").size()
    ).fillna(0.0)
    expected = (
        impressions["position"]
        .map(position_ctr)
        .fillna(0.0)
        .groupby(impressions["product_id"])
        .sum()
        .reindex(product_ids)
        .fillna(0.0)
    )
    clicks = clicks_ev.groupby("product_id").size().reindex(product_ids).fillna(0.0)
    coec = (clicks + prior_weight) / (expected + prior_weight)
    feats = np.stack([np.log1p(clicks.to_numpy()), coec.to_numpy()], axis=1).astype(np.float32)
    assert feats.shape[1] == len(ITEM_FEATURES)
    std = feats.std(axis=0)
    return (feats - feats.mean(axis=0)) / np.where(std > 0, std, 1.0)


def session_histories(
    events: pd.DataFrame, row_of: dict[int, int], max_history: int = contract.MAX_HISTORY
) -> dict[int, list[int]]:
    """Catalog rows each session's shopper clicked or bought in *earlier* sessions."""
    sessions = (
        events.groupby("session_id")
        .agg(user_id=("user_id", "first"), timestamp=("timestamp", "min"))
        .sort_values(["user_id", "timestamp"])
    )
    acts = events[events["event_type"].isin(HISTORY_EVENTS)]
    acts_by_session = acts.sort_values("timestamp").groupby("session_id")["product_id"].apply(list)
    out: dict[int, list[int]] = {}
    current_user, history = None, []
    for sid, user in zip(sessions.index, sessions["user_id"], strict=True):
        if user != current_user:
            current_user, history = user, []
        out[int(sid)] = history[-max_history:]
        history = history + [row_of[p] for p in acts_by_session.get(sid, []) if p in row_of]
    return out


def build_examples(
    events: pd.DataFrame,
    split: str,
    query_row_of: dict[int, int],
    row_of: dict[int, int],
    histories: dict[int, list[int]],
    max_history: int = contract.MAX_HISTORY,
) -> Examples:
    """Impressions of `split` as examples, labelled by clicks/purchases in the same session."""
    ev = events[events["split"] == split]
    imp = ev[ev["event_type"] == "impression"]
    imp = imp[imp["product_id"].isin(row_of) & imp["query_id"].isin(query_row_of)]
    keys = ["session_id", "product_id"]
    clicked = ev[ev["event_type"] == "click"][keys].drop_duplicates().assign(_c=1.0)
    bought = ev[ev["event_type"] == "purchase"][keys].drop_duplicates().assign(_p=1.0)
    imp = imp.merge(clicked, on=keys, how="left").merge(bought, on=keys, how="left")
    m = len(imp)
    hist_rows = np.zeros((m, max_history), dtype=np.int64)
    hist_mask = np.zeros((m, max_history), dtype=np.float32)
    for i, sid in enumerate(imp["session_id"].to_numpy()):
        h = histories.get(int(sid), [])[-max_history:]
        hist_rows[i, : len(h)] = h
        hist_mask[i, : len(h)] = 1.0
    return Examples(
        query_rows=imp["query_id"].map(query_row_of).to_numpy(np.int64),
        history_rows=hist_rows,
        history_mask=hist_mask,
        item_rows=imp["product_id"].map(row_of).to_numpy(np.int64),
        positions=np.clip(imp["position"].to_numpy(np.int64), 0, TRAINING_POSITIONS - 1),
        clicked=imp["_c"].fillna(0.0).to_numpy(np.float32),
        purchased=imp["_p"].fillna(0.0).to_numpy(np.float32),
        session_ids=imp["session_id"].to_numpy(np.int64),
    )


def _batch_scores(
    ranker: FusionRanker,
    q_emb: torch.Tensor,
    ex: Examples,
    idx: np.ndarray,
) -> torch.Tensor:
    q = q_emb[torch.from_numpy(ex.query_rows[idx])]
    rows = torch.from_numpy(ex.history_rows[idx])
    mask = torch.from_numpy(ex.history_mask[idx])
    items = torch.from_numpy(ex.item_rows[idx]).unsqueeze(1)
    return ranker.score_candidates(q, rows, mask, items).squeeze(1)


def _negative_loss(
    ranker: FusionRanker,
    q_emb: torch.Tensor,
    ex: Examples,
    idx: np.ndarray,
    negatives: int,
    rng: np.random.Generator,
) -> torch.Tensor:
    # Negatives are products shown in *other* sessions of the batch: they come from the
    # same exposure distribution as the positives, so popularity cannot tell them apart
    # and only the query↔item text term can. (Uniform catalog samples are mostly never-
    # shown items, which teaches "popular beats relevant" instead.)
    rows = torch.from_numpy(rng.choice(ex.item_rows[idx], size=(len(idx), negatives)))
    logits = (
        ranker.score_candidates(
            q_emb[torch.from_numpy(ex.query_rows[idx])],
            torch.from_numpy(ex.history_rows[idx]),
            torch.from_numpy(ex.history_mask[idx]),
            rows,
        )
        + ranker.position_bias[0]
    )
    return F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))


def train_fusion(
    ranker: FusionRanker,
    query_embeddings: np.ndarray,
    examples: Examples,
    epochs: int = 3,
    batch_size: int = 1024,
    lr: float = 0.02,
    seed: int = 0,
    negatives: int = 4,
) -> list[dict[str, float]]:
    """Binary cross-entropy on clicks, with a per-position bias; returns the loss curve.

    Logged impressions are all plausible answers to their query, so on their own they
    teach the ranker that text relevance hardly matters and popularity does. `negatives`
    products from other sessions of the batch per impression (label 0, scored as if shown
    at the top) keep the text term honest for the full-catalog ranking the server does.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    q_emb = torch.from_numpy(query_embeddings)
    labels = torch.from_numpy(examples.clicked)
    positions = torch.from_numpy(examples.positions)
    optim = torch.optim.Adam(ranker.parameters(), lr=lr)
    curve: list[dict[str, float]] = []
    ranker.train()
    steps = 0
    for epoch in range(epochs):
        order = rng.permutation(len(examples))
        bar = tqdm(
            range(0, len(order), batch_size), desc=f"fusion epoch {epoch + 1}/{epochs}", leave=False
        )
        for start in bar:
            idx = order[start : start + batch_size]
            logits = _batch_scores(ranker, q_emb, examples, idx)
            logits = logits + ranker.position_bias[positions[idx]]
            loss = F.binary_cross_entropy_with_logits(logits, labels[idx])
            if negatives:
                loss = loss + _negative_loss(ranker, q_emb, examples, idx, negatives, rng)
            optim.zero_grad()
            loss.backward()
            optim.step()
            steps += 1
            if steps % 10 == 0:
                curve.append({"step": float(steps), "loss": loss.item()})
                bar.set_postfix(loss=f"{loss.item():.4f}", alpha=f"{float(ranker.alpha):.3f}")
    ranker.eval()
    return curve


@torch.no_grad()
def _impression_scores(
    ranker: FusionRanker, query_embeddings: np.ndarray, examples: Examples
) -> np.ndarray:
    if len(examples) == 0:
        raise ValueError("no held-out impressions to evaluate on")
    q_emb = torch.from_numpy(query_embeddings)
    return torch.cat(
        [
            _batch_scores(ranker, q_emb, examples, np.arange(s, min(s + 4096, len(examples))))
            for s in range(0, len(examples), 4096)
        ]
    ).numpy()


def _purchase_ndcgs(scores: np.ndarray, examples: Examples) -> np.ndarray:
    frame = pd.DataFrame(
        {"sid": examples.session_ids, "score": scores, "bought": examples.purchased}
    )
    ndcgs = []
    for _, g in frame[frame.groupby("sid")["bought"].transform("max") > 0].groupby("sid"):
        ranked = g.sort_values("score", ascending=False)
        grades = dict(enumerate(g["bought"].astype(int)))
        ndcgs.append(ndcg_at_k(list(ranked.index.map(g.index.get_loc)), grades, 10))
    return np.array(ndcgs)


def score_sessions(
    ranker: FusionRanker, query_embeddings: np.ndarray, examples: Examples
) -> tuple[dict[str, float], np.ndarray]:
    """`evaluate_sessions`' metrics and the per-session purchase-NDCG@10 behind them (each
    session with a purchase, in session-id order: paired across rankers scored on the same
    examples), from one scoring pass."""
    scores = _impression_scores(ranker, query_embeddings, examples)
    ndcgs = _purchase_ndcgs(scores, examples)
    metrics = {
        CLICK_AUC: roc_auc(examples.clicked, scores),
        PURCHASE_NDCG_AT_10: float(np.mean(ndcgs)) if len(ndcgs) else float("nan"),
        "sessions_with_purchase": len(ndcgs),
        "impressions": len(examples),
    }
    return metrics, ndcgs


def evaluate_sessions(
    ranker: FusionRanker,
    query_embeddings: np.ndarray,
    examples: Examples,
) -> dict[str, float]:
    """Click AUC over impressions and purchase-NDCG@10 over each session's shown items."""
    return score_sessions(ranker, query_embeddings, examples)[0]


def item_attributes(catalog: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per-item category id, brand id and log price (missing prices → the median)."""
    categories, _ = pd.factorize(catalog["category"].fillna(""), sort=True)
    brands, _ = pd.factorize(catalog["brand"].fillna(""), sort=True)
    price = pd.to_numeric(catalog["price"], errors="coerce").to_numpy(np.float64)
    log_price = np.log1p(np.where(np.isfinite(price) & (price > 0), price, np.nan))
    log_price = np.where(
        np.isnan(log_price),
        np.nanmedian(log_price) if np.isfinite(log_price).any() else 0.0,
        log_price,
    )
    return {
        "categories": categories.astype(np.int64),
        "brands": brands.astype(np.int64),
        "log_prices": log_price.astype(np.float32),
    }


def make_ranker(
    fusion: str, item_emb: np.ndarray, feats: np.ndarray, attributes: dict[str, np.ndarray]
) -> FusionRanker:
    """A fresh FusionRanker of kind `fusion` over the catalog tables."""
    return FusionRanker(
        torch.from_numpy(item_emb),
        torch.from_numpy(feats),
        torch.from_numpy(attributes["categories"]),
        torch.from_numpy(attributes["brands"]),
        torch.from_numpy(attributes["log_prices"]),
        fusion=fusion,
    )


@dataclass
class FusionResult:
    """One trained fusion variant and how it did."""

    ranker: FusionRanker
    curve: list[dict[str, float]]
    val: dict[str, float]
    test: dict[str, float]
    test_session_ndcgs: np.ndarray  # per test session with a purchase, session-id order

    def summary(self) -> dict:
        r = self.ranker
        return {
            "val": self.val,
            "test": self.test,
            **self.test,  # test metrics at the top level, as for the baselines
            "alpha": float(r.alpha.detach()),
            "feature_weights": dict(
                zip(ITEM_FEATURES, r.feature_weights.detach().tolist(), strict=True)
            ),
            "user_item_weights": dict(
                zip(USER_ITEM_FEATURES, r.user_item_weights.detach().tolist(), strict=True)
            ),
            "loss_curve": self.curve,
        }


def train_fusions(
    fusions: tuple[str, ...],
    item_emb: np.ndarray,
    feats: np.ndarray,
    attributes: dict[str, np.ndarray],
    q_emb: np.ndarray,
    train_ex: Examples,
    val_ex: Examples,
    test_ex: Examples,
    **train_kwargs,
) -> dict[str, FusionResult]:
    """Train each fusion variant on the same examples; evaluate on val and test sessions."""
    out = {}
    for fusion in fusions:
        ranker = make_ranker(fusion, item_emb, feats, attributes)
        curve = train_fusion(ranker, q_emb, train_ex, **train_kwargs)
        test, test_ndcgs = score_sessions(ranker, q_emb, test_ex)
        out[fusion] = FusionResult(
            ranker, curve, evaluate_sessions(ranker, q_emb, val_ex), test, test_ndcgs
        )
    return out
