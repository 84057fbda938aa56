"""The naive baseline behind a simple HTTP server: FastAPI + uvicorn, JSON in and out.

    python -m shoprank.bench.http_server --out artifacts/demo --port 8080

One uvicorn worker; the endpoint is a plain `def`, so FastAPI runs each request on its
thread pool, which is what most first deployments of a PyTorch model look like. The
server binds loopback only by default.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from shoprank import contract
from shoprank.core.requests import InvalidInput
from shoprank.ops.tritonserver import DEFAULT_HOST, free_ports, log_tail, stop_process_group


class SearchRequest(BaseModel):
    """Body of POST /search: the same fields as the ensemble's inputs."""

    query: str
    history: list[int] = Field(default_factory=list)
    top_k: int = contract.DEFAULT_TOP_K


class SearchResponse(BaseModel):
    """Body of the answer, best first."""

    product_ids: list[int]
    scores: list[float]
    titles: list[str]


def create_app(pipeline) -> FastAPI:
    """The FastAPI app serving `pipeline.search` (a NaivePipeline or anything alike)."""
    app = FastAPI(title="shoprank naive baseline")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/search", response_model=SearchResponse)
    def search(request: SearchRequest) -> SearchResponse:
        try:
            ranked = pipeline.search(request.query, request.history, request.top_k)
        except InvalidInput as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        return SearchResponse(
            product_ids=[int(p) for p in ranked.product_ids],
            scores=[float(s) for s in ranked.scores],
            titles=list(ranked.titles),
        )

    return app


def _health_ok(url: str) -> bool:
    import requests

    try:
        return requests.get(f"{url}/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


@contextlib.contextmanager
def running_http_server(
    out: Path, *, port: int | None = None, wait_s: float = 180.0, log_path: Path | None = None
) -> Iterator[str]:
    """Run `python -m shoprank.bench.http_server` in a subprocess for a `with` block; yield
    its URL.

    A separate process, like the Triton server, so the load generator's threads do not
    share the server's GIL and both servers are measured the same way.
    """
    port = port or free_ports(1)[0]
    url = f"http://{DEFAULT_HOST}:{port}"
    if log_path is None:
        log_path = Path(tempfile.mkdtemp(prefix="shoprank-bench-")) / "http_server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shoprank.bench.http_server",
                "--out",
                str(out),
                "--port",
                str(port),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + wait_s
        while not _health_ok(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_tail(log_path, 20)
                raise RuntimeError(f"naive HTTP server did not come up on {url}:\n{tail}")
            time.sleep(0.2)
        yield url
    finally:
        stop_process_group(proc, timeout=10.0)


def main(argv: list[str] | None = None) -> None:
    """CLI: load the naive pipeline from `--out` and serve it with one uvicorn worker."""
    import uvicorn

    from shoprank.bench.naive import NaivePipeline

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=contract.DEFAULT_ARTIFACTS)
    parser.add_argument("--host", default=DEFAULT_HOST, help="bind address (%(default)s)")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    app = create_app(NaivePipeline(contract.ArtifactPaths(args.out)))
    # No access log: logging every request would measure the terminal, not the model.
    uvicorn.run(app, host=args.host, port=args.port, workers=1, log_level="warning")


if __name__ == "__main__":
    main()
