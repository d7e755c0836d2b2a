"""HLS: playlists, a reader that follows one, and the audio source that decodes it as it arrives.

Playlists (RFC 8216). Master playlists: variants (EXT-X-STREAM-INF) and renditions (EXT-X-MEDIA);
for audio the reader takes an audio rendition, else an audio-only variant (CODECS all audio, or
Twitch's VIDEO="audio_only"), else the smallest variant; for video the largest variant with
video. Media playlists: VOD, EVENT or sliding live windows, EXT-X-DISCONTINUITY(-SEQUENCE),
EXT-X-BYTERANGE, EXT-X-MAP, EXT-X-PROGRAM-DATE-TIME, EXT-X-ENDLIST. Encrypted segments are refused.

Live playlists are reloaded every target duration (half of it after a reload that brought
nothing new, as the RFC asks) until EXT-X-ENDLIST, or until no new segment has come for
`idle_sec`, or the playlist stays unreachable through the retries after segments came (then the
stream is taken as ended, with a warning).

Ads. A segment the playlist marks as an inserted ad is skipped, with one log line per ad break.
Recognised marks:
  - EXT-X-DATERANGE with CLASS="twitch-stitched-ad" or an ID starting "stitched-ad", covering the
    segment's program date (EXT-X-PROGRAM-DATE-TIME): Twitch's server-side ads;
  - an EXTINF title containing "Amazon": Twitch titles ad segments so (live ones "live");
  - EXT-X-CUE-OUT ... EXT-X-CUE-IN, and segments tagged EXT-X-CUE-OUT-CONT (SCTE-35 ad breaks,
    EXT-OATCLS-SCTE35 being part of the same cue).

Fetching. Up to `parallel` segments download at once (operators.sources.fetch: retries, resume by
Range, watchdog); they are handed on strictly in playlist order, and each can be read while it
is still arriving.

Decoding. HlsAudioSource feeds the bytes to PyAV through a file object, one container per run of
segments that share a timeline: a discontinuity, a skipped ad break or missed segments start a
new one, because timestamps restart or jump there. AudioDecoder does the decoding (gap filling,
corrupt packets, chunking); stream time stays continuous and counts the audio as received.
`timeline` maps stream time back to each run's own timestamps (for cutting clips).
"""
import logging
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Dict, Iterator, List, Optional, Tuple, Union
from urllib.parse import urljoin

from highlightsense.engine.chunks import AudioChunk
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.engine.grid import AUDIO_RATE
from highlightsense.engine.operator import Source
from highlightsense.operators.sources.fetch import Download, FetchPolicy, fetch_bytes

log = logging.getLogger("highlightsense")

AUDIO_CODECS = ("mp4a", "ac-3", "ec-3", "opus", "flac", "mp3", "alac", "dts")
LIVE_START_DURATIONS = 3  # live edge: start this many target durations back, as players do


@dataclass
class Segment:
    uri: str
    duration: float
    sequence: int  # media sequence number
    discontinuity: int  # discontinuity sequence number: timestamps are continuous within one
    title: str = ""
    byterange: Optional[Tuple[int, int]] = None  # (offset, length)
    init: Optional[Tuple[str, Optional[Tuple[int, int]]]] = None  # EXT-X-MAP (uri, byterange)
    date: Optional[datetime] = None
    ad: bool = False


@dataclass
class MediaPlaylist:
    url: str
    target_duration: float
    segments: List[Segment]
    ended: bool
    kind: Optional[str] = None  # VOD, EVENT or None

    @property
    def duration_sec(self) -> float:
        """Seconds of content, ads left out."""
        return sum(s.duration for s in self.segments if not s.ad)


@dataclass
class Variant:
    uri: str
    bandwidth: int = 0
    codecs: str = ""
    resolution: str = ""
    audio_group: str = ""
    video: str = ""  # Twitch's VIDEO attribute ("audio_only", "chunked", "720p60", ...)

    @property
    def audio_only(self) -> bool:
        if self.video.lower() == "audio_only":
            return True
        codecs = [c.strip().lower() for c in self.codecs.split(",") if c.strip()]
        return bool(codecs) and not self.resolution and all(c.startswith(AUDIO_CODECS)
                                                             for c in codecs)


@dataclass
class Rendition:
    kind: str  # AUDIO, VIDEO, SUBTITLES, CLOSED-CAPTIONS
    group: str
    name: str
    uri: Optional[str]
    default: bool = False


@dataclass
class MasterPlaylist:
    url: str
    variants: List[Variant]
    renditions: List[Rendition]

    def audio_uri(self) -> str:
        """An audio rendition, else the best audio-only variant, else the smallest variant."""
        audio = [r for r in self.renditions if r.kind == "AUDIO" and r.uri]
        if audio:
            return next((r for r in audio if r.default), audio[0]).uri
        only = [v for v in self.variants if v.audio_only]
        if only:
            return max(only, key=lambda v: v.bandwidth).uri
        return min(self.variants, key=lambda v: v.bandwidth).uri

    def video_uri(self) -> Optional[str]:
        """The largest variant with video (yt-dlp's "best"), None when there is none."""
        video = [v for v in self.variants if not v.audio_only]
        return max(video, key=lambda v: v.bandwidth).uri if video else None


_ATTRIBUTE = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)')


def attributes(text: str) -> Dict[str, str]:
    """An attribute list (KEY=value,KEY="quoted, value") as a dict, quotes removed."""
    return {k: v[1:-1] if v.startswith('"') else v for k, v in _ATTRIBUTE.findall(text)}


def _date(text: str) -> Optional[datetime]:
    try:
        return datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None


def _byterange(text: str, previous_end: int) -> Tuple[int, int]:
    length, _, offset = text.partition("@")
    return (int(offset) if offset else previous_end, int(length))


def parse_playlist(text: str, url: str) -> Union[MasterPlaylist, MediaPlaylist]:
    """A playlist's text (from url: relative URIs resolve against it)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("#EXTM3U"):
        raise HighlightSenseError(f"{url} is not an HLS playlist (no #EXTM3U header)")
    if any(line.startswith("#EXT-X-STREAM-INF") for line in lines):
        return _parse_master(lines, url)
    return _parse_media(lines, url)


def _parse_master(lines: List[str], url: str) -> MasterPlaylist:
    variants, renditions, pending = [], [], None
    for line in lines:
        if line.startswith("#EXT-X-STREAM-INF:"):
            pending = attributes(line.split(":", 1)[1])
        elif line.startswith("#EXT-X-MEDIA:"):
            a = attributes(line.split(":", 1)[1])
            renditions.append(Rendition(a.get("TYPE", ""), a.get("GROUP-ID", ""),
                                        a.get("NAME", ""),
                                        urljoin(url, a["URI"]) if "URI" in a else None,
                                        a.get("DEFAULT") == "YES"))
        elif not line.startswith("#") and pending is not None:
            variants.append(Variant(urljoin(url, line), int(pending.get("BANDWIDTH", 0) or 0),
                                    pending.get("CODECS", ""), pending.get("RESOLUTION", ""),
                                    pending.get("AUDIO", ""), pending.get("VIDEO", "")))
            pending = None
    return MasterPlaylist(url, variants, renditions)


def _parse_media(lines: List[str], url: str) -> MediaPlaylist:
    target, sequence, disc, ended, kind = 0.0, 0, 0, False, None
    segments: List[Segment] = []
    ad_ranges = []  # (start, end) program dates of stitched ads
    duration = title = None
    byterange = init = None
    date = None
    next_offset = 0
    in_cue = cue_tagged = False
    discontinuity_pending = False
    for line in lines:
        tag, _, value = line.partition(":")
        if tag == "#EXT-X-TARGETDURATION":
            target = float(value)
        elif tag == "#EXT-X-MEDIA-SEQUENCE":
            sequence = int(value)
        elif tag == "#EXT-X-DISCONTINUITY-SEQUENCE":
            disc = int(value)
        elif tag == "#EXT-X-PLAYLIST-TYPE":
            kind = value.strip().upper()
        elif tag == "#EXT-X-ENDLIST":
            ended = True
        elif tag == "#EXT-X-DISCONTINUITY":
            discontinuity_pending = True
        elif tag == "#EXTINF":
            d, _, title = value.partition(",")
            duration = float(d)
        elif tag == "#EXT-X-BYTERANGE":
            byterange = _byterange(value, next_offset)
        elif tag == "#EXT-X-MAP":
            a = attributes(value)
            init = (urljoin(url, a["URI"]),
                    _byterange(a["BYTERANGE"], 0) if "BYTERANGE" in a else None)
        elif tag == "#EXT-X-KEY":
            method = attributes(value).get("METHOD", "NONE")
            if method != "NONE":
                raise HighlightSenseError(
                    f"{url} is encrypted (EXT-X-KEY METHOD={method}); encrypted HLS is not "
                    "supported")
        elif tag == "#EXT-X-PROGRAM-DATE-TIME":
            date = _date(value)
        elif tag == "#EXT-X-DATERANGE":
            a = attributes(value)
            if a.get("CLASS") == "twitch-stitched-ad" or a.get("ID", "").startswith("stitched-ad"):
                start = _date(a.get("START-DATE", ""))
                end = _date(a.get("END-DATE", "")) if "END-DATE" in a else None
                if start is not None and end is None and "DURATION" in a:
                    end = start + timedelta(seconds=float(a["DURATION"]))
                if start is not None and end is not None:
                    ad_ranges.append((start, end))
        elif tag == "#EXT-X-CUE-OUT":
            in_cue = True
        elif tag == "#EXT-X-CUE-OUT-CONT":
            cue_tagged = True
        elif tag == "#EXT-X-CUE-IN":
            in_cue = False
        elif not line.startswith("#") and duration is not None:
            if discontinuity_pending:
                disc += 1
                discontinuity_pending = False
            ad = in_cue or cue_tagged or "amazon" in (title or "").lower()
            segments.append(Segment(urljoin(url, line), duration, sequence + len(segments), disc,
                                    title or "", byterange, init, date, ad))
            if byterange:
                next_offset = byterange[0] + byterange[1]
            if date is not None:
                date = date + timedelta(seconds=duration)
            duration = title = byterange = None
            cue_tagged = False
    for s in segments:  # DATERANGE tags may come anywhere: match them once all are read
        if s.date is not None and any(a <= s.date < b for a, b in ad_ranges):
            s.ad = True
    return MediaPlaylist(url, target or max((s.duration for s in segments), default=6.0),
                         segments, ended, kind)


def load_playlist(url: str, policy: FetchPolicy) -> Union[MasterPlaylist, MediaPlaylist]:
    text = fetch_bytes(url, policy, label=f"playlist {url}").decode("utf-8", "replace")
    return parse_playlist(text, url)


def load_media_playlist(url: str, policy: FetchPolicy, want: str = "audio") -> MediaPlaylist:
    """The media playlist at url, or the `want` ("audio" or "video") rendition of a master."""
    playlist = load_playlist(url, policy)
    if isinstance(playlist, MasterPlaylist):
        if not playlist.variants and not playlist.renditions:
            raise HighlightSenseError(f"{url} lists no streams")
        chosen = playlist.audio_uri() if want == "audio" else playlist.video_uri()
        if chosen is None:
            raise HighlightSenseError(f"{url} has no {want} stream")
        playlist = load_playlist(chosen, policy)
        if isinstance(playlist, MasterPlaylist):
            raise HighlightSenseError(f"{chosen} is a master playlist inside a master playlist")
    return playlist


# -- following a playlist ------------------------------------------------------------------------

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
        self.policy = policy or FetchPolicy()
        self.parallel = parallel
        self.start = start
        self.poll_sec = poll_sec
        self.playlist = load_media_playlist(url, self.policy, want)
        self.url = self.playlist.url
        self.idle_sec = idle_sec if idle_sec is not None else max(
            60.0, 6 * self.playlist.target_duration)
        self.listed_sec = 0.0  # stream time at the end of the newest segment taken (estimate)
        self.live_edge_at = time.monotonic()  # when the newest segment was first seen
        self.ads_skipped_sec = 0.0
        self.segments_read = 0
        self.bytes_read = 0
        self._stop = threading.Event()
        self._inflight: deque = deque()
        self._init_cache: Dict[Tuple, bytes] = {}
        self._changed = True  # the last reload brought something new

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
            self._init_cache[segment.init] = fetch_bytes(uri, self.policy, f"init section {uri}",
                                                         rng)
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
                    download = Download(segment.uri, self.policy, segment.byterange,
                                        label=f"HLS segment {segment.sequence} ({segment.uri})")
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
        return playlist.target_duration if self._changed else playlist.target_duration / 2

    def _reload(self) -> MediaPlaylist:
        fresh = load_playlist(self.url, self.policy)
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


# -- decoding ------------------------------------------------------------------------------------

class _GroupBytes:
    """A read-only file object over the bytes of one run of fragments (one container): EOF when
    the next fragment starts a new group; that fragment is kept for the next run."""

    def __init__(self, reader: HlsReader, fragments: Iterator[Fragment], first: Fragment):
        self.reader = reader
        self.fragments = fragments
        self.first = first
        self.fragment: Optional[Fragment] = first
        self.prefix = reader.init_section(first.segment)
        self.pos = 0
        self.held: Optional[Fragment] = None  # the first fragment of the next group
        self.exhausted = False  # the reader has no more fragments
        self.error: Optional[BaseException] = None

    def __str__(self) -> str:
        return self.reader.url

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = n if n and n > 0 else 1 << 16
        try:
            return self._read(n)
        except BaseException as e:
            self.error = e  # PyAV may turn an exception in a read into an end of file
            raise

    def _read(self, n: int) -> bytes:
        if self.prefix:
            data, self.prefix = self.prefix[:n], self.prefix[n:]
            return data
        while self.fragment is not None:
            data = self.fragment.download.read_at(self.pos, n)
            if data:
                self.pos += len(data)
                return data
            following = next(self.fragments, None)
            if following is None:
                self.exhausted = True
            if following is None or following.new_group:
                self.held, self.fragment = following, None
                return b""
            self.fragment, self.pos = following, 0
        return b""


@dataclass
class TimelineEntry:
    """Stream time `stream_sec` is container time `origin_sec` of the segments with this
    discontinuity number, from segment `sequence` on (until the next entry)."""

    stream_sec: float
    origin_sec: float
    discontinuity: int
    sequence: int


class HlsAudioSource(Source):
    """AudioChunks (float32 (2, n), 44.1 kHz) of an HLS stream's audio, decoded as segments
    arrive: the Source for `detect URL` and `watch`. See the module's text."""

    name = "decode"

    def __init__(self, url: str, stream_index: Optional[int] = None, chunk_sec: float = 1.0,
                 parallel: int = 4, policy: Optional[FetchPolicy] = None, start: str = "first",
                 poll_sec: Optional[float] = None, idle_sec: Optional[float] = None):
        self.reader = HlsReader(url, policy, parallel, "audio", start, poll_sec, idle_sec)
        self.path = url
        self.stream_index = stream_index
        self.chunk_sec = chunk_sec
        self.duration_sec = self.reader.playlist.duration_sec if not self.reader.live else None
        self.origin_sec: Optional[float] = None
        self.timeline: List[TimelineEntry] = []
        self.has_video = False
        self.corrupt_packets = 0
        self.gaps_filled_sec = 0.0
        self.samples = 0  # stream time delivered, in samples
        self._decoder = None
        self._closing = False
        self._iterated = False

    @property
    def live_edge_sec(self) -> float:
        """Stream time at the end of the newest segment listed (by the playlist's durations)."""
        return self.reader.listed_sec

    def __iter__(self) -> Iterator[AudioChunk]:
        if self._iterated:
            raise RuntimeError("HlsAudioSource can be iterated only once")
        self._iterated = True
        from highlightsense.operators.sources.decode import AudioDecoder

        fragments = self.reader.fragments()
        first = next(fragments, None)
        if first is None:
            raise HighlightSenseError(f"{self.path} lists no segments")
        try:
            while first is not None and not self._closing:
                group = _GroupBytes(self.reader, fragments, first)
                try:
                    self._decoder = AudioDecoder(group, self.stream_index, self.chunk_sec)
                except HighlightSenseError as e:
                    if group.error is not None:
                        raise group.error from None
                    if not self.timeline or "no audio samples" not in str(e):
                        raise
                    # A run with no audio at all (a tiny segment): nothing to add.
                    log.warning("%s: segments from %d hold no audio; skipped", self.path,
                                first.segment.sequence)
                    self._drain(group)
                    first = group.held
                    continue
                self.timeline.append(TimelineEntry(self.samples / AUDIO_RATE,
                                                   self._decoder.origin_sec,
                                                   first.segment.discontinuity,
                                                   first.segment.sequence))
                if self.origin_sec is None:
                    self.origin_sec = self._decoder.origin_sec
                offset = self.samples
                for chunk in self._decoder:
                    self.samples = offset + chunk.end
                    yield replace(chunk, start=offset + chunk.start)
                if group.error is not None:
                    raise group.error
                self.corrupt_packets += self._decoder.corrupt_packets
                self.gaps_filled_sec += self._decoder.gaps_filled_sec
                self._drain(group)  # bytes past the audio's end (PyAV may stop early)
                first = group.held
        finally:
            self.close()

    @staticmethod
    def _drain(group: _GroupBytes) -> None:
        while group.fragment is not None and group.read(1 << 16):
            pass

    def close(self) -> None:
        """Never blocks: stops the downloads, which ends any read waiting for them."""
        self._closing = True
        self.reader.close()
        if self._decoder is not None:
            self._decoder.close()


def stream_to_container(timeline: List[TimelineEntry], stream_sec: float) -> TimelineEntry:
    """The timeline entry that stream_sec falls in."""
    entry = timeline[0]
    for e in timeline:
        if e.stream_sec <= stream_sec + 1e-9:
            entry = e
    return entry
