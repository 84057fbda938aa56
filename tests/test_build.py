"""Generated Triton configs: names, dtypes and wiring come from the contract for both targets."""

import json

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from shoprank import contract
from shoprank.model_repository.build import ServingConfig, build, target_models

ENSEMBLES = {
    contract.ENSEMBLE_MODEL: contract.ENSEMBLE_INPUTS,
    contract.RERANK_MODEL: contract.RERANK_INPUTS,
    contract.RECOMMEND_MODEL: contract.RECOMMEND_INPUTS,
}


def load_config(repo, name) -> mc.ModelConfig:
    return text_format.Parse((repo / name / "config.pbtxt").read_text(), mc.ModelConfig())


@pytest.fixture(scope="module")
def gpu_repo(tiny_artifacts):
    return build(tiny_artifacts, ServingConfig(target="gpu"))


def _io(config):
    return (
        {i.name: (mc.DataType.Name(i.data_type), tuple(i.dims)) for i in config.input},
        {o.name: (mc.DataType.Name(o.data_type), tuple(o.dims)) for o in config.output},
    )


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_configs_follow_the_contract(tiny_artifacts, gpu_repo, target):
    repo = tiny_artifacts.repository(target)
    dim = json.loads((repo / "BUILD.json").read_text())["embedding_dim"]
    for ensemble, inputs in ENSEMBLES.items():
        ins, outs = _io(load_config(repo, ensemble))
        assert ins == {s.name: (s.triton_dtype, s.dims) for s in inputs}
        assert outs == {s.name: (s.triton_dtype, s.dims) for s in contract.ALL_OUTPUTS}
        optional = {i.name for i in load_config(repo, ensemble).input if i.optional}
        # history, filters and EXPLAIN; QUERY and TOP_K are validated by the models
        # (contract.MODEL_VALIDATED_INPUTS); never CANDIDATE_IDS (rerank's point)
        validated = {s.name for s in contract.MODEL_VALIDATED_INPUTS if s in inputs}
        assert optional == {s.name for s in contract.OPTIONAL_INPUTS} | validated
        assert contract.CANDIDATE_IDS.name not in optional
    if target == "gpu":  # the encoder's output feeds the ranker
        ranker_in, _ = _io(load_config(repo, contract.RANKER_MODEL))
        assert ranker_in[contract.QUERY_EMBEDDING.name] == ("TYPE_FP32", (dim,))
    for name in target_models(target):
        config = load_config(repo, name)
        assert config.max_batch_size == contract.MAX_BATCH_SIZE
        assert config.HasField("dynamic_batching")
        assert len(config.model_warmup) == 1
        assert (repo / name / "1").is_dir()


@pytest.mark.parametrize("target", ["cpu", "gpu"])
@pytest.mark.parametrize("name", list(ENSEMBLES))
def test_ensemble_wiring_is_complete(tiny_artifacts, gpu_repo, name, target):
    """Every step input is an ensemble input or an earlier step's output, and every
    required model input is fed."""
    repo = tiny_artifacts.repository(target)
    ensemble = load_config(repo, name)
    available = {i.name for i in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        model = load_config(repo, step.model_name)
        required = {i.name for i in model.input if not i.optional}
        assert required <= set(step.input_map) <= {i.name for i in model.input}
        assert set(step.input_map.values()) <= available
        available |= set(step.output_map.values())
    assert {o.name for o in ensemble.output} <= available
    steps = {s.model_name: s for s in ensemble.ensemble_scheduling.step}
    if name == contract.RECOMMEND_MODEL:
        assert list(steps) == [contract.RECOMMENDER_MODEL]
        return
    assert list(steps) == list(target_models(target))  # cpu: one step, the searcher
    ranker = steps[target_models(target)[-1]]
    assert (contract.CANDIDATE_IDS.name in ranker.input_map) == (name == contract.RERANK_MODEL)
    # every filter and EXPLAIN reach the ranker
    assert {s.name for s in (*contract.FILTER_INPUTS, contract.EXPLAIN)} <= set(ranker.input_map)
    if target == "cpu":
        return
    # the admission ticket goes from the first step to the last
    tokenizer = steps[contract.TOKENIZER_MODEL]
    ticket = contract.ADMISSION_TICKET.name
    assert ranker.input_map[ticket] == tokenizer.output_map[ticket]


def test_searcher_and_ranker_versions_hold_every_file_they_load(tiny_artifacts, gpu_repo):
    from shoprank.core.pipeline import SearchPipeline
    from shoprank.core.ranking import CandidateRanker

    # Each raises, naming the file, if one is missing.
    searcher = SearchPipeline.load(tiny_artifacts.repository("cpu") / contract.SEARCHER_MODEL / "1")
    ranker = CandidateRanker.load(gpu_repo / contract.RANKER_MODEL / "1")
    for r in (searcher.ranker, ranker):
        assert r.dense.size == len(r.catalog.product_ids) == len(r.tables)
        assert r.lexical.num_docs == r.dense.size
    assert searcher.encode(["red sofa"]).shape == (1, ranker.dense.dim)


def test_cpu_searcher_is_one_python_backend_model(tiny_artifacts):
    repo = tiny_artifacts.repository("cpu")
    searcher = load_config(repo, contract.SEARCHER_MODEL)
    assert searcher.backend == "python"
    ragged = {s.name for s in contract.SEARCHER_INPUTS if s.ragged}
    assert ragged and {i.name for i in searcher.input if i.allow_ragged_batch} == ragged
    assert (repo / contract.SEARCHER_MODEL / "1" / "model.py").exists()
    for other in target_models("gpu"):
        assert not (repo / other).exists()


def test_a_build_removes_the_models_of_another_target(tiny_artifacts, tmp_path):
    """Triton loads every model folder: a CPU build over a GPU repository leaves none of the
    GPU target's models behind, and the other way round."""
    repo = tmp_path / "repo"
    build(tiny_artifacts, ServingConfig(target="gpu"), repo=repo)
    assert all((repo / m).is_dir() for m in target_models("gpu"))
    build(tiny_artifacts, ServingConfig(target="cpu"), repo=repo)
    assert not any((repo / m).exists() for m in target_models("gpu"))
    build(tiny_artifacts, ServingConfig(target="gpu"), repo=repo)
    assert not (repo / contract.SEARCHER_MODEL).exists()


def test_gpu_encoder_is_native(gpu_repo):
    encoder = load_config(gpu_repo, contract.ENCODER_MODEL)
    # No TensorRT engine can be built without a GPU, so the native ONNX Runtime backend.
    assert encoder.backend == "onnxruntime"
    assert encoder.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert not any(i.allow_ragged_batch for i in encoder.input)  # native backends need equal shapes
    assert (gpu_repo / contract.ENCODER_MODEL / "1" / "model.onnx").exists()


def test_warmup_files_match_their_declared_shapes(tiny_artifacts):
    repo = tiny_artifacts.repository("cpu")
    for name in (contract.SEARCHER_MODEL, contract.RECOMMENDER_MODEL):
        config = load_config(repo, name)
        for key, inp in config.model_warmup[0].inputs.items():
            payload = (repo / name / "warmup" / inp.input_data_file).read_bytes()
            spec = next(s for s in contract.SEARCHER_INPUTS if s.name == key)
            if spec.triton_dtype == "TYPE_STRING":  # 4-byte little-endian length, then bytes
                assert int.from_bytes(payload[:4], "little") == len(payload) - 4
            else:
                size = int(np.prod(inp.dims)) * np.dtype(spec.numpy_dtype).itemsize
                assert len(payload) == size


def test_queue_policy_is_opt_in(tiny_artifacts, tmp_path):
    """No queue policy by default (it stalls Triton 2.51's dynamic batcher); on request, every
    model refuses beyond the limits it is given."""
    repo = tiny_artifacts.repository("cpu")
    for name in (contract.SEARCHER_MODEL, contract.RECOMMENDER_MODEL):
        assert not load_config(repo, name).dynamic_batching.HasField("default_queue_policy")
    limited = build(
        tiny_artifacts,
        ServingConfig(max_queue_size=8, queue_timeout_us=50_000),
        encoder_onnx=tiny_artifacts.encoder_onnx,
        repo=tmp_path / "limited",
    )
    policy = load_config(limited, contract.SEARCHER_MODEL).dynamic_batching.default_queue_policy
    assert (policy.max_queue_size, policy.default_timeout_microseconds) == (8, 50_000)
    assert policy.timeout_action == mc.ModelQueuePolicy.REJECT
    # admission (the in-flight limit) is on by default; the fixture's repository turned it off
    params = load_config(limited, contract.SEARCHER_MODEL).parameters
    assert params["max_in_flight"].string_value == str(ServingConfig().max_in_flight) != "0"
    assert params["shed_in_flight"].string_value == str(ServingConfig().shed_in_flight) != "0"
    tiny_params = load_config(repo, contract.SEARCHER_MODEL).parameters
    assert tiny_params["max_in_flight"].string_value == "0"
    assert tiny_params["shed_in_flight"].string_value == "0"  # no lower limit without a limit
    # a deploy builds its next version with the live repository's settings
    from shoprank.model_repository.deploy import live_serving

    again = live_serving(limited, 2)
    assert (again.version, again.max_queue_size, again.queue_timeout_us) == (2, 8, 50_000)
