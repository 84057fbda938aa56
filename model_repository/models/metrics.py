"""shoprank's own Prometheus metrics, published through Triton's metrics endpoint by the
Python-backend models (custom metrics API; importable only inside Triton's stub).

Series (beside Triton's own nv_inference_* ones, on the same :8002/metrics):

    shoprank_stage_seconds{stage}              histogram: search time per stage and batch
                                               (encode: the searcher only; retrieve,
                                               features, score, select), sampled
    shoprank_candidates{mode}                  histogram: candidates re-ranked per row, sampled
    shoprank_rows_total{mode, history}         counter: rows ranked (search | rerank | recommend;
                                               empty | present history)
    shoprank_results_total{mode}               counter: products returned
    shoprank_invalid_requests_total{model, reason}   counter: refused with INVALID_ARGUMENT
    shoprank_ignored_candidate_ids_total{kind} counter: unknown | duplicate ids in rerank
    shoprank_refused_requests_total{reason}    counter: refused with UNAVAILABLE (in_flight:
                                               the admission limit was reached)

Rows, results and the two sampled histograms are sent at most once a second
(`shoprank.ops.metering`): each update is a round trip to the server process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import triton_python_backend_utils as pb_utils

from shoprank.ops.metering import MetricBuffer, series

if TYPE_CHECKING:  # the GPU tokenizer's stub imports this module without the ranking stack
    from shoprank.core.ranking import BatchCounts

SECONDS = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
CANDIDATES = [10, 50, 100, 200, 300, 500, 1000]


class _Family:
    """A metric family whose labelled series are created on first use."""

    def __init__(self, name: str, description: str, kind, buckets: list[float] | None = None):
        self.name = name
        self.family = pb_utils.MetricFamily(name=name, description=description, kind=kind)
        self.buckets = buckets
        self.series: dict[tuple, object] = {}

    def __call__(self, **labels: str):
        key = tuple(sorted(labels.items()))
        if key not in self.series:
            kwargs = {"buckets": self.buckets} if self.buckets else {}
            self.series[key] = self.family.Metric(labels=labels, **kwargs)
        return self.series[key]


STAGE_SECONDS = "shoprank_stage_seconds"
CANDIDATES_FAMILY = "shoprank_candidates"
ROWS = "shoprank_rows_total"
RESULTS = "shoprank_results_total"


class ServingMetrics:
    """The families above; one instance per model instance. The hot path's updates go
    through a `MetricBuffer` (`shoprank.ops.metering`): counters sent summed at most once a
    second, histograms observing the batch that sends them."""

    def __init__(self, buffer: MetricBuffer | None = None) -> None:
        counter, histogram = pb_utils.MetricFamily.COUNTER, pb_utils.MetricFamily.HISTOGRAM
        self.stage_seconds = _Family(
            STAGE_SECONDS, "search time per stage and batch (sampled)", histogram, SECONDS
        )
        self.candidates = _Family(
            CANDIDATES_FAMILY, "candidates re-ranked per row (sampled)", histogram, CANDIDATES
        )
        self.rows = _Family(ROWS, "rows ranked", counter)
        self.results = _Family(RESULTS, "products returned", counter)
        self.invalid = _Family(
            "shoprank_invalid_requests_total", "requests refused as invalid", counter
        )
        self.ignored = _Family(
            "shoprank_ignored_candidate_ids_total", "re-rank ids ignored", counter
        )
        self.refused = _Family(
            "shoprank_refused_requests_total", "requests refused for overload", counter
        )
        self.buffered = {
            f.name: f for f in (self.stage_seconds, self.candidates, self.rows, self.results)
        }
        self.buffer = buffer or MetricBuffer()

    def invalid_request(self, model: str, reason: str) -> None:
        self.invalid(model=model, reason=reason).increment(1)

    def ranked_batch(self, counts: BatchCounts, timings: dict[str, float]) -> None:
        """One ranked batch: its counts summed into the pending ones, its stage timings and
        candidate counts the histograms' sample if this batch flushes."""
        for stage, seconds in timings.items():
            self.buffer.sample(series(STAGE_SECONDS, stage=stage), [seconds])
        for mode, values in counts.candidates.items():
            self.buffer.sample(series(CANDIDATES_FAMILY, mode=mode), values)
        self.answered(counts.rows, counts.results)

    def answered(self, rows: dict[tuple[str, str], int], results: dict[str, int]) -> None:
        """Rows per (mode, history) and products returned per mode, then a flush if due."""
        for (mode, history), n in rows.items():
            self.buffer.add(series(ROWS, mode=mode, history=history), n)
        for mode, n in results.items():
            self.buffer.add(series(RESULTS, mode=mode), n)
        self.flush()

    def flush(self) -> None:
        """Send what the buffer holds, when it is due."""
        flush = self.buffer.take()
        if flush is None:
            return
        for (name, labels), n in flush.counts.items():
            self.buffered[name](**dict(labels)).increment(n)
        for (name, labels), values in flush.samples.items():
            metric = self.buffered[name](**dict(labels))
            for value in values:
                metric.observe(value)

    def ignored_ids(self, unknown: int, duplicate: int) -> None:
        if unknown:
            self.ignored(kind="unknown").increment(unknown)
        if duplicate:
            self.ignored(kind="duplicate").increment(duplicate)
