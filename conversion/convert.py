"""The conversion stage: export, fuse, check parity, quantize, gate on quality, report.

    python -m shoprank.conversion --out artifacts/demo

reads the trained encoder and ranker from `--out`, writes the ONNX variants and
`onnx/conversion_report.{json,md}`, and records which encoder variant the model
repository should serve: the fastest one within the quality budget.

Encoder variants: fp32 (fused graph), int8_dynamic (fused graph, no calibration) and
int8_static_qdq (unfused graph, calibrated on train-split queries and product texts, its
exclusion set chosen on val-split queries, gated on test-split queries). Where a GPU and
TensorRT exist, fp16 and int8 (from a symmetric QDQ graph) engines are built, gated the
same way, and the report names the plan the GPU repository serves.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from shoprank import contract
from shoprank.configargs import config_to_dict, parse_config, setup_logging
from shoprank.conversion import export, int8, tensorrt
from shoprank.conversion.dense import DenseIndexOptions, build_dense_index
from shoprank.conversion.exclusion_search import ExclusionSearch, embed_feeds, search_exclusions
from shoprank.conversion.latency import Speed, file_mb, measure_latency
from shoprank.conversion.quality import QualityGate, row_cosine
from shoprank.conversion.report import report_lines
from shoprank.core.covisits import load_blend
from shoprank.core.tokenizer import tokenized_feeds, tokenizer_file
from shoprank.data import datasets
from shoprank.data.artifacts import SELECTED_ENCODER_KEY, OptimizationProfile, load_item_index
from shoprank.data.metrics import NDCG_AT_10, mean_metrics, top_k_rankings
from shoprank.models.encoder import export_fused_encoder
from shoprank.models.fusion import load_ranker
from shoprank.models.sequential import load_sequential

log = logging.getLogger(__name__)


@dataclass
class ConversionConfig(DenseIndexOptions):
    """Knobs of the conversion stage; each is a command-line flag."""

    out: Path = field(default=contract.DEFAULT_ARTIFACTS, metadata={"help": "artifact folder"})
    min_parity_cosine: float = field(
        default=0.999, metadata={"help": "fp32 ONNX vs SentenceTransformer.encode"}
    )
    min_cosine: float = field(default=0.95, metadata={"help": "quantized vs fp32, mean"})
    max_ndcg_loss: float = field(default=0.01, metadata={"help": "relative NDCG@10 budget"})
    latency_runs: int = 50
    threads: int = 1
    parity_texts: int = 256
    static_qdq: bool = field(default=True, metadata={"help": "try the int8_static_qdq variant"})
    # Dynamic int8 quantizes activations with one scale per batch: on the demo workload a
    # batch of 8 moved MiniLM's embeddings by up to 0.03 and changed the top 10 of most
    # queries; fp32 and static QDQ differ by float rounding (~5e-8).
    max_batch_drift: float = field(
        default=1e-5,
        metadata={
            "help": "serve only encoders whose query embedding moves at most this much with "
            "its batch mates (inf: any)"
        },
    )
    drift_texts: int = field(default=64, metadata={"help": "held-out queries the drift uses"})
    calibration_texts: int = field(
        default=256, metadata={"help": "static QDQ calibration: train queries + product texts"}
    )
    qdq_cosine_tolerance: float = field(
        default=0.005, metadata={"help": "exclusion sets this close to the best compete on speed"}
    )
    tensorrt: bool = field(
        default=True, metadata={"help": "build TensorRT engines where a GPU and TensorRT exist"}
    )
    trt_min_batch: int = 1
    trt_opt_batch: int = 8
    trt_max_batch: int = field(
        default=contract.MAX_BATCH_SIZE, metadata={"help": "TensorRT profile max batch"}
    )
    trt_seq_min: int = contract.SEQUENCE_BUCKET
    trt_seq_opt: int = contract.TYPICAL_QUERY_TOKENS
    trt_seq_max: int = field(
        default=contract.MAX_QUERY_TOKENS, metadata={"help": "TensorRT profile max tokens"}
    )
    trt_workspace_gb: float = 2.0
    catalog_job: str = field(
        default="local",
        metadata={
            "help": "the catalog's indexes: local (dense index here, training's item and lexical "
            "indexes) or ray (all three by conversion/catalog_job.py, the same files)"
        },
    )
    catalog_workers: int = field(default=1, metadata={"help": "--catalog-job ray: encoder actors"})

    def trt_profile(self) -> OptimizationProfile:
        """The TensorRT optimization profile these fields describe."""
        return tensorrt.profile_from_config(
            max_batch=self.trt_max_batch,
            seq_min=self.trt_seq_min,
            seq_opt=self.trt_seq_opt,
            seq_max=self.trt_seq_max,
            min_batch=self.trt_min_batch,
            opt_batch=self.trt_opt_batch,
        )


def heldout_texts(data: datasets.ShopData, n: int) -> tuple[list[str], list[str]]:
    """Held-out query texts (test split) and a sample of product texts."""
    queries = data.queries[data.queries["split"] == "test"]["query"].tolist()
    products = list(datasets.product_text(data.catalog.head(max(1, n // 2))))
    return queries, products[: n // 2]


def calibration_texts(
    data: datasets.ShopData, n: int, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Static-QDQ calibration texts: ~3/4 train-split queries, ~1/4 product texts.

    Train split only, so neither the exclusion choice (val) nor the gate (test) is scored
    on text the ranges were fitted to. Products come from the catalog's tail, away from
    the parity sample at its head.
    """
    rng = np.random.default_rng(seed)
    train = data.queries[data.queries["split"] == "train"]["query"].tolist()
    n_q = min(len(train), max(1, (3 * n) // 4))
    queries = [train[i] for i in sorted(rng.choice(len(train), n_q, replace=False))]
    # Served traffic is queries: products only widen the ranges' coverage (longer texts),
    # so they stay ~1/4 even when there are too few train queries to fill the rest.
    tail = data.catalog.tail(max(1, min(n - n_q, n // 4)))
    return queries, list(datasets.product_text(tail))


def selection_queries(data: datasets.ShopData, n: int) -> list[str]:
    """Val-split queries that choose the static-QDQ exclusion set (train if there is no val)."""
    for split in ("val", "train"):
        queries = data.queries[data.queries["split"] == split]["query"].tolist()
        if queries:
            return queries[:n]
    raise ValueError("no val or train queries to choose a quantization with")


def ndcg_of(
    embeddings: np.ndarray,
    data: datasets.ShopData,
    index: dict[str, np.ndarray],
) -> dict[str, float]:
    """Retrieval metrics of test queries embedded as `embeddings` against the item index."""
    queries = data.queries[data.queries["split"] == "test"]
    rankings = top_k_rankings(
        embeddings @ index["embeddings"].T, queries["query_id"].tolist(), index["product_ids"]
    )
    return mean_metrics(rankings, datasets.judgement_grades(data, list(rankings)))


@dataclass
class Variant:
    """One converted encoder, how it measured against fp32, and the gate's verdict."""

    name: str
    path: Path | None  # None: the variant could not be produced (`reason` says why)
    cosine: float = float("nan")  # mean over held-out queries, vs fp32
    min_cosine: float = float("nan")
    quality: dict[str, float] = field(default_factory=dict)  # retrieval metrics, test split
    size_mb: float | None = None
    latency: Speed | None = None
    accepted: bool = False
    reason: str = ""
    static_qdq: dict[str, Any] | None = None  # the exclusion search behind it, if any
    batch_drift: float | None = None  # `export.batch_drift` of the held-out queries

    def judge(self, gate: QualityGate, fp32_ndcg: float, max_batch_drift: float) -> None:
        """Record the gate's verdict on this variant; one whose queries' embeddings move
        more than `max_batch_drift` with their batch mates is refused too."""
        self.accepted, self.reason = gate.verdict(
            self.name, self.cosine, self.quality.get(NDCG_AT_10), fp32_ndcg
        )
        drift = self.batch_drift
        if self.accepted and drift is not None and not drift <= max_batch_drift:
            self.accepted = False
            self.reason = (
                f"{self.name}: a query's embedding moves by up to {drift:.3g} with its batch "
                f"mates (limit {max_batch_drift:g}), so its answers would depend on the "
                "requests it is batched with"
            )
        if not self.accepted:
            log.warning("refused: %s", self.reason)

    def to_json(self) -> dict[str, Any]:
        """The report entry (paths as strings; absent measurements left out)."""
        out = {k: v for k, v in asdict(self).items() if v is not None and k != "name"}
        out["path"] = str(self.path) if self.path is not None else None
        return out


@dataclass
class QDQInputs:
    """Encoder feeds, tokenized as served, for calibration, exclusion choice and engine checks."""

    calibration: list[dict[str, np.ndarray]]
    selection: list[dict[str, np.ndarray]]
    test: list[dict[str, np.ndarray]]  # test-split queries in order (NDCG needs the order)
    sample: dict[str, np.ndarray]  # one query, batch 1, for latency
    counts: dict[str, int]


def _qdq_inputs(
    paths: contract.ArtifactPaths, data: datasets.ShopData, config: ConversionConfig
) -> QDQInputs:
    tok = tokenizer_file(paths.encoder)
    cal_q, cal_p = calibration_texts(data, config.calibration_texts)
    sel = selection_queries(data, config.selection_texts)
    test = data.queries[data.queries["split"] == "test"]["query"].tolist()
    return QDQInputs(
        calibration=tokenized_feeds(tok, cal_q, contract.MAX_QUERY_TOKENS)
        + tokenized_feeds(tok, cal_p, contract.MAX_PRODUCT_TOKENS),
        selection=tokenized_feeds(tok, sel, contract.MAX_QUERY_TOKENS, 64),
        test=tokenized_feeds(tok, test, contract.MAX_QUERY_TOKENS, min(64, config.trt_max_batch)),
        sample=tokenized_feeds(tok, [contract.SAMPLE_QUERY])[0],
        counts={
            "calibration_queries": len(cal_q),
            "calibration_products": len(cal_p),
            "selection_queries": len(sel),
        },
    )


def _search_summary(search: ExclusionSearch, inputs: QDQInputs) -> dict[str, Any]:
    chosen = next(t for t in search.trials if t.name == search.best)
    return {
        "exclusion": search.best,
        "description": chosen.description,
        "rule": search.rule,
        "activations": "int8 symmetric" if search.symmetric_activations else "uint8 asymmetric",
        "weights": "int8 symmetric, per output channel",
        **inputs.counts,
        "calibration_batches": search.calibration_batches,
        "trials": [asdict(t) for t in search.trials],
        "seconds": search.seconds,
    }


def _static_qdq_variant(
    paths: contract.ArtifactPaths,
    inputs: QDQInputs,
    config: ConversionConfig,
    fp32_q: np.ndarray,
    queries: list[str],
    data: datasets.ShopData,
    index: dict[str, np.ndarray],
    latency_feeds: dict[str, np.ndarray],
) -> Variant:
    """The int8_static_qdq variant: exclusion search, then the same measures as the others."""
    out = paths.encoder_qdq_onnx
    work = paths.quantization_work
    try:
        search = search_exclusions(
            paths.encoder_unfused_onnx,
            out,
            inputs.calibration,
            inputs.selection,
            cosine_tolerance=config.qdq_cosine_tolerance,
            latency_feeds=latency_feeds,
            latency_runs=max(5, config.latency_runs // 2),
            work_dir=work,
        )
    except Exception as exc:  # onnxruntime.quantization raises many types; fp32/dynamic stand
        log.exception("static QDQ quantization failed")
        return Variant("int8_static_qdq", None, reason=f"static QDQ failed: {exc}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    emb = export.onnx_embeddings(out, paths.encoder, queries, contract.MAX_QUERY_TOKENS)
    cos = export.cosine_parity(fp32_q, emb)
    return Variant(
        "int8_static_qdq",
        out,
        cosine=cos.mean_cosine,
        min_cosine=cos.min_cosine,
        quality=ndcg_of(emb, data, index),
        static_qdq=_search_summary(search, inputs),
    )


def _tensorrt_engines(
    paths: contract.ArtifactPaths,
    config: ConversionConfig,
    available: bool,
    inputs: QDQInputs | None,
    gate: QualityGate,
    fp32_ndcg: float,
    data: datasets.ShopData,
    index: dict[str, np.ndarray],
) -> tensorrt.TensorRTReport:
    """Build, check and select TensorRT plans; without a GPU, the reason they were skipped."""
    trt_config = tensorrt.TensorRTConfig(
        profile=config.trt_profile(),
        workspace_gb=config.trt_workspace_gb,
        latency_runs=config.latency_runs,
    )
    if not config.tensorrt:
        log.info("TensorRT engines skipped: disabled (--no-tensorrt)")
        return tensorrt.TensorRTReport(False, "disabled (--no-tensorrt)", trt_config)
    if not available or inputs is None:
        return tensorrt.build_all(paths, trt_config)  # logs and records why it skipped

    # TensorRT takes symmetric int8 only: a QDQ graph of its own, chosen the same way.
    work = paths.quantization_work
    int8_qdq: dict[str, Any]
    try:
        search = search_exclusions(
            paths.encoder_unfused_onnx,
            paths.encoder_qdq_sym_onnx,
            inputs.calibration,
            inputs.selection,
            symmetric_activations=True,
            cosine_tolerance=config.qdq_cosine_tolerance,
            work_dir=work,
        )
        int8_qdq = _search_summary(search, inputs)
    except Exception as exc:  # the fp16 engine does not need it
        log.exception("symmetric static QDQ for TensorRT failed")
        int8_qdq = {"error": str(exc)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = tensorrt.build_all(paths, trt_config, sample_feeds=inputs.sample)
    report.int8_qdq = int8_qdq

    can_run, why_not = tensorrt.can_run_engines()
    reference = embed_feeds(paths.encoder_onnx, inputs.test) if can_run else None
    for engine in report.engines.values():
        if not engine.built:
            engine.accepted, engine.reason = False, engine.error or "not built"
            continue
        if reference is None:
            # Unchecked: fp16 of a parity-checked graph is served, int8 never unchecked.
            engine.accepted = engine.precision == "fp16"
            engine.reason = f"not checked on the GPU: {why_not}"
            continue
        try:
            emb = tensorrt.engine_embeddings(engine.plan, inputs.test)
        except Exception as exc:  # a plan that builds but cannot run must not be served
            engine.accepted, engine.reason = False, f"engine failed to run: {exc}"
            log.warning("TensorRT %s engine failed to run: %s", engine.precision, exc)
            continue
        cos = row_cosine(reference, emb)
        engine.cosine, engine.min_cosine = float(cos.mean()), float(cos.min())
        engine.quality = ndcg_of(emb, data, index)
        engine.accepted, engine.reason = gate.verdict(
            f"tensorrt_{engine.precision}", engine.cosine, engine.quality[NDCG_AT_10], fp32_ndcg
        )
    report.select_plan()
    return report


@dataclass
class Inputs:
    """What every conversion step reads: the trained artifacts and held-out texts."""

    paths: contract.ArtifactPaths
    data: datasets.ShopData
    index: dict[str, np.ndarray]  # the item index: ids, embeddings, features
    queries: list[str]  # held-out queries (parity, quality, int8 agreement)
    products: list[str]  # held-out product texts (parity)
    gate: QualityGate


@dataclass
class Fp32Encoder:
    """The fused fp32 export, its parity with sentence-transformers, its query embeddings."""

    fused: Any
    parity_queries: export.Parity
    parity_products: export.Parity
    embeddings: np.ndarray  # of `Inputs.queries`
    quality: dict[str, float]


@dataclass
class EncoderChoice:
    """Every encoder variant measured and judged, the one served, what TensorRT built."""

    variants: list[Variant]
    selected: Variant
    tensorrt: tensorrt.TensorRTReport


def read_inputs(config: ConversionConfig) -> Inputs:
    paths = contract.ArtifactPaths(Path(config.out))
    if not paths.encoder.exists():
        raise FileNotFoundError(f"no trained encoder at {paths.encoder}: run `make train` first")
    data = datasets.load(paths)
    index = load_item_index(paths.item_index)
    queries, products = heldout_texts(data, config.parity_texts)
    gate = QualityGate(min_cosine=config.min_cosine, max_ndcg_loss=config.max_ndcg_loss)
    paths.onnx.mkdir(parents=True, exist_ok=True)
    return Inputs(paths, data, index, queries, products, gate)


def export_fp32(inp: Inputs, config: ConversionConfig) -> Fp32Encoder:
    """Export from the saved sentence-transformers model, fuse, and check parity against its
    own `encode` on held-out queries and products."""
    paths = inp.paths
    fused = export_fused_encoder(paths.encoder, paths.encoder_raw_onnx, paths.encoder_onnx)
    parity = [
        export.check_encoder_parity(
            paths.encoder_onnx, paths.encoder, texts, max_tokens, config.min_parity_cosine
        )
        for texts, max_tokens in (
            (inp.queries, contract.MAX_QUERY_TOKENS),
            (inp.products, contract.MAX_PRODUCT_TOKENS),
        )
    ]
    emb = export.onnx_embeddings(
        paths.encoder_onnx, paths.encoder, inp.queries, contract.MAX_QUERY_TOKENS
    )
    return Fp32Encoder(fused, parity[0], parity[1], emb, ndcg_of(emb, inp.data, inp.index))


def choose_encoder(inp: Inputs, fp32: Fp32Encoder, config: ConversionConfig) -> EncoderChoice:
    """int8 variants (and TensorRT engines where they can be built) beside fp32, each timed
    and judged by the quality gate and by how far a query's embedding moves with its batch
    mates; the fastest accepted one is served."""
    paths = inp.paths
    int8.quantize_dynamic_int8(paths.encoder_onnx, paths.encoder_int8_onnx)
    int8_q = export.onnx_embeddings(
        paths.encoder_int8_onnx, paths.encoder, inp.queries, contract.MAX_QUERY_TOKENS
    )
    int8_cos = export.cosine_parity(fp32.embeddings, int8_q)
    feeds = export.tokenize(paths.encoder, [contract.SAMPLE_QUERY], contract.MAX_QUERY_TOKENS)
    variants = [
        Variant("fp32", paths.encoder_onnx, cosine=1.0, quality=fp32.quality),
        Variant(
            "int8_dynamic",
            paths.encoder_int8_onnx,
            cosine=int8_cos.mean_cosine,
            min_cosine=int8_cos.min_cosine,
            quality=ndcg_of(int8_q, inp.data, inp.index),
        ),
    ]
    # Static QDQ and TensorRT start from the unfused graph (standard ONNX ops only).
    trt_ok = tensorrt.available()[0] if config.tensorrt else False
    qdq_inputs = None
    if config.static_qdq or trt_ok:
        int8.prepare_for_qdq(paths.encoder_raw_onnx, paths.encoder_unfused_onnx)
        qdq_inputs = _qdq_inputs(paths, inp.data, config)
    paths.encoder_raw_onnx.unlink()
    if config.static_qdq and qdq_inputs is not None:
        variants.append(
            _static_qdq_variant(
                paths, qdq_inputs, config, fp32.embeddings, inp.queries, inp.data, inp.index, feeds
            )
        )
    fp32_ndcg = fp32.quality[NDCG_AT_10]
    for v in variants:
        if v.path is None:
            continue  # the variant could not be produced; its reason says why
        v.size_mb = file_mb(v.path)
        v.latency = measure_latency(v.path, feeds, config.latency_runs, threads=config.threads)
        v.batch_drift = export.batch_drift(
            v.path, paths.encoder, inp.queries[: config.drift_texts], contract.MAX_QUERY_TOKENS
        )
        v.judge(inp.gate, fp32_ndcg, config.max_batch_drift)
    accepted = [v for v in variants if v.accepted]
    selected = min(accepted, key=lambda v: v.latency.p50_ms if v.latency else float("inf"))
    trt_report = _tensorrt_engines(
        paths, config, trt_ok, qdq_inputs, inp.gate, fp32_ndcg, inp.data, inp.index
    )
    if not trt_report.engines:
        # only TensorRT needs it once the variants exist
        paths.encoder_unfused_onnx.unlink(missing_ok=True)
    return EncoderChoice(variants, selected, trt_report)


def export_ranker(inp: Inputs, fp32: Fp32Encoder) -> dict:
    """The fusion ranker's ONNX graph and its parity with PyTorch on fresh samples."""
    paths = inp.paths
    ranker = load_ranker(paths.ranker)
    emb = inp.index["embeddings"]
    export.export_ranker(
        ranker, paths.ranker_onnx, export.ranker_sample(emb, fp32.embeddings[:32], seed=0)
    )
    sample = export.ranker_sample(emb, fp32.embeddings[:32], seed=1)
    diff = export.check_ranker_parity(paths.ranker_onnx, ranker, sample)
    export.export_relevance(paths.ranker_onnx, paths.relevance_onnx, sample)
    return {
        "path": str(paths.ranker_onnx),
        "relevance_path": str(paths.relevance_onnx),
        "size_mb": file_mb(paths.ranker_onnx),
        "max_abs_diff": diff,
    }


def export_recommender(inp: Inputs) -> dict:
    """Recommend mode: the sequential model's history encoder, the item vectors and the
    blend with its co-visits that training chose."""
    paths = inp.paths
    if not paths.sequential.exists():  # none trained, or none fit to serve: none served
        paths.sequential_onnx.unlink(missing_ok=True)
        paths.item_vectors.unlink(missing_ok=True)
        return {"exported": False}
    blend, covisits = load_blend(paths.covisits)
    diff = export.export_sequential(
        load_sequential(paths.sequential),
        inp.index["embeddings"],
        np.load(paths.popularity),
        paths.sequential_onnx,
        paths.item_vectors,
        blend=blend,
        covisits=covisits,
    )
    return {
        "exported": True,
        "path": str(paths.sequential_onnx),
        "size_mb": file_mb(paths.sequential_onnx),
        "max_abs_diff": diff,
        "served": blend.name,
    }


def dense_index(inp: Inputs, fp32: Fp32Encoder, config: ConversionConfig) -> dict:
    """The dense ANN index, its search knob tuned on val queries embedded by the encoder and
    its recall checked on the held-out ones."""
    paths = inp.paths
    tune_q = export.onnx_embeddings(
        paths.encoder_onnx,
        paths.encoder,
        selection_queries(inp.data, config.selection_texts),
        contract.MAX_QUERY_TOKENS,
    )
    return build_dense_index(
        inp.index["embeddings"],
        config.dense_config(),
        tune_q,
        fp32.embeddings,
        paths.dense_index,
        target=config.ann_recall_target,
    )


def ray_catalog_job(config: ConversionConfig) -> dict:
    """The catalog job on Ray (catalog_job.py: the fp32 encoder re-embeds the catalog, the
    item, dense and lexical indexes are rewritten); its dense index report."""
    from shoprank.conversion.catalog_job import CatalogJobConfig
    from shoprank.conversion.catalog_job import run as run_catalog_job

    dense = {f.name: getattr(config, f.name) for f in fields(DenseIndexOptions)}
    job = CatalogJobConfig(out=config.out, workers=config.catalog_workers, **dense)
    return run_catalog_job(job)["dense_index"]


def run(config: ConversionConfig) -> dict:
    """Convert the trained artifacts below `config.out`; return (and write) the report."""
    if config.catalog_job not in ("local", "ray"):
        raise ValueError(f"--catalog-job must be local or ray, got {config.catalog_job!r}")
    inp = read_inputs(config)
    fp32 = export_fp32(inp, config)
    choice = choose_encoder(inp, fp32, config)
    ranker = export_ranker(inp, fp32)
    sequential = export_recommender(inp)
    if config.catalog_job == "ray":
        dense = ray_catalog_job(config)
    else:
        dense = dense_index(inp, fp32, config)
    report = {
        "config": config_to_dict(config),
        "fused": fp32.fused,
        "opset": onnx.load(str(inp.paths.encoder_onnx), load_external_data=False)
        .opset_import[0]
        .version,
        "parity": {
            "queries": asdict(fp32.parity_queries),
            "products": asdict(fp32.parity_products),
            "ranker_max_abs_diff": ranker.pop("max_abs_diff"),
        },
        "variants": {v.name: v.to_json() for v in choice.variants},
        SELECTED_ENCODER_KEY: choice.selected.name,
        "tensorrt": choice.tensorrt.to_json(),
        "ranker": ranker,
        "dense_index": dense,
        "sequential": sequential,
    }
    inp.paths.conversion_report.write_text(json.dumps(report, indent=2))
    inp.paths.conversion_report_md.write_text("\n".join(report_lines(report)) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    setup_logging("shoprank")
    report = run(parse_config(ConversionConfig, argv, description=__doc__ or ""))
    print("\n".join(report_lines(report)))
