"""Triton model `tokenizer`: QUERY text → INPUT_IDS, ATTENTION_MASK, ADMISSION_TICKET
(Python backend), the first step of `search` and `rerank`.

Each request is first admitted (`shoprank.admission`): it gets a ticket the ranker gives
back, or, with `max_in_flight` requests already in flight (`shed_in_flight` while
overloaded), is refused at once with UNAVAILABLE. A request may hold several rows (a
batched request); each row is validated and tokenized, and the request's rows are padded
to its longest.
"""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from shoprank import contract
from shoprank.admission import NO_TICKET, AdmissionTable, overloaded_message, table_path
from shoprank.model_repository.models.common import input_array, invalid, parameters, version_dir
from shoprank.model_repository.models.metrics import ServingMetrics
from shoprank.runtime import InvalidInput, QueryTokenizer, tokenize_rows


class TritonPythonModel:
    def initialize(self, args):
        params = parameters(args)
        self.tokenizer = QueryTokenizer(version_dir(args) / params["tokenizer_file"])
        self.admission = AdmissionTable(
            table_path(),
            int(params["max_in_flight"]),
            float(params["admission_stale_s"]),
            # Repositories built before the lower limit existed have none (0).
            shed_limit=int(params.get("shed_in_flight", 0)),
        )
        # Triton's warm-up requests come first, before the model serves anything: they pass
        # without a slot. Under load every slot may be taken, and a refused warm-up fails the
        # load (found when a hot deploy under 8 users failed); nor would a ranker free it.
        self.warmups_left = warmup_requests(json.loads(args["model_config"]))
        self.metrics = ServingMetrics()

    def execute(self, requests):
        responses = []
        for request in requests:
            # Admission first: a refusal costs no tokenizing, which matters under overload.
            if self.warmups_left > 0:
                self.warmups_left -= 1
                ticket = NO_TICKET
            else:
                ticket = self.admission.admit()
            if ticket is None:
                self.metrics.refused(reason="in_flight").increment(1)
                responses.append(overloaded(self.admission.current_limit()))
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


def warmup_requests(model_config: dict) -> int:
    """How many warm-up requests Triton sends each instance (a sample runs `count` times,
    once when unset)."""
    return sum(max(int(w.get("count", 0) or 0), 1) for w in model_config.get("model_warmup", []))


def overloaded(limit: int):
    """An UNAVAILABLE response: refused at once, worth retrying after a backoff."""
    return pb_utils.InferenceResponse(
        error=pb_utils.TritonError(overloaded_message(limit), pb_utils.TritonError.UNAVAILABLE)
    )
