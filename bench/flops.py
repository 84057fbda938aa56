"""The encoder's FLOP floor: how fast could one query be embedded on this machine at best?

floor = FLOPs(encoder, one typical query) / peak float32 GEMM rate of this machine.

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` on the eager-attention
PyTorch encoder (it counts matmuls, i.e. the linear layers and the two attention
products; embeddings, LayerNorm, GELU and softmax are memory-bound and left out, as in
every roofline estimate). For a BERT encoder that is, per layer, with S tokens, hidden H
and feed-forward width I:

    QKV 2·S·H·3H + scores 2·S·S·H + context 2·S·S·H + output 2·S·H·H + FFN 2·2·S·H·I
    = 8·S·H² + 4·S²·H + 4·S·H·I                       (+ 2·H² for the pooler, if any)

The peak is the best of PyTorch and numpy float32 square GEMMs, timed on all cores and on
one thread (the served encoder runs one ONNX Runtime thread).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from shoprank import contract
from shoprank.core.tokenizer import QueryTokenizer
from shoprank.data.artifacts import int8_encoder_path


def bert_flops(
    layers: int,
    hidden: int,
    intermediate: int,
    seq_len: int,
    batch: int = 1,
    pooler: bool = True,
) -> int:
    """Matmul FLOPs of a BERT forward pass (multiply-add counted as 2), by hand."""
    per_layer = (
        8 * seq_len * hidden**2 + 4 * seq_len**2 * hidden + 4 * seq_len * hidden * intermediate
    )
    return batch * (layers * per_layer + (2 * hidden**2 if pooler else 0))


def count_flops(module: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
    """FLOPs of one forward pass of `module(input_ids, attention_mask)`, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        module(input_ids, attention_mask)
    return int(counter.get_total_flops())


def load_counting_encoder(encoder_dir: Path) -> nn.Module:
    """The encoder with eager attention: FlopCounterMode has no formula for CPU SDPA."""
    from shoprank.models.encoder import load_embedder

    return load_embedder(encoder_dir)


def typical_query(tokenizer_json: Path, queries: Sequence[str]) -> tuple[str, int, int]:
    """(query, tokens, served width): the workload query of median token count.

    Tokens include [CLS]/[SEP]; the served width pads them to the SEQUENCE_BUCKET multiple,
    the shape the served encoder actually runs.
    """
    tok = QueryTokenizer(tokenizer_json)
    encoded = tok.encode(list(queries))
    lengths = [int(mask.sum()) for _, mask in encoded]
    order = np.argsort(lengths, kind="stable")
    mid = int(order[len(order) // 2])
    return queries[mid], lengths[mid], len(encoded[mid][0])


def _best_rate(run: Callable[[], object], flops: float, min_time_s: float) -> float:
    """Best observed FLOP/s of `run` over at least `min_time_s` (after one warm-up call)."""
    run()
    best = float("inf")
    spent = 0.0
    while spent < min_time_s:
        t0 = time.perf_counter()
        run()
        dt = time.perf_counter() - t0
        best = min(best, dt)
        spent += dt
    return flops / best


def matmul_peak_gflops(
    n: int = 1024, threads: int | None = None, min_time_s: float = 0.5
) -> dict[str, float]:
    """Float32 GEMM GFLOP/s of torch and numpy on `threads` threads (None: torch default).

    numpy's BLAS thread count is fixed at import, so numpy is only timed for the default;
    the one-thread figure comes from torch, whose thread count can be set at run time.
    """
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    flops = 2.0 * n**3
    saved = torch.get_num_threads()
    rates: dict[str, float] = {}
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        rates["torch"] = _best_rate(lambda: torch.mm(a, b), flops, min_time_s) / 1e9
    finally:
        torch.set_num_threads(saved)
    if threads is None:
        an, bn = a.numpy(), b.numpy()
        rates["numpy"] = _best_rate(lambda: an @ bn, flops, min_time_s) / 1e9
    return rates


def median_ms(run: Callable[[], object], runs: int = 50, min_time_s: float = 0.3) -> float:
    """Median wall time of `run` in ms over `runs` calls (more if they finish quickly)."""
    run()
    times = []
    t_end = time.perf_counter() + min_time_s
    while len(times) < runs or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
        if len(times) >= 20 * runs:
            break
    return statistics.median(times) * 1e3


@dataclass
class FlopFloor:
    """The encoder's FLOPs for the typical query, the machine's peak, and the floor."""

    query: str
    tokens: int
    seq_len: int  # what the served encoder runs (tokens padded to the bucket)
    flops: int
    peak_gflops: float  # best of torch/numpy on all threads
    peak_gflops_1thread: float
    torch_threads: int
    # measured encoder latency at batch 1, ms, per implementation
    measured_ms: dict[str, float] = field(default_factory=dict)

    @property
    def floor_ms(self) -> float:
        return self.flops / (self.peak_gflops * 1e9) * 1e3

    @property
    def floor_ms_1thread(self) -> float:
        return self.flops / (self.peak_gflops_1thread * 1e9) * 1e3


def encoder_floor(
    paths: contract.ArtifactPaths,
    queries: Sequence[str],
    ort_threads: int = 1,
    min_time_s: float = 0.5,
) -> FlopFloor:
    """Count, time and compare: the floor next to PyTorch eager and ONNX Runtime latencies."""
    from shoprank.core.sessions import cpu_session
    from shoprank.core.tokenizer import tokenizer_file

    tokenizer_json = tokenizer_file(paths.encoder)
    query, tokens, width = typical_query(tokenizer_json, queries)
    # Exactly the tensors the served tokenizer hands the encoder for this query.
    ((ids_np, mask_np),) = QueryTokenizer(tokenizer_json).encode([query])
    ids = torch.from_numpy(ids_np).reshape(1, width)
    mask = torch.from_numpy(mask_np).reshape(1, width)

    model = load_counting_encoder(paths.encoder)
    flops = count_flops(model, ids, mask)
    with torch.inference_mode():
        measured = {
            f"PyTorch eager fp32 ({torch.get_num_threads()} threads)": median_ms(
                lambda: model(ids, mask)
            )
        }
    feeds = {contract.ONNX_INPUT_IDS: ids.numpy(), contract.ONNX_ATTENTION_MASK: mask.numpy()}
    for label, onnx_path in (("fp32", paths.encoder_onnx), ("int8", int8_encoder_path(paths))):
        if onnx_path.exists():
            session = cpu_session(onnx_path, threads=ort_threads)
            measured[f"onnxruntime {label} ({ort_threads} thread)"] = median_ms(
                lambda s=session: s.run(None, feeds)
            )
    peak = matmul_peak_gflops(min_time_s=min_time_s)
    peak1 = matmul_peak_gflops(threads=1, min_time_s=min_time_s)
    return FlopFloor(
        query=query,
        tokens=tokens,
        seq_len=width,
        flops=flops,
        # A floor is a lower bound: more threads can never be slower in principle, so a
        # one-thread figure above the all-thread one (a busy neighbour) raises the peak.
        peak_gflops=max(*peak.values(), *peak1.values()),
        peak_gflops_1thread=peak1["torch"],
        torch_threads=torch.get_num_threads(),
        measured_ms=measured,
    )
