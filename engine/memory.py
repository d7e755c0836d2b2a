"""Flat, small memory on long streams: glibc malloc settings, made once per process before the
pipeline's threads start.

Arenas: glibc gives each thread that allocates its own heap arena (up to 8 per core), and every
stage runs in its own thread, so freed buffers sit in many arenas at once. Two arenas take the
peak RSS of a full-size model run on 30 s from 2211 to 1711 MB, and a small one's from 975 to
571 MB, at the same speed (benchmarks/bench.py).

mmap threshold: glibc raises it each time a large block is freed, after which the pipeline's
large buffers (a second of audio is ~350 KB) come from heaps that fragment, and the process grows
with the stream's length: peak RSS was 26% higher on a 60-minute VOD than on a 10-minute one. A
fixed threshold keeps such buffers in their own mappings, handed back when freed: then 1%
(benchmarks/detect_bench.py). Only for pipelines without Demucs: its large activations would each
become a fresh mapping, and separation ran at 0.6x its speed in page faults.
"""
import ctypes
import sys

M_MMAP_THRESHOLD = -3  # mallopt parameters, glibc's malloc.h
M_ARENA_MAX = -8
LARGE_BUFFER = 256 * 1024
ARENAS = 2

_done = False


def tune_malloc(separating: bool) -> bool:
    """Sets glibc's arena count (and, for runs without Demucs, its mmap threshold) once per
    process; a no-op elsewhere. True if set."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no C library symbols to reach: nothing to tune
        return False
    _done = bool(mallopt(M_ARENA_MAX, ARENAS))
    if not separating:
        _done = bool(mallopt(M_MMAP_THRESHOLD, LARGE_BUFFER)) and _done
    return _done
