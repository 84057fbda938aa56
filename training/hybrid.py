"""Stage A: hybrid retrieval on judged queries, the learned relevance model, and every
retrieval stage's metrics.

For each judged query the candidates are what serving retrieves: the dense index's
`dense_k` nearest products (here the exact scan over the fine-tuned embeddings) and
BM25's `lexical_k` best matches (`shoprank.core.ranking.retrieve`). The relevance model
(`fusion.Relevance`: dense cosine + lexical features, linear or with a small MLP) is
trained on them with a listwise loss (softmax cross-entropy against 2^grade - 1), and
the kind that is best on validation NDCG@10 is kept.

Stages measured on the held-out queries, each with NDCG@10, Recall@100 and MRR:
bm25 (lexical only), dense (exact scan, fine-tuned), rrf (reciprocal-rank fusion of the
two lists) and learned_hybrid (the relevance model over the union).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from shoprank.core.ann import DenseIndex
from shoprank.core.lexical import LEXICAL_FEATURES, LexicalIndex, tokenize
from shoprank.core.ranking import CandidateConfig, union_candidates
from shoprank.data import datasets
from shoprank.data.metrics import NDCG_AT_10, mean_metrics, ndcg_at_k
from shoprank.models.fusion import Relevance, as_tensors

log = logging.getLogger(__name__)

RRF_K = 60  # the constant of reciprocal-rank fusion (Cormack et al. 2009)
RANKING_DEPTH = 100  # rankings are kept this deep (Recall@100)


@dataclass
class QuerySet:
    """Judged queries of one split with their candidates and relevance inputs, padded (Q, C)."""

    query_ids: np.ndarray  # (Q,)
    tokens: list[list[str]]
    embeddings: np.ndarray  # (Q, D)
    dense_rows: np.ndarray  # (Q, dense_k) exact dense ranking
    lexical_rows: list[np.ndarray]  # BM25 ranking per query (may be short)
    candidates: list[np.ndarray]  # union, first-seen order (catalog rows)
    candidate_ids: list[np.ndarray]  # the same as product ids
    cosine: np.ndarray  # (Q, C)
    lexical: np.ndarray  # (Q, C, L)
    valid: np.ndarray  # (Q, C) bool
    gains: np.ndarray  # (Q, C) 2^grade - 1 (0 unjudged)

    def __len__(self) -> int:
        return len(self.query_ids)


def build_query_set(
    data: datasets.ShopData,
    split: str,
    query_embeddings: np.ndarray,
    item_embeddings: np.ndarray,
    dense: DenseIndex,
    lexical: LexicalIndex,
    config: CandidateConfig,
) -> QuerySet:
    """Candidates and relevance inputs of every `split` query (embeddings in query order)."""
    queries = data.queries[data.queries["split"] == split]
    rows = np.flatnonzero(data.queries["split"].to_numpy() == split)
    q_emb = query_embeddings[rows]
    tokens = [tokenize(q) for q in queries["query"]]
    dense_rows, _ = dense.search(q_emb, config.dense_k)
    lexical_rows = [lexical.search(t, config.lexical_k)[0] for t in tokens]
    candidates = [union_candidates(d, lx) for d, lx in zip(dense_rows, lexical_rows, strict=True)]
    width = max((len(c) for c in candidates), default=0)
    q = len(candidates)
    cosine = np.zeros((q, width), np.float32)
    lex = np.zeros((q, width, len(LEXICAL_FEATURES)), np.float32)
    valid = np.zeros((q, width), bool)
    gains = np.zeros((q, width), np.float32)
    product_ids = data.catalog["product_id"].to_numpy(np.int64)
    grades = datasets.judgement_grades(data, queries["query_id"].tolist())
    for i, (qid, cand) in enumerate(
        zip(
            tqdm(queries["query_id"], desc=f"candidates ({split})", leave=False),
            candidates,
            strict=True,
        )
    ):
        n = len(cand)
        cosine[i, :n] = item_embeddings[cand] @ q_emb[i]
        lex[i, :n] = lexical.features(tokens[i], cand)
        valid[i, :n] = True
        g = grades.get(int(qid), {})
        gains[i, :n] = [2.0 ** g.get(int(p), 0) - 1 for p in product_ids[cand]]
    return QuerySet(
        query_ids=queries["query_id"].to_numpy(np.int64),
        tokens=tokens,
        embeddings=q_emb,
        dense_rows=dense_rows,
        lexical_rows=lexical_rows,
        candidates=candidates,
        candidate_ids=[product_ids[c] for c in candidates],
        cosine=cosine,
        lexical=lex,
        valid=valid,
        gains=gains,
    )


# ---------------------------------------------------------------------------------------
# Rankings and metrics
# ---------------------------------------------------------------------------------------
def rankings_from_scores(
    qs: QuerySet, scores: np.ndarray, product_ids: np.ndarray, depth: int = RANKING_DEPTH
) -> dict[int, list[int]]:
    """{query_id: product ids of its best `depth` candidates by `scores` (Q, C)}."""
    out = {}
    for i, qid in enumerate(qs.query_ids):
        n = len(qs.candidates[i])
        row = scores[i, :n]
        order = np.lexsort((qs.candidates[i], -row))[:depth]
        out[int(qid)] = product_ids[qs.candidates[i][order]].tolist()
    return out


def rrf_scores(qs: QuerySet) -> np.ndarray:
    """Reciprocal-rank fusion of the dense and BM25 lists, for each candidate (Q, C)."""
    out = np.zeros(qs.cosine.shape, np.float32)
    for i, cand in enumerate(qs.candidates):
        position = {int(r): j for j, r in enumerate(cand)}
        for ranking in (qs.dense_rows[i], qs.lexical_rows[i]):
            for rank, r in enumerate(ranking[ranking >= 0]):
                out[i, position[int(r)]] += 1.0 / (RRF_K + rank + 1)
    return out


def list_rankings(
    qs: QuerySet, lists: Sequence[np.ndarray], product_ids: np.ndarray
) -> dict[int, list[int]]:
    """{query_id: product ids} of per-query ranked row lists (a retriever on its own)."""
    return {
        int(qid): product_ids[rows[rows >= 0][:RANKING_DEPTH]].tolist()
        for qid, rows in zip(qs.query_ids, lists, strict=True)
    }


def stage_metrics(
    data: datasets.ShopData, qs: QuerySet, relevance: Relevance, product_ids: np.ndarray
) -> dict[str, dict[str, float]]:
    """NDCG@10 / Recall@10,100 / MRR of bm25, dense, rrf and learned_hybrid on `qs`."""
    grades = datasets.judgement_grades(data, qs.query_ids.tolist())
    hybrid = relevance_scores(relevance, qs)
    return {
        "bm25": mean_metrics(list_rankings(qs, qs.lexical_rows, product_ids), grades),
        "dense": mean_metrics(list_rankings(qs, list(qs.dense_rows), product_ids), grades),
        "rrf": mean_metrics(rankings_from_scores(qs, rrf_scores(qs), product_ids), grades),
        "learned_hybrid": mean_metrics(rankings_from_scores(qs, hybrid, product_ids), grades),
    }


# ---------------------------------------------------------------------------------------
# The learned relevance model
# ---------------------------------------------------------------------------------------
@torch.no_grad()
def relevance_scores(relevance: Relevance, qs: QuerySet) -> np.ndarray:
    """R for every candidate (Q, C); -inf on padding."""
    cosine, lexical = as_tensors(qs.cosine, qs.lexical)
    scores = relevance(cosine, lexical).numpy()
    return np.where(qs.valid, scores, -np.inf)


def ndcg_of_scores(qs: QuerySet, scores: np.ndarray, all_gains: dict) -> float:
    """Mean NDCG@10 of ranking each query's candidates by `scores` (judged ideal)."""
    values = []
    for i, qid in enumerate(qs.query_ids):
        grades = all_gains.get(int(qid), {})
        n = len(qs.candidates[i])
        order = np.lexsort((qs.candidates[i], -scores[i, :n]))
        values.append(ndcg_at_k(qs.candidate_ids[i][order], grades, 10))
    return float(np.mean(values)) if values else 0.0


def train_relevance(
    train: QuerySet,
    hidden: int = 0,
    epochs: int = 60,
    lr: float = 0.05,
    batch_size: int = 128,
    seed: int = 0,
) -> tuple[Relevance, list[dict[str, float]]]:
    """Listwise softmax cross-entropy: each query's candidates against 2^grade - 1."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = Relevance(hidden)
    keep = np.flatnonzero(train.gains.sum(axis=1) > 0)  # queries with a relevant candidate
    cosine, lexical, gains, valid = as_tensors(
        train.cosine[keep], train.lexical[keep], train.gains[keep], train.valid[keep]
    )
    target = gains / gains.sum(dim=1, keepdim=True)
    optim = torch.optim.Adam(model.parameters(), lr=lr)
    curve = []
    for epoch in range(epochs):
        order = torch.from_numpy(rng.permutation(len(keep)))
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            scores = model(cosine[idx], lexical[idx]).masked_fill(~valid[idx], -1e4)
            loss = -(target[idx] * torch.log_softmax(scores, dim=1)).sum(dim=1).mean()
            optim.zero_grad()
            loss.backward()
            optim.step()
            total += loss.item() * len(idx)
        curve.append({"epoch": float(epoch + 1), "loss": total / max(len(keep), 1)})
    return model.eval(), curve


def fit_relevance(
    data: datasets.ShopData,
    train: QuerySet,
    val: QuerySet,
    hiddens: Sequence[int] = (0, 16),
    seed: int = 0,
) -> tuple[Relevance, dict]:
    """Train each relevance kind (0 = linear, else MLP width); keep the best on validation."""
    val_grades = datasets.judgement_grades(data, val.query_ids.tolist())
    tried = {}
    best, best_ndcg = None, -1.0
    for hidden in hiddens:
        model, curve = train_relevance(train, hidden=hidden, seed=seed)
        ndcg = ndcg_of_scores(val, relevance_scores(model, val), val_grades)
        tried[f"mlp{hidden}" if hidden else "linear"] = {
            f"val_{NDCG_AT_10}": ndcg,
            "final_loss": curve[-1]["loss"],
        }
        log.info("relevance %s: validation NDCG@10 %.4f", hidden or "linear", ndcg)
        if ndcg > best_ndcg:
            best, best_ndcg = model, ndcg
    assert best is not None
    weights = dict(zip(LEXICAL_FEATURES, best.lexical_weights.detach().tolist(), strict=True))
    return best, {
        "chosen": "linear" if not best.hidden else f"mlp{best.hidden}",
        "tried": tried,
        "dense_scale": float(best.log_scale.detach().exp()),
        "lexical_weights": weights,
    }
