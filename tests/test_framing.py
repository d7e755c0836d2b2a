from itertools import chain, repeat

import numpy as np
import pytest

from harness import FramerOperator, run_operator
from highlightsense.engine.framing import CenteredFramer, offline_frames


def empty_first(chunk):
    """Chunk sizes for run_operator: an empty push first (harmless), then `chunk` at a time."""
    return chain([0], repeat(chunk))


def naive_frames(signal, n_fft, hop):
    """The definition, one frame at a time: padded samples [i*hop, i*hop + n_fft)."""
    pad = [(0, 0)] * (signal.ndim - 1) + [(n_fft // 2, n_fft // 2)]
    padded = np.pad(signal, pad)
    count = 1 + (padded.shape[-1] - n_fft) // hop
    return np.stack([padded[..., i * hop:i * hop + n_fft] for i in range(count)])


@pytest.mark.parametrize("n", [0, 1, 511, 512, 513, 2047, 2048, 2049, 12345])
@pytest.mark.parametrize("shape", [(), (2,)])
def test_streamed_frames_equal_offline_for_any_chunking(n, shape):
    signal = np.random.default_rng(n).standard_normal(shape + (n,)).astype(np.float32)
    reference = offline_frames(signal)
    assert reference.shape == (1 + n // 512,) + shape + (2048,)
    assert np.array_equal(reference, naive_frames(signal, 2048, 512))
    for chunk in (1, 2, 7, 97, 511, 512, 4099, max(n, 1)):
        frames = FramerOperator.frames_of(run_operator(FramerOperator(), signal,
                                                       empty_first(chunk)))
        assert frames.dtype == np.float32
        assert frames.shape == reference.shape
        assert np.array_equal(frames, reference), f"chunk {chunk}"


@pytest.mark.parametrize("n_fft,hop", [(400, 160), (5, 2), (1024, 512), (16, 16)])
def test_other_sizes(n_fft, hop):
    signal = np.random.default_rng(0).standard_normal(1000)
    reference = naive_frames(signal, n_fft, hop)
    assert np.array_equal(offline_frames(signal, n_fft, hop), reference)
    for chunk in (1, 3, 61, 1000):
        out = run_operator(FramerOperator(n_fft, hop), signal, empty_first(chunk))
        assert np.array_equal(FramerOperator.frames_of(out), reference)


def test_frames_are_copies_and_memory_stays_bounded():
    signal = np.random.default_rng(1).standard_normal(200_000).astype(np.float32)
    whole = np.concatenate([signal, np.zeros(100_000, np.float32)])
    # 300 samples at a time, an empty push, then one large push of the zeros.
    sizes = [300] * (200_000 // 300) + [200_000 % 300, 0, 100_000]

    def bounded(op, chunk, out):
        assert op.framer.held < 2048

    op = FramerOperator()
    got = run_operator(op, whole, sizes, each=bounded)
    framer = op.framer
    assert framer.frames_out == 1 + 300_000 // 512
    assert np.array_equal(FramerOperator.frames_of(got), offline_frames(whole))


def test_flush_without_push_gives_the_one_frame_of_an_empty_signal():
    frames = CenteredFramer().flush()
    assert frames.shape == (1, 2048) and not frames.any()
    framer = CenteredFramer()
    framer.flush()
    with pytest.raises(RuntimeError):
        framer.push(np.zeros(3))


def test_matches_librosa_when_installed():
    librosa = pytest.importorskip("librosa")
    signal = np.random.default_rng(2).standard_normal(10_000).astype(np.float32)
    frames = FramerOperator.frames_of(run_operator(FramerOperator(), signal, empty_first(777)))
    padded = np.pad(signal, 1024)  # librosa's centring with pad_mode="constant"
    assert np.array_equal(frames, librosa.util.frame(padded, frame_length=2048, hop_length=512).T)
    window = librosa.filters.get_window("hann", 2048, fftbins=True)
    spectrum = np.abs(np.fft.rfft(frames * window, axis=-1)).T
    reference = np.abs(librosa.stft(signal, n_fft=2048, hop_length=512, center=True,
                                    pad_mode="constant"))
    np.testing.assert_allclose(spectrum, reference, rtol=1e-4, atol=1e-3)
