"""int8 quantization of the encoder for CPU, with the measurements that justify serving it.

Dynamic per-channel int8 on the fused graph: weights are int8 per output channel,
activations are quantized on the fly per batch, so nothing needs calibration and the
embeddings stay close to fp32 (on MiniLM, cosine ≈ 0.99). A static QDQ model calibrated
badly can collapse every embedding onto one direction; `QualityGate` refuses any variant
whose embeddings drift too far, however fast it is.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import contract
from conversion.runtime import cpu_session


def quantize_dynamic_int8(fp32_path: Path, out_path: Path) -> Path:
    """Dynamic int8 (per-channel weights) via onnxruntime.quantization."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(fp32_path),
        str(out_path),
        per_channel=True,
        weight_type=QuantType.QInt8,
        # The fused graph's contrib ops (Attention, SkipLayerNorm) defeat ONNX shape
        # inference; every tensor they produce is float32.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return out_path


@dataclass
class Speed:
    """Latency of one encoder call, milliseconds."""

    p50_ms: float
    p95_ms: float
    batch: int
    threads: int


def measure_latency(
    onnx_path: Path,
    feeds: Mapping[str, np.ndarray],
    runs: int = 50,
    warmup: int = 5,
    threads: int = 1,
) -> Speed:
    """p50/p95 latency of `feeds` through `onnx_path` on `threads` threads."""
    session = cpu_session(onnx_path, threads=threads)
    for _ in range(warmup):
        session.run(None, dict(feeds))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, dict(feeds))
        times.append((time.perf_counter() - t0) * 1e3)
    batch = int(next(iter(feeds.values())).shape[0])
    return Speed(
        p50_ms=float(np.percentile(times, 50)),
        p95_ms=float(np.percentile(times, 95)),
        batch=batch,
        threads=threads,
    )


class QualityError(RuntimeError):
    """A converted variant lost more quality than the gate allows."""


@dataclass
class QualityGate:
    """Thresholds a converted encoder must meet against fp32 to be served.

    min_cosine catches collapsed embeddings; max_ndcg_loss (relative) is the budget for
    ranking quality on held-out queries.
    """

    min_cosine: float = 0.95
    max_ndcg_loss: float = 0.01

    def check(
        self,
        name: str,
        mean_cosine: float,
        ndcg: float | None = None,
        ndcg_fp32: float | None = None,
    ) -> None:
        """Raise QualityError naming the variant and the failed threshold."""
        if not mean_cosine >= self.min_cosine:  # also catches NaN
            raise QualityError(
                f"{name}: mean cosine vs fp32 {mean_cosine:.4f} < "
                f"{self.min_cosine} (embeddings collapsed or drifted)"
            )
        if ndcg is not None and ndcg_fp32 is not None and ndcg_fp32 > 0:
            loss = (ndcg_fp32 - ndcg) / ndcg_fp32
            if loss > self.max_ndcg_loss:
                raise QualityError(
                    f"{name}: NDCG@10 {ndcg:.4f} is {loss:.1%} below fp32 "
                    f"{ndcg_fp32:.4f} (budget {self.max_ndcg_loss:.1%})"
                )


def file_mb(path: Path) -> float:
    """Size on disk, MB (external data included)."""
    extra = path.with_suffix(path.suffix + ".data")
    size = path.stat().st_size + (extra.stat().st_size if extra.exists() else 0)
    return round(size / 1e6, 2)


def query_feeds(input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
    """ONNX feeds for the encoder."""
    return {contract.ONNX_INPUT_IDS: input_ids, contract.ONNX_ATTENTION_MASK: attention_mask}
