"""Triton model `ranker`: retrieval (dense ANN + BM25) and fusion re-ranking, or re-ranking
of the caller's CANDIDATE_IDS (ensemble `rerank`).

One `CandidateRanker.rank` call per dynamic batch: one retrieval pass and one ONNX call
score every row of every request. Requests are validated here one by one, so a bad one
is refused with INVALID_ARGUMENT and the rest of its batch is still answered.
"""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils

from shoprank import contract
from shoprank.core.admission import AdmissionTable, table_path
from shoprank.core.filters import row_filters
from shoprank.core.ranking import CandidateRanker, Request
from shoprank.core.requests import InvalidInput, decode_query, row_flags, row_values, validate_top_k
from shoprank.model_repository.models.common import (
    answer_batch,
    input_array,
    optional_array,
    parameters,
    version_dir,
)
from shoprank.model_repository.models.metrics import ServingMetrics, mode_of


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

    def execute(self, requests):
        tickets = [optional_array(r, contract.ADMISSION_TICKET.name) for r in requests]
        try:
            return answer_batch(
                requests,
                self._parse,
                self.ranker.rank,
                lambda exc: self.metrics.invalid_request(contract.RANKER_MODEL, exc.reason),
                self._observe,
            )
        finally:  # answered or failed, the requests are no longer in flight
            for ticket in tickets:
                if ticket is not None and ticket.size:
                    self.admission.release(int(ticket.reshape(-1)[0]))

    def _observe(self, rows: list[Request], answers) -> None:
        m = self.metrics
        for stage, seconds in self.ranker.last_timings.items():
            m.stage_seconds(stage=stage).observe(seconds)
        for row, answer in zip(rows, answers, strict=True):
            mode = mode_of(row.candidates)
            history = "present" if len(row.history) else "empty"
            m.rows(mode=mode, history=history).increment(1)
            m.results(mode=mode).increment(len(answer.product_ids))
            n = len(row.candidates) if row.candidates is not None else answer.candidates
            m.candidates(mode=mode).observe(n)

    def _parse(self, request) -> list[Request]:
        """The request's rows, validated; InvalidInput refuses the whole request."""
        queries = input_array(request, contract.QUERY.name).reshape(-1)
        embeddings = input_array(request, contract.QUERY_EMBEDDING.name)
        top_k = input_array(request, contract.TOP_K.name).reshape(-1)
        b = len(queries)
        if top_k.size != b:
            raise InvalidInput(
                f"{contract.TOP_K.name} must hold one value per row, got {top_k.size}"
            )
        histories = row_values(
            optional_array(request, contract.HISTORY.name), b, contract.HISTORY.name
        )
        candidates = optional_array(request, contract.CANDIDATE_IDS.name)
        catalog = self.ranker.catalog
        filters = row_filters(
            {s.name: optional_array(request, s.name) for s in contract.FILTER_INPUTS}, b, catalog
        )
        explain = row_flags(optional_array(request, contract.EXPLAIN.name), b, "EXPLAIN")
        out = []
        for row in range(b):
            rows = None
            if candidates is not None:
                row_ids = row_values(candidates, b, contract.CANDIDATE_IDS.name)[row]
                rows, unknown, duplicates = catalog.candidate_rows(
                    row_ids[row_ids != contract.PADDING_ID]
                )
                if unknown:
                    self.metrics.ignored(kind="unknown").increment(unknown)
                if duplicates:
                    self.metrics.ignored(kind="duplicate").increment(duplicates)
                if unknown or duplicates:
                    self.logger.log_verbose(
                        f"rerank row {row}: {unknown} unknown and {duplicates} duplicate "
                        "candidate ids ignored"
                    )
            out.append(
                Request(
                    query=decode_query(queries[row]),
                    embedding=np.asarray(embeddings[row], np.float32).reshape(-1),
                    history=catalog.rows_of(histories[row]),
                    k=validate_top_k(top_k[row]),
                    candidates=rows,
                    filters=filters[row],
                    explain=explain[row],
                )
            )
        return out
