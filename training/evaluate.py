"""`python -m shoprank.training.evaluate --out DIR`: baselines + the evaluation report of a
training run.

Runs after `python -m shoprank.training --out DIR` (and, for the served pipeline's own
figures, after `make convert repo`): reads DIR/metrics.json and the data the run saved
under DIR/data, scores the baselines (BM25, popularity, session popularity) and the
zero-shot encoder on the same held-out split, runs the generated repository's pipeline
in process as `retrieval.served`, merges all of it into metrics.json, and writes
DIR/reports/eval.md with its plots.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from shoprank import contract
from shoprank.configargs import parse_config, setup_logging, user_errors
from shoprank.data import datasets
from shoprank.data.metrics import CLICK_AUC, NDCG_AT_10, mean_metrics
from shoprank.training.baselines import run_baselines
from shoprank.training.report import targets, write_report

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """Knobs of the evaluation stage; each is a command-line flag."""

    out: Path = field(default=contract.DEFAULT_ARTIFACTS, metadata={"help": "training run folder"})
    split: str = field(
        default="", metadata={"help": "query split to evaluate; default: the one training used"}
    )
    zero_shot: bool = field(
        default=True, metadata={"help": "measure the encoder as shipped (embeds the catalog)"}
    )


def _write_json(path: Path, payload: dict) -> None:
    """Write via a temporary file so a crash never leaves half a metrics.json."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def zero_shot_metrics(data: datasets.ShopData, run_config: dict, split: str) -> dict:
    """Full-catalog retrieval of the encoder as shipped (before MLM and fine-tuning), with
    the same embedding settings training used."""
    from shoprank.models.encoder import load_encoder
    from shoprank.training.base_encoder import base_encoder_path
    from shoprank.training.train import TrainConfig, embed_catalog, judged_metrics

    config = TrainConfig(
        **{k: v for k, v in run_config.items() if k in TrainConfig.__dataclass_fields__}
    )
    config.out = Path(config.out)
    paths = contract.ArtifactPaths(config.out)
    base = base_encoder_path(
        config.encoder_path, config.tiny_encoder, paths.training_work, config.seed
    )
    model = load_encoder(base, config.max_product_tokens)
    item_emb = embed_catalog(model, base, data, config, "embed catalog (zero-shot)")
    return judged_metrics(model, data, item_emb, split, config.embed_batch_size)


def served_metrics(paths: contract.ArtifactPaths, data: datasets.ShopData, split: str) -> dict:
    """The served two-stage pipeline (the generated repository, in process) at cold start:
    each `split` query's top MAX_TOP_K products, judged."""
    from shoprank.core.pipeline import InProcessPipeline

    pipeline = InProcessPipeline(paths.repository("cpu"))
    queries = data.queries[data.queries["split"] == split]
    texts, ids = queries["query"].tolist(), queries["query_id"].tolist()
    rankings = {}
    for start in range(0, len(texts), 64):
        batch = texts[start : start + 64]
        answers = pipeline.search_many(batch, [[]] * len(batch), contract.MAX_TOP_K)
        for qid, answer in zip(ids[start : start + 64], answers, strict=True):
            rankings[int(qid)] = answer.product_ids.tolist()
    return mean_metrics(rankings, datasets.judgement_grades(data, list(rankings)))


def evaluate(config: EvalConfig) -> tuple[dict, Path]:
    """Add baselines (and the served pipeline, if its repository exists) to
    DIR/metrics.json and write the report; return (metrics, report path)."""
    paths = contract.ArtifactPaths(Path(config.out))
    if not paths.metrics.exists():
        raise FileNotFoundError(
            f"{paths.metrics} not found: run `python -m shoprank.training --out {config.out}` first"
        )
    metrics = json.loads(paths.metrics.read_text())
    split = config.split or (metrics.get("retrieval") or {}).get("split") or "test"
    started = time.perf_counter()
    data = datasets.load(paths)
    metrics["baselines"] = run_baselines(data, split)
    metrics["baselines"]["seconds"] = round(time.perf_counter() - started, 1)
    retrieval = metrics.setdefault("retrieval", {})
    if config.zero_shot:
        retrieval["zero_shot"] = zero_shot_metrics(data, metrics["config"], split)
    if paths.repository("cpu").is_dir():
        retrieval["served"] = served_metrics(paths, data, split)
    else:
        retrieval.pop("served", None)
        log.warning(
            "no repository at %s: the served pipeline is not measured", paths.repository("cpu")
        )
    _write_json(paths.metrics, metrics)
    return metrics, write_report(metrics, paths.root)


def summary_lines(metrics: dict) -> list[str]:
    """The baselines and the targets, one line each."""
    lines = []
    for name, m in (metrics.get("baselines") or {}).items():
        if not isinstance(m, dict):
            continue
        if "skipped" in m:
            lines.append(f"  {name:<18} {m['skipped']}")
        elif NDCG_AT_10 in m:
            lines.append(
                f"  {name:<18} NDCG@10 {m['ndcg@10']:.4f}  Recall@100 {m['recall@100']:.4f}  "
                f"MRR {m['mrr']:.4f}"
            )
        elif CLICK_AUC in m:
            lines.append(
                f"  {name:<18} click AUC {m['click_auc']:.4f}  "
                f"purchase-NDCG@10 {m['purchase_ndcg@10']:.4f}"
            )
    lines.append("targets:")
    lines += [f"  {t.result:<4} {t.name}" for t in targets(metrics)]
    return lines


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    setup_logging("shoprank")
    config = parse_config(EvalConfig, argv, description=__doc__ or "")
    with user_errors(datasets.DataError, FileNotFoundError):
        metrics, report = evaluate(config)
    print("baselines:")
    print("\n".join(summary_lines(metrics)))
    print(f"report: {report}")
    print(f"metrics: {contract.ArtifactPaths(Path(config.out)).metrics}")


if __name__ == "__main__":
    main()
