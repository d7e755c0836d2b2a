"""Streaming centred framing, exactly as librosa frames a signal with center=True and constant
(zero) padding, and as torch.stft(center=True, pad_mode="constant") does.

The signal is padded with n_fft // 2 zeros on both sides; frame i covers padded samples
[i*hop, i*hop + n_fft), so frame i is centred on signal sample i*hop. A signal of n samples gives
1 + n // hop frames (even n_fft). The framer returns each frame as soon as all its samples are
known and holds at most n_fft + hop samples between calls, whatever the stream's length.
"""
import numpy as np


def offline_frames(signal: np.ndarray, n_fft: int = 2048, hop: int = 512) -> np.ndarray:
    """Centred frames of a whole signal (..., n) -> (n_frames, ..., n_fft), a copy.

    The reference the streaming framer must equal: np.pad with zeros, then a strided view.
    """
    signal = np.asarray(signal)
    pad = [(0, 0)] * (signal.ndim - 1) + [(n_fft // 2, n_fft // 2)]
    padded = np.pad(signal, pad)
    view = np.lib.stride_tricks.sliding_window_view(padded, n_fft, axis=-1)[..., ::hop, :]
    return np.moveaxis(view, -2, 0).copy()


class CenteredFramer:
    """Cuts a stream of samples (n,) or (C, n) into centred frames (k, [C,] n_fft).

    push() returns every frame whose samples have all arrived (possibly none); flush() pads the end
    with zeros and returns the rest. Frames are copies, in the input's dtype.
    """

    def __init__(self, n_fft: int = 2048, hop: int = 512):
        if n_fft < 1 or hop < 1:
            raise ValueError("n_fft and hop must be positive")
        self.n_fft = n_fft
        self.hop = hop
        self.frames_out = 0  # frames returned so far
        self.samples_in = 0  # signal samples pushed so far
        self._buf = None  # padded samples from frame `frames_out` on, in slots [0, _len)
        self._len = 0
        self._flushed = False

    @property
    def held(self) -> int:
        """Samples held now (padding included): under n_fft + hop after any push of <= hop."""
        return self._len

    def push(self, samples: np.ndarray) -> np.ndarray:
        samples = np.asarray(samples)
        if self._flushed:
            raise RuntimeError("push after flush")
        if self._buf is None:
            self._start(samples.shape[:-1], samples.dtype)
        elif samples.shape[:-1] != self._buf.shape[:-1]:
            raise ValueError(f"samples shaped {samples.shape}, expected (..., n) with leading "
                             f"shape {self._buf.shape[:-1]}")
        self.samples_in += samples.shape[-1]
        self._append(samples)
        return self._emit()

    def flush(self) -> np.ndarray:
        """The frames still held, with the end zero-padded; the stream then is over."""
        if self._flushed:
            return self._empty()
        if self._buf is None:  # nothing pushed: an empty signal still gives its one frame
            self._start((), np.float32)
        self._append(np.zeros(self._buf.shape[:-1] + (self.n_fft // 2,), self._buf.dtype))
        self._flushed = True
        return self._emit()

    def _start(self, lead_shape, dtype) -> None:
        # Room for one frame plus one hop beyond it; grows only if a single push is larger.
        self._buf = np.zeros(tuple(lead_shape) + (self.n_fft + self.hop,), dtype)
        self._len = self.n_fft // 2  # the left zero padding

    def _append(self, samples: np.ndarray) -> None:
        n = samples.shape[-1]
        if self._len + n > self._buf.shape[-1]:
            bigger = np.zeros(self._buf.shape[:-1] + (self._len + n + self.hop,), self._buf.dtype)
            bigger[..., :self._len] = self._buf[..., :self._len]
            self._buf = bigger
        self._buf[..., self._len:self._len + n] = samples
        self._len += n

    def _emit(self) -> np.ndarray:
        if self._len < self.n_fft:
            return self._empty()
        k = 1 + (self._len - self.n_fft) // self.hop
        view = np.lib.stride_tricks.sliding_window_view(
            self._buf[..., :self._len], self.n_fft, axis=-1)[..., ::self.hop, :][..., :k, :]
        frames = np.moveaxis(view, -2, 0).copy()  # a copy: the buffer is reused
        # Keep only what later frames need: everything from frame k's first sample on.
        used = k * self.hop
        rest = self._len - used
        self._buf[..., :rest] = self._buf[..., used:self._len]
        self._len = rest
        self.frames_out += k
        if self._buf.shape[-1] > 4 * (self.n_fft + self.hop) and self._len <= self.n_fft:
            self._buf = self._buf[..., :self.n_fft + self.hop].copy()  # shrink after a big push
        return frames

    def _empty(self) -> np.ndarray:
        lead = self._buf.shape[:-1] if self._buf is not None else ()
        dtype = self._buf.dtype if self._buf is not None else np.float32
        return np.zeros((0,) + tuple(lead) + (self.n_fft,), dtype)
