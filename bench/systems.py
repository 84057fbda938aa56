"""One caller factory per benchmarked system.

A caller takes one workload request {"query", "history", "top_k"} and returns when the
ranked answer is in hand (decoded, as a search backend would use it). `measure` creates
one caller per worker thread, so network clients are never shared between threads.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from shoprank import contract
from shoprank.bench.measure import Caller
from shoprank.core.pipeline import InProcessPipeline, query_feeds
from shoprank.core.tokenizer import QueryTokenizer
from shoprank.data.artifacts import int8_encoder_path

# (system key, label in the report, transport)
NAIVE = "naive"
NAIVE_HTTP = "naive-http"
ONNX_FP32 = "onnx-fp32"
ONNX_INT8 = "onnx-int8"
# The int8 encoder alone on the pipeline's own feeds: what the pipeline is held against.
ONNX_INT8_ENCODER = "onnx-int8-encoder"
TRITON = "triton"
TRITON_RECOMMEND = "triton-recommend"  # the `recommend` ensemble on the same histories
# The searcher's tensors answered without work: the served rows' transport floor.
TRITON_ECHO = "triton-echo"
SYSTEMS = (
    NAIVE,
    ONNX_FP32,
    ONNX_INT8,
    ONNX_INT8_ENCODER,
    NAIVE_HTTP,
    TRITON,
    TRITON_RECOMMEND,
    TRITON_ECHO,
)
# Measured at concurrency 1 only, like the in-process rows: a floor, not a system to scale.
SINGLE_CALLER = (TRITON_ECHO,)
LABELS = {
    NAIVE: "naive PyTorch eager (in process)",
    ONNX_FP32: "ONNX Runtime fp32 (in process)",
    ONNX_INT8: "ONNX Runtime int8 (in process)",
    ONNX_INT8_ENCODER: "ONNX Runtime int8 encoder alone (in process)",
    NAIVE_HTTP: "naive PyTorch eager + FastAPI/uvicorn (HTTP)",
    TRITON: "shoprank Triton ensemble (gRPC)",
    TRITON_RECOMMEND: "shoprank Triton recommend ensemble (gRPC, history only)",
    TRITON_ECHO: "Triton echo model: transport alone (gRPC, no work)",
}
TRANSPORT = {
    NAIVE: "in-process",
    ONNX_FP32: "in-process",
    ONNX_INT8: "in-process",
    ONNX_INT8_ENCODER: "in-process",
    NAIVE_HTTP: "http",
    TRITON: "grpc",
    TRITON_RECOMMEND: "grpc",
    TRITON_ECHO: "grpc",
}


def onnx_pipeline(
    paths: contract.ArtifactPaths, encoder_onnx: Path, threads: int = 1
) -> InProcessPipeline:
    """The served in-process pipeline with its encoder swapped for `encoder_onnx`.

    The repository holds only the encoder the conversion selected; the other variant is
    loaded from `<out>/onnx/` with the same session settings (`cpu_session`), so fp32 and
    int8 differ in the encoder graph and nothing else. The int8 rows run the served int8
    variant (`int8_encoder_path`).
    """
    from shoprank.core.sessions import cpu_session

    pipeline = InProcessPipeline(paths.repository("cpu"), threads=threads)
    pipeline.search_pipeline.encoder = cpu_session(encoder_onnx, threads)
    return pipeline


def pipeline_caller(pipeline) -> Callable[[], Caller]:
    """Factory of callers that all share one in-process pipeline (`.search(q, h, k)`)."""

    def call(request: dict) -> object:
        return pipeline.search(request["query"], request["history"], request["top_k"])

    return lambda: call


class TimedSession:
    """An ONNX Runtime session that keeps (end, seconds) of every `run`, on the clock
    `measure` cuts its windows with: the encoder's own time inside the pipeline."""

    def __init__(self, session, clock: Callable[[], float] = time.perf_counter) -> None:
        self.session = session
        self.clock = clock
        self.runs: list[tuple[float, float]] = []

    def run(self, *args, **kwargs):
        start = self.clock()
        out = self.session.run(*args, **kwargs)
        end = self.clock()
        self.runs.append((end, end - start))
        return out

    def p50_ms(self, span: tuple[float, float]) -> float | None:
        """Median of the runs that ended inside `span` (ms); None when none did."""
        inside = [s for end, s in self.runs if span[0] <= end <= span[1]]
        return float(np.median(inside)) * 1e3 if inside else None


class PipelineCallers:
    """`pipeline_caller` for a pipeline whose encoder is a `TimedSession`: the factory also
    tells the encoder's own p50 over a measurement's windows (`encoder_p50_ms`). The int8
    row carries it, because the encoder alone, run back to back, keeps its weights in cache
    and the pipeline's other stages do not leave them there."""

    def __init__(self, pipeline: InProcessPipeline) -> None:
        self.encoder = TimedSession(pipeline.search_pipeline.encoder)
        pipeline.search_pipeline.encoder = self.encoder
        self.make = pipeline_caller(pipeline)

    def __call__(self) -> Caller:
        return self.make()

    def encoder_p50_ms(self, span: tuple[float, float]) -> float | None:
        return self.encoder.p50_ms(span)


def encoder_caller(tokenizer: QueryTokenizer, session) -> Callable[[], Caller]:
    """Factory of callers that run only the encoder session on the feeds the pipeline
    builds for the same query (`query_feeds`). Feeds are built on a query's first call and
    kept, so the timed work is the encoder's alone; warm-up visits the workload first."""
    feeds: dict[str, dict] = {}

    def call(request: dict) -> object:
        query = request["query"]
        if query not in feeds:
            feeds[query] = query_feeds(tokenizer, [query])
        return session.run([contract.ONNX_SENTENCE_EMBEDDING], feeds[query])[0]

    return lambda: call


class TritonFactory:
    """Factory of `TritonCaller`s for one server; `grpc_url` lets the benchmark read the
    server's statistics around each measurement."""

    def __init__(
        self, grpc_url: str, recommend: bool = False, model: str = contract.ENSEMBLE_MODEL
    ) -> None:
        self.grpc_url = grpc_url
        self.recommend = recommend
        self.model = model

    def __call__(self) -> TritonCaller:
        return TritonCaller(self.grpc_url, self.recommend, self.model)


class HttpCaller:
    """POST /search with a keep-alive `requests.Session`, JSON decoded."""

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        import requests

        self.session = requests.Session()
        self.url = f"{url}/search"
        self.timeout_s = timeout_s

    def __call__(self, request: dict) -> object:
        response = self.session.post(self.url, json=request, timeout=self.timeout_s)
        response.raise_for_status()
        return response.json()

    def close(self) -> None:
        """Close the connection pool."""
        self.session.close()


class TritonCaller:
    """The project's gRPC SearchClient (one channel per worker), results parsed."""

    def __init__(
        self, url: str, recommend: bool = False, model: str = contract.ENSEMBLE_MODEL
    ) -> None:
        from shoprank_client import SearchClient

        self.client = SearchClient(url, model=model)
        self.recommend = recommend

    def __call__(self, request: dict) -> object:
        if self.recommend:
            return self.client.recommend(request["history"], request["top_k"])
        return self.client.search(request["query"], request["history"], request["top_k"])

    def close(self) -> None:
        """Close the gRPC channel."""
        self.client.close()


@contextlib.contextmanager
def open_system(
    system: str, paths: contract.ArtifactPaths, url: str = "", ort_threads: int = 1
) -> Iterator[Callable[[], Caller]]:
    """Set `system` up for a `with` block, yield its caller factory, tear it down.

    Servers are started only for their own block, so no idle server shares the cores
    while another system is measured. `url` is an already running Triton's gRPC address
    (empty: start the embedded server on free loopback ports).
    """
    if system == NAIVE:
        from shoprank.bench.naive import NaivePipeline

        yield pipeline_caller(NaivePipeline(paths))
    elif system == ONNX_FP32:
        yield pipeline_caller(onnx_pipeline(paths, paths.encoder_onnx, threads=ort_threads))
    elif system == ONNX_INT8:
        yield PipelineCallers(onnx_pipeline(paths, int8_encoder_path(paths), ort_threads))
    elif system == NAIVE_HTTP:
        from shoprank.bench.http_server import running_http_server

        with running_http_server(paths.root) as http_url:
            yield lambda: HttpCaller(http_url)
    elif system == ONNX_INT8_ENCODER:
        from shoprank.core.sessions import cpu_session

        tokenizer = QueryTokenizer(
            paths.repository("cpu") / contract.SEARCHER_MODEL / "1" / contract.TOKENIZER_FILE
        )
        yield encoder_caller(tokenizer, cpu_session(int8_encoder_path(paths), ort_threads))
    elif system == TRITON_ECHO:  # always its own server: the echo model is never deployed
        with echo_server(paths) as grpc_url:
            yield TritonFactory(grpc_url, model=contract.ECHO_MODEL)
    elif system in (TRITON, TRITON_RECOMMEND) and url:
        yield TritonFactory(url, system == TRITON_RECOMMEND)
    elif system in (TRITON, TRITON_RECOMMEND):
        from shoprank.ops.tritonserver import running_server

        with running_server(paths.repository("cpu")) as handle:
            yield TritonFactory(handle.grpc_url, system == TRITON_RECOMMEND)
    else:
        raise ValueError(f"unknown system {system!r}; choose from {', '.join(SYSTEMS)}")


@contextlib.contextmanager
def echo_server(paths: contract.ArtifactPaths) -> Iterator[str]:
    """A server of the `echo` model alone, written by the repository stage's own command
    into a temporary folder; yields its gRPC address."""
    import subprocess
    import sys
    import tempfile

    from shoprank.ops.tritonserver import running_server

    with tempfile.TemporaryDirectory(prefix="shoprank-echo-") as tmp:
        command = [sys.executable, "-m", "shoprank.model_repository.build"]
        subprocess.run(
            [*command, "--out", str(paths.root), "--echo-to", tmp],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        with running_server(Path(tmp)) as handle:
            yield handle.grpc_url
