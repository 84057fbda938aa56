"""The text encoder, defined once: the sentence-transformers model that training saves.

Queries and products are embedded by the same network into a shared space; relevance is
their cosine. Training fine-tunes and saves a sentence-transformers model; everything
downstream uses *that* model's own modules (its Transformer, Pooling and, where present,
Normalize): `embed` is `SentenceTransformer.encode`, and `SentenceEmbedder` wraps the same
modules as a plain (input_ids, attention_mask) → embedding module for the ONNX export.
An encoder with CLS pooling (allowed by `--encoder-path`) is therefore served with CLS
pooling, and the conversion's parity check compares the export against `encode` itself.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shoprank import contract

# Nothing may be fetched from a hub at run time: the machines that run this are offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

ONNX_OPSET = 17


def load_encoder(
    path: str | Path | None = None,
    max_seq_length: int = contract.MAX_PRODUCT_TOKENS,
    eager_attention: bool = False,
) -> SentenceTransformer:
    """Load a sentence-transformers encoder (or a plain Hugging Face BERT folder) from disk.

    `path=None` means the packaged all-MiniLM-L6-v2. `eager_attention` selects the plain
    attention implementation, which the ONNX exporter can trace (SDPA it cannot).
    """
    path = Path(path) if path else contract.pretrained_encoder_path()
    if not path.exists():
        raise FileNotFoundError(f"encoder folder not found: {path}")
    kwargs = {"model_kwargs": {"attn_implementation": "eager"}} if eager_attention else {}
    model = SentenceTransformer(str(path), device="cpu", **kwargs)
    model.max_seq_length = max_seq_length
    return model


def embed(
    model: SentenceTransformer,
    texts: Sequence[str],
    batch_size: int = 128,
    max_seq_length: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """L2-normalised float32 embeddings, shape (len(texts), dim): the reference embedding.

    Texts are sorted by length inside sentence-transformers, so batches pad little.
    `max_seq_length` applies to this call only: the model's own truncation length (what
    fine-tuning trains at) is restored afterwards.
    """
    kept = model.max_seq_length
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    try:
        with torch.inference_mode():
            out = model.encode(
                list(texts),
                batch_size=batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=progress,
            )
    finally:
        model.max_seq_length = kept
    return np.ascontiguousarray(out, dtype=np.float32)


def embedding_dim(model: SentenceTransformer) -> int:
    """Width of the sentence embedding."""
    dim = model.get_sentence_embedding_dimension()
    assert dim is not None
    return int(dim)


def encoder_dims(encoder_dir: Path) -> tuple[int, int]:
    """(attention heads, hidden size) of the transformer saved in `encoder_dir`."""
    cfg = json.loads((Path(encoder_dir) / contract.HF_CONFIG_FILE).read_text())
    return int(cfg["num_attention_heads"]), int(cfg["hidden_size"])


class SentenceEmbedder(nn.Module):
    """A saved sentence-transformers model as (input_ids, attention_mask) → embedding (B, D).

    Runs the model's own module stack, so its pooling is whatever training used; the
    result is L2-normalised like `embed` (a no-op when the stack ends in Normalize).
    """

    def __init__(self, model: SentenceTransformer) -> None:
        super().__init__()
        self.model = model

    @property
    def transformer(self) -> nn.Module:
        """The Hugging Face transformer inside (its `.config` has the shape)."""
        return self.model[0].auto_model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        features = {"input_ids": input_ids, "attention_mask": attention_mask}
        embedding = self.model(features)["sentence_embedding"]  # (B, D)
        return F.normalize(embedding, p=2.0, dim=-1)


def load_embedder(encoder_dir: Path) -> SentenceEmbedder:
    """The encoder folder as a traceable `SentenceEmbedder` (eager attention, eval mode)."""
    return SentenceEmbedder(load_encoder(encoder_dir, eager_attention=True)).eval()


def export_encoder(encoder_dir: Path, out_path: Path) -> Path:
    """Export the encoder to ONNX (TorchScript exporter, opset 17), batch and sequence dynamic."""
    import onnx

    model = load_embedder(encoder_dir)
    tok = model.model.tokenizer
    dummy = tok(
        ["red leather sofa", "a longer query about shoes"],
        padding=True,
        truncation=True,
        max_length=16,
        return_tensors="pt",
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    batch, seq = "batch", "sequence"
    with torch.no_grad():
        torch.onnx.export(
            model,
            (dummy["input_ids"], dummy["attention_mask"]),
            str(out_path),
            input_names=[contract.ONNX_INPUT_IDS, contract.ONNX_ATTENTION_MASK],
            output_names=[contract.ONNX_SENTENCE_EMBEDDING],
            dynamic_axes={
                contract.ONNX_INPUT_IDS: {0: batch, 1: seq},
                contract.ONNX_ATTENTION_MASK: {0: batch, 1: seq},
                contract.ONNX_SENTENCE_EMBEDDING: {0: batch},
            },
            opset_version=ONNX_OPSET,
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


def export_fused_encoder(encoder_dir: Path, raw_path: Path, out_path: Path) -> bool:
    """Export the encoder to `raw_path`, then fuse it into `out_path`; when fusion fails,
    `out_path` is a copy of the raw graph. Returns whether the graph was fused."""
    raw = export_encoder(encoder_dir, raw_path)
    fused = fuse_encoder(raw, out_path, *encoder_dims(encoder_dir))
    if not fused:
        shutil.copyfile(raw, out_path)
    return fused
