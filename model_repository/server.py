"""`python -m shoprank.model_repository.server`: start, stop or inspect the embedded server.

The process work (finding the tritonserver that nvidia-pytriton ships, starting it,
waiting until every model is ready, stopping its process group) is `shoprank.tritonserver`;
this is its command line, with a pid file so `make serve` / `make stop` can find it::

    python -m shoprank.model_repository.server start --repository artifacts/demo/repository_cpu
    python -m shoprank.model_repository.server status
    python -m shoprank.model_repository.server stop
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tritonclient.utils import InferenceServerException

from shoprank.contract import DEFAULT_ARTIFACTS, GRPC_PORT, HTTP_PORT, METRICS_PORT, ArtifactPaths
from shoprank.tritonserver import (
    DEFAULT_HOST,
    TritonServerError,
    client_host,
    is_tritonserver,
    model_states,
    pid_alive,
    server_options,
    server_ready,
    start,
    stop,
)

DEFAULT_PATHS = ArtifactPaths(DEFAULT_ARTIFACTS)
PROG = "python -m shoprank.model_repository.server"


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------
def _read_pidfile(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _cmd_start(args: argparse.Namespace) -> int:
    pidfile: Path = args.pidfile
    pid = _read_pidfile(pidfile)
    if pid is not None and pid_alive(pid) and is_tritonserver(pid):
        print(
            f"error: tritonserver is already running (pid {pid}, from {pidfile}); "
            f"stop it first: {PROG} stop --pidfile {pidfile}",
            file=sys.stderr,
        )
        return 2
    try:
        proc = start(
            args.repository,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            log_path=args.log,
            wait_s=args.wait,
            host=args.host,
            log_verbose=args.log_verbose,
        )
    except TritonServerError as err:
        hint = ""
        if "already in use" in str(err):
            hint = "; stop it or pick other ports with --http-port/--grpc-port/--metrics-port"
        print(f"error: {err}{hint}", file=sys.stderr)
        return 2
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    pidfile.write_text(f"{proc.pid}\n")
    # No wait(): the server leads its own session, so it outlives this CLI.
    host = client_host(args.host)
    print(f"tritonserver ready (pid {proc.pid}, repository {args.repository})")
    print(f"  gRPC     {host}:{args.grpc_port}")
    print(f"  HTTP     http://{host}:{args.http_port}")
    print(f"  metrics  http://{host}:{args.metrics_port}/metrics")
    print(f"  log      {args.log}")
    print(f"  stop     {PROG} stop --pidfile {pidfile}")
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    pidfile: Path = args.pidfile
    pid = _read_pidfile(pidfile)
    if pid is None:
        print(f"no pid file at {pidfile}; nothing to stop", file=sys.stderr)
        return 0
    if not (pid_alive(pid) and is_tritonserver(pid)):
        print(f"tritonserver (pid {pid}) is not running; removing stale {pidfile}")
        pidfile.unlink(missing_ok=True)
        return 0
    try:
        stop(pid, timeout=args.timeout)
    except TritonServerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    pidfile.unlink(missing_ok=True)
    print(f"tritonserver (pid {pid}) stopped")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    pid = _read_pidfile(args.pidfile)
    if pid is None or not (pid_alive(pid) and is_tritonserver(pid)):
        print(f"tritonserver is not running (pid file {args.pidfile})")
        return 1
    options = server_options(pid)
    host = client_host(options.get("grpc-address", DEFAULT_HOST))
    grpc_url = f"{host}:{options.get('grpc-port', GRPC_PORT)}"
    print(f"tritonserver pid {pid}, repository {options.get('model-repository', '?')}")
    print(f"  gRPC {grpc_url}   HTTP http://{host}:{options.get('http-port', HTTP_PORT)}")
    if not server_ready(grpc_url):
        print("  server: NOT READY")
        return 1
    try:
        index = model_states(grpc_url)
    except InferenceServerException as err:
        print(f"  server: ready, but the repository index failed: {err}")
        return 1
    print("  server: READY")
    for model in index:
        reason = f" ({model['reason']})" if model.get("reason") else ""
        print(f"  model {model['name']} v{model.get('version', '?')}: {model['state']}{reason}")
    return 0 if all(m.get("state") == "READY" for m in index) else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m shoprank.model_repository.server`."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Start, stop or inspect the embedded tritonserver (from nvidia-pytriton).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add_pidfile(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--pidfile", type=Path, default=DEFAULT_PATHS.server_pidfile, help="%(default)s"
        )

    p_start = sub.add_parser("start", help="start detached and wait until all models are ready")
    p_start.add_argument(
        "--repository",
        type=Path,
        default=DEFAULT_PATHS.repository("cpu"),
        help="Triton model repository (default: %(default)s)",
    )
    p_start.add_argument("--http-port", type=int, default=HTTP_PORT)
    p_start.add_argument("--grpc-port", type=int, default=GRPC_PORT)
    p_start.add_argument("--metrics-port", type=int, default=METRICS_PORT)
    p_start.add_argument("--host", default=DEFAULT_HOST, help="bind address (%(default)s)")
    p_start.add_argument("--log", type=Path, default=DEFAULT_PATHS.server_log, help="%(default)s")
    p_start.add_argument("--wait", type=float, default=120, help="readiness timeout, seconds")
    p_start.add_argument("--log-verbose", type=int, default=0)
    add_pidfile(p_start)
    p_start.set_defaults(func=_cmd_start)

    p_stop = sub.add_parser("stop", help="stop the server named by the pid file")
    add_pidfile(p_stop)
    p_stop.add_argument("--timeout", type=float, default=30, help="seconds before SIGKILL")
    p_stop.set_defaults(func=_cmd_stop)

    p_status = sub.add_parser("status", help="is it running, and are its models ready?")
    add_pidfile(p_status)
    p_status.set_defaults(func=_cmd_status)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
