"""The real embedded tritonserver serving the tiny ensemble, vs the in-process pipeline."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

import contract
from loadtest.workload import make_workload
from training import datasets

pytestmark = pytest.mark.integration


def infer(url: str, query, history, top_k=10):
    """One raw gRPC request to the ensemble, exactly as a search backend would send it."""
    client = grpcclient.InferenceServerClient(url)
    try:
        values = {
            contract.QUERY: np.array([[query]], dtype=object),
            contract.HISTORY: np.asarray(history, dtype=np.int64).reshape(1, -1),
            contract.TOP_K: np.array([[top_k]], dtype=np.int32),
        }
        inputs = []
        for spec, value in values.items():
            inp = grpcclient.InferInput(spec.name, list(value.shape), spec.client_dtype)
            inp.set_data_from_numpy(value)
            inputs.append(inp)
        result = client.infer(contract.ENSEMBLE_MODEL, inputs)
        return (
            result.as_numpy(contract.PRODUCT_IDS.name)[0],
            result.as_numpy(contract.SCORES.name)[0],
            result.as_numpy(contract.TITLES.name)[0],
        )
    finally:
        client.close()


@pytest.fixture(scope="module")
def workload(tiny_artifacts):
    data = datasets.load(tiny_artifacts)
    requests = make_workload(data, requests=20, seed=3)
    assert any(r["history"] for r in requests)
    # Cold-start shoppers too: the same queries with no history at all.
    return requests + [{**r, "history": []} for r in requests[:4]]


def assert_same_ranking(served, reference):
    ids, scores, titles = served
    np.testing.assert_allclose(scores, reference.scores, rtol=1e-4, atol=1e-4)
    # Ids must match except where two products tie on score.
    mismatch = ids != reference.product_ids
    if mismatch.any():
        assert np.allclose(scores[mismatch], reference.scores[mismatch], atol=1e-5)
    assert [t.decode() for t in titles][:1] == reference.titles[:1] or mismatch[0]


def test_topk_matches_in_process_pipeline(ensemble_server, in_process, workload):
    for request in workload[:12]:
        served = infer(
            ensemble_server.grpc_url, request["query"], request["history"], request["top_k"]
        )
        reference = in_process.search(request["query"], request["history"], request["top_k"])
        assert len(served[0]) == request["top_k"]
        assert_same_ranking(served, reference)


def test_concurrent_requests_are_batched_correctly(ensemble_server, in_process, workload):
    """Different query lengths and history lengths in one dynamic batch (ragged inputs)."""
    with ThreadPoolExecutor(8) as pool:
        served = list(
            pool.map(
                lambda r: infer(ensemble_server.grpc_url, r["query"], r["history"], 10), workload
            )
        )
    for request, answer in zip(workload, served, strict=True):
        assert_same_ranking(answer, in_process.search(request["query"], request["history"], 10))


def test_history_changes_the_ranking_and_unknown_ids_are_ignored(ensemble_server, workload):
    request = next(r for r in workload if len(r["history"]) >= 2)
    url = ensemble_server.grpc_url
    with_history = infer(url, request["query"], request["history"])
    cold = infer(url, request["query"], [])
    assert not np.allclose(with_history[1], cold[1])
    noisy = infer(url, request["query"], [-5, 987654321, *request["history"], 10**15])
    np.testing.assert_array_equal(noisy[0], with_history[0])


@pytest.mark.parametrize(
    "query, message",
    [
        ("", "empty"),
        ("   \t ", "empty"),
        (b"\xff\xfe\xfd", "UTF-8"),
    ],
)
def test_bad_queries_are_invalid_argument(ensemble_server, query, message):
    with pytest.raises(InferenceServerException, match=message) as err:
        infer(ensemble_server.grpc_url, query, [])
    assert "INVALID_ARGUMENT" in str(err.value.status())


@pytest.mark.parametrize("top_k", [0, -3, contract.MAX_TOP_K + 1])
def test_bad_top_k_is_invalid_argument(ensemble_server, top_k):
    with pytest.raises(InferenceServerException, match=contract.TOP_K.name) as err:
        infer(ensemble_server.grpc_url, "red sofa", [], top_k)
    assert "INVALID_ARGUMENT" in str(err.value.status())


def test_huge_query_is_truncated_and_server_keeps_serving(ensemble_server, in_process):
    huge = "red leather sofa " * 600  # > 10,000 characters
    served = infer(ensemble_server.grpc_url, huge, [], 5)
    assert_same_ranking(served, in_process.search(huge, [], 5))
    client = grpcclient.InferenceServerClient(ensemble_server.grpc_url)
    assert client.is_server_live() and client.is_model_ready(contract.ENSEMBLE_MODEL)
    client.close()
