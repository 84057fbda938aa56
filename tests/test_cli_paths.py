"""Bring-your-own data through the command lines a user runs: a relevance CSV written here
→ `python -m shoprank.training --data` → `python -m shoprank.conversion` →
`python -m shoprank.model_repository.build` → the generated repository, run in process,
answers each product's own title with that product."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from shoprank import contract

KINDS = {
    "sofa": "Home > Furniture > Sofas",
    "lamp": "Home > Lighting > Lamps",
    "desk": "Home > Furniture > Desks",
    "rug": "Home > Textiles > Rugs",
    "kettle": "Kitchen > Appliances > Kettles",
    "boots": "Fashion > Shoes > Boots",
    "jacket": "Fashion > Clothing > Jackets",
    "backpack": "Fashion > Bags > Backpacks",
}
COLORS = ("grey", "red", "blue", "black")
BRANDS = ("Nordvik", "Lumen", "Oakline", "Tundra")
MATERIALS = ("linen", "steel", "oak", "wool")
COLUMNS = (
    *("query", "product_id", "title", "category", "brand", "color", "material", "price"),
    "relevance",
)


def write_shop_csv(path: Path) -> dict[str, int]:
    """One product per (kind, color), with its own id and attributes; the query "<color>
    <kind>" grades it 3, the same kind in the next color 2, the next kind in its color 0.
    Returns {title: product id}."""
    products = {}
    for k, (kind, category) in enumerate(KINDS.items()):
        for c, color in enumerate(COLORS):
            brand, material = BRANDS[(k + c) % 4], MATERIALS[(3 * k + c) % 4]
            title = f"{brand} {color.title()} {material.title()} {kind.title()}"
            products[k, c] = (5000 + 10 * k + c, title, category, brand, color, material, 20 + k)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for k, kind in enumerate(KINDS):
            for c, color in enumerate(COLORS):
                judged = (((k, c), 3), ((k, (c + 1) % 4), 2), (((k + 1) % len(KINDS), c), 0))
                for key, grade in judged:
                    writer.writerow([f"{color} {kind}", *products[key], grade])
    return {title: pid for pid, title, *_ in products.values()}


def run_cli(*args: object) -> None:
    done = subprocess.run(
        [sys.executable, "-m", *map(str, args)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"{args[0]} failed:\n{done.stderr[-3000:]}"


@pytest.mark.slow
def test_own_csv_through_the_train_convert_and_build_clis(tmp_path):
    from shoprank.core.pipeline import InProcessPipeline

    data = tmp_path / "shop.csv"
    titles = write_shop_csv(data)
    out = tmp_path / "run"
    # The tiny test fixture's settings (tests/pipeline_fixtures.py).
    tiny = ("--tiny-encoder", "--max-steps", 30, "--fusion-epochs", 2, "--seq-epochs", 3)
    run_cli("shoprank.training", "--data", data, "--out", out, *tiny)
    run_cli("shoprank.conversion", "--out", out, "--latency-runs", 3)
    run_cli("shoprank.model_repository.build", "--out", out, "--target", "cpu")

    repository = contract.ArtifactPaths(out).repository("cpu")
    for model in (contract.ENSEMBLE_MODEL, contract.SEARCHER_MODEL):
        assert (repository / model / "config.pbtxt").is_file(), model
    pipeline = InProcessPipeline(repository)
    for title, product_id in titles.items():
        answer = pipeline.search(title, [], 10)
        ids = answer.product_ids.tolist()
        assert set(ids) <= set(titles.values())  # the CSV's own product ids
        assert product_id in ids[:3], f"{title!r} (id {product_id}) not in the top 3: {ids}"
        assert answer.titles[ids.index(product_id)] == title
