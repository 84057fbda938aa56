"""The wire protocol of the shoprank Triton server: model names, tensors, limits, ports.

This is what a search backend needs to talk to shoprank, so it ships with the client
(numpy only). The server side (`shoprank.contract`) imports these same definitions, so
client and server cannot disagree about a name, a dtype or a limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Ensembles served by Triton: `search` retrieves and ranks the catalog for a query;
# `rerank` ranks only the candidates a search backend sends (CANDIDATE_IDS).
ENSEMBLE_MODEL = "search"
RERANK_MODEL = "rerank"
# `recommend` ranks the catalog from a shopper's history alone (no query).
RECOMMEND_MODEL = "recommend"

# Request limits, documented in the README. Queries are truncated (never rejected) at
# MAX_QUERY_TOKENS; raw text beyond MAX_QUERY_CHARS is dropped before tokenizing so a
# 10,000-character query costs no more than a long one.
MAX_QUERY_TOKENS = 32
MAX_QUERY_CHARS = 512
# The most recent MAX_HISTORY ids of a shopper's history are used; older ones are dropped.
MAX_HISTORY = 50
MAX_TOP_K = 100
DEFAULT_TOP_K = 10
# A re-rank request may send at most this many candidate ids.
MAX_CANDIDATES = 1000
# More history ids than this in one row are refused (only the last MAX_HISTORY are used).
MAX_HISTORY_IDS = 1000
# A request may hold up to MAX_BATCH_SIZE rows (queries). Rows of a batched request are
# rectangular: shorter HISTORY / CANDIDATE_IDS rows are padded with PADDING_ID (no product
# has it), and shorter answer rows come back padded with PADDING_ID, score 0, title "".
PADDING_ID = -1
MAX_BATCH_SIZE = 64

# Ports of the server (Triton's defaults).
HTTP_PORT = 8000
GRPC_PORT = 8001
METRICS_PORT = 8002
DEFAULT_GRPC_URL = f"localhost:{GRPC_PORT}"


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a served model: Triton dtype, per-request dims, numpy dtype."""

    name: str
    triton_dtype: str  # as in config.pbtxt, e.g. "TYPE_FP32"
    dims: tuple[int, ...]  # without the batch dimension; -1 is variable
    ragged: bool = False  # requests of different lengths may share a dynamic batch

    @property
    def numpy_dtype(self) -> type:
        return _NUMPY_DTYPES[self.triton_dtype]

    @property
    def client_dtype(self) -> str:
        """The dtype string tritonclient's InferInput expects ("FP32", "BYTES", ...)."""
        return "BYTES" if self.triton_dtype == "TYPE_STRING" else self.triton_dtype[5:]


_NUMPY_DTYPES: dict[str, type] = {
    "TYPE_STRING": np.object_,
    "TYPE_FP32": np.float32,
    "TYPE_FP16": np.float16,
    "TYPE_INT64": np.int64,
    "TYPE_INT32": np.int32,
    "TYPE_BOOL": np.bool_,
}

# Ensemble inputs/outputs: what a search backend sends and receives.
QUERY = TensorSpec("QUERY", "TYPE_STRING", (1,))
HISTORY = TensorSpec("HISTORY", "TYPE_INT64", (-1,), ragged=True)
TOP_K = TensorSpec("TOP_K", "TYPE_INT32", (1,))
PRODUCT_IDS = TensorSpec("PRODUCT_IDS", "TYPE_INT64", (-1,))
SCORES = TensorSpec("SCORES", "TYPE_FP32", (-1,))
TITLES = TensorSpec("TITLES", "TYPE_STRING", (-1,))

CANDIDATE_IDS = TensorSpec("CANDIDATE_IDS", "TYPE_INT64", (-1,), ragged=True)

# Optional filters of every mode (each row its own): a category path prefix
# ("Furniture > Sofas", case-insensitive), a price range (products without a price never
# match one), product ids to leave out, and in-stock products only.
CATEGORY_PREFIX = TensorSpec("CATEGORY_PREFIX", "TYPE_STRING", (1,))
PRICE_MIN = TensorSpec("PRICE_MIN", "TYPE_FP32", (1,))
PRICE_MAX = TensorSpec("PRICE_MAX", "TYPE_FP32", (1,))
EXCLUDE_IDS = TensorSpec("EXCLUDE_IDS", "TYPE_INT64", (-1,), ragged=True)
IN_STOCK_ONLY = TensorSpec("IN_STOCK_ONLY", "TYPE_BOOL", (1,))
FILTER_INPUTS = (CATEGORY_PREFIX, PRICE_MIN, PRICE_MAX, EXCLUDE_IDS, IN_STOCK_ONLY)
# At most this many ids in EXCLUDE_IDS per row.
MAX_EXCLUDE_IDS = 10_000

# EXPLAIN true: EXPLANATION holds, per result, JSON with its score broken into the parts
# that add up to it and the history products closest to it; else b"" (nothing computed).
EXPLAIN = TensorSpec("EXPLAIN", "TYPE_BOOL", (1,))
EXPLANATION = TensorSpec("EXPLANATION", "TYPE_STRING", (-1,))

ENSEMBLE_INPUTS = (QUERY, HISTORY, TOP_K, *FILTER_INPUTS, EXPLAIN)
RERANK_INPUTS = (QUERY, HISTORY, TOP_K, CANDIDATE_IDS, *FILTER_INPUTS, EXPLAIN)
RECOMMEND_INPUTS = (HISTORY, TOP_K, *FILTER_INPUTS, EXPLAIN)
# Inputs a request may leave out: no history (cold start), no filters, no explanation.
OPTIONAL_INPUTS = (HISTORY, *FILTER_INPUTS, EXPLAIN)
ENSEMBLE_OUTPUTS = (PRODUCT_IDS, SCORES, TITLES)
# What the ensembles declare: the above, and EXPLANATION when a request asks for it.
ALL_OUTPUTS = (*ENSEMBLE_OUTPUTS, EXPLANATION)
