"""One harness for streaming operators, after pipecat's run_test(processor, frames_to_send,
expected_down_frames): cut a whole signal into chunks, feed them to the operator, flush, and hand
back what came out, so that each streaming == offline test is a few lines.

    out = run_operator(LoudnessFeatures(), audio, [1, 7, 4096])
    np.testing.assert_array_equal(joined(out, start=0), loudness_features_offline(audio))

Imported as `from harness import run_operator, joined` (pytest puts tests/ on sys.path, as for
tests/processes.py).
"""
import itertools
import numbers
from collections.abc import Sequence

import numpy as np

from highlightsense.engine import grid
from highlightsense.engine.chunks import AudioChunk, FrameChunk
from highlightsense.engine.framing import CenteredFramer
from highlightsense.engine.operator import Operator


def audio(rate=grid.AUDIO_RATE, stems=()):
    """A make_chunk for run_operator: each piece as an AudioChunk at `rate`, named `stems`."""
    def make_chunk(piece, start):
        return AudioChunk(piece, rate, start, stems)
    return make_chunk


def run_operator(op, signal, chunk_sizes, start=0, each=None, make_chunk=None, flush=True):
    """Feed `signal` to `op` chunk by chunk, then flush it; return every chunk it emitted.

    signal: an array whose last axis is time (samples, or frames).
    chunk_sizes: an int (every chunk that long); a sequence of ints, cycled ([1, 7, 4096]); or
        an iterator of ints, taken in turn (e.g. itertools.chain([0], itertools.repeat(512))).
        Sizes of 0 give empty chunks; the last chunk is cut short at the signal's end. Chunks
        are taken while samples are left, and at least one is taken: an empty signal is fed as
        one empty chunk.
    start: the stream position of signal[..., 0]; chunk k starts at `start` + its offset.
    each: each(op, chunk, outputs) after every op.process(chunk), before the flush; `outputs`
        is the list of all chunks emitted so far. For asserting buffer bounds as it runs.
    make_chunk: make_chunk(piece, position) -> the chunk fed to op. Default audio(): an
        AudioChunk at grid.AUDIO_RATE (44,100 Hz) without stems. FrameChunk itself fits;
        audio(rate, stems) makes another.
    flush: False leaves the stream open (no op.flush()), as an interrupted run would.

    `op` is anything with process(chunk) -> list and flush() -> list; FramerOperator makes a
    CenteredFramer one. Use joined(outputs) to put the emitted chunks end to end.
    """
    signal = np.asarray(signal)
    make_chunk = make_chunk or audio()
    n = signal.shape[-1]
    if isinstance(chunk_sizes, numbers.Integral):
        sizes = itertools.repeat(chunk_sizes)
    elif isinstance(chunk_sizes, Sequence):
        if not chunk_sizes or (n > 0 and sum(chunk_sizes) == 0):
            raise ValueError(f"chunk sizes {chunk_sizes!r} never get through the signal")
        sizes = itertools.cycle(chunk_sizes)
    else:
        sizes = iter(chunk_sizes)
    outputs, pos = [], 0
    while True:
        size = next(sizes, None)
        if size is None:
            raise ValueError(f"chunk sizes ran out at {pos} of {n}")
        if size < 0:
            raise ValueError(f"chunk size {size} < 0")
        chunk = make_chunk(signal[..., pos:pos + size], start + pos)
        outputs += op.process(chunk)
        if each is not None:
            each(op, chunk, outputs)
        pos = min(pos + size, n)
        if pos >= n:
            break
    if flush:
        outputs += op.flush()
    return outputs


def joined(chunks, start=None):
    """The data of AudioChunks (samples) or FrameChunks (frames) concatenated along the time
    (last) axis, after checking they are contiguous: each chunk starts where the one before it
    ends, and the first at `start` when given."""
    if not chunks:
        raise ValueError("no chunks to join")
    if start is not None:
        assert chunks[0].start == start, f"first chunk starts at {chunks[0].start}, not {start}"
    for a, b in zip(chunks, chunks[1:]):
        assert b.start == a.end, f"chunk at {b.start} after one ending at {a.end}: not contiguous"
    return np.concatenate([_data(c) for c in chunks], axis=-1)


def _data(chunk):
    if isinstance(chunk, AudioChunk):
        return chunk.samples
    if isinstance(chunk, FrameChunk):
        return chunk.frames
    raise TypeError(f"cannot join a {type(chunk).__name__}")


class FramerOperator(Operator):
    """A CenteredFramer (engine/framing.py: push/flush of bare arrays) as an operator, so
    run_operator drives it as any other: AudioChunk in; out, each batch of k frames as one
    FrameChunk whose `start` is its first frame's index. CenteredFramer's frames are
    (k, [C,] n_fft); a FrameChunk's time axis is its last, so frames_of() turns joined outputs
    back to (n_frames, [C,] n_fft). `framer` is the wrapped CenteredFramer (held, frames_out)."""

    name = "framer"
    threaded = False

    def __init__(self, n_fft=2048, hop=512):
        self.framer = CenteredFramer(n_fft, hop)

    def process(self, chunk):
        return [self._chunk(self.framer.push(chunk.samples))]

    def flush(self):
        return [self._chunk(self.framer.flush())]

    def _chunk(self, frames):
        return FrameChunk(np.moveaxis(frames, 0, -1), self.framer.frames_out - len(frames))

    @staticmethod
    def frames_of(chunks):
        """Joined outputs of a FramerOperator, shaped as CenteredFramer gives frames:
        (n_frames, [C,] n_fft)."""
        return np.moveaxis(joined(chunks, start=0), -1, 0)
