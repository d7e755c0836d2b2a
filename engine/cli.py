"""The `highlightsense` command.

detect INPUT --out DIR   find the highlights of a media file or URL and cut them as clips
select OUT_DIR           choose again from the saved scores (new threshold, top N, NMS window)
export DIR --format F    write a finished run's highlights as an editor's timeline
watch URL                follow a live stream; emit each highlight as an event as it happens
review OUT_DIR           a local page: the scores, the threshold to drag, play and keep/drop
demo [--out DIR]         make a sample VOD with known moments and run detect on it
bench                    measure the pipeline (per stage), or compare it with the notebook's way
evaluate RUN_DIR...      measure finished runs against labelled highlights (labels.csv)
train --out model.pt     train or fine-tune the CRNN on labelled VODs, on detect's features

Errors a user can fix come out as one line on stderr and a non-zero exit status.
"""
import argparse
import logging
import math
import os
import sys
import traceback
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Callable, Dict, List, Optional

from highlightsense.engine.config import Config, default_of, load_config
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.engine.memory import tune_malloc
from highlightsense.engine.progress import in_kernel
from highlightsense.engine.timecode import hms
from highlightsense.operators.sinks.timelines import FORMATS, parse_formats

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
EXIT_PIPE = 141  # 128 + SIGPIPE, as a command killed by a closed pipe exits


class _OneLine(logging.Formatter):
    def format(self, record):
        msg = record.getMessage()
        return msg if record.levelno == logging.INFO else f"{record.levelname.lower()}: {msg}"


log = logging.getLogger("highlightsense")


def _setup_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False


# The flags that set a Config key are the arguments whose dest is a Config field (config_flags
# lists them). Their argparse default stays None ("not given": Config, the presets and --config
# decide) and their help takes "(default X)" from Config (default_of).
CONFIG_KEYS = frozenset(f.name for f in fields(Config))

# Flags several commands take, with the same meaning and help: declared once (_shared), keyed by
# the long flag.
_SHARED = {
    "--config": dict(metavar="FILE", help="YAML config file or preset name"),
    "--nms-window": dict(type=float, metavar="S",
                         help="drop windows starting within S seconds of a better one "
                              f"(default {default_of('nms_window')})"),
    "--device": dict(metavar="D", help="auto (cuda, then mps, then cpu), cpu, cuda, ..."),
    "--quiet": dict(action="store_true", help="no progress, warnings only"),
    "--allow-private-hosts": dict(action="store_const", const=True,
                                  help="for URLs: let a playlist on a public host list segments "
                                       "(or redirect) on loopback, private or link-local "
                                       "addresses (refused by default)"),
}


def _shared(p: argparse.ArgumentParser, *flags: str) -> None:
    """Declare on `p` a flag several commands take: flags ("-q", "--quiet"), help and the rest
    from _SHARED."""
    p.add_argument(*flags, **_SHARED[flags[-1]])


def _scoring_flags(p: argparse.ArgumentParser) -> None:
    """What detect and batch score with: windows, streams, models, devices, limits."""
    p.add_argument("--fragments", dest="hls_fragments", type=int, metavar="N",
                   help="for URLs: HLS segments fetched at once "
                        f"(default {default_of('hls_fragments')})")
    p.add_argument("--window-sec", type=float, metavar="S",
                   help=f"window length (default {default_of('window_sec')})")
    p.add_argument("--stride-sec", type=float, metavar="S",
                   help=f"window step (default {default_of('stride_sec')})")
    p.add_argument("--audio-stream", type=int, metavar="N",
                   help="analyse the N-th audio stream (0 = first)")
    p.add_argument("--voice-track", metavar="N[+M]",
                   help="with --model: take the voice stem from this audio stream (counted as "
                        "--audio-stream counts; 1+2 sums two) instead of separating with Demucs; "
                        "give --game-track too")
    p.add_argument("--game-track", metavar="N[+M]",
                   help="with --voice-track: the game stem's audio stream(s), e.g. 2+3")
    p.add_argument("--tracks", choices=("auto",),
                   help="auto: pick the voice and game tracks by the streams' titles (mic, "
                        "voice / game, desktop, system); separate with Demucs when none say")
    p.add_argument("--batch-size", type=int, metavar="N", help="windows per scoring call")
    p.add_argument("--model", metavar="PATH",
                   help="HighlightSense CRNN checkpoint (best_model.pt); without it the "
                        "weights-free loudness scorer runs")
    p.add_argument("--separator", metavar="NAME_OR_PATH",
                   help="demucs model for the voice/game split: a name (htdemucs, "
                        "htdemucs_ft, ...) or a local .th, .safetensors or repo folder")
    _shared(p, "--device")
    _shared(p, "--allow-private-hosts")
    p.add_argument("--separator-batch", type=int, metavar="N",
                   help="Demucs segments per forward call "
                        f"(default {default_of('separator_batch')})")
    p.add_argument("--half", action="store_const", const=True,
                   help="float16 separation (CUDA only)")
    p.add_argument("--max-duration", dest="max_duration_sec", type=_duration, metavar="H:MM:SS",
                   help="refuse inputs longer than this "
                        f"(default {default_of('max_duration_sec', hms)})")
    p.add_argument("--single-pass", dest="exact_reference", action="store_const", const=False,
                   help="skip the second pass over the windows scored before the VOD's loudest "
                        "frame (faster; their dB reference is then lower than the seed's)")
    p.add_argument("--shard-minutes", type=float, metavar="M",
                   help="score a local file in time shards of about M minutes spread over the "
                        "workers, each restarted as a resumed run restarts: the same scores "
                        "as one run")


def _selection_flags(p: argparse.ArgumentParser) -> None:
    _shared(p, "--config")
    p.add_argument("--threshold-percentile", type=float, metavar="P",
                   help="keep windows at or above this percentile of all scores "
                        f"(default {default_of('threshold_percentile')})")
    p.add_argument("--threshold", type=float, metavar="ABS",
                   help="keep windows scoring at least ABS (0-1) instead of a percentile: "
                        "comparable with `watch --threshold`")
    _shared(p, "--nms-window")
    p.add_argument("--top-n", type=int, metavar="N",
                   help=f"at most N clips (default {default_of('top_n')})")
    p.add_argument("--order", choices=("rank", "time"),
                   help="list the table by rank (best first) or by time "
                        f"(default {default_of('order')})")
    clips = p.add_mutually_exclusive_group()
    clips.add_argument("--no-clips", dest="clips", action="store_const", const=False,
                       help="write the scores and the table, cut no clips (and remove the "
                            "clips an earlier selection cut)")
    clips.add_argument("--clips", dest="clips", action="store_const", const=True,
                       help="cut clips (the default; undoes a folder's last --no-clips)")
    cuts = p.add_mutually_exclusive_group()
    cuts.add_argument("--exact-cuts", dest="exact_cuts", action="store_const", const=True,
                      help="re-encode clips so they start exactly on the window "
                           "(default: stream copy from the keyframe at or before it)")
    cuts.add_argument("--copy-cuts", dest="exact_cuts", action="store_const", const=False,
                      help="stream-copy clips (the default; undoes a folder's last "
                           "--exact-cuts)")
    p.add_argument("--export", type=_formats, metavar="F[,F...]",
                   help="also write the highlights as an editor's timeline in the folder "
                        "(timeline.<ext>): " + ", ".join(FORMATS))
    _shared(p, "-q", "--quiet")


class _Command(argparse.ArgumentParser):
    """A command's parser whose arguments may be declared when it is used (`declare`, called
    with the parser before it parses or formats its help): the module that declares them (the
    bench's) is then imported only when that command runs, not by every other command."""

    def __init__(self, *args, declare: Optional[Callable[[argparse.ArgumentParser], None]] = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self._declare = declare

    def _declared(self) -> None:
        if self._declare is not None:
            declare, self._declare = self._declare, None
            declare(self)

    def parse_known_args(self, args=None, namespace=None):
        self._declared()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self._declared()
        return super().format_usage()

    def format_help(self) -> str:
        self._declared()
        return super().format_help()


def _declare_bench(p: argparse.ArgumentParser) -> None:
    from highlightsense.benchmarks.bench import declare

    declare(p)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="highlightsense", description=(
        "Find the highlight moments of long game streams."))
    from highlightsense import __version__

    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Command)

    d = sub.add_parser("detect", help="score a media file or URL and cut its highlights",
                       description=(
        "Score every 30-second window of a media file or URL (every 5 s), choose the "
        "highlights (the windows at or above the 99th percentile, near-duplicates removed, the "
        "top 20) and cut each into a clip. Writes into --out: raw_window_scores.csv, "
        "final_clips_metadata.csv, highlights.json, scores.png and clips/. Without --model the "
        "weights-free loudness scorer runs; with a CRNN checkpoint (best_model.pt) Demucs "
        "separates voice and game first. An interrupted run continues where it stopped when "
        "the same command is run again."))
    d.add_argument("input", help="media file (mp4, mkv, ts, m4a, wav, flac, mp3, webm, ...) or "
                                 "URL (a VOD page yt-dlp knows, an .m3u8 playlist, a media URL)")
    d.add_argument("--out", required=True, metavar="DIR", help="output folder")
    d.add_argument("--restart", action="store_true",
                   help="discard the progress an interrupted run saved in --out and start over "
                        "(by default the same command continues where it stopped)")
    d.add_argument("--workers", type=int, metavar="N",
                   help="with --shard-minutes: worker processes the shards go to (default one "
                        "per GPU, else one per two cores)")
    _scoring_flags(d)
    _selection_flags(d)

    _batch_parser(sub)

    s = sub.add_parser("select", help="choose again from a finished run's saved scores",
                       description=(
        "Choose the highlights again from the scores a finished detect saved in OUT_DIR "
        "(another threshold, top N, NMS window or order), without touching the audio, and "
        "rewrite its table, plot and clips. It starts from the settings the folder's last "
        "selection used; the flags given change only what they name."))
    s.add_argument("out_dir", metavar="OUT_DIR", help="the --out folder of a detect run")
    _selection_flags(s)
    _shared(s, "--allow-private-hosts")

    _export_parser(sub)
    _watch_parser(sub)
    r = sub.add_parser("review", help="look at a finished run's highlights in the browser, "
                                      "keep or drop them", description=(
        "Serve a local page (127.0.0.1, a free port) over a finished run's folder: the score "
        "curve with the threshold to drag (the server chooses as `select` does), each "
        "highlight playable in place, keep/drop and a note saved to OUT_DIR/review.json, and "
        "buttons that cut the kept ones, write labels.csv or export a timeline."))
    r.add_argument("out_dir", metavar="OUT_DIR", help="the --out folder of a detect run")
    r.add_argument("--no-browser", dest="browser", action="store_false",
                   help="print the URL only; do not open a browser")
    r.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    _shared(r, "-q", "--quiet")
    # Measurement code: benchmarks/bench.py declares its flags, imported only for `bench`.
    sub.add_parser("bench", declare=_declare_bench, help="measure the engine (per stage, end to "
                                                         "end), or compare with the notebook's way")

    m = sub.add_parser("demo", help="make a sample VOD with known moments and run detect on it",
                       description=(
        "Make a synthetic game stream with planted highlight moments (a video with audio), "
        "run detect on it with the loudness scorer and show what it found: a first run that "
        "needs no model and no network."))
    m.add_argument("--out", default="highlightsense-demo", metavar="DIR",
                   help="folder for the sample and the results (default: %(default)s)")
    m.add_argument("--minutes", type=float, default=5.0, help="sample length (default %(default)g)")
    _shared(m, "-q", "--quiet")
    _label_parsers(sub)
    return p


def _batch_parser(sub) -> None:
    b = sub.add_parser("batch", help="run detect over many inputs, each into a folder of its own",
                       description=(
        "Run detect over many inputs (files or URLs), on worker processes of this machine or on "
        "a Ray cluster. Each input gets a folder of its own in --out (a readable name and a "
        "short hash) holding what detect writes; --out/batch.csv and batch.json list every "
        "input with its status. Run the same command again to skip the finished inputs, "
        "resume the interrupted ones and retry the failed ones. The exit status is non-zero "
        "when any input failed."))
    b.add_argument("inputs", nargs="*", metavar="INPUT", help="media files or URLs")
    b.add_argument("--list", metavar="FILE",
                   help="a file of inputs, one a line (# comments and blank lines skipped)")
    b.add_argument("--out", required=True, metavar="DIR", help="the batch's folder")
    b.add_argument("--workers", type=int, metavar="N",
                   help="worker processes (each loads its models once); default one per GPU, "
                        "else one per two cores, the cores split between them")
    b.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="run on a Ray cluster at ADDRESS (host:port), or without ADDRESS on a "
                        "local Ray started on 127.0.0.1 (needs highlightsense[ray])")
    b.add_argument("--restart", action="store_true",
                   help="score every input again, finished or interrupted")
    _scoring_flags(b)
    _selection_flags(b)


def _label_flags(p: argparse.ArgumentParser, folders: bool) -> None:
    """Where the labels come from (engine.labels): labels.csv, a VOD's Twitch clips, and for
    `train` the original's folders of positive and negative clips."""
    p.add_argument("--labels", metavar="CSV",
                   help="labels.csv: source,start_sec,end_sec,label (1/0)[,note]")
    p.add_argument("--twitch-clips", metavar="JSON",
                   help="a Helix Get Clips response of one VOD (weak positives); with --source")
    p.add_argument("--source", metavar="VOD", help="the VOD the --twitch-clips are of")
    if folders:
        p.add_argument("--positive-clips", metavar="DIR", help="a folder of highlight clips")
        p.add_argument("--negative-clips", metavar="DIR", help="a folder of non-highlight clips")
    p.add_argument("--negatives", choices=("all", "labelled"), default="all",
                   help="negative windows: all those no positive label covers (default), or "
                        "only those labelled 0")


def _label_parsers(sub) -> None:
    e = sub.add_parser("evaluate", help="measure finished runs against labelled highlights",
                       description=(
        "Measure finished detect runs against labelled highlights: precision and recall at "
        "K (1, 5, 10 and the run's top-n) of the chosen highlights, HIT@1, and the average "
        "precision of all window scores; per run and overall per scorer, with a PNG of their "
        "precision-recall curves."))
    e.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="--out folders of detect runs")
    _label_flags(e, folders=False)
    e.add_argument("--json", action="store_true", help="print the figures as JSON")
    e.add_argument("--plot", metavar="PNG", help="write the precision-recall curves here")
    _shared(e, "-q", "--quiet")

    t = sub.add_parser("train", help="train or fine-tune the CRNN on labelled VODs",
                       description=(
        "Train the CRNN on labelled VODs through detect's own stages (decode, Demucs, "
        "log-mel with the whole VOD's dB reference, 30 s windows padded to 60 s), validating "
        "on whole held-out VODs. --out gets the best epoch by validation AP as "
        "{'model': state_dict, 'epochs': n}; a rerun resumes from --work."))
    _label_flags(t, folders=True)
    t.add_argument("--out", required=True, metavar="PT", help="the checkpoint to write")
    t.add_argument("--work", metavar="DIR", help="last epoch and optimizer state, for resuming "
                                                 "(default: OUT.work)")
    t.add_argument("--init", metavar="PT", help="fine-tune this checkpoint (best_model.pt)")
    t.add_argument("--arch", choices=("full", "small"), default="full",
                   help="the seed's CRNN (default) or a small one for quick CPU experiments")
    t.add_argument("--epochs", type=int, default=10, help="(default %(default)s)")
    t.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (default %(default)g)")
    t.add_argument("--batch", type=int, default=32, help="windows per step (default %(default)s)")
    t.add_argument("--val-fraction", type=float, default=0.2,
                   help="VODs held out whole for validation (default %(default)g)")
    t.add_argument("--seed", type=int, default=0, help="(default %(default)s)")
    t.add_argument("--cache", metavar="DIR", help="keep each VOD's separated levels here")
    t.add_argument("--cache-gb", type=float, default=20.0, help="(default %(default)g)")
    t.add_argument("--restart", action="store_true", help="ignore the state in --work")
    t.add_argument("--separator", metavar="NAME_OR_PATH", help="demucs model, as detect's")
    _shared(t, "--device")
    t.add_argument("--separator-batch", type=int, metavar="N", help="as detect's")
    t.add_argument("--half", action="store_const", const=True, help="as detect's")
    t.add_argument("--window-sec", type=float, metavar="S", help="as detect's")
    t.add_argument("--stride-sec", type=float, metavar="S", help="as detect's")
    t.add_argument("--audio-stream", type=int, metavar="N", help="as detect's")
    _shared(t, "--config")
    _shared(t, "-q", "--quiet")


def config_flags(p: Optional[argparse.ArgumentParser] = None) -> Dict[str, Dict[str, str]]:
    """Which flag sets which Config key, per command ({"detect": {"--top-n": "top_n", ...}}):
    the arguments whose dest is a Config field, what _config passes on. Not bench: its --model,
    --device, ... describe its measured jobs, and it reads no Config."""
    p = p or parser()
    commands = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices
    return {name: {a.option_strings[-1]: a.dest for a in command._actions
                   if a.dest in CONFIG_KEYS and a.option_strings}
            for name, command in commands.items() if name != "bench"}


def _formats(text: str) -> List[str]:
    try:
        return parse_formats(text)
    except HighlightSenseError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _export_parser(sub) -> None:
    e = sub.add_parser("export", help="write a finished run's highlights as an editor's timeline",
                       description=(
        "Write the chosen highlights of a finished run (DIR) as a timeline for an editor: "
        "fcpxml (Final Cut Pro, DaVinci Resolve), fcp7xml (Premiere Pro, Resolve), edl (CMX "
        "3600), otio (OpenTimelineIO), mlt (Shotcut, Kdenlive), chapters (YouTube chapter "
        "lines) or csv-segments (LosslessCut). Times are in the source's frames; highlights "
        "the review dropped (DIR/review.json) are left out unless --all."))
    e.add_argument("out_dir", metavar="DIR", help="the --out folder of a detect run")
    e.add_argument("--format", dest="formats", type=_formats, required=True,
                   metavar="F[,F...]", help=", ".join(FORMATS))
    e.add_argument("--to", metavar="PATH",
                   help="one format: the file; several: a folder of timeline.<ext> "
                        "(default: DIR/timeline.<ext>)")
    e.add_argument("--order", dest="timeline_order", choices=("rank", "time"),
                   help="clips on the timeline best first or in time order (default: the "
                        "folder's last selection's order)")
    e.add_argument("--media", choices=("source", "clips"), default="source",
                   help="point the timeline at the source (default) or at the clip files")
    e.add_argument("--all", dest="all_highlights", action="store_true",
                   help="export every highlight, ignoring the review's keep/drop decisions")
    _shared(e, "-q", "--quiet")


def _export_to(out_dir, formats, to=None, order=None, media="source", all_=False) -> None:
    from highlightsense.operators.sinks.timelines import export_run

    done = export_run(out_dir, formats, to=to, order=order, media=media, all_=all_)
    for note in done.notes:
        log.info("note: %s", note)
    for fmt, path in done.paths.items():
        log.info("%s: %s (%d highlights)", fmt, path, done.count)


def _export(args) -> int:
    _export_to(args.out_dir, args.formats, args.to, args.timeline_order, args.media,
               args.all_highlights)
    return 0


def _watch_parser(sub) -> None:
    w = sub.add_parser("watch", help="follow a live stream and emit its highlights as they happen",
                       description=(
        "Follow a live HLS stream (a Twitch channel, an .m3u8 playlist) from its live edge "
        "and emit each highlight as a JSON line the moment it is decided, with its stream "
        "time and, where the playlist says, its time in the broadcast. Runs until the stream "
        "ends or Ctrl-C. For a file or a finished VOD, use `highlightsense detect`."))
    w.add_argument("url", help="a live channel or stream URL (Twitch, an .m3u8 playlist, ...)")
    w.add_argument("--model", metavar="PATH",
                   help="CRNN checkpoint; without it the loudness scorer runs (its features look "
                        "about 60 s ahead, so its events come about a minute and a half late)")
    w.add_argument("--separator", metavar="NAME_OR_PATH", help="demucs model (with --model)")
    _shared(w, "--device")
    _shared(w, "--allow-private-hosts")
    how = w.add_mutually_exclusive_group()
    how.add_argument("--threshold", type=float, metavar="SCORE",
                     help="a highlight is a window scoring at least SCORE, an absolute score "
                          "(0-1), as `detect --threshold`")
    how.add_argument("--rolling-percentile", type=float, metavar="P",
                     help="... or at least the P-th percentile of the scores over the last "
                          "--horizon seconds (the default, with P from the config: "
                          f"{default_of('threshold_percentile')})")
    w.add_argument("--horizon", type=float, default=1800.0, metavar="S",
                   help="seconds of scores the rolling percentile looks back over "
                        "(default %(default)g)")
    w.add_argument("--max-delay", type=float, metavar="S",
                   help="decide a window at most S seconds of stream after its end, forced if "
                        "need be (default: the scorer's look-ahead plus twice the NMS reach)")
    _shared(w, "--nms-window")
    w.add_argument("--events", metavar="FILE", help="append events (JSON lines) here, not stdout")
    w.add_argument("--webhook", metavar="URL", help="POST each event (JSON) to this URL")
    w.add_argument("--clips", dest="clips_dir", metavar="DIR",
                   help="cut a clip of each highlight here, from the video kept in memory")
    w.add_argument("--exact-cuts", action="store_const", const=True,
                   help="re-encode clips to start exactly on the window")
    w.add_argument("--from-start", action="store_true",
                   help="analyse the playlist from its first segment, not the live edge")
    w.add_argument("--fragments", dest="hls_fragments", type=int, metavar="N",
                   help=f"HLS segments fetched at once (default {default_of('hls_fragments')})")
    _shared(w, "--config")
    _shared(w, "-q", "--quiet")


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
    """The settings: Config's defaults, configs/default.yaml, then --config, then the flags that
    set a Config key (every argument whose dest is one: config_flags). `tune`: set malloc for
    the run they describe, before any thread starts or large buffer comes and goes (see
    engine/memory.py; a model given in a config file separates too)."""
    overrides = {k: v for k, v in vars(args).items() if k in CONFIG_KEYS}
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
    _check_workers(args)
    if args.workers is not None and not cfg.shard_minutes:
        raise HighlightSenseError("--workers goes with --shard-minutes (one stream runs in "
                                  "one process)")
    try:
        with _shard_pool(args, cfg) as pool:
            result = detect(args.input, args.out, cfg, show_progress=not args.quiet,
                            restart=args.restart, shard_pool=pool)
    except KeyboardInterrupt:
        from highlightsense.engine.resume import RECORD_NAME

        if (Path(args.out) / RECORD_NAME).exists():
            print(f"\ninterrupted: progress saved in {args.out}; run the same command again to "
                  f"continue where it stopped", file=sys.stderr)
            return EXIT_INTERRUPTED
        raise
    print("\n".join(result.summary))
    print_table(result.highlights)
    print(f"outputs in {result.out_dir}")
    if args.export:
        _export_to(result.out_dir, args.export)
    return 0


def _check_workers(args) -> None:
    if args.workers is not None and args.workers < 1:
        raise HighlightSenseError(f"--workers must be at least 1, not {args.workers}")


@contextmanager
def _shard_pool(args, cfg):
    """The workers a sharded detect spreads its shards over (None: not sharded)."""
    if not cfg.shard_minutes:
        yield None
        return
    from highlightsense.engine.batch import open_pool

    with open_pool(None, args.workers, cfg) as pool:
        yield pool


def _batch(args) -> int:
    from highlightsense.engine.batch import open_pool, read_list, run_batch

    inputs = list(args.inputs) + (read_list(args.list) if args.list else [])
    if not inputs:
        raise HighlightSenseError("batch needs inputs: give files or URLs, or --list FILE")
    _check_workers(args)
    cfg = _config(args)
    with open_pool(args.ray, args.workers, cfg) as pool:
        try:
            entries = run_batch(inputs, Path(args.out), cfg, pool, restart=args.restart,
                                show_progress=not args.quiet)
        except KeyboardInterrupt:
            print("\ninterrupted: run the same command again to continue (finished inputs "
                  "are skipped, interrupted ones resume)", file=sys.stderr)
            return EXIT_INTERRUPTED
    failed = [e for e in entries if e.status == "failed"]
    counts = {s: sum(e.status == s for e in entries) for s in ("done", "skipped", "failed")}
    print(", ".join(f"{n} {s}" for s, n in counts.items()) + f" of {len(entries)} inputs; "
          f"see {Path(args.out) / 'batch.csv'}")
    for e in failed:
        print(f"failed: {e.input}: {e.error}", file=sys.stderr)
    return EXIT_ERROR if failed else 0


def _select(args) -> int:
    from highlightsense.engine.selection import reselect, select_config, settings_words

    overrides = {k: v for k, v in vars(args).items() if k in CONFIG_KEYS}
    cfg, taken = select_config(args.out_dir, args.config, overrides)
    defaults = Config()
    shown = {k: v for k, v in taken.items()
             if v != getattr(defaults, k) and k not in ("window_sec", "stride_sec")}
    if shown:
        flags = {key: flag for flag, key in config_flags()["select"].items()}
        log.info("as the folder's last selection: %s (a flag changes it)",
                 settings_words(shown, flags))
    outcome = reselect(args.out_dir, cfg)
    print("\n".join(outcome.summary))
    print_table(outcome.highlights)
    if args.export:
        _export_to(args.out_dir, args.export)
    return 0


def _watch(args) -> int:
    from highlightsense.engine.watch import WatchOptions, summary_line, watch
    from highlightsense.operators.sources.fetch import FetchPolicy
    from highlightsense.operators.sources.resolve import is_url

    if not is_url(args.url):
        raise HighlightSenseError(
            f"{args.url} is not a URL: watch follows live streams; for a file use "
            f"`highlightsense detect {args.url} --out DIR`")

    cfg = _config(args, tune=True)
    opts = WatchOptions(rolling_percentile=args.rolling_percentile, horizon_sec=args.horizon,
                        max_delay_sec=args.max_delay, events_path=args.events,
                        webhook=args.webhook, clips_dir=args.clips_dir,
                        start="first" if args.from_start else "live_edge",
                        policy=FetchPolicy(allow_private_hosts=cfg.allow_private_hosts))
    result = watch(args.url, cfg, opts, show_progress=not args.quiet)
    print(summary_line(result), file=sys.stderr)
    return 0


def _review(args) -> int:
    from highlightsense.engine.review import serve

    return serve(args.out_dir, open_browser=args.browser, port=args.port)


def _demo(args) -> int:
    from highlightsense.benchmarks.demo import run_demo

    if not in_kernel():
        tune_malloc(separating=False)  # the demo scores with the loudness scorer
    return run_demo(args.out, args.minutes, quiet=args.quiet)


def _read_labels(args, folders: bool):
    from highlightsense.engine import labels

    if bool(args.twitch_clips) != bool(args.source):
        raise HighlightSenseError("--twitch-clips and --source go together: the clips' JSON "
                                  "and the VOD they are of")
    found = labels.read_labels_csv(args.labels) if args.labels else []
    if args.twitch_clips:
        found += labels.read_twitch_clips(args.twitch_clips, args.source)
    if folders and (args.positive_clips or args.negative_clips):
        from highlightsense.operators.sources.decode import probe

        found += labels.read_clip_folders(args.positive_clips, args.negative_clips,
                                          lambda path: probe(path)["duration_sec"])
    if not found:
        raise HighlightSenseError("no labels given: pass --labels labels.csv"
                                  + (", --twitch-clips with --source, or clip folders"
                                     if folders else " or --twitch-clips with --source"))
    labels.check_consistent(found)
    return found


def _evaluate(args) -> int:
    from highlightsense.engine.evaluate import run_command

    return run_command(args.run_dirs, _read_labels(args, folders=False), args.negatives,
                       args.json, args.plot)


def _train(args) -> int:
    from highlightsense.engine.train import TrainOptions, group_for_training, train

    cfg = _config(args, tune=True)
    opts = TrainOptions(out=args.out, work=args.work, init=args.init, arch=args.arch,
                        epochs=args.epochs, lr=args.lr, batch=args.batch,
                        val_fraction=args.val_fraction, seed=args.seed,
                        negatives=args.negatives, cache=args.cache, cache_gb=args.cache_gb,
                        restart=args.restart)
    result = train(group_for_training(_read_labels(args, folders=True)), cfg, opts)
    ap = "-" if result.best_ap is None else f"{result.best_ap:.3f}"
    print(f"{result.out}: epoch {result.best_epoch} (validation AP {ap})")
    return 0


def _bench(args) -> int:
    from highlightsense.benchmarks.bench import run

    return run(args)


def _check_numbers(p: argparse.ArgumentParser, args) -> None:
    """A number flag given nan or inf (which float() takes) is refused by name, in one line:
    no setting means either. (Config keys are refused again by engine.config, with YAML's.)"""
    commands = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices
    for action in commands[args.command]._actions:
        value = getattr(args, action.dest, None)
        if any(isinstance(v, float) and not math.isfinite(v)
               for v in (value if isinstance(value, list) else [value])):
            flag = action.option_strings[-1] if action.option_strings else action.dest
            raise HighlightSenseError(f"{flag} must be a finite number, not {value}")


def main(argv: Optional[List[str]] = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    _setup_logging(getattr(args, "quiet", False))
    try:
        _check_numbers(p, args)
        code = {"detect": _detect, "select": _select, "export": _export, "watch": _watch,
                "review": _review, "demo": _demo, "batch": _batch, "bench": _bench,
                "evaluate": _evaluate,
                "train": _train}[args.command](args)
        sys.stdout.flush()  # a closed pipe shows here, not at the interpreter's exit
        return code
    except HighlightSenseError as e:
        if isinstance(e.__cause__, BrokenPipeError):  # a stage's write to stdout (watch)
            return _closed_pipe()
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted: stopped; no finished outputs were written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return _closed_pipe()


def run() -> int:
    """The console script (and `python -m highlightsense`): main(), then the end of every thread
    the tool started, or, where one is blocked, an exit that does not wait for it
    (engine.threads). main() itself is what a notebook or a test calls: it never exits."""
    from highlightsense.engine import threads

    try:
        status = main()
    except Exception:  # a bug: its traceback, then the same ending
        traceback.print_exc()
        status = EXIT_ERROR
    return threads.leave(status)


def _closed_pipe() -> int:
    """Whoever read our output stopped (`| head`): nothing to say, and nothing more to write.
    stdout goes to /dev/null so the interpreter's last flush does not fail again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_PIPE


if __name__ == "__main__":
    sys.exit(run())
