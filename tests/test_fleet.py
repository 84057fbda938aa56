"""A fleet of two replicas behind one gRPC target, balanced per request by the client.

As a headless Service gives a Kubernetes fleet: each replica is the supervised server
(`python -m shoprank.model_repository.server start`), both on the same ports on two
loopback addresses, 127.0.0.2 and 127.0.0.3; one SearchClient reaches both through one
target and gRPC's round_robin. One replica's tritonserver is killed (SIGKILL) under load:
requests carry on on the other with none failed after the client's retries, the supervisor
restarts the killed server, and it takes requests again.

Which replica answered is read from each server's own count of successful searches
(`nv_inference_request_success` of the `search` ensemble, its metrics endpoint) less the
supervisor's probes (one search each, counted in its /status).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from argparse import Namespace
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shoprank.model_repository.server import admin_key, is_loopback
from shoprank.ops.tritonserver import free_ports, pid_alive
from shoprank_client import SearchClient, SearchError

REPLICAS = ("127.0.0.2", "127.0.0.3")
PORT_KINDS = ("http", "grpc", "metrics", "health")
SEARCH_SUCCESS = ("nv_inference_request_success", {"model": "search", "version": "1"})
THREADS = 3  # closed-loop searchers sharing one client
# Bounds of every wait and every load loop: they end the test, they do not time anything.
WAIT_S = 300.0
MAX_REQUESTS = 100_000
# Searches a replica must answer for a client in a phase to count as taking requests:
# far above the counting error (a probe in flight while the counts are read: ±1 each end).
TAKES_REQUESTS = 20
QUERIES = ("red leather sofa", "usb c charger 65w", "oak dining table", "gaming mouse")


@dataclass(frozen=True)
class Replica:
    """One supervised server on its own loopback address."""

    host: str
    ports: dict[str, int]
    pidfile: Path
    log: Path

    def start_command(self, repository: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "shoprank.model_repository.server",
            "start",
            f"--repository={repository}",
            f"--host={self.host}",
            *(f"--{kind}-port={port}" for kind, port in self.ports.items()),
            f"--pidfile={self.pidfile}",
            f"--log={self.log}",
        ]

    def status(self) -> dict:
        """The supervisor's /status (state, server pid, probes, restarts)."""
        url = f"http://{self.host}:{self.ports['health']}/status"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)

    def searches_served(self) -> int:
        """Successful `search` requests of the running tritonserver (metrics endpoint)."""
        from prometheus_client.parser import text_string_to_metric_families

        url = f"http://{self.host}:{self.ports['metrics']}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        name, labels = SEARCH_SUCCESS
        for family in text_string_to_metric_families(text):
            if family.name == name:  # its samples are named <name>_total
                for sample in family.samples:
                    if all(sample.labels.get(k) == v for k, v in labels.items()):
                        return int(sample.value)
        raise AssertionError(f"{url} has no {name} for {labels}")

    def mark(self) -> tuple[int, int]:
        """(searches served, supervisor probes) now; see `client_searches`."""
        return self.searches_served(), self.status()["probes"]

    def client_searches(self, since: tuple[int, int]) -> int:
        """Searches this replica answered for clients since `mark()` (same server process)."""
        served, probes = self.mark()
        return (served - since[0]) - (probes - since[1])


def _cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "shoprank.model_repository.server", *args]
    return subprocess.run(command, capture_output=True, text=True)


@pytest.fixture(scope="module")
def fleet(tiny_artifacts, tmp_path_factory) -> Iterator[list[Replica]]:
    """Both replicas started (together) and ready; stopped at the end."""
    folder = tmp_path_factory.mktemp("fleet")
    ports = dict(zip(PORT_KINDS, free_ports(len(PORT_KINDS), host=REPLICAS[0]), strict=True))
    replicas = [
        Replica(host, ports, folder / f"{host}.pid", folder / f"{host}.log") for host in REPLICAS
    ]
    repository = tiny_artifacts.repository("cpu")
    starts = [
        subprocess.Popen(r.start_command(repository), stdout=subprocess.PIPE, text=True)
        for r in replicas
    ]
    try:
        for replica, start in zip(replicas, starts, strict=True):
            out, _ = start.communicate()
            assert start.returncode == 0, f"{replica.host} did not start:\n{out}"
        yield replicas
    finally:
        for start in starts:
            start.wait()
        for replica in replicas:
            _cli("stop", f"--pidfile={replica.pidfile}")


def _target(fleet: list[Replica]) -> str:
    """One name for every replica: the static list (gRPC's ipv4: target)."""
    return "ipv4:" + ",".join(f"{r.host}:{r.ports['grpc']}" for r in fleet)


@dataclass
class Load:
    """Closed-loop searches from THREADS threads through one client, until stopped."""

    client: SearchClient
    done: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def _searcher(self, index: int) -> None:
        n = index
        while not self.stop.is_set() and self.done < MAX_REQUESTS:
            try:
                results = self.client.search(QUERIES[n % len(QUERIES)], top_k=5)
                if not results:
                    raise SearchError("no results")
            except (SearchError, ValueError) as err:
                with self.lock:
                    self.failures.append(str(err))
            with self.lock:
                self.done += 1
            n += THREADS

    def __enter__(self) -> Load:
        self.threads = [
            threading.Thread(target=self._searcher, args=(i,), daemon=True) for i in range(THREADS)
        ]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def check(self) -> None:
        assert self.done < MAX_REQUESTS, f"{self.done} requests: the load's bound"
        assert all(t.is_alive() for t in self.threads), "a searcher thread died"


def wait_for(what: str, condition: Callable[[], bool], load: Load | None = None) -> None:
    """Poll `condition()` every 0.2 s (while `load` runs, if given) until it holds."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        if load is not None:
            load.check()
        time.sleep(0.2)


def test_127_addresses_are_loopback(tmp_path: Path) -> None:
    """A server on 127.0.0.2 is reachable from this machine only: no admin key needed."""
    assert all(is_loopback(h) for h in (*REPLICAS, "127.255.255.254", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "10.0.0.2", "128.0.0.1", "example"))
    args = Namespace(host="127.0.0.2", admin_key_file=None, pidfile=tmp_path / "x.pid")
    assert admin_key(args) == ""
    assert admin_key(Namespace(**{**vars(args), "host": "0.0.0.0"}))  # generated


@pytest.mark.integration
@pytest.mark.slow
def test_a_replica_killed_under_load_fails_no_request_and_rejoins(fleet) -> None:
    with SearchClient(_target(fleet)) as client, Load(client) as load:
        # Balanced per request: both replicas answer the same client.
        marks = [r.mark() for r in fleet]
        wait_for(
            "both replicas to answer",
            lambda: all(
                r.client_searches(m) >= TAKES_REQUESTS for r, m in zip(fleet, marks, strict=True)
            ),
            load,
        )
        killed, survivor = fleet
        old_pid = killed.status()["server_pid"]
        survivor_mark = survivor.mark()
        before_kill = load.done
        os.kill(old_pid, signal.SIGKILL)

        def restarted() -> bool:
            state = killed.status()
            return state["ready"] and state["server_pid"] != old_pid

        wait_for("the supervisor to restart the killed server", restarted, load)
        # The survivor carried the requests meanwhile.
        assert survivor.client_searches(survivor_mark) >= TAKES_REQUESTS
        assert load.done - before_kill >= TAKES_REQUESTS
        # The restarted server takes requests again: gRPC reconnects to it by itself.
        rejoined = killed.mark()
        wait_for(
            "the restarted replica to take requests",
            lambda: killed.client_searches(rejoined) >= TAKES_REQUESTS,
            load,
        )
    assert killed.status()["restarts"] == 1
    assert load.failures == [], f"{len(load.failures)} of {load.done} failed: {load.failures[:5]}"


@pytest.mark.integration
@pytest.mark.slow  # starts the fleet: two servers
def test_a_dns_name_with_every_replica_balances_per_request(fleet) -> None:
    """What a headless Service gives: one name whose A records are every replica, asked
    of a DNS server (here one on loopback, `dns://server/name:port`)."""
    dnslib = pytest.importorskip("dnslib")
    from dnslib.server import BaseResolver, DNSLogger, DNSServer

    name = "search.fleet.test"

    class FleetRecords(BaseResolver):
        def resolve(self, request, handler):
            reply = request.reply()
            question = request.q
            if str(question.qname) == f"{name}." and question.qtype == dnslib.QTYPE.A:
                for replica in fleet:
                    reply.add_answer(
                        dnslib.RR(question.qname, dnslib.QTYPE.A, rdata=dnslib.A(replica.host))
                    )
            return reply

    (dns_port,) = free_ports(1)
    quiet = DNSLogger(logf=lambda _line: None)
    servers = [
        DNSServer(FleetRecords(), address="127.0.0.1", port=dns_port, tcp=tcp, logger=quiet)
        for tcp in (False, True)
    ]
    for server in servers:
        server.start_thread()
    try:
        target = f"dns://127.0.0.1:{dns_port}/{name}:{fleet[0].ports['grpc']}"
        wait_for("both replicas ready", lambda: all(r.status()["ready"] for r in fleet))
        marks = [r.mark() for r in fleet]
        with SearchClient(target) as client:
            for n in range(4 * TAKES_REQUESTS):
                assert client.search(QUERIES[n % len(QUERIES)], top_k=5)
        served = [r.client_searches(m) for r, m in zip(fleet, marks, strict=True)]
        assert sum(served) >= 4 * TAKES_REQUESTS - 2
        assert min(served) >= TAKES_REQUESTS, f"not balanced: {served}"
    finally:
        for server in servers:
            server.stop()


@pytest.mark.integration
@pytest.mark.slow  # starts the fleet: two servers
def test_stopping_one_replica_leaves_the_other_serving(fleet) -> None:
    """Both replicas serve the same repository: `stop` of one (its pid file) stops that
    replica's server only. Last in this module: it leaves one replica running."""
    stopped, other = fleet
    wait_for("both replicas ready", lambda: all(r.status()["ready"] for r in fleet))
    before = other.status()
    result = _cli("stop", f"--pidfile={stopped.pidfile}")
    assert result.returncode == 0, result.stderr
    after = other.status()
    assert pid_alive(before["server_pid"])
    assert (after["server_pid"], after["restarts"]) == (before["server_pid"], before["restarts"])
    since = other.mark()
    with SearchClient(_target(fleet)) as client:
        for n in range(TAKES_REQUESTS):
            assert client.search(QUERIES[n % len(QUERIES)], top_k=5)
    assert other.client_searches(since) >= TAKES_REQUESTS - 1
