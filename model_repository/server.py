"""Run the tritonserver that nvidia-pytriton ships, without Docker.

nvidia-pytriton bundles a full tritonserver binary, its Python backend and one backend
stub per Python version. This module wires them together (backend directory, PATH and
LD_LIBRARY_PATH so the stub loads this interpreter's libpython and sees this venv's
packages), starts the server in its own process session, waits until the server and every
model are ready, and stops the whole process group again.

CLI::

    python -m model_repository.server start --repository artifacts/demo/repository_cpu
    python -m model_repository.server status
    python -m model_repository.server stop
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from contract import DEFAULT_ARTIFACTS, GRPC_PORT, HTTP_PORT, METRICS_PORT, ArtifactPaths

# Loopback by default: the demo server is for this machine only. Pass --host 0.0.0.0 to
# expose it (e.g. inside a container).
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PIDFILE = DEFAULT_ARTIFACTS / "tritonserver.pid"
DEFAULT_LOG = DEFAULT_ARTIFACTS / "tritonserver.log"
LOG_TAIL_LINES = 40
# Triton waits this long for in-flight requests on SIGTERM; stop() escalates to SIGKILL
# after its own timeout anyway, so keep it below that.
EXIT_TIMEOUT_S = 10


# Logged as errors on every machine without a GPU, yet harmless there.
_HARMLESS_ON_CPU = ("NVML", "DCGM", "CudaDriverHelper")


class TritonServerError(RuntimeError):
    """The embedded server could not be found, started or stopped."""


@dataclass(frozen=True)
class TritonInstall:
    """Where the pieces of the tritonserver bundled in nvidia-pytriton live."""

    binary: Path  # the tritonserver executable
    python_backend: Path  # folder with libtriton_python.so and triton_python_backend_utils.py
    stub: Path  # triton_python_backend_stub built for the running Python version
    libs: Path  # nvidia_pytriton.libs: the shared libraries the binary links against


@dataclass(frozen=True)
class ServerHandle:
    """A running server: its process and the URLs a client should use."""

    process: subprocess.Popen
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    log_path: Path

    @property
    def grpc_url(self) -> str:
        return f"{_client_host(self.host)}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{_client_host(self.host)}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{_client_host(self.host)}:{self.metrics_port}/metrics"


def _client_host(host: str) -> str:
    # A server bound to every interface is still reached via loopback from here.
    return "localhost" if host in ("0.0.0.0", "::", "") else host


def find_tritonserver() -> TritonInstall:
    """Locate the tritonserver, Python backend and stub inside nvidia-pytriton.

    Raises:
        TritonServerError: nvidia-pytriton is not installed, is incomplete, or has no
            Python backend stub for the running interpreter's version.
    """
    try:
        import pytriton
    except ImportError as err:
        raise TritonServerError(
            "nvidia-pytriton is not installed in this environment; it provides the "
            "tritonserver binary (`pip install nvidia-pytriton==0.7.0`, or `make venv`)"
        ) from err

    package = Path(pytriton.__file__).parent
    root = package / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stubs = root / "python_backend_stubs"
    install = TritonInstall(
        binary=root / "bin" / "tritonserver",
        python_backend=root / "backends" / "python",
        stub=stubs / version / "triton_python_backend_stub",
        libs=package.parent / "nvidia_pytriton.libs",
    )
    for path in (install.binary, install.python_backend / "libtriton_python.so", install.libs):
        if not path.exists():
            raise TritonServerError(f"nvidia-pytriton looks incomplete: {path} is missing")
    if not install.stub.exists():
        available = sorted(p.name for p in stubs.iterdir() if p.is_dir()) if stubs.is_dir() else []
        raise TritonServerError(
            f"nvidia-pytriton has no Python backend stub for Python {version} "
            f"(available: {', '.join(available) or 'none'}); use one of those Python versions"
        )
    return install


def backend_directory(install: TritonInstall) -> Path:
    """Build (once) a --backend-directory whose python/ holds backend, utils and stub.

    The folder lives under the system temp dir, keyed by the install and Python version, so
    a detached server keeps working after the process that started it has exited.
    """
    key = hashlib.sha256(f"{install.python_backend}|{install.stub}".encode()).hexdigest()[:12]
    root = Path(tempfile.gettempdir()) / f"shoprank-triton-backends-{os.getuid()}-{key}"
    python_dir = root / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    # Files only: skips the package's __pycache__.
    wanted = {p.name: p for p in install.python_backend.iterdir() if p.is_file()}
    wanted[install.stub.name] = install.stub
    for name, source in wanted.items():
        link = python_dir / name
        if link.is_symlink() and link.resolve() == source.resolve():
            continue
        # Symlink via a temporary name + rename so concurrent starts never see a half state.
        tmp = python_dir / f".{name}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(source)
        tmp.replace(link)
    return root


def server_environment(install: TritonInstall) -> dict[str, str]:
    """Environment for tritonserver so the stub runs this interpreter with this venv."""
    env = dict(os.environ)
    # The stub finds `python` on PATH to pick up the venv (its site-packages hold the
    # editable shoprank install that model code imports).
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", "")]).rstrip(os.pathsep)
    # The stub links against libpython of the running version; LIBDIR is where it lives
    # (pyenv/uv interpreters are not on the default loader path).
    libdirs = [str(install.libs)]
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        libdirs.append(libdir)
    if env.get("LD_LIBRARY_PATH"):
        libdirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libdirs)
    return env


def server_command(
    install: TritonInstall,
    repository: Path,
    *,
    host: str,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    log_verbose: int = 0,
) -> list[str]:
    """The tritonserver command line for one repository and port set."""
    return [
        str(install.binary),
        f"--model-repository={Path(repository).resolve()}",
        f"--backend-directory={backend_directory(install)}",
        f"--http-address={host}",
        f"--http-port={http_port}",
        f"--grpc-address={host}",
        f"--grpc-port={grpc_port}",
        f"--metrics-address={host}",
        f"--metrics-port={metrics_port}",
        f"--log-verbose={log_verbose}",
        f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
    ]


def port_in_use(port: int, host: str = DEFAULT_HOST) -> bool:
    """True if `port` cannot be bound on `host` or something already answers on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Triton sets SO_REUSEADDR too, so a TIME_WAIT leftover does not count as taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_ports(count: int = 3, host: str = DEFAULT_HOST) -> list[int]:
    """`count` distinct ports the OS considers free right now (held together, then released)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def log_tail(log_path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of the server log (empty if there is none)."""
    try:
        text = Path(log_path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def log_errors(log_path: Path, limit: int = 20) -> list[str]:
    """Error lines of a server log: E-level records, failed models, fatal messages."""
    try:
        lines = Path(log_path).read_text(errors="replace").splitlines()
    except OSError:
        return []
    # Triton prints load failures as "| model | 1 | UNAVAILABLE: ..." rows of a table and
    # fatal errors as "error: ..."; E-level records start with "E<MMDD>".
    pattern = re.compile(r"^E\d{4} |UNAVAILABLE|^error:", re.IGNORECASE)
    return [
        line.strip()
        for line in lines
        if pattern.search(line) and not any(noise in line for noise in _HARMLESS_ON_CPU)
    ][:limit]


def http_get_ok(url: str) -> bool:
    """Whether GET `url` answers 200 within 2 s."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def model_states(http_url: str) -> list[dict]:
    """The repository index (name, version, state, reason) of a running server."""
    request = urllib.request.Request(
        f"http://{http_url}/v2/repository/index", data=b"{}", method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def wait_until_ready(
    http_url: str, *, wait_s: float, proc: subprocess.Popen | None = None
) -> list[dict]:
    """Poll until the server is ready and every model in its repository is READY.

    Readiness is polled over HTTP with the standard library so waiting needs neither gRPC
    threads nor tritonclient's optional HTTP extra. Returns the repository index.

    Raises:
        TritonServerError: the process exited, a model is UNAVAILABLE, or time ran out.
    """
    deadline = time.monotonic() + wait_s
    last = "server not answering yet"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise TritonServerError(f"tritonserver exited with code {proc.returncode}")
        if http_get_ok(f"http://{http_url}/v2/health/ready"):
            try:
                index = model_states(http_url)
            except (urllib.error.URLError, OSError, ValueError) as err:
                last = f"repository index failed: {err}"
            else:
                failed = [m for m in index if m.get("state") == "UNAVAILABLE"]
                if failed:
                    reasons = "; ".join(f"{m['name']}: {m.get('reason', '?')}" for m in failed)
                    raise TritonServerError(f"models failed to load: {reasons}")
                if not index:
                    # Models load before the endpoints open, so this will not change.
                    raise TritonServerError("the model repository holds no models")
                pending = [m["name"] for m in index if m.get("state") != "READY"]
                if not pending:
                    return index
                last = f"models not ready: {', '.join(pending)}"
        time.sleep(0.25)
    raise TritonServerError(f"not ready after {wait_s:.0f} s ({last})")


def start(
    repository: Path,
    *,
    http_port: int = HTTP_PORT,
    grpc_port: int = GRPC_PORT,
    metrics_port: int = METRICS_PORT,
    log_path: Path,
    wait_s: float = 120,
    host: str = DEFAULT_HOST,
    log_verbose: int = 0,
) -> subprocess.Popen:
    """Start tritonserver on `repository` and wait until it and all its models are ready.

    The server runs in a new process session (so it survives the caller and can be stopped
    as a group); its stdout and stderr go to `log_path` (truncated).

    Raises:
        TritonServerError: the install is missing, or the server exited or was not ready
            within `wait_s` seconds; the process is killed and the log tail is included.
    """
    repository = Path(repository)
    if not repository.is_dir():
        raise TritonServerError(f"model repository {repository} does not exist")
    ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
    taken = [f"{kind} port {port}" for kind, port in ports.items() if port_in_use(port, host)]
    if taken:
        # Checked up front: readiness polling would otherwise find whatever server already
        # answers on the HTTP port and call it ready.
        raise TritonServerError(f"{', '.join(taken)} already in use (another server?)")
    install = find_tritonserver()
    command = server_command(
        install,
        repository,
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        log_verbose=log_verbose,
    )
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=server_environment(install),
            start_new_session=True,
        )
    try:
        wait_until_ready(f"{_client_host(host)}:{http_port}", wait_s=wait_s, proc=proc)
    except BaseException as err:
        stop(proc)
        if not isinstance(err, TritonServerError):
            raise
        errors = "\n".join(log_errors(log_path))
        errors = f"--- errors in {log_path} ---\n{errors}\n" if errors else ""
        raise TritonServerError(
            f"tritonserver on {repository} failed to start: {err}\n{errors}"
            f"--- last lines of {log_path} ---\n{log_tail(log_path)}"
        ) from None
    return proc


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state follows the parenthesised command name, which may itself contain spaces.
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def pid_alive(pid: int) -> bool:
    """True if `pid` is a running (not zombie) process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def group_members(pgid: int) -> list[int]:
    """Live processes in process group `pgid` (tritonserver plus its backend stubs)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        # fields: state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _reap(pid: int) -> None:
    # Only our own children can be reaped; a detached server was reparented to init.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop(proc_or_pid: subprocess.Popen | int, timeout: float = 30) -> None:
    """Stop a server started by `start`: SIGTERM its process group, SIGKILL after `timeout`.

    Accepts the Popen from `start` or a pid (e.g. from a pid file). The server leads its own
    session, so its group also holds the Python backend stub processes.
    """
    proc = proc_or_pid if isinstance(proc_or_pid, subprocess.Popen) else None
    pid = proc.pid if proc is not None else int(proc_or_pid)

    def alive() -> bool:
        if proc is not None:
            running = proc.poll() is None
        else:
            _reap(pid)
            running = pid_alive(pid)
        return running or bool(group_members(pid))

    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        if not alive():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)  # in case it is not (or no longer) a group leader
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and alive():
            time.sleep(0.1)
    if alive():
        raise TritonServerError(f"tritonserver (pid {pid}) survived SIGKILL")


@contextlib.contextmanager
def running_server(
    repository: Path,
    *,
    log_path: Path | None = None,
    wait_s: float = 120,
    attempts: int = 3,
) -> Iterator[ServerHandle]:
    """Run a server on free loopback ports for the duration of a `with` block (or fixture).

    Ports are picked by the OS, so this never collides with a server on Triton's default
    ports; the pick is retried if another process grabs a port before tritonserver binds it.
    """
    if log_path is None:
        log_path = Path(tempfile.mkdtemp(prefix="shoprank-triton-")) / "tritonserver.log"
    for attempt in range(1, attempts + 1):
        http_port, grpc_port, metrics_port = free_ports(3)
        try:
            proc = start(
                repository,
                http_port=http_port,
                grpc_port=grpc_port,
                metrics_port=metrics_port,
                log_path=log_path,
                wait_s=wait_s,
            )
        except TritonServerError as err:
            if attempt < attempts and "already in use" in str(err):
                continue
            raise
        break
    handle = ServerHandle(proc, DEFAULT_HOST, http_port, grpc_port, metrics_port, Path(log_path))
    try:
        yield handle
    finally:
        stop(proc)


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------
def _read_pidfile(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _is_tritonserver(pid: int) -> bool:
    # Guards against a stale pid file whose pid was reused by an unrelated process.
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return False
    return Path(os.fsdecode(argv0)).name == "tritonserver"


def _cmdline_ports(pid: int) -> dict[str, str]:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return {}
    options = {}
    for arg in args:
        if arg.startswith("--") and "=" in arg:
            key, value = arg[2:].split("=", 1)
            options[key] = value
    return options


def _cmd_start(args: argparse.Namespace) -> int:
    pidfile: Path = args.pidfile
    pid = _read_pidfile(pidfile)
    if pid is not None and pid_alive(pid) and _is_tritonserver(pid):
        print(
            f"error: tritonserver is already running (pid {pid}, from {pidfile}); "
            f"stop it first: python -m model_repository.server stop --pidfile {pidfile}",
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
    host = _client_host(args.host)
    print(f"tritonserver ready (pid {proc.pid}, repository {args.repository})")
    print(f"  gRPC     {host}:{args.grpc_port}")
    print(f"  HTTP     http://{host}:{args.http_port}")
    print(f"  metrics  http://{host}:{args.metrics_port}/metrics")
    print(f"  log      {args.log}")
    print(f"  stop     python -m model_repository.server stop --pidfile {pidfile}")
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    pidfile: Path = args.pidfile
    pid = _read_pidfile(pidfile)
    if pid is None:
        print(f"no pid file at {pidfile}; nothing to stop", file=sys.stderr)
        return 0
    if not (pid_alive(pid) and _is_tritonserver(pid)):
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
    if pid is None or not (pid_alive(pid) and _is_tritonserver(pid)):
        print(f"tritonserver is not running (pid file {args.pidfile})")
        return 1
    options = _cmdline_ports(pid)
    host = _client_host(options.get("http-address", DEFAULT_HOST))
    http_url = f"{host}:{options.get('http-port', HTTP_PORT)}"
    print(f"tritonserver pid {pid}, repository {options.get('model-repository', '?')}")
    print(f"  gRPC {host}:{options.get('grpc-port', GRPC_PORT)}   HTTP http://{http_url}")
    if not http_get_ok(f"http://{http_url}/v2/health/ready"):
        print("  server: NOT READY")
        return 1
    try:
        index = model_states(http_url)
    except (urllib.error.URLError, OSError, ValueError) as err:
        print(f"  server: ready, but the repository index failed: {err}")
        return 1
    print("  server: READY")
    for model in index:
        reason = f" ({model['reason']})" if model.get("reason") else ""
        print(f"  model {model['name']} v{model.get('version', '?')}: {model['state']}{reason}")
    return 0 if all(m.get("state") == "READY" for m in index) else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m model_repository.server`."""
    parser = argparse.ArgumentParser(
        prog="python -m model_repository.server",
        description="Start, stop or inspect the embedded tritonserver (from nvidia-pytriton).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add_pidfile(p: argparse.ArgumentParser) -> None:
        p.add_argument("--pidfile", type=Path, default=DEFAULT_PIDFILE, help="%(default)s")

    p_start = sub.add_parser("start", help="start detached and wait until all models are ready")
    p_start.add_argument(
        "--repository",
        type=Path,
        default=ArtifactPaths(DEFAULT_ARTIFACTS).repository("cpu"),
        help="Triton model repository (default: %(default)s)",
    )
    p_start.add_argument("--http-port", type=int, default=HTTP_PORT)
    p_start.add_argument("--grpc-port", type=int, default=GRPC_PORT)
    p_start.add_argument("--metrics-port", type=int, default=METRICS_PORT)
    p_start.add_argument("--host", default=DEFAULT_HOST, help="bind address (%(default)s)")
    p_start.add_argument("--log", type=Path, default=DEFAULT_LOG, help="%(default)s")
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
