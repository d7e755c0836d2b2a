"""`watch` latency on a live HLS stream served locally on a fast clock: how long after a window's
end (in stream time) its event comes out, median and worst, per scorer.

    python -m highlightsense.benchmarks.watch_latency_bench [--minutes 8] [--speed 8]
                                                            [--crnn-speed 3]
                                                            [--scorers loudness crnn]

A synthetic stream (moments about every minute) is published as a live playlist of 4-s
segments on a clock `speed` times real time (`crnn-speed` for the CRNN path, slower on CPU: the
clock must not outrun the analysis, or queued audio adds to the delay); `watch` follows it from
the start with a rolling 90th percentile over 5 minutes (so every scorer yields events whatever
its score scale) and its default max_delay. Scorers: the loudness heuristic, and the CRNN path with small
random models (a small HTDemucs and a small CRNN built with the real classes, as the tests do;
no trained weights exist here). Printed per scorer:
  delay    stream seconds from a window's end to its decision (what the scorer and NMS wait for;
           the same at any clock speed while the pipeline keeps up), median and worst;
  latency  wall seconds from the arrival of the window's last audio to its event, at this speed;
  end      wall seconds from the publication of the last segment to the end of the analysis
           (small if the pipeline kept up with the live clock).
"""
import argparse
import io
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path


def small_models(folder: Path):
    from highlightsense.benchmarks.bench_support import write_small_models

    return write_small_models(folder)


def run(url: str, overrides: dict, live) -> dict:
    from highlightsense.engine.config import load_config
    from highlightsense.engine.watch import WatchOptions, watch

    out = io.StringIO()
    cfg = load_config(overrides=overrides)
    began = time.perf_counter()
    result = watch(url, cfg, WatchOptions(rolling_percentile=90, horizon_sec=300,
                                          events_stream=out, poll_sec=0.1, start="first"),
                   show_progress=False)
    wall = time.perf_counter() - began
    end = time.monotonic() - live.publish_time(len(live.uris) - 1)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    return {"events": [e for e in events if e["type"] == "highlight"], "wall": wall,
            "result": result, "end": end}


def describe(name: str, r: dict, speed: float) -> str:
    res = r["result"]
    # Events decided by the end of the stream waited for nothing: leave them out of the figures.
    events = [e for e in r["events"] if e["decided_at_sec"] < res.stream_sec - 0.01]
    at_end = len(r["events"]) - len(events)
    if not events:
        return f"{name}: no events before the end of the stream"
    delays = [e["delay_sec"] for e in events]
    lat = [e["latency_sec"] for e in events if e["latency_sec"] is not None]
    forced = sum(e["forced"] for e in events)
    return (f"{name}: {len(events)} events ({forced} forced, max_delay {res.max_delay_sec:.0f} s; "
            f"{at_end} more decided at the stream's end, left out) "
            f"from {res.windows_seen} windows in {res.stream_sec:.0f} s of stream "
            f"({r['wall']:.0f} s wall at {speed:g}x)\n"
            f"  delay after the window's end (stream s): median {statistics.median(delays):.1f}, "
            f"worst {max(delays):.1f}\n"
            f"  latency from the audio's arrival (wall s, at {speed:g}x): median "
            f"{statistics.median(lat):.2f}, worst {max(lat):.2f}"
            f"  (in real time the stream part scales by {speed:g}: ~median "
            f"{statistics.median(delays):.0f} s)\n"
            f"  analysis ended {r['end']:.1f} s (wall) after the last segment was published")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=8.0)
    p.add_argument("--speed", type=float, default=8.0, help="live clock, times real time")
    p.add_argument("--crnn-speed", type=float, default=3.0, help="the same, for the CRNN path")
    p.add_argument("--scorers", nargs="+", default=["loudness", "crnn"])
    args = p.parse_args(argv)
    logging.getLogger("highlightsense").setLevel(logging.WARNING)

    from highlightsense.benchmarks.hls_server import HlsMedia, HlsServer
    from highlightsense.benchmarks.media import write_media
    from highlightsense.benchmarks.synth import SyntheticVod

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        vod = SyntheticVod(args.minutes * 60, seed=1)
        media = HlsMedia.from_file(write_media(folder / "live.ts", vod.blocks()), 4.0)
        print(f"stream: {args.minutes:g} min, {len(vod.moments)} moments, 4-s segments; "
              f"rolling 90th percentile over 300 s, NMS 10 s")
        for name in args.scorers:
            overrides, speed = {}, args.speed
            if name == "crnn":
                speed = args.crnn_speed
                separator, checkpoint = small_models(folder)
                overrides = {"model": str(checkpoint), "separator": str(separator),
                             "device": "cpu"}
            with HlsServer() as server:
                urls = server.add_live(name, media, speed=speed, initial=1)
                r = run(urls["master"], overrides, urls["clock"])
            print(describe(name if name == "loudness" else "crnn (small random models)", r,
                           speed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
