"""Baselines the learned rankers have to beat: BM25 and popularity.

- **BM25**: the lexical index serving uses (`shoprank.core.lexical`: Lucene BM25, k1=1.2,
  b=0.75, over the product's fields, with a tokenizer that keeps model numbers, sizes and
  units; the top k from tantivy), ranking the full catalog for each held-out query, scored with the
  same judged metrics as the encoder (`metrics.mean_metrics`: NDCG@10, Recall@10/100,
  MRR).
- **Popularity**: one list for every query, products by train-split click count. Skipped
  (with a note) when the data has no behaviour events.
- **Session popularity**: the behaviour counterpart of the fusion variants: held-out
  impressions scored by the shown product's train-split click count, with the same click
  AUC and purchase-NDCG@10 that `behaviour.evaluate_sessions` reports.

    from shoprank.training.baselines import run_baselines
    run_baselines(data, split="test")  # {"bm25": {...}, "popularity": {...}, ...}
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from shoprank.core.lexical import LexicalIndex
from shoprank.data.datasets import ShopData, judgement_grades
from shoprank.data.metrics import CLICK_AUC, PURCHASE_NDCG_AT_10, mean_metrics, ndcg_at_k, roc_auc

TOP_K = 100
NO_EVENTS = "skipped: the data has no behaviour events"


# ---------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------
def split_queries(data: ShopData, split: str) -> pd.DataFrame:
    """The queries of `split` (query_id, query); ValueError if there are none."""
    queries = data.queries[data.queries["split"] == split]
    if queries.empty:
        raise ValueError(f"no queries in split {split!r}")
    return queries


# ---------------------------------------------------------------------------------------
# BM25
# ---------------------------------------------------------------------------------------
def bm25_rankings(
    index: LexicalIndex,
    queries: Sequence[str],
    query_ids: Sequence[int],
    product_ids: np.ndarray,
    k: int = TOP_K,
) -> dict[int, list[int]]:
    """{query_id: the k best product ids by BM25, best first}; a query whose words the
    catalog never uses ranks nothing."""
    return {
        int(q): product_ids[index.search(text, k)[0]].tolist()
        for q, text in zip(query_ids, queries, strict=True)
    }


def bm25_metrics(data: ShopData, split: str = "test", index: LexicalIndex | None = None) -> dict:
    """Judged metrics of full-catalog BM25 retrieval on the `split` queries."""
    queries = split_queries(data, split)
    index = index or LexicalIndex.build(data.catalog)
    rankings = bm25_rankings(
        index,
        queries["query"].tolist(),
        queries["query_id"].tolist(),
        data.catalog["product_id"].to_numpy(np.int64),
    )
    return mean_metrics(rankings, judgement_grades(data, list(rankings)))


# ---------------------------------------------------------------------------------------
# Popularity
# ---------------------------------------------------------------------------------------
def click_counts(events: pd.DataFrame, product_ids: np.ndarray, split: str = "train") -> np.ndarray:
    """Clicks per catalog product (in `product_ids` order) over the events of `split`."""
    clicks = events[(events["split"] == split) & (events["event_type"] == "click")]
    counts = clicks["product_id"].value_counts()
    return counts.reindex(product_ids).fillna(0).to_numpy(np.float64)


def popularity_ranking(data: ShopData, k: int = TOP_K) -> list[int] | None:
    """The k most-clicked products (train split), ties by catalog order; None without events."""
    if data.events is None:
        return None
    product_ids = data.catalog["product_id"].to_numpy(np.int64)
    clicks = click_counts(data.events, product_ids)
    order = np.argsort(-clicks, kind="stable")[:k]
    return product_ids[order].tolist()


def popularity_metrics(data: ShopData, split: str = "test") -> dict:
    """Judged metrics of the same popularity list for every `split` query, or a skip note."""
    ranking = popularity_ranking(data)
    if ranking is None:
        return {"skipped": NO_EVENTS}
    query_ids = split_queries(data, split)["query_id"].tolist()
    rankings = {int(q): ranking for q in query_ids}
    return mean_metrics(rankings, judgement_grades(data, query_ids))


def session_popularity_metrics(data: ShopData, split: str = "test", seed: int = 0) -> dict:
    """Click AUC and purchase-NDCG@10 of held-out impressions scored by train clicks.

    Same examples and metrics as `behaviour.evaluate_sessions`: every impression of a
    `split` session is one example, labelled clicked/purchased within its session; NDCG is
    over each session with a purchase. Equal click counts are common, so NDCG breaks ties
    at random (seeded) rather than by the logged order, which would leak the production
    ranker's positions; AUC counts ties as one half.
    """
    if data.events is None:
        return {"skipped": NO_EVENTS}
    ev = data.events
    ev = ev[ev["split"] == split]
    keys = ["session_id", "product_id"]
    imp = ev[ev["event_type"] == "impression"][keys]
    clicked = ev[ev["event_type"] == "click"][keys].drop_duplicates().assign(clicked=1)
    bought = ev[ev["event_type"] == "purchase"][keys].drop_duplicates().assign(bought=1)
    imp = imp.merge(clicked, on=keys, how="left").merge(bought, on=keys, how="left").fillna(0)
    if imp.empty:
        return {"skipped": f"no impressions in split {split!r}"}
    clicks = pd.Series(
        click_counts(data.events, data.catalog["product_id"].to_numpy(np.int64)),
        index=data.catalog["product_id"].to_numpy(np.int64),
    )
    imp["score"] = imp["product_id"].map(clicks).fillna(0).to_numpy()
    imp["tie"] = np.random.default_rng(seed).random(len(imp))
    ndcgs = []
    with_purchase = imp[imp.groupby("session_id")["bought"].transform("max") > 0]
    for _, g in with_purchase.groupby("session_id"):
        ranked = g.sort_values(["score", "tie"], ascending=False)
        ndcgs.append(
            ndcg_at_k(range(len(ranked)), dict(enumerate(ranked["bought"].astype(int))), 10)
        )
    return {
        CLICK_AUC: roc_auc(imp["clicked"].to_numpy(), imp["score"].to_numpy()),
        PURCHASE_NDCG_AT_10: float(np.mean(ndcgs)) if ndcgs else float("nan"),
        "sessions_with_purchase": len(ndcgs),
        "impressions": len(imp),
    }


def run_baselines(data: ShopData, split: str = "test") -> dict[str, object]:
    """Every baseline on `split`: {"split", "bm25", "popularity", "session_popularity"}.

    Sections that cannot run (no events) hold {"skipped": reason} instead of metrics.
    """
    return {
        "split": split,
        "bm25": bm25_metrics(data, split),
        "popularity": popularity_metrics(data, split),
        "session_popularity": session_popularity_metrics(data, split),
    }
