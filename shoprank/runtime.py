"""What every stage runs the same way: the work behind the Triton Python-backend models.

`model_repository/models/*.py` only move tensors between Triton and these functions, the
in-process pipeline (`shoprank.pipeline`) chains them without a server, and conversion
calibrates and times the encoder through the same tokenizer, padding and ONNX Runtime
session settings, so what is measured is what is served. Everything that can go wrong
with a request (bad text, unknown ids, odd top-k) is decided and unit-tested here.

Request rules (documented in the README):
- QUERY must be valid UTF-8 with some non-whitespace text, else INVALID_ARGUMENT. Text
  beyond MAX_QUERY_CHARS characters is dropped and tokens beyond MAX_QUERY_TOKENS are
  truncated: a long query is served, never rejected.
- HISTORY ids not in the catalog are ignored; only the MAX_HISTORY most recent (last) ids
  are used. An empty history means cold start: text-only ranking.
- TOP_K must be in 1..MAX_TOP_K, else INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from shoprank import contract


# ---------------------------------------------------------------------------------------
# ONNX Runtime
# ---------------------------------------------------------------------------------------
def cpu_session(
    path: Path | str, threads: int = 1, providers: tuple[str, ...] = ("CPUExecutionProvider",)
) -> ort.InferenceSession:
    """A session with `threads` intra-op threads and spinning disabled.

    Spinning threads busy-wait between ops; on a 2-core host that steals the core the
    other model instance (or the tokenizer) needs, so it is always off here. `providers`
    lists execution providers in order of preference; those this ONNX Runtime build lacks
    are skipped (the CUDA one exists only in onnxruntime-gpu, on GPU hosts).
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    available = set(ort.get_available_providers())
    chosen = [p for p in providers if p in available] or ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), sess_options=options, providers=chosen)


def encoder_feeds(input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
    """ONNX feeds for the encoder."""
    return {contract.ONNX_INPUT_IDS: input_ids, contract.ONNX_ATTENTION_MASK: attention_mask}


# ---------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------
class InvalidInput(ValueError):
    """A request the server must answer with INVALID_ARGUMENT (the message says why;
    `reason` is a short label for the invalid-request metric)."""

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


def decode_query(raw: bytes | str | np.bytes_) -> str:
    """Validated query text: UTF-8, trimmed, non-empty, at most MAX_QUERY_CHARS characters."""
    if isinstance(raw, bytes | np.bytes_):
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(
                f"{contract.QUERY.name} is not valid UTF-8 (byte 0x{bytes(raw)[exc.start]:02x} "
                f"at offset {exc.start})",
                "query_not_utf8",
            ) from None
    elif isinstance(raw, str):
        text = raw
    else:
        raise InvalidInput(
            f"{contract.QUERY.name} must be a string, got {type(raw).__name__}", "query_type"
        )
    text = " ".join(text[: contract.MAX_QUERY_CHARS * 2].split())[: contract.MAX_QUERY_CHARS]
    if not text:
        raise InvalidInput(f"{contract.QUERY.name} is empty or only whitespace", "query_empty")
    return text


def validate_top_k(value: int) -> int:
    """TOP_K as an int in 1..MAX_TOP_K."""
    k = int(value)
    if not 1 <= k <= contract.MAX_TOP_K:
        raise InvalidInput(
            f"{contract.TOP_K.name} must be between 1 and {contract.MAX_TOP_K}, got {k}",
            "top_k",
        )
    return k


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
        for enc in self._tok.encode_batch(list(texts)):
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
    values = np.asarray(raw, dtype=object).reshape(-1)
    if values.size == 0:
        raise InvalidInput(f"{contract.QUERY.name} is missing", "query_empty")
    texts = []
    for i, value in enumerate(values):
        try:
            texts.append(decode_query(value))
        except InvalidInput as exc:
            message = f"{exc} (row {i})" if values.size > 1 else str(exc)
            raise InvalidInput(message, exc.reason) from None
    encoded = tokenizer.encode(texts)
    return pad_rows([ids for ids, _ in encoded]), pad_rows([m for _, m in encoded])


def encode_requests(
    session, ids: Sequence[np.ndarray], masks: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """One encoder call for a dynamic batch of requests, each (B_r, L_r): rows padded to the
    longest, embeddings split back per request, (B_r, D) each."""
    rows_ids = [row for r in ids for row in np.atleast_2d(r)]
    rows_mask = [row for r in masks for row in np.atleast_2d(r)]
    (embeddings,) = session.run(
        [contract.ONNX_SENTENCE_EMBEDDING], encoder_feeds(pad_rows(rows_ids), pad_rows(rows_mask))
    )
    bounds = np.cumsum([len(np.atleast_2d(r)) for r in ids])[:-1]
    return np.split(embeddings, bounds)


def row_values(raw: np.ndarray | None, rows: int, name: str) -> list[np.ndarray]:
    """Per-row id lists of an optional (B, n) input: [] for each row when it is absent;
    a batched request pads shorter rows with ids no product has (e.g. -1)."""
    if raw is None:
        return [np.zeros(0, np.int64) for _ in range(rows)]
    values = np.asarray(raw, dtype=np.int64)
    if values.ndim == 1:
        values = values.reshape(1, -1)
    if values.shape[0] != rows:
        raise InvalidInput(f"{name} has {values.shape[0]} rows for a batch of {rows}", "shape")
    return list(values)


def pad_answers(
    answers: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids (B, K), scores (B, K), titles (B, K)) of a request's rows, padded to the longest
    row with PADDING_ID, 0.0 and b"" (a one-row request is not padded)."""
    width = max((len(a[0]) for a in answers), default=0)
    ids = np.full((len(answers), width), contract.PADDING_ID, np.int64)
    scores = np.zeros((len(answers), width), np.float32)
    titles = np.full((len(answers), width), b"", dtype=object)
    for i, (row_ids, row_scores, row_titles) in enumerate(answers):
        ids[i, : len(row_ids)] = row_ids
        scores[i, : len(row_ids)] = row_scores
        titles[i, : len(row_ids)] = row_titles
    return ids, scores, titles


def row_flags(raw: np.ndarray | None, rows: int, name: str) -> list[bool]:
    """One bool per row of an optional (B, 1) BOOL input; all False when it is absent."""
    if raw is None:
        return [False] * rows
    flat = np.asarray(raw).reshape(-1)
    if flat.size != rows:
        raise InvalidInput(f"{name} must hold one value per row, got {flat.size}", "shape")
    return [bool(v) for v in flat]


def pad_explanations(explanations: Sequence[np.ndarray | None], width: int) -> np.ndarray:
    """(B, width) EXPLANATION of a request's rows: each row's JSON per result, b"" where a
    row did not ask or has fewer results."""
    out = np.full((len(explanations), width), b"", dtype=object)
    for i, row in enumerate(explanations):
        if row is not None:
            out[i, : len(row)] = row
    return out


def pad_rows(rows: Sequence[np.ndarray], pad: float = 0, min_width: int = 1) -> np.ndarray:
    """Stack 1-D arrays of different lengths into (B, max_len), right-padded with `pad`."""
    width = max([min_width, *(len(r) for r in rows)])
    out = np.full((len(rows), width), pad, dtype=rows[0].dtype if rows else np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


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


@dataclass
class CatalogIndex:
    """Product ids ↔ catalog rows, titles, and the facets filters look at."""

    product_ids: np.ndarray  # (N,) int64, row order of the item table
    titles: np.ndarray  # (N,) object (bytes), same order
    categories: np.ndarray | None = None  # (N,) str category paths; None: unknown
    prices: np.ndarray | None = None  # (N,) float64, NaN unknown
    in_stock: np.ndarray | None = None  # (N,) bool; None: everything in stock

    def __post_init__(self) -> None:
        self._order = np.argsort(self.product_ids, kind="stable")
        self._sorted = self.product_ids[self._order]

    @classmethod
    def load(cls, path: Path) -> CatalogIndex:
        """From the `catalog.npz` written by the repository builder."""
        with np.load(path, allow_pickle=False) as z:
            titles = np.array([t.encode("utf-8") for t in z["titles"].tolist()], dtype=object)
            optional = {k: z[k] for k in ("categories", "prices", "in_stock") if k in z.files}
            return cls(product_ids=z["product_ids"].astype(np.int64), titles=titles, **optional)

    def save(self, path: Path) -> None:
        """Write ids, titles (as unicode, no pickles) and the known facets for `load`."""
        titles = np.array(
            [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in self.titles]
        )
        facets = {
            k: v
            for k, v in (
                ("categories", self.categories),
                ("prices", self.prices),
                ("in_stock", self.in_stock),
            )
            if v is not None
        }
        np.savez(path, product_ids=self.product_ids, titles=titles, **facets)

    def rows_of(self, history: np.ndarray) -> np.ndarray:
        """Catalog rows of the last MAX_HISTORY known ids of `history`; unknown ids dropped."""
        ids = np.asarray(history, dtype=np.int64).reshape(-1)
        if ids.size > contract.MAX_HISTORY_IDS:
            raise InvalidInput(
                f"{contract.HISTORY.name} holds {ids.size} ids; at most "
                f"{contract.MAX_HISTORY_IDS} per row (the last {contract.MAX_HISTORY} are used)",
                "history_too_long",
            )
        return self.known_rows(ids)[-contract.MAX_HISTORY :]

    def known_rows(self, ids: np.ndarray) -> np.ndarray:
        """Catalog rows of the ids that are in the catalog, in order; unknown ids dropped."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 0 or len(self._sorted) == 0:
            return np.zeros(0, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self._sorted, ids), len(self._sorted) - 1)
        return self._order[pos[self._sorted[pos] == ids]]

    def candidate_rows(self, ids: np.ndarray) -> tuple[np.ndarray, int, int]:
        """(rows of the known ids, each once in first-seen order, #unknown, #duplicates).

        Raises InvalidInput for more than MAX_CANDIDATES ids; an empty or all-unknown list
        is fine (it ranks to zero results).
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size > contract.MAX_CANDIDATES:
            raise InvalidInput(
                f"{contract.CANDIDATE_IDS.name} holds {ids.size} ids; at most "
                f"{contract.MAX_CANDIDATES} may be re-ranked per request",
                "too_many_candidates",
            )
        if ids.size == 0 or len(self._sorted) == 0:
            return np.zeros(0, dtype=np.int64), int(ids.size), 0
        pos = np.minimum(np.searchsorted(self._sorted, ids), len(self._sorted) - 1)
        known = self._sorted[pos] == ids
        rows = self._order[pos[known]]
        _, first = np.unique(rows, return_index=True)
        unique = rows[np.sort(first)]
        return unique, int((~known).sum()), int(len(rows) - len(unique))
