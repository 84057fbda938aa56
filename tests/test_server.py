"""The embedded tritonserver launcher, against the real server (no mocks)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import psutil
import pytest

from shoprank.contract import GRPC_PORT, HTTP_PORT, METRICS_PORT
from shoprank.ops import tritonserver as server
from shoprank.ops.tritonserver import TritonServerError

# A model unrelated to shoprank: this file tests the launcher, not the search I/O.
_DOUBLER = """
import numpy as np
import triton_python_backend_utils as pb_utils


# The stub must see this venv, where shoprank is installed editable: real models import it.
from shoprank import contract


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x * 2)]))
        return responses
"""

_DOUBLER_CONFIG = """
name: "doubler"
backend: "python"
max_batch_size: 4
input [ { name: "X", data_type: TYPE_FP32, dims: [ -1 ] } ]
output [ { name: "Y", data_type: TYPE_FP32, dims: [ -1 ] } ]
"""


def _write_model(repository: Path, name: str, config: str, model_py: str) -> None:
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "config.pbtxt").write_text(textwrap.dedent(config))
    (repository / name / "1" / "model.py").write_text(model_py)


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if text in " ".join(proc.info["cmdline"] or ()) and server.pid_alive(proc.pid):
            found.append(proc.pid)
    return found


def test_find_tritonserver_locates_the_bundle() -> None:
    install = server.find_tritonserver()
    assert install.binary.is_file()
    assert (install.python_backend / "libtriton_python.so").is_file()
    assert install.stub.is_file()
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in str(install.stub)


def test_find_tritonserver_explains_a_missing_stub(monkeypatch: pytest.MonkeyPatch) -> None:
    class FutureVersion:
        major, minor = 3, 99

    monkeypatch.setattr(sys, "version_info", FutureVersion)
    with pytest.raises(TritonServerError, match=r"no Python backend stub for Python 3\.99"):
        server.find_tritonserver()


@pytest.mark.integration
def test_running_server_serves_and_stops_cleanly(tmp_path: Path) -> None:
    import tritonclient.grpc as grpcclient

    repository = tmp_path / "repository"
    _write_model(repository, "doubler", _DOUBLER_CONFIG, _DOUBLER)
    with server.running_server(repository, log_path=tmp_path / "triton.log", wait_s=60) as srv:
        pid = srv.process.pid
        # Free ports, so a user's server on the defaults is never disturbed.
        assert {srv.http_port, srv.grpc_port, srv.metrics_port}.isdisjoint(
            {HTTP_PORT, GRPC_PORT, METRICS_PORT}
        )
        # The Python backend stub runs in the server's process group, so stop() reaches it.
        assert len(server.group_members(pid)) >= 2

        client = grpcclient.InferenceServerClient(srv.grpc_url)
        try:
            assert client.is_server_ready()
            assert client.is_model_ready("doubler")
            x = np.array([[1.0, 2.5, -3.0]], dtype=np.float32)
            tensor = grpcclient.InferInput("X", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            result = client.infer("doubler", [tensor])
            np.testing.assert_allclose(result.as_numpy("Y"), x * 2)
        finally:
            client.close()
    assert srv.process.poll() is not None
    assert server.group_members(pid) == []
    assert (tmp_path / "triton.log").read_text()


@pytest.mark.integration
def test_start_on_a_broken_repository_raises_with_the_log(tmp_path: Path) -> None:
    repository = tmp_path / "broken_repository"
    _write_model(
        repository, "doubler", _DOUBLER_CONFIG, 'raise RuntimeError("boom while importing")\n'
    )
    http_port, grpc_port, metrics_port = server.free_ports(3)
    with pytest.raises(TritonServerError) as caught:
        server.start(
            repository,
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            log_path=tmp_path / "triton.log",
            wait_s=60,
        )
    message = str(caught.value)
    assert "boom while importing" in message
    assert "last lines of" in message
    assert _processes_mentioning(str(repository)) == []


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "shoprank.model_repository.server", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.integration
def test_cli_starts_detached_and_stops(tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    _write_model(repository, "doubler", _DOUBLER_CONFIG, _DOUBLER)
    http_port, grpc_port, metrics_port = server.free_ports(3)
    pidfile = tmp_path / "tritonserver.pid"
    ports = [f"--http-port={http_port}", f"--grpc-port={grpc_port}"]
    ports.append(f"--metrics-port={metrics_port}")
    started = _cli(
        "start",
        f"--repository={repository}",
        *ports,
        f"--pidfile={pidfile}",
        f"--log={tmp_path / 'triton.log'}",
    )
    pid = int(pidfile.read_text()) if pidfile.exists() else None
    try:
        assert started.returncode == 0, started.stderr
        assert f":{grpc_port}" in started.stdout
        assert re.search(r"server ready in \d+\.\d s", started.stdout), started.stdout
        # The CLI has exited; the server lives on.
        assert pid is not None and server.pid_alive(pid)

        status = _cli("status", f"--pidfile={pidfile}")
        assert status.returncode == 0, status.stdout
        assert "READY" in status.stdout and "model doubler v1: READY" in status.stdout
        # with the memory its Python-backend stub holds, read from the live process
        held = re.search(r"model doubler v1: READY, (\d+) MB resident", status.stdout)
        assert held is not None and int(held.group(1)) > 0, status.stdout
        # Supervised by default: the pid file names the supervisor, which owns the server.
        assert "supervisor pid" in status.stdout
        triton_pid = int(re.search(r"tritonserver pid (\d+)", status.stdout).group(1))
        assert triton_pid != pid and server.pid_alive(triton_pid)

        again = _cli("start", f"--repository={repository}", *ports, f"--pidfile={pidfile}")
        assert again.returncode == 2
        assert "already running" in again.stderr

        stopped = _cli("stop", f"--pidfile={pidfile}")
        assert stopped.returncode == 0, stopped.stderr
        assert not pidfile.exists()
        assert not server.pid_alive(pid) and not server.pid_alive(triton_pid)
        assert server.group_members(pid) == []
    finally:
        if pid is not None:
            server.stop(pid)


def test_cli_refuses_a_taken_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _cli(
            "start",
            f"--repository={tmp_path}",
            f"--http-port={port}",
            f"--pidfile={tmp_path / 'tritonserver.pid'}",
        )
    assert result.returncode == 2
    assert f"http port {port}" in result.stderr
    assert "already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_orphaned_python_backend_shm_regions_are_removed(tmp_path) -> None:
    """A killed stub's shared-memory region is deleted; one a process still maps is kept."""
    import mmap

    from shoprank.ops.tritonserver import SHM_REGION_PREFIX, remove_orphaned_shm_regions

    orphan, live, other = (
        tmp_path / f"{SHM_REGION_PREFIX}orphan",
        tmp_path / f"{SHM_REGION_PREFIX}live",
        tmp_path / "not_a_region",
    )
    for path in (orphan, live, other):
        path.write_bytes(b"\0" * 4096)
    with open(live, "r+b") as f, mmap.mmap(f.fileno(), 4096):  # a live stub maps its region
        assert remove_orphaned_shm_regions(tmp_path) == 1
    assert not orphan.exists() and live.exists() and other.exists()
