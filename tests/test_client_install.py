"""The client is its own distribution: a search backend installs `./client` alone.

A fresh virtual environment gets `pip install ./client` and nothing else; it must not
pull torch or any model code, and its CLI must search the real server from there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What the main distribution needs and a client must never drag in.
HEAVY = {"torch", "transformers", "sentence-transformers", "onnxruntime", "locust", "shoprank"}

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory) -> Path:
    """A new venv holding only `pip install ./client` (non-editable) and its dependencies."""
    venv = tmp_path_factory.mktemp("client-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(ROOT / "client")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    return python


def test_installs_without_torch_or_model_code(client_venv: Path) -> None:
    listed = subprocess.run(
        [str(client_venv), "-m", "pip", "list", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
    )
    installed = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "shoprank-client" in installed and "tritonclient" in installed
    assert not installed & HEAVY, installed & HEAVY
    # Imported from the installed copy, not from this checkout.
    where = subprocess.run(
        [str(client_venv), "-c", "import shoprank_client; print(shoprank_client.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=client_venv.parent,
    )
    assert "site-packages" in where.stdout


def test_the_installed_cli_searches_the_real_server(client_venv: Path, ensemble_server) -> None:
    url = ensemble_server.grpc_url
    run = subprocess.run(
        [str(client_venv), "-m", "shoprank_client", "search", "red sofa", "--json", "--url", url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=client_venv.parent,
    )
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout)["results"]
    assert len(results) == 10 and all(r["title"] for r in results)
    health = subprocess.run(
        [str(client_venv), "-m", "shoprank_client", "health", "--url", url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=client_venv.parent,
    )
    assert health.returncode == 0 and health.stdout.startswith("ok:"), health.stderr
