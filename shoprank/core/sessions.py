"""ONNX Runtime sessions as every stage runs them: the served models, the in-process
pipeline, conversion's calibration and timing, so what is measured is what is served."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from shoprank import contract
from shoprank.core.requests import pad_rows


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


def limit_blas_threads(threads: int):
    """Cap every BLAS library this process has loaded (numpy's OpenBLAS, faiss's) at
    `threads`, for the whole process: a serving model's stub is one instance, and its
    `threads` are all it should use. Returns threadpoolctl's limiter
    (`.restore_original_limits()` undoes it).

    OpenBLAS's idle threads spin after each call; the recommender's catalog-wide product
    spread over both cores cost the searcher beside it its core. Measured, 4 search + 4
    recommend closed-loop clients on 2 cores, 3 × 8 s: 307-424 req/s in all at OpenBLAS's
    default against 487-519 at one thread, and 5.9-6.5 against 3.7-4.0 ms CPU a request.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=threads, user_api="blas")


def encoder_feeds(input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
    """ONNX feeds for the encoder."""
    return {contract.ONNX_INPUT_IDS: input_ids, contract.ONNX_ATTENTION_MASK: attention_mask}


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
