"""`python -m shoprank.training.evaluate --out DIR`: baselines + the evaluation report of a
training run.

Runs after `python -m shoprank.training --out DIR`: reads DIR/metrics.json and the data the run
saved under DIR/data, scores the baselines (BM25, popularity, session popularity) on the
same held-out split, merges them into metrics.json under "baselines", and writes
DIR/reports/eval.md with its plots.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from shoprank import contract, datasets
from shoprank.configargs import parse_config, setup_logging
from shoprank.metrics import CLICK_AUC, NDCG_AT_10
from shoprank.training.baselines import run_baselines
from shoprank.training.report import targets, write_report


@dataclass
class EvalConfig:
    """Knobs of the evaluation stage; each is a command-line flag."""

    out: Path = field(default=contract.DEFAULT_ARTIFACTS, metadata={"help": "training run folder"})
    split: str = field(
        default="", metadata={"help": "query split to evaluate; default: the one training used"}
    )


def _write_json(path: Path, payload: dict) -> None:
    """Write via a temporary file so a crash never leaves half a metrics.json."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def evaluate(config: EvalConfig) -> tuple[dict, Path]:
    """Add baselines to DIR/metrics.json and write the report; return (metrics, report path)."""
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
    metrics, report = evaluate(config)
    print("baselines:")
    print("\n".join(summary_lines(metrics)))
    print(f"report: {report}")
    print(f"metrics: {contract.ArtifactPaths(Path(config.out)).metrics}")


if __name__ == "__main__":
    main()
