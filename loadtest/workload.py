"""A realistic load-test workload drawn from the held-out behaviour logs.

Each request is a real (query, history) pair: the query of a test-split session and the
ids the shopper clicked or bought before it, so the load test exercises the same mix of
cold-start and long-history requests the model will meet.

    python -m shoprank.loadtest.workload --out artifacts/demo [--requests 2000]

writes `<out>/loadtest/workload.json` (the format `SHOPRANK_WORKLOAD` reads) and
`<out>/loadtest/example_history.txt` (a comma-separated history for the CLI example).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from shoprank import contract
from shoprank.data import datasets
from shoprank.data.datasets import HISTORY_EVENTS


def make_workload(data: datasets.ShopData, requests: int = 2000, seed: int = 0) -> list[dict]:
    """Up to `requests` {"query", "history", "top_k"} dicts from the test sessions."""
    rng = np.random.default_rng(seed)
    queries = data.queries.set_index("query_id")["query"]
    if data.events is None or data.events.empty:
        texts = queries.sample(n=min(requests, len(queries)), random_state=seed).tolist()
        return [{"query": q, "history": [], "top_k": contract.DEFAULT_TOP_K} for q in texts]
    events = data.events.sort_values("timestamp")
    sessions = events.groupby("session_id").agg(
        user_id=("user_id", "first"),
        query_id=("query_id", "first"),
        timestamp=("timestamp", "min"),
        split=("split", "first"),
    )
    test = sessions[sessions["split"] == "test"]
    test = test.sample(n=min(requests, len(test)), random_state=seed)
    acts = events[events["event_type"].isin(HISTORY_EVENTS)]
    by_user = {u: g for u, g in acts.groupby("user_id")}
    out = []
    for _, s in test.iterrows():
        past = by_user.get(s["user_id"], pd.DataFrame(columns=acts.columns))
        history = past[past["timestamp"] < s["timestamp"]]["product_id"].tolist()
        out.append(
            {
                "query": str(queries.get(s["query_id"], "")),
                "history": [int(p) for p in history[-contract.MAX_HISTORY :]],
                "top_k": int(rng.choice([10, 10, 10, 20, 50])),
            }
        )
    return [w for w in out if w["query"].strip()]


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=contract.DEFAULT_ARTIFACTS)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = contract.ArtifactPaths(args.out)
    workload = make_workload(datasets.load(paths), args.requests, args.seed)
    paths.loadtest.mkdir(parents=True, exist_ok=True)
    paths.workload.write_text(json.dumps(workload))
    example = max(workload, key=lambda w: len(w["history"]))
    (paths.loadtest / "example_history.txt").write_text(
        ",".join(str(p) for p in example["history"][-5:])
    )
    with_history = sum(bool(w["history"]) for w in workload)
    print(f"wrote {len(workload)} requests ({with_history} with history) to {paths.workload}")


if __name__ == "__main__":
    main()
