"""The in-flight limit shared by the admitters (tokenizer, recommender) and the ranker.

Time is a `Clock` the tests move by hand: staleness and the overload hold are checked at
their exact edges, whatever the machine's speed."""

import os

import pytest

from shoprank.core.admission import NO_TICKET, AdmissionTable, overloaded_message, table_path


class Clock:
    """Monotonic nanoseconds (what AdmissionTable reads) that move only when told to."""

    def __init__(self) -> None:
        self.ns = 10**15  # any point of a long-running host's monotonic clock

    def __call__(self) -> int:
        return self.ns

    def advance(self, seconds: float) -> None:
        self.ns += round(seconds * 1e9)


def test_admits_up_to_the_limit_and_releases_across_handles(tmp_path):
    path, clock = tmp_path / "table", Clock()
    tokenizer = AdmissionTable(path, limit=2, clock=clock)
    ranker = AdmissionTable(path, limit=0, clock=clock)  # another process's view of the table
    first, second = tokenizer.admit(), tokenizer.admit()
    assert first is not None and second is not None and first != second
    assert tokenizer.admit() is None  # full: refused
    assert tokenizer.in_flight() == 2 and ranker.in_flight() == 2
    ranker.release(first)
    assert tokenizer.in_flight() == 1
    clock.advance(0.001)  # the next request arrives later, into the freed slot
    third = tokenizer.admit()
    assert third is not None
    ranker.release(first)  # released twice: the slot now holds another request, kept
    assert tokenizer.in_flight() == 2
    ranker.release(NO_TICKET)  # never admitted: nothing to do
    assert tokenizer.in_flight() == 2


def test_a_lost_request_frees_its_slot_once_stale(tmp_path):
    clock = Clock()
    table = AdmissionTable(tmp_path / "table", limit=1, stale_s=0.2, clock=clock)
    lost = table.admit()
    assert lost is not None and table.admit() is None
    clock.advance(0.2)  # exactly stale_s old: still in flight
    assert table.in_flight() == 1 and table.admit() is None
    clock.advance(0.000_001)  # older than stale_s: its ranker never answered, taken back
    assert table.in_flight() == 0
    again = table.admit()
    assert again is not None
    table.release(lost)  # the late release of the lost request does not free the new one
    assert table.admit() is None


def test_limit_zero_lets_everything_through(tmp_path):
    table = AdmissionTable(tmp_path / "table", limit=0)
    assert {table.admit() for _ in range(5000)} == {NO_TICKET}
    with pytest.raises(ValueError, match="in-flight limit"):
        AdmissionTable(tmp_path / "table", limit=-1)


def test_the_table_belongs_to_one_server():
    assert table_path(123) != table_path(124)
    assert table_path(123).name.endswith("123")
    assert "overloaded" in overloaded_message(8)


def test_sustained_overload_sheds_down_to_the_lower_limit_then_recovers(tmp_path):
    clock = Clock()
    table = AdmissionTable(tmp_path / "table", limit=4, shed_limit=2, shed_hold_s=0.3, clock=clock)
    # Demand within the limit (a closed loop of 4 clients): the full limit, no shedding.
    tickets = [table.admit() for _ in range(4)]
    assert None not in tickets and table.current_limit() == 4
    for t in tickets[1:]:
        table.release(t)
    # Demand beyond it: refused, and the lower limit holds while overloaded.
    tickets = [tickets[0]] + [table.admit() for _ in range(3)]
    assert None not in tickets and table.admit() is None
    assert table.current_limit() == 2
    for t in tickets[1:]:
        table.release(t)
    assert table.in_flight() == 1
    assert table.admit() is not None  # 2 in flight: the lower limit
    assert table.admit() is None  # a third would fit in 4, not while shedding
    clock.advance(0.299)  # demand gone, but not yet for the whole hold
    assert table.current_limit() == 2
    clock.advance(0.001)  # gone for the hold
    assert table.current_limit() == 4 and table.admit() is not None


def test_the_lower_limit_cannot_exceed_the_limit(tmp_path):
    with pytest.raises(ValueError, match="overload limit"):
        AdmissionTable(tmp_path / "table", limit=2, shed_limit=3)


def test_tables_of_servers_that_are_gone_are_removed(tmp_path):
    import os
    import subprocess
    import sys

    from shoprank.core.admission import TABLE_PREFIX, remove_stale_tables

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead = tmp_path / f"{TABLE_PREFIX}{int(gone.stdout)}"
    alive = tmp_path / f"{TABLE_PREFIX}{os.getpid()}"
    other = tmp_path / "something-else-123"
    for path in (dead, alive, other):
        AdmissionTable(path, limit=2).admit()
    assert remove_stale_tables(tmp_path) == 1
    assert not dead.exists() and alive.exists() and other.exists()


def _lock_waiters(path) -> int:
    """How many lock requests on `path` the kernel holds blocked (`->` lines of /proc/locks)."""
    st = os.stat(path)
    inode = f" {os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino} "
    with open("/proc/locks") as f:
        return sum(" -> " in line and inode in line for line in f)


def test_admitters_in_other_processes_take_turns(tmp_path):
    """The tokenizer and the recommender admit into one table: an admission waits while
    another admitter holds the table (or both could take the same free slot)."""
    import fcntl
    import threading

    path = tmp_path / "table"
    recommender = AdmissionTable(path, limit=2)
    tickets: list = []
    with open(path, "rb") as other:  # another admitter, mid-admission
        fcntl.flock(other, fcntl.LOCK_EX)
        waiting = threading.Thread(target=lambda: tickets.append(recommender.admit()))
        waiting.start()
        # Until the kernel lists the admission as blocked on the table's lock, or it ends
        # without waiting (then the assertion below fails).
        while waiting.is_alive() and _lock_waiters(path) == 0:
            os.sched_yield()
        assert _lock_waiters(path) == 1 and tickets == []  # waits for its turn
        fcntl.flock(other, fcntl.LOCK_UN)
    waiting.join()
    assert len(tickets) == 1 and tickets[0] is not None
    assert recommender.in_flight() == 1
