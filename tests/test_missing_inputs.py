"""A request missing a required input is refused naming it, whatever else it carries.

Triton 2.51's ensembles check only how many inputs a request has: a `recommend` request with
HISTORY but no TOP_K, or a `search` with QUERY and HISTORY but no TOP_K, passes that check
and stalls the ensemble ("unexpected deadlock, at least one output is not set"). The
repository declares those inputs optional down to the model that reads each
(contract.MODEL_VALIDATED_INPUTS), and that model names the missing one.
"""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from shoprank import contract

pytestmark = pytest.mark.integration


def tensor(spec: contract.TensorSpec, value: np.ndarray) -> grpcclient.InferInput:
    t = grpcclient.InferInput(spec.name, list(value.shape), spec.client_dtype)
    t.set_data_from_numpy(value)
    return t


QUERY = (contract.QUERY, np.array([[b"red sofa"]], dtype=object))
TOP_K = (contract.TOP_K, np.array([[5]], np.int32))
HISTORY = (contract.HISTORY, np.array([[1, 2, 3]], np.int64))


@pytest.mark.parametrize(
    "model, sent, missing",
    [
        (contract.RECOMMEND_MODEL, [HISTORY], contract.TOP_K),
        (contract.ENSEMBLE_MODEL, [QUERY, HISTORY], contract.TOP_K),
        (contract.ENSEMBLE_MODEL, [TOP_K, HISTORY], contract.QUERY),
        (contract.ENSEMBLE_MODEL, [HISTORY], contract.QUERY),
    ],
)
def test_the_missing_input_is_named(ensemble_server, model, sent, missing):
    client = grpcclient.InferenceServerClient(ensemble_server.grpc_url)
    with pytest.raises(InferenceServerException) as err:
        client.infer(model, [tensor(spec, value) for spec, value in sent], client_timeout=60)
    assert "INVALID_ARGUMENT" in str(err.value.status())
    assert f"{missing.name} is missing" in err.value.message()
    assert "deadlock" not in err.value.message()
    # ...and the server answers the complete request right after.
    complete = [QUERY, TOP_K] if model == contract.ENSEMBLE_MODEL else [TOP_K]
    result = client.infer(model, [tensor(s, v) for s, v in complete], client_timeout=60)
    assert result.as_numpy(contract.PRODUCT_IDS.name).shape[1] > 0
