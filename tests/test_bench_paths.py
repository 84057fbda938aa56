"""`make bench-ann` and `make bench-deploy` through their command lines on the tiny
artifacts, with the shortest settings their flags allow."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shoprank import contract

PNG = b"\x89PNG\r\n\x1a\n"


def run_cli(*args: object) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *map(str, args)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"{args[0]} failed:\n{done.stderr[-3000:]}"
    return done.stdout


def copy_artifacts(paths: contract.ArtifactPaths, to: Path) -> contract.ArtifactPaths:
    """A copy of the run: the benchmarks write their reports beside the artifacts."""
    shutil.copytree(paths.root, to, symlinks=True, ignore=shutil.ignore_patterns("*.log"))
    return contract.ArtifactPaths(to)


@pytest.mark.slow
def test_bench_ann_compares_every_index_at_each_size(tiny_artifacts, tmp_path):
    reports = tmp_path / "reports"
    sizes = (300, 600)
    run_cli(
        "shoprank.bench.ann",
        *("--out", tiny_artifacts.root, "--reports", reports),
        *("--sizes", ",".join(map(str, sizes)), "--queries", 20, "--threads", 1),
    )
    with open(reports / "ann.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    settings = [
        ("faiss", "flat", "exact"),
        *(("faiss", "hnsw_sq8", f"ef_search={v}") for v in (64, 128, 256, 512)),
        *(("faiss", "ivf_sq8", f"nprobe={v}") for v in (8, 16, 32, 64, 128)),
        *(("usearch", "hnsw_i8", f"expansion={v}") for v in (64, 128, 256, 512)),
    ]
    assert [(int(r["size"]), r["library"], r["index"], r["param"]) for r in rows] == [
        (size, *s) for size in sizes for s in settings
    ]
    for r in rows:
        assert 0.0 < float(r["recall_at_100"]) <= 1.0, r
        assert float(r["ms_per_query"]) > 0 and float(r["index_mb"]) > 0, r
    assert {float(r["recall_at_100"]) for r in rows if r["index"] == "flat"} == {1.0}
    cells = [line.split("|")[1:-1] for line in (reports / "ann.md").read_text().splitlines()]
    table = [[c.strip() for c in row] for row in cells if row and row[0].strip()[:1].isdigit()]
    assert [(int(t[0].replace(",", "")), t[1], t[2], t[3]) for t in table] == [
        (int(r["size"]), r["library"], r["index"], r["param"]) for r in rows
    ]


@pytest.mark.slow
@pytest.mark.integration
def test_bench_deploy_swaps_under_load_without_a_failed_request(
    tiny_artifacts, search_workload, tmp_path
):
    paths = copy_artifacts(tiny_artifacts, tmp_path / "demo")
    paths.workload.parent.mkdir(parents=True, exist_ok=True)
    paths.workload.write_text(json.dumps(search_workload))  # as `make demo` leaves it
    # The load lasts settle + --max-swap-s (its default: a generous bound for a busy
    # machine) + tail, whatever the swap takes.
    stdout = run_cli(
        "shoprank.bench.deploy",
        *("--out", paths.root, "--users", 2),
        *("--settle-s", 5, "--ramp-s", 1, "--hold-s", 1, "--tail-s", 1),
    )
    assert "version 2 live (was 1)" in stdout and "version 1 live (was 2)" in stdout
    report = json.loads((paths.reports / "deploy.json").read_text())
    windows = report["windows"]
    assert report["failures"] == 0 and report["requests"] > 0
    assert all(w["failures"] == 0 for w in windows.values())
    swap, deploy, rollback = windows["swap"], windows["deploy"], windows["rollback"]
    assert report["requests"] >= swap["requests"] >= deploy["requests"] + rollback["requests"] > 0
    assert swap["end"] == rollback["end"] and deploy["end"] <= rollback["start"]
    assert 0 < swap["p50_ms"] <= swap["p99_ms"]
    assert (paths.reports / "deploy.png").read_bytes()[:8] == PNG
