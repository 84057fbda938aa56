"""Locust user that searches the shoprank ensemble over gRPC.

Run it through `python -m shoprank.loadtest.run` (headless, bounded, summarized), or directly:

    SHOPRANK_GRPC_URL=localhost:8001 locust -f loadtest/locustfile.py --headless -u 8 -r 8 -t 30s

Environment:
    SHOPRANK_GRPC_URL   gRPC target (default: contract.DEFAULT_GRPC_URL): host:port, or
                        replicas balanced per request, dns:///name:port or ipv4:a:port,b:port
    SHOPRANK_WORKLOAD   JSON file: a list of {"query": str, "history": [int], "top_k": int};
                        without it a built-in list of shop queries with empty histories is used
    SHOPRANK_RETRIES    the client's retries on UNAVAILABLE (default: the client's own; 0
                        counts every refusal of an overloaded server as a failure)
    SHOPRANK_USER_RPS   requests per second per user (default: closed loop, no pause)
    SHOPRANK_THROTTLE_K the client's adaptive throttling (default: the client's own; 0: off)
    SHOPRANK_REQUEST_LOG  CSV file for every request (end time, name, ms, ok), written at exit
"""

# grpc must be switched to gevent-cooperative I/O before tritonclient (and so grpc channels)
# are imported; otherwise a blocking gRPC call stalls every user of this process.
from grpc.experimental import gevent as grpc_gevent

grpc_gevent.init_gevent()

import csv  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

from locust import User, constant, constant_throughput, events, task  # noqa: E402
from locust.env import Environment  # noqa: E402
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV  # noqa: E402

from shoprank.contract import DEFAULT_GRPC_URL, DEFAULT_TOP_K, ENSEMBLE_MODEL, MAX_TOP_K  # noqa: E402
from shoprank.loadtest import (  # noqa: E402
    FINAL_STATS_SUFFIX,
    REFUSED_NAME,
    REQUEST_LOG_COLUMNS,
    REQUEST_LOG_ENV,
    RETRIES_ENV,
    THROTTLE_ENV,
    THROTTLED_NAME,
    URL_ENV,
    USER_RPS_ENV,
    WORKLOAD_ENV,
)
from shoprank_client.search_client import (  # noqa: E402
    DEFAULT_BACKOFF_S,
    RETRYABLE,
    SearchClient,
    SearchError,
    ThrottledError,
)

BUILTIN_QUERIES = (
    "red leather sofa",
    "wireless noise cancelling headphones",
    "running shoes men size 44",
    "stainless steel water bottle 1l",
    "kids rain jacket",
    "usb c charger 65w",
    "oak dining table",
    "yoga mat non slip",
    "espresso machine",
    "linen summer dress",
    "gaming mouse",
    "cast iron skillet",
    "4k monitor 27 inch",
    "organic green tea",
    "waterproof hiking boots",
    "bluetooth speaker",
)


@dataclass(frozen=True)
class WorkItem:
    """One request of the workload."""

    query: str
    history: tuple[int, ...] = field(default_factory=tuple)
    top_k: int = DEFAULT_TOP_K


def load_workload(path: str | os.PathLike | None) -> list[WorkItem]:
    """Workload items from a JSON file, or the built-in queries when `path` is empty."""
    if not path:
        return [WorkItem(q) for q in BUILTIN_QUERIES]
    raw = json.loads(Path(path).read_text())
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{path}: expected a non-empty JSON list of requests")
    items = []
    for i, entry in enumerate(raw):
        try:
            item = WorkItem(
                query=str(entry["query"]),
                history=tuple(int(x) for x in entry.get("history", ())),
                top_k=int(entry.get("top_k", DEFAULT_TOP_K)),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: request {i} is malformed ({err!r}): {entry!r}") from None
        if not 1 <= item.top_k <= MAX_TOP_K:
            raise ValueError(f"{path}: request {i} has top_k {item.top_k} outside 1..{MAX_TOP_K}")
        items.append(item)
    return items


WORKLOAD = load_workload(os.environ.get(WORKLOAD_ENV))


@events.init_command_line_parser.add_listener
def _set_default_host(parser, **_kwargs) -> None:
    # Locust's --host is meaningless for gRPC; show the target instead of "None".
    parser.set_defaults(host=os.environ.get(URL_ENV, DEFAULT_GRPC_URL))


_environment: Environment | None = None


@events.init.add_listener
def _remember_environment(environment: Environment, **_kwargs) -> None:
    global _environment
    _environment = environment


REQUEST_LOG = os.environ.get(REQUEST_LOG_ENV)
_requests: list[tuple[float, str, float, bool]] = []


@events.request.add_listener
def _log_request(name, response_time, exception, **_kwargs) -> None:
    if REQUEST_LOG:
        _requests.append((time.time(), name, response_time, exception is None))


@events.quit.add_listener
def _write_request_log(**_kwargs) -> None:
    if not REQUEST_LOG:
        return
    with open(REQUEST_LOG, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(REQUEST_LOG_COLUMNS)
        writer.writerows((f"{t:.3f}", name, f"{ms:.2f}", int(ok)) for t, name, ms, ok in _requests)


@events.quit.add_listener
def _write_final_stats(**_kwargs) -> None:
    # Locust rewrites <prefix>_stats.csv once a second and stops without a last write, so
    # that file misses up to the final second of the run; this one holds the final totals.
    options = getattr(_environment, "parsed_options", None)
    prefix = getattr(options, "csv_prefix", None)
    if _environment is None or not prefix:
        return
    with open(f"{prefix}{FINAL_STATS_SUFFIX}", "w", newline="") as f:
        StatsCSV(_environment, PERCENTILES_TO_REPORT).requests_csv(csv.writer(f))


class SearchUser(User):
    """A shopper issuing searches back to back (closed loop: users = concurrency), or at
    SHOPRANK_USER_RPS each."""

    _rate = (
        constant_throughput(float(os.environ[USER_RPS_ENV]))
        if os.environ.get(USER_RPS_ENV)
        else constant(0)
    )
    shed = False  # the last request was refused or throttled

    def wait_time(self) -> float:
        # Told "retry later", a closed-loop user pauses (the client's backoff) instead of
        # spinning: throttled requests fail in microseconds, and a spinning user would
        # take the load generator's CPU (measured: 4,400 throttled req/s from 8 users).
        pause = self._rate()  # a plain function, bound as a method
        return max(pause, DEFAULT_BACKOFF_S) if self.shed else pause

    def on_start(self) -> None:
        self.url = os.environ.get(URL_ENV, DEFAULT_GRPC_URL)
        options = {}
        if os.environ.get(RETRIES_ENV):
            options["retries"] = int(os.environ[RETRIES_ENV])
        if os.environ.get(THROTTLE_ENV):
            options["throttle_k"] = float(os.environ[THROTTLE_ENV])
        self.client = SearchClient(self.url, **options)
        self.random = random.Random()

    def on_stop(self) -> None:
        # An open channel keeps gRPC's gevent poller alive and locust hangs at exit.
        self.client.close()

    @task
    def search(self) -> None:
        item = self.random.choice(WORKLOAD)
        name = f"{ENSEMBLE_MODEL} ({'history' if item.history else 'no history'})"
        start = time.perf_counter()
        exception: Exception | None = None
        length = 0
        self.shed = False
        try:
            results = self.client.search(item.query, item.history, item.top_k)
            length = len(results)
        except (SearchError, ValueError) as err:
            # Without its traceback the error no longer holds this user's client alive.
            exception = err.with_traceback(None)
            if isinstance(err, ThrottledError):
                name, self.shed = THROTTLED_NAME, True
            elif isinstance(err, SearchError) and err.status in RETRYABLE:
                # Refused for overload (after the client's retries): a failure with its own
                # latency, kept apart from the answered requests' percentiles.
                name, self.shed = REFUSED_NAME, True
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - start) * 1000.0,
            response_length=length,
            exception=exception,
            context={},
        )
