"""PyTorch → ONNX for the encoder (pooling and L2 norm inside the graph) and the ranker.

Both graphs have dynamic batch (and, for the encoder, sequence) axes. `check_*_parity`
compare ONNX Runtime against PyTorch on held-out inputs and raise `ParityError` when they
drift, so a broken export can never reach the model repository.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

import contract
from conversion.quantize import row_cosine
from conversion.runtime import cpu_session
from training.fusion import FusionRanker

log = logging.getLogger(__name__)

OPSET = 17


class ParityError(RuntimeError):
    """ONNX output differs from PyTorch beyond the allowed tolerance."""


class SentenceEncoder(nn.Module):
    """BERT + masked mean pooling + L2 norm: exactly the sentence-transformers stack."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tokens = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)  # (B, S, 1)
        pooled = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)  # (B, D)
        return F.normalize(pooled, p=2.0, dim=-1)


def load_sentence_encoder(encoder_dir: Path) -> SentenceEncoder:
    """The fine-tuned encoder folder as a traceable module (eager attention)."""
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(encoder_dir), attn_implementation="eager")
    return SentenceEncoder(bert).eval()


def tokenize(encoder_dir: Path, texts: Sequence[str], max_length: int) -> dict[str, np.ndarray]:
    """Reference tokenization (Hugging Face) for parity checks: int64 ids and mask."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(encoder_dir))
    enc = tok(
        list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="np"
    )
    return {
        contract.ONNX_INPUT_IDS: enc["input_ids"].astype(np.int64),
        contract.ONNX_ATTENTION_MASK: enc["attention_mask"].astype(np.int64),
    }


def export_encoder(encoder_dir: Path, out_path: Path) -> Path:
    """Export the encoder to ONNX (legacy TorchScript exporter, opset 17)."""
    model = load_sentence_encoder(encoder_dir)
    dummy = tokenize(encoder_dir, ["red leather sofa", "a longer query about shoes"], 16)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    batch, seq = "batch", "sequence"
    with torch.no_grad():
        torch.onnx.export(
            model,
            (
                torch.from_numpy(dummy[contract.ONNX_INPUT_IDS]),
                torch.from_numpy(dummy[contract.ONNX_ATTENTION_MASK]),
            ),
            str(out_path),
            input_names=[contract.ONNX_INPUT_IDS, contract.ONNX_ATTENTION_MASK],
            output_names=[contract.ONNX_SENTENCE_EMBEDDING],
            dynamic_axes={
                contract.ONNX_INPUT_IDS: {0: batch, 1: seq},
                contract.ONNX_ATTENTION_MASK: {0: batch, 1: seq},
                contract.ONNX_SENTENCE_EMBEDDING: {0: batch},
            },
            opset_version=OPSET,
            dynamo=False,
        )
    onnx.checker.check_model(str(out_path))
    return out_path


def fuse_encoder(raw_path: Path, out_path: Path, num_heads: int, hidden_size: int) -> bool:
    """ONNX Runtime transformer fusion (attention, LayerNorm, GELU); False if it fails.

    A fused graph runs faster and quantizes better; if the optimizer cannot handle a
    graph we keep the unfused one rather than fail the conversion.
    """
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        optimized = optimize_model(
            str(raw_path),
            model_type="bert",
            num_heads=num_heads,
            hidden_size=hidden_size,
            opt_level=1,
        )
        optimized.save_model_to_file(str(out_path))
        log.info("fused ops: %s", optimized.get_fused_operator_statistics())
        return True
    except Exception as exc:  # the optimizer raises many types on unknown patterns
        log.warning("transformer fusion failed (%s); keeping the unfused graph", exc)
        return False


def encoder_dims(encoder_dir: Path) -> tuple[int, int]:
    """(attention heads, hidden size) of the BERT encoder saved in `encoder_dir`."""
    cfg = json.loads((Path(encoder_dir) / "config.json").read_text())
    return int(cfg["num_attention_heads"]), int(cfg["hidden_size"])


def export_fused_encoder(encoder_dir: Path, raw_path: Path, out_path: Path) -> bool:
    """Export the encoder to `raw_path`, then fuse it into `out_path`; when fusion fails,
    `out_path` is a copy of the raw graph. Returns whether the graph was fused."""
    raw = export_encoder(encoder_dir, raw_path)
    fused = fuse_encoder(raw, out_path, *encoder_dims(encoder_dir))
    if not fused:
        shutil.copyfile(raw, out_path)
    return fused


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


def torch_embeddings(encoder_dir: Path, texts: Sequence[str], max_length: int) -> np.ndarray:
    """PyTorch reference embeddings for `texts`."""
    model = load_sentence_encoder(encoder_dir)
    inputs = tokenize(encoder_dir, texts, max_length)
    with torch.no_grad():
        return model(*(torch.from_numpy(inputs[k]) for k in inputs)).numpy()


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
    """Cosine of ONNX vs PyTorch embeddings on `texts`; raise ParityError below `min_cosine`."""
    ref = reference if reference is not None else torch_embeddings(encoder_dir, texts, max_length)
    parity = cosine_parity(ref, onnx_embeddings(onnx_path, encoder_dir, texts, max_length))
    if parity.min_cosine < min_cosine:
        raise ParityError(
            f"{onnx_path.name}: min cosine vs PyTorch {parity.min_cosine:.5f} "
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
            opset_version=OPSET,
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
