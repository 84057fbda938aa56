"""The fusion ranker: text relevance mixed with the shopper's behaviour.

    h_user = normalize(mean(e_i for i in history))             # (B, D), from request-time history
    α_eff  = α · 1[history non-empty]                          # cold start → text only
    h      = (1 - α_eff) · h_text + α_eff · h_user             # (B, D)
    score  = s · <h, e_item> + w · f_item + b                  # (B, N)

`e` are the catalog embeddings from the fine-tuned encoder, `f` per-item behaviour
features (popularity, smoothed CTR), α = sigmoid(a) is learned. There is no per-user
table: the user embedding is rebuilt from the ids sent with every request, so it never
goes stale and new users work on their first click.

The same module is exported to ONNX (conversion/) with the catalog as initializers, so
serving scores exactly what was trained.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

ITEM_FEATURES = ("log_clicks", "ctr")
TRAINING_POSITIONS = 10  # positions 0..9 get a learned bias during training only


@dataclass
class FusionConfig:
    """Shape of a FusionRanker, saved beside its weights."""

    num_items: int
    dim: int
    num_features: int = len(ITEM_FEATURES)
    alpha_init: float = 0.2


class FusionRanker(nn.Module):
    """Weighted fusion of query and user embeddings, scored against the whole catalog."""

    def __init__(
        self, item_embeddings: torch.Tensor, item_features: torch.Tensor, alpha_init: float = 0.2
    ) -> None:
        super().__init__()
        self.register_buffer("item_embeddings", item_embeddings.float().contiguous())  # (N, D)
        self.register_buffer("item_features", item_features.float().contiguous())  # (N, F)
        self.alpha_logit = nn.Parameter(torch.tensor(math.log(alpha_init / (1 - alpha_init))))
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.feature_weights = nn.Parameter(torch.zeros(item_features.shape[1]))
        self.bias = nn.Parameter(torch.zeros(()))
        # Learned examination bias per shown position: soaks up position bias in the logs
        # during training; serving ignores it (every candidate is scored as if at the top).
        self.position_bias = nn.Parameter(torch.zeros(TRAINING_POSITIONS))

    @property
    def alpha(self) -> torch.Tensor:
        return torch.sigmoid(self.alpha_logit)

    @property
    def config(self) -> FusionConfig:
        n, d = self.item_embeddings.shape
        return FusionConfig(
            num_items=n,
            dim=d,
            num_features=self.item_features.shape[1],
            alpha_init=float(self.alpha.detach()),
        )

    def fuse(
        self, query_embedding: torch.Tensor, history_rows: torch.Tensor, history_mask: torch.Tensor
    ) -> torch.Tensor:
        """h = (1-α)·h_text + α·h_user; rows of padded history have mask 0."""
        history = self.item_embeddings[history_rows]  # (B, H, D)
        mask = history_mask.unsqueeze(-1)  # (B, H, 1)
        count = history_mask.sum(dim=1, keepdim=True)  # (B, 1)
        user = (history * mask).sum(dim=1) / count.clamp(min=1.0)  # (B, D)
        user = F.normalize(user, dim=-1, eps=1e-6)
        alpha = self.alpha * (count > 0).to(query_embedding.dtype)  # (B, 1)
        return (1.0 - alpha) * query_embedding + alpha * user

    def item_prior(self) -> torch.Tensor:
        """Per-item behaviour score w·f + b, shape (N,)."""
        return self.item_features @ self.feature_weights + self.bias

    def forward(
        self, query_embedding: torch.Tensor, history_rows: torch.Tensor, history_mask: torch.Tensor
    ) -> torch.Tensor:
        """Scores of every catalog item, (B, N)."""
        h = self.fuse(query_embedding, history_rows, history_mask)  # (B, D)
        return self.log_scale.exp() * (h @ self.item_embeddings.T) + self.item_prior()

    def score_candidates(
        self,
        query_embedding: torch.Tensor,
        history_rows: torch.Tensor,
        history_mask: torch.Tensor,
        item_rows: torch.Tensor,
    ) -> torch.Tensor:
        """Scores of given catalog rows, (B, C): the training and offline-eval path."""
        h = self.fuse(query_embedding, history_rows, history_mask)  # (B, D)
        items = self.item_embeddings[item_rows]  # (B, C, D)
        text = torch.einsum("bd,bcd->bc", h, items)
        return self.log_scale.exp() * text + self.item_prior()[item_rows]


class TextOnlyRanker(FusionRanker):
    """Baseline: cosine of query and item, no behaviour at all (α = 0, no features)."""

    def __init__(self, item_embeddings: torch.Tensor, item_features: torch.Tensor) -> None:
        super().__init__(item_embeddings, item_features)
        self.alpha_logit.data.fill_(-30.0)
        self.feature_weights.data.zero_()


def save_ranker(ranker: FusionRanker, out_dir: Path) -> None:
    """Weights (safetensors, catalog buffers included) and config JSON."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in ranker.state_dict().items()}
    save_file(state, str(out_dir / "model.safetensors"))
    (out_dir / "config.json").write_text(json.dumps(asdict(ranker.config), indent=2))


def load_ranker(out_dir: Path) -> FusionRanker:
    """Inverse of save_ranker."""
    state = load_file(str(out_dir / "model.safetensors"))
    ranker = FusionRanker(state["item_embeddings"], state["item_features"])
    ranker.load_state_dict(state)
    return ranker.eval()
