"""Baselines the learned rankers have to beat: BM25 and popularity.

- **BM25** (`bm25s`, Lucene variant, k1=1.5, b=0.75) over `datasets.product_text`, ranking
  the full catalog for each held-out query, scored with the same judged metrics as the
  encoder (`metrics.mean_metrics`: NDCG@10, Recall@10/100, MRR). Tokens are lower-cased
  words of two or more characters, English stopwords removed, plurals folded by the
  S-stemmer (Harman 1991) so "sofas" finds "sofa" without a stemming dependency.
- **Popularity**: one list for every query, products by train-split click count. Skipped
  (with a note) when the data has no behaviour events.
- **Session popularity**: the behaviour counterpart of the fusion variants: held-out
  impressions scored by the shown product's train-split click count, with the same click
  AUC and purchase-NDCG@10 that `behaviour.evaluate_sessions` reports.

    from shoprank.training.baselines import run_baselines
    run_baselines(data, split="test")  # {"bm25": {...}, "popularity": {...}, ...}
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import bm25s
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from shoprank.datasets import ShopData, judgement_grades, product_text
from shoprank.metrics import (
    CLICK_AUC,
    PURCHASE_NDCG_AT_10,
    mean_metrics,
    ndcg_at_k,
    roc_auc,
    top_k_rankings,
)

# bm25s sets its own logger to DEBUG on import, which prints index-building chatter
# through any root handler; its warnings still come through.
logging.getLogger("bm25s").setLevel(logging.WARNING)

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
def s_stem(word: str) -> str:
    """Harman's S-stemmer: fold English plurals ("sofas" -> "sofa", "batteries" -> "battery")."""
    if len(word) > 3 and word.endswith("ies") and not word.endswith(("eies", "aies")):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("es") and not word.endswith(("aes", "ees", "oes")):
        return word[:-1]
    if len(word) > 2 and word.endswith("s") and not word.endswith(("us", "ss")):
        return word[:-1]
    return word


def _stem_words(words: list[str]) -> list[str]:
    return [s_stem(w) for w in words]


def tokenize(texts: Sequence[str], *, return_ids: bool) -> bm25s.tokenization.Tokenized | list:
    """bm25s tokens: lower-cased, English stopwords removed, S-stemmed."""
    return bm25s.tokenize(
        list(texts),
        stopwords="en",
        stemmer=_stem_words,
        return_ids=return_ids,
        show_progress=False,
    )


@dataclass
class BM25Index:
    """A bm25s index over catalog texts, row i = product_ids[i]."""

    model: bm25s.BM25
    product_ids: np.ndarray

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """BM25 score of every catalog product for each query, (Q, N) float32."""
        tokens = tokenize(queries, return_ids=False)
        out = np.zeros((len(tokens), len(self.product_ids)), dtype=np.float32)
        for i, words in enumerate(
            tqdm(tokens, desc="bm25", leave=False, disable=len(tokens) < 500)
        ):
            # Words the catalog never uses are dropped; a query with none scores all 0.
            out[i] = self.model.get_scores(words)
        return out


def build_bm25(catalog: pd.DataFrame, k1: float = 1.5, b: float = 0.75) -> BM25Index:
    """Index `datasets.product_text` of every catalog row."""
    texts = product_text(catalog)
    model = bm25s.BM25(k1=k1, b=b)
    model.index(tokenize(texts, return_ids=True), show_progress=False)
    return BM25Index(model, catalog["product_id"].to_numpy(np.int64))


def bm25_rankings(
    index: BM25Index, queries: Sequence[str], query_ids: Sequence[int], k: int = TOP_K
) -> dict[int, list[int]]:
    """{query_id: the k best product ids by BM25, best first}."""
    return top_k_rankings(index.scores(queries), query_ids, index.product_ids, k)


def bm25_metrics(data: ShopData, split: str = "test", index: BM25Index | None = None) -> dict:
    """Judged metrics of full-catalog BM25 retrieval on the `split` queries."""
    queries = split_queries(data, split)
    index = index or build_bm25(data.catalog)
    rankings = bm25_rankings(index, queries["query"].tolist(), queries["query_id"].tolist())
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
