"""The gpu-embedded target (`shoprank.models.gpu`), built and served on CPU instances here: the
same repository with `--device gpu` runs the encoder and scan on CUDA (bench/gpu_check.py)."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format
from pipeline_fixtures import assert_same_ranking
from tritonclient.grpc import model_config_pb2 as mc

from shoprank import contract
from shoprank.core.ann import exact_top_k
from shoprank.core.requests import pad_rows
from shoprank.core.sessions import encoder_feeds
from shoprank.core.tokenizer import QueryTokenizer
from shoprank.models.gpu import SEQUENCE_BUCKETS, TorchDenseIndex, TorchEncoder, bucket

QUERIES = ["red sofa", "blue cotton t-shirt size m", "lamp", "nv-4521b 1/2 in. copper tee"]


def _config(repo, model: str) -> mc.ModelConfig:
    return text_format.Parse((repo / model / "config.pbtxt").read_text(), mc.ModelConfig())


def _feeds(paths: contract.ArtifactPaths, queries: list[str]) -> tuple[np.ndarray, np.ndarray]:
    tokenizer = QueryTokenizer(paths.encoder / contract.TOKENIZER_FILE)
    rows = tokenizer.encode(queries)
    return pad_rows([r[0] for r in rows]), pad_rows([r[1] for r in rows])


def test_torch_encoder_on_cpu_matches_the_onnx_export_and_buckets_change_nothing(tiny_artifacts):
    """The gpu-embedded encoder's torch code run on the CPU, in float32, so it agrees with
    the ONNX export (float16 on CUDA is compared by `make gpu-check` on a GPU host)."""
    from shoprank.core.sessions import cpu_session

    ids, mask = _feeds(tiny_artifacts, QUERIES)
    torch_encoder = TorchEncoder(tiny_artifacts.encoder, "cpu")
    onnx = cpu_session(tiny_artifacts.encoder_onnx, threads=1)
    (reference,) = onnx.run([contract.ONNX_SENTENCE_EMBEDDING], encoder_feeds(ids, mask))
    (got,) = torch_encoder.run([contract.ONNX_SENTENCE_EMBEDDING], encoder_feeds(ids, mask))
    assert got.shape == reference.shape
    assert np.min(np.sum(got * reference, axis=1)) > 0.9999
    # One query alone (padded to another bucket) embeds as it does in the batch.
    alone = torch_encoder.embed(ids[:1, : int(mask[0].sum())], mask[:1, : int(mask[0].sum())])
    np.testing.assert_allclose(alone[0], got[0], atol=1e-5)


def test_buckets() -> None:
    assert bucket(3, (1, 2, 4, 8)) == 4 and bucket(1, (1, 2)) == 1
    assert bucket(SEQUENCE_BUCKETS[-1] + 1, SEQUENCE_BUCKETS) is None  # runs eagerly


def test_torch_dense_index_on_cpu_is_the_exact_scan() -> None:
    """The gpu-embedded scan's torch code on the CPU (float32; float16 only on CUDA)."""
    rng = np.random.default_rng(0)
    items = rng.normal(size=(500, 16)).astype(np.float32)
    queries = rng.normal(size=(3, 16)).astype(np.float32)
    index = TorchDenseIndex(items)
    rows, scores = index.search(queries, 10)
    np.testing.assert_array_equal(rows, exact_top_k(items, queries, 10))
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ items.T, rows, 1), rtol=1e-5)
    np.testing.assert_array_equal(index.vectors(rows[0]), items[rows[0]])


def test_gpu_embedded_repository_config_puts_encoder_and_scan_on_the_gpu(tiny_artifacts, tmp_path):
    """The generated configs only (KIND_GPU instances, torch float16): nothing is loaded."""
    from shoprank.model_repository.build import GPU_ENCODER_DIR, ServingConfig, build

    repo = build(tiny_artifacts, ServingConfig(target="gpu-embedded"), repo=tmp_path / "repo")
    gpu, cpu = mc.ModelInstanceGroup.KIND_GPU, mc.ModelInstanceGroup.KIND_CPU
    models = (contract.TOKENIZER_MODEL, contract.ENCODER_MODEL, contract.RANKER_MODEL)
    kinds = {m: _config(repo, m).instance_group[0].kind for m in models}
    assert kinds == {
        contract.TOKENIZER_MODEL: cpu,
        contract.ENCODER_MODEL: gpu,
        contract.RANKER_MODEL: gpu,
    }
    for model in (contract.ENCODER_MODEL, contract.RANKER_MODEL):
        params = _config(repo, model).parameters
        assert params["runtime"].string_value == "torch"
        assert params["dtype"].string_value == "float16"
    encoder_dir = repo / contract.ENCODER_MODEL / "1" / GPU_ENCODER_DIR
    assert (encoder_dir / contract.TOKENIZER_FILE).exists()
    ranker_dir = repo / contract.RANKER_MODEL / "1"
    assert not (ranker_dir / contract.DENSE_INDEX_FILE).exists()
    assert (ranker_dir / tiny_artifacts.item_index.name).exists()
    # Ensembles are wired from the same contract as the GPU repository's, and answer the
    # same requests as the CPU repository's (whose one step is the searcher).
    gpu_repo = build(tiny_artifacts, ServingConfig(target="gpu"), repo=tmp_path / "gpu")
    cpu_repo = tiny_artifacts.repository("cpu")
    for ensemble in (contract.ENSEMBLE_MODEL, contract.RERANK_MODEL):
        config = _config(repo, ensemble)
        assert config == _config(gpu_repo, ensemble)
        cpu = _config(cpu_repo, ensemble)
        assert (list(config.input), list(config.output)) == (list(cpu.input), list(cpu.output))


@pytest.mark.integration
@pytest.mark.slow  # a repository built and a server of its own
def test_gpu_embedded_served_on_cpu_instances_answers_like_the_cpu_pipeline(
    tiny_artifacts, tmp_path
):
    """The gpu-embedded repository built with `device=cpu` (KIND_CPU instances, float32)
    and served by the real Triton server on the CPU."""
    from shoprank.core.ann import DenseConfig, DenseIndex
    from shoprank.core.pipeline import InProcessPipeline
    from shoprank.core.ranking import RetrievalConfig
    from shoprank.data.artifacts import load_item_index
    from shoprank.model_repository.build import ServingConfig, build
    from shoprank.ops.tritonserver import running_server
    from shoprank_client import SearchClient

    serving = ServingConfig(target="gpu-embedded", device="cpu")
    repo = build(tiny_artifacts, serving, repo=tmp_path / "repo")
    # The reference: the CPU pipeline (fp32 ONNX encoder) with the exact scan, which is
    # what the gpu-embedded target runs (the CPU repository's index is approximate).
    reference = InProcessPipeline(tiny_artifacts.repository("cpu"))
    embeddings = load_item_index(tiny_artifacts.item_index)["embeddings"]
    reference.ranker.dense = DenseIndex.build(embeddings, DenseConfig(kind="flat"))
    # Few candidates (the tiny catalog has 300 products), so the answers depend on the scan.
    retrieval = RetrievalConfig.load(tiny_artifacts.retrieval_config)
    retrieval.dense_k, retrieval.lexical_k = 8, 2
    retrieval.save(repo / contract.RANKER_MODEL / "1" / contract.RETRIEVAL_CONFIG_FILE)
    reference.ranker.config = retrieval
    with (
        running_server(repo, log_path=tmp_path / "triton.log") as server,
        SearchClient(server.grpc_url) as client,
    ):
        for query in QUERIES:
            got = client.search(query, top_k=5)
            ref = reference.search(query, k=5)
            assert len(got) == 5
            assert_same_ranking(
                [r.product_id for r in got],
                [r.score for r in got],
                ref.product_ids,
                ref.scores,
                atol=1e-3,
            )


@pytest.mark.integration
@pytest.mark.slow  # a repository built and a server of its own
def test_gpu_check_on_cpu_instances_runs_end_to_end_and_reports_what_it_measured(
    tiny_artifacts, tmp_path
):
    """`make gpu-check` with `device=cpu`: served on the CPU, it reports no GPU."""
    from shoprank.bench.gpu_check import GpuCheckConfig, run

    report = run(
        GpuCheckConfig(
            out=tiny_artifacts.root,
            report_dir=tmp_path,
            device="cpu",
            concurrency="1",
            queries=20,
            warmup_s=0.5,
            window_s=1.0,
            max_windows=2,
        )
    )
    agreement = report["agreement"]
    assert 0 < agreement["queries"] <= 20  # the tiny shop has few held-out queries
    assert agreement["embedding_cosine_min"] > 0.9999  # fp32 on CPU instances
    assert agreement["top10_identical_share"] == 1.0
    (row,) = report["serving"]
    assert row["concurrency"] == 1 and row["requests"] > 0 and row["errors"] == 0
    assert "| 1 |" in (tmp_path / "gpu_check.md").read_text()
    assert report["machine"]["gpu"] is None  # says so instead of naming a GPU
