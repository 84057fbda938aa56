"""Benchmark results → ratios vs the naive baseline, targets, Markdown, CSV and a PNG.

Ratios:
- latency ratio = naive p50 / this p50 (above 1: faster than naive). In-process rows are
  held against the naive pipeline in process, served rows against the naive HTTP server
  at the same concurrency, so each compares like with like.
- throughput ratio = this req/s / the naive HTTP server's best req/s over all measured
  concurrencies (the baseline's best effort).

The floor rows get neither: the encoder alone is one stage, held against the pipeline
instead; the echo model (the searcher's tensors answered without work) is the served
rows' transport alone, reported beside the serving-overhead target, as the encoder's own
time inside the int8 pipeline is beside the pipeline ÷ encoder target.
Every target is a ratio of two rows of the same run, so a busy or a fast machine moves
both sides alike.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from shoprank.bench.batching import Batching, format_batching
from shoprank.bench.flops import FlopFloor
from shoprank.bench.measure import Summary
from shoprank.bench.systems import (
    LABELS,
    NAIVE,
    NAIVE_HTTP,
    ONNX_INT8,
    ONNX_INT8_ENCODER,
    TRANSPORT,
    TRITON,
    TRITON_ECHO,
    TRITON_RECOMMEND,
)

# Targets (measured by the benchmark, not asserted by timed tests), each a ratio of rows
# measured in the same run.
TARGET_SERVING_OVERHEAD = 1.25  # Triton p50 ≤ this × the in-process pipeline's p50, conc. 1
TARGET_SERVING_CONCURRENCY = 1
TARGET_THROUGHPUT_RATIO = 5.0
TARGET_THROUGHPUT_CONCURRENCY = 8
TARGET_PIPELINE_VS_ENCODER = 2.0  # in-process pipeline p50 ≤ this × the encoder's alone
TARGET_RECOMMEND_VS_SEARCH = 1.5  # recommend p50 ≤ this × search p50, concurrency 1
# Rows that measure a part, not a system: no ratios against the naive baseline.
FLOOR_ROWS = (ONNX_INT8_ENCODER, TRITON_ECHO)

CSV_COLUMNS = (
    "system",
    "label",
    "transport",
    "concurrency",
    "requests",
    "errors",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "mean_ms",
    "throughput_rps",
    "latency_ratio_vs_naive",
    "throughput_ratio_vs_naive_http_best",
    "stable",
    "window_throughputs",
    "batching",
    "encoder_in_pipeline_p50_ms",
    "interleaved_p50_ms",
    "error",
)


@dataclass
class Row:
    """One system at one concurrency (summary None when it could not be measured)."""

    system: str
    concurrency: int
    summary: Summary | None
    stable: bool = False
    window_throughputs: list[float] = field(default_factory=list)
    error: str = ""
    latency_ratio: float | None = None
    throughput_ratio: float | None = None
    # Served rows: each model's requests and executions during this row's run.
    batching: list[Batching] = field(default_factory=list)
    # The in-process int8 row: its encoder session's own p50 (ms) inside the pipeline.
    encoder_ms: float | None = None
    # Concurrency-1 rows of the targets: p50 (ms) in each interleaved round, in order
    # (`measure.interleaved_p50s`); empty when not interleaved.
    rounds_p50_ms: list[float] = field(default_factory=list)

    @property
    def label(self) -> str:
        return LABELS.get(self.system, self.system)

    @property
    def transport(self) -> str:
        return TRANSPORT.get(self.system, "")


@dataclass(frozen=True)
class Target:
    """One target and whether this run met it (None: not measured)."""

    name: str
    measured: str
    holds: bool | None


def _find(rows: Sequence[Row], system: str, concurrency: int) -> Row | None:
    for row in rows:
        if row.system == system and row.concurrency == concurrency and row.summary is not None:
            return row
    return None


def naive_http_best_rps(rows: Sequence[Row]) -> float | None:
    """The naive HTTP baseline's best throughput over all concurrencies."""
    rates = [r.summary.throughput_rps for r in rows if r.system == NAIVE_HTTP and r.summary]
    return max(rates) if rates else None


def add_ratios(rows: Sequence[Row]) -> None:
    """Fill `latency_ratio` and `throughput_ratio` of every measured row (see module doc)."""
    best = naive_http_best_rps(rows)
    for row in rows:
        if row.summary is None or row.system in FLOOR_ROWS:
            continue
        if row.transport == "in-process":
            base = _find(rows, NAIVE, row.concurrency) or _find(rows, NAIVE, 1)
        else:
            base = _find(rows, NAIVE_HTTP, row.concurrency)
        if base is not None and base.summary is not None and row.summary.p50_ms > 0:
            row.latency_ratio = base.summary.p50_ms / row.summary.p50_ms
        if best:
            row.throughput_ratio = row.summary.throughput_rps / best


def round_ratios(top: Sequence[float], bottom: Sequence[float]) -> list[float]:
    """top ÷ bottom p50 within each interleaved round both completed (empty when the
    rows were not interleaved together)."""
    if len(top) != len(bottom):
        return []
    return [a / b for a, b in zip(top, bottom, strict=True) if b > 0 and not math.isnan(a)]


def interleaved_note(ratios: Sequence[float]) -> str:
    """How the rounds' ratios read in a target's measurement."""
    return (
        f"interleaved, {len(ratios)} rounds: median {float(np.median(ratios)):.2f}× "
        f"({min(ratios):.2f}–{max(ratios):.2f})"
    )


def _judged_ratio(top: Row, bottom: Row) -> tuple[float, list[float]]:
    """(the ratio a target is judged on, the interleaved rounds' ratios): the rounds'
    median when both rows were measured in them (each round's two sides saw nearly the
    same machine, the rows' own windows did not), else the rows' p50 ratio. Both rows
    must be measured."""
    assert top.summary is not None and bottom.summary is not None
    paired = round_ratios(top.rounds_p50_ms, bottom.rounds_p50_ms)
    if paired:
        return float(np.median(paired)), paired
    b = bottom.summary.p50_ms
    return (top.summary.p50_ms / b if b > 0 else math.inf), paired


def _p50_ratio(
    name: str, top: Row | None, bottom: Row | None, limit: float, units: str = "ms"
) -> Target:
    """Target `name`: top's p50 ≤ `limit` × bottom's p50 (`_judged_ratio`)."""
    if top is None or top.summary is None or bottom is None or bottom.summary is None:
        return Target(name, "not measured", None)
    a, b = top.summary.p50_ms, bottom.summary.p50_ms
    measured = f"{a:.2f} vs {b:.2f} {units} = {a / b if b > 0 else math.inf:.2f}×"
    ratio, paired = _judged_ratio(top, bottom)
    if paired:
        measured += f"; {interleaved_note(paired)}"
    return Target(name, measured, ratio <= limit)


def targets(rows: Sequence[Row]) -> list[Target]:
    """The targets, evaluated on this run's rows."""
    c = TARGET_SERVING_CONCURRENCY
    triton1 = _find(rows, TRITON, c)
    in_process = _find(rows, ONNX_INT8, 1)
    out = [
        _with_transport(
            _p50_ratio(
                f"Triton full request p50 ≤ {TARGET_SERVING_OVERHEAD:g}× the in-process int8 "
                f"pipeline's p50 at concurrency {c}",
                triton1,
                in_process,
                TARGET_SERVING_OVERHEAD,
            ),
            _find(rows, TRITON_ECHO, 1),
            in_process,
        )
    ]
    triton8 = _find(rows, TRITON, TARGET_THROUGHPUT_CONCURRENCY)
    best = naive_http_best_rps(rows)
    name = (
        f"Triton throughput at concurrency {TARGET_THROUGHPUT_CONCURRENCY} ≥ "
        f"{TARGET_THROUGHPUT_RATIO:g}× naive HTTP best"
    )
    if triton8 is None or triton8.summary is None or not best:
        out.append(Target(name, "not measured", None))
    else:
        ratio = triton8.summary.throughput_rps / best
        out.append(
            Target(
                name,
                f"{triton8.summary.throughput_rps:.1f} vs {best:.1f} req/s = {ratio:.2f}×",
                ratio >= TARGET_THROUGHPUT_RATIO,
            )
        )
    out.append(
        _with_encoder_inside(
            _p50_ratio(
                f"in-process int8 pipeline p50 ≤ {TARGET_PIPELINE_VS_ENCODER:g}× the int8 "
                "encoder's own p50 (same queries)",
                in_process,
                _find(rows, ONNX_INT8_ENCODER, 1),
                TARGET_PIPELINE_VS_ENCODER,
            ),
            in_process,
            _find(rows, ONNX_INT8_ENCODER, 1),
        )
    )
    out.append(
        _p50_ratio(
            f"Triton recommend p50 ≤ {TARGET_RECOMMEND_VS_SEARCH:g}× search p50 at concurrency 1",
            _find(rows, TRITON_RECOMMEND, 1),
            triton1,
            TARGET_RECOMMEND_VS_SEARCH,
        )
    )
    return out


def _with_transport(target: Target, echo: Row | None, in_process: Row | None) -> Target:
    """`target` with the echo model's p50 (the transport alone) beside its measurement."""
    if target.holds is None or echo is None or echo.summary is None:
        return target
    if in_process is None or in_process.summary is None:
        return target
    ratio, paired = _judged_ratio(echo, in_process)
    how = " (interleaved median)" if paired else ""
    e = echo.summary.p50_ms
    floor = f"; transport alone (echo model) {e:.2f} ms = {ratio:.2f}× in-process{how}"
    return replace(target, measured=target.measured + floor)


def _with_encoder_inside(target: Target, pipeline: Row | None, alone: Row | None) -> Target:
    """`target` with the encoder's own p50 inside the pipeline beside its measurement."""
    inside = pipeline.encoder_ms if pipeline is not None else None
    base = alone.summary if alone is not None else None
    if target.holds is None or inside is None or base is None:
        return target
    a = base.p50_ms
    note = f"; the same encoder inside the pipeline {inside:.2f} ms = {inside / a:.2f}× alone"
    return replace(target, measured=target.measured + note)


def _num(value: float | None, fmt: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, fmt)


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def table_lines(rows: Sequence[Row]) -> list[str]:
    """The results table in Markdown (also printed to the terminal)."""
    lines = [
        "| system | transport | conc. | p50 ms | p95 ms | p99 ms | req/s "
        "| latency ratio (naive p50 / p50) | throughput ratio (vs naive HTTP best) | stable |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        s = r.summary
        if s is None:
            lines.append(
                f"| {r.label} | {r.transport} | {r.concurrency} | failed: {r.error} | | | | | | |"
            )
            continue
        stable = "yes" if r.stable else f"no ({len(r.window_throughputs)} windows)"
        lines.append(
            f"| {r.label} | {r.transport} | {r.concurrency} | {_num(s.p50_ms)} | "
            f"{_num(s.p95_ms)} | {_num(s.p99_ms)} | {_num(s.throughput_rps, '.1f')} | "
            f"{_ratio(r.latency_ratio)} | {_ratio(r.throughput_ratio)} | {stable} |"
        )
    return lines


def target_lines(found: Sequence[Target]) -> list[str]:
    """The targets as a Markdown table."""
    lines = ["| target | measured | holds |", "|---|---|---|"]
    for t in found:
        verdict = "not measured" if t.holds is None else ("**yes**" if t.holds else "**no**")
        lines.append(f"| {t.name} | {t.measured} | {verdict} |")
    return lines


def batching_lines(rows: Sequence[Row]) -> list[str]:
    """Each served row's dynamic batching per model, as a Markdown table (empty when no
    row has statistics)."""
    served = [r for r in rows if r.batching]
    if not served:
        return []
    lines = [
        "| system | conc. | model | requests | executions | mean batch size |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for r in served:
        for b in r.batching:
            lines.append(
                f"| {r.label} | {r.concurrency} | {b.model} | {b.inferences} | "
                f"{b.executions} | {b.mean_batch:.2f} |"
            )
    return lines


def floor_lines(floor: FlopFloor) -> list[str]:
    """The encoder FLOP floor beside the measured encoder latencies."""
    lines = [
        f"Typical query (median token count of the workload): {floor.query!r}, "
        f"{floor.tokens} tokens, run at the served width {floor.seq_len}.",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| encoder FLOPs (matmuls, FlopCounterMode) | {floor.flops / 1e6:.1f} MFLOP |",
        f"| float32 GEMM peak, {floor.torch_threads} threads | {floor.peak_gflops:.1f} GFLOP/s |",
        f"| float32 GEMM peak, 1 thread | {floor.peak_gflops_1thread:.1f} GFLOP/s |",
        f"| **floor**, all threads | **{floor.floor_ms:.3f} ms** |",
        f"| **floor**, 1 thread | **{floor.floor_ms_1thread:.3f} ms** |",
    ]
    for name, ms in floor.measured_ms.items():
        ref = floor.floor_ms_1thread if "(1 thread)" in name else floor.floor_ms
        lines.append(f"| measured encoder, {name} | {ms:.3f} ms ({ms / ref:.1f}× its floor) |")
    lines += [
        "",
        "int8 matmuls run on integer units with a higher peak than the float32 GEMM, so the "
        "int8 encoder may legitimately beat the float32 floor.",
    ]
    return lines


def markdown(
    rows: Sequence[Row],
    found: Sequence[Target],
    floor: FlopFloor | None,
    context: dict[str, str],
) -> str:
    """The whole report as Markdown."""
    lines = ["# shoprank benchmark", ""]
    lines += [f"- {k}: {v}" for k, v in context.items()]
    lines += ["", "## Latency and throughput", "", *table_lines(rows), ""]
    lines += [
        "Latency ratio: naive p50 / this p50 (in-process rows against the naive pipeline in "
        "process, served rows against the naive HTTP server at the same concurrency). "
        "Throughput ratio: this req/s / the naive HTTP server's best req/s. The int8 "
        "encoder alone has neither: it runs the pipeline's own feeds for the same queries, "
        "and the targets hold the pipeline against it, beside the same encoder session "
        "timed inside the int8 pipeline (run back to back, the encoder keeps its weights in "
        "cache; between the pipeline's other stages it does not). Nor has the echo model: the "
        "searcher's tensors answered without work (each request's first k catalog "
        "products), what the client, gRPC, the server and the Python-backend round trip "
        "cost on their own. "
        "Closed loop, perf_analyzer-style: warm-up, then measurement windows until two "
        "consecutive windows' throughput agree within the tolerance; percentiles and req/s "
        "are over those two windows. The load generator runs on the same cores as the "
        "servers, for every system alike.",
        "",
        "## Targets",
        "",
        *target_lines(found),
        "",
    ]
    batching = batching_lines(rows)
    if batching:
        lines += [
            "## Dynamic batching",
            "",
            *batching,
            "",
            "Triton's statistics read before and after each served row's run (warm-up "
            "included): requests each model answered over the executions that answered "
            "them. Above 1, the dynamic batcher ran several requests as one batch.",
            "",
        ]
    if floor is not None:
        lines += ["## Encoder FLOP floor", "", *floor_lines(floor), ""]
    return "\n".join(lines)


def write_csv(rows: Sequence[Row], path: Path) -> None:
    """One CSV row per (system, concurrency)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for r in rows:
            s = r.summary
            writer.writerow(
                {
                    "system": r.system,
                    "label": r.label,
                    "transport": r.transport,
                    "concurrency": r.concurrency,
                    "requests": s.requests if s else 0,
                    "errors": s.errors if s else "",
                    "p50_ms": f"{s.p50_ms:.4f}" if s else "",
                    "p95_ms": f"{s.p95_ms:.4f}" if s else "",
                    "p99_ms": f"{s.p99_ms:.4f}" if s else "",
                    "mean_ms": f"{s.mean_ms:.4f}" if s else "",
                    "throughput_rps": f"{s.throughput_rps:.3f}" if s else "",
                    "latency_ratio_vs_naive": _num(r.latency_ratio, ".4f").replace("–", ""),
                    "throughput_ratio_vs_naive_http_best": _num(r.throughput_ratio, ".4f").replace(
                        "–", ""
                    ),
                    "stable": r.stable,
                    "window_throughputs": " ".join(f"{t:.2f}" for t in r.window_throughputs),
                    "batching": format_batching(r.batching),
                    "encoder_in_pipeline_p50_ms": _num(r.encoder_ms, ".4f").replace("–", ""),
                    "interleaved_p50_ms": " ".join(f"{v:.4f}" for v in r.rounds_p50_ms),
                    "error": r.error,
                }
            )


def write_plot(rows: Sequence[Row], path: Path) -> None:
    """Left: p50 bars with p95/p99 ticks per row (log scale). Right: req/s vs concurrency."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    measured = [r for r in rows if r.summary is not None]
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, max(4.0, 0.45 * len(measured) + 1.5)))
    names = [f"{r.label} ×{r.concurrency}" for r in measured]
    y = list(range(len(measured)))
    p50 = [r.summary.p50_ms for r in measured]  # type: ignore[union-attr]
    left.barh(y, p50, color="tab:blue", label="p50")
    left.scatter(
        [r.summary.p95_ms for r in measured],
        y,
        marker="|",
        s=200,
        color="tab:orange",
        label="p95",
        zorder=3,
    )
    left.scatter(
        [r.summary.p99_ms for r in measured],
        y,
        marker="|",
        s=200,
        color="tab:red",
        label="p99",
        zorder=3,
    )
    left.set_yticks(y, names, fontsize=8)
    left.invert_yaxis()
    left.set_xscale("log")
    left.set_xlabel("latency, ms (log scale)")
    left.set_title("Latency per request")
    left.legend(loc="lower right", fontsize=8)
    left.grid(axis="x", which="both", alpha=0.3)

    for system in dict.fromkeys(r.system for r in measured):
        points = sorted(
            (r.concurrency, r.summary.throughput_rps) for r in measured if r.system == system
        )
        xs, ys = zip(*points, strict=True)
        right.plot(xs, ys, marker="o", label=LABELS.get(system, system))
    right.set_xlabel("concurrency (requests in flight)")
    right.set_ylabel("throughput, req/s")
    right.set_title("Throughput")
    right.set_yscale("log")
    right.legend(fontsize=8)
    right.grid(alpha=0.3, which="both")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
