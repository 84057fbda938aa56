"""`python -m shoprank.model_repository.server`: start, stop or inspect the served pipeline.

`start` runs the supervisor (model_repository/supervisor.py) detached: it owns the
tritonserver that nvidia-pytriton ships, restores it when a model or the server fails,
and answers /live and /ready on the health port. `--no-supervise` starts the bare server
instead. A pid file lets `make serve` / `make stop` find it::

    python -m shoprank.model_repository.server start --repository artifacts/demo/repository_cpu
    python -m shoprank.model_repository.server status
    python -m shoprank.model_repository.server stop

Listening beyond localhost (`--host 0.0.0.0`) restricts Triton's admin APIs (model
control, config, statistics, shared memory, trace, logging) to callers that send the
admin key header; the key is read from `--admin-key-file`, or generated into one (0600)
beside the pid file. `--tls-cert/--tls-key` serve gRPC over TLS.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
from tritonclient.utils import InferenceServerException

from shoprank import contract
from shoprank.contract import (
    DEFAULT_ARTIFACTS,
    GRPC_PORT,
    HEALTH_PORT,
    HTTP_PORT,
    METRICS_PORT,
    ArtifactPaths,
)
from shoprank.ops.tritonserver import (
    DEFAULT_HOST,
    TritonServerError,
    client_host,
    is_tritonserver,
    log_tail,
    model_states,
    pid_alive,
    port_in_use,
    server_options,
    server_ready,
    start,
    stop_process_group,
    stub_memory_mb,
)

DEFAULT_PATHS = ArtifactPaths(DEFAULT_ARTIFACTS)
PROG = "python -m shoprank.model_repository.server"
SUPERVISOR_MODULE = "shoprank.model_repository.supervisor"


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return False


def _read_pidfile(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def is_supervisor(pid: int) -> bool:
    """Whether `pid` runs this project's supervisor (guards against a reused pid)."""
    try:
        return SUPERVISOR_MODULE in " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False


def _ours(pid: int) -> bool:
    return pid_alive(pid) and (is_supervisor(pid) or is_tritonserver(pid))


def health(url: str, path: str, timeout: float = 2.0) -> tuple[int, str]:
    """(HTTP status, body) of a supervisor health endpoint; (0, why) when unreachable."""
    try:
        with urllib.request.urlopen(f"{url}{path}", timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except (urllib.error.URLError, OSError) as err:
        return 0, str(err)


def admin_key(args: argparse.Namespace) -> str:
    """The admin key when the server listens beyond localhost (generated if not given)."""
    if is_loopback(args.host):
        return ""
    if args.admin_key_file is not None:
        return args.admin_key_file.read_text().strip()
    path = args.pidfile.with_suffix(".admin-key")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32) + "\n")
        path.chmod(0o600)
    args.admin_key_file = path
    return path.read_text().strip()


def tls_args(args: argparse.Namespace) -> list[str]:
    if not args.tls_cert:
        return []
    return [
        "--grpc-use-ssl=true",
        f"--grpc-server-cert={args.tls_cert}",
        f"--grpc-server-key={args.tls_key}",
    ]


def _start_supervised(args: argparse.Namespace, key: str) -> int:
    if port_in_use(args.health_port, args.host):
        raise TritonServerError(f"health port {args.health_port} already in use")
    for kind in ("http", "grpc", "metrics"):
        port = getattr(args, f"{kind}_port")
        if port_in_use(port, args.host):
            raise TritonServerError(f"{kind} port {port} already in use (another server?)")
    command = [
        sys.executable,
        "-m",
        SUPERVISOR_MODULE,
        f"--repository={Path(args.repository).resolve()}",
        f"--host={args.host}",
        f"--http-port={args.http_port}",
        f"--grpc-port={args.grpc_port}",
        f"--metrics-port={args.metrics_port}",
        f"--health-port={args.health_port}",
        f"--log={Path(args.log).resolve()}",
        f"--probe-interval={args.probe_interval}",
    ]
    if key:
        command.append(f"--admin-key-file={args.admin_key_file}")
    command += [f"--extra={flag}" for flag in tls_args(args)]
    supervisor_log = Path(args.log).with_suffix(".supervisor.log")
    supervisor_log.parent.mkdir(parents=True, exist_ok=True)
    with open(supervisor_log, "wb") as out:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://{client_host(args.host)}:{args.health_port}"
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TritonServerError(
                f"the supervisor exited (code {proc.returncode}) before the server was "
                f"ready:\n{log_tail(supervisor_log, 30)}"
            )
        if health(url, "/ready")[0] == 200:
            return proc.pid
        time.sleep(0.5)
    stop_process_group(proc)
    raise TritonServerError(f"not ready after {args.wait:.0f} s; see {supervisor_log}")


def _cmd_start(args: argparse.Namespace) -> int:
    pidfile: Path = args.pidfile
    pid = _read_pidfile(pidfile)
    if pid is not None and _ours(pid):
        print(
            f"error: the server is already running (pid {pid}, from {pidfile}); "
            f"stop it first: {PROG} stop --pidfile {pidfile}",
            file=sys.stderr,
        )
        return 2
    if bool(args.tls_cert) != bool(args.tls_key):
        print("error: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        key = admin_key(args)
        if args.supervise:
            pid = _start_supervised(args, key)
        else:
            from shoprank.model_repository.supervisor import model_control_args

            pid = start(
                args.repository,
                http_port=args.http_port,
                grpc_port=args.grpc_port,
                metrics_port=args.metrics_port,
                log_path=args.log,
                wait_s=args.wait,
                host=args.host,
                log_verbose=args.log_verbose,
                extra_args=(*model_control_args(key), *tls_args(args)),
            ).pid
    except TritonServerError as err:
        hint = ""
        if "already in use" in str(err):
            hint = "; stop it or pick other ports with --http-port/--grpc-port/--metrics-port"
        print(f"error: {err}{hint}", file=sys.stderr)
        return 2
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    pidfile.write_text(f"{pid}\n")
    host = client_host(args.host)
    mode = "supervised" if args.supervise else "unsupervised"
    took = time.monotonic() - started
    print(
        f"shoprank server ready in {took:.1f} s ({mode}, pid {pid}, repository {args.repository})"
    )
    print(f"  gRPC     {host}:{args.grpc_port}{' (TLS)' if args.tls_cert else ''}")
    print(f"  HTTP     http://{host}:{args.http_port}")
    print(f"  metrics  http://{host}:{args.metrics_port}/metrics")
    if args.supervise:
        print(f"  health   http://{host}:{args.health_port}/ready  /live  /status")
    if key:
        print(
            f"  admin    APIs need header {contract.ADMIN_KEY_HEADER} (gRPC: "
            f"{contract.ADMIN_KEY_GRPC_HEADER}): see {args.admin_key_file}"
        )
    print(f"  log      {args.log}")
    print(f"  stop     {PROG} stop --pidfile {pidfile}")
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    pidfile: Path = args.pidfile
    pid = _read_pidfile(pidfile)
    if pid is None:
        print(f"no pid file at {pidfile}; nothing to stop", file=sys.stderr)
        return 0
    if not _ours(pid):
        print(f"server (pid {pid}) is not running; removing stale {pidfile}")
        pidfile.unlink(missing_ok=True)
        return 0
    # The supervisor stops its tritonserver on SIGTERM; should it be killed instead, the
    # servers it ran on its repository (children in sessions of their own) are stopped here.
    supervised = is_supervisor(pid)
    server = _supervised_server(pid) if supervised else None
    servers = {c.pid for c in _children(pid) if is_tritonserver(c.pid)} if supervised else set()
    try:
        stop_process_group(pid, timeout=args.timeout)
        if server is not None:
            servers |= set(_servers_matching(server))
        for server_pid in sorted(servers):
            if pid_alive(server_pid):
                stop_process_group(server_pid, timeout=args.timeout)
    except TritonServerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    pidfile.unlink(missing_ok=True)
    print(f"server (pid {pid}) stopped")
    return 0


def _supervised_server(pid: int) -> dict[str, str]:
    """The tritonserver options that identify the server of supervisor `pid`: its
    repository, and its gRPC address and port (replicas on other addresses or ports may
    serve the same repository)."""
    options = server_options(pid)
    return {
        "model-repository": options.get("repository", ""),
        "grpc-address": options.get("host", DEFAULT_HOST),
        "grpc-port": options.get("grpc-port", str(GRPC_PORT)),
    }


def _servers_matching(wanted: dict[str, str]) -> list[int]:
    """tritonserver processes started with every option in `wanted`."""
    found = []
    for proc in psutil.process_iter():
        if is_tritonserver(proc.pid):
            options = server_options(proc.pid)
            if all(options.get(key) == value for key, value in wanted.items()):
                found.append(proc.pid)
    return found


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _server_report(pid: int) -> bool:
    """Print the tritonserver `pid`'s address and model states; True when all are READY."""
    options = server_options(pid)
    host = client_host(options.get("grpc-address", DEFAULT_HOST))
    grpc_url = f"{host}:{options.get('grpc-port', GRPC_PORT)}"
    http_url = f"{host}:{options.get('http-port', HTTP_PORT)}"
    print(f"tritonserver pid {pid}, repository {options.get('model-repository', '?')}")
    print(f"  gRPC {grpc_url}   HTTP http://{http_url}")
    if not server_ready(http_url):
        print("  server: NOT READY")
        return False
    try:
        index = model_states(http_url)
    except InferenceServerException as err:
        # With the admin APIs behind a key (a non-loopback --host), the index needs it.
        print(f"  server: READY (model index unavailable: {err.message()})")
        return True
    print("  server: READY")
    memory = stub_memory_mb(pid)
    for model in index:
        reason = f" ({model['reason']})" if model.get("reason") else ""
        held = f", {memory[model['name']]:.0f} MB resident" if model["name"] in memory else ""
        print(
            f"  model {model['name']} v{model.get('version', '?')}: {model['state']}{reason}{held}"
        )
    return all(m.get("state") == "READY" for m in index)


def _cmd_status(args: argparse.Namespace) -> int:
    pid = _read_pidfile(args.pidfile)
    if pid is None or not _ours(pid):
        print(f"the server is not running (pid file {args.pidfile})")
        return 1
    if not is_supervisor(pid):
        return 0 if _server_report(pid) else 1
    options = {
        a[2:].split("=", 1)[0]: a.split("=", 1)[1]
        for a in psutil.Process(pid).cmdline()
        if a.startswith("--") and "=" in a
    }
    url = f"http://{client_host(options.get('host', DEFAULT_HOST))}:"
    url += options.get("health-port", str(HEALTH_PORT))
    code, body = health(url, "/status")
    state = json.loads(body) if code == 200 else {}
    print(f"supervisor pid {pid}: phase {state.get('phase')}, ready {state.get('ready')}")
    print(
        f"  probes {state.get('probes')} ({state.get('failed_probes')} failed), "
        f"repairs {state.get('repairs')}, restarts {state.get('restarts')}"
    )
    for event in state.get("events", [])[-5:]:
        print(f"  {event}")
    server_pid = state.get("server_pid")
    models_ready = bool(server_pid) and pid_alive(server_pid) and _server_report(server_pid)
    return 0 if state.get("ready") and models_ready else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m shoprank.model_repository.server`."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Start, stop or inspect the supervised embedded tritonserver.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add_pidfile(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--pidfile", type=Path, default=DEFAULT_PATHS.server_pidfile, help="%(default)s"
        )

    p_start = sub.add_parser("start", help="start detached and wait until it serves")
    p_start.add_argument(
        "--repository",
        type=Path,
        default=DEFAULT_PATHS.repository("cpu"),
        help="Triton model repository (default: %(default)s)",
    )
    p_start.add_argument("--http-port", type=int, default=HTTP_PORT)
    p_start.add_argument("--grpc-port", type=int, default=GRPC_PORT)
    p_start.add_argument("--metrics-port", type=int, default=METRICS_PORT)
    p_start.add_argument("--health-port", type=int, default=HEALTH_PORT)
    p_start.add_argument("--host", default=DEFAULT_HOST, help="bind address (%(default)s)")
    p_start.add_argument("--log", type=Path, default=DEFAULT_PATHS.server_log, help="%(default)s")
    p_start.add_argument("--wait", type=float, default=300, help="readiness timeout, seconds")
    p_start.add_argument("--log-verbose", type=int, default=0)
    p_start.add_argument(
        "--supervise",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="restore failed models and the server, honest /ready (default: on)",
    )
    p_start.add_argument("--probe-interval", type=float, default=1.0, help="seconds")
    p_start.add_argument("--admin-key-file", type=Path, default=None)
    p_start.add_argument("--tls-cert", type=Path, default=None, help="gRPC over TLS: cert")
    p_start.add_argument("--tls-key", type=Path, default=None, help="gRPC over TLS: key")
    add_pidfile(p_start)
    p_start.set_defaults(func=_cmd_start)

    p_stop = sub.add_parser("stop", help="stop the server named by the pid file")
    add_pidfile(p_stop)
    p_stop.add_argument("--timeout", type=float, default=30, help="seconds before SIGKILL")
    p_stop.set_defaults(func=_cmd_stop)

    p_status = sub.add_parser("status", help="is it running, and is it ready?")
    add_pidfile(p_status)
    p_status.set_defaults(func=_cmd_status)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
