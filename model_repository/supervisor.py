"""Keep the served pipeline answering, and tell health checks the truth.

Triton's own health endpoints keep saying "ready" after a Python-backend stub has died,
while every request then fails with INTERNAL "Stub process ... is not healthy". The
supervisor owns the tritonserver process and, every `probe_interval_s`:

1. checks that the server and each model's stub process are alive (psutil), and
2. sends a real request through the `search` ensemble (when the repository has one) and
   checks the answer. Probes and repairs use the HTTP endpoint on loopback, which stays
   plaintext when gRPC is served over TLS.

When either fails it marks itself not ready, unloads the broken model through Triton's
model-control API (explicit mode; while it is down, requests are refused at once with
UNAVAILABLE instead of waiting on a dead stub), loads it again and probes; the ensembles
follow on their own. After `reload_attempts` failed repairs, or when the server process
itself is gone, it restarts the server.

Health endpoints (HTTP, `health_port`): `/live` is 200 while the supervisor runs and
the server process exists (restarting counts as alive), `/ready` is 200 only when the
last probe passed; `/status` is the JSON state and `/metrics` the same in Prometheus
form (shoprank_supervisor_*: ready, probes, failed probes, repairs, restarts). A
Kubernetes deployment points its readinessProbe at /ready and its livenessProbe at /live
(README "Serving and operations", deploy/).

    python -m shoprank.model_repository.supervisor --repository DIR [--grpc-port 8001 ...]

is what `python -m shoprank.model_repository.server start` runs detached.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import psutil

from shoprank import contract
from shoprank.core.admission import OVERLOADED
from shoprank.ops.tritonserver import (
    DEFAULT_HOST,
    TritonServerError,
    client_host,
    model_stubs,
    start,
    stop_process_group,
)

log = logging.getLogger(__name__)


@dataclass
class SupervisorConfig:
    """How often to probe and how hard to try before restarting the server."""

    probe_interval_s: float = 1.0
    probe_timeout_s: float = 5.0
    reload_attempts: int = 2  # failed repairs before the server is restarted
    # Good probes in a row before a repaired server is called ready again: the backlog
    # of the outage drains first, so a load balancer does not send a burst into it.
    ready_after: int = 2
    start_timeout_s: float = 300.0
    admin_key: str = ""  # header value for model control when the APIs are restricted
    # Overload is not a fault while the server keeps answering; it is when no request has
    # succeeded for this long (a hung model).
    hung_after_s: float = 15.0


@dataclass(frozen=True)
class Problem:
    """What a probe found wrong. `kind`: gone (the server process), stub (a model's stub
    process), busy (refused for overload: queue full or queue timeout), failed (else)."""

    kind: str
    message: str

    def __str__(self) -> str:
        return self.message


# Triton's words for a request refused by a full queue or its queue timeout, and
# shoprank's admission refusal: overload, which reloading a model would only make worse.
BUSY_MARKERS = ("Request timeout expired", "Exceeds maximum queue size", OVERLOADED)


@dataclass
class State:
    """What /status reports."""

    ready: bool = False
    phase: str = "starting"  # starting | serving | repairing | restarting | stopping
    server_pid: int | None = None
    probes: int = 0
    failed_probes: int = 0
    repairs: int = 0
    restarts: int = 0
    last_error: str = ""
    last_probe_at: float = 0.0
    good_in_a_row: int = 0
    busy_probes: int = 0  # probes refused for overload (not a fault while answers flow)
    events: list[str] = field(default_factory=list)

    def note(self, message: str) -> None:
        log.warning(message)
        self.events = [*self.events[-19:], f"{time.strftime('%H:%M:%S')} {message}"]


def model_control_args(admin_key: str = "") -> list[str]:
    """tritonserver flags: explicit model control, every model loaded at start, and the
    admin APIs behind a key when one is given."""
    args = ["--model-control-mode=explicit", "--load-model=*"]
    if admin_key:
        protocols = "model-repository,model-config,shared-memory,statistics,trace,logging"
        args += [
            f"--grpc-restricted-protocol={protocols}:{contract.ADMIN_KEY_HEADER}={admin_key}",
            f"--http-restricted-api={protocols}:{contract.ADMIN_KEY_HEADER}={admin_key}",
        ]
    return args


class Supervisor:
    """Starts tritonserver on a repository, probes it, repairs it (see module docstring)."""

    def __init__(
        self,
        repository: Path,
        *,
        host: str = DEFAULT_HOST,
        http_port: int = contract.HTTP_PORT,
        grpc_port: int = contract.GRPC_PORT,
        metrics_port: int = contract.METRICS_PORT,
        log_path: Path,
        config: SupervisorConfig | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.repository = Path(repository)
        self.host = host
        self.ports = {"http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port}
        self.log_path = Path(log_path)
        self.config = config or SupervisorConfig()
        self.extra_args = tuple(extra_args)
        self.state = State()
        self.process: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._answered = (time.monotonic(), -1)  # (when the count last moved, the count)
        self.starting = False  # inside start_server: a stop must abort the start

    @property
    def http_url(self) -> str:
        # Probes and repairs go over HTTP: plaintext on loopback even when gRPC is TLS-only.
        return f"{client_host(self.host)}:{self.ports['http_port']}"

    def client(self, timeout: float | None = None):
        import tritonclient.http as httpclient

        timeout = timeout or self.config.probe_timeout_s
        return httpclient.InferenceServerClient(
            self.http_url, connection_timeout=timeout, network_timeout=timeout
        )

    @property
    def headers(self) -> dict[str, str] | None:
        return {contract.ADMIN_KEY_HEADER: self.config.admin_key} if self.config.admin_key else None

    # -- the server ---------------------------------------------------------------------
    def start_server(self) -> None:
        """Start tritonserver (explicit model control) and wait until every model is ready."""
        self.starting = True
        try:
            self.process = start(
                self.repository,
                log_path=self.log_path,
                wait_s=self.config.start_timeout_s,
                host=self.host,
                extra_args=(*model_control_args(self.config.admin_key), *self.extra_args),
                headers=self.headers,
                **self.ports,
            )
        finally:
            self.starting = False
        self.state.server_pid = self.process.pid

    def stop_server(self) -> None:
        if self.process is not None:
            stop_process_group(self.process)
            self.process = None

    def ensembles(self) -> list[str]:
        """The ensembles of the repository (from their configs)."""
        return sorted(
            p.parent.name
            for p in self.repository.glob("*/config.pbtxt")
            if 'platform: "ensemble"' in p.read_text()
        )

    def models(self) -> list[str]:
        """Every model of the repository."""
        return sorted(p.parent.name for p in self.repository.glob("*/config.pbtxt"))

    # -- probing ------------------------------------------------------------------------
    def dead_stubs(self) -> list[str]:
        """Models whose stub process is gone (each loaded model has one per instance)."""
        if self.process is None:
            return []
        try:
            alive = {name for name, _ in model_stubs(self.process.pid)}
        except psutil.Error:
            return []
        python = [m for m in self.models() if m not in self.ensembles()]
        return [m for m in python if m not in alive]

    def probe(self) -> Problem | None:
        """None when the server answers correctly, else what is wrong."""
        import tritonclient.http as httpclient
        from tritonclient.utils import InferenceServerException

        if self.process is None or self.process.poll() is not None:
            return Problem("gone", "the tritonserver process is gone")
        dead = self.dead_stubs()
        if dead:
            return Problem("stub", f"stub process of {', '.join(dead)} is gone")
        client = self.client()
        try:
            if contract.ENSEMBLE_MODEL not in self.ensembles():
                for model in self.models():
                    if not client.is_model_ready(model):
                        return Problem("failed", f"model {model} is not ready")
                return None
            values = {
                contract.QUERY: np.array([[contract.SAMPLE_QUERY.encode()]], dtype=object),
                contract.TOP_K: np.array([[1]], dtype=np.int32),
            }
            inputs = []
            for spec, value in values.items():
                tensor = httpclient.InferInput(spec.name, list(value.shape), spec.client_dtype)
                tensor.set_data_from_numpy(value, binary_data=True)
                inputs.append(tensor)
            result = client.infer(contract.ENSEMBLE_MODEL, inputs)
            if result.as_numpy(contract.PRODUCT_IDS.name) is None:
                return Problem("failed", "the probe answer has no PRODUCT_IDS")
            return None
        except InferenceServerException as exc:
            message = f"probe request failed: {exc.status()}: {exc.message()}"
            busy = any(marker in (exc.message() or "") for marker in BUSY_MARKERS)
            return Problem("busy" if busy else "failed", message)
        except OSError as exc:  # refused or timed out: HTTP raises the socket's error
            return Problem("failed", f"probe request failed: {exc}")
        finally:
            client.close()

    def answered(self) -> int | None:
        """Requests the server has answered successfully so far (its statistics)."""
        client = self.client()
        try:
            stats = client.get_inference_statistics(headers=self.headers)
        except Exception:  # statistics are advisory: no answer means unknown
            return None
        finally:
            client.close()
        return sum(
            int(m.get("inference_stats", {}).get("success", {}).get("count", 0))
            for m in stats.get("model_stats", [])
        )

    def still_answering(self) -> bool:
        """During overload: has any request succeeded within `hung_after_s`?"""
        now, answered = time.monotonic(), self.answered()
        if answered is None:
            return False
        if answered != self._answered[1]:
            self._answered = (now, answered)
        return now - self._answered[0] < self.config.hung_after_s

    # -- repairing ----------------------------------------------------------------------
    def reload(self, models: list[str]) -> None:
        """Unload `models` (requests are refused at once while they are down, and Triton's
        own readiness turns false), then load them again. Their ensembles follow; the
        healthy composing models are not touched (loading an ensemble would reload every
        model it uses)."""
        client = self.client(timeout=self.config.start_timeout_s)  # loading takes a while
        try:
            for name in models:
                client.unload_model(name, headers=self.headers)
            for name in models:
                client.load_model(name, headers=self.headers)
        finally:
            client.close()

    def repair(self, problem: Problem | str) -> None:
        """Bring the service back; restart the server when reloading does not."""
        self.state.ready = False
        if self.process is None or self.process.poll() is not None:
            self.restart(problem)
            return
        self.state.phase = "repairing"
        dead = self.dead_stubs()
        models = dead or [m for m in self.models() if m not in self.ensembles()]
        for attempt in range(1, self.config.reload_attempts + 1):
            self.state.repairs += 1
            self.state.note(f"repair {attempt}: {problem}; reloading {', '.join(models)}")
            try:
                self.reload(models)
            except Exception as exc:  # tritonclient raises its own and gRPC errors
                self.state.note(f"reload failed: {exc}")
                continue
            found = self.probe()
            if found is None or found.kind == "busy":
                return
            problem = found
        self.restart(problem)

    def restart(self, problem: Problem | str) -> None:
        self.state.phase = "restarting"
        self.state.restarts += 1
        self.state.note(f"restarting tritonserver: {problem}")
        self.stop_server()
        self.start_server()

    # -- the loop -----------------------------------------------------------------------
    def run(self) -> None:
        """Probe and repair until `stop` is called."""
        while not self._stop.is_set():
            started = time.monotonic()
            problem = self.probe()
            self.state.probes += 1
            self.state.last_probe_at = time.time()
            if problem and problem.kind == "busy" and self.still_answering():
                self.state.busy_probes += 1  # overload: shed by the queue, not a fault
                self._stop.wait(self.config.probe_interval_s)
                continue
            if problem and problem.kind != "gone" and deploy_holder(self.repository):
                self.state.last_error = f"{problem} (a deploy is in progress: not repairing)"
                self._stop.wait(self.config.probe_interval_s)
                continue
            if problem:
                self.state.failed_probes += 1
                self.state.good_in_a_row = 0
                self.state.last_error = str(problem)
                try:
                    self.repair(problem)
                except TritonServerError as exc:
                    self.state.note(f"restart failed: {exc}")
                    time.sleep(self.config.probe_interval_s)
                continue
            self.state.good_in_a_row += 1
            if self.state.good_in_a_row >= self.config.ready_after or self.state.repairs == 0:
                self.state.ready, self.state.phase = True, "serving"
            self._stop.wait(max(0.0, self.config.probe_interval_s - (time.monotonic() - started)))

    def stop(self) -> None:
        self.state.ready, self.state.phase = False, "stopping"
        self._stop.set()

    def live(self) -> bool:
        return not self._stop.is_set() and (
            self.state.phase == "restarting"
            or (self.process is not None and self.process.poll() is None)
        )


def deploy_holder(repository: Path) -> int | None:
    """The pid of the live deploy holding the repository's lock file, or None (no lock, or
    its process is gone). See model_repository.deploy."""
    try:
        pid = int((repository / contract.DEPLOY_LOCK_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if psutil.pid_exists(pid) else None


class _StateCollector:
    """The supervisor's state as Prometheus series, read at scrape time."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        state = self.supervisor.state
        yield GaugeMetricFamily(
            "shoprank_supervisor_ready", "1 when the last probes passed", value=int(state.ready)
        )
        for name, help_text, value in (
            ("probes", "probes sent", state.probes),
            ("failed_probes", "probes that failed", state.failed_probes),
            ("repairs", "model reloads after a failed probe", state.repairs),
            ("restarts", "tritonserver restarts", state.restarts),
        ):
            yield CounterMetricFamily(f"shoprank_supervisor_{name}", help_text, value=value)


def serve_health(supervisor: Supervisor, host: str, port: int) -> ThreadingHTTPServer:
    """/live, /ready, /status and /metrics over HTTP in a daemon thread."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StateCollector(supervisor))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/live":
                ok, body = supervisor.live(), b"live\n"
            elif self.path == "/ready":
                ok, body = supervisor.state.ready, b"ready\n"
            elif self.path == "/status":
                ok, body = True, json.dumps(asdict(supervisor.state), indent=2).encode()
            elif self.path == "/metrics":
                ok, body = True, generate_latest(registry)
            else:
                self.send_error(404)
                return
            kind = {"/status": "application/json", "/metrics": CONTENT_TYPE_LATEST}
            self.send_response(200 if ok else 503)
            self.send_header("Content-Type", kind.get(self.path, "text/plain"))
            self.end_headers()
            self.wfile.write(body if ok else b"not " + body)

        def log_message(self, *args) -> None:  # probes every second: keep the log quiet
            pass

    httpd = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True, name="health").start()
    return httpd


def main(argv: list[str] | None = None) -> int:
    """Run the supervisor in the foreground (the server CLI runs it detached)."""
    parser = argparse.ArgumentParser(prog="python -m shoprank.model_repository.supervisor")
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--http-port", type=int, default=contract.HTTP_PORT)
    parser.add_argument("--grpc-port", type=int, default=contract.GRPC_PORT)
    parser.add_argument("--metrics-port", type=int, default=contract.METRICS_PORT)
    parser.add_argument("--health-port", type=int, default=contract.HEALTH_PORT)
    parser.add_argument("--log", type=Path, required=True, help="tritonserver's log")
    parser.add_argument("--probe-interval", type=float, default=1.0)
    parser.add_argument("--admin-key-file", type=Path, default=None)
    parser.add_argument("--extra", action="append", default=[], help="tritonserver flag")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    key = args.admin_key_file.read_text().strip() if args.admin_key_file else ""
    supervisor = Supervisor(
        args.repository,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        log_path=args.log,
        config=SupervisorConfig(probe_interval_s=args.probe_interval, admin_key=key),
        extra_args=tuple(args.extra),
    )
    httpd = serve_health(supervisor, args.host, args.health_port)

    def on_signal(*_) -> None:
        supervisor.stop()
        if supervisor.starting:  # `start` stops the server it is waiting for on the way out
            raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        supervisor.start_server()
    except TritonServerError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        httpd.shutdown()
        return 2
    try:
        supervisor.run()
    finally:
        supervisor.stop_server()
        httpd.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
