"""Clips from URL sources, copying only each clip's range: never the whole VOD.

  direct media file  PyAV opens it through HttpFile and seeks: only the bytes around the clip
                     travel (range requests);
  HLS on demand      the segments covering the clip (one target duration of margin each side)
                     are fetched, joined into a temporary .ts and cut there;
  HLS live (watch)   SegmentBuffer keeps the recent segments of the video rendition as they are
                     published, and clips are cut from it: no second download.

Stream time (the analysed audio's) maps to the video's timestamps through the audio's
TimelineEntry: HLS renditions share timestamps and discontinuity numbers (RFC 8216, 6.2.4), so
a clip is cut from the video segments of the same discontinuity, at the same timestamps.
Cutting itself is operators.sinks.clips.cut_clip (stream copy from the keyframe at or before the
start, or exact re-encoding).
"""
import io
import logging
import queue
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import av

from highlightsense.engine import threads
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.engine.files import create_new
from highlightsense.operators.sinks.clips import ClipResult, clip_name, cut_clip
from highlightsense.operators.sources.fetch import FetchPolicy, HttpFile, fetch_bytes
from highlightsense.operators.sources.hls_playlist import Segment, load_media_playlist
from highlightsense.operators.sources.hls_reader import HlsReader, segment_download
from highlightsense.operators.sources.hls_source import TimelineEntry, stream_to_container

log = logging.getLogger("highlightsense")


def clip_stems(clips_dir, windows: Sequence[Tuple[float, float]]) -> List[Path]:
    """clips_dir/highlight_01_<start>, _02_<start>, ... as cut_clips names them."""
    return [Path(clips_dir) / clip_name(i, start, len(windows))
            for i, (start, _) in enumerate(windows, 1)]


def cut_from_segments(data: Sequence[bytes], stem: Path, start_sec: float, end_sec: float,
                      entry: TimelineEntry, exact: bool = False,
                      stream_index: Optional[int] = None) -> ClipResult:
    """Cut [start_sec, end_sec) (stream time) out of consecutive segments of one discontinuity
    (init section first, if any), through a temporary file beside the clip."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    tmp = stem.with_name(f".{stem.name}.segments.ts")
    try:
        with create_new(tmp) as f:  # never through a link planted at that name
            for piece in data:
                f.write(piece)
        return cut_clip(tmp, stem, start_sec, end_sec,
                        origin_sec=entry.origin_sec - entry.stream_sec, exact=exact,
                        stream_index=stream_index)
    finally:
        tmp.unlink(missing_ok=True)


def cut_url_clips(url: str, clips_dir, windows: Sequence[Tuple[float, float]], origin_sec: float,
                  timeline: Optional[list], exact: bool = False,
                  stream_index: Optional[int] = None, parallel: int = 4,
                  policy: Optional[FetchPolicy] = None, resolution=None,
                  before: Optional[Callable[[int, int], None]] = None) -> List[ClipResult]:
    """`detect URL`'s clips: each (start, end) of stream time into
    clips_dir/highlight_NN_<start>.*, from yt-dlp's "best" format of url (its audio format when
    it has no video); before(k, n) is told as the k-th of n begins."""
    from highlightsense.operators.sources.resolve import resolve

    resolution = resolution or resolve(url)
    stream = resolution.video or resolution.audio
    policy = stream.policy(policy)
    stems = clip_stems(clips_dir, windows)
    told = before or (lambda k, n: None)
    if stream.protocol == "http":
        same = stream.url == resolution.audio.url
        results = []
        for k, (stem, (s, e)) in enumerate(zip(stems, windows), 1):
            told(k, len(windows))
            results.append(cut_clip(HttpFile(stream.url, policy), stem, s, e,
                                    origin_sec=origin_sec, exact=exact,
                                    stream_index=stream_index if same else None))
        return results
    if not timeline:
        raise HighlightSenseError(f"no timeline for {url}: run detect on it again to cut clips")
    timeline = [e if isinstance(e, TimelineEntry) else TimelineEntry(**e) for e in timeline]
    playlist = load_media_playlist(stream.url, policy, "video")
    results = []
    for k, (stem, (s, e)) in enumerate(zip(stems, windows), 1):
        told(k, len(windows))
        entry = stream_to_container(timeline, s)
        segments = _covering(playlist, entry, s, e)
        if not segments:
            raise HighlightSenseError(
                f"{url}: the segments for {s:.1f}-{e:.1f} s are no longer in the playlist")
        downloads = []
        data = []
        for i, seg in enumerate(segments):  # `parallel` at a time, kept in order
            # The reader's bounds: at most max(16 MiB, EXTINF x 100 Mbit/s) kept, and a deadline
            # of 30 s + 3 x EXTINF for each attempt (a trickling server is retried, not waited on).
            downloads.append(segment_download(seg, policy,
                                              f"HLS segment {seg.sequence} ({seg.uri})").start())
            if len(downloads) >= parallel or i == len(segments) - 1:
                data += [d.result() for d in downloads]
                downloads = []
        init = [fetch_bytes(segments[0].init[0], policy, "init section", segments[0].init[1])] \
            if segments[0].init else []
        results.append(cut_from_segments(init + data, stem, s, e, entry, exact))
    return results


def _covering(playlist, entry: TimelineEntry, start: float, end: float) -> List[Segment]:
    """The video segments around [start, end) of stream time, by the playlist's durations
    counted from the entry's first segment, with a target duration of margin each side."""
    run = [s for s in playlist.segments
           if s.discontinuity == entry.discontinuity and not s.ad and s.sequence >= entry.sequence]
    if not run or run[0].sequence != entry.sequence:
        return []
    margin = playlist.target_duration
    chosen, t = [], entry.stream_sec
    for s in run:
        if t < end + margin and t + s.duration > start - margin:
            chosen.append(s)
        t += s.duration
    return chosen


def first_timestamp(data: bytes) -> Optional[float]:
    """Container time of a segment's first video (else audio) packet."""
    try:
        with av.open(io.BytesIO(data)) as container:
            streams = list(container.streams.video) or list(container.streams.audio)
            for packet in container.demux(streams[0]):
                if packet.pts is not None:
                    return float(packet.pts * packet.time_base)
    except (av.FFmpegError, IndexError):
        return None
    return None


class SegmentBuffer:
    """The recent segments of a live HLS video rendition, for `watch`'s clips: fetched in a
    thread as they are published, the last keep_sec seconds kept in memory."""

    def __init__(self, url: str, keep_sec: float, policy: Optional[FetchPolicy] = None,
                 parallel: int = 2, start: str = "live_edge", poll_sec: Optional[float] = None):
        self.reader = HlsReader(url, policy, parallel, "video", start, poll_sec)
        self.keep_sec = keep_sec
        self._pieces: deque = deque()  # (segment, first timestamp, bytes with init section)
        self._cond = threading.Condition()
        self.ended = False
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="hs-video-buffer")

    def start(self) -> "SegmentBuffer":
        self._thread.start()
        return self

    def close(self) -> None:
        """Stops the downloads, which ends the buffer's thread (joined, engine.threads)."""
        self.reader.close()
        if self._thread.is_alive():
            threads.join([self._thread])

    @property
    def held_sec(self) -> float:
        with self._cond:
            return sum(seg.duration for seg, _, _ in self._pieces)

    def _run(self) -> None:
        try:
            for fragment in self.reader.fragments():
                data = self.reader.init_section(fragment.segment) + fragment.download.result()
                t = first_timestamp(data)
                with self._cond:
                    self._pieces.append((fragment.segment, t, data))
                    while sum(s.duration for s, _, _ in self._pieces) > self.keep_sec:
                        self._pieces.popleft()
                    self._cond.notify_all()
        except HighlightSenseError as e:
            self.error = e
            log.warning("video for clips: %s; no more clips", e)
        finally:
            with self._cond:
                self.ended = True
                self._cond.notify_all()

    def cut(self, stem, start_sec: float, end_sec: float, entry: TimelineEntry,
            exact: bool = False, wait_sec: float = 30.0) -> Optional[ClipResult]:
        """The clip [start_sec, end_sec) of stream time, from the buffer; waits up to wait_sec
        for its last segment to arrive. None (with a warning) when the buffer lacks it."""
        t0 = entry.origin_sec + (start_sec - entry.stream_sec)
        t1 = entry.origin_sec + (end_sec - entry.stream_sec)
        deadline = time.monotonic() + wait_sec
        with self._cond:
            while not self.ended and not self._reaches(entry.discontinuity, t1):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            same = [(seg, t, data) for seg, t, data in self._pieces
                    if seg.discontinuity == entry.discontinuity and t is not None]
        # From the last segment starting at or before t0 to the last starting before t1.
        first = max([i for i, (_, t, _) in enumerate(same) if t <= t0 + 1e-6], default=0)
        chosen = [p for i, p in enumerate(same) if i >= first and p[1] < t1]
        if not chosen or chosen[0][1] > t0 + 1.0:
            log.warning("no clip for %s: the video buffer no longer holds %.1f s of the stream",
                        Path(stem).name, start_sec)
            return None
        return cut_from_segments([data for _, _, data in chosen], stem, start_sec, end_sec,
                                 entry, exact)

    def _reaches(self, discontinuity: int, t: float) -> bool:
        for seg, start, _ in reversed(self._pieces):
            if start is not None:
                if seg.discontinuity != discontinuity:
                    return seg.discontinuity > discontinuity  # past that run: it is complete
                return start + seg.duration >= t
        return False


class LiveClips:
    """`watch`'s clips: one for each highlight as it is decided, cut from a SegmentBuffer in a
    thread of its own, in order, into clips_dir/highlight_0001_<start>.* (the highlight's id).
    on_clip(id, ClipResult) is called (from that thread) for each clip written; a highlight the
    buffer cannot give a clip for is a warning. `info` is the analysed source's SourceInfo: its
    timeline maps stream time to the video's timestamps. start(), then add() per highlight, then
    stop(), which waits for the clips still to cut and closes the buffer."""

    def __init__(self, buffer: SegmentBuffer, clips_dir, info, on_clip: Callable,
                 exact: bool = False):
        self.buffer, self.clips_dir, self.info = buffer, Path(clips_dir), info
        self.on_clip, self.exact = on_clip, exact
        self._jobs: "queue.Queue" = queue.Queue()
        self._thread = threading.Thread(target=self._run, daemon=True, name="hs-clips")

    def start(self) -> "LiveClips":
        self._thread.start()
        return self

    def add(self, highlight_id: int, start_sec: float, end_sec: float) -> None:
        self._jobs.put((highlight_id, start_sec, end_sec))

    def stop(self, wait_sec: float = 120.0) -> None:
        self._jobs.put(None)
        if self._thread.is_alive():
            self._thread.join(wait_sec)
        self.buffer.close()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            highlight_id, start_sec, end_sec = job
            try:
                entry = stream_to_container(self.info.timeline, start_sec)
                stem = self.clips_dir / clip_name(highlight_id, start_sec)
                result = self.buffer.cut(stem, start_sec, end_sec, entry, exact=self.exact)
            except HighlightSenseError as e:
                log.warning("no clip for highlight %d: %s", highlight_id, e)
                continue
            if result is not None:
                self.on_clip(highlight_id, result)
