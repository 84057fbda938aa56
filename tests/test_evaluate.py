"""`make eval`'s last step, `python -m shoprank.training.evaluate --out DIR`, on the tiny
artifacts: the served pipeline's figures in metrics.json (the README's headline relevance
number) are checked against NDCG@10 computed here from the in-process pipeline's answers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from shoprank import contract
from shoprank.data.metrics import NDCG_AT_10, QUERIES, ndcg_at_k


def test_evaluate_cli_writes_the_served_pipelines_ndcg(tiny_artifacts, in_process, tmp_path):
    out = tmp_path / "run"  # a copy: evaluate rewrites metrics.json and adds reports/
    shutil.copytree(tiny_artifacts.root, out, symlinks=True, ignore=shutil.ignore_patterns("*.log"))
    paths = contract.ArtifactPaths(out)
    trained = json.loads(paths.metrics.read_text())
    assert "served" not in trained.get("retrieval", {})

    done = subprocess.run(
        # The zero-shot encoder's figures are another computation, left out to save time.
        [sys.executable, "-m", "shoprank.training.evaluate", "--out", str(out), "--no-zero-shot"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    served = json.loads(paths.metrics.read_text())["retrieval"]["served"]
    split = trained["retrieval"].get("split", "test")
    queries = pd.read_parquet(paths.queries)
    queries = queries[queries["split"] == split]
    judgements = pd.read_parquet(paths.judgements)
    ndcgs = []
    for qid, text in zip(queries["query_id"], queries["query"], strict=True):
        judged = judgements[judgements["query_id"] == qid]
        if judged.empty:
            continue
        grades = dict(zip(judged["product_id"].tolist(), judged["relevance"].tolist(), strict=True))
        answer = in_process.search(text, [], contract.MAX_TOP_K)
        ndcgs.append(ndcg_at_k(answer.product_ids.tolist(), grades, 10))
    assert served[QUERIES] == len(ndcgs) > 0
    expected = float(np.mean(ndcgs))
    assert served[NDCG_AT_10] == pytest.approx(expected, abs=1e-9)
    # ... and the report's table shows the same figure on the served pipeline's row.
    report = (out / "reports" / "eval.md").read_text().splitlines()
    row = next(line for line in report if line.startswith("| served pipeline"))
    assert row.split("|")[2].strip() == f"{expected:.4f}"
