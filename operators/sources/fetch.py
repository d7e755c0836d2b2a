"""HTTP reading that survives bad networks, for HLS segments and direct media URLs.

Standard library only (http.client and threads). A failed or dropped transfer is retried with
exponential backoff and resumed from the byte where it stopped (an HTTP Range request), so
nothing is lost or repeated. Stalls are caught twice: a socket timeout on every connect and read,
and our own watchdog, which closes a connection that has delivered no byte for `stall_sec`
(FFmpeg's and sockets' own timeouts do not cover every way a transfer can hang). After the last
try the error is one line saying what failed and why.

  Download  one URL (or byte range) fetched into memory in its own thread, readable while it
            arrives: for HLS segments, several at once.
  HttpFile  a seekable, read-only file object over a URL, for PyAV (direct media files).
"""
import http.client
import io
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple
from urllib.parse import urljoin, urlsplit

from highlightsense.engine.errors import HighlightSenseError

log = logging.getLogger("highlightsense")

USER_AGENT = "highlightsense/0.1"
_PIECE = 64 * 1024
_REDIRECTS = 5
_GIVE_UP = {400, 401, 403, 405, 410, 451}  # retrying cannot fix these


@dataclass(frozen=True)
class FetchPolicy:
    tries: int = 6  # attempts per transfer before giving up
    backoff_sec: float = 0.5  # wait before the 2nd try, doubled for each next one
    max_backoff_sec: float = 8.0
    timeout_sec: float = 10.0  # socket timeout: connect and each read
    stall_sec: float = 20.0  # watchdog: no byte for this long ends the attempt
    headers: Dict[str, str] = field(default_factory=dict)  # e.g. yt-dlp's http_headers

    def delay(self, attempt: int) -> float:
        """Wait after failed attempt number `attempt` (1 = the first)."""
        return min(self.max_backoff_sec, self.backoff_sec * 2 ** (attempt - 1))


class Retry(Exception):
    """This attempt failed in a way another attempt may not."""


class GiveUp(Exception):
    """The server said no in a way retrying cannot change."""


# -- one HTTP attempt, watched -------------------------------------------------------------------

class _Attempt:
    """One connection. The watchdog calls abort() when no byte has come for stall_sec."""

    def __init__(self, stall_sec: float):
        self.stall_sec = stall_sec
        self.last_progress = time.monotonic()
        self.conn: Optional[http.client.HTTPConnection] = None
        self.stalled = False

    def progress(self) -> None:
        self.last_progress = time.monotonic()

    def abort(self) -> None:
        """Unblocks a read in another thread: shutting the socket down makes recv return."""
        self.stalled = True
        sock = self.conn.sock if self.conn is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        _WATCHDOG.unwatch(self)
        if self.conn is not None:
            self.conn.close()


class _Watchdog:
    """One daemon thread checking every watched attempt a few times a second."""

    def __init__(self):
        self._attempts = set()
        self._lock = threading.Lock()
        self._thread = None

    def watch(self, attempt: _Attempt) -> None:
        with self._lock:
            self._attempts.add(attempt)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="hs-fetch-watchdog")
                self._thread.start()

    def unwatch(self, attempt: _Attempt) -> None:
        with self._lock:
            self._attempts.discard(attempt)

    def _run(self) -> None:
        while True:
            time.sleep(0.1)
            now = time.monotonic()
            with self._lock:
                if not self._attempts:  # nothing to watch: end (watch() starts another)
                    self._thread = None
                    return
                late = [a for a in self._attempts if now - a.last_progress > a.stall_sec]
                for a in late:
                    self._attempts.discard(a)
            for a in late:
                a.abort()


_WATCHDOG = _Watchdog()


def _connect(url: str, policy: FetchPolicy, first: int, last: Optional[int],
             attempt: _Attempt) -> Tuple[http.client.HTTPResponse, str]:
    """GET url from byte `first` (to `last`, inclusive, when given), following redirects.
    Returns the response and the final URL."""
    for _ in range(_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise GiveUp(f"not an http(s) URL: {url}")
        https = parts.scheme == "https"
        kind = http.client.HTTPSConnection if https else http.client.HTTPConnection
        attempt.conn = kind(parts.hostname, parts.port, timeout=policy.timeout_sec)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        # Bytes as stored: a compressed body could not be resumed by Range.
        headers = {"User-Agent": USER_AGENT, **policy.headers, "Accept-Encoding": "identity"}
        if first or last is not None:
            headers["Range"] = f"bytes={first}-{'' if last is None else last}"
        attempt.conn.request("GET", path, headers=headers)
        response = attempt.conn.getresponse()
        attempt.progress()
        if response.status in (301, 302, 303, 307, 308) and response.getheader("Location"):
            url = urljoin(url, response.getheader("Location"))
            attempt.conn.close()
            continue
        return response, url
    raise GiveUp(f"too many redirects from {url}")


def _body_start(response, first: int, last: Optional[int]) -> Tuple[int, Optional[int]]:
    """Checks the response to a request from byte `first`: returns (bytes of the body to skip,
    size of the whole resource if known)."""
    status = response.status
    if status == 206:
        # Content-Range: bytes START-END/TOTAL
        spec = (response.getheader("Content-Range") or "").split()[-1]
        span, _, total = spec.partition("/")
        start = int(span.split("-")[0]) if span and span[0].isdigit() else -1
        if start != first:
            raise Retry(f"asked for bytes from {first}, got a range from {start}")
        return 0, int(total) if total.isdigit() else None
    if status == 200:
        length = response.getheader("Content-Length")
        # A server that ignores Range sends it all again: skip what we have.
        return first, int(length) if length and length.isdigit() else None
    if status in _GIVE_UP:
        raise GiveUp(f"HTTP {status} {response.reason}".strip())
    raise Retry(f"HTTP {status} {response.reason}".strip())


def _reason(e: BaseException) -> str:
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(e, http.client.IncompleteRead):
        return f"connection closed after {len(e.partial)} more bytes"
    text = str(e) or type(e).__name__
    return " ".join(text.split())


# -- Download: one segment in memory, several at once --------------------------------------------

class Download:
    """Fetches url (bytes [offset, offset + length) of it when byterange is given) into memory in
    a thread of its own; read_at() reads while it arrives. Resumes after a failure."""

    def __init__(self, url: str, policy: FetchPolicy, byterange: Optional[Tuple[int, int]] = None,
                 label: Optional[str] = None):
        self.url = url
        self.policy = policy
        self.byterange = byterange
        self.label = label or url
        self.data = bytearray()
        self.size: Optional[int] = byterange[1] if byterange else None
        self.done = False
        self.error: Optional[BaseException] = None
        self.failures = 0  # attempts that failed (and were resumed)
        self.started = self.finished = None  # time.monotonic()
        self._cond = threading.Condition()
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="hs-download")

    def start(self) -> "Download":
        self.started = time.monotonic()
        self._thread.start()
        return self

    def cancel(self) -> None:
        self._cancel.set()
        with self._cond:
            self._cond.notify_all()

    def read_at(self, pos: int, n: int) -> bytes:
        """Up to n bytes from pos, waiting for them to arrive; b"" at the end."""
        with self._cond:
            while len(self.data) <= pos and not self.done and self.error is None \
                    and not self._cancel.is_set():
                self._cond.wait()
            if len(self.data) <= pos and self.error is not None:
                raise self.error
            return bytes(self.data[pos:pos + n])

    def result(self) -> bytes:
        """The whole body, once complete."""
        with self._cond:
            while not self.done and self.error is None and not self._cancel.is_set():
                self._cond.wait()
            if self.error is not None:
                raise self.error
            return bytes(self.data)

    def _run(self) -> None:
        last = "no attempt"
        for attempt in range(1, self.policy.tries + 1):
            if self._cancel.is_set():
                return
            try:
                self._attempt()
                with self._cond:
                    self.done = True
                    self.finished = time.monotonic()
                    self._cond.notify_all()
                return
            except GiveUp as e:
                last = str(e)
                break
            except (Retry, OSError, http.client.HTTPException, ValueError) as e:
                last = _reason(e)
                self.failures += 1
                if attempt < self.policy.tries:
                    log.debug("%s: %s; retrying from byte %d", self.label, last, len(self.data))
                    self._cancel.wait(self.policy.delay(attempt))
        with self._cond:
            self.error = HighlightSenseError(
                f"could not fetch {self.label} after {self.failures or 1} "
                f"tr{'ies' if self.failures > 1 else 'y'}: {last}")
            self._cond.notify_all()

    def _attempt(self) -> None:
        have = len(self.data)
        offset = self.byterange[0] if self.byterange else 0
        last = offset + self.byterange[1] - 1 if self.byterange else None
        if self.size is not None and have >= self.size:
            return
        attempt = _Attempt(self.policy.stall_sec)
        _WATCHDOG.watch(attempt)
        try:
            response, _ = _connect(self.url, self.policy, offset + have, last, attempt)
            skip, total = _body_start(response, offset + have, last)
            if self.size is None and total is not None:
                self.size = total - offset if response.status == 206 else total
            while not self._cancel.is_set():
                piece = response.read1(_PIECE) if skip == 0 else response.read(min(skip, _PIECE))
                if not piece:
                    break
                attempt.progress()
                if skip:
                    skip -= len(piece)
                    continue
                with self._cond:
                    self.data += piece
                    self._cond.notify_all()
            if self._cancel.is_set():
                return
            if attempt.stalled:
                raise Retry(f"stalled: no data for {self.policy.stall_sec:g} s")
            if self.size is not None and len(self.data) < self.size:
                raise Retry(f"connection closed at byte {len(self.data)} of {self.size}")
        except (OSError, http.client.HTTPException) as e:
            if attempt.stalled:
                raise Retry(f"stalled: no data for {self.policy.stall_sec:g} s") from e
            raise
        finally:
            attempt.close()


def fetch_bytes(url: str, policy: FetchPolicy, label: Optional[str] = None,
                byterange: Optional[Tuple[int, int]] = None) -> bytes:
    """The whole body of url, with the retries and watchdog of Download."""
    return Download(url, policy, byterange, label).start().result()


# -- HttpFile: a seekable file over HTTP, for PyAV ------------------------------------------------

class HttpFile(io.RawIOBase):
    """A read-only, seekable file object over an http(s) URL: reads stream one connection, a
    seek starts a new Range request, a failure resumes where it stopped. PyAV opens it with
    av.open(HttpFile(url)); str() gives the URL for messages."""

    def __init__(self, url: str, policy: Optional[FetchPolicy] = None):
        super().__init__()
        self.url = url
        self.policy = policy or FetchPolicy()
        self.size: Optional[int] = None
        self.pos = 0
        self._response = None
        self._attempt: Optional[_Attempt] = None
        self._at = 0  # where the open response's next byte sits
        self._closing = False
        self._read(0)  # connect now: an unreachable URL fails here, and we learn the size

    def __str__(self) -> str:
        return self.url

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self.pos + offset
        elif whence == io.SEEK_END:
            if self.size is None:
                raise OSError(f"{self.url}: size unknown, cannot seek from the end")
            pos = self.size + offset
        else:
            raise ValueError(f"bad whence {whence}")
        self.pos = max(0, pos)
        return self.pos

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            chunks = []
            while piece := self.read(_PIECE):
                chunks.append(piece)
            return b"".join(chunks)
        return self._read(n)

    def _read(self, n: int) -> bytes:
        if self.size is not None and self.pos >= self.size:
            return b""
        failures, last = 0, ""
        while not self._closing:
            try:
                if self._response is None or self._at != self.pos:
                    self._open()
                if n == 0:
                    return b""
                # Watched only while reading: a reader held up downstream is not a stall.
                self._attempt.progress()
                _WATCHDOG.watch(self._attempt)
                try:
                    piece = self._response.read1(n)
                finally:
                    _WATCHDOG.unwatch(self._attempt)
                if self._attempt.stalled:
                    raise Retry(f"stalled: no data for {self.policy.stall_sec:g} s")
                if piece:
                    self._attempt.progress()
                    self.pos += len(piece)
                    self._at = self.pos
                    return piece
                if self.size is None or self.pos >= self.size:
                    return b""
                raise Retry(f"connection closed at byte {self.pos} of {self.size}")
            except GiveUp as e:
                self._drop()
                raise HighlightSenseError(f"could not read {self.url}: {e}") from None
            except (Retry, OSError, http.client.HTTPException, ValueError) as e:
                stalled = self._attempt is not None and self._attempt.stalled
                last = (f"stalled: no data for {self.policy.stall_sec:g} s" if stalled
                        else _reason(e))
                self._drop()
                failures += 1
                if self._closing:
                    break
                if failures >= self.policy.tries:
                    raise HighlightSenseError(
                        f"could not read {self.url} after {failures} tries: {last}") from None
                time.sleep(self.policy.delay(failures))
        return b""

    def _open(self) -> None:
        self._drop()
        self._attempt = _Attempt(self.policy.stall_sec)
        _WATCHDOG.watch(self._attempt)
        response, _ = _connect(self.url, self.policy, self.pos, None, self._attempt)
        skip, total = _body_start(response, self.pos, None)
        if total is not None:
            self.size = total
        while skip:  # the server ignored Range: read up to where we are
            piece = response.read(min(skip, _PIECE))
            if not piece:
                raise Retry("connection closed while skipping to the resume point")
            skip -= len(piece)
            self._attempt.progress()
        _WATCHDOG.unwatch(self._attempt)
        self._response = response
        self._at = self.pos

    def _drop(self) -> None:
        if self._attempt is not None:
            self._attempt.close()
        self._attempt = self._response = None

    def close(self) -> None:
        """Safe from another thread: a read blocked there ends at once."""
        self._closing = True
        attempt = self._attempt
        if attempt is not None:
            attempt.abort()
        super().close()
