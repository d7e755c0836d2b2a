"""What the sync-point pass of time shards costs (engine.shards.plan_shards): a decode of the
whole file that notes its sync points, against PyAV decoding alone (no resampling) and demuxing
alone, on the same file.

    python -m highlightsense.benchmarks.sync_point_pass --minutes 20 --file /tmp/vod.mp4

writes the file unless it exists (h264 + 48 kHz AAC, as a VOD), then prints each one's seconds
and x realtime. The pass resamples as every run's decoder does, because the sync points hold
the exact input-sample counts of the resampler's phase and a restart is exact only from those:
demuxing alone would be faster but its packets give other counts (10 s of 48 kHz AAC in mp4:
470 packets of 481,024 samples, 469 frames of 480,256 decoded, the priming packet and the end
trimmed by the edit list; in Matroska, millisecond timestamps and a first packet of duration
0). Not run in CI.
"""
import argparse
import time
from pathlib import Path

import av

from highlightsense.benchmarks.media import write_media
from highlightsense.benchmarks.synth import SyntheticVod
from highlightsense.engine.config import load_config
from highlightsense.engine.shards import plan_shards


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--file", default="/tmp/highlightsense-sync-point-pass.mp4")
    args = parser.parse_args(argv)
    path = Path(args.file)
    if not path.exists():
        blocks = SyntheticVod(args.minutes * 60 * 48000 / 44100, seed=1).blocks()
        write_media(path, blocks, rate=48000, video=True)
    began = time.perf_counter()
    plan = plan_shards(str(path), load_config(), 60.0)
    seconds = time.perf_counter() - began
    audio_sec = plan.duration_sec
    print(f"sync-point pass (decode + resample): {audio_sec:.0f} s of audio in {seconds:.2f} s, "
          f"{audio_sec / seconds:.0f}x realtime, {len(plan.sync_points)} sync points")
    with av.open(str(path)) as container:
        began = time.perf_counter()
        for packet in container.demux(container.streams.audio[0]):
            packet.decode()
        seconds = time.perf_counter() - began
    print(f"PyAV decode alone: {seconds:.2f} s, {audio_sec / seconds:.0f}x realtime")
    with av.open(str(path)) as container:
        began = time.perf_counter()
        packets = sum(1 for _ in container.demux(container.streams.audio[0]))
        seconds = time.perf_counter() - began
    print(f"demux alone: {seconds:.2f} s, {audio_sec / seconds:.0f}x realtime ({packets} packets)")


if __name__ == "__main__":
    main()
