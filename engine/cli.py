"""The `highlightsense` command.

detect INPUT --out DIR   find the highlights of a media file or URL and cut them as clips
select OUT_DIR           choose again from the saved scores (new threshold, top N, NMS window)
watch URL                follow a live stream; emit each highlight as an event as it happens
demo [--out DIR]         make a sample VOD with known moments and run detect on it
bench                    measure the pipeline (per stage), or compare it with the seed's way

Errors a user can fix come out as one line on stderr and a non-zero exit status.
"""
import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

from highlightsense.engine.errors import HighlightSenseError
from highlightsense.engine.memory import tune_malloc
from highlightsense.engine.progress import in_kernel

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


class _OneLine(logging.Formatter):
    def format(self, record):
        msg = record.getMessage()
        return msg if record.levelno == logging.INFO else f"{record.levelname.lower()}: {msg}"


def _setup_logging(quiet: bool) -> None:
    log = logging.getLogger("highlightsense")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False


def _selection_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config file or preset name")
    p.add_argument("--threshold-percentile", type=float, metavar="P",
                   help="keep windows at or above this percentile of all scores (default 99)")
    p.add_argument("--threshold", type=float, metavar="ABS",
                   help="keep windows scoring at least ABS (0-1) instead of a percentile: "
                        "comparable with `watch --threshold`")
    p.add_argument("--nms-window", type=float, metavar="S",
                   help="drop windows starting within S seconds of a better one (default 10)")
    p.add_argument("--top-n", type=int, metavar="N", help="at most N clips (default 20)")
    p.add_argument("--no-clips", dest="clips", action="store_const", const=False,
                   help="write the scores and the table, cut no clips")
    p.add_argument("--exact-cuts", action="store_const", const=True,
                   help="re-encode clips so they start exactly on the window "
                        "(default: stream copy from the keyframe at or before it)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress, warnings only")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="highlightsense", description=(
        "Find the highlight moments of long game streams."))
    from highlightsense import __version__

    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("detect", help="score a media file or URL and cut its highlights")
    d.add_argument("input", help="media file (mp4, mkv, ts, m4a, wav, flac, mp3, webm, ...) or "
                                 "URL (a VOD page yt-dlp knows, an .m3u8 playlist, a media URL)")
    d.add_argument("--fragments", dest="hls_fragments", type=int, metavar="N",
                   help="for URLs: HLS segments fetched at once (default 4)")
    d.add_argument("--out", required=True, metavar="DIR", help="output folder")
    d.add_argument("--window-sec", type=float, metavar="S", help="window length (default 30)")
    d.add_argument("--stride-sec", type=float, metavar="S", help="window step (default 5)")
    d.add_argument("--audio-stream", type=int, metavar="N",
                   help="analyse the N-th audio stream (0 = first)")
    d.add_argument("--batch-size", type=int, metavar="N", help="windows per scoring call")
    d.add_argument("--model", metavar="PATH",
                   help="HighlightSense CRNN checkpoint (best_model.pt); without it the "
                        "weights-free loudness scorer runs")
    d.add_argument("--separator", metavar="NAME_OR_PATH",
                   help="demucs model for the voice/game split: a name (htdemucs, "
                        "htdemucs_ft, ...) or a local .th, .safetensors or repo folder")
    d.add_argument("--device", metavar="D", help="auto (cuda, then mps, then cpu), cpu, cuda, ...")
    d.add_argument("--separator-batch", type=int, metavar="N",
                   help="Demucs segments per forward call (default 1)")
    d.add_argument("--half", action="store_const", const=True,
                   help="float16 separation (CUDA only)")
    d.add_argument("--max-duration", dest="max_duration_sec", type=_duration, metavar="H:MM:SS",
                   help="refuse inputs longer than this (default 24:00:00)")
    d.add_argument("--restart", action="store_true",
                   help="discard the progress an interrupted run saved in --out and start over "
                        "(by default the same command continues where it stopped)")
    d.add_argument("--single-pass", dest="exact_reference", action="store_const", const=False,
                   help="skip the second pass over the windows scored before the VOD's loudest "
                        "frame (faster; their dB reference is then lower than the seed's)")
    _selection_flags(d)

    s = sub.add_parser("select", help="choose again from a finished run's saved scores")
    s.add_argument("out_dir", metavar="OUT_DIR", help="the --out folder of a detect run")
    _selection_flags(s)

    _watch_parser(sub)
    from highlightsense.benchmarks.bench import add_parser as bench_parser

    bench_parser(sub)

    m = sub.add_parser("demo", help="make a sample VOD with known moments and run detect on it")
    m.add_argument("--out", default="highlightsense-demo", metavar="DIR",
                   help="folder for the sample and the results (default: highlightsense-demo)")
    m.add_argument("--minutes", type=float, default=5.0, help="sample length (default 5)")
    m.add_argument("-q", "--quiet", action="store_true", help="no progress, warnings only")
    return p


_CONFIG_FLAGS = ("window_sec", "stride_sec", "threshold_percentile", "nms_window", "top_n",
                 "clips", "exact_cuts", "audio_stream", "batch_size", "model", "separator",
                 "device", "separator_batch", "half", "exact_reference", "threshold",
                 "hls_fragments", "max_duration_sec")


def _watch_parser(sub) -> None:
    w = sub.add_parser("watch", help="follow a live stream and emit its highlights as they happen")
    w.add_argument("url", help="a live channel or stream URL (Twitch, an .m3u8 playlist, ...)")
    w.add_argument("--model", metavar="PATH",
                   help="CRNN checkpoint; without it the loudness scorer runs (its features look "
                        "about 60 s ahead, so its events come about a minute and a half late)")
    w.add_argument("--separator", metavar="NAME_OR_PATH", help="demucs model (with --model)")
    w.add_argument("--device", metavar="D", help="auto (cuda, then mps, then cpu), cpu, cuda, ...")
    how = w.add_mutually_exclusive_group()
    how.add_argument("--threshold", type=float, metavar="P",
                     help="a highlight is a window scoring at least P (0-1), as `detect "
                          "--threshold`")
    how.add_argument("--rolling-percentile", type=float, metavar="P",
                     help="... or at least the P-th percentile of the scores over the last "
                          "--horizon seconds (the default, with P from the config: 99)")
    w.add_argument("--horizon", type=float, default=1800.0, metavar="S",
                   help="seconds of scores the rolling percentile looks back over (default 1800)")
    w.add_argument("--max-delay", type=float, metavar="S",
                   help="decide a window at most S seconds of stream after its end, forced if "
                        "need be (default: the scorer's look-ahead plus twice the NMS reach)")
    w.add_argument("--nms-window", type=float, metavar="S",
                   help="drop windows starting within S seconds of a better one (default 10)")
    w.add_argument("--events", metavar="FILE", help="append events (JSON lines) here, not stdout")
    w.add_argument("--webhook", metavar="URL", help="POST each event (JSON) to this URL")
    w.add_argument("--clips", dest="clips_dir", metavar="DIR",
                   help="cut a clip of each highlight here, from the video kept in memory")
    w.add_argument("--exact-cuts", action="store_const", const=True,
                   help="re-encode clips to start exactly on the window")
    w.add_argument("--from-start", action="store_true",
                   help="analyse the playlist from its first segment, not the live edge")
    w.add_argument("--fragments", dest="hls_fragments", type=int, metavar="N",
                   help="HLS segments fetched at once (default 4)")
    w.add_argument("--config", metavar="FILE", help="YAML config file or preset name")
    w.add_argument("-q", "--quiet", action="store_true", help="no progress, warnings only")


def _duration(text: str) -> float:
    """Seconds from H:MM:SS, MM:SS or a number of seconds."""
    try:
        parts = [float(p) for p in text.split(":")]
        if len(parts) > 3 or any(p < 0 for p in parts):
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: give H:MM:SS, MM:SS or seconds") from None
    return sum(p * 60 ** i for i, p in enumerate(reversed(parts)))


def _config(args, tune: bool = False):
    """The settings: configs/default.yaml, then --config, then flags. `tune`: set malloc for
    the run they describe, before any thread starts or large buffer comes and goes (see
    engine/memory.py; a model given in a config file separates too)."""
    from highlightsense.engine.config import load_config

    overrides = {k: getattr(args, k) for k in _CONFIG_FLAGS if hasattr(args, k)}
    cfg = load_config(args.config, overrides)
    if tune and not in_kernel():  # a notebook's kernel is the user's process: left as it is
        tune_malloc(separating=cfg.model is not None)
    return cfg


def print_table(rows: List[dict], out=None) -> None:
    out = out or sys.stdout
    if not rows:
        print("No highlights found.", file=out)
        return
    print(f"{'rank':>4}  {'start':>8}  {'end':>8}  {'dur':>5}  {'conf':>6}  clip", file=out)
    for r in rows:
        print(f"{r['rank']:>4}  {r['start_ts']:>8}  {r['end_ts']:>8}  "
              f"{r['duration_sec']:>4.1f}s  {r['confidence']:>6.3f}  {r['clip_path']}", file=out)


def _detect(args) -> int:
    from highlightsense.engine.detect import detect

    cfg = _config(args, tune=True)
    try:
        result = detect(args.input, args.out, cfg, show_progress=not args.quiet,
                        restart=args.restart)
    except KeyboardInterrupt:
        from highlightsense.engine.resume import RECORD_NAME

        if (Path(args.out) / RECORD_NAME).exists():
            print(f"\ninterrupted: progress saved in {args.out}; run the same command again to "
                  f"continue where it stopped", file=sys.stderr)
            return EXIT_INTERRUPTED
        raise
    sel = result.selection
    print(f"{len(result.windows)} windows, {len(sel.above)} at or above "
          f"{_threshold_words(cfg, sel)}, {len(sel.kept)} after NMS, "
          f"top {len(result.highlights)}:")
    print_table(result.highlights)
    print(f"outputs in {result.out_dir}")
    return 0


def _select(args) -> int:
    from highlightsense.engine.detect import reselect

    cfg = _config(args)
    selection, rows = reselect(args.out_dir, cfg)
    print(f"{len(selection.above)} windows at or above {_threshold_words(cfg, selection)}, "
          f"{len(selection.kept)} after NMS, top {len(rows)}:")
    print_table(rows)
    return 0


def _threshold_words(cfg, selection) -> str:
    if cfg.threshold is not None:
        return f"the threshold {selection.threshold:.4f}"
    return f"the {cfg.threshold_percentile:g}th percentile ({selection.threshold:.4f})"


def _watch(args) -> int:
    from highlightsense.engine.watch import WatchOptions, summary_line, watch

    cfg = _config(args, tune=True)
    opts = WatchOptions(rolling_percentile=args.rolling_percentile, horizon_sec=args.horizon,
                        max_delay_sec=args.max_delay, events_path=args.events,
                        webhook=args.webhook, clips_dir=args.clips_dir,
                        start="first" if args.from_start else "live_edge")
    result = watch(args.url, cfg, opts, show_progress=not args.quiet)
    print(summary_line(result), file=sys.stderr)
    return 0


def _demo(args) -> int:
    from highlightsense.benchmarks.demo import run_demo

    if not in_kernel():
        tune_malloc(separating=False)  # the demo scores with the loudness scorer
    return run_demo(args.out, args.minutes, quiet=args.quiet)


def _bench(args) -> int:
    from highlightsense.benchmarks.bench import run

    return run(args)


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    _setup_logging(getattr(args, "quiet", False))
    try:
        return {"detect": _detect, "select": _select, "watch": _watch,
                "demo": _demo, "bench": _bench}[args.command](args)
    except HighlightSenseError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted: stopped; no finished outputs were written", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
