"""The tritonserver process: find it in nvidia-pytriton, start it, wait for it, stop it.

nvidia-pytriton bundles a full tritonserver binary, its Python backend and one backend
stub per Python version. This module wires them together (backend directory, PATH and
LD_LIBRARY_PATH so the stub loads this interpreter's libpython and sees this venv's
packages), starts the server in its own process session, waits over gRPC (tritonclient)
until the server and every model are ready, and stops the whole process group again
(psutil). It is the one server-process helper behind `make serve`, the benchmark, the
load test and the tests; `model_repository.server` is its command line.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from shoprank.contract import GRPC_PORT, HTTP_PORT, METRICS_PORT
from shoprank.core.admission import remove_stale_tables

# Loopback by default: the demo server is for this machine only. Pass --host 0.0.0.0 to
# expose it (e.g. inside a container).
DEFAULT_HOST = "127.0.0.1"
LOG_TAIL_LINES = 40
# Triton waits this long for in-flight requests on SIGTERM; `stop` escalates to SIGKILL
# after its own timeout anyway, so keep it below that.
EXIT_TIMEOUT_S = 10
SERVER_BINARY = "tritonserver"
STUB_NAME = "triton_python_backend_stub"  # one process per Python-backend model instance

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
        return f"{client_host(self.host)}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{client_host(self.host)}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{client_host(self.host)}:{self.metrics_port}/metrics"


def model_stubs(server_pid: int) -> list[tuple[str, psutil.Process]]:
    """(model name, process) of each Python-backend stub of the tritonserver `server_pid`:
    its children whose command is the stub, whose first argument is the model's
    `<repository>/<model>/<version>/model.py`. psutil.Error when the server is gone."""
    out = []
    for child in psutil.Process(server_pid).children():
        try:
            cmd = child.cmdline()
        except psutil.Error:
            continue  # a stub that ended while we looked
        if cmd and cmd[0].endswith(STUB_NAME) and len(cmd) > 1:
            out.append((Path(cmd[1]).parent.parent.name, child))
    return out


def stub_memory_mb(server_pid: int) -> dict[str, float]:
    """Resident memory (MB) of the tritonserver `server_pid`'s stubs, summed per model."""
    out: dict[str, float] = {}
    with contextlib.suppress(psutil.Error):
        for name, proc in model_stubs(server_pid):
            with contextlib.suppress(psutil.Error):
                out[name] = out.get(name, 0.0) + proc.memory_info().rss / 1e6
    return out


def client_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to `host`."""
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
        binary=root / "bin" / SERVER_BINARY,
        python_backend=root / "backends" / "python",
        stub=stubs / version / STUB_NAME,
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


SHM_FOLDER = Path("/dev/shm")
SHM_REGION_PREFIX = "triton_python_backend_shm_region_"  # one per Python-backend stub


def remove_orphaned_shm_regions(folder: Path = SHM_FOLDER) -> int:
    """Delete the Python backend's shared-memory regions no process maps; return how many.

    A stub or server that is killed (a crash, `kill -9`, the supervisor's restart) leaves
    its region behind, 1 MB or more of memory each: 166 had piled up here after a day of
    fault tests. Only this user's files are touched, and only those that no process whose
    memory map this user can read has mapped (a live server and its stubs map theirs)."""
    if not folder.is_dir():
        return 0
    uid = os.getuid()
    candidates = [p for p in folder.glob(f"{SHM_REGION_PREFIX}*") if _owner(p) == uid]
    if not candidates:
        return 0
    mapped = _mapped_files()
    removed = 0
    for path in candidates:
        if str(path) not in mapped:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _owner(path: Path) -> int | None:
    try:
        return path.stat().st_uid
    except OSError:  # removed meanwhile by the stub that made it
        return None


def remove_leftover_shm() -> None:
    """What crashed or stopped servers left in shared memory: admission tables and the
    Python backend's regions (a stopped server removes its own; a killed one cannot)."""
    remove_stale_tables()
    remove_orphaned_shm_regions()


def _mapped_files() -> set[str]:
    """Paths of the files mapped by every process whose /proc/<pid>/maps is readable."""
    mapped: set[str] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for line in (entry / "maps").read_text().splitlines():
                fields = line.split(maxsplit=5)
                if len(fields) == 6:
                    mapped.add(fields[5].removesuffix(" (deleted)"))
    return mapped


def server_environment(install: TritonInstall) -> dict[str, str]:
    """Environment for tritonserver so the stub runs this interpreter with this venv."""
    env = dict(os.environ)
    # The stub finds `python` on PATH to pick up the venv (its site-packages hold the
    # editable shoprank install that model code imports); it ignores PYTHONPATH.
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
    extra_args: Sequence[str] = (),
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
        # Per-model p50/p90/p95/p99 latency (nv_inference_request_summary_us) for dashboards.
        "--metrics-config=summary_latencies=true",
        f"--log-verbose={log_verbose}",
        f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
        *extra_args,
    ]


# ---------------------------------------------------------------------------------------
# Ports and logs
# ---------------------------------------------------------------------------------------
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
    """The last `lines` lines of a log file (empty if there is none)."""
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


# ---------------------------------------------------------------------------------------
# Readiness (tritonclient, gRPC)
# ---------------------------------------------------------------------------------------
def model_states(
    http_url: str, timeout_s: float = 5.0, headers: dict[str, str] | None = None
) -> list[dict]:
    """The repository index (name, version, state, reason) of a running server.

    Control-plane calls go over HTTP: on loopback it is always plaintext, while gRPC may be
    TLS-only (`--grpc-use-ssl`) with a certificate made for another host name."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(http_url, network_timeout=timeout_s)
    try:
        return list(client.get_model_repository_index(headers=headers))
    finally:
        client.close()


def server_ready(http_url: str, timeout_s: float = 2.0) -> bool:
    """Whether the server at `http_url` answers and says it is ready."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    try:
        client = httpclient.InferenceServerClient(
            http_url, connection_timeout=timeout_s, network_timeout=timeout_s
        )
    except InferenceServerException:
        return False
    try:
        return bool(client.is_server_ready())
    except (InferenceServerException, OSError):
        return False
    finally:
        client.close()


def wait_until_ready(
    http_url: str,
    *,
    wait_s: float,
    proc: subprocess.Popen | None = None,
    headers: dict[str, str] | None = None,
) -> list[dict]:
    """Poll until the server is ready and every model in its repository is READY.

    Returns the repository index.

    Raises:
        TritonServerError: the process exited, a model is UNAVAILABLE, or time ran out.
    """
    from tritonclient.utils import InferenceServerException

    deadline = time.monotonic() + wait_s
    last = "server not answering yet"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise TritonServerError(f"tritonserver exited with code {proc.returncode}")
        if server_ready(http_url):
            try:
                index = model_states(http_url, headers=headers)
            except (InferenceServerException, OSError) as err:
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


# ---------------------------------------------------------------------------------------
# Start and stop
# ---------------------------------------------------------------------------------------
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
    extra_args: Sequence[str] = (),
    headers: dict[str, str] | None = None,
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
        # answers on the port and call it ready.
        raise TritonServerError(f"{', '.join(taken)} already in use (another server?)")
    install = find_tritonserver()
    remove_leftover_shm()
    command = server_command(
        install,
        repository,
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        log_verbose=log_verbose,
        extra_args=extra_args,
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
        wait_until_ready(
            f"{client_host(host)}:{http_port}", wait_s=wait_s, proc=proc, headers=headers
        )
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


def pid_alive(pid: int) -> bool:
    """True if `pid` is a running (not zombie) process."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def group_members(pgid: int) -> list[psutil.Process]:
    """Live processes in process group `pgid` (tritonserver plus its backend stubs)."""
    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
    return members


def is_tritonserver(pid: int) -> bool:
    """Whether `pid` runs a tritonserver binary (guards against a stale, reused pid)."""
    try:
        return psutil.Process(pid).name() == SERVER_BINARY
    except psutil.Error:
        return False


def server_options(pid: int) -> dict[str, str]:
    """The `--key=value` options a running tritonserver was started with."""
    try:
        args = psutil.Process(pid).cmdline()
    except psutil.Error:
        return {}
    return dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)


def stop_process_group(proc_or_pid: subprocess.Popen | int, timeout: float = 30) -> None:
    """SIGTERM a process group led by a process we started, SIGKILL what remains after
    `timeout` seconds.

    Accepts a Popen or a pid (e.g. from a pid file). Servers lead their own session, so the
    group also holds their children (Triton's Python backend stubs).

    Raises:
        TritonServerError: something in the group survived SIGKILL.
    """
    pid = proc_or_pid.pid if isinstance(proc_or_pid, subprocess.Popen) else int(proc_or_pid)
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        members = group_members(pid)
        with contextlib.suppress(psutil.Error):
            leader = psutil.Process(pid)
            if leader not in members and leader.status() != psutil.STATUS_ZOMBIE:
                members.append(leader)  # not (or no longer) a group leader
        if not members:
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        for member in members:
            with contextlib.suppress(psutil.Error):
                member.send_signal(sig)
        psutil.wait_procs(members, timeout=wait)
    if isinstance(proc_or_pid, subprocess.Popen):
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc_or_pid.wait(1)  # reap our own child
    if group_members(pid) or pid_alive(pid):
        raise TritonServerError(f"process {pid} (or its group) survived SIGKILL")
    remove_leftover_shm()  # the stopped server's admission table, a killed one's regions


def stop(proc_or_pid: subprocess.Popen | int, timeout: float = 30) -> None:
    """Stop a server started by `start` (and its backend stubs)."""
    stop_process_group(proc_or_pid, timeout)


@contextlib.contextmanager
def running_server(
    repository: Path,
    *,
    log_path: Path | None = None,
    wait_s: float = 120,
    attempts: int = 3,
    extra_args: Sequence[str] = (),
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
                extra_args=extra_args,
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
