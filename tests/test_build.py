"""Generated Triton configs: names, dtypes and wiring come from the contract for both targets."""

import json

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from shoprank import contract
from shoprank.model_repository.build import ServingConfig, build

MODELS = (
    contract.TOKENIZER_MODEL,
    contract.ENCODER_MODEL,
    contract.RANKER_MODEL,
    contract.ENSEMBLE_MODEL,
)


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
    ins, outs = _io(load_config(repo, contract.ENSEMBLE_MODEL))
    assert ins == {s.name: (s.triton_dtype, s.dims) for s in contract.ENSEMBLE_INPUTS}
    assert outs == {s.name: (s.triton_dtype, s.dims) for s in contract.ENSEMBLE_OUTPUTS}
    ranker_in, _ = _io(load_config(repo, contract.RANKER_MODEL))
    assert ranker_in[contract.QUERY_EMBEDDING.name] == ("TYPE_FP32", (dim,))
    for name in MODELS[:3]:
        config = load_config(repo, name)
        assert config.max_batch_size == contract.MAX_BATCH_SIZE
        assert config.HasField("dynamic_batching")
        assert len(config.model_warmup) == 1
        assert (repo / name / "1").is_dir()


def test_ensemble_wiring_is_complete(tiny_artifacts):
    """Every step input is an ensemble input or an earlier step's output."""
    repo = tiny_artifacts.repository("cpu")
    ensemble = load_config(repo, contract.ENSEMBLE_MODEL)
    available = {i.name for i in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        model_inputs = {i.name for i in load_config(repo, step.model_name).input}
        assert set(step.input_map) == model_inputs
        assert set(step.input_map.values()) <= available
        available |= set(step.output_map.values())
    assert {o.name for o in ensemble.output} <= available


def test_cpu_models_are_python_backend_with_ragged_inputs(tiny_artifacts):
    repo = tiny_artifacts.repository("cpu")
    encoder = load_config(repo, contract.ENCODER_MODEL)
    assert encoder.backend == "python"
    assert all(i.allow_ragged_batch for i in encoder.input)
    assert (repo / contract.ENCODER_MODEL / "1" / "model.py").exists()


def test_gpu_encoder_is_native(gpu_repo):
    encoder = load_config(gpu_repo, contract.ENCODER_MODEL)
    # No TensorRT engine can be built without a GPU, so the native ONNX Runtime backend.
    assert encoder.backend == "onnxruntime"
    assert encoder.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert not any(i.allow_ragged_batch for i in encoder.input)  # native backends need equal shapes
    assert (gpu_repo / contract.ENCODER_MODEL / "1" / "model.onnx").exists()


def test_warmup_files_match_their_declared_shapes(tiny_artifacts):
    repo = tiny_artifacts.repository("cpu")
    for name in MODELS[1:3]:
        config = load_config(repo, name)
        for key, inp in config.model_warmup[0].inputs.items():
            payload = (repo / name / "warmup" / inp.input_data_file).read_bytes()
            spec = next(
                s for s in (*contract.RANKER_INPUTS, *contract.ENCODER_INPUTS) if s.name == key
            )
            assert len(payload) == int(np.prod(inp.dims)) * np.dtype(spec.numpy_dtype).itemsize
