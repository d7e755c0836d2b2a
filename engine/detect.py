"""`detect`: one input's highlights, in three phases, each resumable from the progress record.

1. The first pass streams the whole input through the scorer's stages and scores every window
   (engine.passes).
2. Where the scorer's features take the whole stream's dB reference (the CRNN's), the windows
   made before it was known are scored again (engine.second_pass).
3. The highlights are chosen and the outputs written (engine.selection).

With cfg.shard_minutes, phases 1 and 2 are time shards of the file instead (engine.shards,
through score_input): the same scores, then the same phase 3. A sharded run keeps no progress
of its own within them: interrupted, it scores again; once scored, only phase 3 is redone.
"""
import logging
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, List, Optional

from highlightsense.engine import grid
from highlightsense.engine.config import Config
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.engine.files import OutputError
from highlightsense.engine.observer import RunObserver
from highlightsense.engine.operator import FeatureRun, Scorer, restart_sample
from highlightsense.engine.passes import build_scorer, open_source, run_pipeline
from highlightsense.engine.pipeline import PipelineMetrics
from highlightsense.engine.progress import Progress
from highlightsense.engine.resume import Checkpoints, ProgressRecord, fingerprint, source_name
from highlightsense.engine.second_pass import (HeldLevels, batch_start, exact_from, rescore,
                                               windows_to_redo)
from highlightsense.engine.selection import finish
from highlightsense.operators.select import CollectScores, Selection, WindowScore
from highlightsense.operators.sinks import tables

log = logging.getLogger("highlightsense")


@dataclass
class DetectResult:
    out_dir: Path
    windows: List[WindowScore]
    selection: Selection
    highlights: List[dict]  # the clips table's rows, in the order asked for
    metrics: Optional[PipelineMetrics]  # the first pass's (None when a resume skipped it)
    summary: List[str] = field(default_factory=list)  # the counts, for a person
    info: dict = field(default_factory=dict)  # what highlights.json records of source and scorer


def check_input(input_path: str, cfg: Config) -> None:
    """A local input must be a media file with the audio stream asked for: said before the
    output folder is made or any model is loaded."""
    from highlightsense.operators.sources.decode import audio_stream, open_media
    from highlightsense.operators.sources.resolve import is_url

    if cfg.shard_minutes is not None:
        from highlightsense.engine.shards import check_local

        check_local(input_path)
    if is_url(input_path):
        return
    if os.path.exists(input_path) and not os.path.isdir(input_path) \
            and not os.path.isfile(input_path):
        return  # a pipe: reading it here would take what the run must read
    with open_media(input_path) as container:
        audio_stream(container, input_path, cfg.audio_stream)


def prepare_out_dir(out_dir: Path) -> Path:
    """Creates the folder and proves it is writable before any work is done."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise HighlightSenseError(f"{out_dir} is a file, not a folder; choose another --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        # A name of its own (mkstemp: O_EXCL), never a file or link already there.
        fd, probe = tempfile.mkstemp(prefix=".highlightsense-write-test", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise HighlightSenseError(
            f"cannot write to output folder {out_dir}: {e.strerror}; choose another with --out"
        ) from None
    return out_dir


def source_facts(info, metrics: PipelineMetrics) -> dict:
    """What one pass over the whole input learnt of it (its source's SourceInfo and the pass's
    metrics), as run_info takes it."""
    return {"origin_sec": info.origin_sec, "duration_sec": metrics.position_sec,
            "has_video": info.has_video, "corrupt_packets": info.corrupt_packets,
            "gaps_filled_sec": info.gaps_filled_sec, "wall_sec": metrics.wall_sec,
            "timeline": None if info.timeline is None else [vars(e) for e in info.timeline]}


def scorer_settings(cfg: Config, scorer) -> dict:
    """What the outputs record of how a run scored: the audio it read and the scorer's models."""
    return {"audio_stream": cfg.audio_stream, "voice_track": cfg.voice_track,
            "game_track": cfg.game_track, "scorer": scorer.name, **scorer.describe(cfg)}


def run_info(input_path: str, facts: dict, settings: dict) -> dict:
    """What the record and the outputs keep of a run: the source's facts (source_facts, or the
    shards' in engine.shards.merge) with the input and how it was scored (scorer_settings)."""
    info = {
        "source": source_name(input_path),
        "origin_sec": facts["origin_sec"],
        "duration_sec": facts["duration_sec"],
        "has_video": facts["has_video"],
        **settings,
        "corrupt_packets": facts["corrupt_packets"],
        "gaps_filled_sec": facts["gaps_filled_sec"],
        "wall_sec": facts["wall_sec"],
    }
    if "shards" in facts:
        info["shards"] = facts["shards"]
    if os.path.isfile(input_path):  # the video's frame rate and start, for export
        from highlightsense.operators.sinks.timelines import media_record, probe

        info["video"] = media_record(probe(input_path))
    if facts.get("timeline") is not None:  # HLS: stream time to each run's timestamps, for clips
        info["timeline"] = facts["timeline"]
    return info


def score_input(input_path: str, cfg: Config, scorer, pool=None) -> tuple:
    """Phases 1 and 2 of a sharded run (cfg.shard_minutes): (every window's score, what the
    record keeps of the run: run_info). With a pool of workers (engine.workers) the shards
    run there at once, else in this process one after another."""
    if pool is not None:
        from highlightsense.engine.batch import score_shards_on

        return score_shards_on(pool, input_path, cfg)
    from highlightsense.engine.shards import score_sharded

    return score_sharded(input_path, cfg, scorer, cfg.shard_minutes)


def first_pass(input_path: str, cfg: Config, scorer, record: ProgressRecord,
               show_progress: bool, observer: RunObserver):
    """Score every window, from the record's last whole batch on. Returns (windows, source,
    stages, metrics, held levels or None)."""
    first = batch_start(len(record.windows), cfg.batch_size)
    # A run from the start keeps the first levels in memory for the second pass.
    held = (HeldLevels.within(cfg.rescore_cache_mb)
            if scorer.whole_stream_reference and cfg.exact_reference and not first else None)
    stages = scorer.feature_stages(cfg, FeatureRun(emit_from=first * cfg.stride_frames,
                                                   hold=held))
    for stage in stages:
        state = record.state_for(stage)
        if state is not None:
            stage.restore(state)
    observer.stages_built(stages)
    start = restart_sample(stages, grid.frame_sample(first * cfg.stride_frames)) if first else 0
    source = open_source(input_path, cfg, start, record.source.get("sync_points"))
    if first:
        record.note_resume(1, first, grid.frames_to_sec(first * cfg.stride_frames),
                           start / grid.AUDIO_RATE)
    collect = CollectScores(record.windows[:first])

    def snapshot(rec: ProgressRecord) -> None:
        rec.windows = list(collect.windows)  # first: the history read next then covers them
        rec.stages = {stage.name: stage.state() for stage in stages}
        rec.source = {"sync_points": list(source.info.sync_points)}

    progress = Progress(source.info.duration_sec) if show_progress else None
    checkpoints = Checkpoints(record, cfg.progress_every_sec, snapshot) if record.enabled else None
    observer.pass_started("first pass", source.info.duration_sec)
    windows, metrics = run_pipeline(source, stages, scorer, cfg, [progress, checkpoints], first,
                                    collect, observer)
    return windows, source, stages, metrics, held


def detect(input_path: str, out_dir: Path, cfg: Config, show_progress: bool = True,
           restart: bool = False, observer: Optional[RunObserver] = None,
           scorer_for: Callable[[Config], Scorer] = build_scorer,
           shard_pool=None) -> DetectResult:
    """`scorer_for`: where the scorer comes from (a batch worker keeps its models loaded).
    `shard_pool`: the workers a sharded run (cfg.shard_minutes) spreads its shards over."""
    from highlightsense.operators.sources.tracks import resolve_tracks

    observer = observer or RunObserver()
    check_input(input_path, cfg)
    cfg = resolve_tracks(input_path, cfg)  # --tracks auto: the streams it picks, said once
    scorer = scorer_for(cfg)
    made = not Path(out_dir).exists()
    out_dir = prepare_out_dir(out_dir)
    try:
        return _detect(input_path, out_dir, cfg, scorer, show_progress, restart, observer,
                       shard_pool)
    except BaseException:
        if made and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # a run that failed before writing anything leaves no folder
        raise


def write_outputs(out_dir: Path, windows: List[WindowScore], cfg: Config, info: dict,
                  recut: bool = False, scores_kept: bool = False):
    """The scores table, then the selection and what follows it (engine.selection.finish): the
    end of every run, wherever its scores were made (a batch's driver writes those its Ray
    workers made). `scores_kept`: a progress record holds the scores, so a rerun will not
    score again (said in the error)."""
    try:
        tables.write_scores(out_dir, windows)
        return finish(out_dir, windows, cfg, info, recut=recut)
    except (OSError, OutputError) as e:
        kept = " (the scores are saved: it will not score again)" if scores_kept else ""
        reason = getattr(e, "reason", None) or e.strerror or e
        raise HighlightSenseError(
            f"cannot write the outputs in {out_dir}: {reason}; free space or fix the "
            f"folder, then run the same command again{kept}") from None


def _detect(input_path: str, out_dir: Path, cfg: Config, scorer, show_progress: bool,
            restart: bool, observer: RunObserver, shard_pool=None) -> DetectResult:
    from highlightsense.operators.sources.resolve import is_url

    observer.scorer_ready(scorer)
    cfg = replace(cfg, batch_size=cfg.batch_size or scorer.batch_size)
    record = ProgressRecord.begin(out_dir, fingerprint(input_path, cfg, scorer), restart,
                                  source_name(input_path))
    record.enabled = not is_url(input_path)  # a URL's stream cannot be reopened at a sample
    record.on_save = observer.record_saved
    recut = record.phase == 3  # interrupted while choosing or cutting: only that is done again
    # The completion marker of an earlier run goes first, so a failed re-run cannot leave a
    # folder that looks complete but mixes two runs.
    (out_dir / tables.SUMMARY_JSON).unlink(missing_ok=True)
    metrics, held = None, None
    if record.phase == 1 and cfg.shard_minutes is not None:
        record.windows, record.info = score_input(input_path, cfg, scorer, shard_pool)
        record.phase = 3
        record.save()
    if record.phase == 1:
        windows, source, stages, metrics, held = first_pass(input_path, cfg, scorer, record,
                                                            show_progress, observer)
        if not windows:
            raise HighlightSenseError(f"{input_path} contains no audio samples")
        record.windows, record.phase = windows, 2
        record.info = run_info(input_path, source_facts(source.info, metrics),
                               scorer_settings(cfg, scorer))
        if scorer.whole_stream_reference:
            features = stages[-1].state()
            record.reference_db = features["reference_db"]
            record.exact_from = exact_from(features)
        record.save()
    windows = record.windows
    if record.phase == 2:
        if scorer.whole_stream_reference and cfg.exact_reference:
            observer.second_pass(record.exact_from,
                                 len(windows_to_redo(cfg, windows, record.exact_from)))
            windows = rescore(input_path, cfg, scorer, record, show_progress, held, observer)
            observer.second_pass_done()
        record.windows, record.rescored, record.phase = windows, [], 3
        record.save()
    info = dict(record.info, resumes=record.resumes) if record.resumes else record.info
    outcome = write_outputs(out_dir, windows, cfg, info, recut,
                            scores_kept=record.enabled and record.path.exists())
    record.remove()  # the summary is written: the run is complete
    return DetectResult(out_dir, windows, outcome.selection, outcome.highlights, metrics,
                        outcome.summary, info)
