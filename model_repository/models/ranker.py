"""Triton model `ranker` of the GPU targets: retrieval (dense ANN + BM25) and fusion
re-ranking, or re-ranking of the caller's CANDIDATE_IDS (ensemble `rerank`), after the
`tokenizer` and `encoder` steps (the CPU target runs all three in the `searcher`).

One `CandidateRanker.rank` call per dynamic batch: one retrieval pass and the fusion
ranker's ONNX calls score every row of every request. Requests are validated one by one
(`core.ranking.parse_request`), so a bad one is refused with INVALID_ARGUMENT and the rest
of its batch is still answered (`common.RankedBatch`). Each request's admission ticket,
handed out by the tokenizer, is given back here.
"""

from __future__ import annotations

from shoprank import contract
from shoprank.core.admission import AdmissionTable, table_path
from shoprank.core.ranking import CandidateRanker
from shoprank.core.sessions import limit_blas_threads
from shoprank.model_repository.models.common import (
    RankedBatch,
    check_source,
    parameters,
    request_arrays,
    ticket_of,
    version_dir,
)
from shoprank.model_repository.models.metrics import ServingMetrics


class TritonPythonModel:
    def initialize(self, args):
        check_source(args, "ranker")
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
        threads = int(params[contract.PARAM_THREADS])
        ranker = CandidateRanker.load(version_dir(args), threads=threads, dense=dense)
        limit_blas_threads(threads)  # after loading: every BLAS library is in by then
        self.admission = AdmissionTable(table_path(), limit=0)  # releases only
        self.batch = RankedBatch(contract.RANKER_MODEL, ranker, ServingMetrics())

    def execute(self, requests):
        arrays = [request_arrays(r) for r in requests]
        try:
            return self.batch.answer(arrays)
        finally:  # answered or failed, the requests are no longer in flight
            for a in arrays:
                ticket = ticket_of(a)
                if ticket is not None:
                    self.admission.release(ticket)
