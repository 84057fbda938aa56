"""Client-side adaptive throttling, after Google's SRE book ("Handling Overload").

An overloaded server still spends CPU on every request it refuses: on a small host the
refusals of 4× offered load take the cores its answered requests need. So each client
keeps, over a short sliding window, how many requests it attempted and how many the server
accepted (answered at all, errors included, rather than refused for load), and drops new
requests locally with probability

    p = max(0, (requests - k * accepts) / (requests + 1))

No server state, no coordination: while the server answers everything p stays 0; once it
refuses, each client sends about k times what gets accepted and fails the rest at once,
without a round trip. k = 2 is the book's choice (some wasted work, quick recovery).
"""

from __future__ import annotations

import math
import random
import threading
import time


class AdaptiveThrottle:
    """Counts of attempts and accepts per second over `window_s`; `allow()` decides."""

    def __init__(self, k: float = 2.0, window_s: float = 10.0, seed: int | None = None) -> None:
        if k < 1:
            raise ValueError(f"the throttle's k must be >= 1, got {k}")
        if window_s <= 0:
            raise ValueError(f"the throttle's window must be > 0 s, got {window_s}")
        self.k = k
        self.size = max(1, math.ceil(window_s))  # one bucket per second
        self._second = [-1] * self.size
        self._requests = [0] * self.size
        self._accepts = [0] * self.size
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def _bucket(self, now: float) -> int:
        second = int(now)
        index = second % self.size
        if self._second[index] != second:  # a bucket from an older window: start it again
            self._second[index] = second
            self._requests[index] = self._accepts[index] = 0
        return index

    def _totals(self, now: float) -> tuple[int, int]:
        oldest = int(now) - self.size
        live = [i for i in range(self.size) if self._second[i] > oldest]
        return sum(self._requests[i] for i in live), sum(self._accepts[i] for i in live)

    def _probability(self, requests: int, accepts: int) -> float:
        return max(0.0, (requests - self.k * accepts) / (requests + 1))

    def reject_probability(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            return self._probability(*self._totals(now))

    def allow(self, now: float | None = None) -> bool:
        """Count one attempt; False: drop it here, the server is refusing this client's load."""
        now = time.monotonic() if now is None else now
        with self._lock:
            p = self._probability(*self._totals(now))
            self._requests[self._bucket(now)] += 1
            return p == 0.0 or self._random.random() >= p

    def accepted(self, now: float | None = None) -> None:
        """The server took the request (whatever its answer), rather than refusing it."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._accepts[self._bucket(now)] += 1
