"""Triton model `encoder`: token ids → L2-normalised QUERY_EMBEDDING, ONNX Runtime inside
the Python backend (the embedded CPU server has no ONNX Runtime backend), or PyTorch with
CUDA graphs for the `gpu-embedded` target (`shoprank.models.gpu`).

Requests of different lengths arrive in one dynamic batch (ragged inputs), each with one
or more rows; every row is padded to the longest and the batch runs as one ONNX call.
"""

from __future__ import annotations

import triton_python_backend_utils as pb_utils

from shoprank import contract
from shoprank.core.sessions import cpu_session, encode_requests
from shoprank.model_repository.models.common import input_array, parameters, version_dir


class TritonPythonModel:
    def initialize(self, args):
        params = parameters(args)
        # The gpu-embedded target: PyTorch with CUDA graphs instead of ONNX Runtime.
        if params.get(contract.PARAM_RUNTIME) == contract.TORCH_RUNTIME:
            from shoprank.models.gpu import TorchEncoder, device_of

            device = device_of(args["model_instance_kind"], args["model_instance_device_id"])
            self.session = TorchEncoder(
                version_dir(args) / params[contract.PARAM_ENCODER_DIR],
                device,
                params[contract.PARAM_DTYPE],
            )
            self.session.warm_up()
        else:
            self.session = cpu_session(
                version_dir(args) / params[contract.PARAM_ONNX_FILE],
                threads=int(params[contract.PARAM_THREADS]),
            )

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
