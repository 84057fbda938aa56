"""The client's adaptive throttle: the SRE-book rule, its window, and the client using it."""

from __future__ import annotations

import pytest

from shoprank.ops.tritonserver import free_ports
from shoprank_client import SearchClient
from shoprank_client.search_client import SearchError, ThrottledError
from shoprank_client.throttle import AdaptiveThrottle


def _feed(throttle: AdaptiveThrottle, requests: int, accepts: int, now: float) -> None:
    for i in range(requests):
        throttle._requests[throttle._bucket(now)] += 1
        if i < accepts:
            throttle.accepted(now)


def test_nothing_is_dropped_while_the_server_accepts() -> None:
    throttle = AdaptiveThrottle(k=2, window_s=10, seed=0)
    for step in range(1000):
        now = 100 + step * 0.01
        assert throttle.allow(now)
        throttle.accepted(now)
    assert throttle.reject_probability(110) == 0.0


def test_the_reject_probability_follows_requests_and_accepts() -> None:
    throttle = AdaptiveThrottle(k=2, window_s=10, seed=0)
    _feed(throttle, requests=100, accepts=10, now=50.0)
    assert throttle.reject_probability(50.5) == pytest.approx((100 - 2 * 10) / 101)
    allowed = sum(throttle.allow(50.5) for _ in range(2000))
    # The drops feed back (each counts as a request), so the share sent falls below 1 - p.
    assert 0 < allowed < 2000 * (1 - 80 / 101) + 60


def test_the_window_forgets_old_refusals() -> None:
    throttle = AdaptiveThrottle(k=2, window_s=5, seed=0)
    _feed(throttle, requests=200, accepts=0, now=10.0)
    assert throttle.reject_probability(10.0) > 0.9
    assert throttle.reject_probability(14.9) > 0.9  # still inside the 5 s window
    assert throttle.reject_probability(15.5) == 0.0
    assert throttle.allow(15.5)


@pytest.mark.parametrize(("k", "window_s"), [(0.5, 10), (2, 0)])
def test_bad_settings_are_refused(k: float, window_s: float) -> None:
    with pytest.raises(ValueError, match="throttle"):
        AdaptiveThrottle(k=k, window_s=window_s)


def test_a_client_facing_a_refusing_server_stops_sending() -> None:
    # Nothing listens on the port: every attempt that is sent fails UNAVAILABLE at once.
    url = f"localhost:{free_ports(1)[0]}"
    with SearchClient(url, timeout_s=2, retries=0) as client:
        outcomes = []
        for _ in range(60):
            with pytest.raises(SearchError) as caught:
                client.search("sofa")
            outcomes.append(type(caught.value))
    assert outcomes[0] is SearchError  # the first one was sent
    assert outcomes.count(ThrottledError) > 30
    assert all(o is ThrottledError or o is SearchError for o in outcomes)
    # Off means every request is sent.
    with SearchClient(url, timeout_s=2, retries=0, throttle_k=0) as client:
        for _ in range(20):
            with pytest.raises(SearchError) as caught:
                client.search("sofa")
            assert type(caught.value) is SearchError


def test_the_grpc_channel_is_closed_once() -> None:
    # tritonclient closes again from __del__; under gevent (Locust) a second close of the
    # channel at exit hung the process (seen once in five runs, so counted, not timed here).
    client = SearchClient(f"localhost:{free_ports(1)[0]}", throttle_k=0)
    channel = client._client._channel
    closes = []
    close = channel.close
    channel.close = lambda: (closes.append(1), close())[-1]
    client.close()
    client.close()
    client._client.__del__()
    assert closes == [1]
