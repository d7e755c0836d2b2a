"""`watch`: follow a live stream and emit each highlight as soon as it is decided.

    source (HLS audio rendition, from the live edge) -> arrivals -> features -> windows (one at a
    time) -> score -> online select -> events (JSON lines, webhook) and clips

The audio-only rendition is analysed where the stream has one; with --clips, the video
rendition's recent segments are kept in a rolling buffer and each highlight's clip is cut from
there (operators.sinks.remote_clips.SegmentBuffer). Selection is operators.online_select: an
absolute threshold or a rolling percentile, the seed's greedy NMS decided window by window,
forced (and marked so) at max_delay seconds of stream past a window's end. The stream time
reaches selection in band (engine.chunks.Tick, past the features' look-ahead); while a live
source delivers nothing (a stalled download), it runs on with wall time, so a forced decision
still comes on time.

Event times: start_sec / end_sec are stream time (the audio as received, from the join); a
live HLS source also maps each end to the broadcast's own time and to UTC through the segment
that holds it (info.broadcast_times), as skipped ads pause stream time only.

Latency has two parts: what the scorer must hear after a window before it can score it (the
loudness scorer's background looks about 62 s ahead, so its windows are scored about a minute
after they end; the CRNN needs only a Demucs segment), then what NMS waits for (up to a window
length plus the NMS window more). The default max_delay allows for both.
"""
import bisect
import logging
import statistics
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import List, Optional, TextIO

from highlightsense.engine import grid
from highlightsense.engine.config import Config
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.engine.operator import Operator, lookahead_samples
from highlightsense.engine.pipeline import Pipeline, PipelineMetrics, run_async
from highlightsense.engine.progress import Progress, clock
from highlightsense.operators.sinks.events import ClipEvent, EventSink, HighlightEvent
from highlightsense.operators.sources.fetch import FetchPolicy
from highlightsense.operators.online_select import Decision, OnlineSelect
from highlightsense.operators.score import Score
from highlightsense.operators.windows import Windows

log = logging.getLogger("highlightsense")


@dataclass
class WatchOptions:
    threshold: Optional[float] = None  # absolute; else rolling_percentile (else cfg's choice)
    rolling_percentile: Optional[float] = None
    horizon_sec: float = 1800.0
    max_delay_sec: Optional[float] = None  # default: the scorer's look-ahead plus NMS's reach
    events_path: Optional[str] = None  # None: stdout
    events_stream: Optional[TextIO] = None
    webhook: Optional[str] = None
    clips_dir: Optional[str] = None
    start: str = "live_edge"  # or "first": from the playlist's first segment
    poll_sec: Optional[float] = None  # playlist reloads (default: its target duration)
    policy: Optional[FetchPolicy] = None


@dataclass
class WatchResult:
    events: List[dict]
    clips: List[dict]
    windows_seen: int
    undecided: int  # candidates left undecided (the user stopped the watch)
    stream_sec: float
    metrics: Optional[PipelineMetrics]
    stopped_by_user: bool = False
    max_delay_sec: float = 0.0


class Arrivals(Operator):
    """Passes audio through, noting when each chunk's end arrived (for event latency)."""

    name = "arrivals"
    threaded = False

    def __init__(self, keep_sec: float):
        self.keep_sec = keep_sec
        self._ends: deque = deque()  # stream seconds, increasing
        self._times: deque = deque()  # time.monotonic() when that end arrived

    def process(self, chunk) -> list:
        self._ends.append(chunk.end_sec)
        self._times.append(time.monotonic())
        while self._ends and self._ends[0] < chunk.end_sec - self.keep_sec:
            self._ends.popleft()
            self._times.popleft()
        return [chunk]

    def arrived(self, stream_sec: float) -> Optional[float]:
        """When the audio at stream_sec arrived (time.monotonic()), if still known."""
        i = bisect.bisect_left(self._ends, stream_sec - 1e-6)
        return self._times[i] if i < len(self._times) else None


class WatchProgress(Progress):
    def __init__(self, source, select: OnlineSelect, sink: EventSink, stream=None):
        super().__init__(None, stream)
        self.source, self.select, self.sink = source, select, sink

    def line(self, m: PipelineMetrics) -> str:
        text = f"stream {clock(m.position_sec)}"
        info = self.source.info
        edge = info.live_edge_sec
        if info.duration_sec:
            text += f" / {clock(info.duration_sec)}"
        elif edge is not None:
            text += f"  {max(0.0, edge - m.position_sec):.0f} s behind live"
        text += f"  events {self.select_count()}  undecided {self.select.undecided}"
        return text

    def select_count(self) -> int:
        return len(self.select.decisions)


def watch(url: str, cfg: Config, opts: Optional[WatchOptions] = None,
          show_progress: bool = True) -> WatchResult:
    from highlightsense.engine.passes import build_scorer
    from highlightsense.operators.sources.resolve import open_audio, resolve

    opts = opts or WatchOptions()
    if opts.threshold is not None and opts.rolling_percentile is not None:
        raise HighlightSenseError("give --threshold or --rolling-percentile, not both")
    threshold = percentile = None
    if opts.rolling_percentile is not None:
        percentile = opts.rolling_percentile
    elif opts.threshold is not None or cfg.threshold is not None:
        threshold = opts.threshold if opts.threshold is not None else cfg.threshold
    else:
        percentile = cfg.threshold_percentile  # the seed's percentile, over the horizon
    if percentile is not None and not 0 <= percentile <= 100:
        raise HighlightSenseError("--rolling-percentile must be between 0 and 100")
    if opts.horizon_sec <= 0:
        raise HighlightSenseError("--horizon must be positive")

    resolution = resolve(url)
    if resolution.audio.protocol != "hls" and opts.start == "live_edge" and resolution.is_live:
        raise HighlightSenseError(f"{url} is live but not HLS; watch follows HLS live streams")
    clips_dir = Path(opts.clips_dir) if opts.clips_dir else None
    if clips_dir is not None:
        clips_dir.mkdir(parents=True, exist_ok=True)

    scorer = build_scorer(cfg)
    stages = scorer.feature_stages(cfg)
    lookahead = lookahead_samples(stages) / grid.AUDIO_RATE  # what the features hear first
    reach = max(cfg.window_sec, cfg.nms_window)
    max_delay = opts.max_delay_sec
    if max_delay is None:
        max_delay = lookahead + 2 * reach
    if max_delay < 0:
        raise HighlightSenseError("--max-delay must not be negative")
    if max_delay < lookahead:
        log.warning("--max-delay %.0f s is shorter than the %s scorer's look-ahead (%.0f s): "
                    "windows are decided as soon as they are scored, forced", max_delay,
                    scorer.name, lookahead)
    log.info("%s scorer: its features look %.0f s ahead, so a window is decided about %.0f s "
             "after it ends; at most %.0f s (--max-delay), when the decision is forced",
             scorer.name, lookahead, lookahead + reach, max_delay)

    source = open_audio(url, cfg.audio_stream, cfg.chunk_sec, cfg.hls_fragments, opts.policy,
                        opts.start, opts.poll_sec, resolution)
    sink = EventSink(opts.events_path, opts.webhook, stream=opts.events_stream)
    events: List[dict] = []  # each as written (HighlightEvent.to_json())
    clips: List[dict] = []
    arrivals = Arrivals(keep_sec=max_delay + 2 * reach + 60)
    live_clips = _live_clips(url, resolution, clips_dir, source, cfg, opts,
                             keep_sec=max_delay + 3 * reach + 60, sink=sink, clips=clips)

    # Stream time to the broadcast's own time and UTC (HLS only), kept as far back as events
    # look: a window's start, up to max_delay and NMS's reach before its decision.
    times = source.info.broadcast_times
    if times is not None:
        times.keep_sec = max_delay + 2 * reach + 60

    def on_highlight(d: Decision) -> None:
        arrived = arrivals.arrived(d.window.end_sec)
        unknown = (None, None)
        event = HighlightEvent.of(d, id=len(events) + 1, source=url,
                                  latency_sec=time.monotonic() - arrived
                                  if arrived is not None else None,
                                  start_at=times.at(d.window.start_sec)
                                  if times is not None else unknown,
                                  end_at=times.at(d.window.end_sec, end=True)
                                  if times is not None else unknown)
        events.append(event.to_json())
        sink.emit(event)
        if live_clips is not None:
            live_clips.add(event.id, event.start_sec, event.end_sec)

    # Its clock (for max_delay) comes in band: the pipeline's Ticks.
    select = OnlineSelect(cfg.nms_window, cfg.window_sec, cfg.stride_sec, on_highlight,
                          threshold=threshold, percentile=percentile,
                          horizon_sec=opts.horizon_sec, max_delay_sec=max_delay)
    # Each window is scored as soon as its last frame is in.
    windows = Windows.for_scorer(replace(cfg, batch_size=1), scorer)
    progress = WatchProgress(source, select, sink) if show_progress else None
    # Live, stream time runs on while the source stalls: max_delay still forces decisions then.
    live = resolution.is_live or (resolution.audio.protocol == "hls"
                                  and source.info.duration_sec is None)
    pipeline = Pipeline(source, [arrivals, *stages, windows, Score(scorer), select],
                        queue_size=cfg.queue_size, on_progress=progress, live=live)

    stopped = False
    metrics = None
    try:
        metrics = run_async(pipeline.run())
    except KeyboardInterrupt:
        stopped = True
    finally:
        if live_clips is not None:
            live_clips.stop()
        sink.close()
    if stopped and select.undecided:
        log.info("stopped: %d candidate windows were still undecided", select.undecided)
    return WatchResult(events, clips, select.windows_seen, select.undecided,
                       pipeline.metrics.position_sec, metrics, stopped, max_delay)


def _live_clips(url, resolution, clips_dir, source, cfg: Config, opts: WatchOptions,
                keep_sec: float, sink: EventSink, clips: List[dict]):
    """The clip cutter (started) for --clips, from the video rendition's recent segments; None
    without --clips or without an HLS video rendition."""
    if clips_dir is None:
        return None
    video = resolution.video
    if video is None or video.protocol != "hls":
        log.warning("%s has no HLS video rendition: no clips", url)
        return None
    from highlightsense.operators.sinks.remote_clips import LiveClips, SegmentBuffer

    def on_clip(highlight_id: int, result) -> None:
        event = ClipEvent.of(highlight_id, result)
        clips.append(event.to_json())
        sink.emit(event)

    buffer = SegmentBuffer(video.url, keep_sec=keep_sec, policy=video.policy(opts.policy),
                           start=opts.start, poll_sec=opts.poll_sec).start()
    return LiveClips(buffer, clips_dir, source.info, on_clip, exact=cfg.exact_cuts).start()


def summary_line(result: WatchResult) -> str:
    delays = [e["delay_sec"] for e in result.events]
    latencies = [e["latency_sec"] for e in result.events if e["latency_sec"] is not None]
    forced = sum(e["forced"] for e in result.events)
    text = (f"{'stopped' if result.stopped_by_user else 'stream ended'} at "
            f"{clock(result.stream_sec)}: {result.windows_seen} windows, "
            f"{len(result.events)} highlights ({forced} forced)")
    if delays:
        text += (f"; decided {statistics.median(delays):.1f} s after a window's end (median), "
                 f"{max(delays):.1f} s at worst")
    if latencies:
        text += f"; {statistics.median(latencies):.1f} s wall latency (median)"
    if result.clips:
        text += f"; {len(result.clips)} clips"
    return text
