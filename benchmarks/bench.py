"""`highlightsense bench`: what the engine costs, stage by stage, and against the seed's way (the
original notebook's; user-facing text says "notebook").

    highlightsense bench [--input FILE | --minutes 10] [model choices] [--stage NAME] [--json]
    highlightsense bench --compare-notebook [--minutes 10] [--rss-minutes 10 60]
    python -m highlightsense.benchmarks.bench ...        (the same, without the CLI)

Input: a media file (`--input`), or a synthetic game-stream VOD of `--minutes` (benchmarks.synth)
encoded as a real `.m4a` (`--container mp4` adds a small video) in a temporary folder, decoded
by the real decoder and deleted afterwards.

Models, as `detect` takes them: the weights-free loudness scorer (default), or a CRNN checkpoint
(`--model PATH`, or `--random-model [full|small]`: the seed's full-size CRNN or a small one with
random weights, saved as the seed saves checkpoints and read by the real loader), separated by
Demucs (`--separator NAME_OR_PATH`, or `--random-separator [full|small|tiny]`: the pretrained
htdemucs's shape with random weights, or narrow ones, saved as a demucs `.th` package and read
by the real loader). Random weights: the figures are compute cost, not quality. `--device`,
`--separator-batch`, `--batch-size`, `--half` and `--single-pass` mean what they mean to detect.

The engine's job is `engine.detect.detect` itself, what `highlightsense detect --no-clips`
does: models loaded, the streaming pipeline, the second pass, the selection and the outputs
(written to a temporary folder). It runs in a fresh child process (so its peak RSS is the job's)
and is measured from the inside by wrapping, in that process only, detect's builders, collector
and progress (module globals of engine.detect; forward hooks on the models it loads). The bench
relays its progress (stderr) and prints a table, or one JSON object with `--json` (`--json-out
FILE` writes the JSON as well as printing the table):

- per stage: chunks in/out, busy seconds (time inside the operator, measured in its thread),
  busy share of the pipeline's wall, x realtime of the stage alone (audio seconds / busy
  seconds), its input queue's most and mean depth (sampled every 0.5 s);
- end to end: the job's wall (model loading, the pipeline, the second pass over the start of
  the VOD that the whole-VOD dB reference needs unless --single-pass, the selection) and
  x realtime; time to the first scored window (job start to the first ScoredWindows reaching
  the collector); model compute (the summed time of the Demucs and CRNN forward calls, torch
  forward hooks in the same run; on CPU the two models run at once in two threads, so the sum
  can pass the wall) and wall / model compute;
- peak RSS (VmHWM of the job's process), the device (CPU model or GPU, torch threads), and the
  bytes the job wrote to files: `write_bytes` of /proc/self/io (sent to the storage layer) and
  `wchar` less the bytes of its stdout/stderr pipes (write() to files on any filesystem,
  tmpfs included). write_bytes also counts the filesystem metadata a job dirties (creating and
  renaming files, the progress record's fsync: a few pages each), so the check for audio or
  feature intermediates reads the write() figure, less the outputs and the progress record
  (detect's own, written every few seconds); see benchmarks/bench_support.py.

`--stage NAME` (decode, separate, features, loudness_features, windows, score, collect) runs one
stage alone: the real upstream stages run first on the same input and their output is kept in
memory (its RSS counts in the peak), then replayed as fast as the stage takes it, so the stage's
busy seconds and x realtime are its own, with no neighbour competing for the CPU. Keep the input
short for the late stages (a minute of separated stems is 42 MB, a window batch 26 MB).

`--compare-notebook` runs, on the same input and the same model files, the engine and then the
seed's way (benchmarks.seed_way: 60 s WAV chunks and a `python -m demucs` process per chunk,
librosa features over the whole separated files, one window at a time, percentile and NMS), and
prints the ratios (end-to-end wall, peak RSS, bytes written, time to the first scored window),
how far their scores agree, and whether the targets of issue 7 are met. Without model choices
it takes `--random-model full --random-separator full`. `--rss-minutes 10 60` runs the engine
on generated inputs of those lengths with a small Demucs (`--rss-separator`) and prints the
peak RSS ratio; it can be combined with `--compare-notebook` or run alone.
"""
import argparse
import asyncio
import json
import logging
import math
import os
import sys
import tempfile
import textwrap
import time
from collections import deque
from pathlib import Path
from typing import List, Optional

from highlightsense.benchmarks import bench_support as support
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.engine.observer import RunObserver

STAGE_NAMES = ("decode", "separate", "features", "loudness_features", "windows", "score",
               "collect")
ZERO_INTERMEDIATES_BOUND = 1 << 20  # bytes: incidental writes only (10 s of audio is 1.7 MB)


# ---- flags ------------------------------------------------------------------------------------

# The formats benchmarks.media writes a generated VOD in (others fail inside the encoder).
AUDIO_CONTAINERS = ("m4a", "wav", "flac", "mp3")
VIDEO_CONTAINERS = ("mp4", "mkv", "mov", "ts")  # with a small video stream
CONTAINERS = AUDIO_CONTAINERS + VIDEO_CONTAINERS

DESCRIPTION = (
    "Measure what the engine costs. bench runs the real `detect` (no clips) in a fresh process "
    "on a generated game-stream VOD (or on --input) and prints, per stage, its chunks, busy "
    "seconds, share of the wall, x realtime and queue depths; then the end-to-end wall and x "
    "realtime, the time to the first scored window, the models' own compute against the wall, "
    "the peak RSS, the device and the bytes written beyond the outputs. --stage measures one "
    "stage alone; --compare-notebook also does the whole job the original notebook's way (60 s "
    "WAV chunks, a demucs process per chunk, one window at a time) on the same input and model "
    "files and prints the ratios; --rss-minutes compares the peak RSS on inputs of several "
    "lengths. Models with random weights (--random-model, --random-separator) measure compute "
    "cost, not quality.")

EXAMPLES = """examples:
  highlightsense bench --minutes 10 --random-model full --random-separator full
  highlightsense bench --input VOD.mp4 --model best_model.pt --stage separate --json
  highlightsense bench --compare-notebook --minutes 10
  highlightsense bench --rss-minutes 10 60"""


def add_flags(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("input")
    src.add_argument("--input", metavar="FILE",
                     help="media file to measure on (default: a generated VOD)")
    src.add_argument("--minutes", type=float, default=10.0, metavar="M",
                     help="length of the generated VOD, in minutes (default %(default)g)")
    src.add_argument("--input-seed", type=int, default=0, metavar="N",
                     help="random seed of the generated VOD (default %(default)s)")
    src.add_argument("--container", default="m4a", metavar="FORMAT",
                     help=f"file format of the generated VOD: {', '.join(AUDIO_CONTAINERS)} "
                          f"(audio only; default m4a) or {', '.join(VIDEO_CONTAINERS)} (with a "
                          "small video)")
    m = p.add_argument_group("models (as detect takes them; default: the loudness scorer)")
    which = m.add_mutually_exclusive_group()
    which.add_argument("--model", metavar="PATH", help="CRNN checkpoint")
    which.add_argument("--random-model", nargs="?", const="full", choices=support.CRNN_SIZES,
                       metavar="SIZE", help="a CRNN with random weights: full (the notebook's "
                                            "size; what a bare --random-model takes) or small")
    sep = m.add_mutually_exclusive_group()
    sep.add_argument("--separator", metavar="NAME_OR_PATH",
                     help="demucs model (name, .th, .safetensors or repo folder; with a CRNN)")
    sep.add_argument("--random-separator", nargs="?", const="full",
                     choices=support.SEPARATOR_SIZES, metavar="SIZE",
                     help="an HTDemucs with random weights: full (htdemucs's shape; what a bare "
                          "--random-separator takes), small (7.8 s segments) or tiny (2 s "
                          "segments)")
    m.add_argument("--device", default="auto", metavar="D",
                   help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    m.add_argument("--separator-batch", type=int, metavar="N", help="Demucs segments per call")
    m.add_argument("--batch-size", type=int, metavar="N", help="windows per scoring call")
    m.add_argument("--half", action="store_true", help="float16 separation (CUDA)")
    m.add_argument("--single-pass", action="store_true",
                   help="no second pass for the whole-VOD dB reference")
    m.add_argument("--threads", type=int, metavar="N",
                   help="torch threads in the jobs (and OMP/MKL threads in the demucs processes "
                        "of the notebook's way)")
    run = p.add_argument_group("what to run")
    run.add_argument("--stage", choices=STAGE_NAMES, metavar="NAME",
                     help="measure one stage alone, fed its real upstream output from memory: "
                          f"{', '.join(STAGE_NAMES)}")
    run.add_argument("--compare-notebook", dest="compare_seed", action="store_true",
                     help="also do the whole job the original notebook's way on the same input "
                          "and model files, and print the ratios")
    run.add_argument("--notebook-shifts", dest="seed_shifts", type=int, default=1, metavar="N",
                     help="demucs --shifts in the notebook's way (default 1, as the notebook "
                          "ran demucs; 0 makes it deterministic)")
    # The first spellings ("seed": the notebook this engine grew from), kept for scripts.
    run.add_argument("--compare-seed", dest="compare_seed", action="store_true",
                     default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    run.add_argument("--seed-shifts", dest="seed_shifts", type=int, default=argparse.SUPPRESS,
                     help=argparse.SUPPRESS)
    run.add_argument("--batch", action="store_true",
                     help="measure batch: 1 against 2 workers, local and on Ray, and one long "
                          "VOD in shards (benchmarks/batch_bench.py; its flags below)")
    run.add_argument("--rss-minutes", type=float, nargs="+", metavar="M",
                     help="peak RSS of the engine on generated VODs of these lengths (minutes)")
    run.add_argument("--rss-separator", default="small", choices=support.SEPARATOR_SIZES,
                     metavar="SIZE", help="random Demucs for --rss-minutes: full, small or tiny "
                                          "(default %(default)s)")
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print one JSON object, no table")
    out.add_argument("--json-out", metavar="FILE", help="also write the JSON object here")
    out.add_argument("--tmp", metavar="DIR",
                     help="existing folder for the generated inputs, models and outputs (default: "
                          "the system's temporary folder)")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    from highlightsense.benchmarks import batch_bench

    batch_bench.add_flags(p)


def _describe(p: argparse.ArgumentParser) -> None:
    p.description = textwrap.fill(DESCRIPTION, 79)
    p.epilog = EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter  # the examples' lines as they are


def declare(p: argparse.ArgumentParser) -> None:
    """Fill the CLI's `bench` parser: its description and flags. engine/cli.py declares the
    command (and its one-line help) without importing this module, and calls this only when the
    command is bench, so that measurement code stays out of the other commands' runs."""
    _describe(p)
    add_flags(p)


# ---- the engine job (runs in a fresh child process) -------------------------------------------

def _logging(quiet: bool) -> None:
    log = logging.getLogger("highlightsense")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False


class _Monitor:
    """The pipeline's progress callback: engine progress lines, and queue depth samples."""

    def __init__(self, duration, quiet: bool):
        from highlightsense.engine.progress import Progress

        self.progress = None if quiet else Progress(duration)
        self.sums: List[float] = []
        self.samples = 0

    def __call__(self, m) -> None:
        if m.finished is None:
            if not self.sums:
                self.sums = [0.0] * len(m.stages)
            self.samples += 1
            for i, s in enumerate(m.stages):
                self.sums[i] += s.queue_depth
        if self.progress:
            self.progress(m)

    def means(self, n: int) -> List[Optional[float]]:
        if not self.samples:
            return [None] * n
        return [s / self.samples for s in self.sums]


def _stage_rows(metrics, monitor: _Monitor, audio_sec: float) -> List[dict]:
    wall = metrics.wall_sec
    rows = []
    for i, (s, mean) in enumerate(zip(metrics.stages, monitor.means(len(metrics.stages)))):
        rows.append({
            "name": s.name, "chunks_in": s.chunks_in, "chunks_out": s.chunks_out,
            "busy_sec": s.busy_sec, "busy_share": s.busy_sec / wall if wall > 0 else None,
            "x_realtime": audio_sec / s.busy_sec if s.busy_sec > 0 else None,
            "queue_max": s.queue_max if i else None,
            "queue_mean": mean if i else None})
    return rows


def _timers(stages, scorer, timers=None, hooked=None) -> dict:
    """Forward timers on the Demucs model(s) of the separate stage and on the CRNN; with
    `timers` and `hooked` (ids of the models timed already), adds the models not yet timed."""
    from demucs.apply import BagOfModels

    timers = {} if timers is None else timers
    hooked = set() if hooked is None else hooked
    separate = next((s for s in stages if s.name == "separate"), None)
    if separate is not None:
        members = list(separate.model.models) if isinstance(separate.model, BagOfModels) else [
            separate.model]
        timers.setdefault("demucs", support.ForwardTimer("demucs", separate.device))
        for member in members:
            if id(member) not in hooked:
                hooked.add(id(member))
                timers["demucs"].attach(member)
    model = getattr(scorer, "model", None)
    if model is not None and id(model) not in hooked:
        hooked.add(id(model))
        timers["crnn"] = support.ForwardTimer("crnn", scorer.device).attach(model)
    return timers


def _models(stages, scorer) -> dict:
    info = {"scorer": scorer.name}
    if scorer.name == "crnn":
        info["crnn_parameters"] = support.parameters(scorer.model)
    separate = next((s for s in stages if s.name == "separate"), None)
    if separate is not None:
        model = separate.model
        info.update(separator_class=type(model).__name__,
                    separator_parameters=support.parameters(model),
                    separator_segment_sec=float(getattr(model, "segment", 0) or 0),
                    separator_device=str(separate.device))
    return info


def _timed_collect(t0: float):
    """A CollectScores that notes when the first scored window reaches it (seconds after t0)."""
    from highlightsense.operators.select import CollectScores

    class TimedCollect(CollectScores):
        first_sec = None

        def process(self, scored):
            if self.first_sec is None and len(scored):
                self.first_sec = time.perf_counter() - t0
            return super().process(scored)

    return TimedCollect()


def _operators(cfg, scorer, stages, collect):
    from highlightsense.operators.score import Score
    from highlightsense.operators.windows import Windows

    return [*stages, Windows.for_scorer(cfg, scorer), Score(scorer), collect]


class _Probe(RunObserver):
    """Measures the engine's real `detect` from the inside, in the job's process only, through
    detect's observer hooks: forward timers go on the models it loads, the first scored window
    and the queue depths are seen, and the progress record's writes are counted apart."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.t0 = time.perf_counter()
        self.first_sec = self.pipeline_started = None
        self.scorer, self.stages, self.timers, self.monitors = None, [], {}, []
        self.hooked = set()
        self.second_pass_sec, self.record_bytes, self.record_saves = None, 0, 0
        self.exact_from_sec = self.rescored = None
        self._second_began = None

    def scorer_ready(self, scorer) -> None:
        self.scorer = scorer
        _timers([], scorer, self.timers, self.hooked)

    def stages_built(self, stages) -> None:
        self.stages.append(stages)
        _timers(stages, None, self.timers, self.hooked)

    def pass_started(self, name, duration_sec) -> None:
        if self.pipeline_started is None:
            self.pipeline_started = time.perf_counter() - self.t0
        self.monitors.append(_Monitor(duration_sec, True))  # detect shows the progress itself

    def progress(self, metrics) -> None:
        self.monitors[-1](metrics)

    def scored(self, scored) -> None:
        if self.first_sec is None and len(scored):
            self.first_sec = time.perf_counter() - self.t0

    def second_pass(self, exact_from_frame, windows) -> None:
        self.exact_from_sec = exact_from_frame * 512 / 22050
        self.rescored = windows
        self._second_began = time.perf_counter()

    def second_pass_done(self) -> None:
        self.second_pass_sec = time.perf_counter() - self._second_began

    def record_saved(self, record) -> None:
        self.record_saves += 1
        self.record_bytes += record.path.stat().st_size


def _outputs(folder: Path) -> List[Path]:
    return [p for p in Path(folder).rglob("*") if p.is_file()]


def engine_job(spec: dict) -> dict:
    """The engine's whole job (engine.detect.detect, no clips) on one input, or one stage of
    it (spec['stage']), measured in this process."""
    import torch

    from highlightsense.engine.config import load_config
    from highlightsense.engine.memory import tune_malloc

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    tune_malloc(separating=bool(spec.get("model")))  # as the CLI does
    quiet = spec.get("quiet", False)
    _logging(quiet)
    from highlightsense.engine import detect as D
    from highlightsense.engine import passes

    overrides = {k: spec.get(k) for k in ("model", "separator", "device", "separator_batch",
                                          "batch_size")}
    overrides.update(half=spec.get("half") or None, clips=False,
                     exact_reference=False if spec.get("single_pass") else None)
    support.start_io()
    rss_before = support.rss_mb()
    if spec.get("stage"):
        t0 = time.perf_counter()
        cfg = load_config(overrides=overrides)
        scorer = passes.build_scorer(cfg)
        stages = scorer.feature_stages(cfg)
        timers = _timers(stages, scorer)
        source = passes.open_source(spec["input"], cfg)
        result = {"setup_sec": time.perf_counter() - t0, "input_codec": source.info.codec}
        result.update(_one_stage(spec["stage"], cfg, scorer, stages, source, timers, t0, quiet))
    else:
        probe = _Probe(quiet)
        cfg = load_config(overrides=overrides)
        out_dir = Path(spec["out_dir"])
        probe.t0 = time.perf_counter()
        done = D.detect(spec["input"], out_dir, cfg, show_progress=not quiet, observer=probe)
        wall = time.perf_counter() - probe.t0
        scorer, stages, timers = probe.scorer, probe.stages[0], probe.timers
        metrics = done.metrics
        monitor = probe.monitors[0] if probe.monitors else _Monitor(None, True)  # no depths
        audio_sec = metrics.position_sec
        outputs = _outputs(out_dir)
        result = {
            "input_codec": _codec(spec["input"]),
            "setup_sec": probe.pipeline_started, "audio_sec": audio_sec, "wall_sec": wall,
            "pipeline_wall_sec": metrics.wall_sec, "x_realtime": audio_sec / wall,
            "first_window_sec": probe.first_sec,
            "second_pass": None if probe.second_pass_sec is None else {
                "wall_sec": probe.second_pass_sec, "windows_rescored": probe.rescored,
                "exact_from_sec": probe.exact_from_sec},
            "stages": _stage_rows(metrics, monitor, audio_sec),
            "windows": len(done.windows), "confidences": [w.confidence for w in done.windows],
            "top": [w.index for w in done.selection.top], "threshold": done.selection.threshold,
            "outputs": {p.name: p.stat().st_size for p in outputs},
            "output_bytes": sum(p.stat().st_size for p in outputs),
            "output_pages": sum(support.pages(p.stat().st_size) for p in outputs),
            "record_saves": probe.record_saves, "record_bytes": probe.record_bytes,
            "record_pages": probe.record_saves and support.pages(
                probe.record_bytes // probe.record_saves) * probe.record_saves}
    device = getattr(scorer, "device", None) or torch.device("cpu")
    model_sec = sum(t.sec for t in timers.values())
    result.update({
        "kind": "engine", "input": spec["input"], "models": _models(stages, scorer),
        "rss_before_mb": rss_before, "batch_size": cfg.batch_size or scorer.batch_size,
        "separator_batch": cfg.separator_batch, "half": cfg.half,
        "model_compute": {name: t.figures() for name, t in timers.items()},
        "model_compute_sec": model_sec,
        "wall_over_model": result["wall_sec"] / model_sec if model_sec > 0 else None,
        "device": support.device_info(device)})
    if device.type == "cuda":
        result["gpu_peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    result["peak_rss_mb"] = support.peak_rss_mb()
    result["io"] = support.final_io()
    return result


def _codec(path: str) -> str:
    import av

    with av.open(path) as container:
        return container.streams.audio[0].codec_context.name


def _one_stage(name, cfg, scorer, stages, source, timers, t0, quiet) -> dict:
    """Run the stages before `name` into memory, then `name` alone, fed from memory."""
    from highlightsense.engine.operator import Operator, Source, SourceInfo
    from highlightsense.engine.pipeline import Pipeline

    class Keep(Operator):
        name, threaded = "keep", False

        def __init__(self):
            self.items = deque()

        def process(self, item):
            self.items.append(item)
            return []

    class Drain(Operator):
        name, threaded = "drain", False

        def process(self, item):
            return []

    class Replay(Source):
        name = "replay"

        def __init__(self, items, duration):
            self.items, self.info = items, SourceInfo(duration_sec=duration)

        def __iter__(self):
            while self.items:
                yield self.items.popleft()  # handed on: held once, by the queues or the stage

    ops = _operators(cfg, scorer, stages, _timed_collect(t0))
    names = ["decode"] + [op.name for op in ops]
    if name not in names:
        raise SystemExit(f"bench: no stage {name!r} in this pipeline (its stages: "
                         f"{', '.join(names)})")
    k = names.index(name)
    if k == 0:
        prep_sec, audio_sec, measured = 0.0, None, [Drain()]
        feed = source
    else:
        keep = Keep()
        monitor = _Monitor(source.info.duration_sec, quiet)
        began = time.perf_counter()
        if not quiet:
            print(f"running the stages before {name} into memory", file=sys.stderr, flush=True)
        prep = asyncio.run(Pipeline(source, ops[:k - 1] + [keep], queue_size=cfg.queue_size,
                                    on_progress=monitor).run())
        prep_sec, audio_sec = time.perf_counter() - began, prep.position_sec
        for t in timers.values():  # only the measured run's forward calls count
            t.sec, t.calls = 0.0, 0
        fresh = _operators(cfg, scorer, scorer.feature_stages(cfg), _timed_collect(t0))
        measured = [fresh[k - 1], Drain()]
        feed = Replay(keep.items, audio_sec)
        if not quiet:
            print(f"{name} alone, fed {len(keep.items)} chunks from memory (RSS now "
                  f"{support.rss_mb():.0f} MB)", file=sys.stderr, flush=True)
    monitor = _Monitor(source.info.duration_sec, quiet)
    began = time.perf_counter()
    metrics = asyncio.run(Pipeline(feed, measured, queue_size=cfg.queue_size,
                                   on_progress=monitor).run())
    wall = time.perf_counter() - began
    audio_sec = audio_sec if audio_sec is not None else metrics.position_sec
    return {"stage": name, "prep_sec": prep_sec, "audio_sec": audio_sec, "wall_sec": wall,
            "pipeline_wall_sec": metrics.wall_sec, "x_realtime": audio_sec / wall,
            "first_window_sec": None, "stages": _stage_rows(metrics, monitor, audio_sec)}


# ---- the parent: inputs, models, jobs, tables -------------------------------------------------

def _say(args, text: str) -> None:
    if not args.quiet:
        print(text, file=sys.stderr, flush=True)


def _job_command(kind: str, spec: dict) -> List[str]:
    module = "bench" if kind == "engine" else "seed_way"
    return [sys.executable, "-m", f"highlightsense.benchmarks.{module}", "--job", json.dumps(spec)]


def _job_env(args) -> dict:
    env = dict(os.environ)
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    return env


def _prepare_input(args, tmp: Path, minutes: Optional[float] = None) -> dict:
    if args.input and minutes is None:
        path = Path(args.input)
        if not path.is_file():
            raise HighlightSenseError(f"bench: no input file {path}")
        return {"path": str(path), "generated": False, "bytes": path.stat().st_size}
    minutes = args.minutes if minutes is None else minutes
    path = tmp / f"vod_{minutes:g}min.{args.container.lstrip('.')}"
    _say(args, f"generating a {minutes:g}-minute synthetic VOD ({path.name})")
    began = time.perf_counter()
    support.generate_input(path, minutes, args.input_seed,
                           video=path.suffix.lower().lstrip(".") in VIDEO_CONTAINERS)
    return {"path": str(path), "generated": True, "minutes": minutes,
            "bytes": path.stat().st_size, "generate_sec": time.perf_counter() - began}


def _prepare_models(args, tmp: Path, separator_size: Optional[str] = None) -> dict:
    """Model files (random ones written here) and how to describe them."""
    models = {"model": args.model, "separator": args.separator, "random_model": None,
              "random_separator": None}
    if args.random_model:
        path = tmp / f"crnn_{args.random_model}.pt"
        if not path.exists():
            _say(args, f"writing a {args.random_model} CRNN with random weights")
            support.write_random_crnn(path, args.random_model)
        models.update(model=str(path), random_model=args.random_model)
    size = separator_size or args.random_separator
    if size:
        path = tmp / f"separator_{size}" / "bench.th"
        if not path.exists():
            _say(args, f"writing a {size} HTDemucs with random weights")
            support.write_random_separator(path.parent, size)
        models.update(separator=str(path), random_separator=size)
    if models["separator"] and not models["model"]:
        raise HighlightSenseError("bench: a separator runs only with a CRNN: add --model PATH "
                                 "or --random-model")
    return models


def _engine_spec(args, input_path: str, models: dict, stage=None, out_dir=None) -> dict:
    return {"input": input_path, "out_dir": out_dir, "model": models["model"],
            "separator": models["separator"], "device": args.device, "separator_batch": args.separator_batch,
            "batch_size": args.batch_size, "half": args.half, "single_pass": args.single_pass,
            "threads": args.threads, "stage": stage, "quiet": args.quiet}


def run_engine(args, input_info: dict, models: dict, tmp: Path, stage=None) -> dict:
    """The engine's job in a fresh process; its outputs go to a new folder under tmp."""
    out_dir = Path(tempfile.mkdtemp(prefix="engine-out-", dir=tmp))
    result = support.run_job(_job_command("engine", _engine_spec(
        args, input_info["path"], models, stage, str(out_dir))), "engine", args.quiet,
        _job_env(args))
    result["input_info"] = input_info
    result["filesystem_tmp"] = support.filesystem(out_dir)
    result["random"] = {"model": models["random_model"], "separator": models["random_separator"]}
    # What the job wrote, less its final outputs and its progress record (the issue's
    # allowance): audio or feature intermediates, if any.
    result["disk_bytes"] = max(0, result["io"]["write_bytes"] - result.get("output_pages", 0)
                               - result.get("record_pages", 0))
    result["file_write_calls_bytes"] = max(0, result["file_write_calls_bytes"] - result.get(
        "output_bytes", 0) - result.get("record_bytes", 0))
    return result


def _readable_file(flag: str, value: str) -> None:
    path = Path(value).expanduser()
    if path.is_dir():
        raise HighlightSenseError(f"bench: {flag} {value} is a folder; give a file")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise HighlightSenseError(f"bench: cannot read {flag} {value}: {e.strerror}") from None


def _writable_file(flag: str, value: str) -> None:
    """Opened for appending (and removed again if it was not there): what writing it at the
    end needs, found out before the measuring, not after."""
    path = Path(value).expanduser()
    if path.is_dir():
        raise HighlightSenseError(f"bench: {flag} {value} is a folder; give a file name")
    existed = path.exists()
    try:
        with open(path, "a"):
            pass
    except OSError as e:
        raise HighlightSenseError(f"bench: cannot write {flag} {value}: {e.strerror}") from None
    if not existed:
        path.unlink()


def check_args(args) -> None:
    """Every flag the measuring needs, before any work: a mistake costs one line at once, not a
    traceback after minutes of generating and measuring."""
    def number(flag, value, least, integer=False):
        if value is not None and not (math.isfinite(value) and value >= least and (
                integer or value > 0)):
            what = f"a whole number of at least {least}" if integer else "a positive number"
            raise HighlightSenseError(f"bench: {flag} takes {what}, not {value:g}")

    number("--minutes", args.minutes, 0)
    for minutes in args.rss_minutes or ():
        number("--rss-minutes", minutes, 0)
    number("--input-seed", args.input_seed, 0, integer=True)
    number("--notebook-shifts", args.seed_shifts, 0, integer=True)
    for flag, value in (("--threads", args.threads), ("--separator-batch", args.separator_batch),
                        ("--batch-size", args.batch_size)):
        number(flag, value, 1, integer=True)
    if args.container.lstrip(".").lower() not in CONTAINERS:
        raise HighlightSenseError(f"bench: --container {args.container}: the generated VOD can "
                                  f"be {', '.join(CONTAINERS)}")
    if args.compare_seed and args.stage:
        raise HighlightSenseError("bench: --compare-notebook runs whole jobs; drop --stage")
    if args.input:
        _readable_file("--input", args.input)
    if args.model:
        _readable_file("--model", args.model)
    if args.separator:
        separator = Path(args.separator).expanduser()
        # as model.separator takes it: a path if it looks like one, else a demucs model name
        if not separator.exists() and (separator.suffix in (".th", ".safetensors", ".yaml") or
                                       args.separator.startswith((".", "/", "~"))):
            raise HighlightSenseError(f"bench: no separator file or folder {args.separator}")
    if args.tmp:
        folder = Path(args.tmp).expanduser()
        if not folder.is_dir():
            raise HighlightSenseError(f"bench: --tmp {args.tmp}: " + (
                "not a folder" if folder.exists() else "no such folder (make it first)"))
    if args.json_out:
        _writable_file("--json-out", args.json_out)
    if args.device not in (None, "", "auto") or args.half:
        from highlightsense.model.separator import check_half, pick_device

        check_half(pick_device(args.device), args.half)


def _work_folder(args) -> tempfile.TemporaryDirectory:
    where = args.tmp or tempfile.gettempdir()
    try:
        return tempfile.TemporaryDirectory(prefix="hs-bench-", dir=where)
    except OSError as e:
        raise HighlightSenseError(f"bench: cannot make a work folder in {where}: "
                                  f"{e.strerror}") from None


def run(args) -> int:
    """`highlightsense bench`: see the module's docstring."""
    if args.batch:
        from highlightsense.benchmarks import batch_bench

        return batch_bench.run(args)
    check_args(args)
    if args.compare_seed and not (args.model or args.random_model):
        args.random_model = "full"
        if not (args.separator or args.random_separator):
            args.random_separator = "full"
    if args.compare_seed and not (args.separator or args.random_separator):
        args.separator = "htdemucs"  # what detect --model separates with
    if (args.separator or args.random_separator) and not (args.model or args.random_model):
        raise HighlightSenseError("bench: a separator runs only with a CRNN: add --model PATH "
                                  "or --random-model")
    report = {}
    try:
        with _work_folder(args) as tmp:
            tmp = Path(tmp)
            only_rss = args.rss_minutes and not (args.compare_seed or args.stage or args.input)
            if not only_rss:
                input_info = _prepare_input(args, tmp)
                models = _prepare_models(args, tmp)
                _say(args, "running the engine")
                report["engine"] = run_engine(args, input_info, models, tmp, args.stage)
                if args.compare_seed:
                    from highlightsense.benchmarks.bench_compare import run_seed

                    _say(args, "running the notebook's way")
                    report["seed"] = run_seed(args, input_info, models, tmp)
            if args.rss_minutes:
                from highlightsense.benchmarks.bench_compare import rss_runs

                report["rss"] = rss_runs(args, tmp)
        if "seed" in report or "rss" in report:
            from highlightsense.benchmarks.bench_compare import comparison

            report["comparison"] = comparison(report)
        if args.json_out:
            Path(args.json_out).expanduser().write_text(json.dumps(report, indent=1))
    except OSError as e:  # the disk filled or a folder went away while measuring
        where = f": {e.filename}" if e.filename else ""
        raise HighlightSenseError(f"bench: {e.strerror or e}{where}") from None
    if args.json:
        print(json.dumps(report))
    else:
        print(format_report(report))
    return 0


# ---- tables -----------------------------------------------------------------------------------

def _num(value, fmt: str, none: str = "-") -> str:
    return none if value is None or (isinstance(value, float) and math.isnan(value)) else \
        format(value, fmt)


def human_bytes(n: Optional[float]) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def format_engine(r: dict) -> str:
    info, models, rnd = r["input_info"], r["models"], r.get("random", {})
    lines = []
    what = (f"{info['minutes']:g}-minute synthetic VOD, generated" if info["generated"]
            else "given file")
    lines.append(f"input    : {Path(info['path']).name} ({what}; {r['input_codec']}, "
                 f"{human_bytes(info['bytes'])}), {r['audio_sec']:.1f} s of audio")
    if models["scorer"] == "crnn":
        sep = (f"{models['separator_class']} {models['separator_parameters']:,} parameters"
               f" (segment {models['separator_segment_sec']:.1f} s"
               + (f", random weights, {rnd['separator']} shape" if rnd.get("separator") else "")
               + f"), batch {r['separator_batch']}" + (", float16" if r["half"] else ""))
        crnn = (f"CRNN {models['crnn_parameters']:,} parameters"
                + (f" (random weights, {rnd['model']})" if rnd.get("model") else "")
                + f", batch {r['batch_size']}")
        lines.append(f"models   : {sep}; {crnn}")
    else:
        lines.append("models   : loudness scorer (no model)")
    lines.append(f"device   : {support.describe_device(r['device'])}; load average "
                 f"{r['device']['load_avg']} at the end")
    if r.get("stage") == "decode":
        lines.append("stage    : decode alone (its output dropped)")
    elif r.get("stage"):
        lines.append(f"stage    : {r['stage']} alone, fed from memory (the stages before it ran "
                     f"first: {r['prep_sec']:.1f} s, not counted)")
    lines.append("")
    lines.append(f"{'stage':<18} {'chunks in':>9} {'out':>6} {'busy s':>8} {'busy %':>7} "
                 f"{'x realtime':>10} {'queue max':>9} {'mean':>5}")
    for s in r["stages"]:
        lines.append(
            f"{s['name']:<18} {_num(s['chunks_in'] or None, 'd'):>9} {s['chunks_out']:>6} "
            f"{s['busy_sec']:>8.2f} {_num(s['busy_share'] and 100 * s['busy_share'], '.1f'):>7} "
            f"{_num(s['x_realtime'], '.1f'):>10} {_num(s['queue_max'], 'd'):>9} "
            f"{_num(s['queue_mean'], '.1f'):>5}")
    lines.append("")
    second = r.get("second_pass")
    parts = [f"setup {r['setup_sec']:.1f} s", f"pipeline {r['pipeline_wall_sec']:.1f} s"]
    if second:
        what = ("" if second.get("windows_rescored") is None else
                f" ({second['windows_rescored']} windows before "
                f"{second['exact_from_sec']:.0f} s rescored)")
        parts.append(f"second pass {second['wall_sec']:.1f} s{what}")
    lines.append(f"{'stage run' if r.get('stage') else 'end to end'}: {r['wall_sec']:.1f} s wall "
                 f"({', '.join(parts)}), {r['x_realtime']:.2f}x realtime")
    if not r.get("stage"):
        lines.append(f"first scored window: {_num(r['first_window_sec'], '.1f')} s after the "
                     f"start; {r['windows']} windows")
    mc = r["model_compute"]
    if mc:
        per = ", ".join(f"{k} {v['sec']:.1f} s in {v['calls']} calls" for k, v in mc.items())
        lines.append(f"model compute: {r['model_compute_sec']:.1f} s ({per}); wall / model "
                     f"compute = {_num(r['wall_over_model'], '.2f')}")
    else:
        lines.append("model compute: none (no model)")
    gpu = f", GPU peak {r['gpu_peak_memory_mb']:.0f} MB" if "gpu_peak_memory_mb" in r else ""
    lines.append(f"peak RSS : {r['peak_rss_mb']:.0f} MB ({r['rss_before_mb']:.0f} MB after "
                 f"imports){gpu}")
    kept = ""
    if "output_bytes" in r:
        kept = (f"; not counted: outputs {human_bytes(r['output_bytes'])} "
                f"({len(r['outputs'])} files), progress record {human_bytes(r['record_bytes'])} "
                f"in {r['record_saves']} saves")
    lines.append(f"written  : {human_bytes(r['file_write_calls_bytes'])} of file data beyond "
                 f"outputs and record (write() calls: wchar less {human_bytes(r['pipe_bytes'])} "
                 f"of progress pipes); {human_bytes(r['disk_bytes'])} sent to disk (write_bytes: "
                 f"data and the filesystem metadata the job dirtied){kept}; folder on "
                 f"{r['filesystem_tmp']}")
    return "\n".join(lines)


def format_report(report: dict) -> str:
    parts = []
    if "engine" in report:
        parts.append("== engine ==\n" + format_engine(report["engine"]))
    if "seed" in report:
        from highlightsense.benchmarks.seed_way import format_seed

        parts.append("== the notebook's way ==\n" + format_seed(report["seed"]))
    if "comparison" in report:
        from highlightsense.benchmarks.bench_compare import format_comparison

        parts.append(format_comparison(report))
    return "\n\n".join(parts)


# ---- entry points -----------------------------------------------------------------------------

def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m highlightsense.benchmarks.bench")
    declare(p)
    p.add_argument("--job", help=argparse.SUPPRESS)  # a measured job, in this fresh process
    args = p.parse_args(argv)
    try:
        if args.job:
            support.finish_job(engine_job(json.loads(args.job)))
        return run(args)
    except HighlightSenseError as e:  # in a job too: run_job passes this line on, alone
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
