"""Loudness features: how loud each frame is, and how much it stands out from its surroundings.

AudioChunk (C, n) at 44.1 kHz -> FrameChunk float32 (4, n_frames) on the seed's frame grid
(centred frames, hop 512 at 22,050 Hz, n_fft 2048), channels:

  level_db             energy of the Hann-windowed frame, dB re full scale (floor -100 dB)
  background_db        the local background: median over +-60 s of 1-s block loudness (the
                       mean level_db of 43 frames); one value per block
  excess_db            level_db - background_db
  sustained_excess_db  median of level_db over 1 s around the frame, minus the background:
                       high only where the sound stays up for half a second or more

The mix is made mono (mean of channels) and brought to 22,050 Hz by averaging sample pairs: cheap,
and loudness needs no better resampler. The background looks 60 s ahead, so output lags the input
by about a minute; frames come out a 1-s block at a time. The streamed frames equal
loudness_features_offline() of the whole signal for any chunking, stream edges included, while
holding only about a minute of frame levels and two minutes of block levels.
"""
import math
from typing import List

import numpy as np

from highlightsense.engine import grid
from highlightsense.engine.chunks import AudioChunk, FrameChunk
from highlightsense.engine.framing import CenteredFramer
from highlightsense.engine.operator import RestartableStage

FEATURES = ("level_db", "background_db", "excess_db", "sustained_excess_db")

BLOCK_FRAMES = 43  # ~1 s: the unit the background is measured in
NEIGHBOUR_BLOCKS = 60  # the background looks +-60 blocks (~60 s) around a frame's block
SUSTAIN_HALF = 21  # sustained level: median over 2*21+1 = 43 frames (~1 s)
FLOOR_DB = -100.0

_WINDOW = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(grid.N_FFT) / grid.N_FFT)  # periodic Hann
_WINDOW_POWER = float(np.sum(_WINDOW ** 2))  # so a full-scale sine reads about -3 dB

# Restarting a stream: start on a block boundary (frames and blocks then sit on the same grid) at
# least NEIGHBOUR_BLOCKS + 1 blocks before the first frame wanted: the first block of a restart is
# spoilt by its zero padding, and a background sees NEIGHBOUR_BLOCKS blocks back.
ALIGN_SAMPLES = BLOCK_FRAMES * grid.HOP * grid.AUDIO_RATE // grid.FEATURE_RATE  # 44,032 at 44.1 k
LOOKBACK_BLOCKS = NEIGHBOUR_BLOCKS + 1


def restart_sample(first_sample: int) -> int:
    """The 44.1 kHz sample a restart must begin at to reproduce every frame centred at or after
    `first_sample` exactly as the uninterrupted stream gives them."""
    frame = math.ceil(first_sample / (grid.AUDIO_RATE // grid.FEATURE_RATE * grid.HOP))
    block = max(0, frame // BLOCK_FRAMES - LOOKBACK_BLOCKS)
    return block * ALIGN_SAMPLES


# The per-step helpers below are shared by the streaming operator and the offline function, so
# both do the same arithmetic on the same numbers: that is what makes them equal bit for bit.

def _mono(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples, dtype=np.float32)
    return samples.mean(axis=0, dtype=np.float32) if samples.ndim == 2 else samples


def _pair_average(x: np.ndarray) -> np.ndarray:
    """44.1 kHz -> 22,050 Hz by averaging pairs (x has even length)."""
    return (x[0::2] + x[1::2]) * np.float32(0.5)


def _frame_levels(frames: np.ndarray) -> np.ndarray:
    """(k, n_fft) frames -> (k,) energy in dB of each Hann-windowed frame."""
    x = frames.astype(np.float64) * _WINDOW
    energy = np.square(x).sum(axis=-1) / _WINDOW_POWER
    return 10.0 * np.log10(np.maximum(energy, 10.0 ** (FLOOR_DB / 10)))


def _block_level(levels: np.ndarray) -> float:
    return float(np.mean(levels))


def _moving_median(x: np.ndarray, half: int) -> np.ndarray:
    """Median of x over [i - half, i + half] for each i, the window cut at the array's ends."""
    n = len(x)
    out = np.empty(n)
    width = 2 * half + 1
    if n >= width:
        out[half:n - half] = np.median(np.lib.stride_tricks.sliding_window_view(x, width), axis=-1)
        edges = list(range(half)) + list(range(n - half, n))
    else:
        edges = range(n)
    for i in edges:
        out[i] = np.median(x[max(0, i - half):i + half + 1])
    return out


def _background(block_levels: np.ndarray, first: int, stop: int, offset: int = 0) -> np.ndarray:
    """Background of blocks [first, stop): median over the neighbourhood, cut at the array's ends.

    block_levels[j] is block offset + j; the caller holds every block the neighbourhoods need.
    """
    n = len(block_levels)
    out = np.empty(stop - first)
    for b in range(first, stop):
        j = b - offset
        out[b - first] = np.median(
            block_levels[max(0, j - NEIGHBOUR_BLOCKS):min(n, j + NEIGHBOUR_BLOCKS + 1)])
    return out


def _assemble(levels, sustained, background_per_block, first_frame) -> np.ndarray:
    """Stack the four channels for frames starting at `first_frame` (a block boundary)."""
    blocks = (first_frame + np.arange(len(levels))) // BLOCK_FRAMES - first_frame // BLOCK_FRAMES
    background = background_per_block[blocks]
    return np.stack([levels, background, levels - background,
                     sustained - background]).astype(np.float32)


def loudness_features_offline(audio: np.ndarray) -> np.ndarray:
    """The reference: features of a whole signal (C, n) or (n,) at 44.1 kHz -> (4, n_frames)."""
    mono = _mono(audio)
    if len(mono) % 2:  # an odd last sample pairs with a zero
        mono = np.concatenate([mono, np.zeros(1, np.float32)])
    half = _pair_average(mono)
    padded = np.pad(half, grid.N_FFT // 2)
    view = np.lib.stride_tricks.sliding_window_view(padded, grid.N_FFT)[::grid.HOP]
    levels = np.concatenate([_frame_levels(view[i:i + 4096]) for i in range(0, len(view), 4096)])
    n_blocks = math.ceil(len(levels) / BLOCK_FRAMES)
    block_levels = np.array([_block_level(levels[b * BLOCK_FRAMES:(b + 1) * BLOCK_FRAMES])
                             for b in range(n_blocks)])
    background = _background(block_levels, 0, n_blocks)
    sustained = _moving_median(levels, SUSTAIN_HALF)
    return _assemble(levels, sustained, background, 0)


class LoudnessFeatures(RestartableStage):
    """Streams AudioChunks (C, n) at 44.1 kHz into loudness FrameChunks (4, k); see the module.

    The first chunk may start at a later sample than 0 (a restart) if it sits on a block
    boundary (a multiple of ALIGN_SAMPLES); frames are then numbered from that point, and those
    from restart_sample()'s guarantee on equal the uninterrupted stream's.
    """

    name = "loudness_features"
    channels = FEATURES
    # How far before a time T a restart must begin (one block more for the alignment), and how
    # far the output lags the input at most (the look-ahead, plus a block being filled).
    lookback_sec = (LOOKBACK_BLOCKS + 1) * BLOCK_FRAMES * grid.HOP / grid.FEATURE_RATE
    lookahead_samples = (NEIGHBOUR_BLOCKS + 2) * BLOCK_FRAMES * grid.SAMPLES_PER_FRAME

    def restart_sample(self, first_needed: int) -> int:
        """The 44.1 kHz sample a restart begins at to reproduce the frames from the one centred
        at or after `first_needed` on."""
        return restart_sample(first_needed)

    def __init__(self):
        self._framer = CenteredFramer(grid.N_FFT, grid.HOP)
        self._carry = np.zeros(0, np.float32)  # an unpaired 44.1 kHz sample
        self._next_sample = None  # where the next chunk must start
        self._origin = 0  # absolute index of local frame 0
        self._levels = np.zeros(0)  # levels of local frames [_levels_base, _n_frames)
        self._levels_base = 0
        self._n_frames = 0
        self._blocks = []  # levels of blocks [_blocks_base, _blocks_base + len)
        self._blocks_base = 0
        self._next_block = 0  # first block not yet emitted

    @property
    def held_frames(self) -> int:
        """Frame and block levels held now: about a neighbourhood's worth (~2,700), however long
        the stream."""
        return len(self._levels) + len(self._blocks)

    def process(self, chunk: AudioChunk) -> List[FrameChunk]:
        self._check(chunk)
        mono = _mono(chunk.samples)
        if len(self._carry):
            mono = np.concatenate([self._carry, mono])
        even = len(mono) // 2 * 2
        self._carry = mono[even:].copy()
        frames = self._framer.push(_pair_average(mono[:even]))
        if len(frames) == 0:
            return []
        self._add_levels(_frame_levels(frames))
        return self._emit(final=False)

    def flush(self) -> List[FrameChunk]:
        if self._next_sample is None:
            return []  # no audio at all
        last = self._framer.push(_pair_average(np.concatenate([self._carry, self._carry * 0])))
        self._carry = np.zeros(0, np.float32)
        frames = np.concatenate([last, self._framer.flush()])
        if len(frames):
            self._add_levels(_frame_levels(frames))
        return self._emit(final=True)

    def _check(self, chunk: AudioChunk) -> None:
        if chunk.rate != grid.AUDIO_RATE:
            raise ValueError(f"loudness features need {grid.AUDIO_RATE} Hz audio, got {chunk.rate}")
        if self._next_sample is None:
            if chunk.start % ALIGN_SAMPLES:
                raise ValueError(f"a stream must start on a multiple of {ALIGN_SAMPLES} samples, "
                                 f"not {chunk.start}")
            self._origin = chunk.start * grid.FEATURE_RATE // grid.AUDIO_RATE // grid.HOP
        elif chunk.start != self._next_sample:
            raise ValueError(f"audio chunk starts at {chunk.start}, expected {self._next_sample}")
        self._next_sample = chunk.end

    def _add_levels(self, new: np.ndarray) -> None:
        self._levels = np.concatenate([self._levels, new])
        self._n_frames += len(new)
        # Block levels as soon as a block is complete (the last, partial one at flush).
        while (self._blocks_base + len(self._blocks) + 1) * BLOCK_FRAMES <= self._n_frames:
            self._blocks.append(self._block_from_levels(self._blocks_base + len(self._blocks)))

    def _block_from_levels(self, b: int) -> float:
        lo = b * BLOCK_FRAMES - self._levels_base
        return _block_level(self._levels[lo:lo + BLOCK_FRAMES])

    def _emit(self, final: bool) -> List[FrameChunk]:
        n_blocks = self._blocks_base + len(self._blocks)
        if final:
            if n_blocks * BLOCK_FRAMES < self._n_frames:
                self._blocks.append(self._block_from_levels(n_blocks))
                n_blocks += 1
            ready = n_blocks
        else:
            ready = n_blocks - NEIGHBOUR_BLOCKS  # blocks whose whole neighbourhood has arrived
        if ready <= self._next_block:
            return []
        first = self._next_block * BLOCK_FRAMES
        stop = min(ready * BLOCK_FRAMES, self._n_frames)

        background = _background(np.array(self._blocks), self._next_block, ready,
                                 self._blocks_base)
        # Sustained level: a moving median whose window is cut only at the stream's true ends.
        lo = max(0, first - SUSTAIN_HALF)
        hi = min(self._n_frames, stop + SUSTAIN_HALF)
        span = self._levels[lo - self._levels_base:hi - self._levels_base]
        sustained = _moving_median(span, SUSTAIN_HALF)[first - lo:stop - lo]
        levels = self._levels[first - self._levels_base:stop - self._levels_base]
        out = FrameChunk(_assemble(levels, sustained, background, first), self._origin + first)

        # Keep only what later blocks need: SUSTAIN_HALF frames back, NEIGHBOUR_BLOCKS blocks back.
        self._next_block = ready
        keep_from = max(0, ready * BLOCK_FRAMES - SUSTAIN_HALF)
        self._levels = self._levels[keep_from - self._levels_base:].copy()
        self._levels_base = keep_from
        drop = max(0, ready - NEIGHBOUR_BLOCKS) - self._blocks_base
        if drop > 0:
            del self._blocks[:drop]
            self._blocks_base += drop
        return [out]
