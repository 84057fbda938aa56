"""int8 quantization of the encoder, with the measurements that justify serving it.

Two int8 variants are produced and measured against fp32:

- dynamic (`quantize_dynamic_int8`): per-channel int8 weights on the fused graph,
  activations quantized on the fly per batch. Needs no calibration and stays close to
  fp32 (on MiniLM, cosine ≈ 0.99).
- static QDQ (`quantize_static_qdq`): QuantizeLinear/DequantizeLinear pairs on the
  unfused graph with activation ranges calibrated on real query/product text, tokenized
  as served. uint8 activations for ONNX Runtime's CPU kernels; symmetric int8 for
  TensorRT's explicit quantization.

Measured on the demo MiniLM: quantizing every op naively collapses the embeddings
(mean cosine ≈ 0.33-0.41); keeping the attention mask (values near -3.4e38) and Softmax
in float only gets to ≈ 0.8 (the quantized Adds, Muls and LayerNorms cost the rest);
MatMuls only is
≈ 0.993, and keeping the FFN output projections in float too ≈ 0.996 at twice the
latency. So `search_exclusions` quantizes each `exclusion_candidates` set, scores it on
held-out text and keeps the fastest one near the best. `QualityGate` still refuses any
variant whose embeddings drift too far, however fast it is.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import contract
from conversion.runtime import cpu_session

log = logging.getLogger(__name__)

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


# ---------------------------------------------------------------------------------------
# Static QDQ int8 with calibration.
# ---------------------------------------------------------------------------------------


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


def calibration_feeds(
    tokenizer_json: Path,
    texts: Sequence[str],
    max_tokens: int = contract.MAX_QUERY_TOKENS,
    batch_size: int = 16,
) -> list[Feeds]:
    """Encoder feeds for `texts`, tokenized and batched exactly as served.

    The Triton tokenizer truncates at `max_tokens` and pads each text to a multiple of
    SEQUENCE_BUCKET; the encoder pads a dynamic batch to its longest member. Calibrating on
    anything else (e.g. everything padded to 32) would measure ranges production never sees.
    """
    from model_repository.ops import QueryTokenizer, pad_rows

    tokenizer = QueryTokenizer(tokenizer_json, max_tokens=max_tokens)
    encoded = tokenizer.encode(list(texts))
    feeds = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        feeds.append(
            query_feeds(pad_rows([ids for ids, _ in chunk]), pad_rows([m for _, m in chunk]))
        )
    return feeds


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
    _restore_float_readers(out_path, set(exclude_nodes or ()), op_types_to_quantize)
    return out_path


def _restore_float_readers(
    model_path: Path, exclude_nodes: set[str], op_types: Sequence[str] | None
) -> int:
    """Give nodes that must stay float their float input back; return how many were fixed.

    When a tensor has a single quantized reader, onnxruntime rewires *every* reader to its
    DequantizeLinear output (with several, each quantized reader gets its own pair and the
    rest keep the float tensor). So an excluded node, or a residual Add next to the one
    quantized MatMul, would still see int8 noise. Undo that for excluded nodes and for op
    types outside `op_types`; drop the Q/DQ pairs (and their scales) nobody reads any more.
    """
    import onnx

    model = onnx.load(str(model_path))
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    allowed = set(op_types) if op_types else None

    def stays_float(node: onnx.NodeProto) -> bool:
        return node.name in exclude_nodes or (allowed is not None and node.op_type not in allowed)

    fixed = 0
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") or not stays_float(node):
            continue
        for k, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear":
                continue  # a quantized weight (DQ of an initializer): no float tensor to restore
            node.input[k] = q.input[0]
            fixed += 1
    if fixed:
        # Drop Q/DQ nodes whose outputs nobody reads any more (graph outputs count).
        while True:
            read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
            dead = [
                n
                for n in graph.node
                if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in read for o in n.output)
            ]
            if not dead:
                break
            for n in dead:
                graph.node.remove(n)
        # ...and the scales/zero points only they used (onnxruntime warns about each).
        read = {i for n in graph.node for i in n.input}
        for init in [t for t in graph.initializer if t.name not in read]:
            graph.initializer.remove(init)
        onnx.save(model, str(model_path))
    return fixed


@dataclass(frozen=True)
class Exclusion:
    """One candidate set of nodes (and/or op types) left in float by static quantization."""

    name: str
    description: str
    exclude_nodes: tuple[str, ...] = ()
    op_types_to_quantize: tuple[str, ...] | None = None  # None: every quantizable type


@dataclass
class _GraphRoles:
    """Node names of a BERT-style encoder graph, grouped by what they do."""

    mask: list[str] = field(default_factory=list)  # attention-mask arithmetic and its use
    softmax: list[str] = field(default_factory=list)
    layernorm: list[str] = field(default_factory=list)
    embeddings: list[str] = field(default_factory=list)  # up to the first LayerNorm
    pooling: list[str] = field(default_factory=list)  # after the last LayerNorm
    linear: list[str] = field(default_factory=list)  # MatMul with a weight initializer
    attention_matmul: list[str] = field(default_factory=list)  # Q·Kᵀ and P·V
    ffn_out: list[str] = field(default_factory=list)  # FFN down projections


def _graph_roles(model_path: Path) -> _GraphRoles:
    """Classify nodes by graph structure, not by exporter-specific names.

    Tensors computed from `attention_mask` alone are mask arithmetic; a node mixing one
    with token data applies the mask (the additive score mask, the pooling multiply).
    Embeddings are the ancestors of the first LayerNormalization, pooling the descendants
    of the last one. A MatMul with an initializer is a linear layer; one whose weight is
    wider in than out is an FFN down projection; a MatMul of two activations is attention.
    """
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    inits = {t.name: tuple(t.dims) for t in graph.initializer}
    roles = _GraphRoles()
    mask_only = {contract.ONNX_ATTENTION_MASK}
    data = {i.name for i in graph.input if i.name != contract.ONNX_ATTENTION_MASK}
    producer = {out: node for node in graph.node for out in node.output}
    norms = [n for n in graph.node if n.op_type == "LayerNormalization"]
    for node in graph.node:  # ONNX graphs are topologically sorted
        ins = [i for i in node.input if i]
        if node.op_type in ("Shape", "Size"):
            continue  # a shape carries no values: masks expanded to a shape stay mask-only
        has_mask = any(i in mask_only for i in ins)
        has_data = any(i in data for i in ins)
        if has_mask and not has_data:
            mask_only.update(node.output)
            roles.mask.append(node.name)
        elif has_data:
            data.update(node.output)
            if has_mask:
                roles.mask.append(node.name)
        if node.op_type == "Softmax":
            roles.softmax.append(node.name)
        elif node.op_type == "LayerNormalization":
            roles.layernorm.append(node.name)
        elif node.op_type == "MatMul" and len(ins) == 2:
            weight = inits.get(ins[1])
            if weight is None and ins[0] not in inits:
                roles.attention_matmul.append(node.name)
            elif weight is not None:
                roles.linear.append(node.name)
                if len(weight) == 2 and weight[0] > weight[1]:
                    roles.ffn_out.append(node.name)
    if norms:
        ancestors, stack = set(), list(norms[0].input)
        while stack:
            node = producer.get(stack.pop())
            if node is not None and node.name not in ancestors:
                ancestors.add(node.name)
                stack.extend(node.input)
        roles.embeddings = [n.name for n in graph.node if n.name in ancestors]
        roles.embeddings.append(norms[0].name)
        descendants = set(norms[-1].output)
        for node in graph.node:
            if any(i in descendants for i in node.input):
                descendants.update(node.output)
                roles.pooling.append(node.name)
    return roles


def exclusion_candidates(model_path: Path) -> list[Exclusion]:
    """The exclusion sets `search_exclusions` measures, from naive to conservative.

    Measured on MiniLM (see the module docstring and the conversion report): quantizing
    every op collapses the embeddings; keeping the attention mask and Softmax in float is
    not enough; quantizing MatMuls only is close to fp32. The FFN output projection's
    input (GELU output: nearly one-sided, long-tailed) is the most range-sensitive MatMul
    input — with symmetric int8 it alone costs ~0.01 cosine — hence `*_no_ffn_out`.
    """
    r = _graph_roles(model_path)
    matmul = ("MatMul",)
    return [
        Exclusion("none", "every quantizable op (naive static QDQ)"),
        Exclusion(
            "mask_softmax",
            "every op but attention-mask arithmetic and Softmax",
            tuple(dict.fromkeys(r.mask + r.softmax)),
        ),
        Exclusion("matmul_only", "MatMuls only (linear layers and attention scores)", (), matmul),
        Exclusion(
            "linear_only",
            "weight MatMuls only; attention-score MatMuls stay float",
            tuple(r.attention_matmul),
            matmul,
        ),
        Exclusion(
            "matmul_no_ffn_out",
            "MatMuls but the FFN output projections",
            tuple(r.ffn_out),
            matmul,
        ),
        Exclusion(
            "linear_no_ffn_out",
            "weight MatMuls but the FFN output projections",
            tuple(r.attention_matmul + r.ffn_out),
            matmul,
        ),
    ]


@dataclass
class ExclusionTrial:
    """How one exclusion set quantized: closeness to fp32 on held-out feeds, and speed."""

    name: str
    description: str
    mean_cosine: float
    min_cosine: float
    excluded_nodes: int
    op_types: list[str] | None
    qdq_nodes: int
    size_mb: float
    p50_ms: float | None
    seconds: float


@dataclass
class ExclusionSearch:
    """Every trial and the chosen one; `path` holds the chosen QDQ model."""

    best: str
    path: Path
    trials: list[ExclusionTrial]
    rule: str
    symmetric_activations: bool
    calibration_batches: int
    seconds: float


def count_qdq_nodes(model_path: Path) -> int:
    """Number of QuantizeLinear + DequantizeLinear nodes in a graph."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node)


def embed_feeds(model_path: Path, feeds: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
    """Sentence embeddings of every feed batch, stacked (2 threads: a one-off measurement)."""
    session = cpu_session(model_path, threads=2)
    out = [session.run([contract.ONNX_SENTENCE_EMBEDDING], dict(f))[0] for f in feeds]
    return np.concatenate(out, axis=0)


def row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine per row; NaN rows (a broken model) count as -1 so they can never pass."""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.nan_to_num(np.sum(a * b, axis=1), nan=-1.0)


def search_exclusions(
    fp32_path: Path,
    out_path: Path,
    calibration_feeds: Sequence[Mapping[str, np.ndarray]],
    heldout_feeds: Sequence[Mapping[str, np.ndarray]],
    candidates: Sequence[Exclusion] | None = None,
    per_channel: bool = True,
    symmetric_activations: bool = False,
    cosine_tolerance: float = 0.005,
    latency_feeds: Mapping[str, np.ndarray] | None = None,
    latency_runs: int = 20,
    work_dir: Path | None = None,
) -> ExclusionSearch:
    """Quantize `fp32_path` once per exclusion set; keep the chosen one at `out_path`.

    Each candidate is scored by mean cosine to the fp32 embeddings on `heldout_feeds`
    (texts used neither for calibration nor for the final gate). Among candidates within
    `cosine_tolerance` of the best score, the fastest on `latency_feeds` wins (batch-1
    p50), or, without `latency_feeds`, the most quantized one (most Q/DQ nodes): a few
    thousandths of cosine are not worth running half the model in float. Candidates
    sharing op types share one calibration pass. The gate still decides whether the
    winner is served: the best of a bad lot is not good enough.
    """
    t_start = time.perf_counter()
    candidates = list(candidates) if candidates is not None else exclusion_candidates(fp32_path)
    if not candidates:
        raise ValueError("no exclusion candidates to try")
    work = work_dir or out_path.parent
    work.mkdir(parents=True, exist_ok=True)
    reference = embed_feeds(fp32_path, heldout_feeds)
    trials: list[ExclusionTrial] = []
    trial_paths: dict[str, Path] = {}
    caches: set[Path] = set()
    for cand in candidates:
        t0 = time.perf_counter()
        key = hashlib.sha1(repr(cand.op_types_to_quantize).encode()).hexdigest()[:8]
        cache = work / f"calibration.{key}.{'s8' if symmetric_activations else 'u8'}.json"
        caches.add(cache)
        trial_path = work / f"{out_path.stem}.{cand.name}.onnx"
        quantize_static_qdq(
            fp32_path,
            trial_path,
            calibration_feeds,
            exclude_nodes=cand.exclude_nodes,
            per_channel=per_channel,
            op_types_to_quantize=cand.op_types_to_quantize,
            symmetric_activations=symmetric_activations,
            calibration_cache=cache,
        )
        cos = row_cosine(reference, embed_feeds(trial_path, heldout_feeds))
        speed = (
            measure_latency(trial_path, latency_feeds, runs=latency_runs)
            if latency_feeds is not None
            else None
        )
        trial = ExclusionTrial(
            name=cand.name,
            description=cand.description,
            mean_cosine=round(float(cos.mean()), 5),
            min_cosine=round(float(cos.min()), 5),
            excluded_nodes=len(cand.exclude_nodes),
            op_types=list(cand.op_types_to_quantize) if cand.op_types_to_quantize else None,
            qdq_nodes=count_qdq_nodes(trial_path),
            size_mb=file_mb(trial_path),
            p50_ms=round(speed.p50_ms, 3) if speed else None,
            seconds=round(time.perf_counter() - t0, 2),
        )
        trials.append(trial)
        trial_paths[cand.name] = trial_path
        log.info(
            "static QDQ %-18s mean cosine %.4f (min %.4f), %3d Q/DQ nodes, p50 %s ms, %.1fs",
            cand.name,
            trial.mean_cosine,
            trial.min_cosine,
            trial.qdq_nodes,
            f"{trial.p50_ms:.2f}" if trial.p50_ms is not None else "-",
            trial.seconds,
        )
    best_cosine = max(t.mean_cosine for t in trials)
    close = [t for t in trials if t.mean_cosine >= best_cosine - cosine_tolerance]
    if latency_feeds is not None:
        chosen = min(close, key=lambda t: t.p50_ms or 0.0)
        rule = f"fastest within {cosine_tolerance} of the best mean cosine"
    else:
        chosen = max(close, key=lambda t: t.qdq_nodes)
        rule = f"most Q/DQ nodes within {cosine_tolerance} of the best mean cosine"
    trial_paths.pop(chosen.name).replace(out_path)
    for path in [*trial_paths.values(), *caches]:
        path.unlink(missing_ok=True)
    return ExclusionSearch(
        best=chosen.name,
        path=out_path,
        trials=trials,
        rule=rule,
        symmetric_activations=symmetric_activations,
        calibration_batches=len(calibration_feeds),
        seconds=round(time.perf_counter() - t_start, 2),
    )


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
