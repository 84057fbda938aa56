"""From behaviour logs to fusion-ranker training examples, and the training loop (stage B).

Each impression in a session becomes one example: (query, the shopper's history *before*
that session, shown product, position, clicked?). History is built in time order from
earlier clicks and purchases only, so no example sees its own future. Every example also
carries `negatives` products shown in other sessions, scored as if shown at the top.

Stage B trains the behaviour part of the fusion ranker on these clicks while the
relevance model from stage A (training/hybrid.py) stays frozen: the lexical and
shopper↔item features of every (query, product) pair are computed once, up front, with
the same functions serving uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from shoprank import contract
from shoprank.core.features import ITEM_FEATURES, USER_ITEM_FEATURES, ItemTables, user_item_features
from shoprank.core.lexical import LEXICAL_FEATURES, LexicalIndex
from shoprank.data.datasets import HISTORY_EVENTS
from shoprank.data.metrics import CLICK_AUC, PURCHASE_NDCG_AT_10, ndcg_at_k, roc_auc
from shoprank.models.fusion import (
    TRAINING_POSITIONS,
    FusionConfig,
    FusionRanker,
    Relevance,
    as_tensors,
)


@dataclass
class Examples:
    """Impression-level examples as aligned arrays (M rows)."""

    query_rows: np.ndarray  # (M,) row into the query tables (embeddings, texts)
    history_rows: np.ndarray  # (M, H) catalog rows, 0-padded
    history_mask: np.ndarray  # (M, H) float32, 1 where a history item is present
    item_rows: np.ndarray  # (M,) catalog row of the shown product
    positions: np.ndarray  # (M,) shown position
    clicked: np.ndarray  # (M,) float32 label
    purchased: np.ndarray  # (M,) float32
    session_ids: np.ndarray  # (M,)
    # Filled by `attach_features`: the scored products (the shown one first, then the
    # negatives) and their lexical and shopper↔item features.
    candidates: np.ndarray = field(default_factory=lambda: np.zeros((0, 1), np.int64))
    lexical: np.ndarray = field(default_factory=lambda: np.zeros((0, 1, 0), np.float32))
    user_item: np.ndarray = field(default_factory=lambda: np.zeros((0, 1, 0), np.float32))

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


def attach_features(
    ex: Examples,
    query_tokens: list[list[str]],
    lexical: LexicalIndex,
    tables: ItemTables,
    negatives: int = 0,
    seed: int = 0,
    chunk: int = 8192,
) -> Examples:
    """Choose `negatives` products per example (from the products shown in other
    sessions, so popularity cannot tell them apart and only relevance can) and compute
    the lexical and shopper↔item features of every scored product, once."""
    rng = np.random.default_rng(seed)
    m = len(ex)
    negs = rng.choice(ex.item_rows, size=(m, negatives)) if negatives and m else None
    cands = (
        ex.item_rows[:, None] if negs is None else np.concatenate([ex.item_rows[:, None], negs], 1)
    )
    lex = np.zeros((*cands.shape, len(LEXICAL_FEATURES)), np.float32)
    order = np.argsort(ex.query_rows, kind="stable")
    bounds = np.flatnonzero(np.diff(ex.query_rows[order])) + 1
    for group in tqdm(np.split(order, bounds), desc="lexical features", leave=False):
        if not len(group):
            continue
        rows = np.unique(cands[group])
        feats = lexical.features(query_tokens[ex.query_rows[group[0]]], rows)
        lex[group] = feats[np.searchsorted(rows, cands[group])]
    ui = np.zeros((*cands.shape, len(USER_ITEM_FEATURES)), np.float32)
    for start in range(0, m, chunk):
        sl = slice(start, start + chunk)
        ui[sl] = user_item_features(tables, ex.history_rows[sl], ex.history_mask[sl], cands[sl])
    ex.candidates, ex.lexical, ex.user_item = cands, lex, ui
    return ex


def _scores(
    ranker: FusionRanker,
    q_emb: torch.Tensor,
    item_emb: torch.Tensor,
    item_feats: torch.Tensor,
    ex: Examples,
    idx: np.ndarray,
    columns: slice = slice(None),
) -> tuple[torch.Tensor, torch.Tensor]:
    """(relevance, full score), each (b, c), for examples `idx` and candidate `columns`."""
    cands = torch.from_numpy(ex.candidates[idx][:, columns])
    history_rows = torch.from_numpy(ex.history_rows[idx])
    mask, lexical, user_item = as_tensors(
        ex.history_mask[idx], ex.lexical[idx][:, columns], ex.user_item[idx][:, columns]
    )
    return ranker(
        q_emb[torch.from_numpy(ex.query_rows[idx])],
        item_emb[history_rows] * mask.unsqueeze(-1),
        mask,
        item_emb[cands],
        lexical,
        item_feats[cands],
        user_item,
    )


def train_fusion(
    ranker: FusionRanker,
    query_embeddings: np.ndarray,
    item_embeddings: np.ndarray,
    tables: ItemTables,
    examples: Examples,
    epochs: int = 3,
    batch_size: int = 1024,
    lr: float = 0.02,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Binary cross-entropy on clicks, with a per-position bias; returns the loss curve.

    Logged impressions are all plausible answers to their query, so on their own they
    teach the ranker that relevance hardly matters and popularity does. The negatives
    attached to each example (label 0, scored as if shown at the top) keep the relevance
    term honest for the candidates the server ranks.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    q_emb, item_emb, item_feats = as_tensors(
        query_embeddings, item_embeddings, tables.item_features
    )
    labels = torch.from_numpy(examples.clicked)
    positions = torch.from_numpy(examples.positions)
    ranker.freeze_relevance()
    params = [p for p in ranker.parameters() if p.requires_grad]
    optim = torch.optim.Adam(params, lr=lr)
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
            _, full = _scores(ranker, q_emb, item_emb, item_feats, examples, idx)
            shown = full[:, 0] + ranker.position_bias[positions[idx]]
            loss = F.binary_cross_entropy_with_logits(shown, labels[idx])
            if full.shape[1] > 1:
                negative = full[:, 1:] + ranker.position_bias[0]
                loss = loss + F.binary_cross_entropy_with_logits(
                    negative, torch.zeros_like(negative)
                )
            optim.zero_grad()
            loss.backward()
            optim.step()
            steps += 1
            if steps % 10 == 0:
                curve.append({"step": float(steps), "loss": loss.item()})
                bar.set_postfix(loss=f"{loss.item():.4f}", alpha=f"{ranker.alpha:.3f}")
    ranker.eval()
    return curve


@torch.no_grad()
def impression_scores(
    ranker: FusionRanker,
    query_embeddings: np.ndarray,
    item_embeddings: np.ndarray,
    tables: ItemTables,
    examples: Examples,
    relevance_only: bool = False,
) -> np.ndarray:
    """The score of every shown product (M,): the full score, or the relevance alone."""
    if len(examples) == 0:
        raise ValueError("no held-out impressions to evaluate on")
    q_emb, item_emb, item_feats = as_tensors(
        query_embeddings, item_embeddings, tables.item_features
    )
    parts = []
    for s in range(0, len(examples), 4096):
        idx = np.arange(s, min(s + 4096, len(examples)))
        rel, full = _scores(ranker, q_emb, item_emb, item_feats, examples, idx, slice(0, 1))
        parts.append((rel if relevance_only else full)[:, 0])
    return torch.cat(parts).numpy()


def purchase_ndcgs(scores: np.ndarray, examples: Examples) -> np.ndarray:
    """NDCG@10 of the purchases in each session that has one, ranking its shown products
    by `scores` (M,): one value per such session, in session-id order."""
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
    ranker: FusionRanker,
    query_embeddings: np.ndarray,
    item_embeddings: np.ndarray,
    tables: ItemTables,
    examples: Examples,
    relevance_only: bool = False,
) -> tuple[dict[str, float], np.ndarray]:
    """Click AUC over impressions and purchase-NDCG@10 over each session with a purchase,
    plus the per-session NDCGs behind it (session-id order: paired across rankers scored
    on the same examples), from one scoring pass."""
    scores = impression_scores(
        ranker, query_embeddings, item_embeddings, tables, examples, relevance_only
    )
    ndcgs = purchase_ndcgs(scores, examples)
    metrics = {
        CLICK_AUC: roc_auc(examples.clicked, scores),
        PURCHASE_NDCG_AT_10: float(np.mean(ndcgs)) if len(ndcgs) else float("nan"),
        "sessions_with_purchase": len(ndcgs),
        "impressions": len(examples),
    }
    return metrics, ndcgs


def make_ranker(fusion: str, dim: int, relevance: Relevance) -> FusionRanker:
    """A fresh FusionRanker of kind `fusion` on top of the stage-A relevance model."""
    ranker = FusionRanker(FusionConfig(dim=dim, fusion=fusion, relevance_hidden=relevance.hidden))
    ranker.relevance.load_state_dict(relevance.state_dict())
    ranker.freeze_relevance()
    return ranker


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
            "alpha": r.alpha,
            "relevance_weight": float(r.log_gamma.exp()),
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
    relevance: Relevance,
    query_embeddings: np.ndarray,
    item_embeddings: np.ndarray,
    tables: ItemTables,
    train_ex: Examples,
    val_ex: Examples,
    test_ex: Examples,
    **train_kwargs,
) -> dict[str, FusionResult]:
    """Train each fusion variant on the same examples; evaluate on val and test sessions."""
    out = {}
    dim = item_embeddings.shape[1]
    for fusion in fusions:
        ranker = make_ranker(fusion, dim, relevance)
        curve = train_fusion(
            ranker, query_embeddings, item_embeddings, tables, train_ex, **train_kwargs
        )
        test, test_ndcgs = score_sessions(
            ranker, query_embeddings, item_embeddings, tables, test_ex
        )
        val, _ = score_sessions(ranker, query_embeddings, item_embeddings, tables, val_ex)
        out[fusion] = FusionResult(ranker, curve, val, test, test_ndcgs)
    return out
