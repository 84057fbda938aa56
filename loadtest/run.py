"""Run the Locust gRPC load test headless, bounded in time, and summarize it.

    python -m shoprank.loadtest.run --users 8 --run-time 30s --out artifacts/demo/loadtest
    python -m shoprank.loadtest.run --url localhost:8001 --workload workload.json

Writes <out>/locust_*.csv, <out>/report.html, <out>/locust.log and <out>/summary.json and
prints "p50 … ms, p95 … ms, p99 … ms, … req/s, failures …".
Exit codes: 0 clean run, 1 failures or no requests, 2 could not run.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from shoprank.contract import (
    DEFAULT_ARTIFACTS,
    DEFAULT_GRPC_URL,
    LOADTEST_REQUESTS_FILE,
    LOADTEST_SUMMARY_FILE,
    LOADTEST_SUMMARY_MD,
    ArtifactPaths,
)
from shoprank.loadtest import (
    FINAL_STATS_SUFFIX,
    REFUSED_NAME,
    REQUEST_LOG_ENV,
    RETRIES_ENV,
    THROTTLE_ENV,
    THROTTLED_NAME,
    URL_ENV,
    USER_RPS_ENV,
    WORKLOAD_ENV,
)
from shoprank.ops.tritonserver import log_tail

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
CSV_PREFIX = "locust"
# Startup, ramp-up and shutdown on top of --run-time before the run counts as hung.
TIMEOUT_MARGIN_S = 60.0
EXIT_OK, EXIT_FAILURES, EXIT_ERROR = 0, 1, 2
SKIP_MONKEY_PATCH = "LOCUST_SKIP_MONKEY_PATCH"  # read by locust/__init__.py


@dataclass(frozen=True)
class LoadSummary:
    """The Aggregated row of a Locust stats CSV; times in milliseconds."""

    requests: int
    failures: int
    rps: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    avg_ms: float | None
    max_ms: float | None

    @property
    def failure_rate(self) -> float:
        """Failed share of all requests (0 when there were none)."""
        return self.failures / self.requests if self.requests else 0.0

    def line(self) -> str:
        """One human-readable line: percentiles, throughput, failures."""

        def ms(value: float | None) -> str:
            return "n/a" if value is None else f"{value:g} ms"

        return (
            f"p50 {ms(self.p50_ms)}, p95 {ms(self.p95_ms)}, p99 {ms(self.p99_ms)}, "
            f"{self.rps:.1f} req/s, failures {self.failures} (of {self.requests} requests)"
        )


def _number(value: str | None) -> float | None:
    # Locust writes "N/A" for percentiles of an entry without requests.
    try:
        number = float(value) if value not in (None, "") else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def summarize(stats_csv: Path, name: str = "Aggregated") -> LoadSummary:
    """Parse one row (default: Aggregated) of a Locust `<prefix>_stats.csv`.

    Raises:
        ValueError: the file has no such row (e.g. locust died before writing it).
    """
    with open(stats_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    aggregated = next((r for r in rows if r.get("Name") == name), None)
    if aggregated is None:
        raise ValueError(f"{stats_csv} has no {name} row")
    return LoadSummary(
        requests=int(aggregated["Request Count"]),
        failures=int(aggregated["Failure Count"]),
        rps=_number(aggregated["Requests/s"]) or 0.0,
        p50_ms=_number(aggregated.get("50%")),
        p95_ms=_number(aggregated.get("95%")),
        p99_ms=_number(aggregated.get("99%")),
        avg_ms=_number(aggregated.get("Average Response Time")),
        max_ms=_number(aggregated.get("Max Response Time")),
    )


def stats_file(out: Path) -> Path:
    """The stats CSV of a run in `out`: the locustfile's final one, else Locust's own."""
    final_stats = Path(out) / f"{CSV_PREFIX}{FINAL_STATS_SUFFIX}"
    return final_stats if final_stats.exists() else Path(out) / f"{CSV_PREFIX}_stats.csv"


def parse_run_time(text: str) -> float:
    """Seconds in a Locust --run-time value ("30", "30s", "2m", "1h30m"), parsed by Locust."""
    # Importing the `locust` package monkey-patches this whole process for gevent (which
    # stalls the gRPC and thread code around it); the runner needs only the parser, and
    # runs Locust itself in a subprocess with a clean environment.
    saved = os.environ.get(SKIP_MONKEY_PATCH)
    os.environ[SKIP_MONKEY_PATCH] = "1"
    try:
        from locust.util.timespan import parse_timespan
    finally:
        if saved is None:
            os.environ.pop(SKIP_MONKEY_PATCH, None)
        else:
            os.environ[SKIP_MONKEY_PATCH] = saved
    try:
        return float(parse_timespan(text))
    except ValueError:
        raise ValueError(f"invalid run time {text!r}; use e.g. 30s, 2m, 1h30m") from None


def locust_command(
    *, users: int, spawn_rate: float, run_time: str, out: Path, html: bool = True
) -> list[str]:
    """The headless locust command line (run with this interpreter, so this venv)."""
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--users",
        str(users),
        "--spawn-rate",
        str(spawn_rate),
        "--run-time",
        run_time,
        "--csv",
        str(out / CSV_PREFIX),
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]
    if html:
        command += ["--html", str(out / "report.html")]
    return command


def run_loadtest(
    *,
    url: str = DEFAULT_GRPC_URL,
    users: int = 8,
    spawn_rate: float | None = None,
    run_time: str = "30s",
    out: Path,
    workload: Path | None = None,
    html: bool = True,
    retries: int | None = None,
    user_rps: float | None = None,
    throttle_k: float | None = None,
) -> tuple[LoadSummary, int]:
    """Run locust as a subprocess against `url`; return the summary and locust's exit code.

    Raises:
        RuntimeError: locust hung past --run-time plus a margin, or wrote no stats.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **{URL_ENV: url})
    if retries is not None:
        env[RETRIES_ENV] = str(retries)
    if user_rps is not None:
        env[USER_RPS_ENV] = str(user_rps)
    if throttle_k is not None:
        env[THROTTLE_ENV] = str(throttle_k)
    env[REQUEST_LOG_ENV] = str((out / LOADTEST_REQUESTS_FILE).resolve())
    if workload is not None:
        env[WORKLOAD_ENV] = str(Path(workload).resolve())
    else:
        env.pop(WORKLOAD_ENV, None)
    command = locust_command(
        users=users,
        spawn_rate=spawn_rate if spawn_rate is not None else users,
        run_time=run_time,
        out=out,
        html=html,
    )
    log_path = out / "locust.log"
    timeout = parse_run_time(run_time) + TIMEOUT_MARGIN_S
    # The final stats file is the one to trust; drop any from an earlier run.
    final_stats = out / f"{CSV_PREFIX}{FINAL_STATS_SUFFIX}"
    final_stats.unlink(missing_ok=True)
    with open(log_path, "wb") as log:
        try:
            completed = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(
                f"locust did not finish within {timeout:.0f} s (killed); see {log_path}"
            ) from None
    stats = stats_file(out)
    try:
        summary = summarize(stats)
    except (OSError, ValueError) as err:
        tail = log_tail(log_path, 30)
        raise RuntimeError(
            f"locust exited with code {completed.returncode} and wrote no usable stats "
            f"({err})\n--- last lines of {log_path} ---\n{tail}"
        ) from None
    return summary, completed.returncode


def _summary_of(stats: Path, name: str) -> LoadSummary | None:
    try:
        return summarize(stats, name)
    except ValueError:  # no request of that name
        return None


def _preflight(url: str) -> str | None:
    # Fail in a second with a clear message instead of a full run of connection errors.
    from shoprank_client.search_client import SearchClient

    with SearchClient(url, timeout_s=5) as client:
        if client.is_ready():
            return None
    return (
        f"server at {url} is not ready; start it with `python -m shoprank.model_repository.server "
        "start` (or pass --url)"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m shoprank.loadtest.run`."""
    parser = argparse.ArgumentParser(
        prog="python -m shoprank.loadtest.run",
        description="Headless Locust load test of the search ensemble over gRPC.",
    )
    parser.add_argument("--users", type=int, default=8, help="concurrent users (%(default)s)")
    parser.add_argument("--spawn-rate", type=float, default=None, help="users/s (= --users)")
    parser.add_argument("--run-time", default="30s", help="e.g. 30s, 2m (%(default)s)")
    parser.add_argument(
        "--out",
        type=Path,
        default=ArtifactPaths(DEFAULT_ARTIFACTS).loadtest,
        help="output folder (%(default)s)",
    )
    parser.add_argument("--url", default=DEFAULT_GRPC_URL, help="gRPC host:port (%(default)s)")
    parser.add_argument(
        "--workload", type=Path, default=None, help='JSON list of {"query", "history", "top_k"}'
    )
    parser.add_argument("--no-html", action="store_true", help="skip <out>/report.html")
    parser.add_argument(
        "--retries", type=int, default=None, help="client retries on UNAVAILABLE (its default)"
    )
    parser.add_argument(
        "--user-rps",
        type=float,
        default=None,
        help="requests/s per user (default: closed loop); e.g. 32 users x 12.5 = 4x overload",
    )
    parser.add_argument(
        "--throttle-k",
        type=float,
        default=None,
        help="the client's adaptive throttling k (its default; 0: off)",
    )
    args = parser.parse_args(argv)

    try:
        parse_run_time(args.run_time)
    except ValueError as err:
        parser.error(str(err))
    if args.users < 1:
        parser.error("--users must be at least 1")
    if args.workload is not None and not args.workload.is_file():
        parser.error(f"workload file {args.workload} does not exist")
    problem = _preflight(args.url)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_ERROR

    started = time.time()
    try:
        summary, locust_code = run_loadtest(
            url=args.url,
            users=args.users,
            spawn_rate=args.spawn_rate,
            run_time=args.run_time,
            out=args.out,
            workload=args.workload,
            html=not args.no_html,
            retries=args.retries,
            user_rps=args.user_rps,
            throttle_k=args.throttle_k,
        )
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    report = {
        **asdict(summary),
        "failure_rate": summary.failure_rate,
        "url": args.url,
        "users": args.users,
        "spawn_rate": args.spawn_rate if args.spawn_rate is not None else args.users,
        "run_time": args.run_time,
        "workload": str(args.workload) if args.workload else None,
        "locust_exit_code": locust_code,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
    }
    # Refused for overload (explicit UNAVAILABLE) by the server, or dropped by the client's
    # throttle, is reported apart, and is not an error.
    stats = stats_file(args.out)
    refused, throttled = (_summary_of(stats, name) for name in (REFUSED_NAME, THROTTLED_NAME))
    report["refused"] = asdict(refused) if refused else None
    report["throttled"] = asdict(throttled) if throttled else None
    lines = [f"{summary.line()} ({args.users} users, {args.run_time})"]
    if refused is not None:
        lines.append(f"refused for overload: {refused.requests} ({refused.line()})")
    if throttled is not None:
        lines.append(f"throttled by the client, not sent: {throttled.requests}")
    (args.out / LOADTEST_SUMMARY_FILE).write_text(json.dumps(report, indent=2) + "\n")
    (args.out / LOADTEST_SUMMARY_MD).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"details: {args.out / LOADTEST_SUMMARY_FILE}, {args.out}/report.html")
    errors = summary.failures - sum(s.failures for s in (refused, throttled) if s)
    if errors or not summary.requests:
        failures_csv = args.out / f"{CSV_PREFIX}_failures.csv"
        print(f"error: the run had failures or no requests; see {failures_csv}", file=sys.stderr)
        return EXIT_FAILURES
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
