"""TensorRT: profiles, availability, clean skips without a GPU, GPU repository config for plans.

Engines are only built where a GPU and TensorRT exist (`test_builds_real_engines_on_a_gpu`);
everywhere else the build is skipped with a recorded reason, and the repository config
for a plan is generated from a stand-in file (config generation never reads the plan).
"""

import ctypes
import importlib.util
import json
import logging
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from shoprank import contract
from shoprank.configargs import parse_config
from shoprank.conversion import tensorrt
from shoprank.conversion.convert import ConversionConfig
from shoprank.data import artifacts
from shoprank.data.artifacts import OptimizationProfile
from shoprank.model_repository.build import ServingConfig, build, encoder_gpu_config

TRT_AVAILABLE, TRT_REASON = tensorrt.available()


def test_default_profile_fits_served_queries():
    profile = tensorrt.profile_from_config(max_batch=64, seq_min=1, seq_opt=8, seq_max=32)
    assert profile == OptimizationProfile()
    shapes = profile.shapes()
    assert set(shapes) == {contract.ONNX_INPUT_IDS, contract.ONNX_ATTENTION_MASK}
    for lo, opt, hi in shapes.values():
        assert all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True))
        assert (lo[0], opt[0], hi[0]) == (1, 8, 64)  # batch
        assert (lo[1], opt[1], hi[1]) == (1, 8, 32)  # tokens: any query, tuned at a typical one
    assert profile.max_batch <= contract.MAX_BATCH_SIZE
    assert profile.min_seq <= contract.SEQUENCE_BUCKET
    assert profile.max_seq >= contract.MAX_QUERY_TOKENS


def test_profile_opt_batch_is_capped_by_max_batch():
    profile = tensorrt.profile_from_config(max_batch=4, seq_min=1, seq_opt=16, seq_max=32)
    assert (profile.min_batch, profile.opt_batch, profile.max_batch) == (1, 4, 4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_batch": 4, "opt_batch": 8}, "batch"),
        ({"max_batch": 8, "min_batch": 0}, "batch"),
        ({"seq_opt": 40}, "sequence"),
        ({"seq_min": 16, "seq_opt": 16}, "shortest"),
        ({"seq_opt": 16, "seq_max": 24}, "longest"),
    ],
)
def test_profile_rejects_bounds_that_cannot_serve(kwargs, message):
    args = {"max_batch": 64, "seq_min": 1, "seq_opt": 16, "seq_max": 32, **kwargs}
    with pytest.raises(ValueError, match=message):
        tensorrt.profile_from_config(**args)


def test_conversion_config_knobs_make_the_profile():
    assert ConversionConfig().trt_profile() == OptimizationProfile()
    config = parse_config(
        ConversionConfig, ["--trt-max-batch", "16", "--trt-opt-batch", "4", "--trt-seq-opt", "24"]
    )
    profile = config.trt_profile()
    assert (profile.opt_batch, profile.max_batch, profile.opt_seq) == (4, 16, 24)


def test_available_says_why_not_without_gpu_or_tensorrt(monkeypatch):
    def no_driver(name, *args, **kwargs):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(tensorrt.ctypes, "CDLL", no_driver)
    monkeypatch.setattr(tensorrt.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    ok, reason = tensorrt.available()
    assert not ok
    assert reason.startswith("no GPU (")
    assert "libcuda" in reason and "tensorrt package is not installed" in reason


def test_available_agrees_with_what_this_host_has():
    """Checked against the host itself: the package importable, the driver loadable."""
    has_tensorrt = importlib.util.find_spec("tensorrt") is not None
    try:
        ctypes.CDLL("libcuda.so.1")
        has_driver = True
    except OSError:
        has_driver = False
    ok, reason = tensorrt.available()
    assert reason
    if ok:
        assert has_tensorrt and has_driver, reason
    if not has_tensorrt:
        assert not ok and "tensorrt package is not installed" in reason
    if not has_driver:
        assert not ok and "libcuda" in reason


def test_build_all_skips_cleanly_and_records_why(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(tensorrt, "available", lambda: (False, "no GPU (test)"))
    paths = contract.ArtifactPaths(tmp_path)
    with caplog.at_level(logging.WARNING, logger="shoprank.conversion.tensorrt"):
        report = tensorrt.build_all(paths, tensorrt.TensorRTConfig()).to_json()
    assert report["available"] is False
    assert report["reason"] == "no GPU (test)"
    assert report["engines"] == {}
    assert report["profile"]["max_batch"] == contract.MAX_BATCH_SIZE
    assert "TensorRT engines skipped: no GPU (test)" in caplog.text
    assert not list(tmp_path.rglob("*.plan"))


@pytest.mark.skipif(TRT_AVAILABLE, reason="engines are built on this host")
def test_conversion_report_records_the_skip(tiny_artifacts):
    report = json.loads(tiny_artifacts.conversion_report.read_text())
    trt = report["tensorrt"]
    assert trt["available"] is False and trt["reason"] == TRT_REASON
    assert trt["selected_plan"] is None and trt["engines"] == {}
    assert trt["profile"] == asdict(OptimizationProfile())
    assert not list(tiny_artifacts.onnx.glob("*.plan"))
    # The unfused graph is only kept as a TensorRT source.
    assert not tiny_artifacts.encoder_unfused_onnx.exists()
    md = tiny_artifacts.conversion_report.with_suffix(".md").read_text()
    assert f"TensorRT engines skipped: {TRT_REASON}" in md


def _load(repo, name) -> mc.ModelConfig:
    return text_format.Parse((repo / name / "config.pbtxt").read_text(), mc.ModelConfig())


@pytest.fixture
def artifacts_copy(tiny_artifacts, tmp_path):
    """The tiny artifacts in a private folder, so stand-in plans cannot leak to other tests."""
    root = tmp_path / "artifacts"
    shutil.copytree(
        tiny_artifacts.root,
        root,
        ignore=shutil.ignore_patterns("repository_*", "*.plan", "*.plan.json"),
    )
    return contract.ArtifactPaths(root)


def test_encoder_gpu_config_for_a_plan():
    profile = tensorrt.profile_from_config(max_batch=32, seq_min=1, seq_opt=16, seq_max=32)
    config = encoder_gpu_config(
        ServingConfig(target="gpu"), 384, Path("encoder.fp16.plan"), profile
    )
    assert config.platform == "tensorrt_plan"
    assert config.default_model_filename == "model.plan"
    assert config.max_batch_size == 32  # capped at the profile's max batch
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    for inp in config.input:
        assert tuple(inp.dims) == (-1,) and not inp.allow_ragged_batch
    assert tuple(config.output[0].dims) == (384,)


def test_gpu_repository_serves_the_fp16_plan(artifacts_copy):
    plan = artifacts_copy.encoder_plan("fp16")
    plan.write_bytes(b"")  # stand-in: config generation does not read the plan
    repo = build(artifacts_copy, ServingConfig(target="gpu"))
    encoder = _load(repo, contract.ENCODER_MODEL)
    assert encoder.platform == "tensorrt_plan" and not encoder.backend
    assert encoder.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert not any(i.allow_ragged_batch for i in encoder.input)
    assert 0 < encoder.max_batch_size <= OptimizationProfile().max_batch
    assert {i.name for i in encoder.input} == {
        contract.ONNX_INPUT_IDS,
        contract.ONNX_ATTENTION_MASK,
    }
    assert (repo / contract.ENCODER_MODEL / "1" / "model.plan").exists()
    assert not (repo / contract.ENCODER_MODEL / "1" / "model.onnx").exists()
    info = json.loads((repo / "BUILD.json").read_text())
    assert info["encoder_plan"] == str(plan)
    assert info["tensorrt_profile"]["max_batch"] == encoder.max_batch_size
    # The warm-up request must fit the profile: batch 1, the sample query's tokens.
    warm = encoder.model_warmup[0]
    assert warm.batch_size >= 1
    dims = {tuple(i.dims) for i in warm.inputs.values()}
    assert len(dims) == 1 and info["tensorrt_profile"]["min_seq"] <= next(iter(dims))[0]
    assert next(iter(dims))[0] <= info["tensorrt_profile"]["max_seq"]


def test_gpu_repository_follows_the_plan_profile_and_selection(artifacts_copy):
    small = tensorrt.profile_from_config(max_batch=16, seq_min=1, seq_opt=16, seq_max=32)
    for precision in contract.TENSORRT_PRECISIONS:
        artifacts_copy.encoder_plan(precision).write_bytes(b"")
        artifacts.write_plan_info(
            artifacts_copy.encoder_plan(precision), small, precision=precision
        )
    assert artifacts.served_plan(artifacts_copy) == artifacts_copy.encoder_plan("fp16")
    # The int8 plan is served only when the conversion report selected it (gate passed).
    report = json.loads(artifacts_copy.conversion_report.read_text())
    report["tensorrt"] = {**report.get("tensorrt", {}), "selected_plan": "encoder.int8.plan"}
    artifacts_copy.conversion_report.write_text(json.dumps(report))
    assert artifacts.served_plan(artifacts_copy) == artifacts_copy.encoder_plan("int8")
    repo = build(artifacts_copy, ServingConfig(target="gpu"))
    encoder = _load(repo, contract.ENCODER_MODEL)
    assert encoder.platform == "tensorrt_plan"
    assert encoder.max_batch_size == 16
    info = json.loads((repo / "BUILD.json").read_text())
    assert info["encoder_plan"].endswith("encoder.int8.plan")


def test_gpu_repository_without_a_plan_uses_onnxruntime(artifacts_copy):
    assert artifacts.served_plan(artifacts_copy) is None
    repo = build(artifacts_copy, ServingConfig(target="gpu"))
    encoder = _load(repo, contract.ENCODER_MODEL)
    assert encoder.backend == "onnxruntime" and not encoder.platform
    assert "encoder_plan" not in json.loads((repo / "BUILD.json").read_text())


# What this host lacks, said by `available()`: a GPU the CUDA driver sees, the tensorrt
# package (`make venv` installs the gpu extra where nvidia-smi is found), or both.
@pytest.mark.skipif(
    not TRT_AVAILABLE, reason=f"TensorRT engines cannot be built on this host: {TRT_REASON}"
)
def test_builds_real_engines_on_a_gpu(tiny_artifacts, tmp_path):
    """fp16 from the unfused graph, int8 from a symmetric QDQ graph; run both if possible."""
    import tensorrt as trt

    from shoprank.conversion import exclusion_search, int8, quality
    from shoprank.core.tokenizer import tokenized_feeds, tokenizer_file
    from shoprank.data import datasets
    from shoprank.models.encoder import export_encoder

    raw = export_encoder(tiny_artifacts.encoder, tmp_path / "raw.onnx")
    unfused = int8.prepare_for_qdq(raw, tmp_path / "unfused.onnx")
    queries = datasets.load(tiny_artifacts).queries["query"].tolist()
    feeds = tokenized_feeds(tokenizer_file(tiny_artifacts.encoder), queries[:64])
    qdq = int8.quantize_static_qdq(
        unfused,
        tmp_path / "qdq.onnx",
        feeds,
        op_types_to_quantize=["MatMul"],
        symmetric_activations=True,
    )
    profile = OptimizationProfile()
    reference = exclusion_search.embed_feeds(unfused, feeds)
    can_run, _ = tensorrt.can_run_engines()
    for precision, source in (("fp16", unfused), ("int8", qdq)):
        plan = tensorrt.build_engine(
            source, tmp_path / f"{precision}.plan", precision, profile, workspace_gb=1.0
        )
        assert plan.stat().st_size > 0
        assert artifacts.read_plan_profile(plan) == profile
        engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(
            plan.read_bytes()
        )
        names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
        assert names == {*tensorrt.ENGINE_INPUTS, contract.ONNX_SENTENCE_EMBEDDING}
        for name, (lo, opt, hi) in profile.shapes().items():
            got = engine.get_tensor_profile_shape(name, 0)
            assert [tuple(s) for s in got] == [lo, opt, hi]
        if can_run:
            emb = tensorrt.engine_embeddings(plan, feeds)
            cos = quality.row_cosine(reference, emb)
            assert np.isfinite(emb).all() and cos.mean() > 0.95, (precision, cos.mean())
