"""The served answer, assembled in one place: the score from the fusion ranker's outputs
(re-rank depth, the band below it), each result's explanation, and the `Ranked` answer both
search (`core.ranking`) and recommend (`core.recommender`) return. numpy only; the model
that computes relevance and the full score is `shoprank.models.fusion`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from shoprank.core.features import USER_ITEM_FEATURES

# The full score's additive parts, as explanations name them (`FusionRanker.parts`): they
# sum to the score of a candidate inside the re-rank depth. "lexical" holds everything of
# the relevance model beyond the dense cosine (lexical features and their MLP, if any).
SCORE_PARTS = (
    "semantic",
    "lexical",
    "history_similarity",
    *USER_ITEM_FEATURES,
    "popularity",
    "bias",
)
SEQUENTIAL_PART = "sequential"  # the sequential model's shopper vector (search and recommend)
# Below the re-rank depth the score is the relevance alone, moved down under the
# re-ranked candidates when it would outrank one of them (combine).
BELOW_DEPTH_PARTS = ("semantic", "lexical", "below_rerank_depth")
# The best candidate below the re-rank depth scores this much under the lowest one in it.
BELOW_DEPTH_GAP = 0.01


def explained_parts(
    parts: np.ndarray, in_depth: bool, sequential: float | None = None, below: float = 0.0
) -> dict[str, float]:
    """One candidate's parts (the ranker graph's score_parts row) as name → value, summing
    to its served score (`combine`, with the shopper vector's `sequential` part when the
    ranker serves it: in depth only). `below`: how far `combine` moved a candidate below
    the depth down (its served score minus its relevance, ≤ 0)."""
    n = len(SCORE_PARTS)
    if in_depth:
        named = {name: float(v) for name, v in zip(SCORE_PARTS, parts[:n], strict=True)}
        if sequential is not None:
            named[SEQUENTIAL_PART] = sequential
        return named
    semantic, lexical = parts[n], parts[n + 1]
    return dict(
        zip(BELOW_DEPTH_PARTS, (float(semantic), float(lexical), float(below)), strict=True)
    )


def row_depths(history_lengths: np.ndarray, depth: int, cold_start_depth: int | None) -> np.ndarray:
    """Re-rank depth of each row (B,): `cold_start_depth` where the history is empty.

    With no history the only behaviour signal is the item prior (popularity), which can
    help or hurt judged relevance on its own, so its depth is chosen separately.
    """
    cold = depth if cold_start_depth is None else cold_start_depth
    return np.where(np.asarray(history_lengths) > 0, depth, cold).astype(np.int64)


def combine(
    relevance: np.ndarray,
    full: np.ndarray,
    depth: int | np.ndarray,
    valid: np.ndarray,
    extra: np.ndarray | None = None,
) -> np.ndarray:
    """Final scores (B, C): the full score (plus `extra`, e.g. the shopper vector's part)
    for each row's `depth` most relevant valid candidates (`depth` one int, or one per
    row), the relevance for the rest, -inf for padding.

    Click logs only ever show plausible products, so what the ranker learns about
    popularity must not let a best-seller outrank relevance for an unrelated query: the
    depth is chosen on held-out judged queries, and the rest rank after the re-ranked
    ones. Where their relevance would outrank one, the row's rest move down together, just
    under the lowest re-ranked score (BELOW_DEPTH_GAP): they keep their relevance order and
    differences, and no score leaves the scale a caller sees (a row with nothing re-ranked,
    a cold start at depth 0, is its relevance as is).
    """
    out = np.where(valid, relevance, -np.inf).astype(np.float32)
    if relevance.size == 0:
        return out
    kept = in_depth(relevance, depth, valid)
    top = full if extra is None else full + extra
    rest = valid & ~kept
    lowest_kept = np.where(kept, top, np.inf).min(axis=1)  # (B,) inf: nothing re-ranked
    best_rest = np.where(rest, relevance, -np.inf).max(axis=1)  # (B,) -inf: no rest
    both = np.isfinite(lowest_kept) & np.isfinite(best_rest)
    gap = np.where(both, best_rest - lowest_kept + BELOW_DEPTH_GAP, 0.0)
    shift = np.maximum(gap, 0.0)[:, None]  # (B, 1)
    return np.where(kept, top, out - shift).astype(np.float32)


def in_depth(relevance: np.ndarray, depth: int | np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(B, C) bool: the candidate is among its row's `depth` most relevant valid ones."""
    relevance = np.where(valid, relevance, -np.inf)
    depths = np.broadcast_to(np.asarray(depth, np.int64), (len(relevance),))
    order = np.argsort(-relevance, axis=1, kind="stable")  # (B, C) best first
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(relevance.shape[1])[None, :], axis=1)
    return valid & (ranks < depths[:, None])


@dataclass
class Ranked:
    """Top-k answer for one request, best first."""

    product_ids: np.ndarray
    scores: np.ndarray
    titles: np.ndarray  # bytes
    candidates: int = 0  # how many candidates were ranked
    explanations: np.ndarray | None = None  # (k,) JSON bytes per result, when asked


# Explanations list this many history products closest to each result.
EXPLAINED_HISTORY = 3


def explanation(
    score: float,
    parts: dict[str, float],
    history_ids: np.ndarray,
    history_vectors: np.ndarray,
    vector: np.ndarray,
) -> bytes:
    """One result's explanation as JSON: its score, the parts that add up to it, and the
    history products most similar to it (cosine of their embeddings)."""
    similar: list[dict] = []
    if len(history_ids):
        cosines = history_vectors @ vector
        for j in np.argsort(-cosines, kind="stable"):  # a product seen twice is listed once
            if len(similar) == EXPLAINED_HISTORY:
                break
            if all(h["product_id"] != int(history_ids[j]) for h in similar):
                cosine = round(float(cosines[j]), 4)
                similar.append({"product_id": int(history_ids[j]), "cosine": cosine})
    payload = {
        "score": round(float(score), 6),
        "parts": {k: round(v, 6) for k, v in parts.items()},
        "similar_history": similar,
    }
    return json.dumps(payload, separators=(",", ":")).encode("utf-8")
