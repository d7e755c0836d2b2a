"""One pass of `detect` over a source: the scorer, the source (a file or a URL), and the
pipeline from the source through the scorer's feature stages, the windows and the scorer to the
collected scores."""
import logging
from typing import Optional

from highlightsense.engine import grid
from highlightsense.engine.config import Config
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.engine.observer import RunObserver
from highlightsense.engine.operator import Scorer, Source, lookahead_samples, restart_sample
from highlightsense.engine.pipeline import Pipeline, run_async
from highlightsense.engine.progress import clock
from highlightsense.operators.score import Score
from highlightsense.operators.select import CollectScores
from highlightsense.operators.sources.wrappers import Limited, Prefix
from highlightsense.operators.windows import Windows

log = logging.getLogger("highlightsense")


def check_device(cfg: Config) -> None:
    """--device and --half are checked whatever the scorer, so a typo or a GPU that is not
    there is said at once, not only once a model is given."""
    if cfg.device in ("auto", "cpu") and not cfg.half:
        return  # nothing to check: no need to wait for torch's import
    from highlightsense.model.separator import check_half, pick_device

    check_half(pick_device(cfg.device), cfg.half)


def build_scorer(cfg: Config) -> Scorer:
    """The CRNN from the checkpoint `cfg.model`, or without one the loudness heuristic."""
    check_device(cfg)
    if cfg.model is None:
        from highlightsense.model.loudness import LoudnessScorer

        log.info("no --model given: scoring with the weights-free loudness heuristic")
        return LoudnessScorer(window_sec=cfg.window_sec)
    from highlightsense.model.checkpoint import load_model
    from highlightsense.model.crnn_scorer import CrnnScorer
    from highlightsense.model.separator import pick_device

    device = pick_device(cfg.device)
    return CrnnScorer(load_model(cfg.model, device), device, cfg.batch_size)


def open_source(input_path: str, cfg: Config, start_sample: int = 0,
                sync_points=None) -> Source:
    """The decoder for a media file, or for a URL (resolved with yt-dlp, decoded as it arrives,
    nothing downloaded first). A file can be opened at a later sample (a resumed run). With
    the recording's own tracks (cfg resolved by resolve_tracks), one decoder of them all."""
    from highlightsense.operators.sources.decode import AudioDecoder
    from highlightsense.operators.sources.resolve import is_url, open_audio
    from highlightsense.operators.sources.tracks import uses_tracks

    if uses_tracks(cfg):
        source = _track_source(input_path, cfg, start_sample)
    elif is_url(input_path):
        from highlightsense.operators.sources.fetch import FetchPolicy

        source = open_audio(input_path, cfg.audio_stream, cfg.chunk_sec,
                            parallel=cfg.hls_fragments,
                            policy=FetchPolicy(allow_private_hosts=cfg.allow_private_hosts))
    else:
        source = AudioDecoder(input_path, stream_index=cfg.audio_stream, chunk_sec=cfg.chunk_sec,
                              start_sample=start_sample, sync_points=sync_points)
    duration = source.info.duration_sec
    if cfg.max_duration_sec is not None:
        if duration is not None and duration > cfg.max_duration_sec:
            source.close()
            raise HighlightSenseError(
                f"{input_path} is {clock(duration)} long, over --max-duration "
                f"{clock(cfg.max_duration_sec)}; raise the limit or cut the input")
        source = Limited(source, cfg.max_duration_sec)
    return source


def open_span(input_path: str, cfg: Config, stages: list, first_frame: int,
              stop_frame: Optional[int] = None, sync_points=None) -> tuple:
    """The input for `stages` to emit frames [first_frame, stop_frame) as a run over the whole
    input emits them: begun their warm-up early (restart_sample, as a resumed run restarts) and
    read on past stop_frame by their look-ahead (the features' reach, then every Demucs segment
    covering it); None: to the end. Returns (source, decoder): a Prefix copies its decoder's
    info, so the counts the decoder keeps as it goes (corrupt packets, gaps) are the decoder's."""
    start = restart_sample(stages, grid.frame_sample(first_frame)) if first_frame else 0
    decoder = open_source(input_path, cfg, start, sync_points)
    if stop_frame is None:
        return decoder, decoder
    return Prefix(decoder, grid.frame_sample(stop_frame) + lookahead_samples(stages)), decoder


def _track_source(input_path: str, cfg: Config, start_sample: int) -> Source:
    """The tracks' decoder: voice, game and mix for the CRNN (a model given), or the mix
    alone for the loudness scorer, which reads nothing else."""
    from highlightsense.operators.sources.decode import open_media
    from highlightsense.operators.sources.tracks import TRACK_STEMS, TrackDecoder, choose_tracks

    with open_media(input_path) as container:
        choice = choose_tracks(container, input_path, cfg)
    stems = TRACK_STEMS if cfg.model is not None else ("mix",)
    return TrackDecoder(input_path, choice, stems, cfg.chunk_sec, start_sample)


def run_pipeline(source: Source, stages: list, scorer: Scorer, cfg: Config, hooks=(),
                 first_window: int = 0, collect: Optional[CollectScores] = None,
                 observer: Optional[RunObserver] = None):
    """Runs one pass to its end: (every window's score in order, the pipeline's metrics).
    `collect` holds what a resumed pass keeps and is read while it runs; `hooks` are called
    with the metrics as it runs (progress, the progress record), and so is the observer."""
    collect = collect or CollectScores()
    hooks = [h for h in hooks if h]
    if observer is not None:
        collect.on_batch = observer.scored
        hooks.append(observer.progress)

    def on_progress(metrics):
        for hook in hooks:
            hook(metrics)

    windows = Windows.for_scorer(cfg, scorer, first_window)
    pipeline = Pipeline(source, [*stages, windows, Score(scorer), collect],
                        queue_size=cfg.queue_size, on_progress=on_progress if hooks else None)
    start_sec = source.info.start_sample / grid.AUDIO_RATE
    pipeline.metrics.start_sec = pipeline.metrics.position_sec = start_sec
    metrics = run_async(pipeline.run())
    return collect.windows, metrics
