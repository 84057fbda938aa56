"""`python -m shoprank.bench --out artifacts/demo`: the naive baseline vs ONNX Runtime vs Triton.

Runs, on this machine and over the same workload (`<out>/loadtest/workload.json`):

1. naive: PyTorch eager encoder + FusionRanker in process, then behind FastAPI/uvicorn
   (HTTP, JSON) at each concurrency;
2. ONNX Runtime fp32 and int8 in process (the served pipeline's code and settings), and
   the int8 encoder alone on the same queries' feeds;
3. the shoprank Triton ensemble over gRPC at each concurrency (an embedded server on free
   loopback ports unless --url is given), with each model's mean dynamic batch size from
   Triton's statistics;
4. the systems the concurrency-1 targets compare (in-process int8 pipeline, its encoder
   alone, the Triton search and recommend ensembles, the echo model), open together and
   measured in interleaved rounds (`measure.interleaved_p50s`): the targets' verdicts are
   the rounds' median ratios;
5. the encoder's FLOP floor on this machine.

Writes `<reports>/bench.md`, `bench.csv` and `bench_latency.png` and prints the table.
Every field of BenchConfig is a flag (`python -m shoprank.bench --help`). Exit code 1 when a
system could not be measured.
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shoprank import contract
from shoprank.bench import report
from shoprank.bench.batching import Totals, batching_between, read_totals
from shoprank.bench.flops import FlopFloor, encoder_floor
from shoprank.bench.measure import (
    Caller,
    MeasureConfig,
    interleaved_p50s,
    load_workload,
    measure,
)
from shoprank.bench.report import Row, Target
from shoprank.bench.systems import (
    LABELS,
    ONNX_INT8,
    ONNX_INT8_ENCODER,
    SINGLE_CALLER,
    SYSTEMS,
    TRANSPORT,
    TRITON,
    TRITON_ECHO,
    TRITON_RECOMMEND,
    open_system,
)
from shoprank.configargs import parse_config
from shoprank.data.artifacts import int8_encoder_path

# Ensembles answer each request in one execution by construction: their counts say
# nothing about the batcher.
ENSEMBLES = (contract.ENSEMBLE_MODEL, contract.RERANK_MODEL, contract.RECOMMEND_MODEL)
# What the concurrency-1 targets compare: measured again, together, in interleaved rounds.
INTERLEAVED = (ONNX_INT8, ONNX_INT8_ENCODER, TRITON, TRITON_RECOMMEND, TRITON_ECHO)
INTERLEAVED_WARMUP = 50  # requests per caller before the first round


@dataclass
class BenchConfig:
    """Everything `python -m shoprank.bench` can be told; each field is a `--flag`."""

    out: Path = field(default=contract.DEFAULT_ARTIFACTS, metadata={"help": "artifact folder"})
    reports: Path = field(default=Path("reports"), metadata={"help": "where to write reports"})
    workload: str = field(default="", metadata={"help": "requests JSON; empty: <out>/loadtest/…"})
    url: str = field(default="", metadata={"help": "Triton gRPC url; empty: start one"})
    concurrency: str = field(default="1,4,8,16", metadata={"help": "served systems' concurrencies"})
    duration_s: float = field(default=4.0, metadata={"help": "one measurement window, s"})
    warmup_s: float = field(default=2.0, metadata={"help": "warm-up before the windows, s"})
    max_windows: int = field(default=5, metadata={"help": "windows before giving up on stable"})
    tolerance: float = field(default=0.1, metadata={"help": "window throughput agreement"})
    ort_threads: int = field(default=1, metadata={"help": "ONNX Runtime threads in process"})
    systems: str = field(default=",".join(SYSTEMS), metadata={"help": "which systems to run"})
    flop_floor: bool = field(default=True, metadata={"help": "measure the encoder FLOP floor"})
    max_requests: int = field(default=0, metadata={"help": "use the first N requests (0: all)"})
    rounds: int = field(default=5, metadata={"help": "×1 targets: interleaved rounds (0: off)"})
    round_requests: int = field(default=200, metadata={"help": "requests per system per round"})


@dataclass
class BenchResult:
    """What one run measured and where it wrote it."""

    rows: list[Row]
    targets: list[Target]
    floor: FlopFloor | None
    markdown: Path
    csv: Path
    plot: Path

    @property
    def failed(self) -> bool:
        return any(r.summary is None for r in self.rows)


def _concurrencies(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise ValueError(f"--concurrency needs positive integers, got {text!r}")
    return values


def _systems(text: str) -> list[str]:
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SYSTEMS))
    if unknown:
        raise ValueError(f"unknown systems {unknown}; choose from {', '.join(SYSTEMS)}")
    # Always in the canonical order: cheap in-process runs first, then the servers.
    return [s for s in SYSTEMS if s in chosen]


def machine_context(config: BenchConfig, workload_path: Path, n_requests: int) -> dict[str, str]:
    """Where and how the numbers were taken, for the report's header."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    busy = load[0] > 0.5 * (os.cpu_count() or 1)
    if busy:
        # Other work on the same cores makes every number noisy, and PyTorch's default
        # thread pool (the naive baseline) degrades far more than single-thread runtimes.
        _log(f"warning: load average {load[0]:.2f} at start: the machine is busy")
    return {
        "machine": f"{cpu}, {os.cpu_count()} logical CPUs, torch threads "
        f"{torch.get_num_threads()}, Python {platform.python_version()}",
        "load average at start": " ".join(f"{x:.2f}" for x in load)
        + (" (**busy: other work shared these cores**)" if busy else ""),
        "artifacts": str(config.out),
        "int8 rows run": int8_encoder_path(contract.ArtifactPaths(Path(config.out))).name,
        "workload": f"{workload_path} ({n_requests} requests, cycled)",
        "method": f"warm-up {config.warmup_s:g} s, windows of {config.duration_s:g} s, "
        f"at most {config.max_windows}, stable when two agree within "
        f"{config.tolerance:.0%}; ONNX Runtime in process with {config.ort_threads} thread(s)",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _statistics(make_caller: Callable[[], Caller]) -> Callable[[], Totals] | None:
    """How to read the server's batching totals, for a served system (None: in process)."""
    url = getattr(make_caller, "grpc_url", None)
    if not url:
        return None

    def read() -> Totals:
        try:
            return read_totals(url)
        except Exception as exc:  # statistics are evidence beside the timings, not a must
            _log(f"  Triton statistics unavailable: {_error_text(exc)}")
            return {}

    return read


def _measure_rows(
    system: str,
    make_caller: Callable[[], Caller],
    workload: list[dict],
    concurrencies: list[int],
    mconfig: MeasureConfig,
) -> list[Row]:
    rows = []
    statistics = _statistics(make_caller)
    for c in concurrencies:
        before = statistics() if statistics else {}
        try:
            m = measure(make_caller, workload, c, mconfig)
        except Exception as exc:
            _log(f"  {system} ×{c}: FAILED {exc}")
            rows.append(Row(system, c, None, error=_error_text(exc)))
            continue
        after = statistics() if statistics else {}
        batching = batching_between(before, after, ENSEMBLES) if before and after else []
        s = m.summary
        batches = ", ".join(f"{b.model} {b.mean_batch:.2f}" for b in batching)
        _log(
            f"  {LABELS[system]} ×{c}: p50 {s.p50_ms:.2f} ms, p95 {s.p95_ms:.2f} ms, "
            f"p99 {s.p99_ms:.2f} ms, {s.throughput_rps:.1f} req/s "
            f"({'stable' if m.stable else 'NOT stable'} after {len(m.window_throughputs)} windows"
            f"{', errors: ' + m.first_error if m.first_error else ''})"
            + (f"; mean batch size {batches}" if batches else "")
        )
        inner = getattr(make_caller, "encoder_p50_ms", None)
        encoder = inner(m.span) if inner is not None else None
        rows.append(
            Row(system, c, s, m.stable, m.window_throughputs, batching=batching, encoder_ms=encoder)
        )
    return rows


def _error_text(exc: Exception) -> str:
    """First line of the exception's message (its type when it has none), for a table cell."""
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def _failed(system: str, concurrencies: list[int], exc: Exception) -> list[Row]:
    _log(f"  {system}: FAILED {exc}")
    return [Row(system, c, None, error=_error_text(exc)) for c in concurrencies]


def run_system(
    system: str,
    paths: contract.ArtifactPaths,
    config: BenchConfig,
    workload: list[dict],
    concurrencies: list[int],
    mconfig: MeasureConfig,
) -> list[Row]:
    """Set one system up, measure it at its concurrencies, tear it down."""
    _log(f"{LABELS[system]} ...")
    # In-process systems have one caller (this process): their latency is the point.
    single = TRANSPORT[system] == "in-process" or system in SINGLE_CALLER
    levels = [1] if single else concurrencies
    try:
        with open_system(system, paths, config.url, config.ort_threads) as make_caller:
            return _measure_rows(system, make_caller, workload, levels, mconfig)
    except Exception as exc:  # one broken system must not cost the others' numbers
        return _failed(system, levels, exc)
    finally:
        # Drop the in-process models before the next system loads its own.
        gc.collect()


def run_interleaved(
    paths: contract.ArtifactPaths, config: BenchConfig, workload: list[dict], systems: list[str]
) -> dict[str, list[float]]:
    """Each of the chosen INTERLEAVED systems' p50 per round (`interleaved_p50s`), all of
    them open at once (search and recommend on one server); {} when fewer than two were
    chosen, rounds are off, or setting one up failed (the rows' own ratios stand then)."""
    chosen = [s for s in INTERLEAVED if s in systems]
    if config.rounds <= 0 or len(chosen) < 2:
        return {}
    _log(f"interleaved rounds: {', '.join(LABELS[s] for s in chosen)} ...")
    try:
        with contextlib.ExitStack() as stack:
            url, callers = config.url, {}
            for system in chosen:
                factory = stack.enter_context(open_system(system, paths, url, config.ort_threads))
                if system == TRITON:
                    url = factory.grpc_url  # recommend: the same server
                callers[system] = caller = factory()
                stack.callback(getattr(caller, "close", lambda: None))
                for request in workload[:INTERLEAVED_WARMUP]:
                    caller(request)
            p50s = interleaved_p50s(callers, workload, config.rounds, config.round_requests)
    except Exception as exc:  # evidence beside the rows, not a must
        _log(f"  interleaved rounds FAILED: {_error_text(exc)}")
        return {}
    for system, values in p50s.items():
        _log(f"  {LABELS[system]}: p50 per round {' '.join(f'{v:.2f}' for v in values)} ms")
    return p50s


def run(config: BenchConfig) -> BenchResult:
    """Run the whole benchmark and write the reports."""
    paths = contract.ArtifactPaths(Path(config.out))
    workload_path = Path(config.workload) if config.workload else paths.workload
    workload = load_workload(workload_path, config.max_requests)
    concurrencies = _concurrencies(config.concurrency)
    systems = _systems(config.systems)
    mconfig = MeasureConfig(
        warmup_s=config.warmup_s,
        window_s=config.duration_s,
        max_windows=config.max_windows,
        tolerance=config.tolerance,
    )
    context = machine_context(config, workload_path, len(workload))
    started = time.perf_counter()

    floor = None
    if config.flop_floor:
        _log("encoder FLOP floor ...")
        floor = encoder_floor(paths, [r["query"] for r in workload], ort_threads=config.ort_threads)
        _log(
            f"  {floor.flops / 1e6:.1f} MFLOP at {floor.seq_len} tokens, peak "
            f"{floor.peak_gflops:.1f} GFLOP/s → floor {floor.floor_ms:.3f} ms"
        )

    rows: list[Row] = []
    for system in systems:
        rows += run_system(system, paths, config, workload, concurrencies, mconfig)
    rounds = run_interleaved(paths, config, workload, systems)
    for row in rows:
        if row.concurrency == 1 and row.summary is not None and row.system in rounds:
            row.rounds_p50_ms = rounds[row.system]
    report.add_ratios(rows)
    found = report.targets(rows)
    context["wall time"] = f"{time.perf_counter() - started:.0f} s"

    reports = Path(config.reports)
    reports.mkdir(parents=True, exist_ok=True)
    result = BenchResult(
        rows=rows,
        targets=found,
        floor=floor,
        markdown=reports / "bench.md",
        csv=reports / "bench.csv",
        plot=reports / "bench_latency.png",
    )
    result.markdown.write_text(report.markdown(rows, found, floor, context))
    report.write_csv(rows, result.csv)
    report.write_plot(rows, result.plot)
    return result


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; prints the tables and returns the exit code."""
    config = parse_config(BenchConfig, argv, description=__doc__ or "")
    result = run(config)
    print("\n".join(report.table_lines(result.rows)))
    print()
    print("\n".join(report.target_lines(result.targets)))
    if result.floor is not None:
        print()
        print("\n".join(report.floor_lines(result.floor)[:-2]))
    print(f"\nwrote {result.markdown}, {result.csv}, {result.plot}")
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
