"""ONNX Runtime sessions configured the way shoprank runs them on small CPU hosts.

Shared by conversion (parity, speed) and the Triton Python-backend models, so that what
is measured is what is served.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort


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
