"""The second pass: the seed's dB reference is the maximum over the whole VOD (power_to_db with
ref=np.max), which a stream knows only at its end. The first pass uses the maximum so far; the
windows it scored before that maximum arrived are scored again under the final reference.

Two ways, cheapest first. The first pass keeps the levels (dB before the reference) of the
stream's first frames in memory (HeldLevels, within rescore_cache_mb), so the windows they cover
are scored again from them without decoding or separating (the "held levels" pass). Past them,
a pass over the start of the file decodes and separates again, up to the last window to redo
(the "second pass"). Both are resumable from the progress record.
"""
import logging
import mmap
from typing import List, Optional, Sequence

import numpy as np

from highlightsense.engine import grid
from highlightsense.engine.chunks import FrameChunk
from highlightsense.engine.operator import Source, SourceInfo
from highlightsense.engine.progress import clock

log = logging.getLogger("highlightsense")


class HeldLevels:
    """The levels (dB before the reference) of a span of the stream's frames, `capacity` frames
    from frame `start` on: the stream's first frames for the second pass (start 0), a time
    shard's own (engine.shards), every frame of a VOD for training (engine.train). Held in one
    anonymous memory map: outside malloc's heap, where many long-lived pieces among the
    pipeline's short-lived buffers would pin memory far beyond their own size; pages count only
    once written. The feature stage offers it every frame it emits (add), and copies to the
    host only those it keeps (wanted)."""

    def __init__(self, stems: int, mels: int, capacity: int, start: int = 0):
        self.capacity, self.start = capacity, start
        self._map = mmap.mmap(-1, max(1, capacity * stems * mels * 4))
        self._buf = np.frombuffer(self._map, np.float32, capacity * stems * mels).reshape(
            capacity, stems, mels)
        self.frames = range(0)  # the frames held: from the first offered in the span on, no gap
        self.offered = 0  # one past the last frame offered: the stream's frames so far

    @classmethod
    def within(cls, megabytes: int, stems: int = 2, mels: int = 80, start: int = 0,
               frames: Optional[int] = None) -> "HeldLevels":
        """As many frames as `megabytes` of float32 levels hold (64 MB: 40 minutes), from frame
        `start` on; no more than `frames` when given (all a span needs)."""
        capacity = megabytes * 2 ** 20 // (stems * mels * 4)
        return cls(stems, mels, capacity if frames is None else min(capacity, frames), start)

    @property
    def nbytes(self) -> int:
        """What it takes when full: 1.65 MB a minute of stream (2 stems, 80 mels)."""
        return self._buf.nbytes

    def wanted(self, first: int, frames: int) -> slice:
        """Which of `frames` frames from `first` on lie in its span: a slice of them (empty when
        none)."""
        a = min(max(first, self.start), first + frames)
        b = max(a, min(first + frames, self.start + self.capacity))
        return slice(a - first, b - first)

    def add(self, level: Optional[np.ndarray], first: int, frames: int) -> None:
        """`frames` frames from `first` on, following on from those offered before; `level`
        (stems, mels, n) holds those of them that wanted() picks (None: none)."""
        self.offered = first + frames
        keep = self.wanted(first, frames)
        if level is None or keep.stop == keep.start:
            return
        at, n = first + keep.start, keep.stop - keep.start
        assert level.shape[-1] == n, "level must hold the frames wanted() picks"
        if not self.frames:
            self.frames = range(at, at)
        assert at == self.frames.stop, "held frames must follow on"
        self._buf[at - self.start:at - self.start + n] = np.moveaxis(level, -1, 0)
        self.frames = range(self.frames.start, at + n)

    def get(self, start: int, stop: int) -> np.ndarray:
        """Frames [start, stop) (clipped to those held) as (stems, mels, n)."""
        a = max(start, self.frames.start) - self.start
        b = max(a + self.start, min(stop, self.frames.stop)) - self.start
        return np.ascontiguousarray(np.moveaxis(self._buf[a:b], 0, -1))

    def features(self, reference_db: Sequence[float], piece: int = 1024):
        """The held frames as features under a fixed reference (the second pass's)."""
        import torch

        from highlightsense.operators.mel_features import to_db

        ref = torch.tensor(reference_db, dtype=torch.float32)
        for start in range(self.frames.start, self.frames.stop, piece):
            level = torch.from_numpy(self.get(start, start + piece))
            yield FrameChunk(to_db(level, ref)[0].numpy(), start)


def exact_from(features_state: dict, tolerance_db: float = 0.0) -> int:
    """The first frame from which every frame so far was made with each stem's reference within
    tolerance_db of its reference now (at end of stream: the seed's whole-VOD maximum), from a
    feature stage's state() (operators.mel_features.MelFeatures). Frames before it came out
    under a lower reference, so with a higher floor than the seed's."""
    frame = features_state["first_frame"]
    for final, rises in zip(features_state["reference_db"], features_state["reference_rises"]):
        frame = max(frame, next((f for f, r in rises if r >= final - tolerance_db), frame))
    return frame


class HeldFrames(Source):
    """The first pass's held levels as features under the final reference, up to `stop` (a
    frame index): the second pass without decoding or separating again."""

    name = "held_levels"

    def __init__(self, held: HeldLevels, reference_db, stop: int):
        self.held, self.reference_db, self.stop = held, reference_db, stop
        self.info = SourceInfo(path="held levels", duration_sec=None)

    def __iter__(self):
        for chunk in self.held.features(self.reference_db):
            if chunk.start >= self.stop:
                return
            yield FrameChunk(chunk.frames[..., :self.stop - chunk.start], chunk.start)


def held_windows(cfg, held: Optional[HeldLevels], first: int, last: int) -> tuple:
    """(windows, stop frame): how many of windows first..last, from `first` on (a whole number
    of batches unless all of them), have every frame held, and the frames they need. `first`
    is 0 for the second pass, a shard's first window for its reduce (engine.shards)."""
    frames = held.frames if held is not None else range(0)
    wanted = last + 1 - first
    if not frames or frames.start > first * cfg.stride_frames or wanted <= 0:
        return 0, 0
    if frames.stop >= held.offered:  # all the stream gave: even a short one's window 0
        return wanted, min(frames.stop, last * cfg.stride_frames + cfg.window_frames)
    fit = sum(1 for w in range(first, last + 1)
              if w * cfg.stride_frames + cfg.window_frames <= frames.stop)
    count = fit if fit == wanted else batch_start(fit, cfg.batch_size)
    return count, (first + count - 1) * cfg.stride_frames + cfg.window_frames if count else 0


def batch_start(count: int, batch_size: int) -> int:
    """Where a resumed pass starts: the first window of the batch after the last whole one, so
    its batches hold the same windows as an uninterrupted run's (and score bit for bit alike)."""
    return count // batch_size * batch_size


def windows_to_redo(cfg, windows, exact_from_frame: int) -> List[int]:
    """The windows the first pass made (in part) before `exact_from_frame`."""
    return [w.index for w in windows if w.index * cfg.stride_frames < exact_from_frame]


def say_held(count: int) -> None:
    log.info("second pass: %d windows scored again from the levels kept in memory (the dB "
             "reference is now the whole VOD's maximum, as in the seed)", count)


def say_second_pass(start: int, samples: int, windows: int) -> None:
    log.info("second pass over %s to %s (%d windows): the dB reference is now the whole "
             "VOD's maximum, as in the seed", clock(start / grid.AUDIO_RATE),
             clock(samples / grid.AUDIO_RATE), windows)


def rescore(input_path: str, cfg, scorer, record, show_progress: bool,
            held: Optional[HeldLevels] = None, observer=None) -> list:
    """The first pass's windows with those made before the whole stream's reference scored
    again under it: from the levels the first pass held, and past them in a pass over the start
    of the file. The record (engine.resume.ProgressRecord) carries the reference, the first
    frame made under it, and what an interrupted second pass had done."""
    from highlightsense.engine.operator import FeatureRun
    from highlightsense.engine.passes import open_span, run_pipeline
    from highlightsense.engine.progress import Progress
    from highlightsense.engine.resume import Checkpoints
    from highlightsense.operators.select import CollectScores

    windows = record.windows
    redo = windows_to_redo(cfg, windows, record.exact_from)
    if not redo:
        return windows
    last = max(redo)
    reference = record.reference_db
    first = batch_start(len(record.rescored), cfg.batch_size)
    collect = CollectScores(record.rescored[:first])

    def snapshot(rec) -> None:
        rec.rescored = [w for w in collect.windows if w.index <= last]

    def checkpoints():
        return Checkpoints(record, cfg.progress_every_sec, snapshot) if record.enabled else None

    from_held, stop = held_windows(cfg, held, 0, last) if not first else (0, 0)
    if from_held:
        say_held(from_held)
        if observer:
            observer.pass_started("held levels", None)
        run_pipeline(HeldFrames(held, reference, stop), [], scorer, cfg, [checkpoints()], 0,
                     collect, observer)
        collect.windows = [w for w in collect.windows if w.index < from_held]
        first = from_held
    if first <= last:
        stages = scorer.feature_stages(cfg, FeatureRun(emit_from=first * cfg.stride_frames,
                                                       reference_db=reference))
        if observer:
            observer.stages_built(stages)
        stop_frame = last * cfg.stride_frames + cfg.window_frames  # one past the last wanted
        source, _ = open_span(input_path, cfg, stages, first * cfg.stride_frames, stop_frame,
                              record.source.get("sync_points"))
        start = source.info.start_sample
        if first and not from_held:
            record.note_resume(2, first, grid.frames_to_sec(first * cfg.stride_frames),
                               start / grid.AUDIO_RATE)
        else:
            say_second_pass(start, source.samples, last + 1 - first)
        progress = Progress(source.info.duration_sec) if show_progress else None
        if observer:
            observer.pass_started("second pass", source.info.duration_sec)
        run_pipeline(source, stages, scorer, cfg, [progress, checkpoints()], first, collect,
                     observer)
    rescored = {w.index: w for w in collect.windows if w.index <= last}
    return [rescored.get(w.index, w) for w in windows]
