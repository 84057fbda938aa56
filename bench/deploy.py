"""`python -m shoprank.bench.deploy` (`make bench-deploy`): a hot deploy and its rollback
under a Locust load, and what they did to the requests flowing meanwhile.

On a copy of the demo's served repository (the run adds a version to it), a supervised
server (`model_repository.server start`, as `make serve`) takes a closed-loop load of
`--users` Locust users (`python -m shoprank.loadtest.run`, client defaults) with the
demo's workload. After `--settle-s` of steady traffic, `model_repository.deploy` stages
the same artifacts as the next version and switches to it; `--hold-s` later `--rollback`
switches back. Every request's end time and latency come from the load test's request
log, so the windows are exact:

    steady    the settle period, less its first --ramp-s (users starting, caches warming)
    deploy    from the deploy command's start to its return
    rollback  from the rollback command's start to its return
    swap      from the deploy's start to the rollback's return

Writes `<out>/reports/deploy.json` (each window's requests, failures, p50 and p99, the
swap's p99 over the steady p99, and the worst 10-second p99 inside each window, the view
Locust's own charts give) and `deploy.png` (every request's latency over time, the
windows shaded).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from shoprank import contract
from shoprank.configargs import parse_config
from shoprank.ops.tritonserver import free_ports

REPORT_FILE = "deploy.json"
PLOT_FILE = "deploy.png"
ROLLING_S = 10.0  # Locust's window for its "current" percentiles


@dataclass
class DeployBenchConfig:
    """Every knob of the deploy benchmark; each is a flag."""

    out: Path = field(default=contract.DEFAULT_ARTIFACTS, metadata={"help": "trained demo"})
    users: int = field(default=8, metadata={"help": "closed-loop Locust users"})
    settle_s: float = field(default=30.0, metadata={"help": "steady traffic before the deploy"})
    ramp_s: float = field(default=5.0, metadata={"help": "start of the settle period left out"})
    hold_s: float = field(default=10.0, metadata={"help": "new version live before rollback"})
    tail_s: float = field(default=10.0, metadata={"help": "traffic after the rollback"})
    max_swap_s: float = field(
        default=150.0, metadata={"help": "deploy + hold + rollback must end within this"}
    )


@dataclass
class Window:
    """The requests that ended within [start, end) seconds of the deploy's start."""

    start: float
    end: float
    requests: int
    failures: int
    p50_ms: float | None
    p99_ms: float | None
    worst_rolling_p99_ms: float | None  # the highest p99 of any 10 s inside the window


def window(log: pd.DataFrame, start: float, end: float) -> Window:
    """Summary of `log` rows (time relative to the deploy's start) in [start, end)."""
    rows = log[(log["time"] >= start) & (log["time"] < end)]
    ok = rows[rows["ok"].astype(bool)]
    ms = ok["ms"].to_numpy()

    def pct(values: np.ndarray, q: float) -> float | None:
        return round(float(np.percentile(values, q)), 1) if len(values) else None

    rolling = [
        pct(ms[(ok["time"] >= t - ROLLING_S).to_numpy() & (ok["time"] < t).to_numpy()], 99)
        for t in np.arange(start + ROLLING_S, end + 1e-9, 1.0)
    ]
    rolling = [r for r in rolling if r is not None]
    return Window(
        start=round(start, 1),
        end=round(end, 1),
        requests=len(rows),
        failures=int((~rows["ok"].astype(bool)).sum()),
        p50_ms=pct(ms, 50),
        p99_ms=pct(ms, 99),
        worst_rolling_p99_ms=max(rolling) if rolling else None,
    )


def summarize(log: pd.DataFrame, marks: dict[str, float], config: DeployBenchConfig) -> dict:
    """The report: `marks` holds the deploy's and rollback's start and end (Unix s)."""
    t0 = marks["deploy_start"]
    rel = log.assign(time=log["time"] - t0)
    at = {k: v - t0 for k, v in marks.items()}
    windows = {
        "steady": window(rel, -config.settle_s + config.ramp_s, 0.0),
        "deploy": window(rel, 0.0, at["deploy_end"]),
        "rollback": window(rel, at["rollback_start"], at["rollback_end"]),
        "swap": window(rel, 0.0, at["rollback_end"]),
    }
    steady, swap = windows["steady"], windows["swap"]
    ratio = round(swap.p99_ms / steady.p99_ms, 2) if swap.p99_ms and steady.p99_ms else None
    return {
        "users": config.users,
        "requests": len(log),
        "failures": int((~log["ok"].astype(bool)).sum()),
        "deploy_s": round(at["deploy_end"], 1),
        "rollback_s": round(at["rollback_end"] - at["rollback_start"], 1),
        "swap_p99_over_steady_p99": ratio,
        "windows": {name: asdict(w) for name, w in windows.items()},
    }


def plot(log: pd.DataFrame, marks: dict[str, float], report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = marks["deploy_start"]
    t = log["time"] - t0
    ok = log["ok"].astype(bool)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.scatter(t[ok], log["ms"][ok], s=2, alpha=0.3, color="tab:blue", label="answered")
    if (~ok).any():
        ax.scatter(t[~ok], log["ms"][~ok], s=8, color="tab:red", label="failed")
    for name, color in (("deploy", "tab:orange"), ("rollback", "tab:green")):
        w = report["windows"][name]
        ax.axvspan(w["start"], w["end"], color=color, alpha=0.15, label=name)
    steady = report["windows"]["steady"]["p99_ms"]
    if steady:
        ax.axhline(steady, color="black", lw=1, label=f"steady p99 {steady:.0f} ms")
        ax.axhline(2 * steady, color="black", lw=1, ls="--", label="2 × steady p99")
    ax.set_xlabel("seconds from the deploy's start")
    ax.set_ylabel("request latency, ms")
    ax.set_yscale("log")
    ratio = report["swap_p99_over_steady_p99"]
    ax.set_title(
        f"hot deploy + rollback under {report['users']} users: {report['failures']} failed of "
        f"{report['requests']}, swap p99 = {ratio} × steady"
    )
    ax.legend(loc="upper left", fontsize=8, markerscale=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _run(command: list[str], what: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip()


def run(config: DeployBenchConfig) -> dict:
    paths = contract.ArtifactPaths(config.out)
    source = paths.repository("cpu")
    if not source.is_dir():
        raise FileNotFoundError(f"{source} is missing: run `make demo` (or `make repo`) first")
    reports = paths.reports
    reports.mkdir(parents=True, exist_ok=True)
    server = [sys.executable, "-m", "shoprank.model_repository.server"]
    deploy = [sys.executable, "-m", "shoprank.model_repository.deploy"]
    with tempfile.TemporaryDirectory(prefix="shoprank-bench-deploy-") as tmp:
        work = Path(tmp)
        repository = work / "repository"
        shutil.copytree(source, repository)
        http, grpc, metrics, health = free_ports(4)
        url = f"localhost:{grpc}"
        pidfile = work / "server.pid"
        _run(
            [
                *server, "start", f"--repository={repository}", f"--pidfile={pidfile}",
                f"--log={work / 'triton.log'}", f"--http-port={http}", f"--grpc-port={grpc}",
                f"--metrics-port={metrics}", f"--health-port={health}",
            ],
            "server start",
        )  # fmt: skip
        try:
            marks: dict[str, float] = {}
            failed: list[Exception] = []

            def swap() -> None:  # beside the load, which runs in this (the main) thread
                try:
                    time.sleep(config.settle_s)
                    marks["deploy_start"] = time.time()
                    print(_run([*deploy, f"--out={config.out}", f"--repository={repository}",
                                f"--url={url}"], "deploy"), flush=True)  # fmt: skip
                    marks["deploy_end"] = time.time()
                    time.sleep(config.hold_s)
                    marks["rollback_start"] = time.time()
                    print(_run([*deploy, "--rollback", f"--repository={repository}",
                                f"--url={url}"], "rollback"), flush=True)  # fmt: skip
                    marks["rollback_end"] = time.time()
                except RuntimeError as err:
                    failed.append(err)

            thread = threading.Thread(target=swap, daemon=True)
            thread.start()
            run_time = config.settle_s + config.max_swap_s + config.tail_s
            load = [
                sys.executable, "-m", "shoprank.loadtest.run", f"--users={config.users}",
                f"--run-time={run_time:.0f}s", f"--url={url}", f"--out={work / 'locust'}",
                "--no-html",
            ]  # fmt: skip
            if paths.workload.exists():
                load.append(f"--workload={paths.workload}")
            done = subprocess.run(load, capture_output=True, text=True, check=False)
            thread.join()
            if done.returncode not in (0, 1):  # 1: some requests failed, which is measured
                raise RuntimeError(f"the load test failed: {done.stderr.strip()}")
            if failed:
                raise failed[0]
            if marks["rollback_end"] - marks["deploy_start"] > config.max_swap_s:
                raise RuntimeError(
                    f"deploy and rollback took {marks['rollback_end'] - marks['deploy_start']:.0f}"
                    f" s, beyond --max-swap-s {config.max_swap_s:.0f}: raise it"
                )
            log = pd.read_csv(work / "locust" / contract.LOADTEST_REQUESTS_FILE)
        finally:
            subprocess.run([*server, "stop", f"--pidfile={pidfile}"], capture_output=True)
    report = summarize(log, marks, config)
    (reports / REPORT_FILE).write_text(json.dumps(report, indent=2))
    plot(log, marks, report, reports / PLOT_FILE)
    return report


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    config = parse_config(DeployBenchConfig, argv, description=__doc__ or "")
    try:
        report = run(config)
    except (RuntimeError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    w = report["windows"]
    for name in ("steady", "deploy", "rollback", "swap"):
        x = w[name]
        print(
            f"{name:9s} {x['requests']:6d} requests, {x['failures']} failed, "
            f"p50 {x['p50_ms']} ms, p99 {x['p99_ms']} ms (worst 10 s: {x['worst_rolling_p99_ms']})"
        )
    print(
        f"deploy {report['deploy_s']} s, rollback {report['rollback_s']} s; "
        f"swap p99 / steady p99 = {report['swap_p99_over_steady_p99']}"
    )
    print(f"wrote {Path(config.out) / 'reports' / REPORT_FILE} and {PLOT_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
