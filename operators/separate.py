"""Separate: the 44.1 kHz stereo stream into two stems, voice (Demucs "vocals") and game (every
other source summed, what `demucs --two-stems vocals` writes as no_vocals), streaming.

It computes exactly `demucs.apply.apply_model(model, mix, shifts=0, split=True, overlap=0.25)`
on the whole stream: segments of the model's own length every `stride` samples, padded as
apply_model pads them, each output weighted by the same triangle and divided by the summed
weights, in the same order of float operations. Only when the work happens differs: a segment
runs (in batches of `batch_size`) as soon as its samples are in, and a sample is emitted as soon
as no later segment covers it. The buffers hold a few segments whatever the stream's length.
A bag of models (htdemucs_ft) runs one such stream per model and mixes them with the bag's
per-source weights, as apply_model does.

Whole-track normalisation: demucs's CLI subtracts the whole track's mean and divides by its std
before apply_model, and undoes it after. A stream cannot know those, so the samples go in as
they are, as with apply_model called directly. HTDemucs normalises every segment itself (mean
and std of its spectrogram and of its waveform), so a track's gain cancels up to its 1e-5
epsilon, and the mean of real audio is about 0.
"""
import contextlib
import math
import os
from typing import List, Optional, Union

import numpy as np
import torch
from torch import nn

from demucs.apply import BagOfModels
from demucs.utils import center_trim

from highlightsense.engine.chunks import AudioChunk
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.engine.operator import RestartableStage
from highlightsense.model.separator import check_half, load_separator, pick_device

STEMS = ("voice", "game")
VOICE_SOURCE = "vocals"


class _SegmentStream:
    """apply_model's split loop for one model, fed as the samples arrive. Positions count
    samples from the start of the stream."""

    def __init__(self, model: nn.Module, device: torch.device, batch_size: int, overlap: float,
                 half: bool):
        self.model, self.device, self.batch_size = model, device, batch_size
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if half else (
            contextlib.nullcontext)
        self.length = int(model.samplerate * model.segment)  # as apply_model computes it
        self.stride = int((1 - overlap) * self.length)
        half_len = self.length // 2
        weight = torch.cat([torch.arange(1, half_len + 1, device=device),
                            torch.arange(self.length - half_len, 0, -1, device=device)])
        self.weight = weight / weight.max()  # transition_power 1
        self.weight_cpu = self.weight.cpu()
        # A full segment needs its samples up to `reach` past its offset; a partial one at the
        # stream's end is padded with up to `lookback` real samples before its offset.
        full = self._valid(self.length)
        self.reach = full - (full - self.length) // 2
        self.lookback = full // 2
        self.received = 0
        self.next_segment = 0
        self.inputs = np.zeros((model.audio_channels, 0), np.float32)
        self.inputs_start = 0  # stream position of inputs[:, 0]
        self.pieces = []  # arrived samples not yet joined to `inputs`
        shape = (len(model.sources), model.audio_channels)
        self.out = torch.zeros(*shape, 0)  # weighted sums from out_start on (CPU)
        self.weights = torch.zeros(0)
        self.out_start = 0  # everything before this has been emitted

    def _valid(self, n: int) -> int:
        return self.model.valid_length(n) if hasattr(self.model, "valid_length") else n

    def push(self, samples: np.ndarray) -> Optional[torch.Tensor]:
        """Take samples; return the sources (S, C, n) that became final, or None."""
        self.pieces.append(samples)
        self.received += samples.shape[-1]
        if self.received < self.reach:
            return None
        ready = (self.received - self.reach) // self.stride + 1 - self.next_segment
        ready -= ready % self.batch_size  # whole batches only; the rest waits for more samples
        if ready <= 0:
            return None
        self._run([(self.next_segment + i) * self.stride for i in range(ready)], self.received)
        return self._emit(self.next_segment * self.stride)  # later segments start there

    def finish(self) -> Optional[torch.Tensor]:
        """End of stream: run the segments left (the last ones shorter), return the rest."""
        total = self.received
        if total == 0:
            return None
        offsets = range(self.next_segment * self.stride, total, self.stride)
        self._run(list(offsets), total)
        return self._emit(total)

    def _join(self) -> None:
        if self.pieces:
            self.inputs = np.concatenate([self.inputs] + self.pieces, axis=1)
            self.pieces = []

    def _segment_input(self, offset: int, n: int, total: int) -> np.ndarray:
        """What apply_model's TensorChunk(mix, offset, n).padded(valid) gives the model:
        centred on the segment, real samples where the stream has them, zeros beyond."""
        valid = self._valid(n)
        start = offset - (valid - n) // 2
        a, b = max(start, 0), min(start + valid, total)
        assert a >= self.inputs_start, "segment reaches before the samples kept"
        x = self.inputs[:, a - self.inputs_start:b - self.inputs_start]
        return np.pad(x, ((0, 0), (a - start, start + valid - b)))

    def _run(self, offsets: List[int], total: int) -> None:
        """Run the segments at `offsets` (batched while their padded lengths agree) and add
        their weighted outputs in order, as apply_model does."""
        self._join()
        lengths = [min(total - o, self.length) for o in offsets]
        i = 0
        while i < len(offsets):
            j = i + 1
            while (j < len(offsets) and j - i < self.batch_size
                   and self._valid(lengths[j]) == self._valid(lengths[i])):
                j += 1
            batch = np.stack([self._segment_input(o, n, total)
                              for o, n in zip(offsets[i:j], lengths[i:j])])
            with torch.no_grad(), self.autocast():
                y = self.model(torch.from_numpy(batch).to(self.device)).float()
            for k in range(j - i):
                self._add(offsets[i + k], lengths[i + k], center_trim(y[k], lengths[i + k]))
            i = j
        self.next_segment += len(offsets)
        # Keep only the samples a later segment can read (its padding reaches back).
        keep_from = max(0, self.next_segment * self.stride - self.lookback)
        if keep_from > self.inputs_start:
            self.inputs = self.inputs[:, keep_from - self.inputs_start:].copy()
            self.inputs_start = keep_from

    def _add(self, offset: int, n: int, sources: torch.Tensor) -> None:
        end = offset + n - self.out_start
        if end > self.out.shape[-1]:
            grow = end - self.out.shape[-1]
            self.out = torch.cat([self.out, self.out.new_zeros(*self.out.shape[:-1], grow)], -1)
            self.weights = torch.cat([self.weights, self.weights.new_zeros(grow)])
        a = offset - self.out_start
        self.out[..., a:end] += (self.weight[:n] * sources).to("cpu")
        self.weights[a:end] += self.weight_cpu[:n]

    def _emit(self, upto: int) -> Optional[torch.Tensor]:
        n = upto - self.out_start
        if n <= 0:
            return None
        done = self.out[..., :n] / self.weights[:n]
        self.out, self.weights = self.out[..., n:].clone(), self.weights[n:].clone()
        self.out_start = upto
        return done


class Separate(RestartableStage):
    """AudioChunk (2, n) at the model's rate (44.1 kHz) in, AudioChunk (2 stems, 2, m) out with
    stems ("voice", "game"), contiguous, covering every input sample once flushed.

    model: a loaded demucs model or BagOfModels, or a name or path for load_separator.
    device: None/"auto" (cuda, then mps, then cpu) or a torch device name.
    batch_size: segments per forward call (output then waits for batch_size segments' input).
    half: float16 autocast on CUDA.
    """

    name = "separate"
    threaded = True

    def __init__(self, model: Union[str, nn.Module] = "htdemucs", device=None,
                 batch_size: int = 1, half: bool = False, overlap: float = 0.25):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if not 0 <= overlap < 1:
            raise ValueError("overlap must be in [0, 1)")
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        check_half(self.device, half)
        self.model = load_separator(model) if isinstance(model, (str, os.PathLike)) else model
        self.model.to(self.device).eval()
        if VOICE_SOURCE not in self.model.sources:
            raise HighlightSenseError(
                f"the separator model has no {VOICE_SOURCE!r} source (its sources: "
                f"{', '.join(self.model.sources)}); choose a demucs model that separates vocals")
        bag = isinstance(self.model, BagOfModels)
        members = list(self.model.models) if bag else [self.model]
        self.bag_weights = self.model.weights if bag else None
        self.rate = self.model.samplerate
        self.channels = self.model.audio_channels
        self.streams = [_SegmentStream(m, self.device, batch_size, overlap, half)
                        for m in members]
        self.pending = [[] for _ in members]  # sources not yet mixed across the bag
        self.origin = None  # stream time of the first input sample
        self.expected = None  # stream time the next input chunk must start at
        self.emitted = 0  # samples emitted so far

    @property
    def warmup_samples(self) -> int:
        """A restart on the segment grid at least this far before T gives the same output from
        T on: every segment covering T (and the samples its padding reads) lies after it."""
        return max(s.length + s.lookback for s in self.streams)

    @property
    def lookahead_samples(self) -> int:
        """Every segment covering a sample ends at most this far after it."""
        return self.warmup_samples

    @property
    def segment_grid(self) -> int:
        """Restarts must begin a multiple of this many samples after the stream's origin (0: a
        restart reads the same file from its start's timeline)."""
        return math.lcm(*(s.stride for s in self.streams))

    def restart_sample(self, first_needed: int) -> int:
        """The latest stream sample at which a restart gives output identical to an
        uninterrupted run's from sample `first_needed` on."""
        grid = self.segment_grid
        return max(0, (first_needed - self.warmup_samples) // grid * grid)

    def process(self, chunk: AudioChunk) -> List[AudioChunk]:
        samples = np.array(chunk.samples, dtype=np.float32)  # ours: the caller may reuse its
        if chunk.rate != self.rate or samples.ndim != 2 or samples.shape[0] != self.channels:
            raise ValueError(f"separate takes ({self.channels}, n) samples at {self.rate} Hz, "
                             f"not {samples.shape} at {chunk.rate} Hz")
        if self.origin is None:
            self.origin = self.expected = chunk.start
        if chunk.start != self.expected:
            raise ValueError(f"separate needs contiguous chunks: expected one starting at "
                             f"sample {self.expected}, got {chunk.start}")
        self.expected += samples.shape[-1]
        if samples.shape[-1] == 0:
            return []
        return self._mix([s.push(samples) for s in self.streams])

    def flush(self) -> List[AudioChunk]:
        return self._mix([s.finish() for s in self.streams])

    def _mix(self, outputs) -> List[AudioChunk]:
        """Queue each model's final sources; emit the span every model has finished."""
        for pending, out in zip(self.pending, outputs):
            if out is not None:
                pending.append(out)
        ready = min(sum(o.shape[-1] for o in pending) for pending in self.pending)
        if ready == 0:
            return []
        parts = []
        for i, pending in enumerate(self.pending):
            joined = torch.cat(pending, -1) if len(pending) > 1 else pending[0]
            parts.append(joined[..., :ready])
            self.pending[i] = [joined[..., ready:]] if joined.shape[-1] > ready else []
        sources = parts[0] if self.bag_weights is None else self._bag_mix(parts)
        chunk = AudioChunk(self._two_stems(sources), self.rate, self.origin + self.emitted,
                           STEMS)
        self.emitted += ready
        return [chunk]

    def _bag_mix(self, parts) -> torch.Tensor:
        """apply_model's bag: each model's sources times its per-source weights, summed, then
        divided by the weights' totals."""
        estimates, totals = 0., [0.] * len(self.model.sources)
        for out, weights in zip(parts, self.bag_weights):
            out = out.clone()
            for k, w in enumerate(weights):
                out[k] *= w
                totals[k] += w
            estimates = estimates + out
        for k in range(estimates.shape[0]):
            estimates[k] /= totals[k]
        return estimates

    def _two_stems(self, sources: torch.Tensor) -> np.ndarray:
        """voice = vocals; game = the other sources summed in order, as the CLI's
        `--two-stems vocals` writes no_vocals."""
        names = list(self.model.sources)
        voice = sources[names.index(VOICE_SOURCE)]
        game = torch.zeros_like(voice)
        for k, name in enumerate(names):
            if name != VOICE_SOURCE:
                game += sources[k]
        return torch.stack([voice, game]).numpy()
