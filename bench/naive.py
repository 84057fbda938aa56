"""The naive baseline: what a team ships before any conversion or serving work.

The fine-tuned sentence-transformers model runs in PyTorch eager, fp32, with torch's
default thread count; each request is tokenized on its own (padded only to its own
length, like `SentenceTransformer.encode` does) and the trained `FusionRanker` module
scores the whole catalog in eager mode, followed by `torch.topk`. Same weights, same
item table and same request rules as the served ensemble, so any speed difference comes
from how the model is run, not from what it computes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file

from shoprank import contract
from shoprank.pipeline import Ranked
from shoprank.runtime import decode_query, validate_top_k


def _titles(catalog: Path, product_ids: np.ndarray) -> list[str]:
    """Titles in item-table order (empty strings when the catalog file is absent)."""
    if not catalog.exists():
        return [""] * len(product_ids)
    import pandas as pd

    frame = pd.read_parquet(catalog, columns=["product_id", "title"])
    by_id = dict(zip(frame["product_id"].astype(np.int64), frame["title"].astype(str), strict=True))
    return [by_id.get(int(p), "") for p in product_ids]


class NaivePipeline:
    """PyTorch-eager search: sentence-transformers encoder + FusionRanker, one request at a time."""

    def __init__(self, paths: contract.ArtifactPaths) -> None:
        from shoprank.encoder import load_encoder
        from shoprank.fusion import load_ranker

        # Queries are truncated where the served tokenizer truncates them, so both paths
        # embed the same tokens.
        self.encoder = load_encoder(paths.encoder, max_seq_length=contract.MAX_QUERY_TOKENS)
        self.encoder.eval()
        self.ranker = load_ranker(paths.ranker)
        index = load_file(str(paths.item_index))
        self.product_ids = index["product_ids"].astype(np.int64)
        if len(self.product_ids) != self.ranker.item_embeddings.shape[0]:
            raise ValueError(
                f"{paths.item_index} has {len(self.product_ids)} items but the ranker "
                f"{self.ranker.item_embeddings.shape[0]}: artifacts from different runs?"
            )
        self.row_of = {int(p): i for i, p in enumerate(self.product_ids)}
        self.titles = _titles(paths.catalog, self.product_ids)

    def encode(self, query: str) -> torch.Tensor:
        """The query's L2-normalised embedding, shape (1, D)."""
        with torch.inference_mode():
            return self.encoder.encode(
                [query], convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False
            ).reshape(1, -1)

    def search(self, query: str | bytes, history: Sequence[int] = (), k: int = 10) -> Ranked:
        """Top-k products for one (query, history) request, best first."""
        text = decode_query(query)
        k = validate_top_k(k)
        rows = [self.row_of[int(p)] for p in history if int(p) in self.row_of]
        rows = rows[-contract.MAX_HISTORY :]
        with torch.inference_mode():
            embedding = self.encode(text)
            history_rows = torch.tensor([rows], dtype=torch.int64).reshape(1, len(rows))
            history_mask = torch.ones((1, len(rows)), dtype=torch.float32)
            scores = self.ranker(embedding, history_rows, history_mask)[0]
            best_scores, best = torch.topk(scores, min(k, scores.shape[0]))
        best_np = best.numpy()
        return Ranked(
            product_ids=self.product_ids[best_np],
            scores=best_scores.numpy().astype(np.float32),
            titles=[self.titles[i] for i in best_np],
        )
