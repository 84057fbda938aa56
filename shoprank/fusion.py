"""The fusion ranker: text relevance mixed with the shopper's behaviour.

Three ways to fuse the query embedding `q` with the shopper's history (catalog rows sent
with every request; there is no per-user table to go stale):

    weighted          u = normalize(mean(e_h))                 h = (1-α)·q + α·u
    concat_mlp        u = normalize(mean(e_h))                 h = normalize(q + MLP([q, u]))
    target_attention  u = Σ_h softmax(⟨q, e_h⟩/τ)·e_h          h = (1-α)·q + α·normalize(u)

and every variant scores the whole catalog as

    score(i) = s·⟨h, e_i⟩ + w·f_i + v·g(history, i) + b      for the retrieve_k items
                                                             with the best s·⟨h, e_i⟩

with per-item behaviour features f (log clicks, position-debiased CTR) and shopper↔item
features g (USER_ITEM_FEATURES):

    category_affinity   share of the history in i's category
    brand_affinity      share of the history in i's brand
    brand_in_category   n(history in i's category and brand) / (n(history in i's category) + 1):
                        "which sofa brand does this shopper pick", shrunk when evidence is thin
    price_match         -|log price of i - mean log price of the history|
    revisit             share of the history that is i itself: shoppers come back to what
                        they looked at

With an empty history every user term is switched off, so cold start is exactly text-only
ranking plus the item prior — never noise.

The scan is one (B, D) × (D, N) matmul plus gathers of tiny per-item tables, so the same
module exports to ONNX (conversion/) with the catalog as initializers.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

ITEM_FEATURES = ("log_clicks", "clicks_over_expected")
USER_ITEM_FEATURES = (
    "category_affinity",
    "brand_affinity",
    "brand_in_category",
    "price_match",
    "revisit",
)
FUSIONS = ("weighted", "concat_mlp", "target_attention")
TRAINING_POSITIONS = 10  # positions 0..9 get a learned bias during training only


@dataclass
class FusionConfig:
    """Shape and kind of a FusionRanker, saved beside its weights."""

    num_items: int
    dim: int
    fusion: str = "weighted"
    num_features: int = len(ITEM_FEATURES)
    num_categories: int = 1
    num_brands: int = 1
    hidden: int = 128
    alpha_init: float = 0.2
    retrieve_k: int = 256


class _HistorySummary(NamedTuple):
    """What the shopper↔item features need from a history, each row summed once."""

    count: torch.Tensor  # (B, 1) history length, at least 1
    share: torch.Tensor  # (B, H) each present item's weight, 1 / count
    categories: torch.Tensor  # (B, num_categories) share of the history per category
    brands: torch.Tensor  # (B, num_brands)
    pairs: torch.Tensor  # (B, num_pairs) per (category, brand) pair
    log_price: torch.Tensor  # (B, 1) mean log price


def _histogram(ids: torch.Tensor, weights: torch.Tensor, size: int) -> torch.Tensor:
    """(B, size) sums of `weights` (B, H) per id in `ids` (B, H): the history's share of
    each category or brand, without materialising a (B, H, size) one-hot tensor."""
    out = torch.zeros(weights.shape[0], size, dtype=weights.dtype)
    return out.scatter_add(1, ids, weights)


class FusionRanker(nn.Module):
    """Fuses query and history, then scores every catalog item (see module docstring)."""

    def __init__(
        self,
        item_embeddings: torch.Tensor,
        item_features: torch.Tensor,
        item_categories: torch.Tensor | None = None,
        item_brands: torch.Tensor | None = None,
        item_log_prices: torch.Tensor | None = None,
        fusion: str = "weighted",
        hidden: int = 128,
        alpha_init: float = 0.2,
        retrieve_k: int = 256,
    ) -> None:
        super().__init__()
        self.retrieve_k = retrieve_k
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        n, dim = item_embeddings.shape
        self.fusion = fusion
        zeros = torch.zeros(n, dtype=torch.long)
        self.register_buffer("item_embeddings", item_embeddings.float().contiguous())  # (N, D)
        self.register_buffer("item_features", item_features.float().contiguous())  # (N, F)
        cats = item_categories if item_categories is not None else zeros
        brands = item_brands if item_brands is not None else zeros
        prices = item_log_prices if item_log_prices is not None else torch.zeros(n)
        self.register_buffer("item_categories", cats.long().contiguous())  # (N,)
        self.register_buffer("item_brands", brands.long().contiguous())  # (N,)
        self.register_buffer("item_log_prices", prices.float().contiguous())  # (N,)
        self.num_categories = int(cats.max()) + 1 if n else 1
        self.num_brands = int(brands.max()) + 1 if n else 1
        # (category, brand) pairs that occur, numbered densely: "which sofa brand does this
        # shopper pick" needs a joint histogram, and the dense numbering keeps it at most
        # N wide instead of categories x brands. Derived, so not saved with the weights.
        pairs = torch.unique(cats.long() * self.num_brands + brands.long(), return_inverse=True)[1]
        self.register_buffer("item_pairs", pairs.contiguous(), persistent=False)  # (N,)
        self.num_pairs = int(pairs.max()) + 1 if n else 1
        self.alpha_logit = nn.Parameter(torch.tensor(math.log(alpha_init / (1 - alpha_init))))
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.log_temperature = nn.Parameter(torch.tensor(math.log(0.1)))
        self.feature_weights = nn.Parameter(torch.zeros(item_features.shape[1]))
        self.user_item_weights = nn.Parameter(torch.zeros(len(USER_ITEM_FEATURES)))
        self.bias = nn.Parameter(torch.zeros(()))
        self.hidden = hidden
        self.mlp = nn.Sequential(nn.Linear(2 * dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.mlp[2].weight)  # starts as text-only: h = q
        nn.init.zeros_(self.mlp[2].bias)
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
            fusion=self.fusion,
            num_features=self.item_features.shape[1],
            num_categories=self.num_categories,
            num_brands=self.num_brands,
            hidden=self.hidden,
            alpha_init=float(self.alpha.detach()),
            retrieve_k=self.retrieve_k,
        )

    # -- the shopper ------------------------------------------------------------------------
    def _has_history(self, history_mask: torch.Tensor) -> torch.Tensor:
        return (history_mask.sum(dim=1, keepdim=True) > 0).to(history_mask.dtype)  # (B, 1)

    def user_embedding(
        self, query_embedding: torch.Tensor, history_rows: torch.Tensor, history_mask: torch.Tensor
    ) -> torch.Tensor:
        """Normalised user vector from the history (zeros when the history is empty)."""
        history = self.item_embeddings[history_rows]  # (B, H, D)
        if self.fusion == "target_attention":
            # Attend over the history by relevance to the query: a shopper who bought a
            # sofa and running shoes should bring the shoes, not the sofa, to "trainers".
            logits = torch.einsum("bd,bhd->bh", query_embedding, history)
            logits = logits / self.log_temperature.exp()
            logits = logits.masked_fill(history_mask <= 0, -1e4)
            weights = torch.softmax(logits, dim=1) * history_mask  # (B, H)
        else:
            weights = history_mask / history_mask.sum(dim=1, keepdim=True).clamp(min=1.0)
        user = torch.einsum("bh,bhd->bd", weights, history)  # (B, D)
        return F.normalize(user, dim=-1, eps=1e-6)

    def fuse(
        self, query_embedding: torch.Tensor, history_rows: torch.Tensor, history_mask: torch.Tensor
    ) -> torch.Tensor:
        """The fused query vector h, (B, D); equals the query when the history is empty."""
        user = self.user_embedding(query_embedding, history_rows, history_mask)
        has = self._has_history(history_mask)
        if self.fusion == "concat_mlp":
            delta = self.mlp(torch.cat([query_embedding, user], dim=-1)) * has
            return F.normalize(query_embedding + delta, dim=-1, eps=1e-6)
        alpha = self.alpha * has  # (B, 1)
        return (1.0 - alpha) * query_embedding + alpha * user

    def _history_summary(
        self, history_rows: torch.Tensor, history_mask: torch.Tensor
    ) -> _HistorySummary:
        count = history_mask.sum(dim=1, keepdim=True).clamp(min=1.0)  # (B, 1)
        share = history_mask / count  # (B, H)
        return _HistorySummary(
            count=count,
            share=share,
            categories=_histogram(self.item_categories[history_rows], share, self.num_categories),
            brands=_histogram(self.item_brands[history_rows], share, self.num_brands),
            pairs=_histogram(self.item_pairs[history_rows], share, self.num_pairs),
            log_price=(self.item_log_prices[history_rows] * share).sum(dim=1, keepdim=True),
        )

    def user_item_features(
        self, history_rows: torch.Tensor, history_mask: torch.Tensor, item_rows: torch.Tensor
    ) -> torch.Tensor:
        """(B, C, len(USER_ITEM_FEATURES)) shopper↔item features for candidate rows (B, C);
        see the module docstring for each feature."""
        h = self._history_summary(history_rows, history_mask)
        cat = torch.gather(h.categories, 1, self.item_categories[item_rows])  # (B, C)
        brand = torch.gather(h.brands, 1, self.item_brands[item_rows])
        pair = torch.gather(h.pairs, 1, self.item_pairs[item_rows])
        price = self.item_log_prices[item_rows]
        has = self._has_history(history_mask)
        price_match = -torch.abs(price - h.log_price) * has
        in_category = pair / (cat + 1.0 / h.count)
        same = history_rows.unsqueeze(1) == item_rows.unsqueeze(2)  # (B, C, H)
        revisit = (same * h.share.unsqueeze(1)).sum(-1)
        return torch.stack([cat, brand, in_category, price_match, revisit], dim=-1)

    def user_item_scores(
        self,
        history_rows: torch.Tensor,
        history_mask: torch.Tensor,
    ) -> torch.Tensor:
        """v·g(history, i) for every catalog item, (B, N).

        The same value as `user_item_features(...) @ user_item_weights`, computed as weighted
        gathers of the history tables so the serving scan never builds a (B, N, F) tensor.
        """
        h = self._history_summary(history_rows, history_mask)
        w = self.user_item_weights
        cat = h.categories[:, self.item_categories]  # (B, N)
        in_category = h.pairs[:, self.item_pairs] / (cat + 1.0 / h.count)
        price = torch.abs(self.item_log_prices.unsqueeze(0) - h.log_price)  # (B, N)
        price_term = price * (-w[3] * self._has_history(history_mask))
        brand = (h.brands * w[1])[:, self.item_brands]
        revisit = _histogram(history_rows, h.share * w[4], self.item_embeddings.shape[0])
        return cat * w[0] + brand + in_category * w[2] + price_term + revisit

    # -- scoring ----------------------------------------------------------------------------
    def item_prior(self) -> torch.Tensor:
        """Per-item behaviour score w·f + b, shape (N,)."""
        return self.item_features @ self.feature_weights + self.bias

    def forward(
        self, query_embedding: torch.Tensor, history_rows: torch.Tensor, history_mask: torch.Tensor
    ) -> torch.Tensor:
        """Scores of every catalog item, (B, N)."""
        h = self.fuse(query_embedding, history_rows, history_mask)  # (B, D)
        text = self.log_scale.exp() * (h @ self.item_embeddings.T)  # (B, N)
        fused = text + self.user_item_scores(history_rows, history_mask) + self.item_prior()
        # Retrieve, then re-rank: behaviour only reorders the `retrieve_k` items the text
        # ranks highest. Click logs only ever show plausible products, so what the ranker
        # learns about popularity must not let a best-seller outrank relevance for an
        # unrelated query; everything below the cut keeps its text order, far below.
        k = min(self.retrieve_k, text.shape[1])
        kth = torch.topk(text, k, dim=1).values[:, k - 1 :]  # (B, 1)
        return torch.where(text >= kth, fused, text - 1e4)

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
        text = self.log_scale.exp() * torch.einsum("bd,bcd->bc", h, items)
        feats = self.user_item_features(history_rows, history_mask, item_rows)
        return text + feats @ self.user_item_weights + self.item_prior()[item_rows]


class TextOnlyRanker(FusionRanker):
    """Baseline: cosine of query and item only (no history, no behaviour features)."""

    def __init__(self, item_embeddings: torch.Tensor, item_features: torch.Tensor) -> None:
        super().__init__(item_embeddings, item_features)
        self.alpha_logit.data.fill_(-30.0)
        for p in self.parameters():
            p.requires_grad_(False)


def save_ranker(ranker: FusionRanker, out_dir: Path) -> None:
    """Weights (safetensors, catalog tables included) and config JSON."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in ranker.state_dict().items()}
    save_file(state, str(out_dir / "model.safetensors"))
    (out_dir / "config.json").write_text(json.dumps(asdict(ranker.config), indent=2))


def load_ranker(out_dir: Path) -> FusionRanker:
    """Inverse of save_ranker."""
    state = load_file(str(out_dir / "model.safetensors"))
    config = json.loads((out_dir / "config.json").read_text())
    ranker = FusionRanker(
        state["item_embeddings"],
        state["item_features"],
        state["item_categories"],
        state["item_brands"],
        state["item_log_prices"],
        fusion=config["fusion"],
        hidden=config["hidden"],
        retrieve_k=config["retrieve_k"],
    )
    ranker.load_state_dict(state)
    return ranker.eval()
