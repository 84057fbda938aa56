"""The real embedded tritonserver serving the tiny ensemble, vs the in-process pipeline."""

import json
import re
import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from pipeline_fixtures import assert_same_ranking
from tritonclient.utils import InferenceServerException

from shoprank import contract
from shoprank.data import datasets
from shoprank.loadtest.workload import make_workload

pytestmark = pytest.mark.integration


def send(url: str, model: str, values: dict, outputs=contract.ENSEMBLE_OUTPUTS):
    """One raw gRPC request with whichever inputs `values` holds (spec → array), exactly as
    a search backend would send it; the InferResult."""
    inputs = []
    for spec, value in values.items():
        inp = grpcclient.InferInput(spec.name, list(value.shape), spec.client_dtype)
        inp.set_data_from_numpy(value)
        inputs.append(inp)
    requested = [grpcclient.InferRequestedOutput(s.name) for s in outputs]
    client = grpcclient.InferenceServerClient(url)
    try:
        return client.infer(model, inputs, outputs=requested)
    finally:
        client.close()


def infer(url: str, query, history, top_k=10, candidates=None):
    """One request to `search`, or `rerank` when `candidates` are given; history None
    leaves HISTORY out. (ids, scores, titles) of its one row."""
    values = {
        contract.QUERY: np.array([[query]], dtype=object),
        contract.TOP_K: np.array([[top_k]], dtype=np.int32),
    }
    if history is not None:
        values[contract.HISTORY] = np.asarray(history, dtype=np.int64).reshape(1, -1)
    if candidates is not None:
        values[contract.CANDIDATE_IDS] = np.asarray(candidates, dtype=np.int64).reshape(1, -1)
    model = contract.ENSEMBLE_MODEL if candidates is None else contract.RERANK_MODEL
    result = send(url, model, values)
    return tuple(result.as_numpy(t.name)[0] for t in contract.ENSEMBLE_OUTPUTS)


@pytest.fixture(scope="module")
def workload(tiny_artifacts):
    data = datasets.load(tiny_artifacts)
    requests = make_workload(data, requests=20, seed=3)
    assert any(r["history"] for r in requests)
    # Cold-start shoppers too: the same queries with no history at all.
    return requests + [{**r, "history": []} for r in requests[:4]]


def assert_same_answer(served, reference):
    ids, scores, titles = served
    assert_same_ranking(ids, scores, reference.product_ids, reference.scores)
    title_of = dict(zip(reference.product_ids.tolist(), reference.titles, strict=True))
    assert all(
        title_of.get(int(p), t.decode()) == t.decode() for p, t in zip(ids, titles, strict=True)
    )


def test_topk_matches_in_process_pipeline(ensemble_server, in_process, workload):
    for request in workload[:12]:
        served = infer(
            ensemble_server.grpc_url, request["query"], request["history"], request["top_k"]
        )
        reference = in_process.search(request["query"], request["history"], request["top_k"])
        assert len(served[0]) == request["top_k"]
        assert_same_answer(served, reference)


def batched_executions(url: str) -> dict[str, int]:
    """Per model, how many executions so far ran more than one request (Triton statistics)."""
    client = grpcclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics(as_json=True)["model_stats"]
    finally:
        client.close()
    return {
        m["name"]: sum(
            int(b["compute_infer"].get("count", 0))
            for b in m.get("batch_stats", [])
            if int(b["batch_size"]) > 1
        )
        for m in stats
    }


def burst(url: str, requests: list[dict], top_k: int = 10) -> list:
    """All `requests` in flight at once (gRPC async), so the dynamic batcher can batch them."""
    client = grpcclient.InferenceServerClient(url)
    done: dict[int, object] = {}
    answered = threading.Semaphore(0)

    def finish(i: int, result, error) -> None:
        done[i] = error or result
        answered.release()

    try:
        for i, r in enumerate(requests):
            values = {
                contract.QUERY: np.array([[r["query"]]], dtype=object),
                contract.HISTORY: np.asarray(r["history"], dtype=np.int64).reshape(1, -1),
                contract.TOP_K: np.array([[top_k]], dtype=np.int32),
            }
            inputs = []
            for spec, value in values.items():
                inp = grpcclient.InferInput(spec.name, list(value.shape), spec.client_dtype)
                inp.set_data_from_numpy(value)
                inputs.append(inp)
            # Each request's deadline ends it with an error if it is never answered, so
            # every callback runs and the wait below ends.
            client.async_infer(
                contract.ENSEMBLE_MODEL,
                inputs,
                callback=lambda result, error, i=i: finish(i, result, error),
                client_timeout=60,
            )
        for _ in requests:
            answered.acquire()
    finally:
        client.close()
    assert len(done) == len(requests), "requests lost"
    answers = []
    for i in range(len(requests)):
        if isinstance(done[i], Exception):
            raise done[i]
        answers.append(tuple(done[i].as_numpy(t.name)[0] for t in contract.ENSEMBLE_OUTPUTS))
    return answers


def test_concurrent_requests_are_batched_correctly(ensemble_server, in_process, workload):
    """Requests of different query and history lengths really share dynamic batches
    (Triton's own statistics say so), and each still gets its own right answer."""
    url = ensemble_server.grpc_url
    before = batched_executions(url)
    models = (contract.SEARCHER_MODEL,)
    requests = workload * 3
    for _ in range(5):  # a burst nearly always batches; a very idle scheduler may need two
        served = burst(url, requests)
        for request, answer in zip(requests, served, strict=True):
            reference = in_process.search(request["query"], request["history"], 10)
            assert_same_answer(answer, reference)
        after = batched_executions(url)
        if all(after[m] > before.get(m, 0) for m in models):
            break
    assert all(after[m] > before.get(m, 0) for m in models), (before, after)


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
    assert_same_answer(served, in_process.search(huge, [], 5))
    client = grpcclient.InferenceServerClient(ensemble_server.grpc_url)
    assert client.is_server_live() and client.is_model_ready(contract.ENSEMBLE_MODEL)
    client.close()


def test_history_may_be_left_out(ensemble_server, in_process):
    served = infer(ensemble_server.grpc_url, "red sofa", None, 5)
    assert_same_answer(served, in_process.search("red sofa", [], 5))


def test_rerank_ranks_only_the_given_candidates(ensemble_server, in_process, workload):
    request = next(r for r in workload if len(r["history"]) >= 2)
    found = in_process.search(request["query"], [], 30).product_ids
    candidates = [int(p) for p in found[::3]]  # every third: the order must be re-made
    served = infer(ensemble_server.grpc_url, request["query"], request["history"], 5, candidates)
    reference = in_process.rerank(request["query"], candidates, request["history"], 5)
    assert set(served[0].tolist()) <= set(candidates) and len(served[0]) == 5
    assert_same_answer(served, reference)
    # Unknown and repeated ids are ignored: the same answer as the clean list.
    noisy = [-1, candidates[0], 10**15, *candidates, candidates[2]]
    again = infer(ensemble_server.grpc_url, request["query"], request["history"], 5, noisy)
    np.testing.assert_array_equal(again[0], served[0])
    # Fewer candidates than TOP_K: all of them, ranked.
    few = infer(ensemble_server.grpc_url, request["query"], [], 10, candidates[:3])
    assert sorted(few[0].tolist()) == sorted(candidates[:3])


def test_rerank_of_nothing_is_an_empty_answer(ensemble_server):
    for candidates in ([], [-7, 10**15]):
        ids, scores, titles = infer(ensemble_server.grpc_url, "red sofa", [], 5, candidates)
        assert len(ids) == len(scores) == len(titles) == 0


def test_too_many_candidates_is_invalid_argument(ensemble_server):
    too_many = np.arange(contract.MAX_CANDIDATES + 1) + 100_000
    with pytest.raises(InferenceServerException, match=contract.CANDIDATE_IDS.name) as err:
        infer(ensemble_server.grpc_url, "red sofa", [], 5, too_many)
    assert "INVALID_ARGUMENT" in str(err.value.status())
    assert infer(ensemble_server.grpc_url, "red sofa", [], 5)[0].size == 5  # still serving


@pytest.mark.slow  # a server of its own, which waits for the load to fail
@pytest.mark.parametrize("file", [contract.DENSE_INDEX_FILE, contract.LEXICAL_INDEX_FILE])
def test_a_corrupt_index_fails_the_load_naming_the_file(tiny_artifacts, tmp_path, file):
    import shutil

    from shoprank.ops.tritonserver import TritonServerError, running_server

    repository = tmp_path / "repository"
    shutil.copytree(tiny_artifacts.repository("cpu"), repository)
    (repository / contract.SEARCHER_MODEL / "1" / file).write_bytes(b"not an index")
    with (
        pytest.raises(TritonServerError, match=re.escape(file)),
        running_server(repository, log_path=tmp_path / "triton.log", wait_s=90),
    ):
        pass


def batched(url: str, model: str, rows: list[dict]):
    """One request holding len(rows) rows, ragged lists padded with PADDING_ID."""

    def padded(key: str) -> np.ndarray:
        width = max(1, *(len(r.get(key, [])) for r in rows))
        out = np.full((len(rows), width), contract.PADDING_ID, np.int64)
        for i, r in enumerate(rows):
            out[i, : len(r.get(key, []))] = r.get(key, [])
        return out

    values = {
        contract.QUERY: np.array([[r["query"]] for r in rows], dtype=object),
        contract.HISTORY: padded("history"),
        contract.TOP_K: np.array([[r["top_k"]] for r in rows], dtype=np.int32),
    }
    if model == contract.RERANK_MODEL:
        values[contract.CANDIDATE_IDS] = padded("candidates")
    result = send(url, model, values)
    return [result.as_numpy(t.name) for t in contract.ENSEMBLE_OUTPUTS]


@pytest.mark.parametrize("model", [contract.ENSEMBLE_MODEL, contract.RERANK_MODEL])
def test_a_batched_request_answers_every_row(ensemble_server, in_process, workload, model):
    """Rows of one request with their own query length, history, top-k (and candidates)."""
    base = [r for r in workload if r["history"]][:2]
    rows = [
        {"query": base[0]["query"], "history": base[0]["history"], "top_k": 10},
        {"query": "lamp", "history": [], "top_k": 3},
        {
            "query": base[1]["query"] + " with extra words",
            "history": base[1]["history"][:1],
            "top_k": 5,
        },
    ]
    for r in rows:
        r["candidates"] = [int(p) for p in in_process.search(r["query"], [], 12).product_ids[1::2]]
    ids, scores, titles = batched(ensemble_server.grpc_url, model, rows)
    wants = [
        in_process.rerank(r["query"], r["candidates"], r["history"], r["top_k"])
        if model == contract.RERANK_MODEL
        else in_process.search(r["query"], r["history"], r["top_k"])
        for r in rows
    ]
    # Padded to the longest row (re-ranking 6 candidates answers at most 6).
    assert ids.shape == (3, max(len(w.product_ids) for w in wants))
    assert len({len(w.product_ids) for w in wants}) > 1  # rows of different lengths
    for i, want in enumerate(wants):
        k = len(want.product_ids)
        assert (ids[i, k:] == contract.PADDING_ID).all() and (titles[i, k:] == b"").all()
        assert_same_answer((ids[i, :k], scores[i, :k], titles[i, :k]), want)


def test_one_bad_row_refuses_the_whole_request_naming_it(ensemble_server):
    rows = [
        {"query": "red sofa", "history": [], "top_k": 5},
        {"query": "   ", "history": [], "top_k": 5},
    ]
    with pytest.raises(InferenceServerException, match=r"empty.*row 1") as err:
        batched(ensemble_server.grpc_url, contract.ENSEMBLE_MODEL, rows)
    assert "INVALID_ARGUMENT" in str(err.value.status())


def _http_infer(server, body, model=contract.ENSEMBLE_MODEL):
    import requests

    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    url = f"http://{server.http_url}/v2/models/{model}/infer"
    return requests.post(url, data=data, headers={"Content-Type": "application/json"}, timeout=30)


def _json_input(spec, shape, data, datatype=None):
    return {
        "name": spec.name,
        "shape": shape,
        "datatype": datatype or spec.client_dtype,
        "data": data,
    }


@pytest.mark.parametrize(
    "body, status, words",
    [
        # Triton 2.51 answers JSON it cannot parse with 500, not 400 (its choice, noted
        # in the README); requests it can parse but refuses are a 400.
        (b'{"inputs": [ {"name": "QUERY"', 500, "failed to parse"),
        ({"inputs": [_json_input(contract.TOP_K, [1, 1], [3])]}, 400, "QUERY"),
        (
            {
                "inputs": [
                    _json_input(contract.QUERY, [1, 1], [5], "INT64"),
                    _json_input(contract.TOP_K, [1, 1], [3]),
                ]
            },
            400,
            "data-type is 'INT64', but model 'search' expects 'BYTES'",
        ),
        (
            {
                "inputs": [
                    _json_input(contract.QUERY, [1, 1], ["sofa"]),
                    _json_input(contract.TOP_K, [1, 1], ["three"]),
                ]
            },
            500,
            "unable to parse 'data'",
        ),
        (
            {
                "inputs": [
                    _json_input(contract.QUERY, [1, 1], ["   "]),
                    _json_input(contract.TOP_K, [1, 1], [3]),
                ]
            },
            400,
            "QUERY is empty",
        ),
    ],
    ids=["truncated-json", "missing-query", "wrong-dtype", "non-numeric-top-k", "blank-query"],
)
def test_malformed_http_json_is_refused_and_the_server_keeps_serving(
    ensemble_server, body, status, words
):
    answer = _http_infer(ensemble_server, body)
    assert answer.status_code == status, answer.text
    assert words.lower() in answer.json()["error"].lower()
    good = {
        "inputs": [
            _json_input(contract.QUERY, [1, 1], ["red sofa"]),
            _json_input(contract.HISTORY, [1, 2], [100005, 100002]),
            _json_input(contract.TOP_K, [1, 1], [3]),
        ]
    }
    served = _http_infer(ensemble_server, good)
    assert served.status_code == 200, served.text
    outputs = {o["name"]: o for o in served.json()["outputs"]}
    assert outputs[contract.PRODUCT_IDS.name]["shape"] == [1, 3]


def recommend_rows(url: str, histories, top_ks, leave_out_history: bool = False):
    """One raw gRPC request to `recommend` with a row per history (padded with PADDING_ID)."""
    width = max([1, *(len(h) for h in histories)])
    padded = np.full((len(histories), width), contract.PADDING_ID, np.int64)
    for i, h in enumerate(histories):
        padded[i, : len(h)] = h
    values = {contract.TOP_K: np.array(top_ks, np.int32).reshape(-1, 1)}
    if not leave_out_history:
        values[contract.HISTORY] = padded
    result = send(url, contract.RECOMMEND_MODEL, values)
    return [result.as_numpy(t.name) for t in contract.ENSEMBLE_OUTPUTS]


def test_recommend_matches_in_process_batched_and_cold(ensemble_server, in_process, workload):
    histories = [r["history"] for r in workload if len(r["history"]) >= 2][:2]
    rows = [histories[0], [], [*histories[1][:1], 10**15]]  # unknown ids are ignored
    ids, scores, titles = recommend_rows(ensemble_server.grpc_url, rows, [5, 3, 4])
    assert ids.shape == (3, 5)
    for i, (history, k) in enumerate(zip(rows, [5, 3, 4], strict=True)):
        want = in_process.recommend(history, k)
        assert_same_answer((ids[i, :k], scores[i, :k], titles[i, :k]), want)
        assert not set(ids[i, :k].tolist()) & set(history)  # the history is left out
        assert (ids[i, k:] == contract.PADDING_ID).all()
    # HISTORY left out altogether: cold start, the same as an empty one.
    cold = recommend_rows(ensemble_server.grpc_url, [[]], [3], leave_out_history=True)
    np.testing.assert_array_equal(cold[0][0], ids[1, :3])


def test_recommend_bad_top_k_is_invalid_argument(ensemble_server):
    with pytest.raises(InferenceServerException, match=contract.TOP_K.name) as err:
        recommend_rows(ensemble_server.grpc_url, [[]], [0])
    assert "INVALID_ARGUMENT" in str(err.value.status())
    assert recommend_rows(ensemble_server.grpc_url, [[]], [2])[0].shape == (1, 2)


def filtered_infer(url: str, model: str, values: dict):
    """(ids, scores, titles) of a one-row request."""
    result = send(url, model, values)
    return [result.as_numpy(t.name)[0] for t in contract.ENSEMBLE_OUTPUTS]


@pytest.fixture(scope="module")
def rare_category(tiny_artifacts):
    """The smallest category path with 3+ products (about 1% of the tiny catalog)."""
    catalog = datasets.load(tiny_artifacts).catalog
    counts = catalog["category"].value_counts()
    path = counts[counts >= 3].sort_values(kind="stable").index[0]
    members = set(catalog.loc[catalog["category"] == path, "product_id"].tolist())
    return path, members, counts[path] / len(catalog)


def test_a_rare_filter_still_returns_top_k(ensemble_server, in_process, rare_category):
    from shoprank.core.filters import Filters

    path, members, share = rare_category
    assert share <= 0.02
    k = min(len(members), 10)
    url = ensemble_server.grpc_url
    query = "garden hose"
    values = {
        contract.QUERY: np.array([[query]], dtype=object),
        contract.TOP_K: np.array([[k]], np.int32),
        contract.CATEGORY_PREFIX: np.array([[path.lower().encode()]], dtype=object),
    }
    ids, scores, titles = filtered_infer(url, contract.ENSEMBLE_MODEL, values)
    assert len(ids) == k and set(ids.tolist()) <= members
    assert_same_answer((ids, scores, titles), in_process.search(query, [], k, Filters(path)))
    # recommend: the same filter; then the best one excluded and in stock only
    del values[contract.QUERY]
    ids, _, _ = filtered_infer(url, contract.RECOMMEND_MODEL, values)
    assert len(ids) == k and set(ids.tolist()) <= members
    values[contract.EXCLUDE_IDS] = ids[:1].reshape(1, 1)
    values[contract.IN_STOCK_ONLY] = np.array([[True]])
    again, _, _ = filtered_infer(url, contract.RECOMMEND_MODEL, values)
    assert ids[0] not in again and set(again.tolist()) <= members
    excluded = in_process.recommender.catalog.known_rows(ids[:1])
    want = in_process.recommend([], k, Filters(path, exclude_rows=excluded, in_stock_only=True))
    np.testing.assert_array_equal(again, want.product_ids)


def test_filtered_search_widens_when_retrieval_falls_short(in_process, rare_category):
    from shoprank.core.filters import Filters

    path, members, _ = rare_category
    config = in_process.ranker.config
    saved = (config.dense_k, config.lexical_k)
    config.dense_k, config.lexical_k = 2, 2  # retrieval alone cannot find k of them
    try:
        found = in_process.search("garden hose", [], len(members), Filters(path))
    finally:
        config.dense_k, config.lexical_k = saved
    assert set(found.product_ids.tolist()) == members


def test_rerank_filters_only_the_callers_candidates(ensemble_server, in_process):
    found = in_process.search("sofa", [], 12).product_ids
    values = {
        contract.QUERY: np.array([["sofa"]], dtype=object),
        contract.TOP_K: np.array([[10]], np.int32),
        contract.CANDIDATE_IDS: found.reshape(1, -1),
        contract.EXCLUDE_IDS: found[:3].reshape(1, -1),
    }
    ids, _, _ = filtered_infer(ensemble_server.grpc_url, contract.RERANK_MODEL, values)
    assert set(ids.tolist()) == set(found[3:].tolist())  # nothing from outside the list
    values[contract.PRICE_MIN] = np.array([[5.0]], np.float32)
    values[contract.PRICE_MAX] = np.array([[1.0]], np.float32)
    with pytest.raises(InferenceServerException, match="price range is empty"):
        filtered_infer(ensemble_server.grpc_url, contract.RERANK_MODEL, values)


def explained(url: str, model: str, values: dict, explain: bool = True):
    """(ids, scores, explanations) of a one-row request, EXPLAIN set when `explain`."""
    if explain:
        values = {**values, contract.EXPLAIN: np.array([[True]])}
    result = send(url, model, values, contract.ALL_OUTPUTS)
    return tuple(
        result.as_numpy(s.name)[0]
        for s in (contract.PRODUCT_IDS, contract.SCORES, contract.EXPLANATION)
    )


def test_explanations_add_up_to_the_scores(ensemble_server, in_process, workload):
    url = ensemble_server.grpc_url
    request = next(r for r in workload if len(r["history"]) >= 2)
    values = {
        contract.QUERY: np.array([[request["query"]]], dtype=object),
        contract.HISTORY: np.asarray(request["history"], np.int64).reshape(1, -1),
        contract.TOP_K: np.array([[8]], np.int32),
    }
    ids, scores, notes = explained(url, contract.ENSEMBLE_MODEL, values)
    want = in_process.search(request["query"], request["history"], 8, explain=True)
    history = set(request["history"])
    for score, note, ref in zip(scores, notes, want.explanations, strict=True):
        got = json.loads(note)
        assert sum(got["parts"].values()) == pytest.approx(float(score), rel=1e-4, abs=1e-3)
        assert got["parts"].keys() == ref["parts"].keys()
        similar = [h["product_id"] for h in got["similar_history"]]
        assert similar and set(similar) <= history  # the closest of the shopper's history
        assert len(similar) == len(set(similar)) == min(3, len(history))  # each once
    # the sequential shopper vector is served in search too (the tiny training forces it on)
    assert any("sequential" in json.loads(note)["parts"] for note in notes)
    # not asked: nothing computed, the same ranking
    plain = explained(url, contract.ENSEMBLE_MODEL, values, explain=False)
    np.testing.assert_array_equal(plain[0], ids)
    assert (plain[2] == b"").all()
    # recommend: the served blend's parts (popularity only breaking ties) add up to the score
    del values[contract.QUERY]
    ids, scores, notes = explained(url, contract.RECOMMEND_MODEL, values)
    for score, note in zip(scores, notes, strict=True):
        got = json.loads(note)
        assert sum(got["parts"].values()) == pytest.approx(float(score), rel=1e-5, abs=1e-5)
        assert set(got["parts"]) - {"popularity"} <= {"sequential", "cooccurrence"}
        assert abs(got["parts"]["popularity"]) <= 1e-6


def test_cpu_model_stubs_load_no_torch(ensemble_server):
    """The CPU models run on numpy, ONNX Runtime, faiss and tantivy: torch (its libraries
    mapped into every stub that imports it, and seconds of start-up at each load, deploy
    and stub restart) stays out of their processes. Read from each live stub's memory maps."""
    from shoprank.ops.tritonserver import model_stubs

    maps = {
        model: [m.path for m in proc.memory_maps()]
        for model, proc in model_stubs(ensemble_server.process.pid)
    }
    models = {contract.SEARCHER_MODEL, contract.RECOMMENDER_MODEL}
    assert models <= set(maps), sorted(maps)
    assert any("onnxruntime" in path for path in maps[contract.SEARCHER_MODEL])  # maps are read
    for model, paths in maps.items():
        assert not [p for p in paths if "/torch/" in p], f"{model} stub maps torch"


def test_a_repository_built_by_another_version_is_refused_at_load(tiny_artifacts, tmp_path):
    """A model whose model.py is not this package's own fails its load, naming the fix,
    rather than serving (or hanging on its warm-up) with shared code it was not built for."""
    import shutil

    from shoprank.ops.tritonserver import TritonServerError, running_server

    repo = tmp_path / "repository"
    shutil.copytree(tiny_artifacts.repository("cpu"), repo)
    model_py = repo / contract.SEARCHER_MODEL / "1" / "model.py"
    model_py.write_text(model_py.read_text() + "\n# built by another version\n")
    with (
        pytest.raises(TritonServerError, match="rebuild it"),
        running_server(repo, wait_s=60, attempts=1),
    ):
        pass
