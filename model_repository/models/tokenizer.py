"""Triton model `tokenizer`: QUERY text → INPUT_IDS, ATTENTION_MASK (Python backend)."""

from __future__ import annotations

import triton_python_backend_utils as pb_utils

from shoprank import contract
from shoprank.model_repository.models.common import input_array, invalid, parameters, version_dir
from shoprank.runtime import InvalidInput, QueryTokenizer, decode_query


class TritonPythonModel:
    def initialize(self, args):
        params = parameters(args)
        self.tokenizer = QueryTokenizer(version_dir(args) / params["tokenizer_file"])

    def execute(self, requests):
        responses: list = [None] * len(requests)
        texts, slots = [], []
        for i, request in enumerate(requests):
            try:
                texts.append(decode_query(input_array(request, contract.QUERY.name).reshape(-1)[0]))
                slots.append(i)
            except (InvalidInput, IndexError) as exc:
                responses[i] = invalid(str(exc) or f"{contract.QUERY.name} is empty")
        for i, (ids, mask) in zip(slots, self.tokenizer.encode(texts), strict=True):
            responses[i] = pb_utils.InferenceResponse(
                [
                    pb_utils.Tensor(contract.INPUT_IDS.name, ids[None, :]),
                    pb_utils.Tensor(contract.ATTENTION_MASK.name, mask[None, :]),
                ]
            )
        return responses
