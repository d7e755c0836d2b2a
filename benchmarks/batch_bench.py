"""`highlightsense bench --batch`: what spreading work over workers buys, measured.

    highlightsense bench --batch [--vods 8] [--minutes 10] [--paths loudness small]
                                 [--workers 1 2] [--where local ray] [--shard-minutes 60]
                                 [--shards 1 2 4] [--json-out FILE]
    python -m highlightsense.benchmarks.batch_bench ...      (the same)

1. Throughput: `--vods` synthetic VODs of `--minutes` each (benchmarks.synth, encoded as real
   .m4a files) through `batch --no-clips` on each path (loudness: the weights-free scorer;
   small: a small random CRNN with a tiny random Demucs, written with the real classes), with
   each worker count, on local worker processes and on a local Ray (127.0.0.1). Printed: the
   wall (from the pool's start: worker start-up and model loading count), x realtime, the
   throughput against one worker, the workers' start-up, and the per-task overhead: the wall
   times workers less the tasks' own time inside the workers, per task (dispatch, result
   transfer, the driver's writing of the folder on Ray, and idle workers at the batch's end),
   plus the round trip of an empty task.
2. Shards: one VOD of `--shard-minutes` on the loudness path as `detect --shard-minutes` with
   each of `--shards` shard counts over the largest worker count, against a single stream: the
   wall and the largest score difference (0 on the loudness path).

Random weights: compute cost, not quality. On a 2-core machine a loudness detect already keeps
about 1.6 cores busy (decode, resample and features overlap in their threads), so two workers
can gain at most the idle 0.4 core; the figures say how much they do.
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from highlightsense.engine.errors import HighlightSenseError


def make_vods(folder: Path, count: int, minutes: float, seed: int = 0) -> List[Path]:
    from highlightsense.benchmarks.media import write_media
    from highlightsense.benchmarks.synth import SyntheticVod

    seconds = minutes * 60
    paths = []
    for i in range(count):
        moments = [(t, t + 8.0) for t in np.linspace(30, max(31, seconds - 40), 4)]
        v = SyntheticVod(seconds, seed=seed + i, moments=moments, music=[], bangs=[])
        paths.append(write_media(folder / f"vod{i:02d}.m4a", v.blocks()))
    return paths


def _config(path: str, model: Optional[Path], separator: Optional[Path], **more):
    from dataclasses import replace

    from highlightsense.engine.config import load_config

    cfg = load_config(None, {"clips": False, "model": str(model) if model else None,
                             "separator": str(separator) if separator else "htdemucs"})
    return replace(cfg, **more)


def _pool(where: str, workers: int, cfg):
    from highlightsense.engine.batch import open_pool

    return open_pool("" if where == "ray" else None, workers, cfg)


def empty_round_trip(pool, calls: int = 20) -> float:
    """Seconds per empty task (the worker's pid) on one worker: dispatch and reply alone."""
    handle = pool.handles[0]
    handle.call("pid").result()
    began = time.perf_counter()
    for _ in range(calls):
        handle.call("pid").result()
    return (time.perf_counter() - began) / calls


def throughput(vods: Sequence[Path], work: Path, cfg, where: str, workers: int) -> dict:
    from highlightsense.engine.batch import run_batch

    audio = sum(_seconds(v) for v in vods)
    began = time.perf_counter()
    with _pool(where, workers, cfg) as pool:
        for handle in pool.handles:  # started (processes spawned, actors placed)
            handle.call("pid").result()
        startup = time.perf_counter() - began
        entries = run_batch([str(v) for v in vods], work / f"{where}-{workers}", cfg, pool,
                            show_progress=False)
        wall = time.perf_counter() - began
        round_trip = empty_round_trip(pool)
    failed = [e.error for e in entries if e.status != "done"]
    if failed:
        raise HighlightSenseError(f"bench --batch: an input failed: {failed[0]}")
    inside = sum(e.wall_sec for e in entries)
    return {"where": where, "workers": workers, "inputs": len(entries), "audio_sec": audio,
            "wall_sec": wall, "x_realtime": audio / wall, "startup_sec": startup,
            "task_sec_mean": inside / len(entries),
            "overhead_per_task_sec": ((wall - startup) * workers - inside) / len(entries),
            "empty_task_round_trip_sec": round_trip}


def _seconds(path: Path) -> float:
    from highlightsense.operators.sources.decode import open_media

    with open_media(str(path)) as container:
        return container.duration / 1e6


def _scores(folder: Path) -> np.ndarray:
    return np.loadtxt(folder / "raw_window_scores.csv", delimiter=",", skiprows=1)


def shards(vod: Path, work: Path, counts: Sequence[int], workers: int) -> List[dict]:
    """`detect` of one long VOD as one stream, then in each number of shards."""
    from highlightsense.engine.detect import detect

    cfg = _config(str(vod), None, None)
    minutes = _seconds(vod) / 60
    began = time.perf_counter()
    detect(str(vod), work / "single", cfg, show_progress=False)
    single_wall = time.perf_counter() - began
    single = _scores(work / "single")
    rows = [{"shards": "one stream", "workers": 1, "wall_sec": single_wall,
             "x_realtime": minutes * 60 / single_wall, "max_abs_diff": 0.0}]
    for count in counts:
        from dataclasses import replace

        sharded = replace(cfg, shard_minutes=minutes / count + 1e-6)
        began = time.perf_counter()
        with _pool("local", min(workers, count), sharded) as pool:
            detect(str(vod), work / f"shards{count}", sharded, show_progress=False,
                   shard_pool=pool)
        wall = time.perf_counter() - began
        ours = _scores(work / f"shards{count}")
        rows.append({"shards": count, "workers": min(workers, count), "wall_sec": wall,
                     "x_realtime": minutes * 60 / wall,
                     "max_abs_diff": float(np.max(np.abs(ours[:, 3] - single[:, 3])))
                     if ours.shape == single.shape else float("nan")})
    return rows


def format_report(report: dict) -> str:
    lines = [f"batch throughput ({report['vods']} VODs of {report['minutes']:g} min each, "
             f"{report['cores']} cores)",
             f"{'path':<9} {'where':<6} {'workers':>7} {'wall s':>8} {'x rt':>7} {'vs 1':>6} "
             f"{'start s':>8} {'task s':>7} {'overhead s/task':>16} {'empty task ms':>14}"]
    for row in report["throughput"]:
        lines.append(f"{row['path']:<9} {row['where']:<6} {row['workers']:>7} "
                     f"{row['wall_sec']:>8.1f} {row['x_realtime']:>7.1f} "
                     f"{row['ratio_vs_1']:>6.2f} {row['startup_sec']:>8.1f} "
                     f"{row['task_sec_mean']:>7.1f} {row['overhead_per_task_sec']:>16.2f} "
                     f"{row['empty_task_round_trip_sec'] * 1000:>14.2f}")
    if report.get("shards"):
        lines += ["", f"one {report['shard_vod_minutes']:g}-minute VOD in shards (loudness)",
                  f"{'shards':>10} {'workers':>7} {'wall s':>8} {'x rt':>7} {'max |dp|':>9}"]
        for row in report["shards"]:
            lines.append(f"{row['shards']!s:>10} {row['workers']:>7} {row['wall_sec']:>8.1f} "
                         f"{row['x_realtime']:>7.1f} {row['max_abs_diff']:>9.2g}")
    return "\n".join(lines)


def run(args) -> int:
    from highlightsense.benchmarks.bench_support import write_random_crnn, write_random_separator

    if args.vods < 1 or args.minutes <= 0 or any(w < 1 for w in args.workers):
        raise HighlightSenseError("bench --batch: --vods, --minutes and --workers must be "
                                  "positive")
    report = {"vods": args.vods, "minutes": args.minutes, "cores": os.cpu_count(),
              "throughput": [], "shards": []}
    with tempfile.TemporaryDirectory(prefix="hs-batch-bench-", dir=args.tmp) as tmp:
        tmp = Path(tmp)
        say = (lambda text: None) if args.quiet else (lambda text: print(text, file=sys.stderr))
        say(f"making {args.vods} VODs of {args.minutes:g} minutes")
        (tmp / "vods").mkdir()
        vods = make_vods(tmp / "vods", args.vods, args.minutes)
        models = {"loudness": (None, None)}
        if "small" in args.paths:
            models["small"] = (write_random_crnn(tmp / "small.pt", "small"),
                               write_random_separator(tmp / "sep", "tiny"))
        for path in args.paths:
            cfg = _config("", *models[path])
            for where in args.where:
                one = None
                for workers in args.workers:
                    say(f"{path}, {where}, {workers} worker(s)")
                    row = dict(throughput(vods, tmp / path, cfg, where, workers), path=path)
                    one = one or (row if workers == 1 else None)
                    row["ratio_vs_1"] = row["x_realtime"] / one["x_realtime"] if one else \
                        float("nan")
                    report["throughput"].append(row)
        if args.shards:
            say(f"one VOD of {args.shard_minutes:g} minutes in {args.shards} shards")
            (tmp / "long").mkdir()
            (long_vod,) = make_vods(tmp / "long", 1, args.shard_minutes, seed=100)
            report["shard_vod_minutes"] = args.shard_minutes
            report["shards"] = shards(long_vod, tmp / "long", args.shards, max(args.workers))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=1))
    print(format_report(report))
    return 0


def add_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("--batch")
    g.add_argument("--vods", type=int, default=8, metavar="N", help="VODs in the batch")
    g.add_argument("--paths", nargs="+", default=["loudness", "small"],
                   choices=("loudness", "small"), help="scoring paths to measure")
    g.add_argument("--workers", type=int, nargs="+", default=[1, 2], metavar="N")
    g.add_argument("--where", nargs="+", default=["local", "ray"], choices=("local", "ray"))
    g.add_argument("--shard-minutes", type=float, default=60.0, metavar="M",
                   help="the long VOD's length for the shards run")
    g.add_argument("--shards", type=int, nargs="*", default=[1, 2, 4], metavar="K")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="batch_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--tmp", default=None)
    p.add_argument("--json-out", default=None)
    p.add_argument("-q", "--quiet", action="store_true")
    add_flags(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
