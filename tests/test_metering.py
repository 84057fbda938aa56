"""Custom-metric updates held back and sent together (shoprank.ops.metering)."""

from shoprank.ops.metering import MetricBuffer, series


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_counters_are_summed_and_sent_at_most_once_per_period() -> None:
    clock = Clock()
    buffer = MetricBuffer(flush_s=1.0, clock=clock)
    rows = series("rows_total", mode="search", history="empty")
    buffer.add(rows, 2)
    first = buffer.take()  # the first batch is sent at once
    assert first is not None and first.counts == {rows: 2}
    for _ in range(3):
        buffer.add(rows, 1)
        clock.now += 0.3
        assert buffer.take() is None  # held back: under a second since the last flush
    clock.now += 0.2
    buffer.add(rows, 4)
    second = buffer.take()
    assert second is not None and second.counts == {rows: 7}  # nothing lost, one update
    assert buffer.take() is None and not buffer.counts


def test_histograms_observe_the_newest_batch() -> None:
    clock = Clock()
    buffer = MetricBuffer(flush_s=1.0, clock=clock)
    assert buffer.take() is not None  # an empty first flush
    stage = series("stage_seconds", stage="encode")
    buffer.sample(stage, [0.004])
    clock.now += 0.5
    assert buffer.take() is None
    buffer.sample(stage, [0.002])
    clock.now += 0.5
    flush = buffer.take()
    assert flush is not None and flush.samples == {stage: [0.002]}
    assert series("x", b="1", a="2") == series("x", a="2", b="1")  # labels in one order
