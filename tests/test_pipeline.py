"""The runtime on its own: order, tail flush, backpressure, errors, cancellation, metrics."""
import asyncio
import logging
import threading
import time

import pytest

from highlightsense.engine import threads
from highlightsense.engine.chunks import Tick
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.engine.operator import Operator, Source
from highlightsense.engine.operator import ClockReader
from highlightsense.engine.pipeline import Pipeline, StageError


class Numbers(Source):
    name = "numbers"

    def __init__(self, n=None, fail_at=None):
        self.n, self.fail_at, self.produced, self.closed = n, fail_at, 0, False

    def __iter__(self):
        i = 0
        while self.n is None or i < self.n:
            if i == self.fail_at:
                raise HighlightSenseError("broken input at item %d" % i)
            self.produced += 1
            yield i
            i += 1

    def close(self):
        self.closed = True


class GroupsOf(Operator):
    """Holds items until it has `size` of them; the remainder only comes out at flush."""

    name = "group"

    def __init__(self, size):
        self.size, self.held = size, []

    def process(self, item):
        self.held.append(item)
        if len(self.held) == self.size:
            out, self.held = [tuple(self.held)], []
            return out
        return []

    def flush(self):
        return [tuple(self.held)] if self.held else []


class Collect(Operator):
    name = "collect"

    def __init__(self, delay=0.0, fail_at=None):
        self.items, self.delay, self.fail_at = [], delay, fail_at

    def process(self, item):
        if self.fail_at is not None and len(self.items) == self.fail_at:
            raise ValueError("cannot take this one")
        time.sleep(self.delay)
        self.items.append(item)
        return []


async def test_order_and_tail_flushed():
    sink = Collect()
    metrics = await Pipeline(Numbers(10), [GroupsOf(3), sink], queue_size=2).run()
    assert sink.items == [(0, 1, 2), (3, 4, 5), (6, 7, 8), (9,)]
    assert [s.name for s in metrics.stages] == ["numbers", "group", "collect"]
    assert metrics.stages[0].chunks_out == 10
    assert metrics.stages[1].chunks_in == 10 and metrics.stages[1].chunks_out == 4
    assert metrics.stages[2].chunks_in == 4


async def test_slow_consumer_bounds_what_is_in_flight():
    source, sink = Numbers(60), Collect(delay=0.01)
    in_flight = []

    class Watch(Operator):
        name = "watch"
        threaded = False

        def process(self, item):
            in_flight.append(source.produced - len(sink.items))
            return [item]

    metrics = await Pipeline(source, [Watch(), sink], queue_size=3).run()
    assert len(sink.items) == 60
    # Two queues of 3, plus one item in each stage's hands: never the whole stream.
    assert max(in_flight) <= 3 + 3 + 3
    assert all(s.queue_max <= 3 for s in metrics.stages[1:])
    assert metrics.stages[2].busy_sec >= 0.5  # the sink's sleeps are counted as busy time


async def test_failing_stage_stops_everything_with_its_name():
    source = Numbers(None)  # endless: only the failure can stop it
    began = time.monotonic()
    with pytest.raises(StageError) as err:
        await Pipeline(source, [GroupsOf(1), Collect(fail_at=5)], queue_size=2).run()
    assert time.monotonic() - began < 5
    assert err.value.stage == "collect"
    assert "collect: ValueError: cannot take this one" in str(err.value)
    assert source.closed


async def test_failing_source_reports_its_message():
    with pytest.raises(StageError) as err:
        await Pipeline(Numbers(10, fail_at=4), [Collect()]).run()
    assert str(err.value) == "numbers: broken input at item 4"


async def test_cancellation_is_prompt_even_with_a_stuck_source(caplog):
    release = threading.Event()

    class Stuck(Source):
        name = "stuck"

        def __iter__(self):
            yield 1
            release.wait()  # a network read that never returns
            yield 2

    sink = Collect()
    task = asyncio.create_task(Pipeline(Stuck(), [sink]).run())
    await asyncio.sleep(0.3)
    began = time.monotonic()
    task.cancel()
    with caplog.at_level(logging.WARNING, logger="highlightsense"):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert time.monotonic() - began < 2
    # A read that does not return is not waited for: its worker is named, and given up.
    assert "did not stop (blocked reading the input)" in caplog.text
    assert any(t.name.startswith("hs-stage-") for t in threads._abandoned)
    assert sink.items == [1]
    release.set()


async def test_progress_callback_sees_the_final_metrics():
    seen = []
    await Pipeline(Numbers(5), [Collect()], on_progress=seen.append,
                   progress_interval=0.01).run()
    assert seen and seen[-1].finished is not None
    assert seen[-1].stages[1].chunks_in == 5


async def test_a_tick_passes_an_operator_that_holds_its_input():
    class Timed(Source):
        """Items, then the clock moving on, then more items."""
        name = "timed"

        def __iter__(self):
            yield from [0, 1, Tick(2.0), 2, Tick(1.0), Tick(3.0)]  # the clock never goes back

    class Holds(Operator):
        """Emits nothing until the end of the stream."""
        name = "holds"

        def __init__(self):
            self.seen = []

        def process(self, item):
            self.seen.append(item)
            return []

        def flush(self):
            return [tuple(self.seen)]

    class Clock(ClockReader):
        name = "clock"

        def __init__(self):
            self.got = []

        def process(self, item):
            self.got.append(item)
            return [item]

        def on_tick(self, tick):
            self.got.append(tick)
            return []

    holds, clock, after = Holds(), Clock(), Collect()
    metrics = await Pipeline(Timed(), [GroupsOf(2), holds, clock, after], queue_size=1).run()
    # The ticks went past both buffering stages, each after what that stage had emitted before
    # it (the group (0, 1) went into `holds`, which emitted nothing); holds' flush came last.
    assert clock.got == [Tick(2.0), Tick(3.0), ((0, 1), (2,))]
    assert holds.seen == [(0, 1), (2,)]  # no operator but the clock reader saw a tick
    assert after.items == [((0, 1), (2,))]  # nor the stage after it: ticks pass untouched
    assert metrics.stages[2].chunks_in == 2 and metrics.stages[3].chunks_in == 1
