"""HLS playlists (RFC 8216): parsing master and media playlists, and loading one by URL.

Master playlists: variants (EXT-X-STREAM-INF) and renditions (EXT-X-MEDIA); for audio the reader
takes an audio rendition, else an audio-only variant (CODECS all audio, or Twitch's
VIDEO="audio_only"), else the smallest variant; for video the largest variant with video. Media
playlists: VOD, EVENT or sliding live windows, EXT-X-DISCONTINUITY(-SEQUENCE), EXT-X-BYTERANGE,
EXT-X-MAP, EXT-X-PROGRAM-DATE-TIME, EXT-X-ENDLIST, and Twitch's EXT-X-TWITCH-ELAPSED-SECS (the
broadcast time of the playlist's first segment: each segment's `broadcast_sec` follows from it).
Encrypted segments are refused.

Bounds and bad input. A playlist is at most MAX_PLAYLIST_BYTES and MAX_SEGMENTS segments; a
malformed number (EXTINF:abc or nan, EXT-X-MEDIA-SEQUENCE:1.5, BYTERANGE:abc, a stitched ad's
DURATION=abc, ...), an EXT-X-MAP without URI, is refused with one line naming the playlist and
the line. Attribute lists are parsed in linear time (a hostile line of megabytes costs
milliseconds).

Ads. A segment the playlist marks as an inserted ad is flagged (`Segment.ad`; the reader skips
it). Recognised marks:
  - EXT-X-DATERANGE with CLASS="twitch-stitched-ad" or an ID starting "stitched-ad", covering the
    segment's program date (EXT-X-PROGRAM-DATE-TIME): Twitch's server-side ads;
  - an EXTINF title containing "Amazon": Twitch titles ad segments so (live ones "live");
  - EXT-X-CUE-OUT ... EXT-X-CUE-IN, and segments tagged EXT-X-CUE-OUT-CONT (SCTE-35 ad breaks,
    EXT-OATCLS-SCTE35 being part of the same cue).
"""
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Dict, List, Optional, Tuple, Union
from urllib.parse import urljoin

from highlightsense.engine.errors import HighlightSenseError
from highlightsense.operators.sources.fetch import FetchPolicy, fetch_bytes

AUDIO_CODECS = ("mp4a", "ac-3", "ec-3", "opus", "flac", "mp3", "alac", "dts")
MAX_PLAYLIST_BYTES = 16 * 2**20
MAX_SEGMENTS = 200_000
MAX_SEGMENT_SEC = 86400.0  # an EXTINF (or ad DURATION) longer than a day is no real segment


@dataclass(slots=True)  # slots: a long VOD lists 10^5 of them
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
    # Seconds since the broadcast began, at the segment's start (EXT-X-TWITCH-ELAPSED-SECS of
    # the playlist it was parsed from, plus the durations before it); None without the tag.
    broadcast_sec: Optional[float] = None


@dataclass
class MediaPlaylist:
    url: str
    target_duration: float
    segments: List[Segment]
    ended: bool
    kind: Optional[str] = None  # VOD, EVENT or None
    elapsed_sec: Optional[float] = None  # EXT-X-TWITCH-ELAPSED-SECS: broadcast time of segment 0

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

    def audio_uri(self) -> Optional[str]:
        """An audio rendition, else the best audio-only variant, else the smallest variant;
        None when there is none of them."""
        audio = [r for r in self.renditions if r.kind == "AUDIO" and r.uri]
        if audio:
            return next((r for r in audio if r.default), audio[0]).uri
        only = [v for v in self.variants if v.audio_only]
        if only:
            return max(only, key=lambda v: v.bandwidth).uri
        return min(self.variants, key=lambda v: v.bandwidth).uri if self.variants else None

    def video_uri(self) -> Optional[str]:
        """The largest variant with video (yt-dlp's "best"), None when there is none."""
        video = [v for v in self.variants if not v.audio_only]
        return max(video, key=lambda v: v.bandwidth).uri if video else None


_NAME = re.compile(r"[A-Z0-9-]+")


def attributes(text: str) -> Dict[str, str]:
    """An attribute list (KEY=value,KEY="quoted, value") as a dict, quotes removed. One pass
    of str.find over the text: linear in its length (a regex scanning for KEY= from every
    position was quadratic on a long run of name characters). Anything that is not KEY=value
    is skipped."""
    found: Dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        eq = text.find("=", i)
        if eq < 0:
            break
        name = text[i:eq].rpartition(",")[2].strip()  # junk before a comma is no name
        i = eq + 1
        if text.startswith('"', i):
            close = text.find('"', i + 1)
            end = n if close < 0 else close
            value = text[i + 1:end]
            comma = text.find(",", end)
        else:
            comma = text.find(",", i)
            value = text[i:n if comma < 0 else comma].strip()
        i = n if comma < 0 else comma + 1
        if _NAME.fullmatch(name):
            found[name] = value
    return found


class _BadLine(ValueError):
    """A line of the playlist that cannot be read: why, in a few words."""


def _date(text: str) -> Optional[datetime]:
    try:
        return datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None


def _later(date: Optional[datetime], seconds: float) -> Optional[datetime]:
    try:
        return date + timedelta(seconds=seconds) if date is not None else None
    except OverflowError:  # a date near year 9999
        return None


def _integer(text: str, what: str) -> int:
    text = text.strip()
    if not text.isdecimal() or not text.isascii() or len(text) > 20:
        raise _BadLine(f"{what} must be a whole number of at most 20 digits, not {text[:40]!r}")
    return int(text)


def _seconds(text: str, what: str, most: float = MAX_SEGMENT_SEC) -> float:
    try:
        value = float(text.strip()[:40])
    except ValueError:
        value = math.nan
    if not 0 <= value <= most:  # NaN too
        raise _BadLine(f"{what} must be a number of seconds from 0 to {most:g}, "
                       f"not {text.strip()[:40]!r}")
    return value


def _byterange(text: str, previous_end: int) -> Tuple[int, int]:
    length, _, offset = text.partition("@")
    return (_integer(offset, "a byte range's offset") if offset else previous_end,
            _integer(length, "a byte range's length"))


def _join(url: str, uri: str) -> str:
    try:
        return urljoin(url, uri)
    except ValueError as e:  # "Invalid IPv6 URL", a bad port
        raise _BadLine(f"bad URI: {e}") from None


def _joiner(url: str):
    """urljoin(url, uri), fast for the usual plain relative name ("seg-1.ts?t=x"): a playlist
    lists up to MAX_SEGMENTS of them and a live one is parsed on every reload."""
    head, sep, _ = url.partition("?")
    head = head.partition("#")[0]
    slash = head.rfind("/")
    directory = head[:slash + 1] if "://" in head and slash > head.find("://") + 2 else None

    def join(uri: str) -> str:
        # Anything urljoin would change takes the slow way: dot segments, schemes, an empty
        # fragment or query ("0#", "0?": urljoin drops them), ...
        if directory is not None and uri[:1] not in ("/", ".", "?", "#", "", " ") and \
                ":" not in uri and ";" not in uri and "/." not in uri and "\\" not in uri \
                and "#" not in uri and uri[-1] != "?" and uri.isprintable():
            return directory + uri
        return _join(url, uri)
    return join


def parse_playlist(text: str, url: str) -> Union[MasterPlaylist, MediaPlaylist]:
    """A playlist's text (from url: relative URIs resolve against it)."""
    if text.count("#EXTINF") > MAX_SEGMENTS:  # before any work: bounded time and memory
        raise HighlightSenseError(f"{url} lists over {MAX_SEGMENTS} segments, more than "
                                  "HighlightSense reads from one playlist")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("#EXTM3U"):
        raise HighlightSenseError(f"{url} is not an HLS playlist (no #EXTM3U header)")
    master = "#EXT-X-STREAM-INF" in text and any(  # the scan only when the tag is there
        line.startswith("#EXT-X-STREAM-INF") for line in lines)
    parse = _parse_master if master else _parse_media
    at = [0]  # the line being read, for the message
    try:
        return parse(lines, url, at)
    except _BadLine as e:
        line = lines[at[0]]
        shown = line if len(line) <= 80 else line[:77] + "..."
        raise HighlightSenseError(f"{url} is a broken playlist: {e} (line {at[0] + 1}: "
                                  f"{shown!r})") from None


def _parse_master(lines: List[str], url: str, at: List[int]) -> MasterPlaylist:
    variants, renditions, pending = [], [], None
    for at[0], line in enumerate(lines):
        if line.startswith("#EXT-X-STREAM-INF:"):
            pending = attributes(line.split(":", 1)[1])
        elif line.startswith("#EXT-X-MEDIA:"):
            a = attributes(line.split(":", 1)[1])
            renditions.append(Rendition(a.get("TYPE", ""), a.get("GROUP-ID", ""),
                                        a.get("NAME", ""),
                                        _join(url, a["URI"]) if "URI" in a else None,
                                        a.get("DEFAULT") == "YES"))
        elif not line.startswith("#") and pending is not None:
            bandwidth = pending.get("BANDWIDTH", "")
            variants.append(Variant(_join(url, line),
                                    _integer(bandwidth, "BANDWIDTH") if bandwidth else 0,
                                    pending.get("CODECS", ""), pending.get("RESOLUTION", ""),
                                    pending.get("AUDIO", ""), pending.get("VIDEO", "")))
            pending = None
    return MasterPlaylist(url, variants, renditions)


def _parse_media(lines: List[str], url: str, at: List[int]) -> MediaPlaylist:
    target, sequence, disc, ended, kind = 0.0, 0, 0, False, None
    elapsed = None
    segments: List[Segment] = []
    ad_ranges = []  # (start, end) program dates of stitched ads
    duration = title = None
    byterange = init = None
    date = None
    next_offset = 0
    in_cue = cue_tagged = False
    discontinuity_pending = False
    join = _joiner(url)
    for at[0], line in enumerate(lines):
        if line[0] != "#":  # a URI: the commonest line, with EXTINF
            if duration is None:
                continue
            if discontinuity_pending:
                disc += 1
                discontinuity_pending = False
            ad = in_cue or cue_tagged or "amazon" in (title or "").lower()
            segments.append(Segment(join(line), duration, sequence + len(segments), disc,
                                    title or "", byterange, init, date, ad))
            if byterange:
                next_offset = byterange[0] + byterange[1]
            date = _later(date, duration)
            duration = title = byterange = None
            cue_tagged = False
            continue
        tag, _, value = line.partition(":")
        if tag == "#EXTINF":
            d, _, title = value.partition(",")
            duration = _seconds(d, "EXTINF")
        elif tag == "#EXT-X-TARGETDURATION":
            target = _seconds(value, "EXT-X-TARGETDURATION")
        elif tag == "#EXT-X-MEDIA-SEQUENCE":
            sequence = _integer(value, "EXT-X-MEDIA-SEQUENCE")
        elif tag == "#EXT-X-DISCONTINUITY-SEQUENCE":
            disc = _integer(value, "EXT-X-DISCONTINUITY-SEQUENCE")
        elif tag == "#EXT-X-PLAYLIST-TYPE":
            kind = value.strip().upper()
        elif tag == "#EXT-X-ENDLIST":
            ended = True
        elif tag == "#EXT-X-TWITCH-ELAPSED-SECS":
            try:
                elapsed = float(value)
            except ValueError:
                elapsed = None  # unreadable: as if absent (broadcast times unknown)
        elif tag == "#EXT-X-DISCONTINUITY":
            discontinuity_pending = True
        elif tag == "#EXT-X-BYTERANGE":
            byterange = _byterange(value, next_offset)
        elif tag == "#EXT-X-MAP":
            a = attributes(value)
            if not a.get("URI"):
                raise _BadLine("EXT-X-MAP has no URI")
            init = (_join(url, a["URI"]),
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
                    end = _later(start, _seconds(a["DURATION"], "an ad's DURATION"))
                if start is not None and end is not None:
                    ad_ranges.append((start, end))
        elif tag == "#EXT-X-CUE-OUT":
            in_cue = True
        elif tag == "#EXT-X-CUE-OUT-CONT":
            cue_tagged = True
        elif tag == "#EXT-X-CUE-IN":
            in_cue = False
    for s in segments:  # DATERANGE tags may come anywhere: match them once all are read
        if s.date is not None and any(a <= s.date < b for a, b in ad_ranges):
            s.ad = True
    if elapsed is not None:
        # ELAPSED-SECS plus the listed durations, not the differences of the program dates:
        # ELAPSED-SECS counts media seconds, as EXTINF does (and as the VOD's position does),
        # while PROGRAM-DATE-TIME is a wall-clock stamp that need not advance with the media
        # (an ingest clock's jump or drift, a broadcast's reconnection) and may be missing
        # where ELAPSED-SECS is there. Ad segments count too: a stitched ad stands in for the
        # broadcast of its length. Each reload anchors afresh at its own first segment, so an
        # error in the durations spans at most one playlist window.
        at = elapsed
        for s in segments:
            s.broadcast_sec = at
            at += s.duration
    return MediaPlaylist(url, target or max((s.duration for s in segments), default=6.0),
                         segments, ended, kind, elapsed)


def fetch_playlist(url: str, policy: FetchPolicy) -> bytes:
    """A playlist's bytes, at most MAX_PLAYLIST_BYTES of them."""
    return fetch_bytes(url, policy, label=f"playlist {url}", max_bytes=MAX_PLAYLIST_BYTES,
                       deadline_sec=policy.deadline_sec)


def load_playlist(url: str, policy: FetchPolicy) -> Union[MasterPlaylist, MediaPlaylist]:
    return parse_playlist(fetch_playlist(url, policy).decode("utf-8", "replace"), url)


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
