"""Workers: processes that each load their models once and run one task at a time for `batch`
(and a sharded `detect`), on this machine (LocalWorkers) or as Ray actors (engine.ray_workers).

A Worker is the plain object that runs in one of them; its methods are the tasks (TASKS). A
pool hands out handles, one per worker, whose `call(task, *args)` returns a
concurrent.futures.Future: the driver (engine.batch) waits on those alike whether a pipe to a
local process or a Ray object stands behind them. A shard's reduce must go to the worker that
mapped it (it holds the shard's levels), which is why the driver addresses workers, not a queue.

Why our own local pool and not concurrent.futures.ProcessPoolExecutor: its tasks go to any
process, so a shard's reduce could not find its held levels, and a worker killed mid-task breaks
the whole executor instead of costing that one task a retry.
"""
import logging
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
import traceback
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from highlightsense.engine.config import Config
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.operators.select import WindowScore

log = logging.getLogger("highlightsense")

TASKS = ("score_input", "map_shard", "reduce_shard", "release_shards", "pid")


class WorkerLost(HighlightSenseError):
    """A worker's process ended while it ran a task (killed, out of memory) and the retries
    allowed were spent."""


@dataclass(frozen=True)
class InputTask:
    """Score one whole input. The worker keeps the input's progress record in `folder`: the
    result folder itself on this machine (so an interrupted batch resumes from it), a folder of
    the worker's own node under Ray. `outputs`: write the finished folder there (tables, plot,
    clips) rather than hand the scores back for the driver to write."""

    input_path: str
    folder: str  # "" : a folder of the worker's own (scratch_folder(key)), removed once scored
    cfg: Config
    restart: bool = False
    outputs: bool = True
    key: str = ""  # the result folder's name (engine.batch.folder_name)


@dataclass
class InputResult:
    windows: List[WindowScore]
    info: dict  # what detect records of the source and scorer (highlights.json's source keys)
    highlights: int  # how many were chosen (when the worker wrote the outputs), else -1
    wall_sec: float


def size_workers(gpus: int, cores: int, count: Optional[int] = None) -> Tuple[int, int]:
    """(workers, torch threads each): `count`, or by default one per GPU where there are GPUs,
    else one per two cores (a loudness detect alone keeps about 1.6 cores busy: decoding,
    resampling and features overlap); the cores split between them."""
    workers = count or (gpus if gpus else max(1, cores // 2))
    return workers, max(1, cores // workers)


def uses_gpus(cfg: Config) -> bool:
    """Whether the scorer can run on a GPU: not the loudness scorer, not with --device cpu."""
    return cfg.model is not None and cfg.device != "cpu"


def scorer_key(cfg: Config) -> tuple:
    """The settings a scorer is built from (engine.passes.build_scorer): one scorer, and its
    models, per distinct key in a worker."""
    return cfg.model, cfg.device, cfg.batch_size, cfg.window_sec, cfg.half


class Worker:
    """What runs in one worker process: the scorers it built (each with its models loaded once),
    and the shards it mapped and has not yet reduced."""

    def __init__(self):
        self._scorers: Dict[tuple, object] = {}
        self._runners: Dict[tuple, object] = {}

    def _scorer(self, cfg: Config):
        from highlightsense.engine.passes import build_scorer

        key = scorer_key(cfg)
        if key not in self._scorers:
            self._scorers[key] = build_scorer(cfg)
        return self._scorers[key]

    def _runner(self, cfg: Config):
        from highlightsense.engine.shards import ShardRunner

        key = scorer_key(cfg)
        if key not in self._runners:
            self._runners[key] = ShardRunner(self._scorer(cfg))
        return self._runners[key]

    def pid(self) -> int:
        return os.getpid()

    def score_input(self, task: InputTask) -> InputResult:
        from highlightsense.engine.detect import detect

        began = time.monotonic()
        cfg = task.cfg if task.outputs else replace(task.cfg, clips=False)
        folder = Path(task.folder) if task.folder else scratch_folder(task.key)
        result = detect(task.input_path, folder, cfg, show_progress=False,
                        restart=task.restart, scorer_for=self._scorer)
        if not task.folder:  # the scores go back to the driver, which writes the folder
            shutil.rmtree(folder, ignore_errors=True)
        return InputResult(result.windows, result.info,
                           len(result.highlights) if task.outputs else -1,
                           time.monotonic() - began)

    def map_shard(self, plan, cfg: Config, index: int):
        return self._runner(cfg).map(plan, cfg, index)

    def reduce_shard(self, plan, cfg: Config, index: int, reference_db) -> List[WindowScore]:
        return self._runner(cfg).reduce(plan, cfg, index, reference_db)

    def release_shards(self, plan, cfg: Config) -> None:
        """Drops the levels held for a plan whose input failed elsewhere."""
        self._runner(cfg).release(plan)


def scratch_folder(key: str) -> Path:
    """A worker's own folder for an input's progress record, on its node: a task retried there
    (a restarted actor) resumes from it."""
    return Path(tempfile.gettempdir()) / f"highlightsense-{os.getuid()}" / (key or "input")


def run_task(worker: Worker, task: str, args: tuple):
    """A task's result, or the one line that says why it failed (a user's bad input is a
    HighlightSenseError; anything else is a bug, whose traceback goes to the worker's log)."""
    if task not in TASKS:
        raise HighlightSenseError(f"no such worker task: {task}")
    try:
        return getattr(worker, task)(*args)
    except HighlightSenseError:
        raise
    except Exception as e:
        log.debug("%s", traceback.format_exc())
        raise HighlightSenseError(f"{type(e).__name__}: {e}") from None


# ---- local worker processes -------------------------------------------------------------------

def limit_threads(threads: int) -> None:
    """torch's (and OpenMP's) threads in a worker: the cores split between the workers."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def _serve(conn, threads: int, log_level: int, gpu: Optional[int]) -> None:
    """A local worker process: tasks in from the pipe, ("ok", result) or ("error", line) out,
    until the pipe closes. `gpu`: the one GPU it sees (one worker per GPU)."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    logging.basicConfig(level=log_level, format="%(message)s")
    limit_threads(threads)
    worker = Worker()
    while True:
        try:
            task, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply = ("ok", run_task(worker, task, args))
        except HighlightSenseError as e:
            reply = ("error", str(e))
        except BaseException as e:  # KeyboardInterrupt: the driver stops too
            reply = ("error", f"{type(e).__name__} in a worker")
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return


def _worker_log_level() -> int:
    """Workers say warnings and errors; what each input's run tells (the scorer chosen, the
    second pass) would interleave from every worker at once."""
    return max(logging.WARNING, logging.getLogger("highlightsense").getEffectiveLevel())


class LocalWorker:
    """One worker process on this machine and the pipe to it. A task runs in a thread of the
    driver that waits on the pipe; a process that ends mid-task is started again and the task
    sent again, up to `retries` times."""

    def __init__(self, name: str, threads: int, gpu: Optional[int] = None, retries: int = 1):
        self.name, self.threads, self.gpu, self.retries = name, threads, gpu, retries
        self._lock = threading.Lock()  # one task at a time on the pipe
        self._process = None
        self._start()

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")  # no forked torch or asyncio state
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child, self.threads, _worker_log_level(), self.gpu),
            name=self.name, daemon=True)
        self._process.start()
        child.close()

    @property
    def pid(self) -> Optional[int]:
        return self._process.pid if self._process else None

    def call(self, task: str, *args) -> Future:
        future: Future = Future()
        future.set_running_or_notify_cancel()
        threading.Thread(target=self._run, args=(future, task, args), daemon=True,
                         name=f"hs-{self.name}").start()
        return future

    def _run(self, future: Future, task: str, args: tuple) -> None:
        with self._lock:
            for attempt in range(self.retries + 1):
                try:
                    self._conn.send((task, args))
                    status, value = self._conn.recv()
                except (EOFError, OSError, BrokenPipeError):
                    self._process.join(timeout=5)
                    log.warning("worker %s ended during %s (exit %s)%s", self.name, task,
                                self._process.exitcode,
                                ": starting it again" if attempt < self.retries else "")
                    self._start()
                    continue
                if status == "ok":
                    future.set_result(value)
                else:
                    future.set_exception(HighlightSenseError(value))
                return
            future.set_exception(WorkerLost(
                f"worker {self.name} ended during {task} {self.retries + 1} times; the task "
                f"was given up"))

    def close(self) -> None:
        try:
            self._conn.close()
        except OSError:
            pass
        if self._process is not None:
            self._process.join(timeout=10)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()


class LocalWorkers:
    """`count` worker processes on this machine, `threads` torch threads each."""

    where = "local"

    def __init__(self, count: int, threads: int, gpus: int = 0):
        self.handles = [LocalWorker(f"worker{i}", threads, i % gpus if gpus else None)
                        for i in range(count)]

    def close(self) -> None:
        for handle in self.handles:
            handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
