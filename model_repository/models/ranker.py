"""Triton model `ranker`: retrieval (dense ANN + BM25) and fusion re-ranking, or re-ranking
of the caller's CANDIDATE_IDS (ensemble `rerank`).

One `CandidateRanker.rank` call per dynamic batch: one retrieval pass and one ONNX call
score every row of every request. Requests are validated one by one
(`core.ranking.parse_request`), so a bad one is refused with INVALID_ARGUMENT and the rest
of its batch is still answered. Each request's tensors are read once, and the batch's
metrics are summed before they are sent (`core.ranking.batch_counts`).
"""

from __future__ import annotations

import triton_python_backend_utils as pb_utils

from shoprank import contract
from shoprank.core.admission import AdmissionTable, table_path
from shoprank.core.ranking import CandidateRanker, ParsedRequest, batch_counts, parse_request
from shoprank.core.requests import InvalidInput
from shoprank.model_repository.models.common import (
    answer_batch,
    parameters,
    request_arrays,
    ticket_of,
    version_dir,
)
from shoprank.model_repository.models.metrics import ServingMetrics


class TritonPythonModel:
    def initialize(self, args):
        params = parameters(args)
        dense = None
        # The gpu-embedded target: the exact dense scan on the device.
        if params.get(contract.PARAM_RUNTIME) == contract.TORCH_RUNTIME:
            from shoprank.data.artifacts import load_item_index
            from shoprank.models.gpu import TorchDenseIndex, device_of

            embeddings = load_item_index(version_dir(args) / params[contract.PARAM_ITEM_INDEX])[
                "embeddings"
            ]
            device = device_of(args["model_instance_kind"], args["model_instance_device_id"])
            dense = TorchDenseIndex(embeddings, device, params[contract.PARAM_DTYPE])
        self.ranker = CandidateRanker.load(
            version_dir(args), threads=int(params[contract.PARAM_THREADS]), dense=dense
        )
        self.logger = pb_utils.Logger
        self.admission = AdmissionTable(table_path(), limit=0)  # releases only
        self.metrics = ServingMetrics()
        self.ignored = {"unknown": 0, "duplicate": 0}  # this batch's ignored re-rank ids

    def execute(self, requests):
        # Counted afresh per batch: a batch that fails before `_observe` leaves nothing behind.
        self.ignored = {"unknown": 0, "duplicate": 0}
        arrays = [request_arrays(r) for r in requests]
        try:
            return answer_batch(arrays, self._parse, self.ranker.rank, self._invalid, self._observe)
        finally:  # answered or failed, the requests are no longer in flight
            for a in arrays:
                ticket = ticket_of(a)
                if ticket is not None:
                    self.admission.release(ticket)

    def _parse(self, arrays) -> list:
        parsed: ParsedRequest = parse_request(arrays, self.ranker.catalog)
        self.ignored["unknown"] += parsed.unknown_ids
        self.ignored["duplicate"] += parsed.duplicate_ids
        return parsed.rows

    def _invalid(self, exc: InvalidInput) -> None:
        self.metrics.invalid_request(contract.RANKER_MODEL, exc.reason)

    def _observe(self, rows, answers) -> None:
        self.metrics.ranked_batch(batch_counts(rows, answers), self.ranker.last_timings)
        unknown, duplicate = self.ignored["unknown"], self.ignored["duplicate"]
        if unknown or duplicate:
            self.metrics.ignored_ids(unknown, duplicate)
            self.logger.log_verbose(
                f"rerank: {unknown} unknown and {duplicate} duplicate candidate ids ignored"
            )
