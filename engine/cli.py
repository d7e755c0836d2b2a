"""The `highlightsense` command.

detect INPUT --out DIR   find the highlights of a media file and cut them as clips
select OUT_DIR           choose again from the saved scores (new threshold, top N, NMS window)
demo [--out DIR]         make a sample VOD with known moments and run detect on it

Errors a user can fix come out as one line on stderr and a non-zero exit status.
"""
import argparse
import logging
import sys
from typing import List, Optional

from highlightsense.engine.errors import HighlightSenseError
from highlightsense.engine.memory import keep_large_buffers_out_of_the_heap

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
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("detect", help="score a media file and cut its highlights")
    d.add_argument("input", help="media file (mp4, mkv, ts, m4a, wav, flac, mp3, webm, ...)")
    d.add_argument("--out", required=True, metavar="DIR", help="output folder")
    d.add_argument("--window-sec", type=float, metavar="S", help="window length (default 30)")
    d.add_argument("--stride-sec", type=float, metavar="S", help="window step (default 5)")
    d.add_argument("--audio-stream", type=int, metavar="N",
                   help="analyse the N-th audio stream (0 = first)")
    d.add_argument("--batch-size", type=int, metavar="N", help="windows per scoring call")
    _selection_flags(d)

    s = sub.add_parser("select", help="choose again from a finished run's saved scores")
    s.add_argument("out_dir", metavar="OUT_DIR", help="the --out folder of a detect run")
    _selection_flags(s)

    m = sub.add_parser("demo", help="make a sample VOD with known moments and run detect on it")
    m.add_argument("--out", default="highlightsense-demo", metavar="DIR",
                   help="folder for the sample and the results (default: highlightsense-demo)")
    m.add_argument("--minutes", type=float, default=5.0, help="sample length (default 5)")
    m.add_argument("-q", "--quiet", action="store_true", help="no progress, warnings only")
    return p


_CONFIG_FLAGS = ("window_sec", "stride_sec", "threshold_percentile", "nms_window", "top_n",
                 "clips", "exact_cuts", "audio_stream", "batch_size")


def _config(args):
    from highlightsense.engine.config import load_config

    overrides = {k: getattr(args, k) for k in _CONFIG_FLAGS if hasattr(args, k)}
    return load_config(args.config, overrides)


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

    cfg = _config(args)
    result = detect(args.input, args.out, cfg, show_progress=not args.quiet)
    sel = result.selection
    print(f"{len(result.windows)} windows, {len(sel.above)} at or above the "
          f"{cfg.threshold_percentile:g}th percentile ({sel.threshold:.4f}), "
          f"{len(sel.kept)} after NMS, top {len(result.highlights)}:")
    print_table(result.highlights)
    print(f"outputs in {result.out_dir}")
    return 0


def _select(args) -> int:
    from highlightsense.engine.detect import reselect

    cfg = _config(args)
    selection, rows = reselect(args.out_dir, cfg)
    print(f"{len(selection.above)} windows at or above the {cfg.threshold_percentile:g}th "
          f"percentile ({selection.threshold:.4f}), {len(selection.kept)} after NMS, "
          f"top {len(rows)}:")
    print_table(rows)
    return 0


def _demo(args) -> int:
    from highlightsense.benchmarks.demo import run_demo

    return run_demo(args.out, args.minutes, quiet=args.quiet)


def main(argv: Optional[List[str]] = None) -> int:
    keep_large_buffers_out_of_the_heap()  # first thing: before any large buffer comes and goes
    args = parser().parse_args(argv)
    _setup_logging(getattr(args, "quiet", False))
    try:
        return {"detect": _detect, "select": _select, "demo": _demo}[args.command](args)
    except HighlightSenseError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted: stopped; no finished outputs were written", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
