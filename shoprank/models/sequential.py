"""The sequential recommender: next product from a shopper's ordered history (SASRec-style).

Items are represented from their ids and their text together: the id vector is what real
logs reward, the text is what a product nobody has clicked yet still has:

    e_i = W · t_i + m_i · v_i    t_i: fine-tuned text embedding (D), W: D → d,
                                 v_i: learned id embedding (d),
                                 m_i: 1 for products seen at least `min_id_count` times in
                                      training, else 0 (too rare: their text alone)

Data with ids only (no titles) has no text part: e_i = v_i.

A small causal transformer over the history's item vectors (most recent last, left-padded)
gives the shopper vector h at the last position; products are scored by h · e_i. Serving
gathers e_i for the history rows (precomputed for the whole catalog at export time) and
runs only `HistoryEncoder` in ONNX (`shoprank.core.shopper_vectors`, no torch), so new or re-priced
products never touch the graph.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from shoprank import contract

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass
class SequentialConfig:
    """Shape of a SequentialRecommender, saved beside its weights."""

    text_dim: int
    num_items: int
    dim: int = 384  # == text_dim: the projection starts as the identity
    layers: int = 2
    heads: int = 2
    max_len: int = contract.MAX_HISTORY
    dropout: float = 0.2
    id_embeddings: bool = True  # False: items are their text alone
    text: bool = True  # False: ids only (the data has no item text)


class CausalBlock(nn.Module):
    """Pre-norm self-attention (each position sees itself and the past) + feed-forward."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.drop = nn.Dropout(dropout)
        nn.init.zeros_(self.out.weight)  # each block starts as the identity
        nn.init.zeros_(self.out.bias)
        nn.init.zeros_(self.ffn[2].weight)
        nn.init.zeros_(self.ffn[2].bias)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, last: bool = False) -> torch.Tensor:
        """x (B, L, d), allowed (B, 1, L, L) bool → (B, L, d); `last`: only the last
        position's output (B, 1, d), the rest never computed (the served shopper vector
        needs no more: a quarter less work for 2 blocks)."""
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).unbind(2)
        if last:
            q, allowed, x = q[:, -1:], allowed[..., -1:, :], x[:, -1:]
        logits = torch.einsum("bqhe,bkhe->bhqk", q, k) / (d // self.heads) ** 0.5
        weights = torch.softmax(logits.masked_fill(~allowed, -1e4), dim=-1)
        attended = torch.einsum("bhqk,bkhe->bqhe", weights, v).reshape(b, q.shape[1], d)
        x = x + self.drop(self.out(attended))
        return x + self.drop(self.ffn(self.norm2(x)))


class HistoryEncoder(nn.Module):
    """History item vectors (B, L, d), left-padded, mask (B, L) → states (B, L, d)."""

    def __init__(self, config: SequentialConfig) -> None:
        super().__init__()
        self.position = nn.Embedding(config.max_len, config.dim)
        nn.init.zeros_(self.position.weight)
        self.log_scale = nn.Parameter(torch.tensor(math.log(20.0)))  # softmax temperature
        self.blocks = nn.ModuleList(
            CausalBlock(config.dim, config.heads, config.dropout) for _ in range(config.layers)
        )
        self.drop = nn.Dropout(config.dropout)

    def forward(self, items: torch.Tensor, mask: torch.Tensor, last: bool = False) -> torch.Tensor:
        """States (B, L, d), or with `last` the last position's alone (B, 1, d)."""
        n = items.shape[1]
        index = torch.arange(n, device=items.device)
        # Positions count back from the most recent item, so "last" means the same at any length.
        x = self.drop(items + self.position(n - 1 - index)) * mask.unsqueeze(-1)
        # Built from comparisons of positions (ONNX Runtime has no bool Trilu/EyeLike kernels).
        causal = index[None, :] <= index[:, None]  # (L, L): key position ≤ query position
        allowed = causal & (mask > 0)[:, None, :]  # (B, L, L): the past, padding excluded
        allowed = allowed | (index[None, :] == index[:, None])  # no row left empty
        for i, block in enumerate(self.blocks):
            x = block(x, allowed.unsqueeze(1), last=last and i == len(self.blocks) - 1)
        return x

    def user_states(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Shopper vectors after each position (B, L, d): the transformer state plus the
        running mean of the history so far, scaled for the softmax. The blocks start as the
        identity, so an untrained model is "last product + mean of the history" (text-only)."""
        count = mask.cumsum(dim=1).clamp(min=1.0).unsqueeze(-1)  # (B, L, 1)
        running_mean = (items * mask.unsqueeze(-1)).cumsum(dim=1) / count
        return (self.forward(items, mask) + running_mean) * self.log_scale.exp()

    def user_vector(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The shopper vector (B, d) after the most recent (last) position: `user_states`
        at the last position, without computing the others' outputs."""
        count = mask.sum(dim=1).clamp(min=1.0).unsqueeze(-1)  # (B, 1)
        mean = (items * mask.unsqueeze(-1)).sum(dim=1) / count
        return (self.forward(items, mask, last=True)[:, -1] + mean) * self.log_scale.exp()


class SequentialRecommender(nn.Module):
    """Item vectors from text + id, and the causal history encoder."""

    def __init__(self, config: SequentialConfig) -> None:
        super().__init__()
        self.config = config
        if not (config.text or config.id_embeddings):
            raise ValueError("a sequential model needs item text, item ids or both")
        self.project = nn.Linear(config.text_dim, config.dim) if config.text else None
        if self.project is not None and config.dim == config.text_dim:
            nn.init.eye_(self.project.weight)  # items start as their text embeddings
            nn.init.zeros_(self.project.bias)
        self.item_id = nn.Embedding(config.num_items, config.dim)
        if config.text:
            nn.init.zeros_(self.item_id.weight)  # an unseen product is its text alone
        else:
            nn.init.normal_(self.item_id.weight, std=0.02)  # logits start near 0
        # m_i: which products have an id vector (training sets it from the counts).
        self.register_buffer("id_mask", torch.ones(config.num_items))
        self.encoder = HistoryEncoder(config)

    def item_vectors(self, text: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """e_i (N, d) for text embeddings (N, D) of catalog `rows` (default: all, in order);
        rows at or beyond `num_items` (products added after training) get no id part."""
        rows = torch.arange(len(text)) if rows is None else rows
        projected = self.project(text) if self.project is not None else 0.0
        if not self.config.id_embeddings:
            return projected
        known = rows < self.config.num_items
        safe = torch.where(known, rows, torch.zeros_like(rows))
        ids = self.item_id(safe) * (self.id_mask[safe] * known).unsqueeze(-1)
        return projected + ids

    def forward(self, history: torch.Tensor, mask: torch.Tensor, items: torch.Tensor):
        """history rows (B, L) left-padded, mask (B, L), item vectors (N, d) →
        next-item logits at every position (B, L, N)."""
        return self.encoder.user_states(items[history], mask) @ items.T


def save_sequential(model: SequentialRecommender, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS_FILE))
    (out_dir / CONFIG_FILE).write_text(json.dumps(asdict(model.config), indent=2))


def load_sequential(out_dir: Path) -> SequentialRecommender:
    config = SequentialConfig(**json.loads((out_dir / CONFIG_FILE).read_text()))
    model = SequentialRecommender(config)
    model.load_state_dict(load_file(str(out_dir / WEIGHTS_FILE)))
    return model.eval()
