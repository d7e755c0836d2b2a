"""Typed chunks that flow between operators. Each carries its stream time, so any output traces
back to seconds of the source: audio by sample index at its rate, frames by index on the seed's
grid (engine.grid), windows by their first and last frame."""
from dataclasses import dataclass

import numpy as np

from highlightsense.engine import grid


@dataclass(frozen=True)
class AudioChunk:
    """Audio samples, float32 shaped (channels, n), starting at sample `start` of the stream.

    After separation the samples are (stems, channels, n) and `stems` names the first axis
    (("voice", "game")); before it, `stems` is empty.
    """

    samples: np.ndarray
    rate: int
    start: int
    stems: tuple = ()

    @property
    def end(self) -> int:
        return self.start + self.samples.shape[-1]

    @property
    def start_sec(self) -> float:
        return self.start / self.rate

    @property
    def end_sec(self) -> float:
        return self.end / self.rate


@dataclass(frozen=True)
class Tick:
    """The stream clock, in band: the stream has reached `stream_sec` (seconds from the stream's
    start). The pipeline sends one down the chain as the source's stream time advances, and every
    stage passes it on at once, ahead of what it still holds in its look-ahead (see
    engine.pipeline); only the stages that read the clock see it."""

    stream_sec: float


@dataclass(frozen=True)
class FrameChunk:
    """Feature frames on the seed's grid, float32 shaped (..., n): the last axis is time.

    `start` is the index of the first frame; frame i is centred on sample i*512 at 22,050 Hz.
    """

    frames: np.ndarray
    start: int

    @property
    def end(self) -> int:
        return self.start + self.frames.shape[-1]


@dataclass(frozen=True)
class WindowBatch:
    """Windows ready to score. frames is (B, ..., T), padded to T frames with each window's own
    minimum; mask is (B, T) with 1 on real frames and 0 on padding."""

    index: np.ndarray  # (B,) window_index
    start_frame: np.ndarray  # (B,)
    end_frame: np.ndarray  # (B,) exclusive
    frames: np.ndarray
    mask: np.ndarray

    def __len__(self) -> int:
        return len(self.index)


@dataclass(frozen=True)
class ScoredWindows:
    """Scores for a batch of windows. confidence is float64 in [0, 1]; peak_frame is the frame
    (absolute index) where the scorer found the window's peak."""

    index: np.ndarray
    start_frame: np.ndarray
    end_frame: np.ndarray
    confidence: np.ndarray
    peak_frame: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    @property
    def start_sec(self) -> np.ndarray:
        return self.start_frame * grid.HOP / grid.FEATURE_RATE

    @property
    def end_sec(self) -> np.ndarray:
        return self.end_frame * grid.HOP / grid.FEATURE_RATE
