"""Triton model `ranker`: retrieval (dense ANN + BM25) and fusion re-ranking, or re-ranking
of the caller's CANDIDATE_IDS (ensemble `rerank`).

One `CandidateRanker.rank` call per dynamic batch: one retrieval pass and one ONNX call
score every request of the batch. Requests are validated here one by one, so a bad one
is refused with INVALID_ARGUMENT and the rest of its batch is still answered.
"""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils

from shoprank import contract
from shoprank.model_repository.models.common import (
    input_array,
    invalid,
    optional_array,
    parameters,
    version_dir,
)
from shoprank.ranking import CandidateRanker, Request
from shoprank.runtime import InvalidInput, decode_query, validate_top_k


class TritonPythonModel:
    def initialize(self, args):
        params = parameters(args)
        self.ranker = CandidateRanker.load(version_dir(args), threads=int(params["threads"]))
        self.logger = pb_utils.Logger

    def execute(self, requests):
        responses: list = [None] * len(requests)
        parsed, slots = [], []
        for i, request in enumerate(requests):
            try:
                parsed.append(self._parse(request))
                slots.append(i)
            except InvalidInput as exc:
                responses[i] = invalid(str(exc))
        for i, ranked in zip(slots, self.ranker.rank(parsed), strict=True):
            responses[i] = pb_utils.InferenceResponse(
                [
                    pb_utils.Tensor(contract.PRODUCT_IDS.name, ranked.product_ids[None, :]),
                    pb_utils.Tensor(contract.SCORES.name, ranked.scores[None, :]),
                    pb_utils.Tensor(contract.TITLES.name, ranked.titles[None, :]),
                ]
            )
        return responses

    def _parse(self, request) -> Request:
        top_k = input_array(request, contract.TOP_K.name).reshape(-1)
        if top_k.size != 1:
            raise InvalidInput(f"{contract.TOP_K.name} must hold one value, got {top_k.size}")
        history = optional_array(request, contract.HISTORY.name)
        candidates = optional_array(request, contract.CANDIDATE_IDS.name)
        catalog = self.ranker.catalog
        rows = None
        if candidates is not None:
            rows, unknown, duplicates = catalog.candidate_rows(candidates)
            if unknown or duplicates:
                self.logger.log_info(
                    f"rerank: {unknown} unknown and {duplicates} duplicate candidate ids ignored"
                )
        return Request(
            query=decode_query(input_array(request, contract.QUERY.name).reshape(-1)[0]),
            embedding=input_array(request, contract.QUERY_EMBEDDING.name).reshape(-1),
            history=catalog.rows_of(history if history is not None else np.zeros(0, np.int64)),
            k=validate_top_k(top_k[0]),
            candidates=rows,
        )
