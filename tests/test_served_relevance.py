"""One served answer checked for relevance: the packaged all-MiniLM-L6-v2 (no fine-tuning)
on the tiny synthetic shop, converted, built into the CPU repository and served by the
real Triton server. Every other served test runs a random tiny encoder, whose answers are
compared with the in-process pipeline's but never judged."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from shoprank import contract
from shoprank_client import SearchClient

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Words no product text of the synthetic catalog contains (checked below), so lexical
# matching cannot answer them: only the encoder knows a couch is a sofa. Each must find a
# product of its category in the top 5 (the random tiny encoder finds none for most).
SYNONYMS = {
    "couch": "Sofas",
    "cocktail table": "Coffee Tables",
    "skillet": "Frying Pans",
    "earphones": "Headphones",
    "bedstead": "Beds",
    "ultrabook": "Laptops",
}
PRODUCTS_CHECKED = 8


def run_cli(*args: object) -> None:
    done = subprocess.run(
        [sys.executable, "-m", *map(str, args)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"{args[0]} failed:\n{done.stderr[-3000:]}"


def obvious_queries(catalog: pd.DataFrame) -> list[tuple[str, int]]:
    """(query, the product it must find) for a spread of products: its own title, its model
    number, and its brand with its category's leaf."""
    leaf = catalog["category"].str.split(" > ").str[-1]
    step = len(catalog) // PRODUCTS_CHECKED
    queries = []
    for i in range(0, step * PRODUCTS_CHECKED, step):
        product = catalog.iloc[i]
        model = re.search(r"\bModel (\S+)\.", product["description"])
        assert model, product["description"]
        pid = int(product["product_id"])
        queries += [(product["title"], pid), (model.group(1), pid)]
        queries.append((f"{product['brand']} {leaf.iloc[i]}", pid))
    return queries


def test_minilm_served_by_triton_finds_the_obvious_product(tmp_path):
    out = tmp_path / "run"
    paths = contract.ArtifactPaths(out)
    # The packaged encoder as the run's own: training then skips fine-tuning (as when it
    # reuses an earlier run's encoder) and builds retrieval and ranking around it.
    shutil.copytree(contract.pretrained_encoder_path(), paths.encoder)
    run_cli(
        "shoprank.training",
        *("--out", out, "--scale", "tiny", "--reuse-encoder"),
        *("--fusion-epochs", 1, "--seq-epochs", 1, "--fusions", "weighted"),
    )
    run_cli(
        "shoprank.conversion",
        *("--out", out, "--latency-runs", 3, "--parity-texts", 32),
        *("--no-static-qdq", "--no-tensorrt"),
    )
    run_cli("shoprank.model_repository.build", "--out", out, "--target", "cpu")
    # Recommend mode is served only when its choice beats every baseline on validation; on
    # this tiny shop it may not, and search is served either way.
    rec = json.loads(paths.metrics.read_text())["recommendation"]
    served = (paths.repository("cpu") / contract.RECOMMENDER_MODEL).is_dir()
    assert served == ("served" in rec) != ("error" in rec)

    check_served_answers(paths.repository("cpu"), pd.read_parquet(paths.catalog), tmp_path)


def check_served_answers(repository: Path, catalog: pd.DataFrame, tmp_path: Path) -> None:
    """Serve `repository` and ask it the obvious queries and the synonyms."""
    from shoprank.ops.tritonserver import running_server

    text = (catalog["title"] + " " + catalog["description"]).str.lower()
    leaf = catalog.set_index("product_id")["category"].str.split(" > ").str[-1]
    for word, wanted in SYNONYMS.items():
        assert not text.str.contains(word).any(), word
        assert (leaf == wanted).any(), wanted
    with (
        running_server(repository, log_path=tmp_path / "tritonserver.log") as server,
        SearchClient(server.grpc_url) as client,
    ):
        for query, product_id in obvious_queries(catalog):
            found = [r.product_id for r in client.search(query, top_k=10)]
            assert product_id in found, f"{query!r}: product {product_id} not in {found}"
        for word, wanted in SYNONYMS.items():
            found = client.search(word, top_k=5)
            titles = [r.title for r in found]
            assert any(leaf[r.product_id] == wanted for r in found), f"{word!r}: {titles}"
