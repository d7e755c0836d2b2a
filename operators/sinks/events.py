"""Events out of `watch`: one JSON object per line (stdout or a file), and webhook POSTs.

A line is written and flushed the moment its event is emitted, so a reader tailing the file sees
it at once. Webhook POSTs (the same JSON, Content-Type application/json) go out from a thread of
their own, in order, each retried with backoff; one that still fails is a warning, never the end
of the watch.

Event types:
  highlight  id, start_sec, end_sec, start_ts, end_ts, peak_sec, confidence, threshold, forced,
             decided_at_sec (stream time received when decided), delay_sec (decided_at_sec -
             end_sec: how far the stream had run past the window), latency_sec (wall seconds from
             the arrival of the window's last audio to this event), emitted_at (UTC), source,
             broadcast_start_sec, broadcast_end_sec (seconds since the broadcast began, where
             its VOD has the window: Twitch's EXT-X-TWITCH-ELAPSED-SECS; null where the playlist
             does not say), start_utc, end_utc (ISO 8601, from EXT-X-PROGRAM-DATE-TIME; null
             without it). Stream time (start_sec ...) counts the audio as received, from the
             join, and pauses over skipped ads; broadcast time and UTC run on, so each end maps
             through the segment that holds it (an ad break inside a window makes its broadcast
             span longer than end_sec - start_sec). The fields after `source` came last, so
             the earlier ones keep their places.
  clip       id (the highlight's), path, start_sec, end_sec (as written), mode, note
"""
import base64
import json
import logging
import queue
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Optional, TextIO, Tuple, Union

from highlightsense.engine.timecode import hms

log = logging.getLogger("highlightsense")


def _iso(moment: datetime) -> str:
    return (moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"))


def _iso_now() -> str:
    return _iso(datetime.now(timezone.utc))


@dataclass(frozen=True)
class HighlightEvent:
    """A highlight as written: the fields in the order of the line, seconds rounded to ms."""

    id: int
    start_sec: float
    end_sec: float
    start_ts: str
    end_ts: str
    peak_sec: float
    confidence: float
    threshold: float
    forced: bool
    decided_at_sec: float
    delay_sec: float
    latency_sec: Optional[float]
    emitted_at: str
    source: str
    broadcast_start_sec: Optional[float] = None
    broadcast_end_sec: Optional[float] = None
    start_utc: Optional[str] = None
    end_utc: Optional[str] = None

    type = "highlight"  # not a field: the first key of the line

    @classmethod
    def of(cls, decision, id: int, latency_sec: Optional[float], source: str,
           start_at: Tuple[Optional[float], Optional[datetime]] = (None, None),
           end_at: Tuple[Optional[float], Optional[datetime]] = (None, None)
           ) -> "HighlightEvent":
        """The event of an online_select.Decision, emitted now; latency_sec: wall seconds since
        the window's last audio arrived (None when no longer known); start_at, end_at: the
        window's ends as (broadcast seconds, UTC), each None where unknown
        (hls_source.BroadcastTimes.at)."""
        w = decision.window
        (b_start, u_start), (b_end, u_end) = start_at, end_at
        return cls(id=id, start_sec=round(w.start_sec, 3), end_sec=round(w.end_sec, 3),
                   start_ts=hms(w.start_sec), end_ts=hms(w.end_sec),
                   peak_sec=round(w.peak_sec, 3), confidence=w.confidence,
                   threshold=decision.threshold, forced=decision.forced,
                   decided_at_sec=round(decision.decided_at_sec, 3),
                   delay_sec=round(decision.delay_sec, 3),
                   latency_sec=round(latency_sec, 3) if latency_sec is not None else None,
                   emitted_at=_iso_now(), source=source,
                   broadcast_start_sec=round(b_start, 3) if b_start is not None else None,
                   broadcast_end_sec=round(b_end, 3) if b_end is not None else None,
                   start_utc=_iso(u_start) if u_start is not None else None,
                   end_utc=_iso(u_end) if u_end is not None else None)

    def to_json(self) -> dict:
        return {"type": self.type, **asdict(self)}


@dataclass(frozen=True)
class ClipEvent:
    """A highlight's clip, once written (id: the highlight's)."""

    id: int
    path: str
    start_sec: float
    end_sec: float
    mode: str
    note: str

    type = "clip"

    @classmethod
    def of(cls, id: int, clip) -> "ClipEvent":
        """The event of a clips.ClipResult."""
        return cls(id=id, path=str(clip.path), start_sec=round(clip.start_sec, 3),
                   end_sec=round(clip.end_sec, 3), mode=clip.mode, note=clip.note)

    def to_json(self) -> dict:
        return {"type": self.type, **asdict(self)}


Event = Union[HighlightEvent, ClipEvent]


def redacted(url: str) -> str:
    """A URL as the log may show it: a webhook's query (?token=...) and user:password are its
    secrets, so they are left out."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address, bracketed again
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        port = ""
    userinfo = "***@" if "@" in parts.netloc else ""
    query = "?***" if parts.query else ""
    return urllib.parse.urlunsplit((parts.scheme, userinfo + host + port, parts.path, "", "")
                                   ) + query


def _with_credentials(url: str) -> Tuple[str, dict]:
    """The URL to POST to and its headers: a user:password in it goes as Basic authorization
    (urllib would take it for part of the host name)."""
    parts = urllib.parse.urlsplit(url)
    headers = {"Content-Type": "application/json"}
    if "@" not in parts.netloc:
        return url, headers
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    token = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
    headers["Authorization"] = "Basic " + base64.b64encode(token.encode()).decode()
    return urllib.parse.urlunsplit(parts._replace(netloc=host)), headers


class EventSink:
    """Writes each event as a JSON line; with a webhook, POSTs it too, from a thread of its own.
    A receiver slower than the events leaves at most `queue_max` waiting: past that the oldest
    waiting is dropped, and the count said in the log."""

    def __init__(self, path: Optional[str] = None, webhook: Optional[str] = None,
                 tries: int = 4, backoff_sec: float = 0.5, timeout_sec: float = 10.0,
                 stream: Optional[TextIO] = None, queue_max: int = 1000):
        self.path = path
        self._out = open(path, "a", encoding="utf-8") if path else (stream or sys.stdout)
        self._own = bool(path)
        self.webhook = webhook
        self.tries, self.backoff_sec, self.timeout_sec = tries, backoff_sec, timeout_sec
        self.count = 0
        self.delivered = 0
        self.failed = 0
        self.dropped = 0  # events the webhook queue let go, the oldest first
        self._lock = threading.Lock()
        self._posts: "queue.Queue" = queue.Queue(queue_max)
        self._poster = None
        if webhook:
            self._poster = threading.Thread(target=self._post_all, daemon=True, name="hs-webhook")
            self._poster.start()

    def emit(self, event: Event) -> None:
        line = json.dumps(event.to_json(), separators=(", ", ": "))
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()
            self.count += 1
        if self._poster is not None:
            self._queue(line.encode())

    def _queue(self, body: Optional[bytes]) -> None:
        """Hands `body` (None: the end) to the poster; a full queue lets its oldest go."""
        with self._lock:
            while True:
                try:
                    self._posts.put_nowait(body)
                    return
                except queue.Full:
                    try:
                        self._posts.get_nowait()
                    except queue.Empty:
                        continue
                    self.dropped += 1
                    if self.dropped == 1 or self.dropped % 100 == 0:
                        log.warning("webhook %s: the receiver is slower than the events; "
                                    "%d dropped so far (the oldest first, %d wait at most)",
                                    redacted(self.webhook), self.dropped, self._posts.maxsize)

    def close(self, wait_sec: float = 30.0) -> None:
        """Waits (up to wait_sec) for the webhook to take what is queued, then closes the file."""
        if self._poster is not None:
            began = time.monotonic()
            try:  # room for the end, as the poster takes what waits
                self._posts.put(None, timeout=wait_sec)
            except queue.Full:
                self._queue(None)
            self._poster.join(max(0.0, wait_sec - (time.monotonic() - began)))
            if self._poster.is_alive():
                log.warning("webhook %s: gave up waiting; %d events not delivered",
                            redacted(self.webhook), self._posts.qsize())
            if self.dropped:
                log.warning("webhook %s: %d events dropped in all, the receiver being too slow",
                            redacted(self.webhook), self.dropped)
        if self._own:
            self._out.close()

    def _post_all(self) -> None:
        while (body := self._posts.get()) is not None:
            self._post(body)

    def _post(self, body: bytes) -> None:
        reason = ""
        url, headers = _with_credentials(self.webhook)
        for attempt in range(1, self.tries + 1):
            request = urllib.request.Request(url, data=body, method="POST", headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_sec) as response:
                    response.read()
                self.delivered += 1
                return
            except urllib.error.HTTPError as e:
                reason = f"HTTP {e.code}"
                if 400 <= e.code < 500 and e.code not in (408, 429):
                    break  # the receiver refuses this event: retrying will not change that
            except (urllib.error.URLError, OSError) as e:
                reason = str(getattr(e, "reason", e))
            if attempt < self.tries:
                time.sleep(self.backoff_sec * 2 ** (attempt - 1))
        self.failed += 1
        log.warning("webhook %s: could not deliver an event after %d tries: %s",
                    redacted(self.webhook), attempt, reason)
