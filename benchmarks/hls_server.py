"""A small HLS server on 127.0.0.1 for tests and benchmarks, serving HLS made from generated media.

    media = HlsMedia.from_file(ts_path, segment_sec=2.0)    # cut a .ts into segments with PyAV
    with HlsServer() as server:
        urls = server.add_vod("vod", media)                 # master + audio-only + video playlists
        live = server.add_live("live", media, speed=10)     # a playlist that grows on a fast clock
        server.add_live("tw", media, window=8, ads=(4, 5), elapsed_sec=7200.0)  # Twitch's tags
        server.faults["/vod/a/3.ts"] = ["drop", "404"]      # misbehaviour, one per request
        server.throttle_bps = 165 * 1024                    # per connection

A segment is a complete MPEG-TS file of its own (PAT/PMT and all), cut at video keyframes, as
real HLS segmenters cut them; timestamps run on across segments. Faults, consumed one per request
of that path: "drop" (half the body, then the connection closes), "404", "500", "stall" (half the
body, then nothing until the server stops or `stall_sec` passes). Range requests are honoured
(unless `ignore_range`: then the whole file, with 200, as some servers do). For attacks,
`handlers[path]` answers that path with a function of the request handler; every request's
headers are kept (Request.headers).
"""
import io
import math
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Dict, List, Optional

import av

CONTENT_TYPES = {".m3u8": "application/vnd.apple.mpegurl", ".ts": "video/mp2t",
                 ".mp4": "video/mp4", ".m4a": "audio/mp4", ".wav": "audio/wav"}


@dataclass
class HlsMedia:
    """Segments of one media file: audio-only and audio+video renditions, cut at the same times."""

    audio: List[bytes]
    video: List[bytes]  # empty when the source has no video
    durations: List[float]

    @classmethod
    def from_file(cls, path, segment_sec: float = 2.0) -> "HlsMedia":
        with av.open(str(path)) as inp:
            has_video = bool(inp.streams.video)
            end = (inp.start_time + inp.duration) / 1e6
        video = []
        if has_video:  # cut at video keyframes, then the audio-only rendition at the same times
            video, bounds = _segment(path, segment_sec, ("audio", "video"), None)
            audio = _segment(path, segment_sec, ("audio",), bounds)[0]
        else:
            audio, bounds = _segment(path, segment_sec, ("audio",), None)
        edges = bounds + [end]
        # (The container's end can fall before the last cut: never a negative EXTINF.)
        durations = [max(0.0, b - a) for a, b in zip(edges[:-1], edges[1:])]
        return cls(audio, video, durations)


def _segment(path, segment_sec, kinds, bounds):
    """Remux the streams of `kinds` into MPEG-TS segments of about segment_sec, starting each at a
    video keyframe (or any audio packet without video) at or after the next multiple; or at the
    given `bounds` (container seconds), so renditions share their cut points."""
    segments, starts = [], []
    out = buf = None
    targets = {}
    with av.open(str(path)) as inp:
        streams = [s for s in inp.streams if s.type in kinds]
        key = next((s for s in streams if s.type == "video"), streams[0])
        origin = inp.start_time / 1e6
        for packet in inp.demux(streams):
            if packet.dts is None:
                continue
            t = float(packet.pts * packet.time_base)
            if bounds is None:
                due = out is None or (packet.stream is key and packet.is_keyframe and
                                      t - origin >= len(starts) * segment_sec - 1e-6)
            else:
                due = out is None or (len(starts) < len(bounds) and t >= bounds[len(starts)])
            if due:
                if out is not None:
                    out.close()
                    segments.append(buf.getvalue())
                buf = io.BytesIO()
                out = av.open(buf, "w", format="mpegts")
                targets = {s.index: out.add_stream_from_template(s) for s in streams}
                starts.append(t if bounds is None else bounds[len(starts)])
            packet.stream = targets[packet.stream.index]
            out.mux(packet)
    if out is not None:
        out.close()
        segments.append(buf.getvalue())
    return segments, starts


START_DATE = datetime(2026, 1, 1, tzinfo=timezone.utc)  # of the first segment, by default


def media_playlist(uris: List[str], durations: List[float], *, sequence: int = 0,
                   ended: bool = True, kind: Optional[str] = "VOD",
                   discontinuity_before=(), ads=(), ad_style: str = "daterange",
                   start_date: Optional[datetime] = None, discontinuity_sequence: int = 0,
                   elapsed_sec: Optional[float] = None, dates: Optional[bool] = None) -> str:
    """An HLS media playlist. Segment indexes in discontinuity_before get EXT-X-DISCONTINUITY;
    indexes in `ads` are marked as inserted ads: "daterange" (Twitch's stitched-ad DATERANGE over
    program dates), "cue" (EXT-X-CUE-OUT / CUE-IN) or "title" (EXTINF title "Amazon").
    EXT-X-PROGRAM-DATE-TIME, from start_date (for the first segment listed) on, is written when
    `dates` (default: with the "daterange" style, which needs them); EXT-X-TWITCH-ELAPSED-SECS
    when elapsed_sec is given (the broadcast time of the first segment listed)."""
    target = max(1, math.ceil(max(durations, default=1) - 1e-6))
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{target}",
             f"#EXT-X-MEDIA-SEQUENCE:{sequence}"]
    if elapsed_sec is not None:
        lines.append(f"#EXT-X-TWITCH-ELAPSED-SECS:{elapsed_sec:.3f}")
    if dates is None:
        dates = ad_style == "daterange"
    if discontinuity_sequence:
        lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{discontinuity_sequence}")
    if kind:
        lines.append(f"#EXT-X-PLAYLIST-TYPE:{kind}")
    date = start_date or START_DATE
    ads = set(ads)
    in_ad = False
    for i, (uri, dur) in enumerate(zip(uris, durations)):
        if i in discontinuity_before:
            lines.append("#EXT-X-DISCONTINUITY")
        if dates:
            lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{_iso(date)}")
        if ad_style == "daterange":
            if i in ads and (i - 1) not in ads:
                run = 0.0
                j = i
                while j in ads:
                    run += durations[j]
                    j += 1
                lines.append(f'#EXT-X-DATERANGE:ID="stitched-ad-{i}",CLASS="twitch-stitched-ad",'
                             f'START-DATE="{_iso(date)}",DURATION={run:.3f}')
        elif ad_style == "cue":
            if i in ads and not in_ad:
                lines.append('#EXT-OATCLS-SCTE35:/DAlAAAAAAAAAP/wFAUAAAABf+/+ANgNkv4AFJlwAAEBAQAA')
                lines.append(f"#EXT-X-CUE-OUT:{sum(durations[j] for j in ads if j >= i):.3f}")
                in_ad = True
            elif i in ads:
                lines.append("#EXT-X-CUE-OUT-CONT")
            elif in_ad:
                lines.append("#EXT-X-CUE-IN")
                in_ad = False
        title = "Amazon|123" if (i in ads and ad_style == "title") else "live"
        lines.append(f"#EXTINF:{dur:.6f},{title}")
        lines.append(uri)
        date += timedelta(seconds=dur)
    if ended:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def _iso(date: datetime) -> str:
    return date.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def master_playlist(audio_uri: str, video_uri: Optional[str], bandwidth: int = 2_000_000) -> str:
    """Twitch's layout: the video variant (with its own audio), and an audio-only variant."""
    lines = ["#EXTM3U"]
    if video_uri:
        lines += [f'#EXT-X-STREAM-INF:BANDWIDTH={bandwidth},RESOLUTION=160x90,'
                  f'CODECS="avc1.64000c,mp4a.40.2",VIDEO="chunked"', video_uri]
    lines += ['#EXT-X-STREAM-INF:BANDWIDTH=160000,CODECS="mp4a.40.2",VIDEO="audio_only"',
              audio_uri]
    return "\n".join(lines) + "\n"


class LivePlaylist:
    """A live playlist on a clock `speed` times real time: `initial` segments are out at once,
    then each one appears when its duration has passed; ENDLIST once all are out. `window`: how
    many of the newest segments the playlist lists (None: all, an EVENT playlist). The marks
    go to media_playlist; start_date and elapsed_sec are segment 0's, and each reload gives its
    first listed segment's, as a sliding window does."""

    def __init__(self, uris, durations, speed: float = 1.0, initial: int = 1,
                 window: Optional[int] = None, **marks):
        self.uris, self.durations = list(uris), list(durations)
        self.speed, self.initial, self.window = speed, initial, window
        self.marks = marks
        self.started = None  # the clock starts with the first request

    def available(self) -> int:
        if self.started is None:
            self.started = time.monotonic()
        elapsed = (time.monotonic() - self.started) * self.speed
        n, t = self.initial, 0.0
        for d in self.durations[self.initial:]:
            t += d
            if t > elapsed:
                break
            n += 1
        return min(n, len(self.uris))

    def publish_time(self, index: int) -> float:
        """When segment `index` appeared (time.monotonic()), or will appear."""
        ahead = sum(self.durations[self.initial:index + 1]) if index >= self.initial else 0.0
        return (self.started or time.monotonic()) + ahead / self.speed

    def text(self) -> str:
        n = self.available()
        first = 0 if self.window is None else max(0, n - self.window)
        marks = {k: [i - first for i in v if first <= i] if k in ("ads", "discontinuity_before")
                 else v for k, v in self.marks.items()}
        before = sum(self.durations[:first])  # the broadcast time of the first listed
        marks["start_date"] = (self.marks.get("start_date") or START_DATE) + timedelta(
            seconds=before)
        if self.marks.get("elapsed_sec") is not None:
            marks["elapsed_sec"] = self.marks["elapsed_sec"] + before
        return media_playlist(self.uris[first:n], self.durations[first:n], sequence=first,
                              ended=n == len(self.uris),
                              kind="EVENT" if self.window is None else None, **marks)


@dataclass
class Request:
    path: str
    range: Optional[str]
    status: int
    at: float = field(default_factory=time.monotonic)
    headers: Dict[str, str] = field(default_factory=dict)


class HlsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: Dict[str, bytes] = {}
        self.dynamic: Dict[str, Callable[[], str]] = {}
        self.faults: Dict[str, List[str]] = {}
        self.handlers: Dict[str, Callable[[BaseHTTPRequestHandler], None]] = {}
        self.ignore_range = False
        self.throttle_bps: Optional[int] = None  # per connection
        self.stall_sec = 60.0
        self.requests: List[Request] = []
        self.connections = 0  # TCP connections accepted (keep-alive reuses one for many requests)
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def start(self) -> "HlsServer":
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def handle_error(self, request, client_address):
        pass  # clients that hang up early (yt-dlp probing a file, a cancelled fetch) are normal

    def process_request(self, request, client_address):
        with self._lock:
            self.connections += 1
        super().process_request(request, client_address)

    def take_fault(self, path: str) -> Optional[str]:
        with self._lock:
            queue = self.faults.get(path)
            return queue.pop(0) if queue else None

    def log(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def requests_for(self, path: str) -> List[Request]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    # -- content ----------------------------------------------------------------------------------

    def add_file(self, path: str, data: bytes) -> str:
        self.files[path] = data
        return self.url(path)

    def add_segments(self, prefix: str, media: HlsMedia) -> None:
        for i, data in enumerate(media.audio):
            self.files[f"/{prefix}/a/{i}.ts"] = data
        for i, data in enumerate(media.video):
            self.files[f"/{prefix}/v/{i}.ts"] = data

    def add_vod(self, prefix: str, media: HlsMedia, **marks) -> Dict[str, str]:
        """A finished VOD: master, audio-only and video playlists. Returns their URLs."""
        self.add_segments(prefix, media)
        n = len(media.durations)
        self.files[f"/{prefix}/audio.m3u8"] = media_playlist(
            [f"a/{i}.ts" for i in range(n)], media.durations, **marks).encode()
        urls = {"audio": self.url(f"/{prefix}/audio.m3u8")}
        if media.video:
            self.files[f"/{prefix}/video.m3u8"] = media_playlist(
                [f"v/{i}.ts" for i in range(n)], media.durations, **marks).encode()
            urls["video"] = self.url(f"/{prefix}/video.m3u8")
        self.files[f"/{prefix}/master.m3u8"] = master_playlist(
            "audio.m3u8", "video.m3u8" if media.video else None).encode()
        urls["master"] = self.url(f"/{prefix}/master.m3u8")
        return urls

    def add_joined(self, prefix: str, parts: List[HlsMedia], ad_parts=(),
                   ad_style: str = "daterange") -> str:
        """One audio playlist of several media, one after the other, EXT-X-DISCONTINUITY
        between them (their timestamps restart), the parts in ad_parts marked as inserted ads.
        Returns its URL."""
        uris, durations, breaks, ads = [], [], [], []
        for k, part in enumerate(parts):
            if k:
                breaks.append(len(uris))
            for i, data in enumerate(part.audio):
                if k in ad_parts:
                    ads.append(len(uris))
                self.files[f"/{prefix}/p{k}/{i}.ts"] = data
                uris.append(f"p{k}/{i}.ts")
                durations.append(part.durations[i])
        self.files[f"/{prefix}/audio.m3u8"] = media_playlist(
            uris, durations, discontinuity_before=breaks, ads=ads, ad_style=ad_style).encode()
        return self.url(f"/{prefix}/audio.m3u8")

    def add_live(self, prefix: str, media: HlsMedia, speed: float = 1.0, initial: int = 1,
                 window: Optional[int] = None, **marks) -> Dict[str, object]:
        """A live broadcast of `media` on a clock `speed` times real time; both renditions share
        the clock. Returns the URLs and the LivePlaylist (for its publish times)."""
        self.add_segments(prefix, media)
        n = len(media.durations)
        audio = LivePlaylist([f"a/{i}.ts" for i in range(n)], media.durations, speed, initial,
                             window, **marks)
        self.dynamic[f"/{prefix}/audio.m3u8"] = audio.text
        urls = {"audio": self.url(f"/{prefix}/audio.m3u8"), "clock": audio}
        if media.video:
            video = LivePlaylist([f"v/{i}.ts" for i in range(n)], media.durations, speed,
                                 initial, window, **marks)
            video.available = audio.available  # one clock for both
            self.dynamic[f"/{prefix}/video.m3u8"] = video.text
            urls["video"] = self.url(f"/{prefix}/video.m3u8")
        self.files[f"/{prefix}/master.m3u8"] = master_playlist(
            "audio.m3u8", "video.m3u8" if media.video else None).encode()
        urls["master"] = self.url(f"/{prefix}/master.m3u8")
        return urls


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY, as real servers set it: else, on a kept-alive connection, the body waits
    # behind the headers for the client's delayed ACK (40 ms a request).
    disable_nagle_algorithm = True
    server: HlsServer

    def log_message(self, *args):  # quiet
        pass

    def do_HEAD(self):
        self._serve(head=True)

    def do_GET(self):
        self._serve(head=False)

    def _serve(self, head: bool):
        path = self.path.split("?")[0]
        if path in self.server.handlers:
            self.server.log(Request(path, self.headers.get("Range"), 0, headers=dict(self.headers)))
            self.server.handlers[path](self)
            return
        fault = self.server.take_fault(path)
        if path in self.server.dynamic:
            data = self.server.dynamic[path]().encode()
        else:
            data = self.server.files.get(path)
        if data is None or fault in ("404", "500"):
            status = 500 if fault == "500" else 404
            self.server.log(Request(path, self.headers.get("Range"), status))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and not self.server.ignore_range:
            first, _, last = rng[6:].partition("-")
            start = int(first)
            end = int(last) + 1 if last else len(data)
            if start >= len(data):
                self.server.log(Request(path, rng, 416))
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data, status = data[start:min(end, len(data))], 206
            total = len(self.server.files.get(path, b"")) or start + len(data)
        self.server.log(Request(path, rng, status, headers=dict(self.headers)))
        self.send_response(status)
        ext = path[path.rfind("."):]
        self.send_header("Content-Type", CONTENT_TYPES.get(ext, "application/octet-stream"))
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{start + len(data) - 1}/{total}")
        self.end_headers()
        if head:
            return
        if fault in ("drop", "stall"):
            self._write(data[:len(data) // 2])
            if fault == "stall":
                self.server.stopping.wait(self.server.stall_sec)
            self.close_connection = True
            self.connection.close()
            return
        self._write(data)

    def _write(self, data: bytes):
        rate = self.server.throttle_bps
        try:
            if not rate:
                self.wfile.write(data)
                return
            began, sent, piece = time.monotonic(), 0, max(1024, rate // 50)
            for i in range(0, len(data), piece):
                self.wfile.write(data[i:i + piece])
                sent += len(data[i:i + piece])
                ahead = sent / rate - (time.monotonic() - began)
                if ahead > 0:
                    time.sleep(ahead)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
