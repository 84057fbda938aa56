"""A small gRPC client for the shoprank "search" ensemble served by Triton."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from shoprank_client.protocol import (
    ALL_OUTPUTS,
    CANDIDATE_IDS,
    CATEGORY_PREFIX,
    DEFAULT_GRPC_URL,
    DEFAULT_TOP_K,
    ENSEMBLE_MODEL,
    ENSEMBLE_OUTPUTS,
    EXCLUDE_IDS,
    EXPLAIN,
    EXPLANATION,
    HISTORY,
    IN_STOCK_ONLY,
    MAX_BATCH_SIZE,
    MAX_CANDIDATES,
    MAX_EXCLUDE_IDS,
    MAX_TOP_K,
    PADDING_ID,
    PRICE_MAX,
    PRICE_MIN,
    PRODUCT_IDS,
    QUERY,
    RECOMMEND_MODEL,
    RERANK_MODEL,
    SCORES,
    TITLES,
    TOP_K,
)
from shoprank_client.target import channel_args, parse_target
from shoprank_client.throttle import AdaptiveThrottle

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_RETRIES = 2
DEFAULT_BACKOFF_S = 0.05
# The longest pause between two attempts (before jitter): doubling from 50 ms reaches
# minutes within a dozen retries, and a client waiting out a restart should notice the
# server back within a second or two, not long after.
DEFAULT_MAX_BACKOFF_S = 1.0
DEFAULT_THROTTLE_K = 2.0  # 0: no client-side throttling
DEFAULT_THROTTLE_WINDOW_S = 10.0
# Worth another try: the server refused for load, or is restarting. Anything else
# (INVALID_ARGUMENT, INTERNAL, DEADLINE_EXCEEDED) would fail again, or has no time left.
RETRYABLE = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")
# What the adaptive throttle counts as the server not taking a request.
NOT_ACCEPTED = (*RETRYABLE, "DEADLINE_EXCEEDED")
_INT64 = np.iinfo(np.int64)


@dataclass(frozen=True)
class SearchResult:
    """One ranked product."""

    rank: int  # 1-based
    product_id: int
    score: float
    title: str
    # With explain=True: {"score", "parts": {name: value} adding up to the score,
    # "similar_history": [{"product_id", "cosine"}]}.
    explanation: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, e.g. for JSON output (no explanation key when none was asked for)."""
        out = asdict(self)
        if out["explanation"] is None:
            del out["explanation"]
        return out


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


class ThrottledError(SearchError):
    """Dropped by this client without being sent (its last attempt, after any retries): the
    server has been refusing its load (see `shoprank_client.throttle`). Status UNAVAILABLE,
    like the server's own refusals."""

    def __init__(self) -> None:
        # One fixed text, so that error tables (Locust's) group these into one row.
        super().__init__(
            "throttled by the client: the server has been refusing requests; retry later",
            "UNAVAILABLE",
        )


class _InferenceClient(grpcclient.InferenceServerClient):
    """tritonclient's client with a close() that runs once.

    tritonclient closes the channel again from __del__. Under gevent (Locust) a second close
    of a closed gRPC channel at interpreter exit blocks forever; a closed client outlives its
    close() whenever an error's traceback still holds it, and Locust then hung at exit."""

    _closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            super().close()


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


@dataclass(frozen=True)
class Filters:
    """Optional result filters of search, rerank and recommend (None / empty: no filter).

    category_prefix: a category path prefix, case-insensitive ("Furniture > Sofas").
    price_min, price_max: a price range; products without a price never match one.
    exclude_ids: product ids never to return. in_stock_only: in-stock products only.
    """

    category_prefix: str | None = None
    price_min: float | None = None
    price_max: float | None = None
    exclude_ids: Sequence[int] = ()
    in_stock_only: bool = False

    def arrays(self) -> dict:
        """The filter inputs of a one-row request (only those that filter something)."""
        out: dict = {}
        if self.category_prefix:
            if not isinstance(self.category_prefix, str):
                raise ValueError("category_prefix must be a str")
            out[CATEGORY_PREFIX] = np.array(
                [[self.category_prefix.encode("utf-8")]], dtype=CATEGORY_PREFIX.numpy_dtype
            )
        for spec, value in ((PRICE_MIN, self.price_min), (PRICE_MAX, self.price_max)):
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                    raise ValueError(f"{spec.name.lower()} must be a number, got {value!r}")
                out[spec] = np.array([[value]], dtype=spec.numpy_dtype)
        low, high = self.price_min, self.price_max
        if low is not None and high is not None and low > high:
            raise ValueError(f"price_min {low} > price_max {high}")
        if len(self.exclude_ids):
            ids = _ids(self.exclude_ids, "exclude")
            if ids.shape[1] > MAX_EXCLUDE_IDS:
                raise ValueError(f"at most {MAX_EXCLUDE_IDS} excluded ids, got {ids.shape[1]}")
            out[EXCLUDE_IDS] = ids
        if self.in_stock_only:
            out[IN_STOCK_ONLY] = np.array([[True]], dtype=IN_STOCK_ONLY.numpy_dtype)
        return out


def _inputs(
    query: str | None,
    history: np.ndarray,
    top_k: int,
    candidates: np.ndarray | None = None,
    filters: Filters | None = None,
    explain: bool = False,
) -> list[grpcclient.InferInput]:
    arrays = {
        HISTORY: history,
        TOP_K: np.array([[top_k]], dtype=TOP_K.numpy_dtype),
    }
    if query is not None:
        arrays[QUERY] = np.array([[query.encode("utf-8")]], dtype=QUERY.numpy_dtype)
    if candidates is not None:
        arrays[CANDIDATE_IDS] = candidates
    if filters is not None:
        arrays.update(filters.arrays())
    if explain:
        arrays[EXPLAIN] = np.array([[True]], dtype=EXPLAIN.numpy_dtype)
    inputs = []
    for spec, array in arrays.items():
        tensor = grpcclient.InferInput(spec.name, list(array.shape), spec.client_dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


# Built once: every request asks for the same outputs, and the request copies them.
_OUTPUTS = [grpcclient.InferRequestedOutput(s.name) for s in ENSEMBLE_OUTPUTS]
_EXPLAINED_OUTPUTS = [grpcclient.InferRequestedOutput(s.name) for s in ALL_OUTPUTS]


def parse_rows(response: grpcclient.InferResult) -> list[list[SearchResult]]:
    """Ranked results of every row of a Triton response (padding dropped)."""
    ids = response.as_numpy(PRODUCT_IDS.name)
    scores = response.as_numpy(SCORES.name)
    titles = response.as_numpy(TITLES.name)
    explained = response.as_numpy(EXPLANATION.name)  # None unless requested
    if ids is None or scores is None or titles is None:
        raise SearchError("response is missing an output tensor", "INTERNAL")
    ids, scores, titles = (np.atleast_2d(a) for a in (ids, scores, titles))
    if not ids.shape == scores.shape == titles.shape:
        raise SearchError(
            f"inconsistent output shapes: {ids.shape} ids, {scores.shape} scores, "
            f"{titles.shape} titles",
            "INTERNAL",
        )
    notes = np.atleast_2d(explained) if explained is not None else np.full(ids.shape, b"", object)
    rows = []
    for row_ids, row_scores, row_titles, row_notes in zip(ids, scores, titles, notes, strict=True):
        keep = row_ids != PADDING_ID
        rows.append(
            [
                SearchResult(
                    rank=rank,
                    product_id=int(pid),
                    score=float(score),
                    title=title.decode("utf-8", errors="replace")
                    if isinstance(title, bytes)
                    else str(title),
                    explanation=json.loads(note) if note else None,
                )
                for rank, (pid, score, title, note) in enumerate(
                    zip(
                        row_ids[keep],
                        row_scores[keep],
                        row_titles[keep],
                        row_notes[keep],
                        strict=True,
                    ),
                    1,
                )
            ]
        )
    return rows


def parse_response(response: grpcclient.InferResult) -> list[SearchResult]:
    """Ranked results of a one-row response."""
    return parse_rows(response)[0]


class SearchClient:
    """Search the shoprank ensemble over gRPC.

    `url` is a gRPC target (`shoprank_client.target`): "host:port", or several replicas as
    "dns:///name:port" (every address of the name) or "ipv4:a:port,b:port". Requests are
    balanced per request over every replica that is up (gRPC's round_robin); a request
    that fails with UNAVAILABLE because its replica went down is retried (`retries`) and
    goes to another.

    >>> with SearchClient("localhost:8001") as client:
    ...     results = client.search("red leather sofa", history=[12, 55], top_k=5)
    """

    def __init__(
        self,
        url: str = DEFAULT_GRPC_URL,
        model: str = ENSEMBLE_MODEL,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        rerank_model: str = RERANK_MODEL,
        retries: int = DEFAULT_RETRIES,
        backoff_s: float = DEFAULT_BACKOFF_S,
        max_backoff_s: float = DEFAULT_MAX_BACKOFF_S,
        ssl: bool = False,
        root_certificates: str | None = None,
        throttle_k: float = DEFAULT_THROTTLE_K,
        throttle_window_s: float = DEFAULT_THROTTLE_WINDOW_S,
    ) -> None:
        self.url = url
        self.target = parse_target(url)  # ValueError before any channel is made
        self.model = model
        self.rerank_model = rerank_model
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.throttle = AdaptiveThrottle(throttle_k, throttle_window_s) if throttle_k else None
        self._client = _InferenceClient(
            url=self.target.text,
            ssl=ssl,
            root_certificates=root_certificates,
            channel_args=channel_args(),
        )

    def _infer(self, model: str, inputs: list, explain: bool = False) -> grpcclient.InferResult:
        """One request with a deadline of `timeout_s` in all; an overloaded or restarting
        server (UNAVAILABLE, RESOURCE_EXHAUSTED) is retried with exponential backoff (at
        most `max_backoff_s`) and jitter, within the deadline; every other error is raised
        at once. With the adaptive throttle on, an attempt the server would most likely
        refuse is dropped here instead (ThrottledError) and retried like a refusal, so a
        client riding out a restart still gets through once the server answers again."""
        deadline = time.monotonic() + self.timeout_s
        for attempt in range(self.retries + 1):
            if self.throttle is not None and not self.throttle.allow():
                error: SearchError = ThrottledError()
            else:
                try:
                    response = self._client.infer(
                        model,
                        inputs,
                        outputs=_EXPLAINED_OUTPUTS if explain else _OUTPUTS,
                        client_timeout=max(deadline - time.monotonic(), 0.001),
                    )
                except InferenceServerException as err:
                    error = SearchError.from_exception(err)
                else:
                    if self.throttle is not None:
                        self.throttle.accepted()
                    return response
                if self.throttle is not None and error.status not in NOT_ACCEPTED:
                    self.throttle.accepted()
            if error.status not in RETRYABLE or attempt == self.retries:
                raise error
            pause = min(self.backoff_s * 2**attempt, self.max_backoff_s) * (1 + random.random())
            if time.monotonic() + pause >= deadline:
                raise error
            time.sleep(pause)
        raise AssertionError("unreachable")

    def search(
        self,
        query: str,
        history: Sequence[int] = (),
        top_k: int = DEFAULT_TOP_K,
        filters: Filters | None = None,
        explain: bool = False,
    ) -> list[SearchResult]:
        """Rank products for `query` given the shopper's `history` (product ids, oldest first),
        only those `filters` allow (still `top_k` of them whenever that many match).

        Raises:
            ValueError: invalid arguments (checked before anything is sent).
            SearchError: the server rejected the request or could not be reached.
        """
        inputs = _inputs(query, _validate(query, history, top_k), top_k, None, filters, explain)
        response = self._infer(self.model, inputs, explain)
        return parse_response(response)

    def rerank(
        self,
        query: str,
        candidates: Sequence[int],
        history: Sequence[int] = (),
        top_k: int = DEFAULT_TOP_K,
        filters: Filters | None = None,
        explain: bool = False,
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
        inputs = _inputs(query, _validate(query, history, top_k), top_k, rows, filters, explain)
        response = self._infer(self.rerank_model, inputs, explain)
        return parse_response(response)

    def recommend(
        self,
        history: Sequence[int] = (),
        top_k: int = DEFAULT_TOP_K,
        filters: Filters | None = None,
        explain: bool = False,
    ) -> list[SearchResult]:
        """Recommend products from the shopper's `history` alone (product ids, oldest
        first); products already in it are left out. An empty history gets the most
        popular products (cold start).

        Raises:
            ValueError: invalid arguments (checked before anything is sent).
            SearchError: the server rejected the request or could not be reached.
        """
        inputs = _inputs(None, _validate("", history, top_k), top_k, None, filters, explain)
        return parse_response(self._infer(RECOMMEND_MODEL, inputs, explain))

    def search_batch(
        self,
        queries: Sequence[str],
        histories: Sequence[Sequence[int]] | None = None,
        top_k: int | Sequence[int] = DEFAULT_TOP_K,
    ) -> list[list[SearchResult]]:
        """Send up to MAX_BATCH_SIZE searches as *one* request (rows of a batch): one round
        trip, ranked together on the server. Each row has its own history and top-k.

        Raises:
            ValueError: invalid arguments (checked before anything is sent).
            SearchError: the server rejected the request (all of it) or was unreachable.
        """
        n = len(queries)
        if not 1 <= n <= MAX_BATCH_SIZE:
            raise ValueError(f"a batch holds 1..{MAX_BATCH_SIZE} queries, got {n}")
        histories = [()] * n if histories is None else histories
        ks = [top_k] * n if isinstance(top_k, (int, np.integer)) else list(top_k)
        if len(histories) != n or len(ks) != n:
            raise ValueError(f"{n} queries need {n} histories and top-k values")
        rows = [_validate(q, h, k) for q, h, k in zip(queries, histories, ks, strict=True)]
        width = max(r.shape[1] for r in rows)
        history = np.full((n, width), PADDING_ID, dtype=np.int64)
        for i, r in enumerate(rows):
            history[i, : r.shape[1]] = r[0]
        arrays = {
            QUERY: np.array([[q.encode("utf-8")] for q in queries], dtype=QUERY.numpy_dtype),
            HISTORY: history,
            TOP_K: np.array([[k] for k in ks], dtype=TOP_K.numpy_dtype),
        }
        inputs = []
        for spec, array in arrays.items():
            tensor = grpcclient.InferInput(spec.name, list(array.shape), spec.client_dtype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        response = self._infer(self.model, inputs)
        return parse_rows(response)

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
