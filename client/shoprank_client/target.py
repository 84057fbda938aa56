"""gRPC targets: one server, or several replicas behind one name, balanced per request.

A client keeps one HTTP/2 connection per address, so a virtual IP in front of many
replicas (a Kubernetes ClusterIP Service) pins every request of a client to one replica.
Instead the client resolves every replica's address itself and gRPC's `round_robin`
policy keeps a connection to each and sends every request to the next one that is ready;
a replica whose connection is down is skipped until it reconnects.

Accepted forms (gRPC's own target syntax, passed to gRPC unchanged):

    host:port                       DNS by the system: every address of the name
    dns:///name:port                the same, explicitly (a headless Service: every pod)
    dns://dns-host:53/name:port     DNS asked of that server
    ipv4:10.0.0.5:8001,10.0.0.6:8001    a static list
    ipv6:[::1]:8001,[::2]:8001
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

import tritonclient.grpc as grpcclient

SCHEMES = ("dns", "ipv4", "ipv6")
FORMS = "host:port, dns:///name:port, ipv4:a.b.c.d:port,... or ipv6:[addr]:port,..."
LB_POLICY = "round_robin"
# The longest wait before reconnecting to a replica whose connection failed. gRPC's own
# default grows to 120 s, so a restarted replica could sit idle for a minute or two; a
# connection attempt to a dead address costs next to nothing.
MAX_RECONNECT_BACKOFF_MS = 1000


@dataclass(frozen=True)
class Target:
    """A parsed gRPC target. `text` is what gRPC resolves; `endpoints` are the host:port
    entries it names (one name for DNS, which may stand for many replicas)."""

    text: str
    scheme: str  # "dns", "ipv4", "ipv6", or "" for host:port (resolved by DNS)
    endpoints: tuple[str, ...]


def _port(text: str, target: str) -> None:
    if not (text.isdigit() and 0 < int(text) < 65536):
        raise ValueError(f"gRPC target {target!r} needs a port 1..65535 after the last ':'")


def _host_port(text: str, target: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"gRPC target {target!r} needs host:port (forms: {FORMS})")
    _port(port, target)
    return text


def _address(text: str, scheme: str, target: str) -> str:
    """One entry of an ipv4:/ipv6: list: an IP literal and a port."""
    host = _host_port(text, target).rpartition(":")[0]
    if scheme == "ipv6":
        if not (host.startswith("[") and host.endswith("]")):
            raise ValueError(f"gRPC target {target!r}: write IPv6 entries as [addr]:port")
        host = host[1:-1]
    version = 4 if scheme == "ipv4" else 6
    try:
        if ipaddress.ip_address(host).version != version:
            raise ValueError(host)
    except ValueError:
        raise ValueError(f"gRPC target {target!r}: {host!r} is no IPv{version} address") from None
    return text


def parse_target(text: str) -> Target:
    """Check a gRPC target string and name its parts.

    Raises:
        ValueError: not one of the forms above, or a port is missing (Triton's is not
            gRPC's default 443, so it must be given).
    """
    target = text.strip()
    scheme, sep, rest = target.partition(":")
    if sep and scheme in SCHEMES:
        if scheme == "dns":
            if rest.startswith("//"):
                _authority, slash, rest = rest[2:].partition("/")
                if not slash:
                    raise ValueError(f"gRPC target {text!r}: write dns:///name:port")
            return Target(target, scheme, (_host_port(rest, text),))
        entries = tuple(_address(e, scheme, text) for e in rest.split(","))
        return Target(target, scheme, entries)
    if "://" in target or "," in target:
        raise ValueError(f"unsupported gRPC target {text!r} (forms: {FORMS})")
    return Target(target, "", (_host_port(target, text),))


def channel_args() -> list[tuple[str, Any]]:
    """Options of every client channel: tritonclient's defaults (it uses none of them once
    given any: unlimited message size, its keepalive settings), round_robin across every
    address of the target, and a capped reconnect backoff."""
    keepalive = grpcclient.KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.lb_policy_name", LB_POLICY),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
    ]
