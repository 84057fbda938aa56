"""Triton model `encoder` of the gpu-embedded target: token ids → L2-normalised
QUERY_EMBEDDING, PyTorch with CUDA graphs inside the Python backend
(`shoprank.models.gpu`; the embedded server has no TensorRT or ONNX Runtime backend).

Requests of different lengths arrive in one dynamic batch (ragged inputs), each with one
or more rows; every row is padded to the longest and the batch runs as one forward.
"""

from __future__ import annotations

import triton_python_backend_utils as pb_utils

from shoprank import contract
from shoprank.core.sessions import encode_requests
from shoprank.model_repository.models.common import (
    check_source,
    input_array,
    parameters,
    version_dir,
)


class TritonPythonModel:
    def initialize(self, args):
        check_source(args, "encoder")
        # torch when loaded, not imported: every serving module imports torch-free (test_layers).
        from shoprank.models.gpu import TorchEncoder, device_of

        params = parameters(args)
        device = device_of(args["model_instance_kind"], args["model_instance_device_id"])
        self.session = TorchEncoder(
            version_dir(args) / params[contract.PARAM_ENCODER_DIR],
            device,
            params[contract.PARAM_DTYPE],
        )
        self.session.warm_up()

    def execute(self, requests):
        embeddings = encode_requests(
            self.session,
            [input_array(r, contract.INPUT_IDS.name) for r in requests],
            [input_array(r, contract.ATTENTION_MASK.name) for r in requests],
        )
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor(contract.QUERY_EMBEDDING.name, e)])
            for e in embeddings
        ]
