"""Triton model `tokenizer`: QUERY text → INPUT_IDS, ATTENTION_MASK, ADMISSION_TICKET
(Python backend), the first step of `search` and `rerank`.

Each request is first admitted (`shoprank.core.admission`): it gets a ticket the ranker gives
back, or, with `max_in_flight` requests already in flight (`shed_in_flight` while
overloaded), is refused at once with UNAVAILABLE. A request may hold several rows (a
batched request); each row is validated and tokenized, and the request's rows are padded
to its longest.
"""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils

from shoprank import contract
from shoprank.core.requests import InvalidInput
from shoprank.core.tokenizer import QueryTokenizer, tokenize_rows
from shoprank.model_repository.models.common import (
    AdmissionGate,
    input_array,
    invalid,
    parameters,
    version_dir,
)
from shoprank.model_repository.models.metrics import ServingMetrics


class TritonPythonModel:
    def initialize(self, args):
        params = parameters(args)
        self.tokenizer = QueryTokenizer(version_dir(args) / params[contract.PARAM_TOKENIZER_FILE])
        self.admission = AdmissionGate(args, params)
        self.metrics = ServingMetrics()

    def execute(self, requests):
        responses = []
        for request in requests:
            # Admission first: a refusal costs no tokenizing, which matters under overload.
            ticket = self.admission.admit()
            if ticket is None:
                self.metrics.refused(reason="in_flight").increment(1)
                responses.append(self.admission.refusal())
                continue
            try:
                ids, mask = tokenize_rows(self.tokenizer, input_array(request, contract.QUERY.name))
            except InvalidInput as exc:
                self.admission.release(ticket)
                self.metrics.invalid_request(contract.TOKENIZER_MODEL, exc.reason)
                responses.append(invalid(str(exc)))
                continue
            tickets = np.full((len(ids), 1), ticket, np.int64)
            responses.append(
                pb_utils.InferenceResponse(
                    [
                        pb_utils.Tensor(contract.INPUT_IDS.name, ids),
                        pb_utils.Tensor(contract.ATTENTION_MASK.name, mask),
                        pb_utils.Tensor(contract.ADMISSION_TICKET.name, tickets),
                    ]
                )
            )
        return responses
