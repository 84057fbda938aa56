"""Triton model `searcher` (the CPU target's `search` and `rerank`): tokenize, encode,
retrieve and rank in one Python-backend model.

One stub does what the GPU targets split into tokenizer → encoder → ranker, so a request
crosses the server/stub boundary once rather than three times. Each request is first
admitted (`shoprank.core.admission`, the same table as `recommend`'s): beyond the in-flight
limit it is refused at once with UNAVAILABLE. Requests are validated one by one
(`core.ranking.parse_request`), so a bad one is refused with INVALID_ARGUMENT and the rest of
its batch is still answered; the batch's queries run as one encoder call and its rows as
one `CandidateRanker.rank` call (`core.pipeline.SearchPipeline`).
"""

from __future__ import annotations

from shoprank import contract
from shoprank.core.pipeline import SearchPipeline
from shoprank.core.sessions import limit_blas_threads
from shoprank.model_repository.models.common import (
    AdmissionGate,
    RankedBatch,
    answer_admitted,
    check_source,
    parameters,
    request_arrays,
    version_dir,
)
from shoprank.model_repository.models.metrics import ServingMetrics


class TritonPythonModel:
    def initialize(self, args):
        check_source(args, "searcher")
        params = parameters(args)
        threads = int(params[contract.PARAM_THREADS])
        self.pipeline = SearchPipeline.load(
            version_dir(args),
            encoder_threads=int(params[contract.PARAM_ENCODER_THREADS]),
            ranker_threads=threads,
        )
        limit_blas_threads(threads)  # after loading: every BLAS library is in by then
        self.admission = AdmissionGate(args, params)
        self.metrics = ServingMetrics()
        self.batch = RankedBatch(contract.SEARCHER_MODEL, self.pipeline, self.metrics)

    def execute(self, requests):
        return answer_admitted(requests, self.admission, self._answer, self.metrics)

    def _answer(self, requests) -> list:
        return self.batch.answer([request_arrays(r) for r in requests])
