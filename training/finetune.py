"""Relevance fine-tuning of the bi-encoder on query↔product pairs (in-batch negatives).

Each training pair is (query text, text of a product judged relevant to it). With
MultipleNegativesRankingLoss every other product in the batch is a negative for the
query, so a batch of 32 gives 31 negatives for free; the no-duplicates sampler keeps a
query's own positives from turning up as its negatives.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from training.datasets import ShopData, product_text

log = logging.getLogger(__name__)


@dataclass
class FinetuneConfig:
    """Knobs of the fine-tuning run (a slice of training.config.TrainConfig)."""

    max_steps: int = 300
    batch_size: int = 32
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.1
    min_grade: int = 2
    seed: int = 0


def training_pairs(
    data: ShopData, split: str = "train", min_grade: int = 2, seed: int = 0
) -> pd.DataFrame:
    """(anchor=query text, positive=product text) for judgements graded >= min_grade.

    Grade-3 pairs are listed twice so exact matches weigh more than partial ones.
    """
    queries = data.queries[data.queries["split"] == split][["query_id", "query"]]
    judged = data.judgements[data.judgements["relevance"] >= min_grade]
    pairs = judged.merge(queries, on="query_id").merge(data.catalog, on="product_id")
    if pairs.empty:
        raise ValueError(f"no judgements graded >= {min_grade} on {split!r} queries")
    pairs = pd.concat([pairs, pairs[pairs["relevance"] >= 3]], ignore_index=True)
    texts = product_text(pairs)
    out = pd.DataFrame({"anchor": pairs["query"].to_numpy(), "positive": list(texts)})
    return out.sample(frac=1.0, random_state=np.random.RandomState(seed)).reset_index(drop=True)


def finetune(
    model,
    pairs: pd.DataFrame,
    config: FinetuneConfig,
    work_dir: Path,
) -> list[dict[str, float]]:
    """Fine-tune `model` in place on `pairs`; return the logged loss curve.

    Uses sentence-transformers' Trainer (progress bar, warmup, seeds) for at most
    `config.max_steps` optimizer steps.
    """
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    steps_per_epoch = max(1, len(pairs) // config.batch_size)
    max_steps = min(config.max_steps, steps_per_epoch * 50)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(work_dir),
        max_steps=max_steps,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        warmup_steps=int(config.warmup_ratio * max_steps),
        logging_steps=max(1, max_steps // 50),
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=config.seed,
        data_seed=config.seed,
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        dataloader_drop_last=True,
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_pandas(pairs, preserve_index=False),
        loss=MultipleNegativesRankingLoss(model),
    )
    trainer.train()
    return [
        {"step": float(h["step"]), "loss": float(h["loss"])}
        for h in trainer.state.log_history
        if "loss" in h
    ]
