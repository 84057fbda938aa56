"""The benchmark: window stability, summaries, FLOP counting, the naive baseline and its
HTTP server, and a very short end-to-end run on the tiny artifacts."""

from __future__ import annotations

import csv
import json
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import requests
from pipeline_fixtures import assert_same_ranking

from shoprank import contract
from shoprank.bench.batching import batching_between, format_batching, parse_batching, totals_of
from shoprank.bench.measure import (
    BenchError,
    MeasureConfig,
    Summary,
    interleaved_p50s,
    measure,
    percentiles_ms,
    stable_index,
    summarize,
    windows_agree,
)
from shoprank.bench.report import Row, add_ratios, markdown, naive_http_best_rps, targets
from shoprank.core.pipeline import query_feeds

# -- stable windows (pure) ----------------------------------------------------------------------


def test_windows_agree_within_tolerance_of_the_larger() -> None:
    assert windows_agree(100.0, 109.0, 0.1)
    assert windows_agree(110.0, 100.0, 0.1)  # |Δ| = 10 ≤ 0.1 · 110
    assert not windows_agree(100.0, 112.0, 0.1)
    assert not windows_agree(0.0, 0.0, 0.1)  # empty windows are never "stable"


def test_stable_index_finds_the_first_agreeing_pair() -> None:
    assert stable_index([50.0, 100.0, 104.0, 103.0], 0.1) == 2
    assert stable_index([100.0, 60.0, 100.0, 60.0], 0.1) is None
    assert stable_index([100.0], 0.1) is None
    assert stable_index([], 0.1) is None
    assert stable_index([80.0, 100.0], 0.25) == 1


# -- percentiles / summary ------------------------------------------------------------------------


def test_percentiles_and_summary_on_known_latencies() -> None:
    latencies = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    p50, p95, p99 = percentiles_ms(latencies)
    assert p50 == pytest.approx(50.5)
    assert p95 == pytest.approx(95.05)
    assert p99 == pytest.approx(99.01)
    s = summarize(latencies, duration_s=2.0, errors=3)
    assert s.requests == 100 and s.errors == 3
    assert s.throughput_rps == pytest.approx(50.0)
    assert s.mean_ms == pytest.approx(50.5)
    empty = summarize([], duration_s=1.0)
    assert empty.requests == 0 and math.isnan(empty.p50_ms) and empty.throughput_rps == 0


class VirtualTime:
    """Seconds that pass only as simulated requests take them, for `measure(clock=, sleep=)`.

    A request started at worker time t takes `cost(t)` seconds of that worker's own time.
    The measuring thread's `sleep(d)` moves the horizon d ahead and returns once every
    worker has run up to it (each waits on a request that would end past it), so a window
    holds an exact count of requests, however fast or busy the machine is.
    """

    def __init__(self, workers: int, cost: Callable[[float], float]) -> None:
        self.workers, self.cost = workers, cost
        self.measurer = threading.current_thread()
        self.horizon = 0.0
        self.worker_time: dict[int, float] = {}
        self.waiting: dict[int, float] = {}  # worker → end of the request it waits on
        self.closed = False
        self.cond = threading.Condition()

    def clock(self) -> float:
        if threading.current_thread() is self.measurer:
            return self.horizon
        return self.worker_time.get(threading.get_ident(), 0.0)

    def sleep(self, seconds: float) -> None:
        with self.cond:
            self.horizon += seconds
            self.cond.notify_all()
            self.cond.wait_for(
                lambda: (
                    len(self.waiting) == self.workers and min(self.waiting.values()) > self.horizon
                )
            )

    def request(self) -> None:
        """One request's worth of this worker's time (returns once the horizon reaches its
        end, or at once when closed: measure stops its workers by closing their callers)."""
        me = threading.get_ident()
        with self.cond:
            end = self.worker_time.get(me, 0.0)
            end += self.cost(end)
            self.waiting[me] = end
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.closed or end <= self.horizon)
            del self.waiting[me]
            self.worker_time[me] = end

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


def _virtual_measure(
    cost: Callable[[float], float],
    call: Callable[[dict], None] = lambda request: None,
    concurrency: int = 2,
    workload: list[dict] | None = None,
    **config,
):
    """`measure` on virtual time: each request takes `cost(start)` and then runs `call`."""
    vt = VirtualTime(concurrency, cost)

    class Caller:
        def __call__(self, request: dict) -> None:
            vt.request()
            call(request)

        close = staticmethod(vt.close)

    # Eighths of a second and power-of-two costs: every time is exact in binary floats.
    # join_timeout_s=0: the workers wait on virtual time until their callers are closed.
    settings = {"warmup_s": 0.125, "window_s": 0.25, "max_windows": 6, "join_timeout_s": 0}
    workload = workload or [{"query": "q", "history": [], "top_k": 10}]
    return measure(
        Caller,
        workload,
        concurrency,
        MeasureConfig(**{**settings, **config}),
        clock=vt.clock,
        sleep=vt.sleep,
    )


def test_measure_drives_closed_loop_workers_until_stable() -> None:
    calls: list[str] = []
    threads: set[str] = set()

    def call(request: dict) -> None:
        calls.append(request["query"])
        threads.add(threading.current_thread().name)

    workload = [{"query": f"q{i}", "history": [], "top_k": 10} for i in range(10)]
    m = _virtual_measure(lambda t: 1 / 512, call, workload=workload, tolerance=0.5)
    # Steady from the start: the first two windows agree, and measuring stops there.
    assert m.stable and m.window_throughputs == [1024.0, 1024.0]
    assert len(threads) == 2
    assert m.summary.requests == 2 * 256 and m.summary.errors == 0
    # 2 workers × one 1/512 s request at a time: 1024 req/s, every latency 1000/512 ms.
    assert m.summary.p50_ms == m.summary.p99_ms == pytest.approx(1000 / 512)
    assert m.summary.throughput_rps == pytest.approx(1024)
    assert set(calls) == {w["query"] for w in workload}


def test_measure_waits_for_two_windows_that_agree() -> None:
    # Requests take twice as long until 0.375 s (the first window): 512 req/s, then 1024.
    m = _virtual_measure(lambda t: 1 / 256 if t < 0.375 else 1 / 512)
    assert m.stable and m.window_throughputs == [512.0, 1024.0, 1024.0]
    assert m.summary.throughput_rps == pytest.approx(1024)  # the stable pair only


def test_measure_gives_up_after_max_windows_flagged_unstable() -> None:
    # The cost flips every window (0.125 + 0.25 k): no two consecutive windows agree.
    m = _virtual_measure(lambda t: 1 / 256 if int((t - 0.125) / 0.25) % 2 else 1 / 512)
    assert not m.stable and m.window_throughputs == [1024.0, 512.0] * 3
    assert m.summary.requests == 256 + 128  # the last two windows


def test_measure_raises_when_every_request_fails() -> None:
    def call(request: dict) -> None:
        raise ConnectionError("server down")

    with pytest.raises(BenchError, match="server down"):
        _virtual_measure(lambda t: 1 / 512, call, concurrency=1, max_windows=2)


def test_interleaved_rounds_take_turns_on_the_same_requests() -> None:
    now = [0.0]
    seen: list[tuple[str, str]] = []
    cost = {"a": 0.002, "b": 0.004, "c": 0.001}

    def caller(name: str):
        def call(request: dict) -> None:
            seen.append((name, request["query"]))
            now[0] += cost[name]
            if name == "c" and request["query"] == "q1":
                raise ConnectionError("one failure: no latency, not a crash")

        return call

    workload = [{"query": f"q{i}", "history": [], "top_k": 10} for i in range(5)]
    p50s = interleaved_p50s(
        {n: caller(n) for n in cost}, workload, rounds=3, per_round=2, clock=lambda: now[0]
    )
    assert p50s["a"] == pytest.approx([2.0] * 3) and p50s["b"] == pytest.approx([4.0] * 3)
    assert p50s["c"] == pytest.approx([1.0] * 3)
    # Each round sends the same requests through every caller, the order rotating.
    order = [name for name, _ in seen[::2]]
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    queries = [[q for n, q in seen[6 * r : 6 * r + 6]] for r in range(3)]
    assert queries == [["q0", "q1"] * 3, ["q2", "q3"] * 3, ["q4", "q0"] * 3]
    # A caller that completes nothing in a round reads NaN there.
    broken = interleaved_p50s(
        {"x": lambda r: (_ for _ in ()).throw(OSError("down"))}, workload, rounds=1, per_round=2
    )
    assert math.isnan(broken["x"][0])


# -- ratios and targets (pure) ---------------------------------------------------------------------


def _summary(p50: float, rps: float) -> Summary:
    return Summary(100, 0, p50, p50 * 2, p50 * 3, p50, rps, 1.0)


def test_ratios_and_targets() -> None:
    rows = [
        Row("naive", 1, _summary(20.0, 50.0), True),
        Row("onnx-int8", 1, _summary(4.0, 250.0), True),
        Row("onnx-int8-encoder", 1, _summary(2.5, 400.0), True),
        Row("naive-http", 1, _summary(25.0, 40.0), True),
        Row("naive-http", 8, _summary(100.0, 80.0), True),
        Row("triton", 1, _summary(4.8, 200.0), True),
        Row("triton", 8, _summary(10.0, 800.0), True),
        Row("triton-recommend", 1, _summary(5.0, 200.0), True),
        Row("triton-echo", 1, _summary(1.0, 900.0), True),
        Row("onnx-fp32", 1, None, error="boom"),
    ]
    add_ratios(rows)
    assert naive_http_best_rps(rows) == 80.0
    by = {(r.system, r.concurrency): r for r in rows}
    assert by["onnx-int8", 1].latency_ratio == pytest.approx(5.0)  # vs naive in process
    assert by["triton", 1].latency_ratio == pytest.approx(25.0 / 4.8)  # vs naive HTTP ×1
    assert by["triton", 8].latency_ratio == pytest.approx(10.0)
    assert by["triton", 8].throughput_ratio == pytest.approx(10.0)
    assert by["onnx-fp32", 1].latency_ratio is None
    # One stage is not a pipeline: the encoder alone is held against the pipeline only.
    assert by["onnx-int8-encoder", 1].latency_ratio is None
    assert by["onnx-int8-encoder", 1].throughput_ratio is None
    # Nor is the echo model a system: it is the served rows' transport alone.
    assert by["triton-echo", 1].latency_ratio is by["triton-echo", 1].throughput_ratio is None
    found = targets(rows)
    # Triton 4.8 ≤ 1.25 × 4.0; 800 ≥ 5 × 80; pipeline 4.0 ≤ 2 × 2.5; recommend 5.0 ≤ 1.5 × 4.8
    assert [t.holds for t in found] == [True, True, True, True]
    assert "4.80 vs 4.00 ms = 1.20×" in found[0].measured
    assert "transport alone (echo model) 1.00 ms = 0.25× in-process" in found[0].measured
    assert "inside the pipeline" not in found[2].measured  # not timed: nothing said
    by["onnx-int8", 1].encoder_ms = 1.25
    assert "the same encoder inside the pipeline 1.25 ms = 0.50× alone" in (
        targets(rows)[2].measured
    )
    by["triton", 1].summary = _summary(5.2, 190.0)  # 1.30× the in-process pipeline
    assert targets(rows)[0].holds is False
    by["triton", 8].summary = _summary(10.0, 300.0)
    assert targets(rows)[1].holds is False
    by["onnx-int8-encoder", 1].summary = _summary(1.9, 500.0)  # pipeline 2.1× the encoder
    assert targets(rows)[2].holds is False
    by["triton-recommend", 1].summary = _summary(8.0, 120.0)
    assert targets(rows)[3].holds is False
    text = markdown(rows, targets(rows), None, {"machine": "test"})
    assert "failed: boom" in text and "| **no** |" in text
    assert "Dynamic batching" not in text  # no served row carries statistics
    # Interleaved rounds decide: 5.2 / 4.0 = 1.30× by the rows, but within each round the
    # two sides saw the same machine, and their median ratio is 1.225×.
    by["triton", 1].rounds_p50_ms = [4.8, 4.9, 5.0]
    by["onnx-int8", 1].rounds_p50_ms = [4.0, 4.0, 4.0]
    first = targets(rows)[0]
    assert first.holds is True
    assert "5.20 vs 4.00 ms = 1.30×; interleaved, 3 rounds: median 1.23× (1.20–1.25)" in (
        first.measured
    )
    by["triton-echo", 1].rounds_p50_ms = [1.0, 1.2, 2.0]
    assert "1.00 ms = 0.30× in-process (interleaved median)" in targets(rows)[0].measured
    by["onnx-int8", 1].rounds_p50_ms = [4.0, 4.0]  # not the same rounds: the rows decide
    assert targets(rows)[0].holds is False
    del by  # the rows without each reference: not measured, never a verdict
    bare = [r for r in rows if r.system not in ("onnx-int8-encoder", "onnx-int8")]
    assert [t.holds for t in targets(bare)][0::2] == [None, None]


def test_mean_batch_sizes_from_triton_statistics() -> None:
    """Requests over executions per model between two statistics snapshots (Triton's JSON
    writes 64-bit counts as strings; versions of one model add up; ensembles are left out)."""

    def stats(tokenizer: tuple[int, int], ranker: tuple[int, int], search: int) -> dict:
        def model(name: str, version: str, counts: tuple[int, int]) -> dict:
            return {
                "name": name,
                "version": version,
                "inference_count": str(counts[0]),
                "execution_count": str(counts[1]),
            }

        return {
            "model_stats": [
                model("tokenizer", "1", tokenizer),
                model("ranker", "1", (ranker[0] - 10, ranker[1] - 10)),
                model("ranker", "2", (10, 10)),
                model("search", "1", (search, search)),
                model("encoder", "1", (0, 0)),
            ]
        }

    before = totals_of(stats((100, 100), (100, 100), 100))
    after = totals_of(stats((500, 200), (500, 140), 500))
    assert after["ranker"] == (500, 140)
    found = batching_between(before, after, skip=("search",))
    assert [(b.model, b.inferences, b.executions) for b in found] == [
        ("ranker", 400, 40),
        ("tokenizer", 400, 100),
    ]
    assert [b.mean_batch for b in found] == [10.0, 4.0]
    assert parse_batching(format_batching(found)) == found
    rows = [Row("triton", 8, _summary(10.0, 800.0), True, batching=found)]
    text = markdown(rows, targets(rows), None, {"machine": "test"})
    assert "## Dynamic batching" in text
    assert "| shoprank Triton ensemble (gRPC) | 8 | ranker | 400 | 40 | 10.00 |" in text


# -- FLOPs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seq_len", [8, 16])
def test_flop_counter_matches_the_bert_formula(tiny_artifacts, seq_len: int) -> None:
    import torch

    from shoprank.bench.flops import bert_flops, count_flops, load_counting_encoder

    model = load_counting_encoder(tiny_artifacts.encoder)
    cfg = model.transformer.config
    ids = torch.randint(1000, 2000, (1, seq_len))
    mask = torch.ones_like(ids)
    expected = bert_flops(
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.intermediate_size,
        seq_len,
        pooler=getattr(model.transformer, "pooler", None) is not None,
    )
    assert count_flops(model, ids, mask) == expected


def test_matmul_peak_is_positive() -> None:
    from shoprank.bench.flops import matmul_peak_gflops

    rates = matmul_peak_gflops(n=256, min_time_s=0.05)
    assert set(rates) == {"torch", "numpy"} and min(rates.values()) > 0
    assert set(matmul_peak_gflops(n=256, threads=1, min_time_s=0.05)) == {"torch"}


# -- the naive baseline ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def naive(tiny_artifacts):
    from shoprank.bench.naive import NaivePipeline

    return NaivePipeline(tiny_artifacts)


def test_naive_ranks_like_the_onnx_pipeline(naive, tiny_artifacts, search_workload) -> None:
    """Same model and features; the served pipeline scores with the ANN index's 8-bit
    vectors where the naive one uses float32, so scores agree to that rounding."""
    from shoprank.bench.systems import onnx_pipeline

    # The fp32 graph: the repository may serve int8, whose rounding can swap near-ties.
    onnx = onnx_pipeline(tiny_artifacts, tiny_artifacts.encoder_onnx)
    requests_ = [search_workload[0], search_workload[1], {**search_workload[2], "history": []}]
    for r in requests_:
        got = naive.search(r["query"], r["history"], 10)
        want = onnx.search(r["query"], r["history"], 10)
        assert_same_ranking(
            got.product_ids, got.scores, want.product_ids, want.scores, atol=0.02, rtol=0
        )


def test_a_timed_session_tells_the_median_of_the_runs_inside_a_span() -> None:
    from shoprank.bench.systems import TimedSession

    class Session:
        def run(self, names, feeds):
            return [feeds["x"] * 2]

    ticks = iter([0.0, 1.0, 2.0, 2.5, 3.0, 6.0, 7.0, 7.1])
    timed = TimedSession(Session(), clock=lambda: next(ticks))
    assert [timed.run(None, {"x": i})[0] for i in range(4)] == [0, 2, 4, 6]
    assert timed.runs == [(1.0, 1.0), (2.5, 0.5), (6.0, 3.0), (7.1, pytest.approx(0.1))]
    assert timed.p50_ms((2.0, 6.0)) == pytest.approx(1750.0)  # runs ending at 2.5 and 6.0
    assert timed.p50_ms((0.0, 10.0)) == pytest.approx(750.0)
    assert timed.p50_ms((8.0, 9.0)) is None


def test_each_onnx_row_runs_its_own_encoder(tiny_artifacts) -> None:
    """The fp32 and int8 rows swap the encoder graph, and every search runs the swapped one."""
    from shoprank.bench.systems import onnx_pipeline
    from shoprank.core.sessions import cpu_session

    queries = ["red leather sofa", "kids running shoes"]
    for graph in (tiny_artifacts.encoder_onnx, tiny_artifacts.encoder_int8_onnx):
        pipeline = onnx_pipeline(tiny_artifacts, graph)
        want = cpu_session(graph).run(None, query_feeds(pipeline.tokenizer, queries))[0]
        np.testing.assert_array_equal(pipeline.search_pipeline.encode(queries), want)
        np.testing.assert_array_equal(pipeline.encode(queries), want)
    fp32 = onnx_pipeline(tiny_artifacts, tiny_artifacts.encoder_onnx).encode(queries)
    int8 = onnx_pipeline(tiny_artifacts, tiny_artifacts.encoder_int8_onnx).encode(queries)
    assert not np.array_equal(fp32, int8)


def test_fastapi_app_answers_over_real_uvicorn(naive, search_workload) -> None:
    import uvicorn

    from shoprank.bench.http_server import create_app
    from shoprank.ops.tritonserver import free_ports

    port = free_ports(1)[0]
    server = uvicorn.Server(
        uvicorn.Config(create_app(naive), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        # Until uvicorn serves, or its thread ends having failed to start.
        while not server.started and thread.is_alive():
            time.sleep(0.05)
        assert server.started, "uvicorn did not start"
        r = search_workload[0]
        response = requests.post(f"{url}/search", json={**r, "top_k": 5}, timeout=10)
        assert response.status_code == 200
        body = response.json()
        want = naive.search(r["query"], r["history"], 5)
        assert body["product_ids"] == [int(p) for p in want.product_ids]
        assert len(body["scores"]) == len(body["titles"]) == 5
        bad = requests.post(f"{url}/search", json={"query": "sofa", "top_k": 0}, timeout=10)
        assert bad.status_code == 400 and "TOP_K" in bad.json()["detail"]
        empty = requests.post(f"{url}/search", json={"query": "   "}, timeout=10)
        assert empty.status_code == 400
    finally:
        server.should_exit = True
        thread.join(10)


# -- end to end ----------------------------------------------------------------------------------


@pytest.mark.slow  # every system measured end to end, the Triton ones on the real server
def test_short_bench_run_writes_reports(
    tiny_artifacts, ensemble_server, search_workload, tmp_path: Path
) -> None:
    from shoprank.bench.__main__ import BenchConfig, run

    workload = tmp_path / "workload.json"
    workload.write_text(json.dumps(search_workload))
    result = run(
        BenchConfig(
            out=tiny_artifacts.root,
            reports=tmp_path / "reports",
            workload=str(workload),
            url=ensemble_server.grpc_url,
            concurrency="1,2",
            duration_s=0.5,
            warmup_s=0.2,
            max_windows=2,
            rounds=2,
            round_requests=5,
        )
    )
    assert not result.failed, [r.error for r in result.rows]
    for path in (result.markdown, result.csv, result.plot):
        assert path.exists() and path.stat().st_size > 0
    with open(result.csv, newline="") as f:
        rows = list(csv.DictReader(f))
    measured = {(r["system"], int(r["concurrency"])) for r in rows}
    assert measured == {
        ("naive", 1),
        ("onnx-fp32", 1),
        ("onnx-int8", 1),
        ("onnx-int8-encoder", 1),
        ("naive-http", 1),
        ("naive-http", 2),
        ("triton", 1),
        ("triton", 2),
        ("triton-recommend", 1),
        ("triton-recommend", 2),
        ("triton-echo", 1),
    }
    # The numbers hang together: percentiles in order (the CSV prints them all to 4
    # decimals), throughput = requests over the windows' time, and every ratio recomputed
    # from the rows. The CSV rounds throughput and windows to different precisions, so
    # those checks use the measured values, and the CSV is checked to print exactly them.
    by = {(m.system, m.concurrency): m for m in result.rows}
    best_http = max(m.summary.throughput_rps for m in result.rows if m.system == "naive-http")
    for r in rows:
        m = by[r["system"], int(r["concurrency"])]
        s = m.summary
        assert int(r["requests"]) == s.requests > 0 and r["errors"] == "0", r
        assert 0 < float(r["p50_ms"]) <= float(r["p95_ms"]) <= float(r["p99_ms"]), r
        assert s.throughput_rps == pytest.approx(s.requests / s.duration_s, rel=1e-12)
        windows = m.window_throughputs[-2:]  # the summary's windows
        assert min(windows) <= s.throughput_rps * (1 + 1e-12), r
        assert s.throughput_rps <= max(windows) * (1 + 1e-12), r
        assert r["throughput_rps"] == f"{s.throughput_rps:.3f}"
        assert r["window_throughputs"].split() == [f"{t:.2f}" for t in m.window_throughputs]
        if m.system in ("onnx-int8-encoder", "triton-echo"):  # parts: no naive ratios
            assert m.latency_ratio is None and m.throughput_ratio is None
            assert r["latency_ratio_vs_naive"] == r["throughput_ratio_vs_naive_http_best"] == ""
            continue
        ratio = s.throughput_rps / best_http
        assert m.throughput_ratio == pytest.approx(ratio, rel=1e-12)
        assert r["throughput_ratio_vs_naive_http_best"] == f"{m.throughput_ratio:.4f}"
        base = by["naive", 1] if m.transport == "in-process" else by["naive-http", m.concurrency]
        want = base.summary.p50_ms / s.p50_ms
        assert m.latency_ratio == pytest.approx(want, rel=1e-12)
        assert r["latency_ratio_vs_naive"] == f"{m.latency_ratio:.4f}"
    # The served rows carry Triton's batching statistics for their own run: every request
    # went through each model of the ensemble, and no execution ran more than the batch.
    for m in result.rows:
        served = {b.model: b for b in m.batching}
        if m.system == "triton":
            assert set(served) == {contract.SEARCHER_MODEL}, m.batching
        elif m.system == "triton-recommend":
            assert set(served) == {"recommender"}, m.batching
        elif m.system == "triton-echo":
            assert set(served) == {contract.ECHO_MODEL}, m.batching
        else:
            assert not served
        for b in served.values():
            assert b.inferences >= m.summary.requests and 1.0 <= b.mean_batch <= m.concurrency
    # The int8 pipeline's encoder is timed inside it: part of each search, never all of it.
    for m, r in zip(result.rows, rows, strict=True):
        if m.system == "onnx-int8":
            assert 0 < m.encoder_ms < m.summary.p50_ms
            assert r["encoder_in_pipeline_p50_ms"] == f"{m.encoder_ms:.4f}"
        else:
            assert m.encoder_ms is None and r["encoder_in_pipeline_p50_ms"] == ""
    # The ×1 targets' systems were measured again together, in 2 interleaved rounds.
    interleaved = {"onnx-int8", "onnx-int8-encoder", "triton", "triton-recommend", "triton-echo"}
    for m, r in zip(result.rows, rows, strict=True):
        if m.concurrency == 1 and m.system in interleaved:
            assert len(m.rounds_p50_ms) == 2 and all(v > 0 for v in m.rounds_p50_ms), m
            assert r["interleaved_p50_ms"] == " ".join(f"{v:.4f}" for v in m.rounds_p50_ms)
        else:
            assert m.rounds_p50_ms == [] and r["interleaved_p50_ms"] == ""
    text = result.markdown.read_text()
    assert "interleaved, 2 rounds: median" in text
    assert "the same encoder inside the pipeline" in text
    assert "## Targets" in text and "## Encoder FLOP floor" in text
    assert "## Dynamic batching" in text
    assert "transport alone (echo model)" in text
    assert result.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.floor is not None and result.floor.flops > 0


@pytest.mark.slow  # a repository built and a server started per (size, mode)
def test_scale_bench_at_tiny_sizes(tiny_artifacts, search_workload, tmp_path: Path) -> None:
    """`make bench-scale` end to end on tiny catalogs, in both retrieval modes: synthesized
    sizes, the exact scan or the ANN index tuned, the repository built and served by the
    real Triton server, then the ANN files in process; the CSV holds one row per (size,
    mode, system, concurrency), the plot is drawn."""
    import shutil

    from shoprank.bench.scale import (
        IN_PROCESS,
        STAGE_MODELS,
        TRITON,
        ScaleConfig,
        growth_exponent,
    )
    from shoprank.bench.scale import run as scale

    out = tmp_path / "demo"  # a copy: the benchmark writes beside the artifacts it reads
    shutil.copytree(tiny_artifacts.root, out, symlinks=True)
    paths = type(tiny_artifacts)(out)
    paths.workload.parent.mkdir(parents=True, exist_ok=True)
    paths.workload.write_text(json.dumps(search_workload))
    config = ScaleConfig(
        out=out,
        sizes="400,1600",
        modes="exact,ann",
        concurrency="1,2",
        duration_s=0.3,
        warmup_s=0.1,
        max_windows=2,
        recall_target=0.9,
    )
    rows = scale(config)
    with open(paths.reports / "scale.csv", newline="") as f:
        written = list(csv.DictReader(f))
    served = ((TRITON, "1"), (TRITON, "2"))
    assert [(r["products"], r["retrieval"], r["system"], r["concurrency"]) for r in written] == [
        (n, mode, system, c)
        for n in ("400", "1600")
        for mode, systems in (("exact", served), ("ann", (*served, (IN_PROCESS, "1"))))
        for system, c in systems
    ]
    for r in written:
        assert 0 < float(r["p50_ms"]) <= float(r["p99_ms"]) and float(r["rps"]) > 0, r
        assert float(r["recall_at_100"]) >= 0.9 and float(r["index_mb"]) > 0, r
    for n in ("400", "1600"):  # the exact scan is the float32 reference; ANN stores 8 bits
        by_mode = {r["retrieval"]: r for r in written if r["products"] == n}
        assert float(by_mode["exact"]["recall_at_100"]) == 1.0
        assert float(by_mode["exact"]["index_mb"]) > float(by_mode["ann"]["index_mb"])
    for r in written:  # where a served request's time went, by Triton's statistics
        stages = [float(r[f"{m}_ms"]) for m in STAGE_MODELS]
        if r["system"] == TRITON:
            assert float(r["searcher_rss_mb"]) > 0 and all(0 < t < math.inf for t in stages)
        else:
            assert all(math.isnan(t) for t in stages)
    assert growth_exponent(rows, "exact") is not None and growth_exponent(rows, "ann") is not None
    assert (paths.reports / "scale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not any((out / "scale").iterdir())  # the generated folders are removed (no --keep)


def test_deploy_bench_windows_are_cut_by_the_marks() -> None:
    """bench.deploy's report: each request lands in the window its end time falls in, and
    the swap's p99 is compared with the steady one, failures apart."""
    import pandas as pd

    from shoprank.bench.deploy import DeployBenchConfig, summarize

    t0 = 1_000.0
    # 10 req/s: 20 s steady at 100 ms; deploy 0-10 s at 150 ms with one failure; 5 s held
    # at 100 ms; rollback 15-20 s at 300 ms.
    times = t0 + np.arange(-20.0, 20.0, 0.1)
    rel = times - t0
    ms = np.where((rel >= 0) & (rel < 10), 150.0, 100.0)
    ms = np.where(rel >= 15, 300.0, ms)
    ok = ~np.isclose(rel, 5.0)
    log = pd.DataFrame({"time": times, "name": "search", "ms": ms, "ok": ok.astype(int)})
    marks = {
        "deploy_start": t0,
        "deploy_end": t0 + 10,
        "rollback_start": t0 + 15,
        "rollback_end": t0 + 20,
    }
    report = summarize(log, marks, DeployBenchConfig(settle_s=20, ramp_s=5))
    w = report["windows"]
    assert w["steady"]["requests"] == 150 and w["steady"]["p99_ms"] == 100.0
    assert w["deploy"]["requests"] == 100 and w["deploy"]["failures"] == 1
    assert w["deploy"]["p99_ms"] == 150.0 and w["rollback"]["p50_ms"] == 300.0
    assert w["swap"]["requests"] == 200 and w["swap"]["p99_ms"] == 300.0
    assert report["swap_p99_over_steady_p99"] == 3.0 and report["failures"] == 1
    assert report["deploy_s"] == 10.0 and report["rollback_s"] == 5.0
    assert w["swap"]["worst_rolling_p99_ms"] == 300.0
