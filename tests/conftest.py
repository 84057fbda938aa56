"""Shared pytest fixtures. Each section belongs to one part of the project."""

from __future__ import annotations

# =======================================================================================
# BEGIN serving fixtures (model_repository.server, client, loadtest)
#
# Client and load tests run against the real tiny ensemble: `tiny_artifacts`,
# `ensemble_server` and `in_process` come from pipeline_fixtures. The launcher's own tests
# (test_server.py) write their throwaway models into tmp_path themselves.
# =======================================================================================
import pytest


@pytest.fixture(scope="session")
def search_workload(tiny_artifacts) -> list[dict]:
    """Realistic {"query", "history", "top_k"} requests with real product ids."""
    from shoprank.data import datasets
    from shoprank.loadtest.workload import make_workload

    requests = make_workload(datasets.load(tiny_artifacts), requests=20, seed=3)
    assert any(len(r["history"]) >= 2 for r in requests)
    return requests


# =======================================================================================
# END serving fixtures
# =======================================================================================

# The real pipeline at tiny size (training → conversion → repository → server).
pytest_plugins = ["pipeline_fixtures"]
