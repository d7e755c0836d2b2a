"""What resuming late in a long AAC file costs the decoder: a seek to the sync point (fast, but
AAC's noise substitution then decodes other noise) against decoding every packet from the start
and resampling only from the sync point (operators.sources.decode: exact, the default for AAC).

    python -m highlightsense.benchmarks.resume_cost --minutes 120 --at 115 --file /tmp/vod.m4a

writes the file unless it exists (48 kHz AAC with the encoder's defaults, PNS on, like a VOD's
audio; --minutes 120 takes several minutes to encode), decodes it once whole (for the sync
points and the samples to compare), then restarts at --at both ways and prints each one's
seconds to the first chunk, x realtime over the part it did not hand on, and whether its samples
equal the whole decode's. Not run in CI.
"""
import argparse
import time
from pathlib import Path

import numpy as np

from highlightsense.benchmarks.media import write_media
from highlightsense.benchmarks.synth import SyntheticVod
from highlightsense.engine.grid import AUDIO_RATE
from highlightsense.operators.sources import decode

COMPARE_SEC = 60  # samples compared after the restart point


def write_vod(path: Path, minutes: float) -> None:
    # The 44.1 kHz synthetic blocks taken as 48 kHz (a VOD's rate): a little lower in pitch.
    seconds = minutes * 60 * 48000 / 44100
    write_media(path, SyntheticVod(seconds, seed=1).blocks(), rate=48000,
                audio_options={"aac_coder": "twoloop"})  # FFmpeg's default coder


def whole_decode(path: Path, start: int):
    """Sync points, wall seconds and COMPARE_SEC of samples from `start` of a decode from 0."""
    began = time.perf_counter()
    decoder = decode.AudioDecoder(path, chunk_sec=10.0)
    kept, end = [], start + COMPARE_SEC * AUDIO_RATE
    for chunk in decoder:
        if chunk.end > start and chunk.start < end:
            kept.append(chunk.samples[:, max(0, start - chunk.start):end - chunk.start])
    return decoder.info.sync_points, time.perf_counter() - began, np.concatenate(kept, axis=1)


def restart(path: Path, start: int, sync_points, seek: bool):
    """Seconds to the first chunk, then COMPARE_SEC of samples, of a restart at `start`."""
    allowed = decode.SEEKS_EXACTLY
    decode.SEEKS_EXACTLY = allowed | {"aac"} if seek else allowed - {"aac"}
    try:
        began = time.perf_counter()
        decoder = decode.AudioDecoder(path, start_sample=start, sync_points=sync_points,
                                      chunk_sec=1.0)
        chunks = iter(decoder)
        kept = [next(chunks).samples]
        first = time.perf_counter() - began
        for chunk in chunks:
            kept.append(chunk.samples)
            if sum(k.shape[1] for k in kept) >= COMPARE_SEC * AUDIO_RATE:
                break
        decoder.close()
    finally:
        decode.SEEKS_EXACTLY = allowed
    return first, decoder.restarted_by, np.concatenate(kept, axis=1)[:, :COMPARE_SEC * AUDIO_RATE]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=120.0)
    parser.add_argument("--at", type=float, default=115.0, help="restart minute")
    parser.add_argument("--file", type=Path, default=Path("/tmp/highlightsense-resume-cost.m4a"))
    args = parser.parse_args(argv)
    if not args.file.exists():
        began = time.perf_counter()
        write_vod(args.file, args.minutes)
        print(f"wrote {args.file} ({args.file.stat().st_size / 1e6:.0f} MB) in "
              f"{time.perf_counter() - began:.0f} s")
    start = round(args.at * 60 * AUDIO_RATE)
    sync_points, wall, expected = whole_decode(args.file, start)
    print(f"whole decode: {wall:.1f} s ({args.minutes * 60 / wall:.0f}x realtime), "
          f"{len(sync_points)} sync points")
    for seek in (True, False):
        first, how, got = restart(args.file, start, sync_points, seek)
        equal = got.shape == expected.shape and np.array_equal(got, expected)
        diff = float(np.abs(got - expected).max()) if got.shape == expected.shape else None
        print(f"restart at {args.at:g} min by {how}: first chunk after {first:.2f} s "
              f"({args.at * 60 / first:.0f}x realtime over the {args.at:g} min not handed on); "
              f"next {COMPARE_SEC} s equal to the whole decode's: {equal} (max |diff| {diff})")


if __name__ == "__main__":
    main()
