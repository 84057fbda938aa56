"""The training stage end to end: data → fine-tune → hybrid relevance → behaviour fusion.

    python -m shoprank.training --out artifacts/demo --scale demo

writes everything below `--out` at the places named by `contract.ArtifactPaths`:

1. the fine-tuned encoder and the catalog's embeddings (`model/encoder`, item index);
2. the lexical index (BM25 over the product fields) and the item tables;
3. stage A, the learned hybrid: candidates of every judged query from the dense scan and
   BM25, a relevance model (dense + lexical features) trained on them (training/hybrid.py);
4. stage B, the fusion ranker's behaviour part trained on the click logs
   (training/behaviour.py), its re-rank depth chosen on validation queries;
5. `metrics.json` with every retrieval stage (BM25, dense, RRF, learned hybrid) and the
   fusion variants. `python -m shoprank.training.evaluate` adds the baselines (zero-shot,
   popularity) and the served pipeline's own metrics.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from shoprank import contract
from shoprank.configargs import config_to_dict, parse_config, setup_logging, user_errors
from shoprank.core.ann import DenseConfig, DenseIndex
from shoprank.core.features import USER_ITEM_FEATURES, ItemTables
from shoprank.core.lexical import LexicalIndex, tokenize
from shoprank.core.ranking import CandidateConfig, RetrievalConfig
from shoprank.core.scoring import combine
from shoprank.data import datasets
from shoprank.data.artifacts import save_item_index
from shoprank.data.metrics import (
    CLICK_AUC,
    HIT_RATE_AT_10,
    MRR,
    NDCG_AT_10,
    PURCHASE_NDCG_AT_10,
    RECALL_AT_100,
    mean_metrics,
    paired_bootstrap_gain,
    top_k_rankings,
)
from shoprank.models.encoder import embed, load_encoder
from shoprank.models.fusion import FusionRanker, as_tensors, save_ranker
from shoprank.training import behaviour, finetune, hybrid, recommend
from shoprank.training.base_encoder import base_encoder_path, embed_onnx
from shoprank.training.finetune import FinetuneConfig
from shoprank.training.seq_in_search import LAMBDAS, fit_sequential_weight, parse_lambdas
from shoprank.training.sources import DataSource, EncoderSource

log = logging.getLogger(__name__)

# Held-out queries every retrieval metric of training is reported on.
EVAL_SPLIT = "test"


@dataclass
class TrainConfig(DataSource, EncoderSource, FinetuneConfig, CandidateConfig):
    """Every knob of the training stage; each is a command-line flag. Data, base encoder,
    fine-tuning and candidate counts are declared by the configs it extends."""

    out: Path = field(default=contract.DEFAULT_ARTIFACTS, metadata={"help": "output folder"})
    scale: str = field(default="demo", metadata={"help": "synthetic data scale: tiny|demo|full"})
    regenerate: bool = field(default=False, metadata={"help": "rebuild data even if present"})
    embed_backend: str = field(default="onnx", metadata={"help": "catalog embedding: onnx|torch"})
    fusion_negatives: int = field(
        default=4, metadata={"help": "random catalog negatives per impression"}
    )
    fusion_epochs: int = 2
    fusion_batch_size: int = 1024
    fusion_lr: float = 0.02
    mlm_steps: int = field(default=0, metadata={"help": "domain-adaptive MLM steps (0 = off)"})
    reuse_encoder: bool = field(
        default=False,
        metadata={"help": "keep OUT's fine-tuned encoder; retrain only retrieval and ranking"},
    )
    max_relevance_loss: float = field(
        default=0.02,
        metadata={"help": "relevance (val NDCG@10) the behaviour re-ranking may cost, relative"},
    )
    seq_epochs: int = field(default=4, metadata={"help": "sequential recommender epochs"})
    seq_layers: int = field(default=2, metadata={"help": "sequential recommender blocks"})
    seq_batch_size: int = 128
    seq_negatives: int = field(
        default=0, metadata={"help": "sampled softmax negatives (0: the whole catalog)"}
    )
    seq_in_search: str = field(
        default=LAMBDAS,
        metadata={
            "help": "weights λ of the served recommender's score in search, chosen on "
            "validation sessions (one value: that weight; 0: off)"
        },
    )
    fusions: str = field(
        default="weighted,concat_mlp,target_attention",
        metadata={"help": "comma-separated fusion variants to train"},
    )
    relevance_kinds: str = field(
        default="0,16", metadata={"help": "relevance models to try: 0 linear, N MLP width"}
    )


def load_data(config: TrainConfig, paths: contract.ArtifactPaths) -> datasets.ShopData:
    """User data if given, else the synthetic shop (generated once, then reused)."""
    if config.data:
        from shoprank.training.loaders import load_any

        data = load_any(config.data, fmt=config.data_format, encoding=config.data_encoding)
        datasets.save(data, paths)
        return data
    if paths.catalog.exists() and not config.regenerate:
        return datasets.load(paths)
    from shoprank.training.synthetic import generate

    data = generate(scale=config.scale, seed=config.seed)
    datasets.save(data, paths)
    return data


def judged_metrics(
    model, data: datasets.ShopData, item_emb: np.ndarray, split: str, batch_size: int
) -> dict[str, float]:
    """NDCG@10 / Recall@10,100 / MRR of full-catalog retrieval on `split` queries."""
    queries = data.queries[data.queries["split"] == split]
    q_emb = embed(
        model,
        queries["query"].tolist(),
        batch_size=batch_size,
        max_seq_length=contract.MAX_QUERY_TOKENS,
    )
    product_ids = data.catalog["product_id"].to_numpy()
    rankings = top_k_rankings(q_emb @ item_emb.T, queries["query_id"].tolist(), product_ids)
    return mean_metrics(rankings, datasets.judgement_grades(data, list(rankings)))


def embed_catalog(
    model, encoder_dir: Path, data: datasets.ShopData, config: TrainConfig, desc: str
) -> np.ndarray:
    """Embeddings of every catalog product, (N, D), in catalog order."""
    texts = datasets.product_text(data.catalog)
    if config.embed_backend == "onnx":
        return embed_onnx(
            encoder_dir,
            list(texts),
            contract.ArtifactPaths(Path(config.out)).model / "tmp",
            batch_size=config.embed_batch_size,
            max_seq_length=config.max_product_tokens,
            desc=desc,
        )
    return embed(
        model,
        list(texts),
        batch_size=config.embed_batch_size,
        max_seq_length=config.max_product_tokens,
        progress=True,
    )


@torch.no_grad()
def cold_start_scores(
    ranker: FusionRanker, qs: hybrid.QuerySet, item_emb: np.ndarray, tables: ItemTables
) -> tuple[np.ndarray, np.ndarray]:
    """(relevance, full score) of every candidate of `qs` with an empty history (Q, C)."""
    q, c = qs.cosine.shape
    dim = item_emb.shape[1]
    rows = np.zeros((q, c), np.int64)
    for i, cand in enumerate(qs.candidates):
        rows[i, : len(cand)] = cand
    relevance, full = ranker(
        *as_tensors(
            qs.embeddings,
            np.zeros((q, 1, dim), np.float32),
            np.zeros((q, 1), np.float32),
            item_emb[rows],
            qs.lexical,
            tables.item_features[rows],
            np.zeros((q, c, len(USER_ITEM_FEATURES)), np.float32),
        )
    )
    return relevance.numpy(), full.numpy()


def served_judged_metrics(
    ranker: FusionRanker,
    qs: hybrid.QuerySet,
    item_emb: np.ndarray,
    tables: ItemTables,
    data: datasets.ShopData,
    depth: int,
) -> dict[str, float]:
    """Judged-query metrics of the served ranking at cold start (relevance + item prior
    over the hybrid candidates, behaviour cut at `depth`).

    Guards the ranking a new shopper sees: a ranker that learned only popularity from
    logged impressions would score well on sessions and badly here.
    """
    relevance, full = cold_start_scores(ranker, qs, item_emb, tables)
    scores = combine(relevance, full, depth, qs.valid)
    product_ids = data.catalog["product_id"].to_numpy(np.int64)
    rankings = hybrid.rankings_from_scores(qs, scores, product_ids)
    return mean_metrics(rankings, datasets.judgement_grades(data, list(rankings)))


def choose_rerank_depth(
    ranker: FusionRanker,
    qs: hybrid.QuerySet,
    item_emb: np.ndarray,
    tables: ItemTables,
    data: datasets.ShopData,
    max_loss: float,
    depths: tuple[int, ...] = (256, 100, 50, 20, 10, 5),
) -> dict:
    """Re-rank depths: with a history, the deepest whose validation NDCG@10 stays within
    `max_loss` (relative) of ranking by relevance alone; with an empty one, the best.

    Click logs judge products the way shoppers click, judgements the way the catalog is
    described: letting behaviour reorder deep into the relevance ranking can trade
    relevance for popularity, so the depth is chosen on held-out queries, not assumed. A
    shopper with a history gains personalisation for that price; a new shopper gains only
    the item prior, so the cold-start depth (0 allowed) simply maximises judged NDCG@10.
    """
    relevance, _ = cold_start_scores(ranker, qs, item_emb, tables)
    grades = datasets.judgement_grades(data, qs.query_ids.tolist())
    base = hybrid.ndcg_of_scores(qs, np.where(qs.valid, relevance, -np.inf), grades)
    tried = {
        depth: served_judged_metrics(ranker, qs, item_emb, tables, data, depth)[NDCG_AT_10]
        for depth in (*depths, 0)
    }
    chosen = next((d for d in depths if tried[d] >= (1.0 - max_loss) * base), depths[-1])
    cold = max(sorted(tried), key=lambda d: tried[d])  # ties: the shallowest
    ranker.config.depth = chosen
    ranker.config.cold_start_depth = cold
    log.info(
        "re-rank depth %d, cold start %d (validation NDCG@10 by depth %s, relevance only %.4f)",
        chosen,
        cold,
        tried,
        base,
    )
    return {
        "depth": chosen,
        "cold_start_depth": cold,
        "val_ndcg@10": tried,
        "val_relevance_only_ndcg@10": base,
    }


def reused_encoder(paths: contract.ArtifactPaths, config: TrainConfig) -> tuple:
    """The fine-tuned encoder of an earlier run in OUT, with its recorded loss curves."""
    if not (paths.encoder / "config.json").exists():
        raise FileNotFoundError(f"--reuse-encoder: no fine-tuned encoder at {paths.encoder}")
    previous = json.loads(paths.metrics.read_text()) if paths.metrics.exists() else {}
    log.info("reusing the fine-tuned encoder at %s", paths.encoder)
    return (
        load_encoder(paths.encoder, config.max_product_tokens),
        previous.get("encoder_loss_curve", []),
        previous.get("mlm_loss_curve", []),
    )


def train_encoder(
    data: datasets.ShopData, paths: contract.ArtifactPaths, config: TrainConfig
) -> tuple:
    """Optional domain MLM, then fine-tuning on the judgements; saves the encoder."""
    base_path = base_encoder_path(
        config.encoder_path, config.tiny_encoder, paths.training_work, config.seed
    )
    model = load_encoder(base_path, config.max_product_tokens)
    # Hard negatives are mined with the encoder as shipped (before any adaptation); the
    # zero-shot baseline itself is measured by `training.evaluate`.
    query_emb = item_emb = None
    if config.hard_negatives:
        item_emb = embed_catalog(model, base_path, data, config, "embed catalog (shipped)")
        train_q = data.queries[data.queries["split"] == "train"]
        emb = embed(
            model, train_q["query"].tolist(), config.embed_batch_size, contract.MAX_QUERY_TOKENS
        )
        query_emb = dict(zip(train_q["query_id"].tolist(), emb, strict=True))

    mlm_curve: list[dict[str, float]] = []
    if config.mlm_steps > 0:
        from shoprank.training.mlm import domain_adapt

        base_path, mlm_curve = domain_adapt(
            base_path,
            list(datasets.product_text(data.catalog)),
            paths.model / "mlm",
            steps=config.mlm_steps,
            max_length=config.max_product_tokens,
            seed=config.seed,
        )
        model = load_encoder(base_path, config.max_product_tokens)

    train_sets = finetune.training_sets(
        data, query_emb, item_emb, config.hard_negatives, config.graded_loss, config.seed
    )
    encoder_curve = finetune.finetune_with_validation(
        model, data, train_sets, config, paths.model / "trainer"
    )
    model.save(str(paths.encoder))
    return model, encoder_curve, mlm_curve


@dataclass
class Encoded:
    """The fine-tuned encoder and what it embeds: the catalog and every query."""

    model: object
    items: np.ndarray  # (N, D) catalog order
    queries: np.ndarray  # (Q, D) data.queries order
    fine_tuned: dict[str, float]  # its full-catalog retrieval metrics on the eval split
    encoder_curve: list
    mlm_curve: list


@dataclass
class Relevance:
    """Stage A: the lexical index, the hybrid candidates per split, the relevance model."""

    lexical: LexicalIndex
    qsets: dict[str, hybrid.QuerySet]
    model: object
    report: dict
    stages: dict[str, dict]  # every retrieval stage's metrics on the eval split


@dataclass
class Fusion:
    """Stage B: the served fusion ranker (re-rank depths set) and its report."""

    ranker: FusionRanker
    report: dict
    examples: dict | None  # per split, None without event logs


@dataclass
class Recommendation:
    """Recommend mode: its metrics, and the sequential signal fitted for search."""

    metrics: dict
    sequential_in_search: RetrievalConfig | None  # the fitted weight and normalisation


def encode(data: datasets.ShopData, paths: contract.ArtifactPaths, config: TrainConfig) -> Encoded:
    """Fine-tune (or reuse) the encoder; embed the catalog and the queries."""
    if config.reuse_encoder:
        model, encoder_curve, mlm_curve = reused_encoder(paths, config)
    else:
        model, encoder_curve, mlm_curve = train_encoder(data, paths, config)
    items = embed_catalog(model, paths.encoder, data, config, "embed catalog (fine-tuned)")
    fine_tuned = judged_metrics(model, data, items, EVAL_SPLIT, config.embed_batch_size)
    log.info("fine-tuned %s", fine_tuned)
    queries = embed(
        model,
        data.queries["query"].tolist(),
        batch_size=config.embed_batch_size,
        max_seq_length=contract.MAX_QUERY_TOKENS,
    )
    return Encoded(model, items, queries, fine_tuned, encoder_curve, mlm_curve)


def fit_relevance(
    data: datasets.ShopData, enc: Encoded, paths: contract.ArtifactPaths, config: TrainConfig
) -> Relevance:
    """Stage A: lexical index (saved), hybrid candidates, the learned relevance model."""
    lexical = LexicalIndex.build(data.catalog, progress=True)
    lexical.save(paths.lexical_index)
    exact = DenseIndex.build(enc.items, DenseConfig(kind="flat"))
    candidates = CandidateConfig(dense_k=config.dense_k, lexical_k=config.lexical_k)
    qsets = {
        split: hybrid.build_query_set(
            data, split, enc.queries, enc.items, exact, lexical, candidates
        )
        for split in datasets.SPLITS
    }
    model, report = hybrid.fit_relevance(
        data,
        qsets["train"],
        qsets["val"],
        tuple(int(h) for h in config.relevance_kinds.split(",")),
        seed=config.seed,
    )
    product_ids = data.catalog["product_id"].to_numpy(np.int64)
    stages = hybrid.stage_metrics(data, qsets[EVAL_SPLIT], model, product_ids)
    log.info("retrieval stages %s", {k: round(v[NDCG_AT_10], 4) for k, v in stages.items()})
    return Relevance(lexical, qsets, model, report, stages)


def item_tables(data: datasets.ShopData, enc: Encoded, paths: contract.ArtifactPaths) -> ItemTables:
    """Attributes and behaviour features the ranker gathers (saved, with the item index)."""
    events = data.events
    product_ids = data.catalog["product_id"].to_numpy(np.int64)
    feats = (
        behaviour.item_features(events[events["split"] == "train"], product_ids)
        if events is not None
        else None
    )
    tables = ItemTables.from_catalog(data.catalog, feats)
    tables.save(paths.item_tables)
    save_item_index(paths.item_index, product_ids, enc.items, tables.item_features)
    return tables


def session_examples(
    data: datasets.ShopData, rel: Relevance, tables: ItemTables, config: TrainConfig
) -> dict:
    """Per split, the logged impressions with their features (train: plus negatives)."""
    events = data.events
    product_ids = data.catalog["product_id"].to_numpy(np.int64)
    query_row_of = {int(q): i for i, q in enumerate(data.queries["query_id"].to_numpy())}
    row_of = {int(p): i for i, p in enumerate(product_ids)}
    query_tokens = [tokenize(q) for q in data.queries["query"]]
    histories = behaviour.session_histories(events, row_of)
    return {
        split: behaviour.attach_features(
            behaviour.build_examples(events, split, query_row_of, row_of, histories),
            query_tokens,
            rel.lexical,
            tables,
            negatives=config.fusion_negatives if split == "train" else 0,
            seed=config.seed,
        )
        for split in datasets.SPLITS
    }


def fit_fusion(
    data: datasets.ShopData,
    enc: Encoded,
    rel: Relevance,
    tables: ItemTables,
    config: TrainConfig,
) -> Fusion:
    """Stage B: the fusion variants on the click logs, the best on validation sessions
    served, its re-rank depths chosen on validation queries. Without logs: relevance and
    the item prior alone."""
    val = rel.qsets["val"]
    # Made (and its weights drawn) with logs too, so the seeded runs draw the same numbers.
    ranker = behaviour.make_ranker(config.fusions.split(",")[0], enc.items.shape[1], rel.model)
    if data.events is None:
        choose_rerank_depth(ranker, val, enc.items, tables, data, config.max_relevance_loss)
        return Fusion(ranker, {"trained": False}, None)
    examples = session_examples(data, rel, tables, config)
    results = behaviour.train_fusions(
        tuple(config.fusions.split(",")),
        rel.model,
        enc.queries,
        enc.items,
        tables,
        examples["train"],
        examples["val"],
        examples["test"],
        epochs=config.fusion_epochs,
        batch_size=config.fusion_batch_size,
        lr=config.fusion_lr,
        seed=config.seed,
    )
    # Served variant: best purchase-NDCG@10 on *validation* sessions (test stays unseen).
    best = max(results, key=lambda f: results[f].val[PURCHASE_NDCG_AT_10])
    ranker = results[best].ranker
    depth = choose_rerank_depth(ranker, val, enc.items, tables, data, config.max_relevance_loss)
    relevance_only, base = behaviour.score_sessions(
        ranker, enc.queries, enc.items, tables, examples["test"], relevance_only=True
    )
    report = {
        "trained": True,
        "served": best,
        "rerank_depth": depth,
        "alpha": ranker.alpha,
        "train_impressions": len(examples["train"]),
        "relevance_only": relevance_only,
        **{name: r.summary() for name, r in results.items()},
    }
    # How sure is "better than relevance alone"? Paired bootstrap over test sessions.
    if len(base) and base.mean() > 0:
        for name, result in results.items():
            report[name]["gain_vs_relevance_only"] = paired_bootstrap_gain(
                base, result.test_session_ndcgs, seed=config.seed
            )
    log.info("served fusion %s: %s", best, results[best].test)
    return Fusion(ranker, report, examples)


def fit_recommender(
    data: datasets.ShopData,
    enc: Encoded,
    fusion: Fusion,
    tables: ItemTables,
    paths: contract.ArtifactPaths,
    config: TrainConfig,
) -> Recommendation:
    """Recommend mode: the sequential model over the shoppers' ordered histories (saved with
    the popularity counts), and its shopper vector as a search signal where validation
    sessions say it helps (recorded in the fusion report)."""
    if data.events is None or fusion.examples is None:
        return Recommendation({}, None)
    product_ids = data.catalog["product_id"].to_numpy(np.int64)
    try:
        chosen = recommend.train_and_evaluate(
            data.events,
            {int(p): i for i, p in enumerate(product_ids)},
            enc.items,
            recommend.SequentialTraining(
                layers=config.seq_layers,
                epochs=config.seq_epochs,
                batch_size=config.seq_batch_size,
                negatives=config.seq_negatives,
                seed=config.seed,
            ),
            max_len=contract.MAX_HISTORY,
        )
    except recommend.RecommendationError as exc:
        # Search does not depend on it: serve search, and no recommender (nor an earlier
        # run's left in OUT) rather than one a baseline beats.
        log.error("recommend mode is not served: %s", exc)
        recommend.remove_next_items(paths)
        return Recommendation({"error": str(exc)}, None)
    recommend.save_next_items(chosen, paths)
    metrics = chosen.report
    fitted, fusion.report["sequential_in_search"] = fit_sequential_weight(
        chosen.model,
        fusion.ranker,
        enc.queries,
        enc.items,
        tables,
        fusion.examples["val"],
        fusion.examples["test"],
        parse_lambdas(config.seq_in_search),
        seed=config.seed,
        blend=chosen.blend,
        covisits=chosen.covisits,
    )
    log.info("served recommender's score in search: %s", fusion.report["sequential_in_search"])
    log.info(
        "recommendation (HR@10): %s",
        {
            k: round(v[HIT_RATE_AT_10], 4)
            for k, v in metrics.items()
            if isinstance(v, dict) and HIT_RATE_AT_10 in v
        },
    )
    return Recommendation(metrics, fitted)


def retrieval_config(
    config: TrainConfig, ranker: FusionRanker, rec: Recommendation
) -> RetrievalConfig:
    """What the ranker serves: the candidate counts, the chosen re-rank depths and the
    fitted sequential signal (off without one)."""
    sequential = {}
    if rec.sequential_in_search is not None:
        fitted = rec.sequential_in_search
        sequential = {
            "sequential_weight": fitted.sequential_weight,
            "sequential_mean": fitted.sequential_mean,
            "sequential_std": fitted.sequential_std,
        }
    return RetrievalConfig(
        dense_k=config.dense_k,
        lexical_k=config.lexical_k,
        depth=ranker.config.depth,
        cold_start_depth=ranker.config.cold_start_depth,
        **sequential,
    )


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
    enc = encode(data, paths, config)
    rel = fit_relevance(data, enc, paths, config)
    tables = item_tables(data, enc, paths)
    fusion = fit_fusion(data, enc, rel, tables, config)
    fusion.report["judged_cold_start"] = served_judged_metrics(
        fusion.ranker,
        rel.qsets[EVAL_SPLIT],
        enc.items,
        tables,
        data,
        fusion.ranker.config.cold_start_depth,
    )
    save_ranker(fusion.ranker, paths.ranker)
    rec = fit_recommender(data, enc, fusion, tables, paths, config)
    retrieval_config(config, fusion.ranker, rec).save(paths.retrieval_config)
    metrics = {
        "config": config_to_dict(config),
        "data": {
            "products": len(data.catalog),
            "queries": len(data.queries),
            "judgements": len(data.judgements),
            "events": 0 if data.events is None else len(data.events),
        },
        "retrieval": {
            "split": EVAL_SPLIT,
            "fine_tuned": enc.fine_tuned,
            **{name: m for name, m in rel.stages.items() if name != "dense"},
        },
        "relevance_model": rel.report,
        "encoder_loss_curve": enc.encoder_curve,
        "mlm_loss_curve": enc.mlm_curve,
        "fusion": fusion.report,
        "recommendation": rec.metrics,
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    paths.metrics.write_text(json.dumps(metrics, indent=2))
    paths.training_summary.write_text("\n".join(summary_lines(metrics)) + "\n")
    return metrics


def summary_lines(metrics: dict) -> list[str]:
    """Human-readable summary of metrics.json."""
    r = metrics["retrieval"]
    labels = {
        "zero_shot": "zero-shot",
        "bm25": "BM25",
        "fine_tuned": "dense (fine-tuned)",
        "rrf": "RRF",
        "learned_hybrid": "learned hybrid",
        "served": "served pipeline",
    }
    shown = [(labels[k], r[k]) for k in labels if isinstance(r.get(k), dict)]
    queries = next(iter(shown))[1].get("queries", "?") if shown else "?"
    lines = [f"retrieval on {queries} held-out queries (NDCG@10 / Recall@100 / MRR):"]
    lines += [
        f"  {name:<19} {m[NDCG_AT_10]:.4f} / {m[RECALL_AT_100]:.4f} / {m[MRR]:.4f}"
        for name, m in shown
    ]
    f = metrics["fusion"]
    if "judged_cold_start" in f:
        c = f["judged_cold_start"]
        lines.append(
            f"  {'ranker (cold start)':<19} {c[NDCG_AT_10]:.4f} / {c[RECALL_AT_100]:.4f} / "
            f"{c[MRR]:.4f}"
        )
    if f.get("trained"):
        lines.append(
            f"fusion on held-out sessions (served: {f['served']}, α = {f['alpha']:.3f}, "
            f"re-rank depth {f['rerank_depth']['depth']}, cold start "
            f"{f['rerank_depth'].get('cold_start_depth')}) (click AUC / purchase-NDCG@10):"
        )
        for name, m in f.items():
            if isinstance(m, dict) and CLICK_AUC in m and PURCHASE_NDCG_AT_10 in m:
                lines.append(f"  {name:<17} {m[CLICK_AUC]:.4f} / {m[PURCHASE_NDCG_AT_10]:.4f}")
        if (f.get("sequential_in_search") or {}).get("gain"):
            s, g = f["sequential_in_search"], f["sequential_in_search"]["gain"]
            t = s["test_purchase_ndcg@10"]
            lines.append(
                f"  + served recommender's score (λ={s['lambda']:g}): purchase-NDCG@10 "
                f"{t['served']:.4f} → {t['served_plus_sequential']:.4f} ({g['relative']:+.1%}, "
                f"95% CI {g['ci95_low']:+.1%}…{g['ci95_high']:+.1%})"
            )
    rec = metrics.get("recommendation") or {}
    if "error" in rec:
        lines.append(f"recommendation: not served ({rec['error']})")
    shown_rec = [(k, m) for k, m in rec.items() if isinstance(m, dict) and HIT_RATE_AT_10 in m]
    if shown_rec:
        lines.append("recommendation, leave-last-out (HR@10 / NDCG@10 / MRR):")
        served = (rec.get("served") or {}).get("name")
        lines += [
            f"  {k:<21} {m[HIT_RATE_AT_10]:.4f} / {m[NDCG_AT_10]:.4f} / {m[MRR]:.4f}"
            + ("  (served)" if k == served else "")
            for k, m in shown_rec
        ]
    lines.append(f"training took {metrics['train_seconds']} s")
    return lines


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    setup_logging("shoprank")
    config = parse_config(TrainConfig, argv, description=__doc__ or "")
    with user_errors(datasets.DataError):
        metrics = run(config)
    print("\n".join(summary_lines(metrics)))
