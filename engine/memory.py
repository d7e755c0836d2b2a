"""Fast, flat memory on long streams: glibc malloc settings, made once per process before the
pipeline's threads start.

With Demucs: its forward call allocates and frees several hundred MB of activations, many blocks
above glibc's largest mmap threshold (32 MB). By default each such block is a fresh mapping,
zeroed page by page on first touch and unmapped when freed: a full-size HTDemucs segment in a
worker thread on a 2-core CPU, two arenas, took 2.96 s, 0.79 s in the kernel (415,000 faults). One
arena, no mappings for blocks (M_MMAP_MAX 0) and no trimming of the heap's top keep those pages
in the process for the next segment: 2.48 s, under 7,000 faults; the 10-minute benchmark
ran 1.2x faster (benchmarks/bench.py). The heap's size is then the most a segment needs,
whatever the stream's length.

Without Demucs: glibc raises the mmap threshold each time a large block is freed, after which
the pipeline's large buffers (a second of audio is ~350 KB) come from heaps that fragment, and
the process grew with the stream's length: peak RSS was 26% higher on a 60-minute VOD than on a
10-minute one. A fixed threshold keeps such buffers in their own mappings, handed back when
freed: then 1% (benchmarks/detect_bench.py). Two arenas, not one per thread: each stage runs in a
thread of its own, and freed buffers would sit in many arenas at once.
"""
import ctypes
import sys

# mallopt parameters, glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
M_ARENA_MAX = -8
LARGE_BUFFER = 256 * 1024
NEVER_TRIM = 2 ** 31 - 1  # bytes free at the heap's top before it is handed back: never

# mallopt parameter: value, for runs with Demucs (True) and without (False)
SETTINGS = {True: {M_ARENA_MAX: 1, M_MMAP_MAX: 0, M_TRIM_THRESHOLD: NEVER_TRIM},
            False: {M_ARENA_MAX: 2, M_MMAP_THRESHOLD: LARGE_BUFFER}}

_done = False


def tune_malloc(separating: bool) -> bool:
    """Sets glibc's malloc for a run with or without Demucs, once per process; a no-op
    elsewhere. True if set."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no C library symbols to reach: nothing to tune
        return False
    _done = all([bool(mallopt(param, value))
                 for param, value in SETTINGS[separating].items()])
    return _done
