"""Triton model `encoder`: token ids → L2-normalised QUERY_EMBEDDING, ONNX Runtime inside
the Python backend (the embedded CPU server has no ONNX Runtime backend).

Requests of different lengths arrive in one dynamic batch (ragged inputs); they are padded
to the longest and run as one ONNX call.
"""

from __future__ import annotations

import triton_python_backend_utils as pb_utils

from shoprank import contract
from shoprank.model_repository.models.common import input_array, parameters, version_dir
from shoprank.runtime import cpu_session, pad_rows


class TritonPythonModel:
    def initialize(self, args):
        params = parameters(args)
        self.session = cpu_session(
            version_dir(args) / params["onnx_file"], threads=int(params["threads"])
        )

    def execute(self, requests):
        ids = [input_array(r, contract.INPUT_IDS.name).reshape(-1) for r in requests]
        masks = [input_array(r, contract.ATTENTION_MASK.name).reshape(-1) for r in requests]
        (embeddings,) = self.session.run(
            [contract.ONNX_SENTENCE_EMBEDDING],
            {contract.ONNX_INPUT_IDS: pad_rows(ids), contract.ONNX_ATTENTION_MASK: pad_rows(masks)},
        )
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor(contract.QUERY_EMBEDDING.name, row[None, :])]
            )
            for row in embeddings
        ]
