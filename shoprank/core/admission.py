"""Admission control for the `search`, `rerank` and `recommend` ensembles: at most N
requests in flight.

Triton's own answer, a queue policy with `max_queue_size`, refuses explicitly but makes
the dynamic batcher of the embedded Triton 2.51 stall requests for ~500 ms (8 Locust
users: p99 600 ms with `max_queue_size 8`, 110 ms without; docs/benchmarks.md
"Overload"). So the ensemble's first step admits and its last step releases, through a
slot table both processes map:

    tokenizer  admit() → ticket, or refused at once with UNAVAILABLE when N are in flight
    ranker     release(ticket) when its answer (or error) for the request is ready
    (`recommend` has one model, the recommender, which admits and releases)

Two limits. Up to `limit` requests are admitted while demand fits in it, so bursts and a
deploy's slower minutes (closed-loop clients never exceed their own number) pass unrefused.
Once demand exceeds it (requests in flight plus those refused in the last 100 ms reach
`limit`), the table sheds down to `shed_limit` for a second, renewed while the demand lasts:
on 2 cores a full `limit` in flight under sustained overload makes every answer wait
(Little's law: 12 in flight at ~96 answers/s is 125 ms each), while 6 keeps the p99 near 5×
unloaded (docs/benchmarks.md "Overload" has the measurements).

Every slot holds the admission time of the request occupying it (0: free). A request that
never reaches the ranker (its encoder stub died, say) leaves its slot taken: a slot older
than `stale_s` is taken back, so a lost request costs one slot for that long at most.

One table per server: a small file in /dev/shm named after the tritonserver process (the
parent of every Python-backend stub), so model versions loaded side by side during a hot
deploy share it and a restarted server starts empty, and every entry point counts against
the same cores. Several processes take slots (the tokenizer, the recommender, versions side
by side during a deploy), so `admit` holds an exclusive lock on the file from reading the
free slots to writing its own (two admitters could otherwise take the same slot and count
one request too few); releasers only free the slot that still holds their ticket's time.
Each admitter keeps its own record of recent refusals (the overload signal).
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil

TABLE_PREFIX = "shoprank-admission-"  # + the tritonserver's pid
# How a refusal starts (the supervisor tells overload from faults by it).
OVERLOADED = "overloaded"
MAX_SLOTS = 1024  # the table's size: the largest in-flight limit one can ask for
NO_TICKET = -1  # admission off, or the request was never admitted
DEFAULT_STALE_S = 3.0
SHED_HOLD_S = 1.0  # how long overload keeps the lower limit after demand last exceeded `limit`
DEMAND_WINDOW_US = 100_000  # refusals this recent (0.1 s) count as demand still waiting


def table_folder() -> Path:
    return Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())


def table_path(server_pid: int | None = None) -> Path:
    """The slot table of the server whose stubs call this (their parent process)."""
    return table_folder() / f"{TABLE_PREFIX}{server_pid or os.getppid()}"


def remove_stale_tables(folder: Path | None = None) -> int:
    """Delete the tables of servers no longer running; return how many. Every server start
    makes one (8 KB of /dev/shm, which is memory) and nothing else removes it: 112 had piled
    up here after a day of test runs and restarts."""
    removed = 0
    for path in (folder or table_folder()).glob(f"{TABLE_PREFIX}*"):
        pid = path.name.removeprefix(TABLE_PREFIX)
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def overloaded_message(limit: int) -> str:
    return f"{OVERLOADED}: {limit} requests already in flight; retry with backoff"


class AdmissionTable:
    """The shared slot table; tickets encode (admission time µs, slot)."""

    def __init__(
        self,
        path: Path,
        limit: int,
        stale_s: float = DEFAULT_STALE_S,
        shed_limit: int = 0,
        shed_hold_s: float = SHED_HOLD_S,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        """`clock`: nanoseconds on a clock every process sharing the table reads alike (the
        system-wide monotonic clock); tests pass their own to move time deterministically."""
        if not 0 <= limit <= MAX_SLOTS:
            raise ValueError(f"the in-flight limit must be within 0..{MAX_SLOTS}, got {limit}")
        if not 0 <= shed_limit <= limit:
            raise ValueError(f"the overload limit must be within 0..{limit}, got {shed_limit}")
        self.path = Path(path)
        self.limit = limit
        self.shed_limit = shed_limit or limit  # 0: one limit
        self.stale_us = int(stale_s * 1e6)
        self.shed_hold_us = int(shed_hold_s * 1e6)
        self._clock = clock
        # This admitter's own (one thread per model instance).
        self._refused: deque[int] = deque()  # times of recent refusals, µs
        self._shed_until = 0
        size = MAX_SLOTS * np.dtype(np.int64).itemsize
        with open(self.path, "ab") as f:  # create if missing, never truncate a live table
            if f.tell() < size:
                f.truncate(size)
        self.slots = np.memmap(self.path, dtype=np.int64, mode="r+", shape=(MAX_SLOTS,))
        # Held for the table's life; releasers (limit 0) never lock.
        self._lock = open(self.path, "rb") if limit else None  # noqa: SIM115

    def _now_us(self) -> int:
        return self._clock() // 1000 + 1  # never 0, the free mark

    def admit(self) -> int | None:
        """A ticket for a new request, or None (refuse it) when `limit` requests are in
        flight. Limit 0 turns admission off: every request passes with NO_TICKET."""
        if self.limit == 0:
            return NO_TICKET
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            return self._admit()
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)

    def admit_many(self, n: int) -> list[int | None]:
        """`admit` for each of a dynamic batch's `n` requests in turn, under one lock."""
        if self.limit == 0:
            return [NO_TICKET] * n
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            return [self._admit() for _ in range(n)]
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)

    def _admit(self) -> int | None:
        now = self._now_us()
        live = self.slots[: self.limit]
        free = np.flatnonzero((live == 0) | (now - live > self.stale_us))
        in_flight = self.limit - len(free)
        while self._refused and now - self._refused[0] > DEMAND_WINDOW_US:
            self._refused.popleft()
        if in_flight + len(self._refused) >= self.limit:
            self._shed_until = now + self.shed_hold_us
        if in_flight >= self.current_limit(now):
            self._refused.append(now)
            return None
        slot = int(free[0])
        live[slot] = now
        return now * MAX_SLOTS + slot

    def current_limit(self, now: int | None = None) -> int:
        """`shed_limit` while overloaded (see the module's docstring), else `limit`."""
        now = self._now_us() if now is None else now
        return self.shed_limit if now < self._shed_until else self.limit

    def release(self, ticket: int) -> None:
        """Free the ticket's slot if it still holds that request (not taken back as stale)."""
        if ticket < 0:
            return
        stamp, slot = divmod(int(ticket), MAX_SLOTS)
        if self.slots[slot] == stamp:
            self.slots[slot] = 0

    def in_flight(self) -> int:
        """Requests admitted and not yet released (stale ones excluded)."""
        live = self.slots[: self.limit] if self.limit else self.slots
        return int(np.count_nonzero((live != 0) & (self._now_us() - live <= self.stale_us)))
