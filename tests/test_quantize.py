"""Static QDQ int8: real calibrated quantization of the tiny encoder, exclusions, the gate."""

import json

import numpy as np
import onnx
import pytest

from shoprank import contract
from shoprank.conversion import exclusion_search, graph_surgery, int8, latency, quality
from shoprank.core.tokenizer import tokenized_feeds, tokenizer_file
from shoprank.data import datasets
from shoprank.data.metrics import NDCG_AT_10
from shoprank.models.encoder import export_encoder


@pytest.fixture(scope="module")
def unfused(tiny_artifacts, tmp_path_factory):
    """The tiny encoder exported unfused and prepared for QDQ, as conversion does."""
    work = tmp_path_factory.mktemp("qdq")
    raw = export_encoder(tiny_artifacts.encoder, work / "raw.onnx")
    return int8.prepare_for_qdq(raw, work / "unfused.onnx")


@pytest.fixture(scope="module")
def feeds(tiny_artifacts):
    """(calibration feeds from train queries, held-out feeds from test queries)."""
    queries = datasets.load(tiny_artifacts).queries
    tok = tokenizer_file(tiny_artifacts.encoder)
    train = queries[queries["split"] == "train"]["query"].tolist()
    test = queries[queries["split"] == "test"]["query"].tolist()
    return (
        tokenized_feeds(tok, train, contract.MAX_QUERY_TOKENS),
        tokenized_feeds(tok, test, contract.MAX_QUERY_TOKENS, 64),
    )


def _graph(path):
    return onnx.load(str(path), load_external_data=False).graph


def test_calibration_feeds_are_tokenized_like_the_server(tiny_artifacts):
    from shoprank.core.tokenizer import QueryTokenizer

    tok = tokenizer_file(tiny_artifacts.encoder)
    texts = ["red leather sofa", "a " * 100, "oak dining table for six people"]
    (batch,) = tokenized_feeds(tok, texts, contract.MAX_QUERY_TOKENS)
    ids, mask = batch[contract.ONNX_INPUT_IDS], batch[contract.ONNX_ATTENTION_MASK]
    assert ids.dtype == mask.dtype == np.int64
    assert ids.shape == (3, contract.MAX_QUERY_TOKENS)  # padded to the longest, truncated
    served = QueryTokenizer(tok).encode(texts)
    for row, (want_ids, want_mask) in enumerate(served):
        n = len(want_ids)
        assert n % contract.SEQUENCE_BUCKET == 0
        np.testing.assert_array_equal(ids[row, :n], want_ids)
        np.testing.assert_array_equal(mask[row, :n], want_mask)
        assert not mask[row, n:].any()


def test_exclusion_candidates_find_the_roles_in_the_graph(unfused):
    graph = _graph(unfused)
    nodes = {n.name: n for n in graph.node}
    inits = {t.name for t in graph.initializer}
    cands = {c.name: c for c in graph_surgery.exclusion_candidates(unfused)}
    assert next(iter(cands)) == "none" and not cands["none"].exclude_nodes
    # The additive attention mask feeds every Softmax: its Add must stay float.
    mask_set = set(cands["mask_softmax"].exclude_nodes)
    for node in graph.node:
        if node.op_type == "Softmax":
            assert node.name in mask_set
            producer = next(n for n in graph.node if node.input[0] in n.output)
            assert producer.name in mask_set
    attention = set(cands["linear_only"].exclude_nodes)
    assert attention and all(
        nodes[n].op_type == "MatMul" and not set(nodes[n].input) & inits for n in attention
    )
    ffn_out = set(cands["linear_no_ffn_out"].exclude_nodes) - attention
    assert ffn_out and all(nodes[n].op_type == "MatMul" for n in ffn_out)
    assert cands["matmul_only"].op_types_to_quantize == ("MatMul",)


def test_static_qdq_inserts_qdq_nodes_and_respects_exclusions(unfused, feeds, tmp_path):
    calibration, _ = feeds
    graph = _graph(unfused)
    inits = {t.name for t in graph.initializer}
    readers: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    linear = [n for n in graph.node if n.op_type == "MatMul" and any(i in inits for i in n.input)]
    # One MatMul reading a tensor nobody else reads (FFN output projection), one sharing
    # its input with quantized MatMuls (the key projection shares Q/K/V's input).
    alone = next(n for n in linear if readers[n.input[0]] == 1)
    shared = next(n for n in linear if readers[n.input[0]] > 1)
    excluded = {alone.name, shared.name}
    out = int8.quantize_static_qdq(
        unfused,
        tmp_path / "qdq.onnx",
        calibration,
        exclude_nodes=sorted(excluded),
        op_types_to_quantize=["MatMul"],
    )
    qgraph = _graph(out)
    ops = [n.op_type for n in qgraph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    producer = {o: n for n in qgraph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in qgraph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def from_dq(name: str) -> bool:
        return name in producer and producer[name].op_type == "DequantizeLinear"

    for node in (n for n in qgraph.node if n.name in {m.name for m in linear}):
        if node.name in excluded:
            # Excluded: float weights, float kernel. A tensor it shares with quantized
            # MatMuls still carries their Q/DQ pair (onnxruntime wires every reader to it).
            assert node.input[1] in inits and not from_dq(node.input[1]), node.name
            if node.name == alone.name:
                assert not from_dq(node.input[0]), node.name
        else:
            assert all(from_dq(i) for i in node.input), node.name
    # op_types_to_quantize=["MatMul"]: every DequantizeLinear feeds MatMuls only.
    for node in qgraph.node:
        if node.op_type == "DequantizeLinear":
            assert {c.op_type for c in consumers[node.output[0]]} == {"MatMul"}
    # Per-channel int8 weights: one scale per output column.
    weight_dq = [
        n
        for n in qgraph.node
        if n.op_type == "DequantizeLinear"
        and producer.get(n.input[0]) is None  # an initializer, i.e. a weight
    ]
    assert weight_dq
    assert all(any(a.name == "axis" and a.i == 1 for a in n.attribute) for n in weight_dq)


def _mask_zeroed(batches):
    """Calibration batches whose attention masks are all zero (e.g. a broken collator)."""
    return [
        {**b, contract.ONNX_ATTENTION_MASK: np.zeros_like(b[contract.ONNX_ATTENTION_MASK])}
        for b in batches
    ]


def test_gate_refuses_a_collapsed_static_qdq_and_the_search_avoids_it(unfused, feeds, tmp_path):
    """Naive static QDQ calibrated on degenerate batches collapses; the gate says no.

    With every mask zero during calibration the pooling multiply sees only zeros, so its
    int8 range is empty and real queries pool to noise — a real model from the real
    quantizer, measured, not made-up embeddings.
    """
    calibration, heldout = feeds
    degenerate = _mask_zeroed(calibration[:2])
    gate = quality.QualityGate()
    reference = exclusion_search.embed_feeds(unfused, heldout)

    naive = int8.quantize_static_qdq(unfused, tmp_path / "naive.onnx", degenerate)
    cos = quality.row_cosine(reference, exclusion_search.embed_feeds(naive, heldout))
    assert cos.mean() < gate.min_cosine
    with pytest.raises(quality.QualityError, match="collapsed"):
        gate.check("int8_static_qdq", float(cos.mean()))

    search = exclusion_search.search_exclusions(
        unfused, tmp_path / "best.onnx", degenerate, heldout, work_dir=tmp_path / "work"
    )
    trials = {t.name: t for t in search.trials}
    assert set(trials) == {c.name for c in graph_surgery.exclusion_candidates(unfused)}
    assert trials["none"].mean_cosine < gate.min_cosine
    assert search.best != "none"
    chosen = quality.row_cosine(reference, exclusion_search.embed_feeds(search.path, heldout))
    gate.check("int8_static_qdq", float(chosen.mean()))  # the searched choice passes
    # Only the chosen model is left behind: no trial files, no calibration caches.
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == []
    assert graph_surgery.count_qdq_nodes(search.path) == trials[search.best].qdq_nodes


def test_row_cosine_counts_nan_as_broken():
    a = np.ones((2, 4), dtype=np.float32)
    b = np.array([[1, 1, 1, 1], [np.nan] * 4], dtype=np.float32)
    np.testing.assert_allclose(quality.row_cosine(a, b), [1.0, -1.0], atol=1e-6)


def test_report_records_the_static_qdq_variant(tiny_artifacts):
    report = json.loads(tiny_artifacts.conversion_report.read_text())
    v = report["variants"]["int8_static_qdq"]
    qdq = v["static_qdq"]
    names = [t["name"] for t in qdq["trials"]]
    assert names[0] == "none" and qdq["exclusion"] in names
    assert qdq["calibration_queries"] > 0 and qdq["selection_queries"] > 0
    assert qdq["activations"] == "uint8 asymmetric"
    assert tiny_artifacts.onnx.joinpath("encoder.int8_qdq.onnx").exists()
    assert graph_surgery.count_qdq_nodes(tiny_artifacts.onnx / "encoder.int8_qdq.onnx") > 0
    # The verdict is the gate's on the recorded measures, and a refusal says why.
    gate = quality.QualityGate(report["config"]["min_cosine"], report["config"]["max_ndcg_loss"])
    fp32 = report["variants"]["fp32"]["quality"][NDCG_AT_10]
    assert (v["accepted"], v["reason"]) == gate.verdict(
        "int8_static_qdq", v["cosine"], v["quality"][NDCG_AT_10], fp32
    )
    assert v["accepted"] or "int8_static_qdq" in v["reason"]
    assert v["size_mb"] == latency.file_mb(tiny_artifacts.encoder_qdq_onnx)
    md = tiny_artifacts.conversion_report.with_suffix(".md").read_text()
    assert "int8_static_qdq" in md and "Static QDQ exclusion search" in md
