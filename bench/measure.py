"""Closed-loop latency/throughput measurement, the way perf_analyzer does it.

`concurrency` workers each keep exactly one request in flight (send, wait, send the next),
cycling through the workload from different offsets. After a warm-up period the run is
cut into fixed measurement windows; it stops as soon as two consecutive windows'
throughput agree within `tolerance` (or after `max_windows`), and the summary is computed
over those last two windows. Without the stability rule a single window can land on a
GC pause, a thread-pool resize or a neighbour's burst and report a number that does not
reproduce.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shoprank import contract

Caller = Callable[[dict], Any]


class BenchError(RuntimeError):
    """A system could not be measured (e.g. every request failed)."""


@dataclass(frozen=True)
class Summary:
    """Latency percentiles (ms) and throughput of a set of completed requests."""

    requests: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    throughput_rps: float
    duration_s: float


def percentiles_ms(latencies_s: Sequence[float], qs: Sequence[float] = (50, 95, 99)) -> list[float]:
    """Percentiles of latencies given in seconds, in milliseconds (NaN when empty).

    Linear interpolation between closest ranks (numpy's default), as perf_analyzer and
    Locust's exact mode do for small samples.
    """
    if len(latencies_s) == 0:
        return [float("nan")] * len(qs)
    values = np.percentile(np.asarray(latencies_s, dtype=np.float64) * 1e3, list(qs))
    return [float(v) for v in values]


def summarize(latencies_s: Sequence[float], duration_s: float, errors: int = 0) -> Summary:
    """Summary of successful request latencies (seconds) completed within `duration_s`."""
    p50, p95, p99 = percentiles_ms(latencies_s)
    n = len(latencies_s)
    return Summary(
        requests=n,
        errors=errors,
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        mean_ms=float(np.mean(latencies_s) * 1e3) if n else float("nan"),
        throughput_rps=n / duration_s if duration_s > 0 else 0.0,
        duration_s=duration_s,
    )


def windows_agree(a: float, b: float, tolerance: float) -> bool:
    """True if throughputs `a` and `b` differ by at most `tolerance` of the larger one."""
    if a <= 0 or b <= 0:
        # A window without completions says nothing about the steady state.
        return False
    return abs(a - b) <= tolerance * max(a, b)


def stable_index(throughputs: Sequence[float], tolerance: float = 0.1) -> int | None:
    """Index of the first window whose throughput agrees with the previous one, else None."""
    for i in range(1, len(throughputs)):
        if windows_agree(throughputs[i - 1], throughputs[i], tolerance):
            return i
    return None


@dataclass(frozen=True)
class MeasureConfig:
    """Warm-up and measurement-window settings shared by every system of a run."""

    warmup_s: float = 2.0
    window_s: float = 4.0
    max_windows: int = 5
    tolerance: float = 0.1
    # A request that hangs this long after the stop signal is abandoned (daemon thread).
    join_timeout_s: float = 30.0


@dataclass
class Window:
    """Requests completed within one measurement window."""

    start: float
    end: float
    latencies_s: list[float]
    errors: int

    @property
    def throughput_rps(self) -> float:
        return len(self.latencies_s) / (self.end - self.start)


@dataclass
class Measurement:
    """One system at one concurrency: the stable summary and every window's throughput."""

    concurrency: int
    summary: Summary
    stable: bool
    window_throughputs: list[float] = field(default_factory=list)
    first_error: str = ""
    span: tuple[float, float] = (0.0, 0.0)  # (start, end) of the summary's windows, `clock`


# Long on purpose: the workers, the window loop and the summary share the request log and
# its lock; split, each part would take all of them as arguments.
def measure(
    make_caller: Callable[[], Caller],
    workload: Sequence[dict],
    concurrency: int,
    config: MeasureConfig,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
) -> Measurement:
    """Drive `concurrency` closed-loop workers over `workload` and measure them.

    `make_caller` is called once per worker (one client/connection per worker thread, as
    perf_analyzer and real frontends do); a caller with a `close()` method is closed at
    the end. Requests are dicts {"query", "history", "top_k"}. `clock` (seconds) times the
    requests and cuts the windows, `sleep` waits for a window's end: the real ones unless
    a test drives virtual time.

    Raises:
        BenchError: no request succeeded in the measured windows.
    """
    if concurrency < 1 or not workload:
        raise ValueError("need concurrency >= 1 and a non-empty workload")
    callers = [make_caller() for _ in range(concurrency)]
    # (end time, latency or None for an error); list.append is atomic under the GIL, and
    # the main thread only reads it by slicing up to a length it snapshotted.
    records: list[tuple[float, float | None]] = []
    errors: list[str] = []
    stop = threading.Event()
    n = len(workload)

    def work(slot: int) -> None:
        call = callers[slot]
        # Different offsets, so workers do not send the same request at the same moment.
        i = slot * n // concurrency
        while not stop.is_set():
            request = workload[i % n]
            i += 1
            t0 = clock()
            try:
                call(request)
            except Exception as exc:  # any failure counts as an error, not a crash
                t1 = clock()
                if len(errors) < 5:
                    errors.append(f"{type(exc).__name__}: {exc}")
                records.append((t1, None))
                continue
            t1 = clock()
            records.append((t1, t1 - t0))

    threads = [
        threading.Thread(target=work, args=(s,), daemon=True, name=f"bench-{s}")
        for s in range(concurrency)
    ]
    for t in threads:
        t.start()
    windows: list[Window] = []
    try:
        sleep(config.warmup_s)
        start_index, start = len(records), clock()
        for _ in range(max(config.max_windows, 1)):
            sleep(max(0.0, start + config.window_s - clock()))
            end_index, end = len(records), clock()
            chunk = records[start_index:end_index]
            windows.append(
                Window(
                    start=start,
                    end=end,
                    latencies_s=[lat for _, lat in chunk if lat is not None],
                    errors=sum(lat is None for _, lat in chunk),
                )
            )
            start_index, start = end_index, end
            if stable_index([w.throughput_rps for w in windows[-2:]], config.tolerance) is not None:
                break
    finally:
        stop.set()
        for t in threads:
            t.join(config.join_timeout_s)
        for caller in callers:
            close = getattr(caller, "close", None)
            if close is not None:
                close()

    throughputs = [w.throughput_rps for w in windows]
    stable = stable_index(throughputs[-2:], config.tolerance) is not None
    # Report the last two windows: the stable pair when there is one, else the most
    # recent (closest to steady state) data, flagged as unstable.
    used = windows[-2:]
    latencies = [lat for w in used for lat in w.latencies_s]
    summary = summarize(
        latencies, sum(w.end - w.start for w in used), errors=sum(w.errors for w in used)
    )
    if not latencies:
        detail = f": {errors[0]}" if errors else " (no request completed)"
        raise BenchError(f"no successful request at concurrency {concurrency}{detail}")
    return Measurement(
        concurrency=concurrency,
        summary=summary,
        stable=stable,
        window_throughputs=throughputs,
        first_error=errors[0] if errors else "",
        span=(used[0].start, used[-1].end),
    )


def interleaved_p50s(
    callers: dict[str, Caller],
    workload: Sequence[dict],
    rounds: int,
    per_round: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Each caller's p50 (ms) per round, one request at a time, the callers taking turns.

    A shared machine drifts between seconds; systems measured one after the other see
    different machines, so their ratio moves with the drift. Here every round sends the
    same `per_round` requests through each caller in turn (the order rotating by round, so
    no caller always follows the same one), and a ratio is taken within a round, where
    both sides saw nearly the same machine. A failed request counts as no latency; a round
    where a caller completed nothing gets NaN.
    """
    names = list(callers)
    out: dict[str, list[float]] = {name: [] for name in names}
    n = len(workload)
    for r in range(rounds):
        requests = [workload[(r * per_round + i) % n] for i in range(per_round)]
        for name in names[r % len(names) :] + names[: r % len(names)]:
            latencies = []
            for request in requests:
                t0 = clock()
                try:
                    callers[name](request)
                except Exception:  # counted as missing, as `measure` counts errors
                    continue
                latencies.append(clock() - t0)
            out[name].append(percentiles_ms(latencies, (50,))[0])
    return out


def load_workload(path: Path, limit: int = 0) -> list[dict]:
    """The {"query", "history", "top_k"} requests from `loadtest.workload`."""
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: run `make workload` first")
    requests = json.loads(path.read_text())
    requests = [
        {
            "query": str(r["query"]),
            "history": [int(h) for h in r.get("history", [])],
            "top_k": int(r.get("top_k", contract.DEFAULT_TOP_K)),
        }
        for r in requests
    ]
    if limit > 0:
        requests = requests[:limit]
    if not requests:
        raise ValueError(f"{path} holds no requests")
    return requests
