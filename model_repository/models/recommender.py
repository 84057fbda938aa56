"""Triton model `recommender` (ensemble `recommend`): top-k products from a shopper's
history alone, by the sequential model; cold start (no history) by popularity.

Each request is first admitted (`shoprank.core.admission`, the same table as `search`'s, as
the two share the cores): beyond the in-flight limit it is refused at once with
UNAVAILABLE. One `Recommender.recommend` call per dynamic batch; requests are validated
one by one, so a bad one is refused with INVALID_ARGUMENT and the rest of its batch is
still answered.
"""

from __future__ import annotations

from collections import Counter

from shoprank import contract
from shoprank.core.filters import row_filters
from shoprank.core.recommender import Recommender, RecommendRequest
from shoprank.core.requests import row_flags, row_values, validate_top_k
from shoprank.core.sessions import limit_blas_threads
from shoprank.model_repository.models.common import (
    AdmissionGate,
    answer_admitted,
    answer_batch,
    check_source,
    input_array,
    optional_array,
    parameters,
    version_dir,
)
from shoprank.model_repository.models.metrics import ServingMetrics


class TritonPythonModel:
    def initialize(self, args):
        check_source(args, "recommender")
        params = parameters(args)
        threads = int(params[contract.PARAM_THREADS])
        self.recommender = Recommender.load(version_dir(args), threads=threads)
        limit_blas_threads(threads)  # after loading: every BLAS library is in by then
        self.admission = AdmissionGate(args, params)
        self.metrics = ServingMetrics()

    def execute(self, requests):
        return answer_admitted(requests, self.admission, self._answer, self.metrics)

    def _answer(self, requests) -> list:
        return answer_batch(
            requests,
            self._parse,
            self.recommender.recommend,
            lambda exc: self.metrics.invalid_request(contract.RECOMMENDER_MODEL, exc.reason),
            self._observe,
        )

    def _observe(self, rows: list[RecommendRequest], answers) -> None:
        counts: Counter[tuple[str, str]] = Counter()
        for row in rows:
            counts[(contract.RECOMMEND_MODEL, "present" if len(row.history) else "empty")] += 1
        returned = sum(len(a.product_ids) for a in answers)
        self.metrics.answered(dict(counts), {contract.RECOMMEND_MODEL: returned})

    def _parse(self, request) -> list[RecommendRequest]:
        """The request's rows, validated; InvalidInput refuses the whole request."""
        top_k = input_array(request, contract.TOP_K.name).reshape(-1)
        histories = row_values(
            optional_array(request, contract.HISTORY.name), len(top_k), contract.HISTORY.name
        )
        catalog = self.recommender.catalog
        filters = row_filters(
            {s.name: optional_array(request, s.name) for s in contract.FILTER_INPUTS},
            len(top_k),
            catalog,
        )
        explain = row_flags(
            optional_array(request, contract.EXPLAIN.name), len(top_k), contract.EXPLAIN.name
        )
        return [
            RecommendRequest(catalog.rows_of(h), validate_top_k(k), f, e)
            for h, k, f, e in zip(histories, top_k, filters, explain, strict=True)
        ]
