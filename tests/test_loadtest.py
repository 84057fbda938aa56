"""Load test summary parsing and a short real Locust run against the tiny ensemble."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest

from shoprank.contract import LOADTEST_REQUESTS_FILE
from shoprank.loadtest import REQUEST_LOG_COLUMNS
from shoprank.loadtest.run import (
    LoadSummary,
    main,
    merge_request_logs,
    parse_run_time,
    summarize,
    worker_request_log,
)

_COLUMNS = [
    "Type", "Name", "Request Count", "Failure Count", "Median Response Time",
    "Average Response Time", "Min Response Time", "Max Response Time", "Average Content Size",
    "Requests/s", "Failures/s", "50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%",
    "99.9%", "99.99%", "100%",
]  # fmt: skip


def _write_stats(path: Path, rows: list[list[object]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(_COLUMNS)
        writer.writerows(rows)
    return path


def test_summarize_reads_the_aggregated_row(tmp_path: Path) -> None:
    stats = _write_stats(
        tmp_path / "locust_stats.csv",
        [
            ["grpc", "search (history)", 100, 1, 11, 12.5, 3.1, 80.2, 10, 20.0, 0.2,
             11, 12, 13, 14, 20, 30, 40, 50, 80, 80, 80],
            ["", "Aggregated", 300, 2, 12, 13.25, 3.0, 95.5, 10, 60.5, 0.4,
             12, 13, 14, 15, 21, 31, 41, 52, 90, 95, 95],
        ],
    )  # fmt: skip
    summary = summarize(stats)
    assert summary == LoadSummary(
        requests=300, failures=2, rps=60.5, p50_ms=12.0, p95_ms=31.0, p99_ms=52.0,
        avg_ms=13.25, max_ms=95.5,
    )  # fmt: skip
    assert summary.failure_rate == pytest.approx(2 / 300)
    assert summary.line() == (
        "p50 12 ms, p95 31 ms, p99 52 ms, 60.5 req/s, failures 2 (of 300 requests)"
    )


def test_summarize_without_requests(tmp_path: Path) -> None:
    stats = _write_stats(
        tmp_path / "locust_stats.csv",
        [["", "Aggregated", 0, 0, 0, 0, 0, 0, 0, 0, 0] + ["N/A"] * 11],
    )
    summary = summarize(stats)
    assert (summary.requests, summary.p50_ms, summary.p99_ms) == (0, None, None)
    assert "p50 n/a" in summary.line()


def test_summarize_rejects_a_file_without_aggregated_row(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Aggregated"):
        summarize(_write_stats(tmp_path / "locust_stats.csv", []))


def test_parse_run_time() -> None:
    assert parse_run_time("30s") == 30
    assert parse_run_time("45") == 45
    assert parse_run_time("2m") == 120
    assert parse_run_time("1h30m") == 5400
    with pytest.raises(ValueError):
        parse_run_time("soon")


@pytest.mark.integration
def test_short_locust_run(
    ensemble_server, search_workload: list[dict], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # Real queries and histories of held-out sessions, with real product ids.
    workload = tmp_path / "workload.json"
    workload.write_text(json.dumps(search_workload))
    out = tmp_path / "loadtest"
    code = main(
        [
            "--users", "2", "--spawn-rate", "2", "--run-time", "5s",
            "--url", ensemble_server.grpc_url, "--workload", str(workload), "--out", str(out),
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, (out / "locust.log").read_text()
    assert "p50" in printed and "req/s" in printed
    report = json.loads((out / "summary.json").read_text())
    assert report["requests"] > 0
    assert report["failures"] == 0
    assert report["rps"] > 0
    assert report["p50_ms"] is not None
    assert (out / "locust_stats.csv").exists()
    # Every request once in the request log, with its outcome and latency.
    log = pd.read_csv(out / LOADTEST_REQUESTS_FILE)
    assert len(log) == report["requests"] and log["ok"].all()
    assert (log["ms"] > 0).all() and log["time"].is_monotonic_increasing


def _write_request_log(path: Path, rows: list[tuple[str, str, str, int]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(REQUEST_LOG_COLUMNS)
        writer.writerows(rows)
    return path


def test_merge_request_logs_interleaves_the_workers_in_time_order(tmp_path: Path) -> None:
    name = "search_ensemble (history)"
    parts = [
        _write_request_log(
            worker_request_log(tmp_path, 0),
            [("100.000", name, "5.10", 1), ("100.500", name, "4.00", 1), ("102.250", name, "9", 0)],
        ),
        _write_request_log(
            worker_request_log(tmp_path, 1),
            [("99.999", name, "7.25", 1), ("100.500", name, "3.50", 1)],
        ),
    ]
    merged = tmp_path / LOADTEST_REQUESTS_FILE
    assert merge_request_logs(parts, merged) == 5
    log = pd.read_csv(merged, dtype={"time": str, "ms": str})
    assert log["time"].tolist() == ["99.999", "100.000", "100.500", "100.500", "102.250"]
    # A tie keeps the workers' order; every row keeps its worker and its values as written.
    assert log["worker"].tolist() == [1, 0, 0, 1, 0]
    assert log["ms"].tolist() == ["7.25", "5.10", "4.00", "3.50", "9"]
    assert log["ok"].tolist() == [1, 1, 1, 1, 0]
    assert not any(p.exists() for p in parts)


def test_merge_request_logs_names_a_worker_without_a_log(tmp_path: Path) -> None:
    parts = [
        _write_request_log(worker_request_log(tmp_path, 0), [("1.000", "x", "1.00", 1)]),
        worker_request_log(tmp_path, 1),
    ]
    with pytest.raises(RuntimeError, match="worker1"):
        merge_request_logs(parts, tmp_path / LOADTEST_REQUESTS_FILE)


@pytest.mark.integration
@pytest.mark.slow
def test_distributed_locust_run_merges_the_workers_request_logs(
    ensemble_server, search_workload: list[dict], tmp_path: Path
) -> None:
    workload = tmp_path / "workload.json"
    workload.write_text(json.dumps(search_workload))
    out = tmp_path / "loadtest"
    code = main(
        [
            "--users", "2", "--spawn-rate", "2", "--run-time", "5s", "--workers", "2",
            "--url", ensemble_server.grpc_url, "--workload", str(workload), "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0, (out / "locust.log").read_text()
    report = json.loads((out / "summary.json").read_text())
    assert report["workers"] == 2
    assert report["requests"] > 0 and report["failures"] == 0
    assert (out / "locust_stats.csv").exists() and (out / "report.html").exists()
    # One log of every request, merged from both workers: the master's totals are the sum of
    # what each worker sent.
    log = pd.read_csv(out / LOADTEST_REQUESTS_FILE)
    assert sorted(log["worker"].unique()) == [0, 1]
    assert len(log) == report["requests"]
    assert log["ok"].all() and log["time"].is_monotonic_increasing
    assert not list(out.glob("requests.worker*.csv"))
