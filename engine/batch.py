"""`batch`: many inputs (a channel's archive), each into a result folder of its own, on worker
processes (engine.workers) or a Ray cluster (engine.ray_workers); and a long input in time
shards spread over the same workers (engine.shards).

    DIR/<name>-<hash>/   what `detect` writes, one folder per input
    DIR/batch.csv        every input: status, duration, windows, highlights, wall time, error
    DIR/batch.json       the same, with the batch's settings

Run it again and finished inputs are skipped (a folder with highlights.json and no progress
record, scored with the same settings), interrupted ones resume from their progress record, and
failed ones are tried again. An input that fails is recorded and the rest go on; the exit status
says whether any failed.

On this machine a worker writes its input's folder itself. On Ray the workers hand the scores
back (engine.workers.InputResult) and the driver writes the folder and cuts the clips, so the
nodes need no shared filesystem for outputs: only the inputs must be readable on every node.
"""
import csv
import hashlib
import io
import json
import logging
import os
import re
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from highlightsense.engine.config import Config
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.engine.files import write_text
from highlightsense.engine.progress import clock
from highlightsense.engine.workers import InputResult, InputTask

log = logging.getLogger("highlightsense")

BATCH_CSV, BATCH_JSON = "batch.csv", "batch.json"
COLUMNS = ("input", "folder", "status", "duration_sec", "windows", "highlights", "wall_sec",
           "error")


def read_list(path: str) -> List[str]:
    """A --list file: one input a line; blank lines and lines starting with # are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or "not UTF-8 text"
        raise HighlightSenseError(f"cannot read --list {path}: {reason}") from None
    inputs = [line.strip() for line in text.splitlines()]
    inputs = [line for line in inputs if line and not line.startswith("#")]
    if not inputs:
        raise HighlightSenseError(f"--list {path} names no inputs (one path or URL a line)")
    return inputs


def folder_name(input_path: str) -> str:
    """A readable name plus a short hash of the input (as outputs name it): two inputs never
    share a folder, and the same input always finds its own again."""
    from highlightsense.engine.resume import source_name

    source = source_name(input_path)
    stem = re.split(r"[?#]", source.rstrip("/"))[0].rsplit("/", 1)[-1].rsplit(".", 1)[0]
    readable = re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-")[:40] or "input"
    return f"{readable}-{hashlib.sha256(source.encode()).hexdigest()[:8]}"


@dataclass
class Entry:
    """One input of the batch and how it went."""

    input: str
    folder: str
    status: str = "pending"  # pending, running, done, skipped (finished before), failed
    duration_sec: Optional[float] = None
    windows: Optional[int] = None
    highlights: Optional[int] = None
    wall_sec: Optional[float] = None
    error: str = ""
    scoring: str = ""  # scoring_key of the settings it was scored with


def scoring_key(cfg: Config) -> str:
    """A short hash of every setting that changes an input's scores (models by content): a
    finished input is skipped only when it was scored with the same."""
    from highlightsense.engine.files import content_identity

    def file_or_name(value):
        return content_identity(value) if value and Path(value).is_file() else value

    what = {"window_sec": cfg.window_sec, "stride_sec": cfg.stride_sec,
            "audio_stream": cfg.audio_stream, "voice_track": cfg.voice_track,
            "game_track": cfg.game_track, "tracks": cfg.tracks,
            "model": file_or_name(cfg.model),
            "separator": file_or_name(cfg.separator) if cfg.model else None,
            "exact_reference": cfg.exact_reference, "half": cfg.half,
            "max_duration_sec": cfg.max_duration_sec}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def earlier_entries(out_dir: Path) -> Dict[str, dict]:
    """The entries an earlier batch into out_dir recorded (batch.json), by folder; {} when
    there is none or it is unreadable (then every input is scored again)."""
    try:
        inputs = json.loads((out_dir / BATCH_JSON).read_text())["inputs"]
        return {e["folder"]: e for e in inputs if isinstance(e, dict) and "folder" in e}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def finished(folder: Path, earlier: Optional[dict], key: str) -> Optional[dict]:
    """The folder's highlights.json when an earlier batch finished this input with the same
    scoring settings (`key`) and the folder still holds that run complete; else None."""
    from highlightsense.engine.resume import RECORD_NAME
    from highlightsense.operators.sinks import tables

    if not earlier or earlier.get("status") not in ("done", "skipped") \
            or earlier.get("scoring") != key:
        return None
    path = folder / tables.SUMMARY_JSON
    if not path.is_file() or (folder / RECORD_NAME).exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class BatchProgress:
    """Progress across the batch, a line on stderr as each input ends and every `every_sec`:
    inputs done of total, hours of audio done, x realtime, ETA (from the inputs' durations,
    probed up front where they can be)."""

    def __init__(self, entries: Sequence[Entry], show: bool, every_sec: float = 10.0,
                 stream=None):
        self.entries, self.show, self.every = entries, show, every_sec
        self.stream = stream or sys.stderr
        self.began = time.monotonic()
        self._last = self.began
        self.audio_done = 0.0  # seconds of audio scored in this run (not the skipped)

    def line(self) -> str:
        done = [e for e in self.entries if e.status in ("done", "skipped", "failed")]
        wall = time.monotonic() - self.began
        speed = self.audio_done / wall if wall > 0 else 0.0
        left = sum(e.duration_sec or 0.0 for e in self.entries
                   if e.status in ("pending", "running"))
        eta = f", ETA {clock(left / speed)}" if speed > 0 and left else ""
        failed = sum(e.status == "failed" for e in self.entries)
        return (f"batch: {len(done)}/{len(self.entries)} inputs"
                f"{f' ({failed} failed)' if failed else ''}, {self.audio_done / 3600:.2f} h "
                f"of audio in {clock(wall)}, {speed:.1f}x realtime{eta}")

    def ended(self, entry: Entry) -> None:
        if entry.status == "done":
            self.audio_done += entry.duration_sec or 0.0
        if self.show:
            what = (f"failed: {entry.error}" if entry.status == "failed" else
                    f"done ({clock(entry.duration_sec or 0)} of audio in {entry.wall_sec:.1f} s)")
            print(f"{entry.folder}: {what}", file=self.stream)
            self.tick(force=True)

    def tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.show and (force or now - self._last >= self.every):
            self._last = now
            print(self.line(), file=self.stream, flush=True)


def write_report(out_dir: Path, entries: Sequence[Entry], settings: dict) -> None:
    """batch.csv and batch.json, rewritten whole (atomically) as each input ends."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    for e in entries:
        row = asdict(e)
        writer.writerow(["" if row[c] is None else row[c] for c in COLUMNS])
    write_text(out_dir / BATCH_CSV, text.getvalue())
    write_text(out_dir / BATCH_JSON, json.dumps(
        {"settings": settings, "inputs": [asdict(e) for e in entries]}, indent=1))


def _duration(input_path: str) -> Optional[float]:
    """A local file's duration, for the ETA (None for a URL, or where the file cannot say)."""
    from highlightsense.operators.sources.decode import open_media
    from highlightsense.operators.sources.resolve import is_url

    if is_url(input_path) or not Path(input_path).is_file():
        return None
    try:
        with open_media(input_path) as container:
            return container.duration / 1e6 if container.duration else None
    except (HighlightSenseError, OSError):
        return None  # the worker says what is wrong with it, in its entry


@dataclass
class Step:
    """One task for a worker: `handle` None (any idle worker) or the one it must go to; `done`
    is told (the handle that ran it, the future) when it ends."""

    task: str
    args: tuple
    done: Callable
    handle: object = None


class Dispatcher:
    """Hands steps to idle workers, at most one each, and tells each step's `done` when it
    ends; `done` may add steps (a shard's reduce after the maps)."""

    def __init__(self, handles: Sequence, tick: Callable[[], None] = lambda: None):
        self.idle = list(handles)
        self.pending: List[Step] = []
        self.running: Dict[Future, tuple] = {}
        self.tick = tick

    def add(self, step: Step) -> None:
        self.pending.append(step)

    def _start(self) -> None:
        for step in list(self.pending):
            handle = step.handle if step.handle is not None else (self.idle or [None])[0]
            if handle is None or handle not in self.idle:
                continue
            self.idle.remove(handle)
            self.pending.remove(step)
            self.running[handle.call(step.task, *step.args)] = (handle, step)

    def run(self) -> None:
        self._start()
        while self.running:
            ended, _ = wait(list(self.running), timeout=1.0, return_when=FIRST_COMPLETED)
            for future in ended:
                handle, step = self.running.pop(future)
                self.idle.append(handle)
                step.done(handle, future)
            self._start()
            self.tick()
        if self.pending:  # a step addressed to a worker that is gone
            raise HighlightSenseError("a task was left with no worker to run it")


class ShardedInput:
    """One input in time shards over the workers (engine.shards): map every shard on any
    worker, then, on the model path, reduce each on the worker that mapped it (it holds the
    shard's levels) under the whole VOD's reference, and merge. `cfg`: checked for this input,
    its tracks resolved (engine.detect does both; run_batch for each input)."""

    def __init__(self, entry: Entry, cfg: Config, dispatcher: Dispatcher,
                 finish: Callable[[Entry, Optional[InputResult], Optional[str]], None]):
        from highlightsense.engine.shards import plan_shards

        self.entry, self.cfg, self.dispatcher, self.finish = entry, cfg, dispatcher, finish
        self.began = time.monotonic()
        self.plan = plan_shards(entry.input, cfg, cfg.shard_minutes)
        self.mapped: Dict[int, tuple] = {}  # index: (handle, ShardResult)
        self.rescored: Dict[int, list] = {}
        self.failed = False
        for shard in self.plan.shards:
            dispatcher.add(Step("map_shard", (self.plan, cfg, shard.index), self._mapped))

    def _error(self, future: Future) -> Optional[str]:
        error = future.exception()
        if error is None:
            return None
        if not self.failed:
            self.failed = True
            self.finish(self.entry, None, str(error))
            for owner in {handle for handle, _ in self.mapped.values()}:
                self._release(owner)
        return str(error)

    def _release(self, handle) -> None:
        """The levels `handle` holds for this input, no longer wanted (a shard failed)."""
        self.dispatcher.add(Step("release_shards", (self.plan, self.cfg),
                                 lambda handle, future: None, handle=handle))

    def _mapped(self, handle, future: Future) -> None:
        if self._error(future):
            return
        if self.failed:  # another shard failed: this one's levels are not wanted
            self._release(handle)
            return
        result = future.result()
        self.mapped[result.index] = (handle, result)
        if len(self.mapped) < len(self.plan.shards):
            return
        from highlightsense.engine.shards import whole_reference

        reference = whole_reference([r for _, r in self.mapped.values()])
        if reference is None:
            self._merge()
            return
        for index, (owner, _) in sorted(self.mapped.items()):
            self.dispatcher.add(Step("reduce_shard", (self.plan, self.cfg, index, reference),
                                     self._reduced(index), handle=owner))

    def _reduced(self, index: int):
        def done(handle, future: Future) -> None:
            if self._error(future) or self.failed:
                return
            self.rescored[index] = future.result()
            if len(self.rescored) == len(self.plan.shards):
                self._merge()
        return done

    def _merge(self) -> None:
        from highlightsense.engine.shards import merge

        windows, info = merge(self.plan, [r for _, r in self.mapped.values()],
                              self.rescored or None)
        info["wall_sec"] = time.monotonic() - self.began  # the shards ran at once
        self.finish(self.entry, InputResult(windows, info, -1, info["wall_sec"]), None)


def score_shards_on(pool, input_path: str, cfg: Config):
    """A sharded detect's scores over `pool`'s workers: (windows, what detect records)."""
    entry = Entry(input_path, "", status="running")
    dispatcher = Dispatcher(pool.handles)
    got: dict = {}
    ShardedInput(entry, cfg, dispatcher,
                 lambda e, result, error: got.update(result=result, error=error))
    dispatcher.run()
    if got.get("error"):
        raise HighlightSenseError(got["error"])
    return got["result"].windows, got["result"].info


def run_batch(inputs: Sequence[str], out_dir: Path, cfg: Config, pool, restart: bool = False,
              show_progress: bool = True) -> List[Entry]:
    """Every input into its folder under out_dir, on `pool`'s workers. Returns the entries
    (each done, skipped or failed); batch.csv and batch.json say the same."""
    from highlightsense.engine.detect import check_input, prepare_out_dir, write_outputs
    from highlightsense.operators.sinks import tables
    from highlightsense.operators.sources.tracks import resolve_tracks

    out_dir = prepare_out_dir(Path(out_dir))
    seen, entries = set(), []
    for source in inputs:
        name = folder_name(source)
        if name in seen:
            continue  # the same input twice: once is enough
        seen.add(name)
        entries.append(Entry(source, name))
    key, earlier = scoring_key(cfg), earlier_entries(out_dir)
    settings = {"workers": len(pool.handles), "where": pool.where,
                "shard_minutes": cfg.shard_minutes, "model": cfg.model,
                "scorer": "loudness" if cfg.model is None else "crnn"}
    progress = BatchProgress(entries, show_progress)
    dispatcher = Dispatcher(pool.handles, progress.tick)

    def ended(entry: Entry, result: Optional[InputResult], error: Optional[str]) -> None:
        folder = out_dir / entry.folder
        if error is None and result.highlights < 0:  # scores only: written here
            try:
                folder.mkdir(exist_ok=True)
                (folder / tables.SUMMARY_JSON).unlink(missing_ok=True)
                with _warnings_only():  # as quiet as a worker's own detect is
                    outcome = write_outputs(folder, result.windows, cfg, result.info)
                result.highlights = len(outcome.highlights)
            except (HighlightSenseError, OSError) as e:
                error = str(e)
        if error is None:
            entry.status, entry.error, entry.scoring = "done", "", key
            entry.windows, entry.highlights = len(result.windows), result.highlights
            entry.wall_sec = round(result.wall_sec, 3)
            entry.duration_sec = result.info.get("duration_sec", entry.duration_sec)
        else:
            entry.status, entry.error = "failed", error.splitlines()[0] if error else "failed"
        progress.ended(entry)
        write_report(out_dir, entries, settings)

    def whole(entry: Entry):
        def done(handle, future: Future) -> None:
            error = future.exception()
            ended(entry, None if error else future.result(), str(error) if error else None)
        return done

    local = pool.where == "local"
    for entry in entries:
        folder = out_dir / entry.folder
        summary = None if restart else finished(folder, earlier.get(entry.folder), key)
        if summary is not None:
            entry.status, entry.windows, entry.scoring = "skipped", summary.get("windows"), key
            entry.highlights = len(summary.get("highlights", []))
            entry.duration_sec = summary.get("duration_sec")
            continue
        entry.status, entry.duration_sec = "running", _duration(entry.input)
        if cfg.shard_minutes:
            try:
                check_input(entry.input, cfg)
                ShardedInput(entry, resolve_tracks(entry.input, cfg), dispatcher, ended)
            except HighlightSenseError as e:
                ended(entry, None, str(e))
            continue
        task = InputTask(entry.input, str(folder) if local else "", cfg, restart,
                         outputs=local, key=entry.folder)
        dispatcher.add(Step("score_input", (task,), whole(entry)))
    write_report(out_dir, entries, settings)
    try:
        dispatcher.run()
    finally:
        for entry in entries:
            if entry.status == "running":
                entry.status = "pending"
        write_report(out_dir, entries, settings)
    return entries


@contextmanager
def _warnings_only():
    logger = logging.getLogger("highlightsense")
    level = logger.level
    logger.setLevel(max(logging.WARNING, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        logger.setLevel(level)


def open_pool(ray_address: Optional[str], workers: Optional[int], cfg: Config):
    """The workers a batch runs on: processes on this machine, or actors on Ray (`ray_address`
    "" starts a local Ray on 127.0.0.1)."""
    if ray_address is not None:
        from highlightsense.engine.ray_workers import RayWorkers

        return RayWorkers(ray_address or None, workers, cfg)
    from highlightsense.engine.workers import LocalWorkers, size_workers, uses_gpus

    gpus = 0
    if uses_gpus(cfg):
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count() or 1)
    count, threads = size_workers(gpus, cores, workers)
    return LocalWorkers(count, threads, gpus)
