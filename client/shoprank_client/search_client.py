"""A small gRPC client for the shoprank "search" ensemble served by Triton."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from shoprank_client.protocol import (
    CANDIDATE_IDS,
    DEFAULT_GRPC_URL,
    DEFAULT_TOP_K,
    ENSEMBLE_MODEL,
    ENSEMBLE_OUTPUTS,
    HISTORY,
    MAX_CANDIDATES,
    MAX_TOP_K,
    PRODUCT_IDS,
    QUERY,
    RERANK_MODEL,
    SCORES,
    TITLES,
    TOP_K,
)

DEFAULT_TIMEOUT_S = 10.0
_INT64 = np.iinfo(np.int64)


@dataclass(frozen=True)
class SearchResult:
    """One ranked product."""

    rank: int  # 1-based
    product_id: int
    score: float
    title: str

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, e.g. for JSON output."""
        return asdict(self)


class SearchError(RuntimeError):
    """The server (or the connection to it) failed a search.

    `status` is the gRPC status name without its prefix, e.g. "INVALID_ARGUMENT",
    "UNAVAILABLE" or "DEADLINE_EXCEEDED" (None when unknown); `message` is the server's text.
    """

    def __init__(self, message: str, status: str | None = None) -> None:
        self.message = message
        self.status = status
        super().__init__(f"{status}: {message}" if status else message)

    @classmethod
    def from_exception(cls, err: InferenceServerException) -> SearchError:
        status = err.status()
        if status:
            status = str(status).removeprefix("StatusCode.")
        return cls(err.message() or str(err), status)


def _ids(values: Sequence[int], what: str) -> np.ndarray:
    """Product ids as an int64 row [1, n], with a clear error for anything else."""
    if isinstance(values, (str, bytes)):
        raise ValueError(f"{what} must be a sequence of product ids, not a string")
    ids = list(values)
    for item in ids:
        if isinstance(item, bool) or not isinstance(item, (int, np.integer)):
            raise ValueError(f"{what} ids must be ints, got {item!r}")
        if not _INT64.min <= item <= _INT64.max:
            raise ValueError(f"{what} id {item} does not fit in int64")
    # The batch dimension (models have max_batch_size > 0) makes this [1, n]; n may be 0.
    return np.array(ids, dtype=np.int64).reshape(1, len(ids))


def _validate(query: str, history: Sequence[int], top_k: int) -> np.ndarray:
    """Client-side checks with clear messages; returns the history as an int64 row."""
    if not isinstance(query, str):
        raise ValueError(f"query must be a str, got {type(query).__name__}")
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)):
        raise ValueError(f"top_k must be an int, got {type(top_k).__name__}")
    if not 1 <= top_k <= MAX_TOP_K:
        raise ValueError(f"top_k must be in 1..{MAX_TOP_K}, got {top_k}")
    return _ids(history, "history")


def _inputs(
    query: str, history: np.ndarray, top_k: int, candidates: np.ndarray | None = None
) -> list[grpcclient.InferInput]:
    arrays = {
        QUERY: np.array([[query.encode("utf-8")]], dtype=QUERY.numpy_dtype),
        HISTORY: history,
        TOP_K: np.array([[top_k]], dtype=TOP_K.numpy_dtype),
    }
    if candidates is not None:
        arrays[CANDIDATE_IDS] = candidates
    inputs = []
    for spec, array in arrays.items():
        tensor = grpcclient.InferInput(spec.name, list(array.shape), spec.client_dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


# Built once: every request asks for the same outputs, and the request copies them.
_OUTPUTS = [grpcclient.InferRequestedOutput(s.name) for s in ENSEMBLE_OUTPUTS]


def parse_response(response: grpcclient.InferResult) -> list[SearchResult]:
    """Turn a Triton response of the ensemble into ranked results."""
    ids = response.as_numpy(PRODUCT_IDS.name)
    scores = response.as_numpy(SCORES.name)
    titles = response.as_numpy(TITLES.name)
    if ids is None or scores is None or titles is None:
        raise SearchError("response is missing an output tensor", "INTERNAL")
    # Drop the batch dimension of our single request.
    ids, scores, titles = ids.reshape(-1), scores.reshape(-1), titles.reshape(-1)
    if not len(ids) == len(scores) == len(titles):
        raise SearchError(
            f"inconsistent output lengths: {len(ids)} ids, {len(scores)} scores, "
            f"{len(titles)} titles",
            "INTERNAL",
        )
    return [
        SearchResult(
            rank=rank,
            product_id=int(pid),
            score=float(score),
            title=title.decode("utf-8", errors="replace")
            if isinstance(title, bytes)
            else str(title),
        )
        for rank, (pid, score, title) in enumerate(zip(ids, scores, titles, strict=True), 1)
    ]


class SearchClient:
    """Search the shoprank ensemble over gRPC.

    >>> with SearchClient("localhost:8001") as client:
    ...     results = client.search("red leather sofa", history=[12, 55], top_k=5)
    """

    def __init__(
        self,
        url: str = DEFAULT_GRPC_URL,
        model: str = ENSEMBLE_MODEL,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        rerank_model: str = RERANK_MODEL,
    ) -> None:
        self.url = url
        self.model = model
        self.rerank_model = rerank_model
        self.timeout_s = timeout_s
        self._client = grpcclient.InferenceServerClient(url=url)

    def search(
        self, query: str, history: Sequence[int] = (), top_k: int = DEFAULT_TOP_K
    ) -> list[SearchResult]:
        """Rank products for `query` given the shopper's `history` (product ids, oldest first).

        Raises:
            ValueError: invalid arguments (checked before anything is sent).
            SearchError: the server rejected the request or could not be reached.
        """
        inputs = _inputs(query, _validate(query, history, top_k), top_k)
        try:
            response = self._client.infer(
                self.model, inputs, outputs=_OUTPUTS, client_timeout=self.timeout_s
            )
        except InferenceServerException as err:
            raise SearchError.from_exception(err) from None
        return parse_response(response)

    def rerank(
        self,
        query: str,
        candidates: Sequence[int],
        history: Sequence[int] = (),
        top_k: int = DEFAULT_TOP_K,
    ) -> list[SearchResult]:
        """Rank only `candidates` (product ids from your own engine) for `query` and the
        shopper's `history`. Unknown and repeated ids are ignored; an empty (or all
        unknown) list gives no results.

        Raises:
            ValueError: invalid arguments, or more than MAX_CANDIDATES candidates.
            SearchError: the server rejected the request or could not be reached.
        """
        rows = _ids(candidates, "candidate")
        if rows.shape[1] > MAX_CANDIDATES:
            raise ValueError(
                f"at most {MAX_CANDIDATES} candidates per request, got {rows.shape[1]}"
            )
        inputs = _inputs(query, _validate(query, history, top_k), top_k, rows)
        try:
            response = self._client.infer(
                self.rerank_model, inputs, outputs=_OUTPUTS, client_timeout=self.timeout_s
            )
        except InferenceServerException as err:
            raise SearchError.from_exception(err) from None
        return parse_response(response)

    def search_many(
        self,
        queries: Sequence[str],
        histories: Sequence[Sequence[int]] | None = None,
        top_k: int = DEFAULT_TOP_K,
    ) -> list[list[SearchResult]]:
        """Send many searches concurrently (gRPC async_infer) and return results in order.

        The requests are in flight together, so Triton's dynamic batcher can batch them.
        Raises the first request's SearchError (by position) if any failed.
        """
        if histories is None:
            histories = [()] * len(queries)
        if len(histories) != len(queries):
            raise ValueError(f"{len(queries)} queries but {len(histories)} histories")
        requests = [
            _inputs(q, _validate(q, h, top_k), top_k)
            for q, h in zip(queries, histories, strict=True)
        ]
        results: list[Any] = [None] * len(requests)
        remaining = len(requests)
        done = threading.Event()
        lock = threading.Lock()

        def callback(index: int, result: Any, error: InferenceServerException | None) -> None:
            nonlocal remaining
            results[index] = error if error is not None else result
            with lock:
                remaining -= 1
                if remaining == 0:
                    done.set()

        if not requests:
            return []
        for index, inputs in enumerate(requests):
            try:
                self._client.async_infer(
                    self.model,
                    inputs,
                    callback=lambda result, error, i=index: callback(i, result, error),
                    outputs=_OUTPUTS,
                    client_timeout=self.timeout_s,
                )
            except InferenceServerException as err:
                callback(index, None, err)
        # Every call carries client_timeout, so each callback fires within it; the margin
        # only guards against a lost callback.
        if not done.wait(self.timeout_s + 5):
            raise SearchError("timed out waiting for concurrent searches", "DEADLINE_EXCEEDED")
        parsed = []
        for item in results:
            if isinstance(item, InferenceServerException):
                raise SearchError.from_exception(item)
            parsed.append(parse_response(item))
        return parsed

    def is_ready(self) -> bool:
        """True if the server is reachable and ready and the model is ready."""
        try:
            return bool(
                self._client.is_server_ready(client_timeout=self.timeout_s)
                and self._client.is_model_ready(self.model, client_timeout=self.timeout_s)
            )
        except InferenceServerException:
            return False

    def server_metadata(self) -> dict[str, Any]:
        """Server name and version, as Triton reports them."""
        try:
            meta = self._client.get_server_metadata(as_json=True, client_timeout=self.timeout_s)
        except InferenceServerException as err:
            raise SearchError.from_exception(err) from None
        return {"name": meta.get("name"), "version": meta.get("version")}

    def close(self) -> None:
        """Close the gRPC channel."""
        self._client.close()

    def __enter__(self) -> SearchClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
