"""`detect` and `select`: build the streaming pipeline for one input, run it, choose the
highlights and write the outputs."""
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import List, Optional

from highlightsense.engine import grid
from highlightsense.engine.config import Config
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.engine.files import OutputError
from highlightsense.engine.pipeline import Pipeline, PipelineMetrics, run_async
from highlightsense.engine.chunks import FrameChunk
from highlightsense.engine.operator import Source
from highlightsense.engine.progress import Progress, clock
from highlightsense.engine.resume import Checkpoints, ProgressRecord, fingerprint
from highlightsense.operators.sinks import plot, tables
from highlightsense.operators.score import Score
from highlightsense.operators.select import CollectScores, Selection, WindowScore, select_highlights
from highlightsense.operators.windows import Windows

log = logging.getLogger("highlightsense")

LEVEL_BYTES = 2 * 80 * 4  # one frame's held levels: two stems, 80 mels, float32


@dataclass
class DetectResult:
    out_dir: Path
    windows: List[WindowScore]
    selection: Selection
    highlights: List[dict]
    metrics: Optional[PipelineMetrics]  # the first pass's (None when a resume skipped it)


def prepare_out_dir(out_dir: Path) -> Path:
    """Creates the folder and proves it is writable before any work is done."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise HighlightSenseError(f"{out_dir} is a file, not a folder; choose another --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".highlightsense-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise HighlightSenseError(
            f"cannot write to output folder {out_dir}: {e.strerror}; choose another with --out"
        ) from None
    return out_dir


def build_scorer(cfg: Config):
    if cfg.model is None:
        from highlightsense.model.loudness import LoudnessScorer

        log.info("no --model given: scoring with the weights-free loudness heuristic")
        return LoudnessScorer(window_sec=cfg.window_sec)
    from highlightsense.model.checkpoint import load_model
    from highlightsense.model.crnn_scorer import CrnnScorer
    from highlightsense.model.separator import pick_device

    device = pick_device(cfg.device)
    return CrnnScorer(load_model(cfg.model, device), device, cfg.batch_size)


def build_stages(cfg: Config, scorer, separator_model=None, reference_db=None, raises=None,
                 emit_from: int = 0, hold_frames: int = 0) -> list:
    """The operators between the decoder and the windows: what the scorer reads. A resumed run
    passes the features' history (`raises`) and the frame it resumes at (`emit_from`)."""
    if scorer.name != "crnn":
        return [scorer.features()]  # the loudness scorer listens to the mix: no separation
    from highlightsense.operators.mel_features import MelFeatures
    from highlightsense.operators.separate import Separate

    separate = Separate(separator_model or cfg.separator, device=cfg.device,
                        batch_size=cfg.separator_batch, half=cfg.half)
    return [separate, MelFeatures(device=scorer.device, reference_db=reference_db, raises=raises,
                                  emit_from=emit_from, hold_frames=hold_frames)]


def restart_sample(stages: list, frame: int) -> int:
    """The stream sample a restart must begin at for every stage to give the frames from `frame`
    on exactly as an uninterrupted run does: each stage, last first, asks for its input early
    enough to fill its buffers (the features' context, Demucs's segments)."""
    sample = stages[-1].restart_sample(frame)
    for stage in reversed(stages[:-1]):
        sample = stage.restart_sample(sample)
    return sample


def run_pipeline(source, stages, scorer, cfg: Config, progress=None, first_window: int = 0,
                 collect: Optional[CollectScores] = None, checkpoints=None):
    windows = Windows(cfg.window_frames, cfg.stride_frames,
                      pad_frames=getattr(scorer, "pad_frames", None) or cfg.window_frames,
                      batch_size=cfg.batch_size or scorer.batch_size, first_index=first_window)
    collect = collect or CollectScores()
    hooks = [h for h in (progress, checkpoints) if h]

    def on_progress(metrics):
        for hook in hooks:
            hook(metrics)

    pipeline = Pipeline(source, [*stages, windows, Score(scorer), collect],
                        queue_size=cfg.queue_size, on_progress=on_progress if hooks else None)
    start_sec = getattr(source, "start_sample", 0) / grid.AUDIO_RATE
    pipeline.metrics.start_sec = pipeline.metrics.position_sec = start_sec
    metrics = run_async(pipeline.run())
    return collect.windows, metrics


class Prefix(Source):
    """The first `samples` samples of a source (a second pass over the start of a file)."""

    name = "decode"

    def __init__(self, source: Source, samples: int):
        self.source, self.samples = source, samples
        self.duration_sec = samples / grid.AUDIO_RATE
        self.start_sample = getattr(source, "start_sample", 0)

    def __iter__(self):
        for chunk in self.source:
            if chunk.start >= self.samples:
                break
            if chunk.end > self.samples:
                chunk = replace(chunk, samples=chunk.samples[..., :self.samples - chunk.start])
            yield chunk

    def close(self) -> None:
        self.source.close()


class Limited(Source):
    """A source that must end within `max_sec` of stream time (--max-duration): a stream that
    runs on past it (a live URL, a file whose header lies) stops the run with an error."""

    name = "decode"

    def __init__(self, source: Source, max_sec: float):
        self.source, self.max_sec = source, max_sec
        self.limit = round(max_sec * grid.AUDIO_RATE)
        self.duration_sec = source.duration_sec  # a class attribute: __getattr__ never sees it

    def __getattr__(self, name):  # origin_sec, duration_sec, sync_points, ... of the source
        return getattr(self.source, name)

    def __iter__(self):
        for chunk in self.source:
            if chunk.end > self.limit:
                raise HighlightSenseError(
                    f"the input runs past --max-duration {clock(self.max_sec)}; raise the limit "
                    f"(--max-duration H:MM:SS) or cut the input")
            yield chunk

    def close(self) -> None:
        self.source.close()


def open_source(input_path: str, cfg: Config, start_sample: int = 0,
                sync_points=None) -> Source:
    """The decoder for a media file, or for a URL (resolved with yt-dlp, decoded as it arrives,
    nothing downloaded first). A file can be opened at a later sample (a resumed run)."""
    from highlightsense.operators.sources.decode import AudioDecoder
    from highlightsense.operators.sources.resolve import is_url, open_audio

    if is_url(input_path):
        source = open_audio(input_path, cfg.audio_stream, cfg.chunk_sec,
                            parallel=cfg.hls_fragments)
    else:
        source = AudioDecoder(input_path, stream_index=cfg.audio_stream, chunk_sec=cfg.chunk_sec,
                              start_sample=start_sample, sync_points=sync_points)
    duration = getattr(source, "duration_sec", None)
    if cfg.max_duration_sec is not None:
        if duration is not None and duration > cfg.max_duration_sec:
            source.close()
            raise HighlightSenseError(
                f"{input_path} is {clock(duration)} long, over --max-duration "
                f"{clock(cfg.max_duration_sec)}; raise the limit or cut the input")
        source = Limited(source, cfg.max_duration_sec)
    return source


def _batch_start(count: int, batch_size: int) -> int:
    """Where a resumed pass starts: the first window of the batch after the last whole one, so
    its batches hold the same windows as an uninterrupted run's (and score bit for bit alike)."""
    return count // batch_size * batch_size


def first_pass(input_path: str, cfg: Config, scorer, record: ProgressRecord,
               show_progress: bool):
    """Score every window, from the record's last whole batch on. Returns (windows, source,
    stages, metrics)."""
    first = _batch_start(len(record.windows), cfg.batch_size)
    history = record.features["raises"] if record.features else None
    # A run from the start keeps the first levels in memory for the second pass (see there).
    hold = cfg.rescore_cache_mb * 2 ** 20 // LEVEL_BYTES if cfg.exact_reference and not first else 0
    stages = build_stages(cfg, scorer, raises=history, emit_from=first * cfg.stride_frames,
                          hold_frames=hold)
    start = restart_sample(stages, first * cfg.stride_frames) if first else 0
    source = open_source(input_path, cfg, start, record.decoder.get("sync_points"))
    if first:
        record.note_resume(1, first, grid.frames_to_sec(first * cfg.stride_frames),
                           start / grid.AUDIO_RATE)
    collect = CollectScores()
    collect.windows = record.windows[:first]
    features = stages[-1]

    def snapshot(rec: ProgressRecord) -> None:
        rec.windows = list(collect.windows)  # first: the history read next then covers them
        if hasattr(features, "raises"):
            rec.features = {"raises": features.raises}
        rec.decoder = {"sync_points": list(getattr(source, "sync_points", ()))}

    progress = Progress(source.duration_sec) if show_progress else None
    checkpoints = Checkpoints(record, cfg.progress_every_sec, snapshot) if record.enabled else None
    windows, metrics = run_pipeline(source, stages, scorer, cfg, progress, first, collect,
                                    checkpoints)
    return windows, source, stages, metrics


class HeldFrames(Source):
    """The first pass's held levels as features under the final reference, up to `stop` (a
    frame index): the second pass without decoding or separating again."""

    name = "held_levels"
    start_sample = 0

    def __init__(self, features, reference_db, stop: int):
        self.features, self.reference_db, self.stop = features, reference_db, stop

    def __iter__(self):
        for chunk in self.features.held_features(self.reference_db):
            if chunk.start >= self.stop:
                return
            yield FrameChunk(chunk.frames[..., :self.stop - chunk.start], chunk.start)


def _held_windows(cfg: Config, features, windows: List[WindowScore], last: int) -> tuple:
    """(windows, stop frame): the second pass's windows (from 0, a whole number of batches
    unless all of them) whose frames the first pass held, and the frames they need."""
    held = features.held_frames if features is not None else range(0)
    if not held or held.start != 0:
        return 0, 0
    if held.stop >= features.frames_emitted:  # the whole stream: even a short one's window 0
        return last + 1, min(held.stop, last * cfg.stride_frames + cfg.window_frames)
    fit = sum(1 for w in windows[:last + 1]
              if w.index * cfg.stride_frames + cfg.window_frames <= held.stop)
    count = fit if fit == last + 1 else _batch_start(fit, cfg.batch_size)
    return count, (count - 1) * cfg.stride_frames + cfg.window_frames if count else 0


def rescore_prefix(input_path: str, cfg: Config, scorer, record: ProgressRecord,
                   separator_model, show_progress: bool, features=None) -> List[WindowScore]:
    """The seed's dB reference is the maximum over the whole VOD, which a stream knows only at
    its end. The first pass used the maximum so far; windows made before it reached the final
    one are scored again with the final reference: from the levels the first pass held (its
    `features`, within rescore_cache_mb), and past them in a second pass over the start of the
    file."""
    windows = record.windows
    redo = [w.index for w in windows if w.index * cfg.stride_frames < record.exact_from]
    if not redo:
        return windows
    last = max(redo)
    reference = record.features["reference_db"]
    collect = CollectScores()
    first = _batch_start(len(record.rescored), cfg.batch_size)
    collect.windows = record.rescored[:first]

    def snapshot(rec: ProgressRecord) -> None:
        rec.rescored = [w for w in collect.windows if w.index <= last]

    def checkpoints():
        return Checkpoints(record, cfg.progress_every_sec, snapshot) if record.enabled else None

    held, stop = _held_windows(cfg, features, windows, last) if not first else (0, 0)
    if held:
        log.info("second pass: %d windows scored again from the levels kept in memory (the dB "
                 "reference is now the whole VOD's maximum, as in the seed)", held)
        run_pipeline(HeldFrames(features, reference, stop), [], scorer, cfg, None, 0, collect,
                     checkpoints())
        collect.windows = [w for w in collect.windows if w.index < held]
        first = held
    if first <= last:
        stages = build_stages(cfg, scorer, separator_model, reference,
                              emit_from=first * cfg.stride_frames)
        separate, features = stages
        last_frame = last * cfg.stride_frames + cfg.window_frames - 1
        # Past the last frame wanted: the features' reach, then every Demucs segment covering it.
        samples = features.samples_through(last_frame) + separate.warmup_samples
        start = restart_sample(stages, first * cfg.stride_frames) if first else 0
        if first and not held:
            record.note_resume(2, first, grid.frames_to_sec(first * cfg.stride_frames),
                               start / grid.AUDIO_RATE)
        else:
            log.info("second pass over %s to %s (%d windows): the dB reference is now the whole "
                     "VOD's maximum, as in the seed", clock(start / grid.AUDIO_RATE),
                     clock(samples / grid.AUDIO_RATE), last + 1 - first)
        source = Prefix(open_source(input_path, cfg, start, record.decoder.get("sync_points")),
                        samples)
        progress = Progress(source.duration_sec) if show_progress else None
        run_pipeline(source, stages, scorer, cfg, progress, first, collect, checkpoints())
    rescored = {w.index: w for w in collect.windows if w.index <= last}
    return [rescored.get(w.index, w) for w in windows]


def detect(input_path: str, out_dir: Path, cfg: Config, show_progress: bool = True,
           restart: bool = False) -> DetectResult:
    out_dir = prepare_out_dir(out_dir)
    scorer = build_scorer(cfg)
    cfg = replace(cfg, batch_size=cfg.batch_size or scorer.batch_size)
    from highlightsense.operators.sources.resolve import is_url

    device = str(scorer.device) if scorer.name == "crnn" else None
    record = ProgressRecord.begin(out_dir, fingerprint(input_path, cfg, scorer.name, device),
                                  restart)
    record.enabled = not is_url(input_path)  # a URL's stream cannot be reopened at a sample
    # The completion marker of an earlier run goes first, so a failed re-run cannot leave a
    # folder that looks complete but mixes two runs.
    (out_dir / tables.SUMMARY_JSON).unlink(missing_ok=True)
    separator_model, metrics, held_features = None, None, None
    if record.phase == 1:
        windows, source, stages, metrics = first_pass(input_path, cfg, scorer, record,
                                                      show_progress)
        if not windows:
            raise HighlightSenseError(f"{input_path} contains no audio samples")
        record.windows, record.phase = windows, 2
        record.info = {
            "source": os.path.abspath(input_path) if os.path.exists(input_path) else input_path,
            "origin_sec": source.origin_sec,
            "duration_sec": metrics.position_sec,
            "has_video": bool(getattr(source, "has_video", False)),
            "audio_stream": cfg.audio_stream,
            "scorer": scorer.name,
            "model": cfg.model and os.path.abspath(cfg.model),
            "separator": cfg.separator if scorer.name == "crnn" else None,
            "corrupt_packets": getattr(source, "corrupt_packets", 0),
            "gaps_filled_sec": getattr(source, "gaps_filled_sec", 0.0),
            "wall_sec": metrics.wall_sec,
        }
        if hasattr(source, "timeline"):  # HLS: stream time to each run's timestamps, for clips
            record.info["timeline"] = [vars(e) for e in source.timeline]
        if scorer.name == "crnn":
            features = stages[-1]
            record.features = {"reference_db": features.reference_db, "raises": features.raises}
            record.exact_from = features.exact_from()
            separator_model, held_features = stages[0].model, features
        record.save()
    windows = record.windows
    if record.phase == 2:
        if scorer.name == "crnn" and cfg.exact_reference:
            windows = rescore_prefix(input_path, cfg, scorer, record, separator_model,
                                     show_progress, held_features)
        record.windows, record.rescored, record.phase = windows, [], 3
        record.save()
    info = dict(record.info, resumes=record.resumes) if record.resumes else record.info
    try:
        tables.write_scores(out_dir, windows)
        selection, highlights = finish(out_dir, windows, cfg, info)
    except (OSError, OutputError) as e:
        kept = (" (the scores are saved: it will not score again)" if record.enabled
                and record.path.exists() else "")
        reason = getattr(e, "reason", None) or e.strerror or e
        raise HighlightSenseError(
            f"cannot write the outputs in {out_dir}: {reason}; free space or fix the "
            f"folder, then run the same command again{kept}") from None
    record.remove()  # the summary is written: the run is complete
    return DetectResult(out_dir, windows, selection, highlights, metrics)


def finish(out_dir: Path, windows: List[WindowScore], cfg: Config, info: dict):
    """Selection, plot, clips and the summary: what `detect` ends with and `select` re-runs."""
    if cfg.threshold is not None:
        from highlightsense.operators.online_select import select_above

        selection = select_above(windows, cfg.threshold, cfg.nms_window, cfg.top_n)
    else:
        selection = select_highlights(windows, cfg.threshold_percentile, cfg.nms_window, cfg.top_n)
    confidences = {w.confidence for w in windows}
    if len(confidences) == 1:
        log.warning("all %d windows score the same (%.4f): nothing stands out, no clips chosen",
                    len(windows), windows[0].confidence)
        selection = Selection(selection.threshold, [], [], [])
    plot.plot_scores(out_dir, windows, selection, title=Path(info["source"]).name)
    clips = cut_clips(out_dir, selection, cfg, info) if cfg.clips and selection.top else None
    rows = tables.highlight_rows(selection, clips)
    tables.write_clips_csv(out_dir, rows)
    summary = dict(info)
    summary.update({
        "settings": cfg.selection_settings(),
        "threshold": selection.threshold,
        "windows": len(windows),
        "windows_above_threshold": len(selection.above),
        "after_nms": len(selection.kept),
        "highlights": rows,
    })
    tables.write_summary(out_dir, summary)
    return selection, rows


def cut_clips(out_dir: Path, selection: Selection, cfg: Config, info: dict):
    from highlightsense.operators.sinks.clips import cut_clips as cut

    from highlightsense.operators.sources.resolve import is_url

    clips_dir = out_dir / "clips"
    clips_dir.mkdir(exist_ok=True)
    if is_url(info["source"]):  # only each clip's range travels: see operators.sinks.remote_clips
        from highlightsense.operators.sinks.remote_clips import cut_url_clips as cut
        results = cut(info["source"], clips_dir, [(w.start_sec, w.end_sec) for w in selection.top],
                      origin_sec=info["origin_sec"], timeline=info.get("timeline"),
                      exact=cfg.exact_cuts, stream_index=info.get("audio_stream"),
                      parallel=cfg.hls_fragments)
    else:
        results = cut(info["source"], clips_dir, [(w.start_sec, w.end_sec) for w in selection.top],
                      origin_sec=info["origin_sec"], exact=cfg.exact_cuts,
                      stream_index=info.get("audio_stream"))
    # Clips an earlier run left beyond this run's count would look like part of this run.
    keep = {r.path.name for r in results}
    for old in clips_dir.glob("highlight_*"):
        if old.name not in keep and old.is_file():
            old.unlink()
    return results


def reselect(out_dir: Path, cfg: Config) -> tuple:
    """`select`: selection and clips again from saved scores, without touching the audio."""
    out_dir = Path(out_dir)
    if not (out_dir / tables.SCORES_CSV).exists() or not (out_dir / tables.SUMMARY_JSON).exists():
        raise HighlightSenseError(
            f"{out_dir} holds no finished detect run (no {tables.SCORES_CSV} and "
            f"{tables.SUMMARY_JSON}); run `highlightsense detect INPUT --out {out_dir}` first")
    windows = tables.read_scores(out_dir)
    summary = tables.read_summary(out_dir)
    info = {k: v for k, v in summary.items()
            if k not in ("settings", "threshold", "windows", "windows_above_threshold",
                         "after_nms", "highlights")}
    # The scores fix the windows: keep the window settings they were computed with.
    saved = summary.get("settings", {})
    cfg = replace(cfg, **{k: saved[k] for k in ("window_sec", "stride_sec") if k in saved})
    from highlightsense.operators.sources.resolve import is_url

    if cfg.clips and not is_url(info["source"]) and not os.path.exists(info["source"]):
        raise HighlightSenseError(
            f"the source {info['source']} is gone; clips need it (or pass --no-clips)")
    (out_dir / tables.SUMMARY_JSON).unlink()
    try:
        return finish(out_dir, windows, cfg, info)
    except OSError as e:
        raise HighlightSenseError(
            f"cannot write the outputs in {out_dir}: {e.strerror or e}; free space or fix the "
            f"folder, then run detect again (this select had begun replacing the outputs)"
        ) from None
