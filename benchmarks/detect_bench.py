"""Throughput and memory of `detect` with the loudness scorer on generated VODs.

    python -m highlightsense.benchmarks.detect_bench --minutes 10 60 [--container mp4 mkv]
                                                     [--keep DIR]

For each container and length it writes a synthetic VOD (AAC audio and a small H.264 video),
runs `detect` on it in a fresh child process and prints wall time, x realtime and the child's
peak RSS; then the ratio of the longest input's peak RSS to the shortest's (flat memory: ~1.0).
An mp4's index of every packet is loaded whole by FFmpeg when the file is opened (about 6 MB for
an hour), so mp4 inputs grow a little with length by their own format; mkv's index is sparse.
"""
import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(input_path: str, out_dir: str) -> None:
    from highlightsense.engine.config import load_config
    from highlightsense.engine.detect import detect
    from highlightsense.engine.memory import tune_malloc

    tune_malloc(separating=False)  # as the CLI does for a run without Demucs

    began = time.perf_counter()
    result = detect(input_path, Path(out_dir), load_config(), show_progress=False)
    wall = time.perf_counter() - began
    print(json.dumps({
        "wall_sec": wall, "stream_sec": result.metrics.position_sec,
        "windows": len(result.windows), "clips": len(result.highlights),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "stages": {s.name: round(s.busy_sec, 2) for s in result.metrics.stages},
    }))


def make_input(folder: Path, minutes: float, container: str) -> Path:
    from highlightsense.benchmarks.media import write_media
    from highlightsense.benchmarks.synth import SyntheticVod

    path = folder / f"vod_{minutes:g}min.{container}"
    if not path.exists():
        began = time.perf_counter()
        write_media(path, SyntheticVod(minutes * 60, seed=0).blocks(), video=True)
        print(f"  wrote {path.name} in {time.perf_counter() - began:.0f} s", file=sys.stderr)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, nargs="+", default=[10, 60])
    p.add_argument("--container", nargs="+", default=["mp4", "mkv"])
    p.add_argument("--keep", metavar="DIR", help="keep the generated inputs here (reused)")
    p.add_argument("--child", nargs=2, metavar=("INPUT", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep) if args.keep else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        print(f"{'input':>14}  {'windows':>7}  {'wall s':>7}  {'x realtime':>10}  "
              f"{'peak RSS MB':>11}  busy seconds per stage")
        for container in args.container:
            results = []
            for minutes in args.minutes:
                path = make_input(folder, minutes, container)
                proc = subprocess.run(
                    [sys.executable, "-m", "highlightsense.benchmarks.detect_bench", "--child",
                     str(path), str(Path(tmp) / f"out_{path.stem}_{container}")],
                    capture_output=True, text=True, check=True)
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                results.append(r)
                print(f"{minutes:>7g}min {container:>4}  {r['windows']:>7}  "
                      f"{r['wall_sec']:>7.1f}  {r['stream_sec'] / r['wall_sec']:>10.1f}  "
                      f"{r['peak_rss_mb']:>11.1f}  {r['stages']}", flush=True)
            if len(results) > 1:
                ratio = results[-1]["peak_rss_mb"] / results[0]["peak_rss_mb"]
                print(f"{container}: peak RSS {args.minutes[-1]:g} min / "
                      f"{args.minutes[0]:g} min = {ratio:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
