"""The fusion ranker: relevance (dense + lexical) and the shopper's behaviour, over candidates.

Candidates come from two retrievers (dense ANN, BM25); the ranker scores each candidate i
of a request with

    R(q, i)  = s·⟨q, e_i⟩ + w_lex·x_lex(q, i) (+ MLP([⟨q, e_i⟩, x_lex]))     relevance
    score(i) = γ·R(q, i) + [history]·(β·⟨u, e_i⟩ + v·g(history, i)) + w·f_i + b

R is the *learned hybrid*: trained on judged queries (stage A, `train_relevance`), then
frozen while the rest learns from click logs (stage B). x_lex are the lexical features
(`shoprank.lexical.LEXICAL_FEATURES`: BM25, coverage of title and attributes, exact
number and model-number matches), f_i the item features and g(history, i) the
shopper↔item features (`shoprank.features`). The user vector u fuses the history:

    weighted          u = normalize(mean(e_h))
    concat_mlp        u = normalize(mean(e_h) + MLP([q, mean(e_h)]))
    target_attention  u = normalize(Σ_h softmax(⟨q, e_h⟩/τ)·e_h)

so γ·s·q + β·u is the design's h = (1-α)·h_text + α·h_user with α = β / (γ·s + β). With an
empty history every user term is off: cold start is relevance plus the item prior.

The module takes gathered tensors (no catalog inside), so the same graph scores a
20,000- or a 1,000,000-product catalog; `forward` returns the relevance and the full
score, and `combine` lets behaviour reorder only the `depth` most relevant candidates.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from shoprank import contract
from shoprank.features import ITEM_FEATURES, USER_ITEM_FEATURES
from shoprank.lexical import LEXICAL_FEATURES

FUSIONS = ("weighted", "concat_mlp", "target_attention")
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
TRAINING_POSITIONS = 10  # positions 0..9 get a learned bias during training only
# The best candidate below the re-rank depth scores this much under the lowest one in it.
BELOW_DEPTH_GAP = 0.01


@dataclass
class FusionConfig:
    """Shape and kind of a FusionRanker, saved beside its weights."""

    dim: int
    fusion: str = "weighted"
    relevance_hidden: int = 0  # 0: linear relevance; else an MLP of this width on top
    hidden: int = 128
    depth: int = 10  # behaviour reorders the `depth` most relevant candidates only
    cold_start_depth: int | None = None  # the same for an empty history; None: `depth`


class Relevance(nn.Module):
    """R(q, i) from the dense cosine and the lexical features: the learned hybrid."""

    def __init__(self, hidden: int = 0) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.lexical_weights = nn.Parameter(torch.zeros(len(LEXICAL_FEATURES)))
        self.hidden = hidden
        if hidden:
            self.mlp = nn.Sequential(
                nn.Linear(1 + len(LEXICAL_FEATURES), hidden), nn.GELU(), nn.Linear(hidden, 1)
            )
            nn.init.zeros_(self.mlp[2].weight)  # starts as the linear model
            nn.init.zeros_(self.mlp[2].bias)

    def forward(self, cosine: torch.Tensor, lexical: torch.Tensor) -> torch.Tensor:
        """cosine (B, C), lexical (B, C, L) → R (B, C)."""
        score = self.log_scale.exp() * cosine + lexical @ self.lexical_weights
        if self.hidden:
            score = score + self.mlp(torch.cat([cosine.unsqueeze(-1), lexical], -1)).squeeze(-1)
        return score


class FusionRanker(nn.Module):
    """Relevance + behaviour over candidates (see the module docstring)."""

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        if config.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {config.fusion!r}")
        self.config = config
        self.relevance = Relevance(config.relevance_hidden)
        self.log_gamma = nn.Parameter(torch.zeros(()))
        self.beta = nn.Parameter(torch.tensor(1.0))
        self.log_temperature = nn.Parameter(torch.tensor(math.log(0.1)))
        self.feature_weights = nn.Parameter(torch.zeros(len(ITEM_FEATURES)))
        self.user_item_weights = nn.Parameter(torch.zeros(len(USER_ITEM_FEATURES)))
        self.bias = nn.Parameter(torch.zeros(()))
        d = config.dim
        self.mlp = nn.Sequential(
            nn.Linear(2 * d, config.hidden), nn.GELU(), nn.Linear(config.hidden, d)
        )
        nn.init.zeros_(self.mlp[2].weight)  # concat_mlp starts as the mean
        nn.init.zeros_(self.mlp[2].bias)
        # Learned examination bias per shown position: soaks up position bias in the logs
        # during training; serving ignores it (every candidate is scored as if at the top).
        self.position_bias = nn.Parameter(torch.zeros(TRAINING_POSITIONS))

    @property
    def alpha(self) -> float:
        """Weight of the user vector in γ·s·q + β·u, as the design's α."""
        text = float(self.log_gamma.exp() * self.relevance.log_scale.exp())
        beta = float(self.beta)
        return beta / (text + beta) if text + beta else 0.0

    def freeze_relevance(self) -> None:
        """Stage B: the relevance model was fitted on judgements and stays as it is."""
        for p in self.relevance.parameters():
            p.requires_grad_(False)

    # -- the shopper --------------------------------------------------------------------
    def user_vector(
        self, query: torch.Tensor, history: torch.Tensor, history_mask: torch.Tensor
    ) -> torch.Tensor:
        """u (B, D) from the query (B, D) and the history embeddings (B, H, D); zeros when
        the history is empty."""
        mask = history_mask
        if self.config.fusion == "target_attention":
            # Attend over the history by relevance to the query: a shopper who bought a
            # sofa and running shoes should bring the shoes, not the sofa, to "trainers".
            logits = torch.einsum("bd,bhd->bh", query, history) / self.log_temperature.exp()
            logits = logits.masked_fill(mask <= 0, -1e4)
            weights = torch.softmax(logits, dim=1) * mask  # (B, H)
        else:
            weights = mask / mask.sum(dim=1, keepdim=True).clamp(min=1.0)
        user = torch.einsum("bh,bhd->bd", weights, history)  # (B, D)
        if self.config.fusion == "concat_mlp":
            has = (mask.sum(dim=1, keepdim=True) > 0).to(user.dtype)
            user = user + self.mlp(torch.cat([query, user], dim=-1)) * has
        return F.normalize(user, dim=-1, eps=1e-6)

    # -- scoring ------------------------------------------------------------------------
    def forward(
        self,
        query: torch.Tensor,  # (B, D)
        history: torch.Tensor,  # (B, H, D)
        history_mask: torch.Tensor,  # (B, H)
        candidates: torch.Tensor,  # (B, C, D)
        lexical: torch.Tensor,  # (B, C, L)
        item_features: torch.Tensor,  # (B, C, F)
        user_item: torch.Tensor,  # (B, C, U)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(relevance R, full score), each (B, C)."""
        cosine = torch.einsum("bd,bcd->bc", query, candidates)
        relevance = self.relevance(cosine, lexical)
        has = (history_mask.sum(dim=1, keepdim=True) > 0).to(query.dtype)  # (B, 1)
        user = self.user_vector(query, history, history_mask)
        behaviour = self.beta * torch.einsum("bd,bcd->bc", user, candidates)
        behaviour = (behaviour + user_item @ self.user_item_weights) * has
        prior = item_features @ self.feature_weights + self.bias
        return relevance, self.log_gamma.exp() * relevance + behaviour + prior

    def parts(
        self,
        query: torch.Tensor,
        history: torch.Tensor,
        history_mask: torch.Tensor,
        candidates: torch.Tensor,
        lexical: torch.Tensor,
        item_features: torch.Tensor,
        user_item: torch.Tensor,
    ) -> torch.Tensor:
        """(B, C, len(SCORE_PARTS) + 2): the full score of `forward` split into SCORE_PARTS
        (they sum to it), then the relevance's semantic and lexical parts (they sum to R)."""
        cosine = torch.einsum("bd,bcd->bc", query, candidates)
        semantic = self.relevance.log_scale.exp() * cosine
        lexical_part = self.relevance(cosine, lexical) - semantic
        gamma = self.log_gamma.exp()
        has = (history_mask.sum(dim=1, keepdim=True) > 0).to(query.dtype)  # (B, 1)
        user = self.user_vector(query, history, history_mask)
        similarity = self.beta * torch.einsum("bd,bcd->bc", user, candidates) * has
        affinity = user_item * self.user_item_weights * has.unsqueeze(-1)  # (B, C, U)
        popularity = item_features @ self.feature_weights
        bias = self.bias * torch.ones_like(cosine)
        columns = [gamma * semantic, gamma * lexical_part, similarity]
        return torch.cat(
            [
                torch.stack(columns, dim=-1),
                affinity,
                torch.stack([popularity, bias, semantic, lexical_part], dim=-1),
            ],
            dim=-1,
        )


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


def save_ranker(ranker: FusionRanker, out_dir: Path) -> None:
    """Weights (safetensors) and config JSON."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in ranker.state_dict().items()}
    save_file(state, str(out_dir / contract.RANKER_WEIGHTS_FILE))
    (out_dir / contract.RANKER_CONFIG_FILE).write_text(json.dumps(asdict(ranker.config), indent=2))


def load_ranker(out_dir: Path) -> FusionRanker:
    """Inverse of save_ranker."""
    config = FusionConfig(**json.loads((out_dir / contract.RANKER_CONFIG_FILE).read_text()))
    ranker = FusionRanker(config)
    ranker.load_state_dict(load_file(str(out_dir / contract.RANKER_WEIGHTS_FILE)))
    return ranker.eval()


def as_tensors(*arrays: np.ndarray) -> list[torch.Tensor]:
    """numpy → torch (float32 unless integer or bool), no copies where possible."""
    return [
        torch.from_numpy(np.ascontiguousarray(a))
        if np.issubdtype(np.asarray(a).dtype, np.integer) or np.asarray(a).dtype == bool
        else torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        for a in arrays
    ]
