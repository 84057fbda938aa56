"""Triton model `recommender` (ensemble `recommend`): top-k products from a shopper's
history alone, by the sequential model; cold start (no history) by popularity.

One `Recommender.recommend` call per dynamic batch; requests are validated one by one, so
a bad one is refused with INVALID_ARGUMENT and the rest of its batch is still answered.
"""

from __future__ import annotations

import triton_python_backend_utils as pb_utils

from shoprank import contract
from shoprank.filters import row_filters
from shoprank.model_repository.models.common import (
    input_array,
    invalid,
    optional_array,
    parameters,
    version_dir,
)
from shoprank.model_repository.models.metrics import ServingMetrics
from shoprank.recommend import Recommender, RecommendRequest
from shoprank.runtime import (
    InvalidInput,
    pad_answers,
    pad_explanations,
    row_flags,
    row_values,
    validate_top_k,
)


class TritonPythonModel:
    def initialize(self, args):
        params = parameters(args)
        self.recommender = Recommender.load(version_dir(args), threads=int(params["threads"]))
        self.metrics = ServingMetrics()

    def execute(self, requests):
        responses: list = [None] * len(requests)
        rows: list[RecommendRequest] = []
        spans: list[tuple[int, int, int]] = []  # (request index, first row, row count)
        for i, request in enumerate(requests):
            try:
                parsed = self._parse(request)
            except InvalidInput as exc:
                self.metrics.invalid_request(contract.RECOMMENDER_MODEL, exc.reason)
                responses[i] = invalid(str(exc))
                continue
            spans.append((i, len(rows), len(parsed)))
            rows += parsed
        answers = self.recommender.recommend(rows)
        for row, answer in zip(rows, answers, strict=True):
            history = "present" if len(row.history) else "empty"
            self.metrics.rows(mode=contract.RECOMMEND_MODEL, history=history).increment(1)
            self.metrics.results(mode=contract.RECOMMEND_MODEL).increment(len(answer.product_ids))
        for i, first, count in spans:
            rows_answers = answers[first : first + count]
            ids, scores, titles = pad_answers(
                [(a.product_ids, a.scores, a.titles) for a in rows_answers]
            )
            explained = pad_explanations([a.explanations for a in rows_answers], ids.shape[1])
            responses[i] = pb_utils.InferenceResponse(
                [
                    pb_utils.Tensor(contract.PRODUCT_IDS.name, ids),
                    pb_utils.Tensor(contract.SCORES.name, scores),
                    pb_utils.Tensor(contract.TITLES.name, titles),
                    pb_utils.Tensor(contract.EXPLANATION.name, explained),
                ]
            )
        return responses

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
