"""TensorRT engines for the GPU model repository: fp16 and explicit-quantization int8.

    engines = build_all(paths, TensorRTConfig())

builds, on a host with a CUDA GPU and the `tensorrt` package (`pip install -e '.[gpu]'`):

- `onnx/encoder.fp16.plan` from the unfused fp32 graph (`onnx/encoder.unfused.onnx`);
  TensorRT cannot parse onnxruntime's fused com.microsoft ops, so not from encoder.onnx;
- `onnx/encoder.int8.plan` from the symmetric static QDQ graph
  (`onnx/encoder.int8_qdq_sym.onnx`): explicit quantization, the Q/DQ nodes carry the
  calibrated scales, so no TensorRT calibrator runs.

Each plan has one optimization profile (`OptimizationProfile`) over input_ids and
attention_mask, (batch, sequence) from min to max; Triton's `max_batch_size` for the plan
must not exceed the profile's max batch. Plans are specific to the GPU model and TensorRT
version they were built with, which is why they are built where they are served.

Without a GPU or without TensorRT, `available()` says why and `build_all` skips with that
reason (recorded in the conversion report) instead of failing the conversion.
"""

from __future__ import annotations

import ctypes
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shoprank import contract
from shoprank.data.artifacts import SELECTED_PLAN_KEY, OptimizationProfile, write_plan_info

log = logging.getLogger(__name__)

PRECISIONS = contract.TENSORRT_PRECISIONS
ENGINE_INPUTS = (contract.ONNX_INPUT_IDS, contract.ONNX_ATTENTION_MASK)


def profile_from_config(
    max_batch: int,
    seq_min: int,
    seq_opt: int,
    seq_max: int,
    min_batch: int = 1,
    opt_batch: int | None = None,
) -> OptimizationProfile:
    """The profile for the given bounds; `opt_batch` defaults to 8 (capped at `max_batch`)."""
    opt = opt_batch if opt_batch is not None else min(8, max_batch)
    return OptimizationProfile(
        min_batch=min_batch,
        opt_batch=opt,
        max_batch=max_batch,
        min_seq=seq_min,
        opt_seq=seq_opt,
        max_seq=seq_max,
    )


@dataclass
class TensorRTConfig:
    """What `build_all` builds: the profile, builder workspace and precisions."""

    profile: OptimizationProfile = field(default_factory=OptimizationProfile)
    workspace_gb: float = 2.0
    precisions: tuple[str, ...] = PRECISIONS
    latency_runs: int = 50


# ---------------------------------------------------------------------------------------
# Availability.
# ---------------------------------------------------------------------------------------


def _cuda_gpu() -> tuple[bool, str]:
    """Whether the CUDA driver sees a GPU, asked through libcuda itself (no CUDA toolkit)."""
    smi = shutil.which("nvidia-smi")
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        where = f"nvidia-smi at {smi}" if smi else "no nvidia-smi on PATH"
        return False, f"no GPU (CUDA driver libcuda.so.1 not found; {where})"
    if cuda.cuInit(0) != 0:
        return False, "no GPU (cuInit failed: driver present but no usable device)"
    count = ctypes.c_int(0)
    if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return False, "no GPU (the CUDA driver reports 0 devices)"
    return True, f"{count.value} CUDA device(s)"


def available() -> tuple[bool, str]:
    """(True, what was found) if engines can be built here, else (False, why not)."""
    gpu_ok, gpu = _cuda_gpu()
    try:
        import tensorrt as trt

        trt_ok, trt_msg = True, f"TensorRT {trt.__version__}"
    except ImportError:
        trt_ok = False
        trt_msg = "the tensorrt package is not installed (pip install -e '.[gpu]' on a GPU host)"
    if gpu_ok and trt_ok:
        return True, f"{trt_msg}, {gpu}"
    return False, "; ".join(msg for ok, msg in ((gpu_ok, gpu), (trt_ok, trt_msg)) if not ok)


def can_run_engines() -> tuple[bool, str]:
    """Engines are run (timed, checked) through CUDA tensors of a CUDA-enabled torch."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        return False, "torch is not installed"
    if not torch.cuda.is_available():
        return False, "the installed torch has no CUDA support"
    return True, ""


# ---------------------------------------------------------------------------------------
# Building.
# ---------------------------------------------------------------------------------------


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    precision: str,
    profile: OptimizationProfile,
    workspace_gb: float = 2.0,
) -> Path:
    """Parse `onnx_path`, build a serialized engine for `precision`, write it to `plan_path`.

    fp16: FP16 kernels allowed everywhere. int8: the graph must be a QDQ graph (explicit
    quantization); the INT8 flag enables its Q/DQ layers, FP16 lets the layers left in
    float run in half precision. TensorRT 11 builds strongly typed networks only, where
    the graph's own types decide and precision flags are not allowed.
    """
    import tensorrt as trt

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = int(trt.__version__.split(".")[0]) >= 11
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
    trt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.shapes().items():
        trt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(trt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build a {precision} engine from {onnx_path.name}")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(serialized))
    write_plan_info(
        plan_path,
        profile,
        precision=precision,
        onnx=onnx_path.name,
        tensorrt_version=trt.__version__,
        strongly_typed=strongly_typed,
    )
    return plan_path


class EngineRunner:
    """Runs a plan on the GPU with torch CUDA tensors as I/O buffers (for checks, timing)."""

    def __init__(self, plan_path: Path) -> None:
        import tensorrt as trt
        import torch

        self._torch = torch
        self._trt = trt
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"could not deserialize {plan_path}")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()

    def _dtype(self, name: str):
        return self._torch.from_numpy(
            np.zeros(0, dtype=self._trt.nptype(self.engine.get_tensor_dtype(name)))
        ).dtype

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """Sentence embeddings (B, D) for one batch of encoder feeds."""
        torch = self._torch
        # Copies and the engine share one stream, so the engine never reads a buffer
        # before its host-to-device copy has landed.
        with torch.cuda.stream(self.stream):
            keep = []
            for name in ENGINE_INPUTS:
                t = torch.from_numpy(np.ascontiguousarray(feeds[name])).to(
                    device="cuda", dtype=self._dtype(name), non_blocking=False
                )
                keep.append(t)
                self.context.set_input_shape(name, tuple(t.shape))
                self.context.set_tensor_address(name, t.data_ptr())
            out_name = contract.ONNX_SENTENCE_EMBEDDING
            out = torch.empty(
                tuple(self.context.get_tensor_shape(out_name)),
                dtype=self._dtype(out_name),
                device="cuda",
            )
            self.context.set_tensor_address(out_name, out.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
            result = out.float().cpu().numpy()
        self.stream.synchronize()
        return result


def engine_embeddings(plan_path: Path, feeds: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
    """Embeddings of every feed batch through the engine, stacked in order."""
    runner = EngineRunner(plan_path)
    return np.concatenate([runner.run(f) for f in feeds], axis=0)


def measure_engine_latency(
    plan_path: Path, feeds: Mapping[str, np.ndarray], runs: int = 50, warmup: int = 10
) -> dict[str, float]:
    """p50/p95 milliseconds of one call (host→device copy, run, device→host copy)."""
    runner = EngineRunner(plan_path)
    for _ in range(warmup):
        runner.run(feeds)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        runner.run(feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    batch = int(next(iter(feeds.values())).shape[0])
    return {
        "p50_ms": float(np.percentile(times, 50)),
        "p95_ms": float(np.percentile(times, 95)),
        "batch": batch,
    }


@dataclass
class Engine:
    """One TensorRT plan: how it was built, how it measured, and the gate's verdict."""

    precision: str
    plan: Path
    source: Path
    built: bool = False
    error: str | None = None
    build_s: float | None = None
    size_mb: float | None = None
    latency: dict[str, float] | None = None
    latency_error: str | None = None
    latency_skipped: str | None = None
    cosine: float | None = None
    min_cosine: float | None = None
    quality: dict[str, float] | None = None
    accepted: bool = False
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v is not None and k != "precision"}
        return {**out, "plan": str(self.plan), "source": str(self.source)}


@dataclass
class TensorRTReport:
    """What `build_all` did (or why it did not), and which plan the GPU repository serves."""

    available: bool
    reason: str
    config: TensorRTConfig
    engines: dict[str, Engine] = field(default_factory=dict)
    int8_qdq: dict[str, Any] | None = None  # the symmetric QDQ search behind the int8 plan
    selected_plan: str | None = None  # a file name below ArtifactPaths.onnx

    def select_plan(self) -> str | None:
        """Serve the fastest accepted plan if every accepted one was timed, else fp16."""
        accepted = [e for e in self.engines.values() if e.accepted]
        timed = all(e.latency is not None for e in accepted)
        best = min(
            accepted,
            key=lambda e: e.latency["p50_ms"] if timed and e.latency else e.precision != "fp16",
            default=None,
        )
        self.selected_plan = best.plan.name if best else None
        return self.selected_plan

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "available": self.available,
            "reason": self.reason,
            "profile": asdict(self.config.profile),
            "workspace_gb": self.config.workspace_gb,
            "engines": {p: e.to_json() for p, e in self.engines.items()},
            SELECTED_PLAN_KEY: self.selected_plan,
        }
        if self.int8_qdq is not None:
            out["int8_qdq"] = self.int8_qdq
        return out


def build_all(
    paths: contract.ArtifactPaths,
    config: TensorRTConfig,
    sample_feeds: Mapping[str, np.ndarray] | None = None,
) -> TensorRTReport:
    """Build every requested plan whose source ONNX exists; report what happened.

    Each engine records its plan, source, build seconds and size, or the error that
    stopped it, and, when `sample_feeds` is given and engines can run here, its latency.
    Never raises for a missing GPU/TensorRT or a failed build: the CPU variants are still
    valid output.
    """
    ok, reason = available()
    report = TensorRTReport(ok, reason, config)
    if not ok:
        log.warning("TensorRT engines skipped: %s", reason)
        return report
    can_run, why_not = can_run_engines()
    sources = {"fp16": paths.encoder_unfused_onnx, "int8": paths.encoder_qdq_sym_onnx}
    for precision in config.precisions:
        engine = Engine(precision, paths.encoder_plan(precision), sources[precision])
        report.engines[precision] = engine
        if not engine.source.exists():
            engine.error = f"{engine.source.name} missing"
            log.warning("TensorRT %s engine skipped: %s", precision, engine.error)
            continue
        t0 = time.perf_counter()
        try:
            build_engine(engine.source, engine.plan, precision, config.profile, config.workspace_gb)
        except Exception as exc:  # TensorRT raises plain RuntimeError/TypeError variants
            engine.error = str(exc)
            log.warning("TensorRT %s engine failed: %s", precision, exc)
            continue
        engine.built = True
        engine.build_s = round(time.perf_counter() - t0, 1)
        engine.size_mb = round(engine.plan.stat().st_size / 1e6, 2)
        if sample_feeds is not None and can_run:
            try:
                engine.latency = measure_engine_latency(
                    engine.plan, sample_feeds, config.latency_runs
                )
            except Exception as exc:  # recorded; the conversion's gate refuses the plan
                engine.latency_error = str(exc)
                log.warning("TensorRT %s engine could not be timed: %s", precision, exc)
        elif sample_feeds is not None:
            engine.latency_skipped = why_not
        log.info("TensorRT %s engine: %s (%.0fs)", precision, engine.plan.name, engine.build_s)
    return report
