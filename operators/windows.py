"""Windows: cuts the frame stream into the seed's sliding windows and batches them for scoring.

Window i spans frames [i*stride, i*stride + window) and is emitted as soon as its last frame has
arrived; the frames live in a FrameRing holding one window plus one stride. Each window is padded
to `pad_frames` with its own minimum and carries a mask of its real frames, as the seed pads its
windows to the 60 s training length. Audio shorter than one window gives one window covering all
of it (the seed's only special case), decided at end of stream.

A restarted stream (a resumed run) begins at `first_index`: frames before that window's first
frame are dropped, and batches still hold the same windows as an uninterrupted run's when
first_index is a multiple of batch_size.
"""
from typing import List

import numpy as np

from highlightsense.engine.chunks import FrameChunk, WindowBatch
from highlightsense.engine.operator import Operator
from highlightsense.engine.ring import FrameRing


class Windows(Operator):
    name = "windows"

    def __init__(self, window_frames: int, stride_frames: int, pad_frames: int,
                 batch_size: int = 16, first_index: int = 0):
        if window_frames < 1 or stride_frames < 1:
            raise ValueError("window and stride must be at least one frame")
        if pad_frames < window_frames:
            raise ValueError(f"pad_frames {pad_frames} is shorter than a window ({window_frames})")
        self.window_frames = window_frames
        self.stride_frames = stride_frames
        self.pad_frames = pad_frames
        self.batch_size = max(1, batch_size)
        self.ring = FrameRing(window_frames + stride_frames)
        self.next_index = first_index
        self._first_frame = first_index * stride_frames
        self._pending = []  # (index, start, end, padded frames, mask) not yet batched

    @classmethod
    def for_scorer(cls, cfg, scorer, first_index: int = 0) -> "Windows":
        """The windows `cfg` asks for (engine.config.Config), padded and batched as `scorer`
        declares (engine.operator.Scorer)."""
        return cls(cfg.window_frames, cfg.stride_frames, pad_frames=scorer.pad_frames,
                   batch_size=cfg.batch_size or scorer.batch_size, first_index=first_index)

    def process(self, chunk: FrameChunk) -> List[WindowBatch]:
        frames, start = chunk.frames, chunk.start
        if start < self._first_frame:  # a restart's warm-up: before the first window wanted
            frames, start = frames[..., self._first_frame - start:], self._first_frame
            if frames.shape[-1] == 0:
                return []
        if self.ring.end == 0:
            self.ring.start_at(start)
        self.ring.append(frames, start)
        while self.next_index * self.stride_frames + self.window_frames <= self.ring.end:
            start = self.next_index * self.stride_frames
            self._add(self.next_index, start, start + self.window_frames)
            self.next_index += 1
            self.ring.discard_before(self.next_index * self.stride_frames)
        return self._batches(final=False)

    def flush(self) -> List[WindowBatch]:
        if self.next_index == 0 and self.ring.end > 0:  # shorter than one window
            self._add(0, 0, self.ring.end)
            self.next_index = 1
        return self._batches(final=True)

    def _add(self, index: int, start: int, end: int) -> None:
        frames = self.ring.get(start, end)
        real = end - start
        mask = np.zeros(self.pad_frames, dtype=np.float32)
        mask[:real] = 1.0
        if real < self.pad_frames:
            padded = np.empty(frames.shape[:-1] + (self.pad_frames,), dtype=frames.dtype)
            padded[..., :real] = frames
            padded[..., real:] = frames.min()
            frames = padded
        self._pending.append((index, start, end, frames, mask))

    def _batches(self, final: bool) -> List[WindowBatch]:
        out = []
        while len(self._pending) >= self.batch_size or (final and self._pending):
            group, self._pending = self._pending[:self.batch_size], self._pending[self.batch_size:]
            index, start, end, frames, mask = zip(*group)
            out.append(WindowBatch(
                index=np.array(index), start_frame=np.array(start), end_frame=np.array(end),
                frames=np.stack(frames), mask=np.stack(mask)))
        return out
