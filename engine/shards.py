"""Time shards of one long input: the windows of a local file scored in spans that can run in
separate processes or on separate machines, with the scores one run gives.

1. plan_shards: a decode-only pass over the file (no separation, no features) notes its sync
   points (SourceInfo.sync_points, as the decoder notes them in any run) and its exact length,
   and cuts the windows into shards. Shard k owns the windows whose first frame lies in its
   span of `shard_minutes`; its edges are moved to whole batches of windows, so every batch
   holds the windows a single run's does (and scores bit for bit alike).
2. ShardRunner.map: a shard runs exactly as a resumed run restarts: its stages begin their
   warm-up before its first window (restart_sample), its decoder restarts from the plan's sync
   points instead of decoding from 0 (engine.passes.open_span), and it reads on past its last
   window by the look-ahead its stages need. On the loudness path its windows are final then.
3. On the model path the seed's dB reference is the whole VOD's loudest frame, each stem its
   own: a reduce. Each shard reports the per-stem maximum level of the frames it owns (its
   windows' frames before the next shard's), and keeps those frames' levels (HeldLevels, from
   the shard's first frame); the reference is the maximum over the shards (whole_reference).
   ShardRunner.reduce then scores the shard's windows under it from the levels it held, without
   separating again; a runner that does not hold them (a restarted worker), or holds only the
   first rescore_cache_mb of a long shard, decodes and separates the rest again under the fixed
   reference, as the second pass does past its held levels (engine.second_pass).
4. merge puts the windows end to end with what `detect` records of the source; selection then
   runs once on the merged scores (engine.selection.finish).

Shards equal a single run: bit for bit on the loudness path (the decoder and the loudness
features restart exactly), within 1e-5 on the model path (the bound a resumed run meets: the
mel resampler's restart). Everything sent between processes (ShardPlan, ShardResult,
WindowScore) pickles; ShardRunner keeps its held levels and scorer to itself, and nothing here
keeps global state.
"""
import logging
import math
import os
import time
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

from highlightsense.engine import grid
from highlightsense.engine.config import Config, checked
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.engine.operator import FeatureRun, SourceInfo
from highlightsense.engine.progress import clock
from highlightsense.operators.select import CollectScores, WindowScore

log = logging.getLogger("highlightsense")

# With batch_size unset the scorers batch 1 or 16 windows (model/crnn_scorer.py,
# model/loudness.py): shard edges on multiples of 16 windows keep either's batches.
UNSET_BATCH_ALIGN = 16
# A window whose first frame lies within this many frames of a span's start counts as in it
# (spans are real numbers of frames; this keeps a float's last digit from moving an edge).
_EDGE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Shard:
    index: int
    first_window: int  # the first window it owns
    stop_window: Optional[int]  # one past the last window it owns; None: to the end of the stream

    def first_frame(self, cfg: Config) -> int:
        return self.first_window * cfg.stride_frames

    def own_frames_stop(self, cfg: Config) -> Optional[int]:
        """One past the last frame it owns (the next shard's first); None: the stream's end."""
        return None if self.stop_window is None else self.stop_window * cfg.stride_frames

    def needed_stop(self, cfg: Config) -> Optional[int]:
        """One past the last frame its windows (and its own frames) need; None: the end."""
        if self.stop_window is None:
            return None
        return max((self.stop_window - 1) * cfg.stride_frames + cfg.window_frames,
                   self.stop_window * cfg.stride_frames)


@dataclass(frozen=True)
class SourceFacts:
    """What the sync-point pass learnt of the input: a whole decode's, the same as one run's."""

    samples: int  # stream samples decoded (44.1 kHz)
    origin_sec: float
    has_video: bool
    corrupt_packets: int
    gaps_filled_sec: float
    wall_sec: float  # the pass's own time
    frames: int  # the stream's frames (grid.n_frames)
    windows: int  # the stream's windows (grid.num_windows)
    batch_size: int  # the shard edges are multiples of this many windows


@dataclass(frozen=True)
class ShardPlan:
    input_path: str
    shards: Tuple[Shard, ...]
    sync_points: Tuple[tuple, ...]
    duration_sec: Optional[float]
    facts: SourceFacts


@dataclass
class ShardResult:
    index: int
    windows: List[WindowScore]  # the windows it owns, in order (model path: [], see reduce)
    level_max: Optional[List[float]]  # per-stem max level of the frames it owns; None: no reduce
    info: dict  # what its source said: origin_sec, has_video, corrupt_packets, gaps_filled_sec,
    #             decode_from_sec (its warm-up's start), position_sec (where it ended), wall_sec;
    #             and settings (engine.detect.scorer_settings: how it scored, for the outputs)


# ---- the plan ---------------------------------------------------------------------------------

def check_local(input_path: str) -> None:
    """Shards reopen the input at their own starts: a local file, not a URL or a pipe."""
    from highlightsense.operators.sources.resolve import is_url

    if is_url(input_path):
        raise HighlightSenseError(
            f"--shard-minutes needs a local media file, and {input_path} is a URL (shards reopen "
            f"the input at their own starts); download it first or drop --shard-minutes")
    if os.path.exists(input_path) and not os.path.isdir(input_path) \
            and not os.path.isfile(input_path):
        raise HighlightSenseError(
            f"--shard-minutes needs a local media file, and {input_path} is a pipe (shards "
            f"reopen the input at their own starts); save it to a file or drop --shard-minutes")


def plan_shards(input_path: str, cfg: Config, shard_minutes: float) -> ShardPlan:
    """The sync-point pass (a decode of the whole file, nothing more) and the shards: see the
    module. `cfg` as the run's (tracks resolved; batch_size the scorer's, or unset)."""
    from highlightsense.engine.passes import open_source

    check_local(input_path)
    checked(replace(cfg, shard_minutes=shard_minutes))
    began = time.perf_counter()
    source = open_source(input_path, cfg)
    samples = 0
    try:
        for chunk in source:
            samples = chunk.end
    finally:
        source.close()
    if samples == 0:
        raise HighlightSenseError(f"{input_path} contains no audio samples")
    info: SourceInfo = source.info
    frames = grid.n_frames(samples)
    windows = grid.num_windows(frames, cfg.window_frames, cfg.stride_frames)
    batch = cfg.batch_size or UNSET_BATCH_ALIGN
    edges = shard_edges(windows, cfg.stride_frames, batch,
                        shard_minutes * 60 * grid.FEATURE_RATE / grid.HOP)
    shards = tuple(Shard(i, a, b) for i, (a, b) in enumerate(zip(edges, [*edges[1:], None])))
    facts = SourceFacts(samples, info.origin_sec, info.has_video, info.corrupt_packets,
                        info.gaps_filled_sec, time.perf_counter() - began, frames, windows,
                        batch)
    log.info("%s: %s of audio in %d shards of about %g minutes (sync points noted in %.1f s)",
             input_path, clock(samples / grid.AUDIO_RATE), len(shards), shard_minutes,
             facts.wall_sec)
    return ShardPlan(input_path, shards, tuple(tuple(p) for p in info.sync_points),
                     samples / grid.AUDIO_RATE, facts)


def shard_edges(windows: int, stride_frames: int, batch: int, span_frames: float) -> List[int]:
    """The first window of each shard: the first whose first frame lies at or after each span's
    start (k * span_frames), moved to the nearest multiple of `batch`; shards left empty by
    that are dropped."""
    edges = [0]
    for k in range(1, math.ceil(windows * stride_frames / span_frames) + 1):
        first = math.ceil(k * span_frames / stride_frames - _EDGE_TOLERANCE)
        first = (first + batch // 2) // batch * batch
        if first >= windows:
            break
        if first > edges[-1]:
            edges.append(first)
    return edges


# ---- map and reduce ---------------------------------------------------------------------------

def check_sharding(cfg: Config, scorer) -> None:
    """Shards score under the whole VOD's reference: a single pass (--single-pass), whose
    windows before the loudest frame keep a lower one, cannot be split."""
    if scorer.whole_stream_reference and not cfg.exact_reference:
        raise HighlightSenseError(
            "--shard-minutes scores every window under the whole VOD's dB reference; drop "
            "--single-pass (exact_reference: false) or --shard-minutes")


def owned_level_max(features_state: dict, stop_frame: Optional[int]) -> List[float]:
    """Each stem's maximum level over the frames a shard made before `stop_frame` (None: all),
    from its features' state (operators.mel_features.MelFeatures): the last rise of each stem's
    running maximum, which a shard starts afresh at its first frame."""
    return [max((level for frame, level in rises if stop_frame is None or frame < stop_frame),
                default=-math.inf) for rises in features_state["reference_rises"]]


class ShardRunner:
    """Lives in one worker; keeps the held levels of the shards it mapped until reduced."""

    def __init__(self, scorer):
        self.scorer = scorer
        self._held: Dict[Tuple[ShardPlan, int], object] = {}  # (plan, index) -> HeldLevels

    def _cfg(self, plan: ShardPlan, cfg: Config) -> Config:
        cfg = replace(cfg, batch_size=cfg.batch_size or self.scorer.batch_size)
        if plan.facts.batch_size % cfg.batch_size:
            raise ValueError(f"the plan's shards sit on multiples of {plan.facts.batch_size} "
                             f"windows, not of this run's batches of {cfg.batch_size}")
        return cfg

    @property
    def held_bytes(self) -> int:
        """What the levels it holds take now, at most."""
        return sum(held.nbytes for held in self._held.values())

    def release(self, plan: ShardPlan, index: Optional[int] = None) -> None:
        """Drops the levels held for shard `index` of `plan` (None: every shard of it): one that
        another runner reduced, or a plan given up."""
        for key in [k for k in self._held if k[0] == plan and index in (None, k[1])]:
            del self._held[key]

    def map(self, plan: ShardPlan, cfg: Config, index: int) -> ShardResult:
        """Runs shard `index`: its windows (loudness path), or its frames' levels held and their
        per-stem maximum (model path: scored by reduce once the whole reference is known)."""
        from highlightsense.engine.passes import open_span, run_pipeline
        from highlightsense.engine.pipeline import Pipeline, run_async
        from highlightsense.engine.second_pass import HeldLevels

        cfg = self._cfg(plan, cfg)
        check_sharding(cfg, self.scorer)
        shard = plan.shards[index]
        began = time.perf_counter()
        first_frame = shard.first_frame(cfg)
        if self.scorer.whole_stream_reference:
            stop = shard.needed_stop(cfg)
            needed = (plan.facts.frames if stop is None else stop) - first_frame
            held = HeldLevels.within(cfg.rescore_cache_mb, start=first_frame, frames=needed)
            stages = self.scorer.feature_stages(cfg, FeatureRun(emit_from=first_frame, hold=held))
            source, decoder = open_span(plan.input_path, cfg, stages, first_frame, stop,
                                        plan.sync_points)
            pipeline = Pipeline(source, stages, queue_size=cfg.queue_size)
            pipeline.metrics.start_sec = pipeline.metrics.position_sec = (
                source.info.start_sample / grid.AUDIO_RATE)
            metrics = run_async(pipeline.run())
            windows = []
            level_max = owned_level_max(stages[-1].state(), shard.own_frames_stop(cfg))
            self._held[(plan, index)] = held
        else:
            stages = self.scorer.feature_stages(cfg, FeatureRun(emit_from=first_frame))
            source, decoder = open_span(plan.input_path, cfg, stages, first_frame,
                                        shard.needed_stop(cfg), plan.sync_points)
            windows, metrics = run_pipeline(source, stages, self.scorer, cfg,
                                            first_window=shard.first_window)
            windows = _owned(windows, shard, plan)
            level_max = None
        from highlightsense.engine.detect import scorer_settings

        info = decoder.info
        result = ShardResult(index, windows, level_max, {
            "settings": scorer_settings(cfg, self.scorer),
            "origin_sec": info.origin_sec, "has_video": info.has_video,
            "corrupt_packets": info.corrupt_packets, "gaps_filled_sec": info.gaps_filled_sec,
            "decode_from_sec": info.start_sample / grid.AUDIO_RATE,
            "position_sec": metrics.position_sec, "wall_sec": time.perf_counter() - began})
        log.info("shard %d/%d: windows %d to %s, decoded from %s to %s in %.1f s", index + 1,
                 len(plan.shards), shard.first_window,
                 "the end" if shard.stop_window is None else shard.stop_window - 1,
                 clock(result.info["decode_from_sec"]), clock(metrics.position_sec),
                 result.info["wall_sec"])
        return result

    def reduce(self, plan: ShardPlan, cfg: Config, index: int, reference_db: List[float]
               ) -> List[WindowScore]:
        """Shard `index`'s windows under the whole VOD's reference: from the levels its map held
        here, and past them (or without them: another worker mapped it) by decoding and
        separating that part again under the fixed reference. Frees its held levels."""
        from highlightsense.engine.passes import open_span, run_pipeline
        from highlightsense.engine.second_pass import HeldFrames, held_windows

        cfg = self._cfg(plan, cfg)
        if not self.scorer.whole_stream_reference:
            raise ValueError("reduce is for scorers whose features take the whole stream's "
                             "reference; the loudness path's map gives its final windows")
        held = self._held.pop((plan, index), None)
        shard = plan.shards[index]
        first = shard.first_window
        last = (plan.facts.windows if shard.stop_window is None else shard.stop_window) - 1
        collect = CollectScores()
        from_held, stop = held_windows(cfg, held, first, last)
        if from_held:
            run_pipeline(HeldFrames(held, reference_db, stop), [], self.scorer, cfg, (), first,
                         collect)
            collect.windows = [w for w in collect.windows if w.index < first + from_held]
        del held  # the memory map goes with its last reference
        again = first + from_held
        if again <= last:
            stages = self.scorer.feature_stages(cfg, FeatureRun(
                emit_from=again * cfg.stride_frames, reference_db=reference_db))
            source, _ = open_span(plan.input_path, cfg, stages, again * cfg.stride_frames,
                                  shard.needed_stop(cfg), plan.sync_points)
            log.info("shard %d/%d: windows %d to %d decoded again under the whole VOD's "
                     "reference (%s)", index + 1, len(plan.shards), again, last,
                     "past the levels held" if from_held else "no levels held here")
            run_pipeline(source, stages, self.scorer, cfg, (), again, collect)
        return _owned(collect.windows, shard, plan)


def _owned(windows: Sequence[WindowScore], shard: Shard, plan: ShardPlan) -> List[WindowScore]:
    """The windows a shard owns, of those its pass made (its stream's end gives more)."""
    stop = plan.facts.windows if shard.stop_window is None else shard.stop_window
    owned = [w for w in windows if shard.first_window <= w.index < stop]
    if [w.index for w in owned] != list(range(shard.first_window, stop)):
        raise RuntimeError(f"shard {shard.index} made windows {owned[0].index if owned else '-'}"
                           f" to {owned[-1].index if owned else '-'}, not "
                           f"{shard.first_window} to {stop - 1}")
    return owned


# ---- the whole ----------------------------------------------------------------------------------

def whole_reference(results: Sequence[ShardResult]) -> Optional[List[float]]:
    """The whole VOD's dB reference, each stem's maximum over the shards' maxima; None when the
    scorer needs none (loudness)."""
    maxima = [r.level_max for r in results if r.level_max is not None]
    if not maxima:
        return None
    return [max(levels) for levels in zip(*maxima)]


def merge(plan: ShardPlan, results: Sequence[ShardResult],
          rescored: Optional[Dict[int, List[WindowScore]]] = None
          ) -> Tuple[List[WindowScore], dict]:
    """Every window in order, and what `detect` records of the run (engine.detect.run_info):
    the input and how the shards scored, the origin where shard 0 began, the duration where the
    last ended, and the counts of the plan's whole decode (the shards' decoders overlap at their
    warm-ups, so theirs would count some packets twice); each shard's span under "shards".
    wall_sec: the plan's and the shards' maps' seconds, summed (an executor running them at
    once records its own elapsed time instead)."""
    from highlightsense.engine.detect import run_info

    by_index = {r.index: r for r in results}
    missing = [s.index for s in plan.shards if s.index not in by_index]
    if missing or len(by_index) != len(plan.shards):
        raise ValueError(f"merge needs one result per shard; missing {missing}")
    windows: List[WindowScore] = []
    for shard in plan.shards:
        result = by_index[shard.index]
        if result.level_max is None:
            windows += result.windows
        elif rescored is None or shard.index not in rescored:
            raise ValueError(f"shard {shard.index} needs its reduce (rescored) before merging")
        else:
            windows += rescored[shard.index]
    if [w.index for w in windows] != list(range(len(windows))):
        raise ValueError("the shards' windows do not follow on from one another")
    ordered = [by_index[s.index] for s in plan.shards]
    whole = plan.facts
    facts = {"origin_sec": ordered[0].info["origin_sec"],
             "duration_sec": ordered[-1].info["position_sec"],
             "has_video": ordered[0].info["has_video"],
             "corrupt_packets": whole.corrupt_packets,
             "gaps_filled_sec": whole.gaps_filled_sec,
             "wall_sec": whole.wall_sec + sum(r.info["wall_sec"] for r in ordered),
             "timeline": None,
             "shards": [{"index": s.index, "first_window": s.first_window,
                         "stop_window": s.stop_window,
                         **{k: r.info[k] for k in ("decode_from_sec", "position_sec", "wall_sec")}}
                        for s, r in zip(plan.shards, ordered)]}
    return windows, run_info(plan.input_path, facts, ordered[0].info["settings"])


def score_sharded(input_path: str, cfg: Config, scorer, shard_minutes: float,
                  runner: Optional[ShardRunner] = None) -> Tuple[List[WindowScore], dict]:
    """Every shard in this process, one after another: plan, map all, reduce, merge. Its
    held levels are all in memory between the maps and the reduces (up to rescore_cache_mb a
    shard)."""
    began = time.perf_counter()
    check_sharding(cfg, scorer)
    runner = runner or ShardRunner(scorer)
    cfg = replace(cfg, batch_size=cfg.batch_size or scorer.batch_size)
    plan = plan_shards(input_path, cfg, shard_minutes)
    try:
        results = [runner.map(plan, cfg, shard.index) for shard in plan.shards]
        reference = whole_reference(results)
        rescored = None
        if reference is not None:
            log.info("the whole VOD's dB reference (the shards' loudest frames): %s",
                     ", ".join(f"{level:.2f}" for level in reference))
            rescored = {r.index: runner.reduce(plan, cfg, r.index, reference) for r in results}
    finally:
        runner.release(plan)  # a run that failed leaves nothing held in a runner kept on
    windows, info = merge(plan, results, rescored)
    info["wall_sec"] = time.perf_counter() - began
    return windows, info
