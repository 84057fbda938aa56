"""The static-QDQ exclusion search: quantize each candidate float set, keep the best.

`search_exclusions` quantizes each `graph_surgery.exclusion_candidates` set, scores it
on held-out text against fp32 and keeps the fastest one near the best. The quality gate
(`quality.QualityGate`) still refuses any variant whose embeddings drift too far, however
fast it is.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shoprank import contract
from shoprank.conversion.graph_surgery import Exclusion, count_qdq_nodes, exclusion_candidates
from shoprank.conversion.int8 import quantize_static_qdq
from shoprank.conversion.latency import file_mb, measure_latency
from shoprank.conversion.quality import row_cosine
from shoprank.core.sessions import cpu_session

log = logging.getLogger(__name__)


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


def embed_feeds(model_path: Path, feeds: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
    """Sentence embeddings of every feed batch, stacked (2 threads: a one-off measurement)."""
    session = cpu_session(model_path, threads=2)
    out = [session.run([contract.ONNX_SENTENCE_EMBEDDING], dict(f))[0] for f in feeds]
    return np.concatenate(out, axis=0)


# Long on purpose: the search is one loop over exclusion candidates that quantizes,
# measures and keeps the best; its bookkeeping (trials, best, timing) is shared state.
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
