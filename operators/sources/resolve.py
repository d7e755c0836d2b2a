"""URL inputs: yt-dlp's Python API turns a page or media URL into streams we read ourselves.

One extract_info(download=False) per URL. For analysis the audio: a Twitch VOD's "Audio_Only"
format (the seed's `-f "Audio_Only"`), elsewhere yt-dlp's "bestaudio", else "best". For clips the
video: yt-dlp's "best" (the seed's `yt-dlp -g -f best`). Direct media URLs and .m3u8 playlists go
through yt-dlp's generic extractor. yt-dlp's HTTP headers for the format travel with our requests.

open_audio() makes the Source for a URL: HLS is decoded segment by segment as it arrives
(operators.sources.hls_source); a plain media file is read over HTTP with range requests
(operators.sources.fetch) and decoded as it streams. Nothing is downloaded to disk first.
"""
import logging
import re
from dataclasses import dataclass, replace
from typing import Optional

from highlightsense.engine.errors import HighlightSenseError
from highlightsense.operators.sources.fetch import FetchPolicy, HttpFile

log = logging.getLogger("highlightsense")

AUDIO_FORMAT = "Audio_Only/audio_only/bestaudio/best"
HLS_PROTOCOLS = {"m3u8", "m3u8_native"}
HTTP_PROTOCOLS = {"http", "https"}


def is_url(text) -> bool:
    return isinstance(text, str) and re.match(r"^https?://", text, re.IGNORECASE) is not None


@dataclass(frozen=True)
class Stream:
    url: str
    protocol: str  # "hls" or "http"
    format_id: str
    headers: tuple  # ((name, value), ...) yt-dlp wants sent

    def policy(self, base: Optional[FetchPolicy] = None) -> FetchPolicy:
        """The policy to fetch this stream with: yt-dlp's headers, for this URL's origin only."""
        base = base or FetchPolicy()
        return replace(base, headers={**dict(self.headers), **base.headers}).bound_to(self.url)


@dataclass(frozen=True)
class Resolution:
    page_url: str
    title: str
    is_live: bool
    duration_sec: Optional[float]
    audio: Stream  # for analysis
    video: Optional[Stream]  # for clips (None: the source has no video format)


class _YtdlpLog:
    """yt-dlp's messages into our log: its warnings as ours, its chatter dropped."""

    def debug(self, msg):
        pass

    def info(self, msg):
        pass

    def warning(self, msg):
        log.warning("yt-dlp: %s", msg)

    def error(self, msg):
        log.debug("yt-dlp: %s", msg)  # raised as DownloadError too: said once, by us


def _stream(fmt: dict, page_url: str) -> Stream:
    protocol = fmt.get("protocol") or "http"
    if protocol in HLS_PROTOCOLS:
        kind = "hls"
    elif protocol in HTTP_PROTOCOLS:
        kind = "http"
    else:
        raise HighlightSenseError(
            f"{page_url}: yt-dlp offers format {fmt.get('format_id')} over {protocol}, which "
            "HighlightSense cannot stream yet (HLS and plain HTTP only)")
    headers = tuple(sorted((fmt.get("http_headers") or {}).items()))
    return Stream(fmt["url"], kind, str(fmt.get("format_id", "")), headers)


def _has_video(fmt: dict) -> bool:
    return fmt.get("vcodec") != "none"  # None: yt-dlp does not know, as for direct files


def resolve(url: str) -> Resolution:
    """yt-dlp's view of url: the audio stream to analyse and the video stream to cut clips from."""
    import yt_dlp

    options = {"quiet": True, "no_warnings": False, "noplaylist": True, "skip_download": True,
               "format": AUDIO_FORMAT, "logger": _YtdlpLog(), "socket_timeout": 20}
    try:
        with yt_dlp.YoutubeDL(options) as ydl:
            info = ydl.extract_info(url, download=False)
    except yt_dlp.utils.DownloadError as e:
        reason = re.sub(r"^ERROR:\s*", "", " ".join(str(e).split()))
        raise HighlightSenseError(f"cannot open {url}: {reason}") from None
    except Exception as e:  # yt-dlp's own parsing fails on some broken input (EXTINF:nan)
        reason = " ".join(str(e).split())[:200]
        raise HighlightSenseError(f"cannot open {url}: yt-dlp failed reading it "
                                  f"({type(e).__name__}: {reason})") from None
    if info.get("_type") in ("playlist", "multi_video"):
        raise HighlightSenseError(f"{url} is a playlist; give the URL of one video")
    chosen = info.get("requested_formats") or [info]
    audio = next((f for f in chosen if f.get("acodec") != "none"), chosen[0])
    formats = info.get("formats") or [audio]
    # yt-dlp lists formats worst first: "best" is the last one with video (and audio, if any has).
    videos = [f for f in formats if _has_video(f) and f.get("acodec") != "none"] or \
             [f for f in formats if _has_video(f)]
    video = videos[-1] if videos else None
    return Resolution(page_url=url, title=str(info.get("title") or url),
                      is_live=bool(info.get("is_live")), duration_sec=info.get("duration"),
                      audio=_stream(audio, url),
                      video=_stream(video, url) if video is not None else None)


def open_audio(url: str, stream_index: Optional[int] = None, chunk_sec: float = 1.0,
               parallel: int = 4, policy: Optional[FetchPolicy] = None, start: str = "first",
               poll_sec: Optional[float] = None, resolution: Optional[Resolution] = None):
    """The Source for a URL: AudioChunks decoded as the stream arrives. The Resolution is kept
    as `.resolution` (clips need its video stream)."""
    from highlightsense.operators.sources.decode import AudioDecoder
    from highlightsense.operators.sources.hls_source import HlsAudioSource

    resolution = resolution or resolve(url)
    audio = resolution.audio
    log.info("%s: reading %s format %s (%s)", url, "HLS" if audio.protocol == "hls" else "HTTP",
             audio.format_id or "?", "live" if resolution.is_live else "on demand")
    if audio.protocol == "hls":
        source = HlsAudioSource(audio.url, stream_index, chunk_sec, parallel,
                                audio.policy(policy), start, poll_sec)
        source.info.has_video = resolution.video is not None  # in another rendition
    else:
        source = AudioDecoder(HttpFile(audio.url, audio.policy(policy)), stream_index, chunk_sec)
    source.resolution = resolution
    return source
