"""The naive baseline: what a team ships before any conversion or serving work.

The fine-tuned sentence-transformers model runs in PyTorch eager, fp32, with torch's
default thread count; each request is tokenized on its own (padded only to its own
length, like `SentenceTransformer.encode` does), dense candidates come from an exact
scan of the whole catalog (a PyTorch matmul and `torch.topk`), lexical candidates from the
same BM25 index, and the trained `FusionRanker` module scores them in eager mode. Same
weights, same candidates' features and same request rules as the served ensemble, so any
speed difference comes from how the model is run, not from what it computes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from shoprank import contract
from shoprank.core.catalog import CatalogIndex
from shoprank.core.covisits import load_blend, next_item_scores
from shoprank.core.features import ItemTables
from shoprank.core.lexical import LexicalIndex, tokenize
from shoprank.core.pipeline import Answer
from shoprank.core.ranking import (
    RetrievalConfig,
    gather_features,
    sequential_part,
    union_candidates,
)
from shoprank.core.requests import decode_query, validate_top_k
from shoprank.core.scoring import combine, in_depth, row_depths
from shoprank.data.artifacts import load_item_index
from shoprank.models.fusion import as_tensors


class NaivePipeline:
    """PyTorch-eager search: sentence-transformers encoder, exact scan, FusionRanker."""

    def __init__(self, paths: contract.ArtifactPaths) -> None:
        from shoprank.models.encoder import load_encoder
        from shoprank.models.fusion import load_ranker

        # Queries are truncated where the served tokenizer truncates them, so both paths
        # embed the same tokens.
        self.encoder = load_encoder(paths.encoder, max_seq_length=contract.MAX_QUERY_TOKENS)
        self.encoder.eval()
        self.ranker = load_ranker(paths.ranker)
        index = load_item_index(paths.item_index)
        self.embeddings = torch.from_numpy(index["embeddings"])
        self.lexical = LexicalIndex.load(paths.lexical_index)
        self.tables = ItemTables.load(paths.item_tables)
        self.config = RetrievalConfig.load(paths.retrieval_config)
        self.sequential = None
        if self.config.sequential_weight:  # the shopper vector served in search, in eager
            from shoprank.models.sequential import load_sequential

            self.sequential = load_sequential(paths.sequential)
            with torch.inference_mode():
                self.items = self.sequential.item_vectors(self.embeddings)
            self.blend, self.covisits = load_blend(paths.covisits)  # the served score
        import pandas as pd

        titles = pd.read_parquet(paths.catalog, columns=["product_id", "title"])
        self.catalog = CatalogIndex(
            titles["product_id"].to_numpy(np.int64), titles["title"].to_numpy(object)
        )

    def encode(self, query: str) -> torch.Tensor:
        """The query's L2-normalised embedding, shape (1, D)."""
        with torch.inference_mode():
            return self.encoder.encode(
                [query], convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False
            ).reshape(1, -1)

    def search(self, query: str | bytes, history: Sequence[int] = (), k: int = 10) -> Answer:
        """Top-k products for one (query, history) request, best first."""
        text = decode_query(query)
        k = validate_top_k(k)
        tokens = tokenize(text)
        rows = self.catalog.rows_of(np.asarray(list(history), dtype=np.int64))
        with torch.inference_mode():
            embedding = self.encode(text)
            scan = self.embeddings @ embedding[0]
            dense = torch.topk(scan, min(self.config.dense_k, len(scan))).indices.numpy()
        candidates = union_candidates(dense, self.lexical.search(tokens, self.config.lexical_k)[0])
        features = gather_features(
            lambda r: self.embeddings[torch.from_numpy(r)].numpy(),
            self.lexical,
            self.tables,
            embedding.numpy(),
            [tokens],
            [rows],
            [candidates],
        )
        with torch.inference_mode():
            relevance, full = self.ranker(
                *as_tensors(
                    features.query,
                    features.history,
                    features.history_mask,
                    features.candidates,
                    features.lexical,
                    features.item_features,
                    features.user_item,
                )
            )
        depth = row_depths(np.array([len(rows)]), self.config.depth, self.config.cold_start_depth)
        extra = None
        if self.sequential is not None and len(rows):
            history = torch.from_numpy(rows[-contract.MAX_HISTORY :])[None, :]
            with torch.inference_mode():
                user = self.sequential.encoder.user_vector(
                    self.items[history], torch.ones(history.shape)
                )[0]
                dots = (self.items[torch.from_numpy(candidates)] @ user).numpy()
            co = None
            if self.covisits is not None:
                co = self.covisits.scores_at([rows], candidates[None, :])[0]
            raw = next_item_scores(self.blend, dots, co)
            kept = in_depth(relevance.numpy(), depth, features.valid)
            extra = np.zeros(kept.shape, np.float32)
            part = np.where(kept[0, : len(candidates)], sequential_part(raw, self.config), 0.0)
            extra[0, : len(candidates)] = part
        scores = combine(relevance.numpy(), full.numpy(), depth, features.valid, extra)[0]
        k = min(k, len(candidates))
        best = np.argsort(-scores[: len(candidates)], kind="stable")[:k]
        picked = candidates[best]
        return Answer(
            product_ids=self.catalog.product_ids[picked],
            scores=scores[best].astype(np.float32),
            titles=[
                t.decode() if isinstance(t, bytes) else str(t) for t in self.catalog.titles[picked]
            ],
        )
