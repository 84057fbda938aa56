"""The fusion ranker: relevance (dense + lexical) and the shopper's behaviour, over candidates.

Candidates come from two retrievers (dense ANN, BM25); the ranker scores each candidate i
of a request with

    R(q, i)  = s·⟨q, e_i⟩ + w_lex·x_lex(q, i) (+ MLP([⟨q, e_i⟩, x_lex]))     relevance
    score(i) = γ·R(q, i) + [history]·(β·⟨u, e_i⟩ + v·g(history, i)) + w·f_i + b

R is the *learned hybrid*: trained on judged queries (stage A, `train_relevance`), then
frozen while the rest learns from click logs (stage B). x_lex are the lexical features
(`shoprank.core.lexical.LEXICAL_FEATURES`: BM25, coverage of title and attributes, exact
number and model-number matches), f_i the item features and g(history, i) the
shopper↔item features (`shoprank.core.features`). The user vector u fuses the history:

    weighted          u = normalize(mean(e_h))
    concat_mlp        u = normalize(mean(e_h) + MLP([q, mean(e_h)]))
    target_attention  u = normalize(Σ_h softmax(⟨q, e_h⟩/τ)·e_h)

so γ·s·q + β·u is the design's h = (1-α)·h_text + α·h_user with α = β / (γ·s + β). With an
empty history every user term is off: cold start is relevance plus the item prior.

The module takes gathered tensors (no catalog inside), so the same graph scores a
20,000- or a 1,000,000-product catalog; `forward` returns the relevance and the full
score, and `shoprank.core.scoring.combine` lets behaviour reorder only the `depth` most
relevant candidates.
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
from shoprank.core.features import ITEM_FEATURES, USER_ITEM_FEATURES
from shoprank.core.lexical import LEXICAL_FEATURES

FUSIONS = ("weighted", "concat_mlp", "target_attention")
TRAINING_POSITIONS = 10  # positions 0..9 get a learned bias during training only


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
        """(B, C, len(SCORE_PARTS) + 2): the full score of `forward` split into the parts
        `shoprank.core.scoring.SCORE_PARTS` names (they sum to it), then the relevance's semantic
        and lexical parts (they sum to R)."""
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
