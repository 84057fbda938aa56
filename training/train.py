"""The training stage end to end: data → zero-shot eval → fine-tune → item index → fusion.

    python -m training --out artifacts/demo --scale demo

writes everything below `--out` at the places named by `contract.ArtifactPaths`, and
`metrics.json` comparing the zero-shot and fine-tuned encoder and the fusion ranker.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

import contract
from configargs import config_to_dict, parse_config, setup_logging
from training import behaviour, datasets, encoder, finetune
from training.fusion import FusionRanker, TextOnlyRanker, save_ranker
from training.metrics import mean_metrics

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Every knob of the training stage; each is a command-line flag."""

    out: Path = field(default=contract.DEFAULT_ARTIFACTS, metadata={"help": "output folder"})
    scale: str = field(default="demo", metadata={"help": "synthetic data scale: tiny|demo|full"})
    data: str = field(default="", metadata={"help": "bring-your-own data file/folder"})
    data_format: str = field(default="auto", metadata={"help": "format of --data"})
    regenerate: bool = field(default=False, metadata={"help": "rebuild data even if present"})
    seed: int = 0
    encoder_path: str = field(
        default="", metadata={"help": "HF/ST encoder folder; default: packaged all-MiniLM-L6-v2"}
    )
    tiny_encoder: bool = field(default=False, metadata={"help": "random tiny BERT (tests)"})
    max_steps: int = 300
    batch_size: int = 32
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.1
    max_product_tokens: int = contract.MAX_PRODUCT_TOKENS
    embed_batch_size: int = 128
    fusion_epochs: int = 3
    fusion_batch_size: int = 1024
    fusion_lr: float = 0.02


def load_data(config: TrainConfig, paths: contract.ArtifactPaths) -> datasets.ShopData:
    """User data if given, else the synthetic shop (generated once, then reused)."""
    if config.data:
        from training.loaders import load_any

        data = load_any(config.data, fmt=config.data_format)
        datasets.save(data, paths)
        return data
    if paths.catalog.exists() and not config.regenerate:
        return datasets.load(paths)
    from training.synthetic import generate

    data = generate(scale=config.scale, seed=config.seed)
    datasets.save(data, paths)
    return data


def rank_catalog(
    query_emb: np.ndarray, item_emb: np.ndarray, product_ids: np.ndarray, k: int = 100
) -> list[list[int]]:
    """Top-k product ids per query by cosine, best first."""
    scores = query_emb @ item_emb.T  # (Q, N)
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
    return [product_ids[row].tolist() for row in np.take_along_axis(top, order, axis=1)]


def judged_metrics(
    model, data: datasets.ShopData, item_emb: np.ndarray, split: str, batch_size: int
) -> dict[str, float]:
    """NDCG@10 / Recall@10,100 / MRR of full-catalog retrieval on `split` queries."""
    queries = data.queries[data.queries["split"] == split]
    q_emb = encoder.embed(
        model,
        queries["query"].tolist(),
        batch_size=batch_size,
        max_seq_length=contract.MAX_QUERY_TOKENS,
    )
    product_ids = data.catalog["product_id"].to_numpy()
    rankings = dict(
        zip(queries["query_id"].tolist(), rank_catalog(q_emb, item_emb, product_ids), strict=True)
    )
    judged = data.judgements[data.judgements["query_id"].isin(rankings)]
    grades = {
        int(q): dict(zip(g["product_id"].tolist(), g["relevance"].tolist(), strict=True))
        for q, g in judged.groupby("query_id")
    }
    return mean_metrics(rankings, grades)


def embed_catalog(model, data: datasets.ShopData, config: TrainConfig, desc: str) -> np.ndarray:
    texts = datasets.product_text(data.catalog)
    return encoder.embed(
        model,
        list(texts),
        batch_size=config.embed_batch_size,
        max_seq_length=config.max_product_tokens,
        progress=True,
        desc=desc,
    )


def save_item_index(
    path: Path, product_ids: np.ndarray, embeddings: np.ndarray, features: np.ndarray
) -> None:
    """Catalog ids, embeddings (N, D) and behaviour features (N, F) in one safetensors file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "product_ids": product_ids.astype(np.int64),
            "embeddings": embeddings,
            "features": features.astype(np.float32),
        },
        str(path),
    )


def load_item_index(path: Path) -> dict[str, np.ndarray]:
    """Inverse of save_item_index."""
    return load_file(str(path))


def run(config: TrainConfig) -> dict:
    """Run the whole training stage; return (and write) the metrics."""
    torch.manual_seed(config.seed)
    paths = contract.ArtifactPaths(Path(config.out))
    started = time.perf_counter()
    data = load_data(config, paths)
    datasets.validate(data)
    log.info(
        "data: %d products, %d queries, %d judgements, %s events",
        len(data.catalog),
        len(data.queries),
        len(data.judgements),
        "no" if data.events is None else len(data.events),
    )

    if config.tiny_encoder:
        base_path = encoder.make_tiny_encoder(paths.model / "tiny_init", seed=config.seed)
    else:
        base_path = Path(config.encoder_path) if config.encoder_path else None
    model = encoder.load_encoder(base_path, config.max_product_tokens)
    eval_split = "test"

    item_emb = embed_catalog(model, data, config, "embed catalog (zero-shot)")
    zero_shot = judged_metrics(model, data, item_emb, eval_split, config.embed_batch_size)
    log.info("zero-shot %s", zero_shot)

    pairs = finetune.training_pairs(data, "train", seed=config.seed)
    ft_config = finetune.FinetuneConfig(
        max_steps=config.max_steps,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        warmup_ratio=config.warmup_ratio,
        seed=config.seed,
    )
    encoder_curve = finetune.finetune(model, pairs, ft_config, paths.model / "trainer")
    model.save(str(paths.encoder))

    item_emb = embed_catalog(model, data, config, "embed catalog (fine-tuned)")
    fine_tuned = judged_metrics(model, data, item_emb, eval_split, config.embed_batch_size)
    log.info("fine-tuned %s", fine_tuned)

    product_ids = data.catalog["product_id"].to_numpy(np.int64)
    row_of = {int(p): i for i, p in enumerate(product_ids)}
    events = data.events
    feats = (
        behaviour.item_features(events[events["split"] == "train"], product_ids)
        if events is not None
        else np.zeros((len(product_ids), 2), np.float32)
    )
    save_item_index(paths.item_index, product_ids, item_emb, feats)

    ranker = FusionRanker(torch.from_numpy(item_emb), torch.from_numpy(feats))
    fusion_report: dict = {"trained": False}
    if events is not None:
        query_ids = data.queries["query_id"].to_numpy()
        q_emb = encoder.embed(
            model,
            data.queries["query"].tolist(),
            batch_size=config.embed_batch_size,
            max_seq_length=contract.MAX_QUERY_TOKENS,
        )
        query_row_of = {int(q): i for i, q in enumerate(query_ids)}
        histories = behaviour.session_histories(events, row_of)
        train_ex = behaviour.build_examples(events, "train", query_row_of, row_of, histories)
        test_ex = behaviour.build_examples(events, "test", query_row_of, row_of, histories)
        fusion_curve = behaviour.train_fusion(
            ranker,
            q_emb,
            train_ex,
            epochs=config.fusion_epochs,
            batch_size=config.fusion_batch_size,
            lr=config.fusion_lr,
            seed=config.seed,
        )
        text_only = TextOnlyRanker(torch.from_numpy(item_emb), torch.from_numpy(feats)).eval()
        fusion_report = {
            "trained": True,
            "alpha": float(ranker.alpha.detach()),
            "feature_weights": ranker.feature_weights.detach().tolist(),
            "train_impressions": len(train_ex),
            "text_only": behaviour.evaluate_sessions(text_only, q_emb, test_ex),
            "weighted_fusion": behaviour.evaluate_sessions(ranker, q_emb, test_ex),
            "loss_curve": fusion_curve,
        }
        log.info("fusion α=%.3f %s", fusion_report["alpha"], fusion_report["weighted_fusion"])
    save_ranker(ranker, paths.ranker)

    metrics = {
        "config": config_to_dict(config),
        "data": {
            "products": len(data.catalog),
            "queries": len(data.queries),
            "judgements": len(data.judgements),
            "events": 0 if events is None else len(events),
        },
        "retrieval": {"split": eval_split, "zero_shot": zero_shot, "fine_tuned": fine_tuned},
        "encoder_loss_curve": encoder_curve,
        "fusion": fusion_report,
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    paths.metrics.write_text(json.dumps(metrics, indent=2))
    return metrics


def summary_lines(metrics: dict) -> list[str]:
    """Human-readable summary of metrics.json."""
    r = metrics["retrieval"]
    lines = [
        f"retrieval on {r['zero_shot']['queries']} held-out queries (NDCG@10 / Recall@100 / MRR):",
        *(
            f"  {name:<11} {m['ndcg@10']:.4f} / {m['recall@100']:.4f} / {m['mrr']:.4f}"
            for name, m in (("zero-shot", r["zero_shot"]), ("fine-tuned", r["fine_tuned"]))
        ),
    ]
    f = metrics["fusion"]
    if f.get("trained"):
        lines.append(
            f"fusion on held-out sessions (α = {f['alpha']:.3f}) (click AUC / purchase-NDCG@10):"
        )
        for name in ("text_only", "weighted_fusion"):
            m = f[name]
            lines.append(f"  {name:<16} {m['click_auc']:.4f} / {m['purchase_ndcg@10']:.4f}")
    lines.append(f"training took {metrics['train_seconds']} s")
    return lines


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    setup_logging("training")
    config = parse_config(TrainConfig, argv, description=__doc__ or "")
    metrics = run(config)
    print("\n".join(summary_lines(metrics)))
