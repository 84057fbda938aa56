"""The conversion stage: export, fuse, check parity, quantize, gate on quality, report.

    python -m conversion --out artifacts/demo

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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

import contract
from configargs import config_to_dict, parse_config, setup_logging
from conversion import export, quantize, tensorrt
from training import datasets
from training.encoder import tokenizer_file
from training.fusion import load_ranker
from training.metrics import mean_metrics, top_k_rankings
from training.train import load_item_index

log = logging.getLogger(__name__)


@dataclass
class ConversionConfig:
    """Knobs of the conversion stage; each is a command-line flag."""

    out: Path = field(default=contract.DEFAULT_ARTIFACTS, metadata={"help": "artifact folder"})
    min_parity_cosine: float = field(default=0.999, metadata={"help": "fp32 ONNX vs PyTorch"})
    min_cosine: float = field(default=0.95, metadata={"help": "quantized vs fp32, mean"})
    max_ndcg_loss: float = field(default=0.01, metadata={"help": "relative NDCG@10 budget"})
    latency_runs: int = 50
    threads: int = 1
    parity_texts: int = 256
    static_qdq: bool = field(default=True, metadata={"help": "try the int8_static_qdq variant"})
    calibration_texts: int = field(
        default=256, metadata={"help": "static QDQ calibration: train queries + product texts"}
    )
    selection_texts: int = field(
        default=256, metadata={"help": "val queries that choose the QDQ exclusion set"}
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
    trt_seq_opt: int = 2 * contract.SEQUENCE_BUCKET
    trt_seq_max: int = field(
        default=contract.MAX_QUERY_TOKENS, metadata={"help": "TensorRT profile max tokens"}
    )
    trt_workspace_gb: float = 2.0

    def trt_profile(self) -> tensorrt.OptimizationProfile:
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


STATIC_QDQ_ONNX = "encoder.int8_qdq.onnx"


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
        calibration=quantize.calibration_feeds(tok, cal_q, contract.MAX_QUERY_TOKENS)
        + quantize.calibration_feeds(tok, cal_p, contract.MAX_PRODUCT_TOKENS),
        selection=quantize.calibration_feeds(tok, sel, contract.MAX_QUERY_TOKENS, 64),
        test=quantize.calibration_feeds(
            tok, test, contract.MAX_QUERY_TOKENS, min(64, config.trt_max_batch)
        ),
        sample=quantize.calibration_feeds(tok, ["red leather sofa"])[0],
        counts={
            "calibration_queries": len(cal_q),
            "calibration_products": len(cal_p),
            "selection_queries": len(sel),
        },
    )


def _search_summary(search: quantize.ExclusionSearch, inputs: QDQInputs) -> dict:
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
    unfused: Path,
    inputs: QDQInputs,
    config: ConversionConfig,
    fp32_q: np.ndarray,
    queries: list[str],
    data: datasets.ShopData,
    index: dict[str, np.ndarray],
    latency_feeds: dict[str, np.ndarray],
) -> dict:
    """The int8_static_qdq variant: exclusion search, then the same measures as the others."""
    out = paths.onnx / STATIC_QDQ_ONNX
    work = paths.onnx / "qdq_work"
    try:
        search = quantize.search_exclusions(
            unfused,
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
        return {"path": None, "accepted": False, "reason": f"static QDQ failed: {exc}"}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    emb = export.onnx_embeddings(out, paths.encoder, queries, contract.MAX_QUERY_TOKENS)
    cos = export.cosine_parity(fp32_q, emb)
    return {
        "path": out,
        "cosine": cos.mean_cosine,
        "min_cosine": cos.min_cosine,
        "quality": ndcg_of(emb, data, index),
        "static_qdq": _search_summary(search, inputs),
    }


def _apply_gate(gate: quantize.QualityGate, name: str, entry: dict, fp32_ndcg: float) -> None:
    """Mark a variant's report `entry` accepted, or refused with the gate's reason."""
    try:
        gate.check(name, entry["cosine"], entry["quality"]["ndcg@10"], fp32_ndcg)
        entry["accepted"], entry["reason"] = True, ""
    except quantize.QualityError as exc:
        entry["accepted"], entry["reason"] = False, str(exc)
        log.warning("refused: %s", exc)


def _tensorrt_engines(
    paths: contract.ArtifactPaths,
    config: ConversionConfig,
    available: bool,
    inputs: QDQInputs | None,
    unfused: Path,
    gate: quantize.QualityGate,
    fp32_quality: dict[str, float],
    data: datasets.ShopData,
    index: dict[str, np.ndarray],
) -> dict:
    """Build, check and select TensorRT plans; without a GPU, the reason they were skipped."""
    trt_config = tensorrt.TensorRTConfig(
        profile=config.trt_profile(),
        workspace_gb=config.trt_workspace_gb,
        latency_runs=config.latency_runs,
    )
    if not config.tensorrt:
        log.info("TensorRT engines skipped: disabled (--no-tensorrt)")
        return {
            "available": False,
            "reason": "disabled (--no-tensorrt)",
            "profile": asdict(trt_config.profile),
            "engines": {},
            "selected_plan": None,
        }
    if not available or inputs is None:
        report = tensorrt.build_all(paths, trt_config)  # logs and records why it skipped
        report["selected_plan"] = None
        return report

    # TensorRT takes symmetric int8 only: a QDQ graph of its own, chosen the same way.
    sym = paths.onnx / tensorrt.SOURCE_INT8_QDQ_ONNX
    work = paths.onnx / "qdq_work"
    int8_qdq: dict
    try:
        search = quantize.search_exclusions(
            unfused,
            sym,
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
    report["int8_qdq"] = int8_qdq

    can_run, why_not = tensorrt.can_run_engines()
    reference = quantize.embed_feeds(paths.encoder_onnx, inputs.test) if can_run else None
    for precision, engine in report["engines"].items():
        if not engine["built"]:
            engine["accepted"], engine["reason"] = False, engine.get("error", "not built")
            continue
        if reference is None:
            # Unchecked: fp16 of a parity-checked graph is served, int8 never unchecked.
            engine["accepted"] = precision == "fp16"
            engine["reason"] = f"not checked on the GPU: {why_not}"
            continue
        try:
            emb = tensorrt.engine_embeddings(Path(engine["plan"]), inputs.test)
        except Exception as exc:  # a plan that builds but cannot run must not be served
            engine["accepted"], engine["reason"] = False, f"engine failed to run: {exc}"
            log.warning("TensorRT %s engine failed to run: %s", precision, exc)
            continue
        cos = quantize.row_cosine(reference, emb)
        engine["cosine"], engine["min_cosine"] = float(cos.mean()), float(cos.min())
        engine["quality"] = ndcg_of(emb, data, index)
        _apply_gate(gate, f"tensorrt_{precision}", engine, fp32_quality["ndcg@10"])
    accepted = [p for p, e in report["engines"].items() if e.get("accepted")]
    timed = all("latency" in report["engines"][p] for p in accepted)
    best = min(
        accepted,
        # Fastest if every candidate was timed; otherwise fp16, the safer plan.
        key=lambda p: report["engines"][p]["latency"]["p50_ms"] if timed else p != "fp16",
        default=None,
    )
    report["selected_plan"] = tensorrt.PLAN_FILES[best] if best else None
    return report


def run(config: ConversionConfig) -> dict:
    """Convert the trained artifacts below `config.out`; return the report."""
    paths = contract.ArtifactPaths(Path(config.out))
    if not paths.encoder.exists():
        raise FileNotFoundError(f"no trained encoder at {paths.encoder}: run `make train` first")
    data = datasets.load(paths)
    index = load_item_index(paths.item_index)
    queries, products = heldout_texts(data, config.parity_texts)
    gate = quantize.QualityGate(min_cosine=config.min_cosine, max_ndcg_loss=config.max_ndcg_loss)
    paths.onnx.mkdir(parents=True, exist_ok=True)

    # fp32: export, fuse, parity against PyTorch on held-out queries and products.
    raw = paths.onnx / "encoder.raw.onnx"
    fused = export.export_fused_encoder(paths.encoder, raw, paths.encoder_onnx)
    parity_q = export.check_encoder_parity(
        paths.encoder_onnx,
        paths.encoder,
        queries,
        contract.MAX_QUERY_TOKENS,
        config.min_parity_cosine,
    )
    parity_p = export.check_encoder_parity(
        paths.encoder_onnx,
        paths.encoder,
        products,
        contract.MAX_PRODUCT_TOKENS,
        config.min_parity_cosine,
    )
    fp32_q = export.onnx_embeddings(
        paths.encoder_onnx, paths.encoder, queries, contract.MAX_QUERY_TOKENS
    )
    fp32_quality = ndcg_of(fp32_q, data, index)

    quantize.quantize_dynamic_int8(paths.encoder_onnx, paths.encoder_int8_onnx)
    int8_q = export.onnx_embeddings(
        paths.encoder_int8_onnx, paths.encoder, queries, contract.MAX_QUERY_TOKENS
    )
    int8_cos = export.cosine_parity(fp32_q, int8_q)
    int8_quality = ndcg_of(int8_q, data, index)

    feeds = export.tokenize(paths.encoder, ["red leather sofa"], contract.MAX_QUERY_TOKENS)
    variants: dict[str, dict] = {
        "fp32": {"path": paths.encoder_onnx, "cosine": 1.0, "quality": fp32_quality},
        "int8_dynamic": {
            "path": paths.encoder_int8_onnx,
            "cosine": int8_cos.mean_cosine,
            "min_cosine": int8_cos.min_cosine,
            "quality": int8_quality,
        },
    }

    # Static QDQ and TensorRT start from the unfused graph (standard ONNX ops only).
    trt_ok = tensorrt.available()[0] if config.tensorrt else False
    unfused = paths.onnx / tensorrt.SOURCE_FP32_ONNX
    qdq_inputs = None
    if config.static_qdq or trt_ok:
        quantize.prepare_for_qdq(raw, unfused)
        qdq_inputs = _qdq_inputs(paths, data, config)
    raw.unlink()
    if config.static_qdq and qdq_inputs is not None:
        variants["int8_static_qdq"] = _static_qdq_variant(
            paths, unfused, qdq_inputs, config, fp32_q, queries, data, index, feeds
        )

    for name, v in variants.items():
        if v.get("path") is None:
            continue  # the variant could not be produced; its reason says why
        v["size_mb"] = quantize.file_mb(v["path"])
        v["latency"] = asdict(
            quantize.measure_latency(v["path"], feeds, config.latency_runs, threads=config.threads)
        )
        _apply_gate(gate, name, v, fp32_quality["ndcg@10"])
    accepted = [n for n, v in variants.items() if v["accepted"]]
    selected = min(accepted, key=lambda n: variants[n]["latency"]["p50_ms"])

    trt_report = _tensorrt_engines(
        paths, config, trt_ok, qdq_inputs, unfused, gate, fp32_quality, data, index
    )
    if not trt_report.get("engines"):
        unfused.unlink(missing_ok=True)  # only TensorRT needs it once the variants exist

    ranker = load_ranker(paths.ranker)
    export.export_ranker(ranker, paths.ranker_onnx)
    ranker_diff = export.check_ranker_parity(paths.ranker_onnx, ranker, fp32_q[:32])

    report = {
        "config": config_to_dict(config),
        "fused": fused,
        "opset": onnx.load(str(paths.encoder_onnx), load_external_data=False)
        .opset_import[0]
        .version,
        "parity": {
            "queries": asdict(parity_q),
            "products": asdict(parity_p),
            "ranker_max_abs_diff": ranker_diff,
        },
        "variants": {
            n: {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}
            for n, d in variants.items()
        },
        "selected_encoder": selected,
        "tensorrt": trt_report,
        "ranker": {"path": str(paths.ranker_onnx), "size_mb": quantize.file_mb(paths.ranker_onnx)},
    }
    paths.conversion_report.write_text(json.dumps(report, indent=2))
    paths.conversion_report.with_suffix(".md").write_text("\n".join(report_lines(report)) + "\n")
    return report


def selected_encoder_path(paths: contract.ArtifactPaths) -> Path:
    """The encoder ONNX the conversion report selected (fp32 if there is no report)."""
    if paths.conversion_report.exists():
        report = json.loads(paths.conversion_report.read_text())
        return Path(report["variants"][report["selected_encoder"]]["path"])
    return paths.encoder_onnx


def report_lines(report: dict) -> list[str]:
    """The conversion report as a Markdown table."""
    p = report["parity"]
    lines = [
        "# Conversion report",
        "",
        f"fp32 ONNX vs PyTorch: min cosine {p['queries']['min_cosine']:.6f} (queries), "
        f"{p['products']['min_cosine']:.6f} (products); ranker max |Δscore| "
        f"{p['ranker_max_abs_diff']:.2e}; graph fused: {report['fused']}",
        "",
        "| variant | size MB | p50 ms (batch 1) | cosine vs fp32 | NDCG@10 | accepted |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in report["variants"].items():
        if v.get("path") is None:
            lines.append(f"| {name} | - | - | - | - | no: {v['reason']} |")
            continue
        lines.append(
            f"| {name} | {v['size_mb']} | {v['latency']['p50_ms']:.2f} | "
            f"{v['cosine']:.4f} | {v['quality']['ndcg@10']:.4f} | "
            f"{'yes' if v['accepted'] else 'no: ' + v['reason']} |"
        )
    lines += ["", f"Served encoder: **{report['selected_encoder']}**"]
    qdq = report["variants"].get("int8_static_qdq", {}).get("static_qdq")
    if qdq:
        lines += ["", *_search_lines("Static QDQ exclusion search (CPU, uint8 activations)", qdq)]
    lines += ["", *_tensorrt_lines(report.get("tensorrt", {}))]
    return lines


def _search_lines(title: str, qdq: dict) -> list[str]:
    lines = [
        f"## {title}",
        "",
        f"Calibrated on {qdq['calibration_queries']} train queries + "
        f"{qdq['calibration_products']} product texts; chosen on "
        f"{qdq['selection_queries']} val queries ({qdq['rule']}): **{qdq['exclusion']}** "
        f"({qdq['description']}); {qdq['seconds']:.0f}s.",
        "",
        "| exclusion set | mean cosine | min cosine | Q/DQ nodes | size MB | p50 ms |",
        "|---|---|---|---|---|---|",
    ]
    for t in qdq["trials"]:
        p50 = f"{t['p50_ms']:.2f}" if t["p50_ms"] is not None else "-"
        lines.append(
            f"| {t['name']} | {t['mean_cosine']:.4f} | {t['min_cosine']:.4f} | "
            f"{t['qdq_nodes']} | {t['size_mb']} | {p50} |"
        )
    return lines


def _tensorrt_lines(trt: dict) -> list[str]:
    profile = trt.get("profile", {})
    shape = (
        f"batch {profile['min_batch']}/{profile['opt_batch']}/{profile['max_batch']}, "
        f"tokens {profile['min_seq']}/{profile['opt_seq']}/{profile['max_seq']} (min/opt/max)"
        if profile
        else ""
    )
    if not trt.get("engines"):
        why = trt.get("reason", "not attempted")
        return [f"TensorRT engines skipped: {why}. Profile: {shape}."]
    lines = [
        f"## TensorRT ({trt['reason']}); profile {shape}",
        "",
        "| plan | build s | size MB | p50 ms (batch 1) | cosine vs fp32 | NDCG@10 | accepted |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in trt["engines"].values():
        lat = e.get("latency", {}).get("p50_ms")
        verdict = "yes" if e.get("accepted") else "no"
        cos, ndcg = e.get("cosine"), e.get("quality", {}).get("ndcg@10")
        lines.append(
            f"| {Path(e['plan']).name} | {e.get('build_s', '-')} | {e.get('size_mb', '-')} | "
            f"{f'{lat:.2f}' if lat is not None else '-'} | "
            f"{f'{cos:.4f}' if cos is not None else '-'} | "
            f"{f'{ndcg:.4f}' if ndcg is not None else '-'} | "
            f"{verdict}{': ' + e['reason'] if e.get('reason') else ''} |"
        )
    if "int8_qdq" in trt and "exclusion" in trt["int8_qdq"]:
        lines += ["", *_search_lines("Static QDQ for TensorRT (int8 symmetric)", trt["int8_qdq"])]
    lines += ["", f"Served plan (GPU repository): **{trt.get('selected_plan')}**"]
    return lines


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    setup_logging("conversion")
    report = run(parse_config(ConversionConfig, argv, description=__doc__ or ""))
    print("\n".join(report_lines(report)))
