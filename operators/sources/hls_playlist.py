"""HLS playlists (RFC 8216): parsing master and media playlists, and loading one by URL.

Master playlists: variants (EXT-X-STREAM-INF) and renditions (EXT-X-MEDIA); for audio the reader
takes an audio rendition, else an audio-only variant (CODECS all audio, or Twitch's
VIDEO="audio_only"), else the smallest variant; for video the largest variant with video. Media
playlists: VOD, EVENT or sliding live windows, EXT-X-DISCONTINUITY(-SEQUENCE), EXT-X-BYTERANGE,
EXT-X-MAP, EXT-X-PROGRAM-DATE-TIME, EXT-X-ENDLIST, and Twitch's EXT-X-TWITCH-ELAPSED-SECS (the
broadcast time of the playlist's first segment: each segment's `broadcast_sec` follows from it).
Encrypted segments are refused.

Ads. A segment the playlist marks as an inserted ad is flagged (`Segment.ad`; the reader skips
it). Recognised marks:
  - EXT-X-DATERANGE with CLASS="twitch-stitched-ad" or an ID starting "stitched-ad", covering the
    segment's program date (EXT-X-PROGRAM-DATE-TIME): Twitch's server-side ads;
  - an EXTINF title containing "Amazon": Twitch titles ad segments so (live ones "live");
  - EXT-X-CUE-OUT ... EXT-X-CUE-IN, and segments tagged EXT-X-CUE-OUT-CONT (SCTE-35 ad breaks,
    EXT-OATCLS-SCTE35 being part of the same cue).
"""
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Dict, List, Optional, Tuple, Union
from urllib.parse import urljoin

from highlightsense.engine.errors import HighlightSenseError
from highlightsense.operators.sources.fetch import FetchPolicy, fetch_bytes

AUDIO_CODECS = ("mp4a", "ac-3", "ec-3", "opus", "flac", "mp3", "alac", "dts")


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
    elapsed = None
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
        elif tag == "#EXT-X-TWITCH-ELAPSED-SECS":
            try:
                elapsed = float(value)
            except ValueError:
                elapsed = None  # unreadable: as if absent (broadcast times unknown)
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
