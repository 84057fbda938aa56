"""Parity of the exported graphs, and the ranker's export.

The encoder is exported by `shoprank.models.encoder` from the sentence-transformers model training
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
import onnx.utils
import torch

from shoprank import contract
from shoprank.conversion.quality import row_cosine
from shoprank.core.covisits import SEQUENTIAL_ONLY, Blend, CoVisits
from shoprank.core.features import ITEM_FEATURES, USER_ITEM_FEATURES
from shoprank.core.lexical import LEXICAL_FEATURES
from shoprank.core.sessions import cpu_session, encoder_feeds
from shoprank.core.shopper_vectors import left_pad, save_item_vectors
from shoprank.models.encoder import ONNX_OPSET, embed, load_encoder
from shoprank.models.fusion import FusionRanker
from shoprank.models.sequential import SequentialRecommender


class ParityError(RuntimeError):
    """ONNX output differs from its reference beyond the allowed tolerance."""


def tokenize(encoder_dir: Path, texts: Sequence[str], max_length: int) -> dict[str, np.ndarray]:
    """The encoder folder's own tokenization (as `SentenceTransformer.encode` does it), as
    int64 ONNX feeds padded to the longest text."""
    return _feeds(_tokenizer(encoder_dir), texts, max_length)


def _tokenizer(encoder_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(encoder_dir))


def _feeds(tok, texts: Sequence[str], max_length: int) -> dict[str, np.ndarray]:
    enc = tok(
        list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="np"
    )
    return encoder_feeds(enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64))


def batch_drift(
    onnx_path: Path, encoder_dir: Path, texts: Sequence[str], max_length: int, batch: int = 8
) -> float:
    """The largest change of any embedding coordinate between a text encoded alone and in
    batches of `batch` (padded to the batch's longest, as a dynamic batch is served).

    A graph that encodes each row on its own gives float rounding (~1e-7); dynamic int8
    does not, as it quantizes activations with one scale per batch, so a query's embedding
    and its results would depend on the requests it happens to be batched with.
    """
    tok = _tokenizer(encoder_dir)
    session = cpu_session(onnx_path)

    def embed(chunk: Sequence[str]) -> np.ndarray:
        feeds = _feeds(tok, chunk, max_length)
        return session.run([contract.ONNX_SENTENCE_EMBEDDING], feeds)[0]

    alone = np.concatenate([embed([t]) for t in texts])
    together = np.concatenate([embed(texts[i : i + batch]) for i in range(0, len(texts), batch)])
    return float(np.abs(alone - together).max())


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


RANKER_INPUTS = (
    contract.ONNX_RANKER_QUERY,
    contract.ONNX_RANKER_HISTORY,
    contract.ONNX_RANKER_HISTORY_MASK,
    contract.ONNX_RANKER_CANDIDATES,
    contract.ONNX_RANKER_LEXICAL,
    contract.ONNX_RANKER_ITEM_FEATURES,
    contract.ONNX_RANKER_USER_ITEM,
)
RANKER_OUTPUTS = (
    contract.ONNX_RANKER_RELEVANCE,
    contract.ONNX_RANKER_SCORES,
    contract.ONNX_RANKER_PARTS,
)


class _ExplainedRanker(torch.nn.Module):
    """The served ranker graph: forward's (relevance, score) plus the score's parts, which
    ONNX Runtime computes only when an explanation asks for them."""

    def __init__(self, ranker: FusionRanker) -> None:
        super().__init__()
        self.ranker = ranker

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (*self.ranker(*inputs), self.ranker.parts(*inputs))


def ranker_sample(
    item_embeddings: np.ndarray, query_embeddings: np.ndarray, seed: int = 0, candidates: int = 9
) -> dict[str, np.ndarray]:
    """Ranker feeds from real queries and real product vectors, random histories (some
    empty: cold start) and random features, for export and parity."""
    rng = np.random.default_rng(seed)
    b = len(query_embeddings)
    n = len(item_embeddings)
    history = item_embeddings[rng.integers(0, n, size=(b, 7))]
    mask = (rng.random((b, 7)) < 0.6).astype(np.float32)
    mask[0] = 0.0  # always a cold-start row
    return {
        contract.ONNX_RANKER_QUERY: query_embeddings.astype(np.float32),
        contract.ONNX_RANKER_HISTORY: (history * mask[:, :, None]).astype(np.float32),
        contract.ONNX_RANKER_HISTORY_MASK: mask,
        contract.ONNX_RANKER_CANDIDATES: item_embeddings[
            rng.integers(0, n, size=(b, candidates))
        ].astype(np.float32),
        contract.ONNX_RANKER_LEXICAL: rng.random(
            (b, candidates, len(LEXICAL_FEATURES)), np.float32
        ),
        contract.ONNX_RANKER_ITEM_FEATURES: rng.normal(
            size=(b, candidates, len(ITEM_FEATURES))
        ).astype(np.float32),
        contract.ONNX_RANKER_USER_ITEM: rng.random(
            (b, candidates, len(USER_ITEM_FEATURES)), np.float32
        ),
    }


def export_ranker(ranker: FusionRanker, out_path: Path, sample: dict[str, np.ndarray]) -> Path:
    """Export the fusion ranker's scoring graph: gathered tensors in, (relevance, scores) out;
    batch, history length and candidate count dynamic (no catalog inside)."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    batch, history, cand = {0: "batch"}, {0: "batch", 1: "history"}, {0: "batch", 1: "candidates"}
    axes = {
        contract.ONNX_RANKER_QUERY: batch,
        contract.ONNX_RANKER_HISTORY: history,
        contract.ONNX_RANKER_HISTORY_MASK: history,
        contract.ONNX_RANKER_CANDIDATES: cand,
        contract.ONNX_RANKER_LEXICAL: cand,
        contract.ONNX_RANKER_ITEM_FEATURES: cand,
        contract.ONNX_RANKER_USER_ITEM: cand,
        contract.ONNX_RANKER_RELEVANCE: cand,
        contract.ONNX_RANKER_SCORES: cand,
        contract.ONNX_RANKER_PARTS: cand,
    }
    with torch.no_grad():
        torch.onnx.export(
            _ExplainedRanker(ranker.eval()),
            tuple(torch.from_numpy(sample[name]) for name in RANKER_INPUTS),
            str(out_path),
            input_names=list(RANKER_INPUTS),
            output_names=list(RANKER_OUTPUTS),
            dynamic_axes=axes,
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    onnx.checker.check_model(str(out_path))
    return out_path


RELEVANCE_INPUTS = (
    contract.ONNX_RANKER_QUERY,
    contract.ONNX_RANKER_CANDIDATES,
    contract.ONNX_RANKER_LEXICAL,
)


def export_relevance(ranker_onnx: Path, out_path: Path, sample: dict[str, np.ndarray]) -> Path:
    """The ranker graph's relevance output alone, cut out of it (`onnx.utils.extract_model`),
    checked against the whole graph on `sample`. 23 of the demo ranker's 84 nodes: 0.08 ms
    for 230 candidates against 0.20 ms for the whole graph asked for relevance only."""
    onnx.utils.extract_model(
        str(ranker_onnx), str(out_path), list(RELEVANCE_INPUTS), [contract.ONNX_RANKER_RELEVANCE]
    )
    (want,) = cpu_session(ranker_onnx).run([contract.ONNX_RANKER_RELEVANCE], sample)
    (got,) = cpu_session(out_path).run(None, {name: sample[name] for name in RELEVANCE_INPUTS})
    diff = float(np.abs(got - want).max()) if got.size else 0.0
    if diff > 1e-5:
        raise ParityError(f"{out_path.name}: relevance off {ranker_onnx.name}'s by {diff:.2e}")
    return out_path


def check_ranker_parity(
    onnx_path: Path,
    ranker: FusionRanker,
    feeds: dict[str, np.ndarray],
    tolerance: float = 1e-3,
) -> float:
    """Max |score| difference ONNX vs PyTorch (relevance and full score) on `feeds`."""
    got = cpu_session(onnx_path, threads=2).run(list(RANKER_OUTPUTS), feeds)
    with torch.no_grad():
        inputs = [torch.from_numpy(feeds[n]) for n in RANKER_INPUTS]
        want = [t.numpy() for t in _ExplainedRanker(ranker.eval())(*inputs)]
    diff = max(float(np.abs(g - w).max()) for g, w in zip(got, want, strict=True))
    scale = max(1.0, *(float(np.abs(w).max()) for w in want))
    if diff > tolerance * scale:
        raise ParityError(f"{onnx_path.name}: max score diff vs PyTorch {diff:.2e}")
    return diff


class _UserVector(torch.nn.Module):
    """The served part of the sequential model: history item vectors → shopper vector."""

    def __init__(self, model: SequentialRecommender) -> None:
        super().__init__()
        self.encoder = model.encoder

    def forward(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.encoder.user_vector(history, mask)


def export_sequential(
    model: SequentialRecommender,
    text_embeddings: np.ndarray,
    popularity: np.ndarray,
    onnx_path: Path,
    vectors_path: Path,
    seed: int = 0,
    blend: Blend = SEQUENTIAL_ONLY,
    covisits: CoVisits | None = None,
) -> float:
    """Write the history encoder's graph and every catalog row's item vector (with the
    popularity prior, the served blend and its co-visits) and return the max |user vector|
    difference ONNX vs PyTorch on random histories (raises ParityError beyond 1e-3
    relative)."""
    model.eval()
    with torch.no_grad():
        items = model.item_vectors(torch.from_numpy(np.ascontiguousarray(text_embeddings)))
    items_np = items.numpy().astype(np.float32)
    save_item_vectors(vectors_path, items_np, popularity, blend, covisits)

    rng = np.random.default_rng(seed)

    def sample(longest: int) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = rng.integers(0, longest + 1, 16)
        histories = [list(rng.integers(0, len(items_np), n)) for n in lengths]
        rows, mask = left_pad(histories, model.config.max_len)
        return torch.from_numpy(items_np[rows]), torch.from_numpy(mask)

    names = (contract.ONNX_SEQ_HISTORY, contract.ONNX_SEQ_MASK)
    wrapper = _UserVector(model).eval()
    # Traced at the longest history, checked at shorter ones: the length must stay dynamic.
    traced, checked = sample(model.config.max_len), sample(7)
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            traced,
            str(onnx_path),
            input_names=list(names),
            output_names=[contract.ONNX_SEQ_USER],
            dynamic_axes={
                contract.ONNX_SEQ_HISTORY: {0: "batch", 1: "history"},
                contract.ONNX_SEQ_MASK: {0: "batch", 1: "history"},
                contract.ONNX_SEQ_USER: {0: "batch"},
            },
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
        want = wrapper(*checked).numpy()
    onnx.checker.check_model(str(onnx_path))
    got = cpu_session(onnx_path, threads=2).run(
        [contract.ONNX_SEQ_USER], {n: t.numpy() for n, t in zip(names, checked, strict=True)}
    )[0]
    diff = float(np.abs(got - want).max())
    if diff > 1e-3 * max(1.0, float(np.abs(want).max())):
        raise ParityError(f"{onnx_path.name}: max user-vector diff vs PyTorch {diff:.2e}")
    return diff
