"""int8 quantizers of the encoder: dynamic, and static QDQ with calibration.

- dynamic (`quantize_dynamic_int8`): per-channel int8 weights on the fused graph,
  activations quantized on the fly per batch. Needs no calibration and stays close to
  fp32 (on MiniLM, cosine ≈ 0.99).
- static QDQ (`quantize_static_qdq`): QuantizeLinear/DequantizeLinear pairs on the
  unfused graph with activation ranges calibrated on real query/product text, tokenized
  as served (`shoprank.core.tokenizer.tokenized_feeds`). uint8 activations for ONNX Runtime's CPU
  kernels; symmetric int8 for TensorRT's explicit quantization.

Which nodes stay in float is decided by `exclusion_search`; whether a result is served by
`quality.QualityGate`.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from shoprank.conversion.graph_surgery import restore_float_readers

Feeds = dict[str, np.ndarray]


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


def prepare_for_qdq(fp32_path: Path, out_path: Path) -> Path:
    """The exported (unfused) graph, constant-folded and shape-inferred for quantization.

    Static quantization needs the type of every tensor it calibrates, and the unfused
    graph is made of standard ONNX ops only, which TensorRT can parse too (the fused
    graph's com.microsoft Attention/SkipLayerNorm ops it cannot). Symbolic shape
    inference gives up on the exporter's mask helpers, so only ONNX shape inference runs.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=True)
    return out_path


class FeedsReader:
    """onnxruntime CalibrationDataReader over a fixed list of feeds (re-iterable)."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> None:
        self._feeds = [dict(f) for f in feeds]
        self._it: Iterator[Feeds] = iter(self._feeds)

    def get_next(self) -> Feeds | None:
        """The next batch, or None when calibration has seen every batch."""
        return next(self._it, None)

    def rewind(self) -> None:
        """Start again from the first batch."""
        self._it = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Restrict to feeds[start:end] (used by strided calibration)."""
        self._it = iter(self._feeds[start_index:end_index])


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """Silence onnxruntime.quantization's root-logger warnings while it runs.

    It warns through the root logger about every rank-1 LayerNorm weight it cannot
    quantize per channel: expected here, and dozens of lines would bury the conversion log.
    """
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_static_qdq(
    fp32_path: Path,
    out_path: Path,
    calibration_feeds: Sequence[Mapping[str, np.ndarray]],
    exclude_nodes: Sequence[str] | None = None,
    per_channel: bool = True,
    op_types_to_quantize: Sequence[str] | None = None,
    symmetric_activations: bool = False,
    calibration_cache: Path | None = None,
) -> Path:
    """Static int8 in QDQ format, activation ranges calibrated (MinMax) on `calibration_feeds`.

    `fp32_path` should be a `prepare_for_qdq` graph. Weights are symmetric int8, per output
    channel when `per_channel`. Activations are uint8 with a zero point by default: ONNX
    Runtime's CPU fuses those into MatMulIntegerToFloat (measured on MiniLM: ~2 ms at batch
    1 where int8-activation QDQ left most weight DequantizeLinear nodes unfused, ~10-20 ms),
    and the asymmetric range also fits GELU outputs better. `symmetric_activations=True`
    gives int8 with zero point 0 instead, which is what TensorRT's explicit quantization
    requires. Nodes in `exclude_nodes` keep float weights and run float kernels (a tensor
    they share with a quantized node still passes through that node's Q/DQ pair:
    onnxruntime rewires every reader); `op_types_to_quantize` (None: every op type
    onnxruntime can quantize) narrows by type. `calibration_cache` (a JSON path) is
    reused when it exists, so exclusion sets share one calibration pass; it must come from
    the same graph and the same `op_types_to_quantize`.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if not calibration_feeds:
        raise ValueError("static quantization needs at least one calibration batch")
    kwargs = {}
    # The calibration cache appeared in recent onnxruntime; older versions recalibrate.
    if (
        calibration_cache is not None
        and "calibration_cache_path" in inspect.signature(quantize_static).parameters
    ):
        kwargs["calibration_cache_path"] = str(calibration_cache)
    with _quiet_root_logger():
        quantize_static(
            str(fp32_path),
            str(out_path),
            FeedsReader(calibration_feeds),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types_to_quantize) if op_types_to_quantize else None,
            per_channel=per_channel,
            activation_type=QuantType.QInt8 if symmetric_activations else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(exclude_nodes or []),
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={
                "ActivationSymmetric": symmetric_activations,
                "WeightSymmetric": True,
                # Per-channel MatMul weights are (in, out): one scale per output column.
                "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
                # Q/K/V share one input; onnxruntime only fuses a DequantizeLinear with a
                # single consumer, and TensorRT wants a Q/DQ pair per quantized input too.
                "DedicatedQDQPair": True,
                # Quantize MatMul inputs only (TensorRT's recommended placement): a MatMul
                # output feeds a float bias Add, and requantizing it only costs accuracy.
                "OpTypesToExcludeOutputQuantization": ["MatMul"],
            },
            **kwargs,
        )
    restore_float_readers(out_path, set(exclude_nodes or ()), op_types_to_quantize)
    return out_path
