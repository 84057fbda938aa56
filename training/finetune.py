"""Relevance fine-tuning of the bi-encoder on query↔product judgements.

Two losses share the encoder (sentence-transformers multi-dataset training):

- **Contrastive** (MultipleNegativesRankingLoss) on (query, relevant product, hard
  negative) triplets: every other product in the batch is a negative too, and the hard
  negative is a product the *current* encoder ranks high for the query although it is not
  judged relevant at all — the confusions worth learning from. Products with any positive
  judgement are never used as negatives; the no-duplicates sampler keeps a query's own
  positives out of its in-batch negatives.
- **Graded** (MarginMSELoss) on (query, better product, worse product): the cosine gap is
  regressed onto the grade gap, so an exact match (3) must beat a partial one (1), not
  merely an irrelevant product.

Learning-rate warm-up, a fixed seed, validation NDCG@10 every `eval_steps` with the best
checkpoint restored at the end (early stopping after `patience` evaluations without
improvement), and resumable checkpoints in the work folder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sentence_transformers.sentence_transformer.evaluation import SentenceEvaluator

from shoprank import contract
from shoprank.data.datasets import ShopData, product_text
from shoprank.data.metrics import NDCG_AT_10, mean_metrics, top_k_rankings
from shoprank.models.encoder import embed

log = logging.getLogger(__name__)

GRADE_MARGIN = 0.1  # cosine gap asked per grade step by the graded loss


@dataclass
class FinetuneConfig:
    """Knobs of the fine-tuning run; the training and cross-validation configs extend it."""

    max_steps: int = 200
    batch_size: int = 32
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.1
    seed: int = 0
    # Both lose on the synthetic shop, whose judgements are capped at 200 per query, so
    # "hard negatives" include unjudged true matches. Off by default, kept for data with
    # complete judgements.
    hard_negatives: bool = field(default=False, metadata={"help": "mine encoder hard negatives"})
    graded_loss: bool = field(default=False, metadata={"help": "add the graded margin loss"})
    eval_steps: int = field(default=50, metadata={"help": "validation NDCG@10 every N steps"})
    patience: int = field(default=2, metadata={"help": "early-stopping patience (evaluations)"})
    resume: bool = field(
        default=False, metadata={"help": "resume fine-tuning from its last checkpoint"}
    )
    nproc: int = field(
        default=1,
        metadata={
            "help": "fine-tuning processes (torchrun DDP; batch-size stays the global batch, "
            "in-batch negatives gathered across processes)"
        },
    )


def _judged(data: ShopData, split: str) -> pd.DataFrame:
    queries = data.queries[data.queries["split"] == split][["query_id", "query"]]
    return data.judgements.merge(queries, on="query_id")


def training_pairs(
    data: ShopData, split: str = "train", min_grade: int = 2, seed: int = 0
) -> pd.DataFrame:
    """(anchor=query text, positive=product text, query_id) for judgements >= min_grade.

    Grade-3 pairs are listed twice so exact matches weigh more than partial ones.
    """
    judged = _judged(data, split)
    pairs = judged[judged["relevance"] >= min_grade].merge(data.catalog, on="product_id")
    if pairs.empty:
        raise ValueError(f"no judgements graded >= {min_grade} on {split!r} queries")
    pairs = pd.concat([pairs, pairs[pairs["relevance"] >= 3]], ignore_index=True)
    out = pd.DataFrame(
        {
            "anchor": pairs["query"].to_numpy(),
            "positive": list(product_text(pairs)),
            "query_id": pairs["query_id"].to_numpy(),
        }
    )
    return out.sample(frac=1.0, random_state=np.random.RandomState(seed)).reset_index(drop=True)


def mine_hard_negatives(
    data: ShopData,
    query_ids: np.ndarray,
    query_embeddings: np.ndarray,
    item_embeddings: np.ndarray,
    ranks: tuple[int, int] = (10, 100),
    per_query: int = 10,
    seed: int = 0,
) -> dict[int, list[int]]:
    """Per query: up to `per_query` catalog rows ranked in [ranks) by the current encoder
    that carry no positive judgement for that query.

    Starting below the very top leaves room for unjudged true matches, which would
    otherwise be pushed away as "negatives".
    """
    rng = np.random.default_rng(seed)
    relevant = (
        data.judgements[data.judgements["relevance"] > 0]
        .groupby("query_id")["product_id"]
        .apply(set)
        .to_dict()
    )
    product_ids = data.catalog["product_id"].to_numpy()
    lo, hi = ranks
    out: dict[int, list[int]] = {}
    for start in range(0, len(query_ids), 256):
        scores = query_embeddings[start : start + 256] @ item_embeddings.T  # (q, N)
        top = np.argsort(-scores, axis=1)[:, lo:hi]
        for qid, rows in zip(query_ids[start : start + 256], top, strict=True):
            keep = [r for r in rows if product_ids[r] not in relevant.get(int(qid), set())]
            if keep:
                pick = rng.choice(len(keep), size=min(per_query, len(keep)), replace=False)
                out[int(qid)] = [int(keep[i]) for i in sorted(pick)]
    return out


def add_hard_negatives(
    pairs: pd.DataFrame, negatives: dict[int, list[int]], catalog: pd.DataFrame, seed: int = 0
) -> pd.DataFrame:
    """(anchor, positive, negative) triplets; pairs of queries without negatives dropped."""
    rng = np.random.default_rng(seed)
    texts = product_text(catalog)
    rows = [negatives.get(int(q)) for q in pairs["query_id"]]
    keep = np.array([r is not None for r in rows])
    chosen = [texts[r[rng.integers(len(r))]] for r in rows if r is not None]
    out = pairs.loc[keep, ["anchor", "positive"]].reset_index(drop=True)
    out["negative"] = chosen
    return out


def graded_pairs(
    data: ShopData, split: str = "train", per_query: int = 20, seed: int = 0
) -> pd.DataFrame:
    """(anchor, positive=better product, negative=worse product, label=margin) rows."""
    rng = np.random.default_rng(seed)
    judged = _judged(data, split)
    texts = dict(zip(data.catalog["product_id"], product_text(data.catalog), strict=True))
    rows = []
    for _, g in judged.groupby("query_id"):
        grades = g["relevance"].to_numpy()
        if grades.max() == grades.min():
            continue
        ids = g["product_id"].to_numpy()
        for _ in range(per_query):
            i, j = rng.integers(len(ids), size=2)
            if grades[i] == grades[j]:
                continue
            if grades[i] < grades[j]:
                i, j = j, i
            rows.append(
                (
                    g["query"].iloc[0],
                    texts[ids[i]],
                    texts[ids[j]],
                    GRADE_MARGIN * float(grades[i] - grades[j]),
                )
            )
    return pd.DataFrame(rows, columns=["anchor", "positive", "negative", "label"])


class GradedNDCGEvaluator(SentenceEvaluator):
    """Validation NDCG@10 (graded) of full retrieval over a fixed candidate corpus.

    A sentence-transformers evaluator: the Trainer calls it every `eval_steps`, logs
    `eval_val_ndcg@10`, keeps the best checkpoint and stops early on it.
    """

    def __init__(
        self,
        queries: dict[int, str],
        corpus: dict[int, str],
        grades: dict[int, dict[int, int]],
        batch_size: int = 64,
    ) -> None:
        super().__init__()
        self.name = "val"
        self.primary_metric = "val_ndcg@10"
        self.greater_is_better = True
        self.queries, self.corpus, self.grades = queries, corpus, grades
        self.batch_size = batch_size

    def __call__(self, model, output_path=None, epoch: int = -1, steps: int = -1) -> dict:
        corpus_ids = np.array(list(self.corpus))
        c_emb = embed(
            model, list(self.corpus.values()), self.batch_size, contract.MAX_PRODUCT_TOKENS
        )
        q_emb = embed(
            model, list(self.queries.values()), self.batch_size, contract.MAX_QUERY_TOKENS
        )
        rankings = top_k_rankings(q_emb @ c_emb.T, list(self.queries), corpus_ids)
        value = mean_metrics(rankings, self.grades)[NDCG_AT_10]
        log.info("step %d: validation NDCG@10 %.4f", steps, value)
        return {self.primary_metric: value}


def validation_evaluator(
    data: ShopData,
    split: str = "val",
    max_queries: int = 80,
    per_query: int = 20,
    distractors: int = 500,
    seed: int = 0,
) -> GradedNDCGEvaluator:
    """Evaluator over `split` queries and a small corpus that keeps NDCG meaningful.

    Every query brings `per_query` of its own judged products (so its ideal ranking is in
    the corpus), the other queries' products and `distractors` random products compete
    with them. A corpus of random products alone would miss most relevant items and turn
    the early-stopping signal into noise.
    """
    rng = np.random.default_rng(seed)
    queries = data.queries[data.queries["split"] == split]
    if len(queries) > max_queries:
        queries = queries.iloc[np.sort(rng.choice(len(queries), max_queries, replace=False))]
    judged = data.judgements[data.judgements["query_id"].isin(queries["query_id"])]
    chosen = judged.groupby("query_id", group_keys=False).apply(
        lambda g: g.sample(n=min(per_query, len(g)), random_state=seed)
    )
    ids = set(chosen["product_id"].tolist())
    pool = np.setdiff1d(data.catalog["product_id"].to_numpy(), list(ids))
    ids |= set(rng.choice(pool, size=min(distractors, len(pool)), replace=False).tolist())
    catalog = data.catalog[data.catalog["product_id"].isin(ids)]
    corpus = dict(zip(catalog["product_id"].tolist(), product_text(catalog), strict=True))
    grades = {
        int(q): {p: r for p, r in zip(g["product_id"], g["relevance"], strict=True) if p in ids}
        for q, g in judged.groupby("query_id")
    }
    return GradedNDCGEvaluator(
        dict(zip(queries["query_id"].tolist(), queries["query"], strict=True)), corpus, grades
    )


def relevance_losses(model, gather_across_devices: bool = False) -> dict:
    """The fine-tuning losses by training-set name, as `finetune` applies them.

    contrastive: MultipleNegativesRankingLoss, cross-entropy over 20·cos(query, every
        positive and negative in the batch) with the query's own positive as the target.
    graded: MarginMSELoss, (⟨q, better⟩ - ⟨q, worse⟩ - label)² with label = the grade
        gap x GRADE_MARGIN (the embeddings are unit-length, so ⟨·,·⟩ is the cosine).

    `gather_across_devices` (DDP): every process's products are negatives for every query.
    """
    from sentence_transformers.sentence_transformer.losses import (
        MarginMSELoss,
        MultipleNegativesRankingLoss,
    )

    return {
        "contrastive": MultipleNegativesRankingLoss(
            model, gather_across_devices=gather_across_devices
        ),
        "graded": MarginMSELoss(model),
    }


def finetune(
    model,
    train_sets: dict[str, pd.DataFrame],
    config: FinetuneConfig,
    work_dir: Path,
    evaluator: GradedNDCGEvaluator | None = None,
) -> list[dict[str, float]]:
    """Fine-tune `model` in place; return the logged loss (and validation) curve.

    `train_sets` maps a loss name to its rows: "contrastive" → (anchor, positive[,
    negative]) for MultipleNegativesRankingLoss, "graded" → (anchor, positive, negative,
    label) for MarginMSELoss. With `config.nproc` > 1 this runs on that many processes
    (`shoprank.training.distributed`).
    """
    from shoprank.training import distributed

    if config.nproc > 1 and distributed.world_size() == 1:
        return distributed.finetune_distributed(model, train_sets, config, work_dir, evaluator)
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers
    from transformers import EarlyStoppingCallback
    from transformers.trainer_utils import get_last_checkpoint

    losses = relevance_losses(model, gather_across_devices=config.nproc > 1)
    sets = {k: v for k, v in train_sets.items() if len(v)}
    rows = sum(len(v) for v in sets.values())
    max_steps = min(config.max_steps, max(1, rows // config.batch_size) * 50)
    evaluate = evaluator is not None and config.eval_steps < max_steps
    args = SentenceTransformerTrainingArguments(
        output_dir=str(work_dir),
        max_steps=max_steps,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        warmup_steps=int(config.warmup_ratio * max_steps),
        logging_steps=max(1, max_steps // 50),
        eval_strategy="steps" if evaluate else "no",
        eval_steps=config.eval_steps if evaluate else None,
        save_strategy="steps" if evaluate else "no",
        save_steps=config.eval_steps,
        save_total_limit=2,
        load_best_model_at_end=evaluate,
        metric_for_best_model="eval_val_ndcg@10" if evaluate else None,
        greater_is_better=True,
        report_to=[],
        # Several processes: each takes its slice of the same global batch of `batch_size`.
        use_cpu=config.nproc == 1 or not distributed.gpu_per_process(config.nproc),
        accelerator_config={"split_batches": config.nproc > 1},
        seed=config.seed,
        data_seed=config.seed,
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        dataloader_drop_last=True,
        disable_tqdm=False,
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset={
            k: Dataset.from_pandas(
                v.drop(columns=["query_id"], errors="ignore"), preserve_index=False
            )
            for k, v in sets.items()
        },
        loss={k: losses[k] for k in sets},
        evaluator=evaluator if evaluate else None,
        callbacks=[EarlyStoppingCallback(config.patience)] if evaluate else None,
    )
    last = get_last_checkpoint(str(work_dir)) if config.resume and work_dir.exists() else None
    if last:
        log.info("resuming from %s", last)
    trainer.train(resume_from_checkpoint=last)
    return [
        {k: float(v) for k, v in h.items() if k in ("step", "loss", "eval_val_ndcg@10")}
        for h in trainer.state.log_history
        if "loss" in h or "eval_val_ndcg@10" in h
    ]


def training_sets(
    data: ShopData,
    query_embeddings: dict[int, np.ndarray] | None,
    item_embeddings: np.ndarray | None,
    hard_negatives: bool,
    graded_loss: bool,
    seed: int = 0,
) -> dict[str, pd.DataFrame]:
    """The fine-tuning rows for the "train" queries, as `finetune` takes them.

    Contrastive (query, positive[, hard negative mined with the given encoder's
    embeddings]) rows and, with `graded_loss`, graded (query, better, worse, margin) rows.
    `query_embeddings` maps query id to its embedding; both are needed only for
    `hard_negatives`.
    """
    pairs = training_pairs(data, "train", seed=seed)
    sets = {"contrastive": pairs}
    if hard_negatives:
        if query_embeddings is None or item_embeddings is None:
            raise ValueError("hard negatives need query and item embeddings")
        train_ids = data.queries.loc[data.queries["split"] == "train", "query_id"].to_numpy()
        train_emb = np.stack([query_embeddings[int(q)] for q in train_ids])
        negatives = mine_hard_negatives(data, train_ids, train_emb, item_embeddings, seed=seed)
        sets["contrastive"] = add_hard_negatives(pairs, negatives, data.catalog, seed)
    if graded_loss:
        sets["graded"] = graded_pairs(data, "train", seed=seed)
    return sets


def finetune_with_validation(
    model,
    data: ShopData,
    train_sets: dict[str, pd.DataFrame],
    config: FinetuneConfig,
    work_dir: Path,
) -> list[dict[str, float]]:
    """`finetune` with the "val" queries (when there are any) driving early stopping."""
    has_val = bool((data.queries["split"] == "val").any())
    evaluator = validation_evaluator(data, "val", seed=config.seed) if has_val else None
    return finetune(model, train_sets, config, work_dir, evaluator)
