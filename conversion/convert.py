"""The conversion stage: export, fuse, check parity, quantize, gate on quality, report.

    python -m conversion --out artifacts/demo

reads the trained encoder and ranker from `--out`, writes the ONNX variants and
`onnx/conversion_report.{json,md}`, and records which encoder variant the model
repository should serve: the fastest one within the quality budget.
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
from conversion import export, quantize
from training import datasets
from training.fusion import load_ranker
from training.metrics import mean_metrics
from training.train import load_item_index, rank_catalog

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


def _encoder_dims(encoder_dir: Path) -> tuple[int, int]:
    cfg = json.loads((encoder_dir / "config.json").read_text())
    return int(cfg["num_attention_heads"]), int(cfg["hidden_size"])


def heldout_texts(data: datasets.ShopData, n: int) -> tuple[list[str], list[str]]:
    """Held-out query texts (test split) and a sample of product texts."""
    queries = data.queries[data.queries["split"] == "test"]["query"].tolist()
    products = list(datasets.product_text(data.catalog.head(max(1, n // 2))))
    return queries, products[: n // 2]


def ndcg_of(
    embeddings: np.ndarray,
    data: datasets.ShopData,
    index: dict[str, np.ndarray],
) -> dict[str, float]:
    """Retrieval metrics of test queries embedded as `embeddings` against the item index."""
    queries = data.queries[data.queries["split"] == "test"]
    rankings = dict(
        zip(
            queries["query_id"].tolist(),
            rank_catalog(embeddings, index["embeddings"], index["product_ids"]),
            strict=True,
        )
    )
    judged = data.judgements[data.judgements["query_id"].isin(rankings)]
    grades = {
        int(q): dict(zip(g["product_id"].tolist(), g["relevance"].tolist(), strict=True))
        for q, g in judged.groupby("query_id")
    }
    return mean_metrics(rankings, grades)


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
    raw = export.export_encoder(paths.encoder, paths.onnx / "encoder.raw.onnx")
    heads, hidden = _encoder_dims(paths.encoder)
    fused = export.fuse_encoder(raw, paths.encoder_onnx, heads, hidden)
    if not fused:
        shutil.copyfile(raw, paths.encoder_onnx)
    raw.unlink()
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
    variants = {
        "fp32": {"path": paths.encoder_onnx, "cosine": 1.0, "quality": fp32_quality},
        "int8_dynamic": {
            "path": paths.encoder_int8_onnx,
            "cosine": int8_cos.mean_cosine,
            "min_cosine": int8_cos.min_cosine,
            "quality": int8_quality,
        },
    }
    for name, v in variants.items():
        v["size_mb"] = quantize.file_mb(v["path"])
        v["latency"] = asdict(
            quantize.measure_latency(v["path"], feeds, config.latency_runs, threads=config.threads)
        )
        try:
            gate.check(name, v["cosine"], v["quality"]["ndcg@10"], fp32_quality["ndcg@10"])
            v["accepted"], v["reason"] = True, ""
        except quantize.QualityError as exc:
            v["accepted"], v["reason"] = False, str(exc)
            log.warning("refused: %s", exc)
    accepted = [n for n, v in variants.items() if v["accepted"]]
    selected = min(accepted, key=lambda n: variants[n]["latency"]["p50_ms"])

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
        lines.append(
            f"| {name} | {v['size_mb']} | {v['latency']['p50_ms']:.2f} | "
            f"{v['cosine']:.4f} | {v['quality']['ndcg@10']:.4f} | "
            f"{'yes' if v['accepted'] else 'no: ' + v['reason']} |"
        )
    lines += ["", f"Served encoder: **{report['selected_encoder']}**"]
    return lines


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    setup_logging("conversion")
    report = run(parse_config(ConversionConfig, argv, description=__doc__ or ""))
    print("\n".join(report_lines(report)))
