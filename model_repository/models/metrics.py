"""shoprank's own Prometheus metrics, published through Triton's metrics endpoint by the
Python-backend models (custom metrics API; importable only inside Triton's stub).

Series (beside Triton's own nv_inference_* ones, on the same :8002/metrics):

    shoprank_stage_seconds{stage}              histogram: ranker time per stage and batch
                                               (retrieve, features, score, select)
    shoprank_candidates{mode}                  histogram: candidates re-ranked per row
    shoprank_rows_total{mode, history}         counter: rows ranked (search | rerank | recommend;
                                               empty | present history)
    shoprank_results_total{mode}               counter: products returned
    shoprank_invalid_requests_total{model, reason}   counter: refused with INVALID_ARGUMENT
    shoprank_ignored_candidate_ids_total{kind} counter: unknown | duplicate ids in rerank
    shoprank_refused_requests_total{reason}    counter: refused with UNAVAILABLE (in_flight:
                                               the admission limit was reached)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import triton_python_backend_utils as pb_utils

if TYPE_CHECKING:  # the tokenizer's stub imports this module without the ranking stack
    from shoprank.core.ranking import BatchCounts

SECONDS = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
CANDIDATES = [10, 50, 100, 200, 300, 500, 1000]


class _Family:
    """A metric family whose labelled series are created on first use."""

    def __init__(self, name: str, description: str, kind, buckets: list[float] | None = None):
        self.family = pb_utils.MetricFamily(name=name, description=description, kind=kind)
        self.buckets = buckets
        self.series: dict[tuple, object] = {}

    def __call__(self, **labels: str):
        key = tuple(sorted(labels.items()))
        if key not in self.series:
            kwargs = {"buckets": self.buckets} if self.buckets else {}
            self.series[key] = self.family.Metric(labels=labels, **kwargs)
        return self.series[key]


class ServingMetrics:
    """The families above; one instance per model instance."""

    def __init__(self) -> None:
        counter, histogram = pb_utils.MetricFamily.COUNTER, pb_utils.MetricFamily.HISTOGRAM
        self.stage_seconds = _Family(
            "shoprank_stage_seconds", "ranker time per stage and batch", histogram, SECONDS
        )
        self.candidates = _Family(
            "shoprank_candidates", "candidates re-ranked per row", histogram, CANDIDATES
        )
        self.rows = _Family("shoprank_rows_total", "rows ranked", counter)
        self.results = _Family("shoprank_results_total", "products returned", counter)
        self.invalid = _Family(
            "shoprank_invalid_requests_total", "requests refused as invalid", counter
        )
        self.ignored = _Family(
            "shoprank_ignored_candidate_ids_total", "re-rank ids ignored", counter
        )
        self.refused = _Family(
            "shoprank_refused_requests_total", "requests refused for overload", counter
        )

    def invalid_request(self, model: str, reason: str) -> None:
        self.invalid(model=model, reason=reason).increment(1)

    def ranked_batch(self, counts: BatchCounts, timings: dict[str, float]) -> None:
        """One ranker batch: each counter series once with its sum; the histograms get an
        observation per stage and per row, as their buckets need."""
        for stage, seconds in timings.items():
            self.stage_seconds(stage=stage).observe(seconds)
        for (mode, history), n in counts.rows.items():
            self.rows(mode=mode, history=history).increment(n)
        for mode, n in counts.results.items():
            self.results(mode=mode).increment(n)
        for mode, values in counts.candidates.items():
            series = self.candidates(mode=mode)
            for n in values:
                series.observe(n)

    def ignored_ids(self, unknown: int, duplicate: int) -> None:
        if unknown:
            self.ignored(kind="unknown").increment(unknown)
        if duplicate:
            self.ignored(kind="duplicate").increment(duplicate)
