"""Following an HLS media playlist and fetching its segments: HlsReader yields them as Fragments,
in playlist order, ads skipped (one log line per ad break), with the bytes of each readable while
they arrive.

Live playlists are reloaded every target duration (half of it after a reload that brought
nothing new, as the RFC asks; never more often than every MIN_RELOAD_SEC nor less often than
every MAX_RELOAD_SEC, whatever the playlist says) until EXT-X-ENDLIST, or until no new segment has come for
`idle_sec`, or the playlist stays unreachable through the retries after segments came (then the
stream is taken as ended, with a warning).

Fetching. Up to `parallel` segments download at once (operators.sources.fetch: retries, resume by
Range, watchdog); they are handed on strictly in playlist order, and each can be read while it
is still arriving. Each segment is bounded: at most max(16 MiB, its EXTINF x 100 Mbit/s) is
kept (past it, a one-line error), and each attempt at it may take 30 s + 3 x its EXTINF (then it
is retried, as after a stall). Playlists themselves are parsed by operators.sources.hls_playlist
(a reload whose text is unchanged is not parsed again).
"""
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Dict, Iterator, Optional, Tuple

from highlightsense.engine.errors import HighlightSenseError
from highlightsense.operators.sources.fetch import Download, FetchPolicy, fetch_bytes
from highlightsense.operators.sources.hls_playlist import (MediaPlaylist, Segment,
                                                           fetch_playlist, load_media_playlist,
                                                           parse_playlist)

log = logging.getLogger("highlightsense")

LIVE_START_DURATIONS = 3  # live edge: start this many target durations back, as players do
MIN_RELOAD_SEC = 0.5  # a live playlist saying TARGETDURATION:0 is not reloaded without pause
MAX_RELOAD_SEC = 30.0
SEGMENT_MIN_BOUND = 16 * 2**20  # bytes a segment may hold whatever its EXTINF
SEGMENT_BYTES_PER_SEC = 100_000_000 // 8  # 100 Mbit/s of EXTINF
SEGMENT_MAX_BOUND = 2**30  # and never more than this in memory
SEGMENT_DEADLINE_PER_SEC = 3.0  # an attempt may take policy.deadline_sec + 3 x EXTINF


def segment_download(segment: Segment, policy: FetchPolicy, label: str) -> Download:
    """A Download of one segment, with the bounds its EXTINF gives it (not started)."""
    bound = max(SEGMENT_MIN_BOUND,
                min(SEGMENT_MAX_BOUND, int(segment.duration * SEGMENT_BYTES_PER_SEC)))
    return Download(segment.uri, policy, segment.byterange, label, max_bytes=bound,
                    deadline_sec=policy.deadline_sec
                    + SEGMENT_DEADLINE_PER_SEC * segment.duration)


@dataclass
class Fragment:
    """One segment on its way: `download` holds its bytes as they arrive. new_group: it starts
    a new timeline (first segment, discontinuity, after a skipped ad break or missed segments)."""

    segment: Segment
    download: Download
    new_group: bool
    stream_sec: float  # where it starts in stream time, by the playlist's durations (estimate)


class HlsReader:
    """Follows a media playlist (or a master's `want` rendition) and yields its Fragments in
    order, ads skipped, up to `parallel` downloading at once.

    start: "first" (the playlist's first segment) or "live_edge" (for live playlists: about
    three target durations before the newest; a finished playlist starts at its first anyway).
    poll_sec: how often to reload a live playlist (default: its target duration).
    idle_sec: a live playlist with no new segment for this long is taken as ended.
    """

    def __init__(self, url: str, policy: Optional[FetchPolicy] = None, parallel: int = 4,
                 want: str = "audio", start: str = "first", poll_sec: Optional[float] = None,
                 idle_sec: Optional[float] = None):
        if parallel < 1:
            raise HighlightSenseError("fragments at once must be at least 1")
        # Headers go to the playlist's origin, and its host decides whether private
        # addresses may be fetched (a playlist on 127.0.0.1 may list segments there).
        self.policy = (policy or FetchPolicy()).bound_to(url)
        self.parallel = parallel
        self.start = start
        self.poll_sec = poll_sec
        self.playlist = load_media_playlist(url, self.policy, want)
        self.url = self.playlist.url
        self.idle_sec = idle_sec if idle_sec is not None else max(
            60.0, 6 * min(MAX_RELOAD_SEC, self.playlist.target_duration))
        self.listed_sec = 0.0  # stream time at the end of the newest segment taken (estimate)
        self.live_edge_at = time.monotonic()  # when the newest segment was first seen
        self.ads_skipped_sec = 0.0
        self.segments_read = 0
        self.bytes_read = 0
        self._stop = threading.Event()
        self._inflight: deque = deque()
        self._init_cache: Dict[Tuple, bytes] = {}
        self._changed = True  # the last reload brought something new
        self._last_text: Optional[bytes] = None  # the newest reload's bytes

    @property
    def live(self) -> bool:
        return not self.playlist.ended

    def close(self) -> None:
        """Safe from any thread: stops downloads and wakes every wait."""
        self._stop.set()
        for fragment in list(self._inflight):
            fragment.download.cancel()

    def init_section(self, segment: Segment) -> bytes:
        """The EXT-X-MAP bytes a segment needs in front of it (b"" for MPEG-TS)."""
        if segment.init is None:
            return b""
        if segment.init not in self._init_cache:
            uri, rng = segment.init
            if len(self._init_cache) >= 8:  # a live playlist may name a new one for each
                self._init_cache.pop(next(iter(self._init_cache)))
            self._init_cache[segment.init] = fetch_bytes(uri, self.policy, f"init section {uri}",
                                                         rng, max_bytes=SEGMENT_MIN_BOUND,
                                                         deadline_sec=self.policy.deadline_sec)
        return self._init_cache[segment.init]

    def fragments(self) -> Iterator[Fragment]:
        todo: deque = deque()  # (segment, new_group, stream_sec) not started yet
        state = {"next": None, "disc": None, "init": None, "cut": True, "ad": None}
        playlist = self.playlist
        last_load = time.monotonic()
        self._take(playlist, todo, state, first=True)
        try:
            while not self._stop.is_set():
                if not playlist.ended and time.monotonic() - last_load >= self._poll(playlist):
                    before = len(todo)
                    try:
                        playlist = self.playlist = self._reload()
                    except HighlightSenseError as e:
                        if not self.segments_read:
                            raise
                        # Live playlists are taken down when the broadcast ends.
                        log.warning("%s: the live playlist is gone (%s); taking the stream as "
                                    "ended", self.url, e)
                        break
                    last_load = time.monotonic()
                    self._take(playlist, todo, state)
                    self._changed = len(todo) > before or playlist.ended
                while todo and len(self._inflight) < self.parallel:
                    segment, new_group, at = todo.popleft()
                    download = segment_download(
                        segment, self.policy, f"HLS segment {segment.sequence} ({segment.uri})")
                    self._inflight.append(Fragment(segment, download.start(), new_group, at))
                if self._inflight:
                    fragment = self._inflight[0]
                    yield fragment  # the consumer reads it to the end before asking again
                    self._inflight.popleft()
                    self.segments_read += 1
                    self.bytes_read += len(fragment.download.data)
                    continue
                if playlist.ended:
                    break
                if time.monotonic() - self.live_edge_at > self.idle_sec:
                    log.warning("%s: no new segment for %.0f s; taking the stream as ended",
                                self.url, self.idle_sec)
                    break
                wait = self._poll(playlist) - (time.monotonic() - last_load)
                self._stop.wait(max(0.0, wait))
        finally:
            self._end_ad(state)
            self.close()

    def _poll(self, playlist: MediaPlaylist) -> float:
        if self.poll_sec is not None:
            return self.poll_sec
        wait = playlist.target_duration if self._changed else playlist.target_duration / 2
        return min(MAX_RELOAD_SEC, max(MIN_RELOAD_SEC, wait))

    def _reload(self) -> MediaPlaylist:
        text = fetch_playlist(self.url, self.policy)
        if text == self._last_text:
            return self.playlist  # nothing new: its segments are all taken already
        fresh = parse_playlist(text.decode("utf-8", "replace"), self.url)
        self._last_text = text
        if not isinstance(fresh, MediaPlaylist):
            raise HighlightSenseError(f"{self.url} turned into a master playlist")
        return fresh

    def _take(self, playlist: MediaPlaylist, todo: deque, state: dict, first: bool = False):
        segments = playlist.segments
        if first and self.start == "live_edge" and not playlist.ended and segments:
            # Start about three target durations from the end, as players do.
            back, i = 0.0, len(segments)
            while i > 0 and back < LIVE_START_DURATIONS * playlist.target_duration - 1e-6:
                i -= 1
                back += segments[i].duration
            segments = segments[i:]
        for s in segments:
            if state["next"] is not None and s.sequence < state["next"]:
                continue  # already taken
            self.live_edge_at = time.monotonic()
            if state["next"] is not None and s.sequence > state["next"]:
                log.warning("%s: fell behind the live playlist: %d segments missed",
                            self.url, s.sequence - state["next"])
                state["cut"] = True
            state["next"] = s.sequence + 1
            if s.ad:
                if state["ad"] is None:
                    state["ad"] = [0, 0.0, self.listed_sec, s.sequence]
                state["ad"][0] += 1
                state["ad"][1] += s.duration
                state["cut"] = True
                continue
            self._end_ad(state)
            if s.discontinuity != state["disc"] or s.init != state["init"]:
                state["cut"] = True
            state["disc"], state["init"] = s.discontinuity, s.init
            todo.append((s, state["cut"], self.listed_sec))
            state["cut"] = False
            self.listed_sec += s.duration

    def _end_ad(self, state: dict) -> None:
        if state["ad"] is not None:
            count, seconds, at, seq = state["ad"]
            state["ad"] = None
            self.ads_skipped_sec += seconds
            minutes, secs = divmod(int(at), 60)
            log.info("skipped an ad break marked in the playlist: %d segment%s (%.1f s) from "
                     "segment %d, at %d:%02d of the stream", count, "s" if count > 1 else "",
                     seconds, seq, minutes, secs)
