"""docs/benchmarks.md from the benchmark commands' own output files.

Every file is written in its real format, by the stage's own writer where one exists
(bench.report.write_csv, bench.scale.write, bench.deploy.summarize, bench.ann's writer,
loadtest.run.summarize, conversion's Variant and build_dense_index, the metric functions
that fill metrics.json), and the hand-built dicts are read back by their stage's own
report code first, so a format the stages no longer write fails here.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import subprocess
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shoprank.bench import ann, benchmarks_doc, deploy, scale
from shoprank.bench.batching import Batching
from shoprank.bench.measure import Summary
from shoprank.bench.report import Row as BenchRow
from shoprank.bench.report import add_ratios, write_csv
from shoprank.bench.systems import NAIVE_HTTP, ONNX_INT8, ONNX_INT8_ENCODER, TRITON, TRITON_ECHO
from shoprank.conversion.convert import Variant
from shoprank.conversion.dense import build_dense_index
from shoprank.conversion.latency import Speed
from shoprank.conversion.report import report_lines
from shoprank.core.ann import DenseConfig
from shoprank.data.metrics import (
    NDCG_AT_10,
    PURCHASE_NDCG_AT_10,
    mean_metrics,
    next_item_metrics,
    paired_bootstrap_gain,
)
from shoprank.loadtest import REFUSED_NAME
from shoprank.loadtest.run import summarize as locust_summary
from shoprank.training.report import report_markdown

MEASURED = datetime.datetime(2031, 5, 17, 12, 0).timestamp()  # a date no real run has
COMMIT = "abc1234"


def _dated(path: Path) -> Path:
    os.utime(path, (MEASURED, MEASURED))
    return path


# -- the outputs, each in its stage's format -------------------------------------------------
JUDGED = {1: {10: 3, 11: 2, 12: 0}, 2: {20: 3, 21: 1}}


def _retrieval(order: dict[int, list[int]]) -> dict:
    return mean_metrics(order, JUDGED)


def write_metrics(out: Path, served_first: int = 10) -> dict:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.8, 200)
    noise = rng.normal(0.0, 0.05, 200)
    metrics = {
        "config": {"data": "", "scale": "demo", "seed": 0},
        "retrieval": {
            "split": "test",
            "fine_tuned": _retrieval({1: [12, 11, 10], 2: [21, 20]}),
            "served": _retrieval({1: [served_first, 11, 12], 2: [20, 21]}),
        },
        "fusion": {
            "trained": True,
            "served": "target_attention",
            "relevance_only": {"click_auc": 0.61, PURCHASE_NDCG_AT_10: 0.512},
            "target_attention": {
                "click_auc": 0.66,
                PURCHASE_NDCG_AT_10: 0.55,
                "sessions_with_purchase": 741,
                "gain_vs_relevance_only": paired_bootstrap_gain(base, base * 1.075 + noise),
            },
            "sequential_in_search": {
                "lambda": 1.0,
                "test_purchase_ndcg@10": {"served": 0.5501, "served_plus_sequential": 0.5616},
                "gain": paired_bootstrap_gain(base, base * 1.021 + noise),
                "sessions": 741,
            },
        },
        "recommendation": {
            "popularity": next_item_metrics(np.array([40, 300, 12])),
            "sequential": next_item_metrics(np.array([1, 7, 30])),
            "sequential_curve": [{"epoch": 1, "loss": 3.0}],
            "validation": {"sequential": next_item_metrics(np.array([2, 3, 40]))},
            "served": {"name": "sequential"},
        },
        "baselines": {
            "split": "test",
            "bm25": _retrieval({1: [11, 12, 10], 2: [21, 20]}),
            "seconds": 12.5,
        },
    }
    text = report_markdown(metrics, {})  # training's own report reads the same dict
    assert "target attention (served)" in text and "sequential model (served)" in text
    path = out / "metrics.json"
    path.write_text(json.dumps(metrics, indent=2))
    _dated(path)
    return metrics


def write_conversion_report(out: Path) -> dict:
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(300, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[:20] + 0.1 * rng.normal(size=(20, 16)).astype(np.float32)
    (out / "onnx").mkdir(parents=True)
    dense = build_dense_index(
        vectors, DenseConfig(kind="flat"), queries, queries, out / "onnx" / "dense.faiss", k=10
    )
    int8 = Variant(
        "int8_dynamic",
        out / "onnx" / "encoder.int8.onnx",
        cosine=0.9921,
        quality={NDCG_AT_10: 0.7216},
        size_mb=22.8,
        latency=Speed(p50_ms=2.47, p95_ms=2.9, batch=1, threads=1),
        accepted=True,
        batch_drift=3.2e-8,
    )
    refused = Variant("int8_static_qdq", None, reason="static QDQ failed: no calibration")
    report = {
        "fused": True,
        "parity": {
            "queries": {"min_cosine": 0.99999},
            "products": {"min_cosine": 0.99998},
            "ranker_max_abs_diff": 1e-6,
        },
        "variants": {"int8_dynamic": int8.to_json(), "int8_static_qdq": refused.to_json()},
        "selected_encoder": "int8_dynamic",
        "dense_index": dense,
    }
    assert "int8_dynamic" in "\n".join(report_lines(report))  # conversion reads it
    path = out / "onnx" / "conversion_report.json"
    path.write_text(json.dumps(report, indent=2))
    _dated(path)
    return report


def write_bench(out: Path) -> None:
    rows = [
        BenchRow(
            ONNX_INT8,
            1,
            Summary(500, 0, 12.0, 14.0, 15.0, 12.2, 83.0, 6.0),
            encoder_ms=7.0,
            rounds_p50_ms=[10.0, 10.0, 10.0],
        ),
        BenchRow(ONNX_INT8_ENCODER, 1, Summary(900, 0, 4.0, 4.4, 5.0, 4.1, 250.0, 6.0)),
        BenchRow(NAIVE_HTTP, 1, Summary(100, 0, 80.0, 90.0, 95.0, 82.0, 12.5, 8.0)),
        BenchRow(
            TRITON,
            1,
            Summary(400, 0, 15.04, 18.0, 21.7, 15.5, 66.3, 6.0),
            batching=[Batching("encoder", 400, 400), Batching("ranker", 400, 400)],
            rounds_p50_ms=[13.0, 14.0, 16.0],
        ),
        BenchRow(
            TRITON,
            4,
            Summary(900, 0, 30.0, 40.0, 50.0, 31.0, 130.0, 6.0),
            batching=[Batching("encoder", 900, 300), Batching("ranker", 900, 360)],
        ),
        BenchRow(TRITON, 8, None, error="server died"),
        BenchRow(TRITON_ECHO, 1, Summary(2000, 0, 3.0, 3.5, 4.0, 3.1, 320.0, 6.0)),
    ]
    add_ratios(rows)
    write_csv(rows, out / "reports" / "bench.csv")
    _dated(out / "reports" / "bench.csv")


SCALE_ROWS = [
    scale.Row(20_000, "ann", TRITON, 1, 15.0, 21.7, 66.0, 0.977, 20.0, 8.0, 266.0, 12.1),
    scale.Row(20_000, "ann", TRITON, 8, 60.1, 90.0, 120.9, 0.977, 20.0, 8.0, 266.0, 41.0),
    scale.Row(20_000, "ann", scale.IN_PROCESS, 1, 9.3, 13.6, 100.0, 0.977, 20.0, 8.0, math.nan),
    scale.Row(200_000, "ann", TRITON, 1, 18.9, 25.4, 50.0, 0.982, 190.0, 89.0, 500.0, 16.0),
]


def write_scale(out: Path) -> None:
    scale.write(SCALE_ROWS, out / "reports")
    _dated(out / "reports" / "scale.csv")


def write_ann(out: Path) -> None:
    rows = [
        ann.Row(200_000, "faiss", "flat", "exact", 0.0, 307.2, 1.0, 19.7),
        ann.Row(200_000, "faiss", "ivf_sq8", "nprobe=32", 80.0, 190.0, 0.977, 0.56),
    ]
    ann._write(rows, out / "reports", 300)
    _dated(out / "reports" / "ann.csv")


LOCUST_STATS = """Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,\
Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,\
90%,95%,98%,99%,99.9%,99.99%,100%
grpc,search,2900,0,75,76.1,20,300,0,96.7,0,75,80,85,90,100,110,115,120,200,300,300
grpc,{refused},177,177,1,1.2,0,5,0,5.9,5.9,1,1,1,1,2,2,3,4,5,5,5
,Aggregated,3077,177,74,72.0,0,300,0,102.6,5.9,74,80,85,90,100,110,115,120,200,300,300
"""


def write_loadtest(out: Path) -> dict:
    folder = out / "loadtest"
    folder.mkdir(parents=True)
    stats = folder / "locust_stats.csv"
    stats.write_text(LOCUST_STATS.format(refused=REFUSED_NAME))
    summary, refused = locust_summary(stats), locust_summary(stats, REFUSED_NAME)
    report = {  # what `python -m shoprank.loadtest.run` writes around the two summaries
        **asdict(summary),
        "failure_rate": summary.failure_rate,
        "url": "localhost:8001",
        "users": 8,
        "spawn_rate": 8,
        "run_time": "30s",
        "workload": None,
        "locust_exit_code": 0,
        "started_at": "2031-05-17T12:00:00+0000",
        "refused": asdict(refused),
        "throttled": None,
    }
    (folder / "summary.json").write_text(json.dumps(report, indent=2) + "\n")
    _dated(folder / "summary.json")
    return report


def write_deploy(out: Path) -> dict:
    marks = {"deploy_start": 1000.0, "deploy_end": 1030.5}
    marks |= {"rollback_start": 1040.5, "rollback_end": 1067.0}
    times = np.arange(960.0, 1080.0, 0.05)
    swapping = (times >= 1000.0) & (times < 1067.0)
    log = pd.DataFrame(
        {
            "time": times,
            "ms": np.where(swapping, 200.0, 100.0) + (times % 1.0),
            "ok": ~((times > 1010.0) & (times < 1010.2)),  # four requests fail in the deploy
        }
    )
    report = deploy.summarize(log, marks, deploy.DeployBenchConfig())
    (out / "reports").mkdir(parents=True, exist_ok=True)
    (out / "reports" / deploy.REPORT_FILE).write_text(json.dumps(report, indent=2))
    _dated(out / "reports" / deploy.REPORT_FILE)
    return report


@pytest.fixture(scope="module")
def every_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    write_metrics(out)
    write_conversion_report(out)
    write_bench(out)
    write_scale(out)
    write_ann(out)
    write_loadtest(out)
    write_deploy(out)
    return out


def block(text: str, name: str) -> str:
    start = text.index(benchmarks_doc.start_marker(name))
    end = text.index(benchmarks_doc.end_marker(name)) + len(benchmarks_doc.end_marker(name))
    return text[start:end]


# -- the tests -------------------------------------------------------------------------------
def test_every_output_becomes_a_section_with_command_date_and_commit(every_output, tmp_path):
    doc = tmp_path / "docs" / "benchmarks.md"
    written = benchmarks_doc.write_doc(every_output, doc, commit=COMMIT)
    assert written == [s.name for s in benchmarks_doc.SOURCES]
    text = doc.read_text()
    commands = {
        "relevance": "`make eval`",
        "conversion": "`make convert`",
        "bench": "`make bench`",
        "scale": '`make bench-scale BENCH_ARGS="--sizes 20000,200000"`',
        "ann": '`make bench-ann BENCH_ARGS="--sizes 200000"`',
        "loadtest": "`make loadtest USERS=8 RUN_TIME=30s`",
        "deploy": "`make bench-deploy`",
    }
    for source in benchmarks_doc.SOURCES:
        section = block(text, source.name)
        assert section.count(benchmarks_doc.start_marker(source.name)) == 1
        provenance = f"{commands[source.name]} → `{source.path}` · measured 2031-05-17"
        assert f"{provenance} · commit {COMMIT}" in section
        assert "\n|---|" in section  # a table


def test_sections_show_the_files_figures(every_output, tmp_path):
    doc = tmp_path / "benchmarks.md"
    benchmarks_doc.write_doc(every_output, doc, commit=COMMIT)
    text = doc.read_text()
    metrics = json.loads((every_output / "metrics.json").read_text())

    relevance = block(text, "relevance")
    served, bm25 = metrics["retrieval"]["served"], metrics["baselines"]["bm25"]
    assert f"| {served[NDCG_AT_10]:.4f} | {served['recall@100']:.4f} |" in relevance
    assert f"= **{served[NDCG_AT_10] / bm25[NDCG_AT_10]:.3f}× BM25**" in relevance
    fusion = metrics["fusion"]
    for gain in (
        fusion["target_attention"]["gain_vs_relevance_only"],
        fusion["sequential_in_search"]["gain"],
    ):
        low, high = gain["ci95_low"], gain["ci95_high"]
        assert low < gain["relative"] < high  # three different figures
        shown = f"{gain['relative']:+.1%} ({low:+.1%} … {high:+.1%})"
        assert shown in relevance
    assert "| fusion: target attention (served) | 0.6600 | 0.5500 | +" in relevance
    assert "| 1.00 | 0.5501 | 0.5616 | +" in relevance
    sequential = metrics["recommendation"]["sequential"]
    on_val = metrics["recommendation"]["validation"]["sequential"]
    assert (
        f"| **sequential model** (served) | {on_val['hr@10']:.4f} | {on_val['ndcg@10']:.4f} | "
        f"{sequential['hr@10']:.4f} |"
    ) in relevance
    assert "12.5" not in relevance  # the baselines' run time is not a system

    conversion = block(text, "conversion")
    assert "| int8_dynamic | 22.8 | 2.47 | 0.9921 | 0.7216 | 3.2e-08 | yes |" in conversion
    assert "| int8_static_qdq | – | – | – | – | – | no: static QDQ failed" in conversion
    assert "Dense index: flat over 300 products" in conversion

    bench = block(text, "bench")
    assert "| shoprank Triton ensemble (gRPC) | grpc | 1 | 15.04 | 18.00 | 21.70 | 66.3 |" in bench
    assert f"| {80.0 / 15.04:.2f} | {66.3 / 12.5:.2f} |" in bench
    assert "failed: server died" in bench
    # The targets' same-run ratios, and the batcher's evidence per model and concurrency.
    assert f"15.04 / 12.00 ms = **{15.04 / 12.0:.2f}×** (interleaved, 3 rounds: " in bench
    assert "median 1.40× (1.30–1.60))" in bench
    assert "12.00 / 4.00 ms = **3.00×**;" in bench  # the encoder row was not interleaved
    assert "12.00 / 4.00 ms = **3.00×**" in bench
    assert "the transport alone (echo model ×1) / in-process int8 pipeline: 3.00 / 12.00" in bench
    assert "the int8 encoder inside the pipeline / alone: 7.00 / 4.00 ms = **1.75×**" in bench
    assert "| system | conc. | encoder | ranker |" in bench
    assert "| shoprank Triton ensemble (gRPC) | 4 | 3.00 | 2.50 |" in bench
    assert "| shoprank Triton ensemble (gRPC) | 1 | 1.00 | 1.00 |" in bench

    scale_section = block(text, "scale")
    assert "| 20,000 | ann | Triton, gRPC | 1 | 15.0 | 21.7 | 66.0 | 12.1 |" in scale_section
    assert "| 20,000 | ann | in process | 1 | 9.3 | 13.6 | 100.0 | – |" in scale_section
    slope = math.log(18.9 / 15.0) / math.log(200_000 / 20_000)
    assert f"products^{slope:.2f}" in scale_section
    assert "![p50 against catalog size](scale.png)" in scale_section
    assert (tmp_path / "scale.png").read_bytes() == (
        every_output / "reports/scale.png"
    ).read_bytes()

    assert "| 200,000 | faiss | ivf_sq8 | nprobe=32 | 80.0 | 190 | 0.977 | 0.56 |" in block(
        text, "ann"
    )

    loadtest = block(text, "loadtest")
    assert "| all requests | 3,077 | 177 | 102.6 | 74 | 110 | 120 | 300 |" in loadtest
    assert "| refused by the server | 177 | 177 | 5.9 |" in loadtest
    assert "throttle" not in loadtest.split("|---|")[1]  # none throttled: no row

    report = json.loads((every_output / "reports" / "deploy.json").read_text())
    hot = block(text, "deploy")
    assert f"{report['requests']:,} requests, **4 failed**" in hot
    assert "deploy 30.5 s, rollback 26.5 s" in hot
    assert f"swap p99 = **{report['swap_p99_over_steady_p99']:.2f}× the steady p99**" in hot
    assert "| deploy | 0.0 | 30.5 |" in hot


def test_a_section_not_remeasured_is_kept(every_output, tmp_path):
    doc = tmp_path / "benchmarks.md"
    benchmarks_doc.write_doc(every_output, doc, commit=COMMIT)
    notes = "\n## Overload\n\nA hand-written section outside the markers.\n"
    doc.write_text(doc.read_text() + notes)
    before = doc.read_text()

    later = tmp_path / "later"
    later.mkdir()
    write_metrics(later, served_first=12)  # only relevance re-measured, with other figures
    assert benchmarks_doc.write_doc(later, doc, commit="def5678") == ["relevance"]
    after = doc.read_text()

    for source in benchmarks_doc.SOURCES[1:]:
        assert block(after, source.name) == block(before, source.name)
    assert notes in after
    assert block(after, "relevance") != block(before, "relevance")
    assert "commit def5678" in block(after, "relevance")
    assert after.count(benchmarks_doc.start_marker("relevance")) == 1
    assert after.index("## Relevance") < after.index("## Encoder conversion")  # in place


def test_a_new_section_goes_in_the_sources_order(tmp_path):
    doc = tmp_path / "benchmarks.md"
    only_deploy = tmp_path / "a"
    only_deploy.mkdir()
    write_deploy(only_deploy)
    benchmarks_doc.write_doc(only_deploy, doc, commit=COMMIT)
    only_scale = tmp_path / "b"
    only_scale.mkdir()
    write_scale(only_scale)
    benchmarks_doc.write_doc(only_scale, doc, commit=COMMIT)
    text = doc.read_text()
    assert text.startswith("# Benchmarks")
    assert text.index("## Catalog scale") < text.index("## Hot deploy under load")


def test_the_command_line_writes_the_current_commit(every_output, tmp_path):
    doc = tmp_path / "benchmarks.md"
    assert benchmarks_doc.main(["--out", str(every_output), "--doc", str(doc)]) == 0
    repo = Path(benchmarks_doc.__file__).resolve().parents[1]
    head = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert f"· commit {head}" in block(doc.read_text(), "scale")


def test_no_outputs_leave_the_doc_alone(tmp_path, capsys):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nkept\n")
    assert benchmarks_doc.main(["--out", str(tmp_path / "empty"), "--doc", str(doc)]) == 2
    assert doc.read_text() == "# Benchmarks\n\nkept\n"
    assert "metrics.json" in capsys.readouterr().err
