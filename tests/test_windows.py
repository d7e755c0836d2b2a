"""Windows operator against the seed's whole-spectrogram loop, on arbitrary chunkings."""
import numpy as np
import pytest

from harness import run_operator
from highlightsense.engine import grid
from highlightsense.engine.chunks import FrameChunk
from highlightsense.engine.ring import FrameRing
from highlightsense.operators.windows import Windows


def seed_windows(spec, window_frames, stride_frames, target_frames):
    """The seed's loop over a whole (C, F, T) spectrogram: (start, end, padded, mask) per window."""
    total = spec.shape[-1]
    out = []
    for i in range(max(1, (total - window_frames) // stride_frames + 1)):
        start, end = i * stride_frames, i * stride_frames + window_frames
        if end > total:
            end = total
            start = max(0, end - window_frames)
        window = spec[..., start:end]
        actual = window.shape[-1]
        if target_frames - actual > 0:
            window = np.concatenate(
                [window, np.full(window.shape[:-1] + (target_frames - actual,), window.min(),
                                 dtype=window.dtype)], axis=-1)
        mask = np.zeros(target_frames, dtype=np.float32)
        mask[:actual] = 1
        out.append((start, end, window, mask))
    return out


def windows_of(batches, batch_size):
    """The windows of a run's batches, in order: (index, start, end, frames, mask) each."""
    out = []
    for b in batches:
        assert len(b) <= batch_size
        for j in range(len(b)):
            out.append((b.index[j], b.start_frame[j], b.end_frame[j], b.frames[j], b.mask[j]))
    return out


@pytest.mark.parametrize("total", [1, 100, 1291, 1292, 1293, 1507, 1508, 5000])
@pytest.mark.parametrize("chunks", [[1], [7, 300, 2], [43], [10_000]])
def test_stream_equals_seed_loop(total, chunks):
    rng = np.random.default_rng(total)
    spec = rng.normal(size=(2, 3, total)).astype(np.float32)
    wf, sf = grid.window_frames(30), grid.stride_frames(5)
    expected = seed_windows(spec, wf, sf, grid.PADDED_FRAMES)
    op = Windows(wf, sf, grid.PADDED_FRAMES, 4)

    def bounded(op, chunk, out):
        # Bounded by the window and the largest chunk, never by the stream's length.
        assert op.ring.capacity <= 2 * (wf + sf + max(chunks))

    got = windows_of(run_operator(op, spec, chunks, each=bounded, make_chunk=FrameChunk),
                     batch_size=4)
    assert len(got) == len(expected) == grid.num_windows(total, wf, sf)
    for i, ((start, end, frames, mask), (idx, s, e, f, m)) in enumerate(zip(expected, got)):
        assert (idx, s, e) == (i, start, end)
        np.testing.assert_array_equal(f, frames)
        np.testing.assert_array_equal(m, mask)


def test_pad_to_window_length_only_pads_the_short_single_window():
    spec = np.arange(3 * 500, dtype=np.float32).reshape(1, 3, 500)
    op = Windows(1292, 215, pad_frames=1292, batch_size=8)
    assert op.process(FrameChunk(spec, 0)) == []
    (batch,) = op.flush()
    assert batch.frames.shape == (1, 1, 3, 1292)
    assert batch.mask[0].sum() == 500
    assert (batch.frames[0, ..., 500:] == 0).all()  # padded with the window's own minimum


def test_no_frames_gives_no_windows():
    assert Windows(10, 5, 10).flush() == []


def test_ring_wraps_and_grows():
    ring = FrameRing(5)
    data = np.arange(40, dtype=np.float32)[None]
    ring.append(data[:, :4], 0)
    ring.discard_before(3)
    ring.append(data[:, 4:7], 4)  # wraps around the end of the buffer
    np.testing.assert_array_equal(ring.get(3, 7), data[:, 3:7])
    ring.append(data[:, 7:30], 7)  # larger than the capacity: grows, keeps what is held
    np.testing.assert_array_equal(ring.get(3, 30), data[:, 3:30])
    with pytest.raises(IndexError):
        ring.get(2, 5)
    with pytest.raises(ValueError):
        ring.append(data[:, :1], 99)
