"""The streaming runtime: a source and a chain of operators joined by bounded asyncio queues.

Each stage is one task. Heavy operators run in a worker thread of the pipeline's own pool (torch
and numpy release the GIL), so decoding, features and scoring overlap. Queues are bounded: a slow
stage makes its producers wait, so memory stays flat whatever the stream's length. End of stream
travels down the chain as a marker and each operator flushes what it holds. The first stage that
fails stops every stage; cancellation (Ctrl-C) stops them too, without waiting for worker threads
that are stuck in a blocking call.

The stream clock travels in band too, as Ticks (engine.chunks), when a stage reads it (a
ClockReader): the pipeline sends one after each chunk the source delivers (its stream time, or
a Tick the source yields itself), and each stage puts a Tick it receives straight on its output
queue, after what it has already emitted but ahead of what its operator still holds (a look-ahead
buffer), without calling process(): operators never see ticks, save a ClockReader, which is also
handed each one (on_tick) before it is passed on. Ticks never go back in time. For a `live`
source the clock runs on with wall time while the source delivers nothing (a stalled download of
a broadcast that goes on): a Tick every `tick_sec` then says how far.
"""
import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Coroutine, List, Optional, Sequence

from highlightsense.engine import threads
from highlightsense.engine.chunks import AudioChunk, Tick
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.engine.operator import ClockReader, Operator, Source

_END = object()  # end-of-stream marker
log = logging.getLogger("highlightsense")
_SETTLE_SEC = 0.5  # what a stopping run gives a read under way before closing its source


@dataclass
class StageMetrics:
    name: str
    chunks_in: int = 0
    chunks_out: int = 0
    busy_sec: float = 0.0  # time spent inside the operator's own code
    queue_depth: int = 0  # items waiting in this stage's input queue now
    queue_max: int = 0  # the most that ever waited there


@dataclass
class PipelineMetrics:
    stages: List[StageMetrics]
    position_sec: float = 0.0  # stream time the source has delivered up to
    started: float = field(default_factory=time.perf_counter)
    finished: Optional[float] = None
    failed: bool = False  # set with `finished` when the run stopped on an error or interrupt
    start_sec: float = 0.0  # stream time the run began at (a resumed run begins later than 0)

    @property
    def wall_sec(self) -> float:
        return (self.finished or time.perf_counter()) - self.started


class StageError(HighlightSenseError):
    """A stage failed; the message names the stage and says what went wrong."""

    def __init__(self, stage: str, error: BaseException):
        self.stage = stage
        self.error = error
        detail = str(error) or type(error).__name__
        if not isinstance(error, HighlightSenseError):
            detail = f"{type(error).__name__}: {detail}"
        super().__init__(f"{stage}: {detail}")


def _timed(metrics: StageMetrics, fn: Callable) -> Callable:
    """fn, adding its run time to the stage's busy seconds (measured in the thread that runs it,
    so time spent waiting for a worker or the event loop does not count)."""

    def call():
        began = time.perf_counter()
        try:
            return fn()
        finally:
            metrics.busy_sec += time.perf_counter() - began

    return call


class StageThreads(concurrent.futures.Executor):
    """Worker threads that never hold up the interpreter's exit.

    concurrent.futures' own pool joins its threads at exit, so one stage stuck in a blocking read
    (a stalled pipe or network source) would keep a stopped pipeline's process alive.
    """

    def __init__(self, workers: int):
        self._jobs = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, daemon=True, name=f"hs-stage-{i}")
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, fn, /, *args, **kwargs):
        future = concurrent.futures.Future()
        self._jobs.put((future, fn, args, kwargs))
        return future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args, kwargs = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as e:  # handed to whoever awaits the future
                future.set_exception(e)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False,
                 timeout: Optional[float] = None) -> None:
        self.stop()
        if wait:
            threads.join(self._threads, timeout)

    def stop(self) -> None:
        """Each worker ends once the job it runs (if any) returns."""
        for _ in self._threads:
            self._jobs.put(None)

    def join(self, timeout: Optional[float] = None) -> list:
        """Joins the workers within `timeout` in all (threads.JOIN_SEC by default); returns
        those still running."""
        return threads.join(self._threads, timeout)


def run_async(main: Coroutine):
    """asyncio.run(main), also where this thread's event loop is already running: a notebook
    cell runs inside its kernel's loop (Jupyter, Colab), which refuses a second loop in its
    thread. There `main` runs on a thread of its own, and interrupting the cell cancels it."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main)
    started = {}

    async def tracked():
        started["loop"], started["task"] = asyncio.get_running_loop(), asyncio.current_task()
        return await main

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pipeline-loop") as pool:
        future = pool.submit(asyncio.run, tracked())
        try:
            return future.result()
        except KeyboardInterrupt:
            if started:
                started["loop"].call_soon_threadsafe(started["task"].cancel)
            concurrent.futures.wait([future])
            raise


class Pipeline:
    """source -> operators. `live`: the source follows a broadcast, whose stream time runs on
    with wall time while the source delivers nothing (the clock the ticks carry, see the
    module); `tick_sec`: how often a Tick says so then."""

    def __init__(self, source: Source, operators: Sequence[Operator], queue_size: int = 8,
                 on_progress: Optional[Callable[[PipelineMetrics], None]] = None,
                 progress_interval: float = 0.5, live: bool = False, tick_sec: float = 0.25):
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.source = source
        self.operators = list(operators)
        self.queue_size = queue_size
        self.on_progress = on_progress
        self.progress_interval = progress_interval
        self.live = live
        self.tick_sec = tick_sec
        # Ticks go down the chain only when a stage reads them.
        self._clocked = any(isinstance(op, ClockReader) for op in self.operators)
        self._clock: Optional[float] = None  # the stream time of the last Tick sent
        self.metrics = PipelineMetrics(
            [StageMetrics(source.name)] + [StageMetrics(op.name) for op in self.operators])
        self._stop = threading.Event()  # tells a blocked source thread to give up early
        self._reading: Optional[threading.Thread] = None  # the worker in the source's read

    async def run(self) -> PipelineMetrics:
        queues = [asyncio.Queue(self.queue_size) for _ in self.operators]
        self._queues = queues
        # One thread per stage: each stage is sequential, and no stage waits for another's thread.
        pool = StageThreads(len(self.operators) + 1)
        tasks = [asyncio.create_task(self._run_source(pool), name=self.source.name)]
        for i, op in enumerate(self.operators):
            tasks.append(asyncio.create_task(self._run_operator(pool, i), name=op.name))
        monitor = asyncio.create_task(self._monitor(queues)) if self.on_progress else None
        failed = False
        try:
            # The monitor runs until the stages end; its failure (the progress record cannot be
            # written) stops the run like a stage's.
            pending = set(tasks) | ({monitor} if monitor else set())
            while not all(task.done() for task in tasks):
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task.exception() is not None:
                        failed = True
                        if task is monitor:
                            raise task.exception()
                        raise StageError(task.get_name(), task.exception()) from task.exception()
        except BaseException:
            failed = True
            raise
        finally:
            self._stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if monitor:
                monitor.cancel()
                await asyncio.gather(monitor, return_exceptions=True)
            self._stop_workers(pool)
            self.metrics.finished = time.perf_counter()
            if self.on_progress:
                self._update_depths(queues)
                self.metrics.failed = failed
                try:
                    self.on_progress(self.metrics)
                except Exception:
                    if not failed:
                        raise  # else the first error is the one to report
        return self.metrics

    def _stop_workers(self, pool: "StageThreads") -> None:
        """Every worker ends before the run returns (engine.threads says why). After a clean run
        they are idle; after a failure or Ctrl-C one may still be in its operator (a Demucs
        batch: seconds), waited for up to engine.threads.JOIN_SEC, or in the source's read. The
        source is closed once a moment has let a read under way end by itself (a decoder closed
        under a read is undefined); a read still waiting a moment after that is one that does
        not return (a stalled pipe): it is not waited for. Those left are named in the log and
        given up (threads.abandon: the command then leaves without teardown)."""
        began = time.monotonic()
        pool.stop()
        pool.join(_SETTLE_SEC)
        self.source.close()
        stuck = pool.join(_SETTLE_SEC)
        working = [t for t in stuck if t is not self._reading]  # in an operator: wait on
        if working:
            threads.join(working, max(0.0, threads.JOIN_SEC - (time.monotonic() - began)))
            stuck = [t for t in stuck if t.is_alive()]
        if stuck:
            reading = self._reading in stuck
            log.warning("%s did not stop (%s)", threads.names(stuck),
                        "blocked reading the input" if reading and len(stuck) == 1
                        else f"blocked over {threads.JOIN_SEC:g} s")
            threads.abandon(stuck)

    async def _send(self, stage: int, item) -> None:
        """Hand item to the stage after `stage` (if any), waiting while its queue is full."""
        if stage < len(self._queues):
            queue = self._queues[stage]
            await queue.put(item)
            receiver = self.metrics.stages[stage + 1]
            receiver.queue_max = max(receiver.queue_max, queue.qsize())

    async def _tick(self, stream_sec: float) -> None:
        """Send the clock down the chain, if it has moved on."""
        if self._clock is None or stream_sec > self._clock:
            self._clock = stream_sec
            await self._send(0, Tick(stream_sec))

    async def _run_source(self, pool) -> None:
        loop = asyncio.get_running_loop()
        metrics = self.metrics.stages[0]
        iterator = iter(self.source)
        delivered = False  # audio has come: a live clock runs on from there

        def pull():
            if self._stop.is_set():
                return _END
            self._reading = threading.current_thread()  # for _stop_workers
            try:
                return next(iterator, _END)
            finally:
                self._reading = None

        while True:
            pulled = loop.run_in_executor(pool, _timed(metrics, pull))
            if self.live and self._clocked and delivered:
                began = time.monotonic()
                try:
                    while not (await asyncio.wait({pulled}, timeout=self.tick_sec))[0]:
                        # Nothing delivered: the broadcast runs on all the same.
                        await self._tick(self.metrics.position_sec + time.monotonic() - began)
                except asyncio.CancelledError:
                    pulled.cancel()
                    raise
            chunk = await pulled
            if chunk is _END:
                break
            if isinstance(chunk, Tick):  # the source's own clock
                await self._tick(chunk.stream_sec)
                continue
            metrics.chunks_out += 1
            audio = isinstance(chunk, AudioChunk)  # what the stream's position counts
            if audio:
                self.metrics.position_sec = chunk.end_sec
            await self._send(0, chunk)
            if self._clocked and audio:
                delivered = True
                await self._tick(self.metrics.position_sec)
        await self._send(0, _END)

    async def _run_operator(self, pool, i: int) -> None:
        loop = asyncio.get_running_loop()
        op, metrics, inbox = self.operators[i], self.metrics.stages[i + 1], self._queues[i]
        while True:
            item = await inbox.get()
            if isinstance(item, Tick):
                # Past the operator at once: after what it has emitted, ahead of what it holds.
                if isinstance(op, ClockReader):
                    call = _timed(metrics, lambda item=item: op.on_tick(item))
                    results = await loop.run_in_executor(pool, call) if op.threaded else call()
                    for result in results or ():
                        metrics.chunks_out += 1
                        await self._send(i + 1, result)
                await self._send(i + 1, item)
                continue
            ending = item is _END
            call = _timed(metrics, op.flush if ending else (lambda item=item: op.process(item)))
            results = await loop.run_in_executor(pool, call) if op.threaded else call()
            if not ending:
                metrics.chunks_in += 1
            for result in results or ():
                metrics.chunks_out += 1
                await self._send(i + 1, result)
            if ending:
                await self._send(i + 1, _END)
                return

    def _update_depths(self, queues) -> None:
        for waiting, metrics in zip(queues, self.metrics.stages[1:]):
            metrics.queue_depth = waiting.qsize()
            metrics.queue_max = max(metrics.queue_max, metrics.queue_depth)

    async def _monitor(self, queues) -> None:
        while True:
            self._update_depths(queues)
            self.on_progress(self.metrics)
            await asyncio.sleep(self.progress_interval)
