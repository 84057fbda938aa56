"""Request and response tensors: validation of what a caller sends, padding of what is
answered. Everything that can go wrong with a request is decided and unit-tested here.

Request rules (documented in the README):
- QUERY must be valid UTF-8 with some non-whitespace text, else INVALID_ARGUMENT. Text
  beyond MAX_QUERY_CHARS characters is dropped and tokens beyond MAX_QUERY_TOKENS are
  truncated: a long query is served, never rejected.
- HISTORY ids not in the catalog are ignored; only the MAX_HISTORY most recent (last) ids
  are used. An empty history means cold start: text-only ranking.
- TOP_K must be in 1..MAX_TOP_K, else INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from shoprank import contract


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


def query_row(value: object, row: int, rows: int) -> str:
    """One QUERY row validated (`decode_query`); the error names the row of a batched request."""
    try:
        return decode_query(value)
    except InvalidInput as exc:
        message = f"{exc} (row {row})" if rows > 1 else str(exc)
        raise InvalidInput(message, exc.reason) from None


def required(arrays: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    """Input `name` of a request's tensors by name; a request without it is refused naming
    it (contract.MODEL_VALIDATED_INPUTS: Triton lets it through)."""
    value = arrays.get(name)
    if value is None:
        raise InvalidInput(f"{name} is missing: the request must carry it", "missing_input")
    return value


def validate_top_k(value: int) -> int:
    """TOP_K as an int in 1..MAX_TOP_K."""
    k = int(value)
    if not 1 <= k <= contract.MAX_TOP_K:
        raise InvalidInput(
            f"{contract.TOP_K.name} must be between 1 and {contract.MAX_TOP_K}, got {k}",
            "top_k",
        )
    return k


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
    if len(answers) == 1:  # nothing to pad: views of the row, no copies
        row_ids, row_scores, row_titles = answers[0]
        return (
            np.asarray(row_ids, np.int64).reshape(1, -1),
            np.asarray(row_scores, np.float32).reshape(1, -1),
            np.asarray(row_titles, dtype=object).reshape(1, -1),
        )
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
