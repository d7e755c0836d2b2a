"""A ring buffer of feature frames addressed by absolute frame index.

The windows operator keeps only the frames that a window still to come can use: one window plus
one stride, whatever the stream's length.
"""
import numpy as np


class FrameRing:
    def __init__(self, capacity: int):
        self.capacity = max(1, capacity)
        self._buf = None  # (..., capacity), allocated on the first append (shape known then)
        self._origin = 0  # absolute index that buffer slot 0 stands for (modulo capacity)
        self.base = 0  # absolute index of the oldest frame held
        self.end = 0  # absolute index one past the newest frame

    def __len__(self) -> int:
        return self.end - self.base

    def append(self, frames: np.ndarray, start: int) -> None:
        """Add frames (..., n) whose first frame has absolute index `start` (must follow on)."""
        if start != self.end:
            raise ValueError(f"frames start at {start}, expected {self.end}")
        n = frames.shape[-1]
        if self._buf is None:
            self._buf = np.empty(frames.shape[:-1] + (self.capacity,), dtype=frames.dtype)
        if len(self) + n > self.capacity:  # a chunk larger than planned: grow, keep what is held
            held = self.get(self.base, self.end)
            self.capacity = max(2 * self.capacity, len(self) + n)
            self._buf = np.empty(frames.shape[:-1] + (self.capacity,), dtype=frames.dtype)
            self._buf[..., :held.shape[-1]] = held
            self._origin = self.base
        pos = (self.end - self._origin) % self.capacity
        first = min(n, self.capacity - pos)
        self._buf[..., pos:pos + first] = frames[..., :first]
        self._buf[..., :n - first] = frames[..., first:]
        self.end += n

    def get(self, start: int, stop: int) -> np.ndarray:
        """A copy of frames [start, stop), all of which must still be held."""
        if start < self.base or stop > self.end or start > stop:
            raise IndexError(f"frames {start}..{stop} not held (holding {self.base}..{self.end})")
        slots = (np.arange(start, stop) - self._origin) % self.capacity
        return self._buf[..., slots]

    def start_at(self, index: int) -> None:
        """Make an empty ring's first frame `index` (a stream that starts later than frame 0)."""
        if len(self) or self.end:
            raise ValueError("start_at() is for an empty ring")
        self.base = self.end = index

    def discard_before(self, index: int) -> None:
        self.base = max(self.base, min(index, self.end))
