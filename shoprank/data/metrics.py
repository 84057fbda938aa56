"""Ranking and click metrics, in plain numpy so that each is easy to check by hand.

Conventions: a ranking is a sequence of product ids, best first; `grades` maps product id
to graded relevance (0..3, unjudged = 0). NDCG uses the exponential gain 2^rel - 1 and
the ideal ranking over *all* judged products of the query, so a system is not rewarded
for ignoring relevant products that it never retrieved.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

# Metric keys, as written to metrics.json and the reports.
NDCG_AT_10 = "ndcg@10"
RECALL_AT_10 = "recall@10"
RECALL_AT_100 = "recall@100"
MRR = "mrr"
QUERIES = "queries"
CLICK_AUC = "click_auc"
PURCHASE_NDCG_AT_10 = "purchase_ndcg@10"
HIT_RATE_AT_10 = "hr@10"  # recommendation: the held-out next product is in the top 10
USERS = "users"


def recall_key(k: int) -> str:
    """The metric key of Recall@k ("recall@100")."""
    return f"recall@{k}"


def dcg(gains: Sequence[float]) -> float:
    """Discounted cumulative gain of gains listed in rank order (rank 1 first)."""
    g = np.asarray(gains, dtype=np.float64)
    if g.size == 0:
        return 0.0
    return float(np.sum(g / np.log2(np.arange(2, g.size + 2))))


def ndcg_at_k(ranking: Sequence[int], grades: Mapping[int, int], k: int = 10) -> float:
    """NDCG@k with gain 2^rel - 1; 0.0 when the query has no relevant product."""
    ideal = sorted((2.0**g - 1 for g in grades.values() if g > 0), reverse=True)[:k]
    ideal_dcg = dcg(ideal)
    if ideal_dcg == 0.0:
        return 0.0
    gains = [2.0 ** grades.get(int(p), 0) - 1 for p in list(ranking)[:k]]
    return dcg(gains) / ideal_dcg


def recall_at_k(
    ranking: Sequence[int], grades: Mapping[int, int], k: int = 100, min_grade: int = 2
) -> float:
    """Share of the products graded >= min_grade that appear in the top k."""
    relevant = {p for p, g in grades.items() if g >= min_grade}
    if not relevant:
        return 0.0
    return len(relevant.intersection(int(p) for p in list(ranking)[:k])) / len(relevant)


def reciprocal_rank(ranking: Sequence[int], grades: Mapping[int, int], min_grade: int = 2) -> float:
    """1/rank of the first product graded >= min_grade; 0.0 if none is ranked."""
    for rank, p in enumerate(ranking, start=1):
        if grades.get(int(p), 0) >= min_grade:
            return 1.0 / rank
    return 0.0


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve via the rank-sum (Mann-Whitney U) identity; ties count 1/2."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=np.float64)
    sorted_s = s[order]
    # Average ranks over ties so that equal scores contribute one half.
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def mean_metrics(
    rankings: Mapping[int, Sequence[int]],
    judgements: Mapping[int, Mapping[int, int]],
    recall_ks: Sequence[int] = (10, 100),
) -> dict[str, float]:
    """NDCG@10, Recall@k and MRR averaged over the queries in `rankings`."""
    qids = [q for q in rankings if q in judgements]
    if not qids:
        raise ValueError("no ranked query has judgements")
    out = {NDCG_AT_10: float(np.mean([ndcg_at_k(rankings[q], judgements[q], 10) for q in qids]))}
    for k in recall_ks:
        out[recall_key(k)] = float(
            np.mean([recall_at_k(rankings[q], judgements[q], k) for q in qids])
        )
    out[MRR] = float(np.mean([reciprocal_rank(rankings[q], judgements[q]) for q in qids]))
    out[QUERIES] = len(qids)
    return out


def top_k_rankings(
    scores: np.ndarray, query_ids: Sequence[int], product_ids: np.ndarray, k: int = 100
) -> dict[int, list[int]]:
    """{query_id: top-k product ids, best first} from a (Q, N) score matrix.

    Ties are broken by catalog order (stable sort), so the result is deterministic.
    """
    k = min(k, scores.shape[1])
    # argpartition picks the k best cheaply; the stable sort then orders only those k.
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    top.sort(axis=1)  # catalog order first, so the stable sort below breaks ties by it
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    ranked = np.take_along_axis(top, order, axis=1)
    return {int(q): product_ids[row].tolist() for q, row in zip(query_ids, ranked, strict=True)}


def paired_bootstrap_gain(
    base: Sequence[float], new: Sequence[float], resamples: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Relative gain mean(new) / mean(base) - 1 over paired per-unit scores (e.g. per
    session), with a 95% percentile interval from resampling the units with replacement."""
    a, b = np.asarray(base, dtype=np.float64), np.asarray(new, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"need equally long, non-empty paired scores, got {a.shape}, {b.shape}")
    if a.mean() == 0:
        raise ValueError("the base scores average 0: no relative gain")
    idx = np.random.default_rng(seed).integers(a.size, size=(resamples, a.size))
    with np.errstate(divide="ignore", invalid="ignore"):
        gains = b[idx].mean(axis=1) / a[idx].mean(axis=1) - 1.0
    lo, hi = np.nanquantile(gains, [0.025, 0.975])
    return {
        "relative": float(b.mean() / a.mean() - 1.0),
        "ci95_low": float(lo),
        "ci95_high": float(hi),
    }


def next_item_metrics(ranks: np.ndarray, k: int = 10) -> dict[str, float]:
    """HR@k, NDCG@k and MRR from the 1-based rank of each shopper's held-out next product
    (one relevant item per shopper, so NDCG@k is 1/log2(rank + 1) inside the top k)."""
    r = np.asarray(ranks, np.float64)
    if r.size == 0:
        return {HIT_RATE_AT_10: 0.0, NDCG_AT_10: 0.0, MRR: 0.0, USERS: 0}
    hit = r <= k
    return {
        HIT_RATE_AT_10: float(hit.mean()),
        NDCG_AT_10: float(np.where(hit, 1.0 / np.log2(r + 1.0), 0.0).mean()),
        MRR: float((1.0 / r).mean()),
        USERS: int(r.size),
    }
