"""Issue 17, shutdown: every thread the tool starts ends before the command does: joined after a
clean run, a failure and a Ctrl-C; one that stays blocked is named, and the process leaves with
its status (os._exit) instead of meeting interpreter teardown. (The 50 clean, 20 failing and 20
Ctrl-C'd runs with OMP_NUM_THREADS=1 are benchmarks/shutdown_bench.py, out of CI.)"""
import asyncio
import subprocess
import sys
import threading
import time

import pytest

from highlightsense.engine import threads
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.engine.operator import Operator, Source
from highlightsense.engine.pipeline import Pipeline, StageError


class Endless(Source):
    name = "numbers"

    def __init__(self):
        self.closed = False

    def __iter__(self):
        i = 0
        while not self.closed:
            yield i
            i += 1

    def close(self):
        self.closed = True


class Busy(Operator):
    """A threaded stage whose every call takes a while (a Demucs batch), and whose `fail_at`-th
    call fails."""

    name = "busy"

    def __init__(self, busy_sec: float, fail_at=None):
        self.busy_sec, self.fail_at, self.calls = busy_sec, fail_at, 0
        self.running = threading.Event()

    def process(self, item):
        self.calls += 1
        if self.calls == self.fail_at:
            raise HighlightSenseError("broken")
        self.running.set()
        time.sleep(self.busy_sec)
        return [item]


class Failing(Operator):
    name = "failing"

    def __init__(self, at: int):
        self.at, self.seen = at, 0

    def process(self, item):
        self.seen += 1
        if self.seen == self.at:
            raise ValueError("cannot take this one")
        return []


def stage_threads():
    return [t for t in threads.ours() if t.name.startswith("hs-stage-")]


async def test_shutdown_a_failed_run_joins_its_stage_threads_even_mid_batch():
    busy = Busy(0.4)
    with pytest.raises(StageError, match="failing"):
        await Pipeline(Endless(), [busy, Failing(at=3)], queue_size=2).run()
    assert busy.calls >= 3
    assert stage_threads() == []  # the batch under way ended before run() returned


async def test_shutdown_a_cancelled_run_joins_its_stage_threads():
    busy = Busy(0.4)
    task = asyncio.create_task(Pipeline(Endless(), [busy], queue_size=2).run())
    while not busy.running.is_set():
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stage_threads() == []


async def test_shutdown_a_clean_run_joins_its_stage_threads():
    class Ten(Endless):
        def __iter__(self):
            yield from range(10)

    await Pipeline(Ten(), [Busy(0.0)], queue_size=2).run()
    assert stage_threads() == []


def _child(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)


def test_shutdown_a_blocked_thread_is_named_and_the_process_leaves_with_its_status():
    """A thread stuck for ever (not even a daemon: teardown would wait for it): the command
    ends JOIN_SEC after its work (shortened here), says which thread it left, and exits with
    its status."""
    began = time.monotonic()
    done = _child(
        "import logging, sys, threading\n"
        "from highlightsense.engine import threads\n"
        "threads.JOIN_SEC = 0.5\n"
        "logging.getLogger('highlightsense').addHandler(logging.StreamHandler(sys.stderr))\n"
        "threading.Thread(target=threading.Event().wait, name='hs-download').start()\n"
        "print('outputs written', flush=False)\n"
        "sys.exit(threads.leave(1))\n")
    assert done.returncode == 1, done.stderr
    assert done.stdout == "outputs written\n"  # flushed before leaving
    assert "hs-download still blocked" in done.stderr and "Traceback" not in done.stderr
    assert time.monotonic() - began < 30  # not for ever


def test_shutdown_threads_that_end_are_joined_and_the_status_kept():
    done = _child(
        "import sys, threading, time\n"
        "from highlightsense.engine import threads\n"
        "threading.Thread(target=time.sleep, args=(0.5,), name='hs-webhook', daemon=True).start()\n"
        "sys.exit(threads.leave(130))\n")
    assert done.returncode == 130 and done.stderr == ""


def test_shutdown_the_fetch_watchdog_ends_once_nothing_is_watched():
    from highlightsense.operators.sources import fetch

    attempt = fetch._Attempt(stall_sec=30.0)
    fetch._WATCHDOG.watch(attempt)
    watchdog = fetch._WATCHDOG._thread
    assert watchdog is not None and watchdog.is_alive()
    fetch._WATCHDOG.unwatch(attempt)
    watchdog.join(2.0)
    assert not watchdog.is_alive()


async def test_shutdown_an_operator_mid_batch_is_waited_for_a_stuck_read_is_not():
    """A worker in an operator (torch's C++ code, where teardown must not meet it) is waited
    for; one in a read that does not return is named and given up at once."""
    release = threading.Event()

    class StuckAfterTwo(Source):
        name = "stuck"

        def __iter__(self):
            yield 1
            yield 2
            release.wait()  # a pipe that delivers no more
            yield 3

    busy = Busy(1.5)
    task = asyncio.create_task(Pipeline(StuckAfterTwo(), [busy], queue_size=2).run())
    while not busy.running.is_set():
        await asyncio.sleep(0.01)
    began = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    waited = time.monotonic() - began
    assert busy.calls >= 1 and waited < threads.JOIN_SEC
    reading = [t for t in stage_threads() if t.is_alive()]
    assert len(reading) == 1 and reading[0] in threads._abandoned  # the read, given up
    assert not any(t.is_alive() and t not in threads._abandoned for t in stage_threads())
    release.set()
    reading[0].join(5)
