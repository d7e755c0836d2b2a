"""`watch`: follow a live stream and emit each highlight as soon as it is decided.

    source (HLS audio rendition, from the live edge) -> arrivals -> features -> windows (one at a
    time) -> score -> online select -> events (JSON lines, webhook) and clips

The audio-only rendition is analysed where the stream has one; with --clips, the video
rendition's recent segments are kept in a rolling buffer and each highlight's clip is cut from
there (operators.sinks.remote_clips.SegmentBuffer). Selection is operators.online_select: an
absolute threshold or a rolling percentile, the seed's greedy NMS decided window by window,
forced (and marked so) at max_delay seconds of stream past a window's end.

Latency has two parts: what the scorer must hear after a window before it can score it (the
loudness scorer's background looks about 62 s ahead, so its windows are scored about a minute
after they end; the CRNN needs only a Demucs segment), then what NMS waits for (up to a window
length plus the NMS window more). The default max_delay allows for both.
"""
import asyncio
import bisect
import logging
import queue
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional, TextIO

from highlightsense.engine import grid
from highlightsense.engine.config import Config
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.engine.operator import Operator
from highlightsense.engine.pipeline import Pipeline, PipelineMetrics, run_async
from highlightsense.engine.progress import Progress, clock
from highlightsense.operators.sinks.events import EventSink
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


def scorer_lookahead_sec(stages) -> float:
    """How much audio the feature stages must hear after a frame before they emit it."""
    total = 0.0
    for op in stages:
        delay = getattr(op, "delay_sec", None)
        if delay is None:
            delay = getattr(op, "warmup_samples", 0) / grid.AUDIO_RATE
        total += delay
    return total


class WatchProgress(Progress):
    def __init__(self, source, select: OnlineSelect, sink: EventSink, stream=None):
        super().__init__(None, stream)
        self.source, self.select, self.sink = source, select, sink

    def line(self, m: PipelineMetrics) -> str:
        text = f"stream {clock(m.position_sec)}"
        edge = getattr(self.source, "live_edge_sec", None)
        if getattr(self.source, "duration_sec", None):
            text += f" / {clock(self.source.duration_sec)}"
        elif edge is not None:
            text += f"  {max(0.0, edge - m.position_sec):.0f} s behind live"
        text += f"  events {self.select_count()}  undecided {self.select.undecided}"
        return text

    def select_count(self) -> int:
        return len(self.select.decisions)


def _iso_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ts(sec: float) -> str:
    sec = max(0, int(sec))
    return f"{sec // 3600:02d}:{sec // 60 % 60:02d}:{sec % 60:02d}"


def watch(url: str, cfg: Config, opts: Optional[WatchOptions] = None,
          show_progress: bool = True) -> WatchResult:
    from highlightsense.engine.detect import build_scorer, build_stages
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
    stages = build_stages(cfg, scorer)
    lookahead = scorer_lookahead_sec(stages)
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
    events: List[dict] = []
    clips: List[dict] = []
    arrivals = Arrivals(keep_sec=max_delay + 2 * reach + 60)
    pipeline_box = {}

    buffer = None
    clip_jobs: "queue.Queue" = queue.Queue()
    if clips_dir is not None:
        video = resolution.video
        if video is None or video.protocol != "hls":
            log.warning("%s has no HLS video rendition: no clips", url)
            clips_dir = None
        else:
            from highlightsense.operators.sinks.remote_clips import SegmentBuffer

            buffer = SegmentBuffer(video.url, keep_sec=max_delay + 3 * reach + 60,
                                   policy=video.policy(opts.policy), start=opts.start,
                                   poll_sec=opts.poll_sec).start()

    def on_highlight(d: Decision) -> None:
        w = d.window
        now = time.monotonic()
        arrived = arrivals.arrived(w.end_sec)
        event = {
            "type": "highlight", "id": len(events) + 1,
            "start_sec": round(w.start_sec, 3), "end_sec": round(w.end_sec, 3),
            "start_ts": _ts(w.start_sec), "end_ts": _ts(w.end_sec),
            "peak_sec": round(w.peak_sec, 3), "confidence": w.confidence,
            "threshold": d.threshold, "forced": d.forced,
            "decided_at_sec": round(d.decided_at_sec, 3), "delay_sec": round(d.delay_sec, 3),
            "latency_sec": round(now - arrived, 3) if arrived is not None else None,
            "emitted_at": _iso_now(), "source": url,
        }
        events.append(event)
        sink.emit(event)
        if buffer is not None:
            clip_jobs.put(event)

    select = OnlineSelect(cfg.nms_window, cfg.window_sec, cfg.stride_sec, on_highlight,
                          threshold=threshold, percentile=percentile,
                          horizon_sec=opts.horizon_sec, max_delay_sec=max_delay,
                          position=lambda: pipeline_box["p"].metrics.position_sec)

    def cut_clips() -> None:
        from highlightsense.operators.sources.hls import stream_to_container

        while (event := clip_jobs.get()) is not None:
            stem = clips_dir / f"highlight_{event['id']:04d}"
            try:
                entry = stream_to_container(source.timeline, event["start_sec"])
                result = buffer.cut(stem, event["start_sec"], event["end_sec"], entry,
                                    exact=cfg.exact_cuts)
            except HighlightSenseError as e:
                log.warning("no clip for highlight %d: %s", event["id"], e)
                continue
            if result is not None:
                line = {"type": "clip", "id": event["id"], "path": str(result.path),
                        "start_sec": round(result.start_sec, 3),
                        "end_sec": round(result.end_sec, 3), "mode": result.mode,
                        "note": result.note}
                clips.append(line)
                sink.emit(line)

    clipper = threading.Thread(target=cut_clips, daemon=True, name="hs-clips")
    if buffer is not None:
        clipper.start()

    windows = Windows(cfg.window_frames, cfg.stride_frames,
                      pad_frames=getattr(scorer, "pad_frames", None) or cfg.window_frames,
                      batch_size=1)  # each window scored as soon as its last frame is in
    progress = WatchProgress(source, select, sink) if show_progress else None
    pipeline = Pipeline(source, [arrivals, *stages, windows, Score(scorer), select],
                        queue_size=cfg.queue_size, on_progress=progress)
    pipeline_box["p"] = pipeline

    async def run():
        task = asyncio.create_task(pipeline.run())
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=0.25)
                select.tick()  # max_delay applies between scores too
            return task.result()
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    stopped = False
    metrics = None
    try:
        metrics = run_async(run())
    except KeyboardInterrupt:
        stopped = True
    finally:
        if buffer is not None:
            clip_jobs.put(None)
            clipper.join(120)
            buffer.close()
        sink.close()
    if stopped and select.undecided:
        log.info("stopped: %d candidate windows were still undecided", select.undecided)
    return WatchResult(events, clips, select.windows_seen, select.undecided,
                       pipeline.metrics.position_sec, metrics, stopped, max_delay)


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
