"""Triton model `tokenizer`: QUERY text → INPUT_IDS, ATTENTION_MASK, ADMISSION_TICKET
(Python backend), the first step of `search` and `rerank`.

Each request is first admitted (`shoprank.core.admission`): it gets a ticket the ranker gives
back, or, with `max_in_flight` requests already in flight (`shed_in_flight` while
overloaded), is refused at once with UNAVAILABLE. A request may hold several rows (a
batched request); each row is validated and tokenized, and the request's rows are padded
to its longest. A dynamic batch is admitted under one lock and tokenized in one call
(`core.tokenizer.tokenize_requests`), its metrics sent once per series.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import triton_python_backend_utils as pb_utils

from shoprank import contract
from shoprank.core.requests import InvalidInput
from shoprank.core.tokenizer import QueryTokenizer, tokenize_requests
from shoprank.model_repository.models.common import (
    AdmissionGate,
    check_source,
    input_array,
    invalid,
    parameters,
    version_dir,
)
from shoprank.model_repository.models.metrics import ServingMetrics


class TritonPythonModel:
    def initialize(self, args):
        check_source(args, "tokenizer")
        params = parameters(args)
        self.tokenizer = QueryTokenizer(version_dir(args) / params[contract.PARAM_TOKENIZER_FILE])
        self.admission = AdmissionGate(args, params)
        self.metrics = ServingMetrics()

    def execute(self, requests):
        # Admission first: a refusal costs no tokenizing, which matters under overload.
        tickets = self.admission.admit_many(len(requests))
        responses: list = [None] * len(requests)
        invalid_reasons: Counter[str] = Counter()
        admitted, raws = [], []
        for i, (request, ticket) in enumerate(zip(requests, tickets, strict=True)):
            if ticket is None:
                responses[i] = self.admission.refusal()
                continue
            try:
                raws.append(input_array(request, contract.QUERY.name))
            except InvalidInput as exc:
                responses[i] = self._refuse(ticket, exc, invalid_reasons)
                continue
            admitted.append(i)
        for i, result in zip(admitted, tokenize_requests(self.tokenizer, raws), strict=True):
            if isinstance(result, InvalidInput):
                responses[i] = self._refuse(tickets[i], result, invalid_reasons)
                continue
            ids, mask = result
            responses[i] = pb_utils.InferenceResponse(
                [
                    pb_utils.Tensor(contract.INPUT_IDS.name, ids),
                    pb_utils.Tensor(contract.ATTENTION_MASK.name, mask),
                    pb_utils.Tensor(
                        contract.ADMISSION_TICKET.name, np.full((len(ids), 1), tickets[i], np.int64)
                    ),
                ]
            )
        refused = tickets.count(None)
        if refused:
            self.metrics.refused(reason="in_flight").increment(refused)
        for reason, n in invalid_reasons.items():
            self.metrics.invalid(model=contract.TOKENIZER_MODEL, reason=reason).increment(n)
        return responses

    def _refuse(self, ticket: int, exc: InvalidInput, reasons: Counter[str]):
        """INVALID_ARGUMENT for an admitted request; its slot is free again at once."""
        self.admission.release(ticket)
        reasons[exc.reason] += 1
        return invalid(str(exc))
