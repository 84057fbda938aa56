"""Parity of the exported graphs, and the ranker's export.

The encoder is exported by `shoprank.encoder` from the sentence-transformers model training
saved (its own pooling inside the graph). `check_encoder_parity` compares ONNX Runtime
against `SentenceTransformer.encode` of that same saved model, and `check_ranker_parity`
the ranker graph against its PyTorch module, on held-out inputs; both raise `ParityError`
when they drift, so a broken export can never reach the model repository.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from shoprank import contract
from shoprank.conversion.quality import row_cosine
from shoprank.encoder import ONNX_OPSET, embed, load_encoder
from shoprank.fusion import FusionRanker
from shoprank.runtime import cpu_session, encoder_feeds


class ParityError(RuntimeError):
    """ONNX output differs from its reference beyond the allowed tolerance."""


def tokenize(encoder_dir: Path, texts: Sequence[str], max_length: int) -> dict[str, np.ndarray]:
    """The encoder folder's own tokenization (as `SentenceTransformer.encode` does it), as
    int64 ONNX feeds padded to the longest text."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(encoder_dir))
    enc = tok(
        list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="np"
    )
    return encoder_feeds(enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64))


@dataclass
class Parity:
    """How close ONNX is to PyTorch on a set of inputs."""

    min_cosine: float
    mean_cosine: float
    max_abs_diff: float
    n: int


def cosine_parity(reference: np.ndarray, candidate: np.ndarray) -> Parity:
    """Row-wise cosine between two embedding matrices of the same shape."""
    cos = row_cosine(reference, candidate)
    return Parity(
        min_cosine=float(cos.min()),
        mean_cosine=float(cos.mean()),
        max_abs_diff=float(np.abs(reference - candidate).max()),
        n=len(cos),
    )


def reference_embeddings(encoder_dir: Path, texts: Sequence[str], max_length: int) -> np.ndarray:
    """`SentenceTransformer.encode` of the saved encoder (normalised): what training
    evaluated and what the export must reproduce."""
    return embed(load_encoder(encoder_dir), texts, max_seq_length=max_length)


def onnx_embeddings(
    onnx_path: Path,
    encoder_dir: Path,
    texts: Sequence[str],
    max_length: int,
) -> np.ndarray:
    """ONNX Runtime embeddings for `texts` (same tokenization as the reference)."""
    session = cpu_session(onnx_path, threads=2)
    return session.run(
        [contract.ONNX_SENTENCE_EMBEDDING], tokenize(encoder_dir, texts, max_length)
    )[0]


def check_encoder_parity(
    onnx_path: Path,
    encoder_dir: Path,
    texts: Sequence[str],
    max_length: int,
    min_cosine: float = 0.999,
    reference: np.ndarray | None = None,
) -> Parity:
    """Cosine of ONNX vs `SentenceTransformer.encode` on `texts`; raise ParityError below
    `min_cosine`."""
    ref = (
        reference if reference is not None else reference_embeddings(encoder_dir, texts, max_length)
    )
    parity = cosine_parity(ref, onnx_embeddings(onnx_path, encoder_dir, texts, max_length))
    if parity.min_cosine < min_cosine:
        raise ParityError(
            f"{onnx_path.name}: min cosine vs SentenceTransformer.encode {parity.min_cosine:.5f} "
            f"< {min_cosine} over {parity.n} inputs"
        )
    return parity


class RankerForExport(nn.Module):
    """The ranker's serving path: full-catalog scores (B, N)."""

    def __init__(self, ranker: FusionRanker) -> None:
        super().__init__()
        self.ranker = ranker

    def forward(
        self, query_embedding: torch.Tensor, history_rows: torch.Tensor, history_mask: torch.Tensor
    ) -> torch.Tensor:
        return self.ranker(query_embedding, history_rows, history_mask)


def export_ranker(ranker: FusionRanker, out_path: Path) -> Path:
    """Export the fusion ranker with the catalog tables as initializers."""
    dim = ranker.item_embeddings.shape[1]
    q = F.normalize(torch.randn(2, dim), dim=-1)
    rows = torch.zeros(2, 3, dtype=torch.int64)
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            RankerForExport(ranker.eval()),
            (q, rows, mask),
            str(out_path),
            input_names=[
                contract.ONNX_RANKER_QUERY,
                contract.ONNX_RANKER_HISTORY_ROWS,
                contract.ONNX_RANKER_HISTORY_MASK,
            ],
            output_names=[contract.ONNX_RANKER_SCORES],
            dynamic_axes={
                contract.ONNX_RANKER_QUERY: {0: "batch"},
                contract.ONNX_RANKER_HISTORY_ROWS: {0: "batch", 1: "history"},
                contract.ONNX_RANKER_HISTORY_MASK: {0: "batch", 1: "history"},
                contract.ONNX_RANKER_SCORES: {0: "batch"},
            },
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    onnx.checker.check_model(str(out_path))
    return out_path


def check_ranker_parity(
    onnx_path: Path,
    ranker: FusionRanker,
    query_embeddings: np.ndarray,
    seed: int = 0,
    tolerance: float = 1e-3,
) -> float:
    """Max |score| difference ONNX vs PyTorch on real queries with random histories."""
    rng = np.random.default_rng(seed)
    n_items = ranker.item_embeddings.shape[0]
    b = len(query_embeddings)
    rows = rng.integers(0, n_items, size=(b, 7)).astype(np.int64)
    mask = (rng.random((b, 7)) < 0.6).astype(np.float32)
    mask[0] = 0.0  # always include a cold-start row
    feeds = {
        contract.ONNX_RANKER_QUERY: query_embeddings.astype(np.float32),
        contract.ONNX_RANKER_HISTORY_ROWS: rows,
        contract.ONNX_RANKER_HISTORY_MASK: mask,
    }
    got = cpu_session(onnx_path, threads=2).run([contract.ONNX_RANKER_SCORES], feeds)[0]
    with torch.no_grad():
        want = ranker(*(torch.from_numpy(v) for v in feeds.values())).numpy()
    diff = float(np.abs(got - want).max())
    if diff > tolerance * max(1.0, float(np.abs(want).max())):
        raise ParityError(f"{onnx_path.name}: max score diff vs PyTorch {diff:.2e}")
    return diff
