"""Query tokenization as served: WordPiece, truncated, padded to a multiple of
SEQUENCE_BUCKET (the Triton `tokenizer` model, the in-process pipeline, int8 calibration)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shoprank import contract
from shoprank.core.requests import InvalidInput, pad_rows, query_row
from shoprank.core.sessions import encoder_feeds


def tokenizer_file(encoder_dir: Path) -> Path:
    """The fast-tokenizer JSON saved beside the weights (what the Triton tokenizer loads)."""
    path = Path(encoder_dir) / contract.TOKENIZER_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: the encoder folder must hold a fast tokenizer")
    return path


class QueryTokenizer:
    """WordPiece tokenization with truncation and bucketed (not maximal) padding."""

    def __init__(
        self,
        tokenizer_json: Path,
        max_tokens: int = contract.MAX_QUERY_TOKENS,
        bucket: int = contract.SEQUENCE_BUCKET,
    ) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(tokenizer_json))
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=max_tokens)
        self.bucket = bucket

    def encode(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per text: (input_ids, attention_mask), int64, padded up to a multiple of `bucket`."""
        out = []
        # Text by text: `encode_batch` hands several texts to its thread pool, which for a
        # few short queries costs twice the tokenizing itself (measured: 4 queries 67 µs
        # in one call, 35 µs one by one) and more on cores shared with other stubs.
        for enc in (self._tok.encode(text) for text in texts):
            n = len(enc.ids)
            width = -(-n // self.bucket) * self.bucket
            ids = np.zeros(width, dtype=np.int64)
            mask = np.zeros(width, dtype=np.int64)
            ids[:n] = enc.ids
            mask[:n] = 1
            out.append((ids, mask))
        return out


def tokenize_rows(tokenizer: QueryTokenizer, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids (B, L), attention_mask (B, L)) for a request's QUERY rows (B, 1): each
    row validated (InvalidInput names the row of a batched request), tokenized and padded
    to the longest row (itself a multiple of SEQUENCE_BUCKET)."""
    (result,) = tokenize_requests(tokenizer, [raw])
    if isinstance(result, InvalidInput):
        raise result
    return result


def tokenize_requests(
    tokenizer: QueryTokenizer, raws: Sequence[np.ndarray]
) -> list[tuple[np.ndarray, np.ndarray] | InvalidInput]:
    """`tokenize_rows` of each request of a dynamic batch, with one tokenizer call for all
    their rows: per request its (input_ids, attention_mask), or the InvalidInput that
    refuses it (the other requests are tokenized all the same)."""
    out: list[tuple[np.ndarray, np.ndarray] | InvalidInput | None] = []
    texts: list[str] = []
    spans: list[tuple[int, int, int]] = []  # (request, first text, count)
    for i, raw in enumerate(raws):
        values = np.asarray(raw, dtype=object).reshape(-1)
        try:
            if values.size == 0:
                raise InvalidInput(f"{contract.QUERY.name} is missing", "query_empty")
            rows = [query_row(value, j, values.size) for j, value in enumerate(values)]
        except InvalidInput as exc:
            out.append(exc)
            continue
        out.append(None)
        spans.append((i, len(texts), len(rows)))
        texts += rows
    encoded = tokenizer.encode(texts) if texts else []
    for i, first, count in spans:
        chunk = encoded[first : first + count]
        out[i] = (pad_rows([ids for ids, _ in chunk]), pad_rows([m for _, m in chunk]))
    return out  # type: ignore[return-value]  # every None was filled above


def tokenized_feeds(
    tokenizer_json: Path,
    texts: Sequence[str],
    max_tokens: int = contract.MAX_QUERY_TOKENS,
    batch_size: int = 16,
) -> list[dict[str, np.ndarray]]:
    """Encoder feeds for `texts`, tokenized and batched exactly as served.

    The Triton tokenizer truncates at `max_tokens` and pads each text to a multiple of
    SEQUENCE_BUCKET; the encoder pads a dynamic batch to its longest member. Calibrating or
    timing on anything else (e.g. everything padded to 32) would measure inputs production
    never sees.
    """
    tokenizer = QueryTokenizer(tokenizer_json, max_tokens=max_tokens)
    encoded = tokenizer.encode(list(texts))
    feeds = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        feeds.append(
            encoder_feeds(pad_rows([ids for ids, _ in chunk]), pad_rows([m for _, m in chunk]))
        )
    return feeds


def product_tokenizer(tokenizer_json: str, max_tokens: int = contract.MAX_PRODUCT_TOKENS):
    """The encoder folder's fast tokenizer (its JSON text), truncating at `max_tokens`, no
    padding: product texts as the catalog is embedded (`embed_texts`)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json)
    tok.no_padding()
    tok.enable_truncation(max_length=max_tokens)
    return tok


def embed_texts(
    session, tokenizer, texts: Sequence[str], batch_size: int, progress: str | None = None
) -> np.ndarray:
    """Embeddings (N, D) of `texts` in their order: sorted by token count, each batch padded
    to its longest text (the catalog jobs of training and conversion embed this way).
    `progress`: a bar over the batches with that label."""
    ids = [np.asarray(e.ids, np.int64) for e in tokenizer.encode_batch(list(texts))]
    order = np.argsort([len(i) for i in ids], kind="stable")
    out: np.ndarray | None = None
    from tqdm.auto import tqdm

    starts = range(0, len(ids), batch_size)
    for start in tqdm(starts, desc=progress, disable=progress is None):
        rows = order[start : start + batch_size]
        feeds = encoder_feeds(
            pad_rows([ids[i] for i in rows]), pad_rows([np.ones_like(ids[i]) for i in rows])
        )
        (emb,) = session.run([contract.ONNX_SENTENCE_EMBEDDING], feeds)
        if out is None:
            out = np.zeros((len(ids), emb.shape[1]), np.float32)
        out[rows] = emb
    return out if out is not None else np.zeros((0, 0), np.float32)
