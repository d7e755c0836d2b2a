"""HLS fetch throughput against a local server throttled per connection, as Twitch's CDN served
the seed (165 KiB/s): one segment at a time, as the seed's download went, and several at once.
`--rate-kib 0` serves unthrottled: with many small segments (`--segments 2000 --segment-sec 1`)
the cost per request shows, and how many connections the server saw (keep-alive reuses them).

    python -m highlightsense.benchmarks.hls_fetch_bench [--segments 24] [--segment-sec 10]
                                                        [--rate-kib 165] [--parallel 1 8]

The audio-only rendition of a generated stream (AAC in MPEG-TS, cut with PyAV) is served from
127.0.0.1; each run reads every segment through HlsReader, in playlist order, as the decoder
would, and prints bytes, wall time and throughput; then the ratio of the last run to the first,
and what the seed's 163.9 MiB (803 fragments) would take at each measured rate.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

SEED_MIB, SEED_FRAGMENTS, SEED_SEC = 163.9, 803, 16 * 60 + 58


def fetch_all(url: str, parallel: int) -> tuple:
    from highlightsense.operators.sources.hls_reader import HlsReader

    began = time.perf_counter()
    reader = HlsReader(url, parallel=parallel)
    total = 0
    for fragment in reader.fragments():
        total += len(fragment.download.result())
    return total, time.perf_counter() - began


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--segments", type=int, default=24)
    p.add_argument("--segment-sec", type=float, default=10.0)
    p.add_argument("--rate-kib", type=float, default=165.0,
                   help="per connection (0: unthrottled)")
    p.add_argument("--parallel", type=int, nargs="+", default=[1, 8])
    args = p.parse_args(argv)

    from highlightsense.benchmarks.hls_server import HlsMedia, HlsServer
    from highlightsense.benchmarks.media import write_media
    from highlightsense.benchmarks.synth import SyntheticVod

    with tempfile.TemporaryDirectory() as tmp:
        seconds = args.segments * args.segment_sec
        path = write_media(Path(tmp) / "stream.ts", SyntheticVod(seconds, seed=0).blocks())
        media = HlsMedia.from_file(path, args.segment_sec)
    sizes = [len(a) for a in media.audio]
    print(f"stream: {seconds:.0f} s of AAC audio in {len(sizes)} segments of "
          f"{sum(sizes) / len(sizes) / 1024:.0f} KiB on average ({sum(sizes) / 2**20:.2f} MiB); "
          + (f"server throttled to {args.rate_kib:g} KiB/s per connection" if args.rate_kib
             else "server unthrottled"))
    print(f"the seed: {SEED_MIB} MiB in {SEED_FRAGMENTS} fragments, one at a time, "
          f"{SEED_SEC // 60} min {SEED_SEC % 60} s at {SEED_MIB * 1024 / SEED_SEC:.0f} KiB/s")
    rates = {}
    with HlsServer() as server:
        urls = server.add_vod("bench", media)
        server.throttle_bps = int(args.rate_kib * 1024) or None
        for parallel in args.parallel:
            connections, requests = server.connections, len(server.requests)
            total, wall = fetch_all(urls["audio"], parallel)
            rate = total / wall / 1024
            rates[parallel] = rate
            seed_min = SEED_MIB * 1024 / rate / 60
            versus = f" ({rate / args.rate_kib:.2f}x the per-connection rate)" if args.rate_kib \
                else ""
            print(f"{parallel} segment{'s' if parallel > 1 else ''} at once: {total / 2**20:.2f} "
                  f"MiB in {wall:.1f} s = {rate:.0f} KiB/s{versus}, "
                  f"{(len(server.requests) - requests) / wall:.0f} requests/s over "
                  f"{server.connections - connections} connections; the seed's {SEED_MIB} MiB "
                  f"would take {seed_min:.1f} min")
    first, last = args.parallel[0], args.parallel[-1]
    print(f"ratio {last} at once / {first} at once: {rates[last] / rates[first]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
