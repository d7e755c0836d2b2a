"""Flat memory on long streams.

glibc's malloc raises its mmap threshold each time a large block is freed, after which the
pipeline's large buffers (a second of audio is ~350 KB) come from per-thread heaps that fragment,
and the process grows with the stream's length: peak RSS was 26% higher on a 60-minute VOD than on
a 10-minute one. A fixed threshold keeps such buffers in their own mappings, handed back to the
system when freed: then 1% (benchmarks/detect_bench.py).

Only for pipelines without Demucs: its large activations would each become a fresh mapping, and
separation ran at 0.6x its speed in page faults (benchmarks/separation_bench.py); with separation
the memory is flat without it (60 min / 10 min: 1.005).
"""
import ctypes
import sys

M_MMAP_THRESHOLD = -3  # mallopt parameter, glibc's malloc.h
LARGE_BUFFER = 256 * 1024

_done = False


def keep_large_buffers_out_of_the_heap() -> bool:
    """Sets glibc's mmap threshold once per process; a no-op elsewhere. True if it was set."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no C library symbols to reach: nothing to tune
        return False
    _done = bool(mallopt(M_MMAP_THRESHOLD, LARGE_BUFFER))
    return _done
