"""Conversion: parity checks hold on a real export and fail loudly on a broken one."""

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from shoprank import contract
from shoprank.conversion import export, quality
from shoprank.conversion.convert import ConversionConfig
from shoprank.data.metrics import NDCG_AT_10
from shoprank.models.fusion import load_ranker


def test_report_records_parity_and_variants(tiny_artifacts):
    report = json.loads(tiny_artifacts.conversion_report.read_text())
    assert report["parity"]["queries"]["min_cosine"] >= 0.999
    assert report["parity"]["products"]["min_cosine"] >= 0.999
    assert report["parity"]["ranker_max_abs_diff"] < 1e-3
    assert set(report["variants"]) == {"fp32", "int8_dynamic", "int8_static_qdq"}
    assert report["selected_encoder"] in report["variants"]
    assert report["variants"][report["selected_encoder"]]["accepted"]
    assert tiny_artifacts.conversion_report.with_suffix(".md").exists()


def test_encoder_graph_has_dynamic_axes(tiny_artifacts):
    graph = onnx.load(str(tiny_artifacts.encoder_onnx)).graph
    ids = next(i for i in graph.input if i.name == contract.ONNX_INPUT_IDS)
    dims = ids.type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_param  # batch and sequence are symbolic


def _corrupted(src, dst):
    """Copy of an ONNX model with its largest weight matrix negated and shuffled."""
    model = onnx.load(str(src))
    biggest = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    w = numpy_helper.to_array(biggest)
    rng = np.random.default_rng(0)
    biggest.CopyFrom(
        numpy_helper.from_array(rng.permutation(w.reshape(-1)).reshape(w.shape), biggest.name)
    )
    onnx.save(model, str(dst))
    return dst


def test_parity_check_fails_loudly_on_a_broken_export(tiny_artifacts, tmp_path):
    broken = _corrupted(tiny_artifacts.encoder_onnx, tmp_path / "broken.onnx")
    texts = ["red leather sofa", "blue running shoes", "oak dining table", "kids toys"]
    with pytest.raises(export.ParityError, match="min cosine"):
        export.check_encoder_parity(
            broken, tiny_artifacts.encoder, texts, contract.MAX_QUERY_TOKENS
        )
    # ...while the real export passes the same check.
    parity = export.check_encoder_parity(
        tiny_artifacts.encoder_onnx, tiny_artifacts.encoder, texts, contract.MAX_QUERY_TOKENS
    )
    assert parity.min_cosine >= 0.999


def test_quality_gate_refuses_collapsed_embeddings(tiny_artifacts, tmp_path):
    texts = ["red leather sofa", "blue running shoes", "oak dining table", "kids toys"]
    fp32 = export.onnx_embeddings(tiny_artifacts.encoder_onnx, tiny_artifacts.encoder, texts, 32)
    collapsed = np.tile(fp32.mean(axis=0, keepdims=True), (len(texts), 1))
    gate = quality.QualityGate(min_cosine=0.999)
    with pytest.raises(quality.QualityError, match="collapsed"):
        gate.check("collapsed", export.cosine_parity(fp32, collapsed).mean_cosine)
    with pytest.raises(quality.QualityError, match="NDCG"):
        quality.QualityGate().check("lossy", 1.0, ndcg=0.5, ndcg_fp32=0.6)
    gate.check("fp32", export.cosine_parity(fp32, fp32).mean_cosine, 0.6, 0.6)


def test_int8_is_smaller_and_passes_the_quality_gate(tiny_artifacts):
    report = json.loads(tiny_artifacts.conversion_report.read_text())
    fp32, int8 = report["variants"]["fp32"], report["variants"]["int8_dynamic"]
    assert int8["size_mb"] < fp32["size_mb"]
    assert int8["cosine"] >= report["config"]["min_cosine"]  # the gate's own threshold
    gate = quality.QualityGate(report["config"]["min_cosine"], report["config"]["max_ndcg_loss"])
    ndcg = fp32["quality"][NDCG_AT_10]
    assert gate.verdict("int8_dynamic", int8["cosine"], int8["quality"][NDCG_AT_10], ndcg)[0]


def test_dynamic_int8_embeddings_depend_on_their_batch_mates(tiny_artifacts):
    """Dynamic int8 quantizes activations with one scale per batch; fp32 and static QDQ
    encode each row on its own. The conversion measures it and serves only the latter."""
    texts = ["red leather sofa", "blue running shoes", "oak dining table", "kids toys"] * 4
    texts += ["a much longer query about a large grey corner sofa with storage"]
    drift = {
        name: export.batch_drift(path, tiny_artifacts.encoder, texts, contract.MAX_QUERY_TOKENS)
        for name, path in (
            ("fp32", tiny_artifacts.encoder_onnx),
            ("int8_dynamic", tiny_artifacts.encoder_int8_onnx),
            ("int8_static_qdq", tiny_artifacts.encoder_qdq_onnx),
        )
    }
    limit = ConversionConfig().max_batch_drift
    assert drift["fp32"] < limit and drift["int8_static_qdq"] < limit, drift
    assert drift["int8_dynamic"] > limit, drift
    report = json.loads(tiny_artifacts.conversion_report.read_text())
    variants = report["variants"]
    assert variants["int8_dynamic"]["batch_drift"] > limit
    assert not variants["int8_dynamic"]["accepted"]
    assert "batch mates" in variants["int8_dynamic"]["reason"]
    assert report["selected_encoder"] != "int8_dynamic"


def test_every_verdict_in_the_report_is_the_gates(tiny_artifacts):
    """Recompute each variant's verdict from its recorded measures: the configured quality
    gate, then the batch-drift limit."""
    report = json.loads(tiny_artifacts.conversion_report.read_text())
    config = report["config"]
    gate = quality.QualityGate(config["min_cosine"], config["max_ndcg_loss"])
    fp32 = report["variants"]["fp32"]["quality"][NDCG_AT_10]
    for name, v in report["variants"].items():
        if v.get("path") is None:
            assert not v["accepted"] and v["reason"]
            continue
        accepted, reason = gate.verdict(name, v["cosine"], v["quality"][NDCG_AT_10], fp32)
        if accepted and v["batch_drift"] > config["max_batch_drift"]:
            accepted, reason = False, v["reason"]
            assert "batch mates" in reason
        assert (v["accepted"], v["reason"]) == (accepted, reason)
    chosen = report["variants"][report["selected_encoder"]]
    fastest = min(
        (v for v in report["variants"].values() if v["accepted"]),
        key=lambda v: v["latency"]["p50_ms"],
    )
    assert chosen is fastest or chosen["latency"] == fastest["latency"]


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_the_export_is_the_saved_sentence_transformer(tmp_path, pooling):
    """One encoder definition: whatever pooling training saved is what the graph computes,
    and parity is measured against `SentenceTransformer.encode` of that saved model."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules

    from shoprank.models.encoder import embed, export_fused_encoder
    from shoprank.training.base_encoder import make_tiny_encoder

    encoder_dir = make_tiny_encoder(tmp_path / "enc", pooling=pooling)
    graph = tmp_path / "encoder.onnx"
    export_fused_encoder(encoder_dir, tmp_path / "raw.onnx", graph)
    texts = ["red leather sofa", "blue running shoes for men", "oak table", "kids toys"]
    parity = export.check_encoder_parity(graph, encoder_dir, texts, contract.MAX_QUERY_TOKENS)
    assert parity.min_cosine >= 0.999
    # The other pooling of the same network gives other embeddings: the check can tell.
    other = "mean" if pooling == "cls" else "cls"
    transformer = modules.Transformer(str(encoder_dir))
    swapped = SentenceTransformer(
        modules=[
            transformer,
            modules.Pooling(transformer.get_embedding_dimension(), pooling_mode=other),
            modules.Normalize(),
        ],
        device="cpu",
    )
    wrong = embed(swapped, texts, max_seq_length=contract.MAX_QUERY_TOKENS)
    onnx_emb = export.onnx_embeddings(graph, encoder_dir, texts, contract.MAX_QUERY_TOKENS)
    assert export.cosine_parity(wrong, onnx_emb).min_cosine < 0.99


def test_ranker_graph_matches_pytorch_and_fails_loudly_when_broken(tiny_artifacts, tmp_path):
    from shoprank.data.artifacts import load_item_index

    ranker = load_ranker(tiny_artifacts.ranker)
    items = load_item_index(tiny_artifacts.item_index)["embeddings"]
    feeds = export.ranker_sample(items, items[:5], seed=3, candidates=17)  # new shapes
    assert export.check_ranker_parity(tiny_artifacts.ranker_onnx, ranker, feeds) < 1e-3
    broken = _corrupted(tiny_artifacts.ranker_onnx, tmp_path / "broken.onnx")
    with pytest.raises(export.ParityError, match="max score diff"):
        export.check_ranker_parity(broken, ranker, feeds)
