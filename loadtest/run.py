"""Run the Locust gRPC load test headless, bounded in time, and summarize it.

    python -m shoprank.loadtest.run --users 8 --run-time 30s --out artifacts/demo/loadtest
    python -m shoprank.loadtest.run --url localhost:8001 --workload workload.json
    python -m shoprank.loadtest.run --users 32 --workers 2   # Locust master + 2 workers

Writes <out>/locust_*.csv, <out>/report.html, <out>/locust.log, <out>/requests.csv (every
request) and <out>/summary.json and prints "p50 … ms, p95 … ms, p99 … ms, … req/s, failures …".
With --workers N, Locust runs distributed on localhost: a master (the stats, CSVs and HTML
report, from the workers' reports) and N worker processes (the users), each writing its own
request log (<out>/locust_worker<i>.log its output); the runner merges the request logs into
<out>/requests.csv in time order, with a `worker` column.
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

import pandas as pd

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
from shoprank.ops.tritonserver import DEFAULT_HOST, free_ports, log_tail

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
CSV_PREFIX = "locust"
# Startup, ramp-up and shutdown on top of --run-time before the run counts as hung.
TIMEOUT_MARGIN_S = 60.0
EXIT_OK, EXIT_FAILURES, EXIT_ERROR = 0, 1, 2
SKIP_MONKEY_PATCH = "LOCUST_SKIP_MONKEY_PATCH"  # read by locust/__init__.py
# How long the master waits for its workers to connect before giving up (Locust's default
# is forever, which would turn a worker that failed to start into a hung run).
WORKERS_CONNECT_S = 60
# Workers quit when the master tells them to; after the master has exited, this long.
WORKERS_EXIT_S = 30.0
WORKER_COLUMN = "worker"  # added to the merged request log of a distributed run


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


def master_options(workers: int, port: int) -> list[str]:
    """Flags that turn `locust_command` into the master of `workers` workers, bound to
    loopback only."""
    return [
        "--master",
        "--master-bind-host",
        DEFAULT_HOST,
        "--master-bind-port",
        str(port),
        "--expect-workers",
        str(workers),
        "--expect-workers-max-wait",
        str(WORKERS_CONNECT_S),
    ]


def worker_command(port: int) -> list[str]:
    """A locust worker of the master on loopback `port`: runs the users, reports to it."""
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--worker",
        "--master-host",
        DEFAULT_HOST,
        "--master-port",
        str(port),
        "--loglevel",
        "WARNING",
    ]


def worker_request_log(out: Path, index: int) -> Path:
    """Where worker `index` writes its own request log before the runner merges them."""
    name = Path(LOADTEST_REQUESTS_FILE)
    return Path(out) / f"{name.stem}.worker{index}{name.suffix}"


def merge_request_logs(parts: list[Path], merged: Path) -> int:
    """Concatenate the workers' request logs into `merged` in time order, each row tagged
    with its worker's index (stable: a tie keeps the workers' order); the row count.

    Raises:
        RuntimeError: a worker wrote no log (it did not start or did not quit cleanly).
    """
    missing = [str(p) for p in parts if not p.exists()]
    if missing:
        raise RuntimeError(f"no request log from worker(s): {', '.join(missing)}")
    # Read as text: the rows are written back exactly as the workers wrote them.
    frames = [pd.read_csv(p, dtype=str).assign(**{WORKER_COLUMN: i}) for i, p in enumerate(parts)]
    log = pd.concat(frames, ignore_index=True)
    log = log.sort_values("time", key=lambda t: t.astype(float), kind="stable")
    log.to_csv(merged, index=False)
    for part in parts:
        part.unlink()
    return len(log)


def _stop(proc: subprocess.Popen, wait_s: float) -> int | None:
    # The exit code of a process that ended within `wait_s`, else None (then killed).
    try:
        return proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def run_distributed(
    command: list[str], env: dict[str, str], out: Path, workers: int, timeout: float
) -> int:
    """Run `command` as a Locust master with `workers` local worker processes; return the
    master's exit code once every worker has quit and their request logs are merged.

    Raises:
        RuntimeError: the master hung past `timeout`, or a worker wrote no request log.
    """
    port = free_ports(1)[0]
    env = dict(env)
    # The master runs no users: only the workers log requests.
    request_log = env.pop(REQUEST_LOG_ENV, None)
    parts = [worker_request_log(out, i) for i in range(workers)]
    for part in parts:
        part.unlink(missing_ok=True)
    procs = []
    try:
        for i, part in enumerate(parts):
            # A file per worker: each process writes its own log at exit, none shares one.
            worker_env = dict(env, **{REQUEST_LOG_ENV: str(part.resolve())})
            with open(out / f"locust_worker{i}.log", "wb") as log:
                procs.append(
                    subprocess.Popen(
                        worker_command(port),
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=worker_env,
                    )
                )
        master = _run_single(
            command + master_options(workers, port), env, out / "locust.log", timeout
        )
    finally:
        for proc in procs:
            _stop(proc, WORKERS_EXIT_S)
    if request_log:
        merge_request_logs(parts, Path(request_log))
    return master


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
    workers: int = 0,
) -> tuple[LoadSummary, int]:
    """Run locust as a subprocess against `url`; return the summary and locust's exit code.

    `workers` > 0 runs Locust's distributed mode on localhost: a master and that many
    worker processes sharing the users (`run_distributed`).

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
    if workers > 0:
        returncode = run_distributed(command, env, out, workers, timeout)
    else:
        returncode = _run_single(command, env, log_path, timeout)
    stats = stats_file(out)
    try:
        summary = summarize(stats)
    except (OSError, ValueError) as err:
        tail = log_tail(log_path, 30)
        raise RuntimeError(
            f"locust exited with code {returncode} and wrote no usable stats "
            f"({err})\n--- last lines of {log_path} ---\n{tail}"
        ) from None
    return summary, returncode


def _run_single(command: list[str], env: dict[str, str], log_path: Path, timeout: float) -> int:
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
    return completed.returncode


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


# Long on purpose: the argparse flags, one statement each, then one call per step.
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
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="Locust worker processes on localhost under a master (%(default)s: one process)",
    )
    args = parser.parse_args(argv)

    try:
        parse_run_time(args.run_time)
    except ValueError as err:
        parser.error(str(err))
    if args.users < 1:
        parser.error("--users must be at least 1")
    if args.workers < 0:
        parser.error("--workers must be 0 (one process) or more")
    if args.workers > args.users:
        parser.error("--workers must not exceed --users (a worker without users sends nothing)")
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
            workers=args.workers,
        )
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    report = {
        **asdict(summary),
        "failure_rate": summary.failure_rate,
        "url": args.url,
        "users": args.users,
        "workers": args.workers,
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
    workers = f", {args.workers} workers" if args.workers else ""
    lines = [f"{summary.line()} ({args.users} users{workers}, {args.run_time})"]
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
