"""Triton model `tokenizer`: QUERY text → INPUT_IDS, ATTENTION_MASK (Python backend).

A request may hold several rows (a batched request); each row is validated and tokenized,
and the request's rows are padded to its longest.
"""

from __future__ import annotations

import triton_python_backend_utils as pb_utils

from shoprank import contract
from shoprank.model_repository.models.common import input_array, invalid, parameters, version_dir
from shoprank.model_repository.models.metrics import ServingMetrics
from shoprank.runtime import InvalidInput, QueryTokenizer, tokenize_rows


class TritonPythonModel:
    def initialize(self, args):
        params = parameters(args)
        self.tokenizer = QueryTokenizer(version_dir(args) / params["tokenizer_file"])
        self.metrics = ServingMetrics()

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                ids, mask = tokenize_rows(self.tokenizer, input_array(request, contract.QUERY.name))
            except InvalidInput as exc:
                self.metrics.invalid_request(contract.TOKENIZER_MODEL, exc.reason)
                responses.append(invalid(str(exc)))
                continue
            responses.append(
                pb_utils.InferenceResponse(
                    [
                        pb_utils.Tensor(contract.INPUT_IDS.name, ids),
                        pb_utils.Tensor(contract.ATTENTION_MASK.name, mask),
                    ]
                )
            )
        return responses
