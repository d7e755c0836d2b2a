"""HTTP reading that survives bad networks and bad servers, for HLS segments, playlists and direct
media URLs.

Transport: urllib3 connection pools (keep-alive: many small segments from one host reuse a few
connections), proxies taken from the environment as urllib does (http_proxy, https_proxy,
no_proxy). A failed or dropped transfer is retried with exponential backoff and resumed from the
byte where it stopped (an HTTP Range request), so nothing is lost or repeated. Stalls are caught
twice: a socket timeout on every connect and read, and our own watchdog, which closes a
connection that has delivered no byte for `stall_sec`, or whose transfer has run past its
deadline (a server trickling a byte a second never trips a read timeout). After the last try the
error is one line saying what failed and why.

Hostile servers. A body is kept in memory only up to a bound (`max_bytes`); a byte range is read
to its length and no further, whatever the server sends; yt-dlp's headers (cookies) go only to
the origin they were issued for (FetchPolicy.origin); a request to a loopback, private or
link-local address is refused when the origin is a public host, unless allow_private_hosts.

  Download  one URL (or byte range) fetched into memory in its own thread, readable while it
            arrives: for HLS segments, several at once.
  HttpFile  a seekable, read-only file object over a URL, for PyAV (direct media files).
"""
import functools
import io
import ipaddress
import logging
import socket
import threading
import time
import urllib.request
from dataclasses import dataclass, field, replace
from typing import Dict, Optional, Tuple
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from highlightsense.engine.errors import HighlightSenseError

log = logging.getLogger("highlightsense")

USER_AGENT = "highlightsense/0.1"
_PIECE = 64 * 1024
_REDIRECTS = 5
_GIVE_UP = {400, 401, 403, 405, 410, 451}  # retrying cannot fix these
# yt-dlp's headers that describe the client, not the user: sent to every host (CDNs may refuse
# a client without them); the others (Cookie, Authorization, a site's own) go to the origin only.
PUBLIC_HEADERS = frozenset({"user-agent", "accept", "accept-language", "referer", "origin",
                            "sec-fetch-mode"})
MAX_BODY_BYTES = 256 * 2**20  # a Download with no bound of its own keeps at most this much
_POOL_SIZE = 16  # connections kept alive per host (more than the segments fetched at once)


@dataclass(frozen=True)
class FetchPolicy:
    tries: int = 6  # attempts per transfer before giving up
    backoff_sec: float = 0.5  # wait before the 2nd try, doubled for each next one
    max_backoff_sec: float = 8.0
    timeout_sec: float = 10.0  # socket timeout: connect and each read
    connect_timeout_sec: Optional[float] = None  # for the connect alone (None: timeout_sec)
    stall_sec: float = 20.0  # watchdog: no byte for this long ends the attempt
    # Watchdog: an attempt at a playlist or segment taking longer than this ends (and is
    # retried); a segment gets 3 x its EXTINF more (operators.sources.hls_reader).
    deadline_sec: float = 30.0
    headers: Dict[str, str] = field(default_factory=dict)  # e.g. yt-dlp's http_headers
    # The URL the headers were issued for: they go to its origin (scheme, host, port) only, and
    # its host decides whether private addresses may be fetched. None: each transfer's own URL.
    origin: Optional[str] = None
    allow_private_hosts: bool = False  # --allow-private-hosts

    def delay(self, attempt: int) -> float:
        """Wait after failed attempt number `attempt` (1 = the first)."""
        return min(self.max_backoff_sec, self.backoff_sec * 2 ** (attempt - 1))

    def bound_to(self, url: str) -> "FetchPolicy":
        """This policy with `url` as its origin, unless it has one already."""
        return self if self.origin is not None else replace(self, origin=url)


class Retry(Exception):
    """This attempt failed in a way another attempt may not."""


class GiveUp(Exception):
    """The server (or the URL) said no in a way retrying cannot change."""


# -- where a request may go ---------------------------------------------------------------------

def _origin(url: str) -> Tuple[str, str, Optional[int]]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def _public_ip(text: str) -> bool:
    ip = ipaddress.ip_address(text.split("%")[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def is_public_host(host: str, port: Optional[int] = None) -> bool:
    """Whether every address `host` names is a public one (not loopback, private, link-local,
    reserved). A name that does not resolve counts as public: connecting to it will fail."""
    host = host.strip("[]")
    try:
        return _public_ip(host)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port or 80, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return True
    return all(_public_ip(info[4][0]) for info in infos)


@functools.lru_cache(maxsize=64)
def _public_origin(host: str, port: Optional[int]) -> bool:
    """is_public_host for the origin of a transfer, asked of every request: cached."""
    return is_public_host(host, port)


def _check_target(url: str, policy: FetchPolicy, first_url: str) -> Tuple[str, str, int]:
    """The URL's (scheme, host, port) if we may fetch it; GiveUp if not."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise GiveUp(f"bad URL {url!r}: {e}") from None
    if parts.scheme not in ("http", "https"):
        raise GiveUp(f"not an http(s) URL: {url}")
    if not parts.hostname:
        raise GiveUp(f"no host in URL {url}")
    port = port or (443 if parts.scheme == "https" else 80)
    if not policy.allow_private_hosts:
        origin = urlsplit(policy.origin or first_url)
        if _public_origin(origin.hostname or "", origin.port) and \
                not is_public_host(parts.hostname, port):
            raise GiveUp(f"{url} is on a private or loopback address, reached from the public "
                         f"host {origin.hostname}; give --allow-private-hosts to allow it")
    return parts.scheme, parts.hostname, port


# -- the transport: urllib3 pools, proxies from the environment ----------------------------------

_current = threading.local()  # the _Attempt this thread is making, for the connection to join


class _Watched:
    """A connection that tells the attempt making it which socket to shut down on a stall."""

    def request(self, *args, **kwargs):
        attempt = getattr(_current, "attempt", None)
        if attempt is not None:
            attempt.conn = self
        return super().request(*args, **kwargs)


class _HTTPConnection(_Watched, HTTPConnection):
    pass


class _HTTPSConnection(_Watched, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOL_CLASSES = {"http": _HTTPPool, "https": _HTTPSPool}
_managers: Dict[Optional[str], urllib3.PoolManager] = {}
_managers_lock = threading.Lock()


def _manager(scheme: str, host: str, port: int) -> urllib3.PoolManager:
    """The pool manager for a request: direct, or through the proxy the environment names for
    its scheme, unless no_proxy lists its host (urllib.request's rules)."""
    proxy = urllib.request.getproxies().get(scheme)
    if proxy and urllib.request.proxy_bypass(f"{host}:{port}"):
        proxy = None
    with _managers_lock:
        manager = _managers.get(proxy)
        if manager is None:
            if proxy is None:
                manager = urllib3.PoolManager(num_pools=32, maxsize=_POOL_SIZE)
            else:
                try:
                    manager = urllib3.ProxyManager(proxy, num_pools=32, maxsize=_POOL_SIZE)
                except (urllib3.exceptions.HTTPError, ValueError) as e:
                    raise GiveUp(f"cannot use the proxy {proxy} from the environment: "
                                 f"{describe_error(e)}") from None
            manager.pool_classes_by_scheme = _POOL_CLASSES
            _managers[proxy] = manager
        return manager


# -- one HTTP attempt, watched -------------------------------------------------------------------

class _Attempt:
    """One request. The watchdog calls abort() when no byte has come for stall_sec, or the
    attempt has passed its deadline."""

    def __init__(self, stall_sec: float, deadline_sec: Optional[float] = None):
        self.stall_sec = stall_sec
        self.began = self.last_progress = time.monotonic()
        self.deadline = self.began + deadline_sec if deadline_sec is not None else None
        self.deadline_sec = deadline_sec
        self.conn = None  # the urllib3 connection in use (set by _Watched.request)
        self.response: Optional[urllib3.BaseHTTPResponse] = None
        self.stalled: Optional[str] = None  # why the watchdog ended it

    def progress(self) -> None:
        self.last_progress = time.monotonic()

    def late(self, now: float) -> Optional[str]:
        if self.deadline is not None and now > self.deadline:
            return f"took longer than {self.deadline_sec:g} s"
        if now - self.last_progress > self.stall_sec:
            return f"stalled: no data for {self.stall_sec:g} s"
        return None

    def abort(self, why: str = "aborted") -> None:
        """Unblocks a read in another thread: shutting the socket down makes recv return."""
        self.stalled = why
        sock = getattr(self.conn, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self, reusable: bool = False) -> None:
        """Ends the attempt; its connection goes back to the pool only when `reusable` (the
        body was read to its end), else it is closed."""
        _WATCHDOG.unwatch(self)
        self.drop_response(reusable)

    def drop_response(self, reusable: bool = False) -> None:
        response, self.response = self.response, None
        if response is None:
            return
        if not reusable:
            response.close()
        response.release_conn()


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
                late = [(a, why) for a in self._attempts if (why := a.late(now))]
                for a, _ in late:
                    self._attempts.discard(a)
            for a, why in late:
                a.abort(why)


_WATCHDOG = _Watchdog()


def _connect(url: str, policy: FetchPolicy, first: int, last: Optional[int],
             attempt: _Attempt, method: str = "GET") -> Tuple[urllib3.BaseHTTPResponse, str]:
    """GET url from byte `first` (to `last`, inclusive, when given), following redirects.
    Returns the response (also kept as attempt.response) and the final URL. The policy's headers
    go to its origin only (but PUBLIC_HEADERS), and not past a redirect to another origin."""
    first_url = url
    home = _origin(policy.origin or url)
    at_home = True
    public = {k: v for k, v in policy.headers.items() if k.lower() in PUBLIC_HEADERS}
    for _ in range(_REDIRECTS + 1):
        scheme, host, port = _check_target(url, policy, first_url)
        at_home = at_home and _origin(url) == home
        # Bytes as stored: a compressed body could not be resumed by Range.
        headers = {"User-Agent": USER_AGENT, **(policy.headers if at_home else public),
                   "Accept-Encoding": "identity"}
        if first or last is not None:
            headers["Range"] = f"bytes={first}-{'' if last is None else last}"
        _current.attempt = attempt
        try:
            response = _manager(scheme, host, port).urlopen(
                method, url, headers=headers, redirect=False, retries=False,
                preload_content=False, decode_content=False, assert_same_host=False,
                timeout=urllib3.Timeout(connect=policy.connect_timeout_sec or policy.timeout_sec,
                                        read=policy.timeout_sec))
        except urllib3.exceptions.LocationParseError as e:
            raise GiveUp(f"bad URL {url!r}: {describe_error(e)}") from None
        finally:
            _current.attempt = None
        attempt.response = response
        attempt.progress()
        location = response.headers.get("Location")
        if response.status in (301, 302, 303, 307, 308) and location:
            attempt.drop_response()  # still watched: the next hop may stall too
            try:
                url = urljoin(url, location)
            except ValueError as e:
                raise GiveUp(f"a redirect to a bad URL {location!r}: {e}") from None
            continue
        return response, url
    raise GiveUp(f"too many redirects from {first_url}")


def _content_range(response, first: int) -> Optional[int]:
    """Checks a 206's Content-Range (bytes START-END/TOTAL) starts at `first`; returns TOTAL
    when the server says it."""
    header = response.headers.get("Content-Range")
    if not header:
        raise GiveUp("the server answered 206 (partial content) without a Content-Range")
    spec = header.split()[-1]
    span, _, total = spec.partition("/")
    start = span.split("-")[0]
    if not start.isdigit():
        raise GiveUp(f"the server answered 206 with a bad Content-Range {header!r}")
    if int(start) != first:
        raise Retry(f"asked for bytes from {first}, got a range from {start}")
    return int(total) if total.isdigit() else None


def _body_start(response, first: int) -> Tuple[int, Optional[int]]:
    """Checks the response to a request from byte `first`: returns (bytes of the body to skip,
    size of the whole resource if known)."""
    status = response.status
    if status == 206:
        return 0, _content_range(response, first)
    if status == 200:
        length = response.headers.get("Content-Length")
        # A server that ignores Range sends it all again: skip what we have.
        return first, int(length) if length and length.isdigit() else None
    if status in _GIVE_UP:
        raise GiveUp(f"HTTP {status} {response.reason or ''}".strip())
    raise Retry(f"HTTP {status} {response.reason or ''}".strip())


def _cause(e: BaseException) -> BaseException:
    """The error inside urllib3's wrappers (a proxy's, a broken connection's)."""
    while isinstance(e, (urllib3.exceptions.ProxyError, urllib3.exceptions.ProtocolError)) \
            and e.args and isinstance(e.args[-1], BaseException):
        e = e.args[-1]
    return e


def is_timeout(e: BaseException) -> bool:
    e = _cause(e)
    if isinstance(e, urllib3.exceptions.NewConnectionError):  # a ConnectTimeoutError subclass
        return False  # (a connect that timed out is a ConnectTimeoutError itself)
    return isinstance(e, (socket.timeout, TimeoutError, urllib3.exceptions.TimeoutError))


def describe_error(e: BaseException) -> str:
    """A network error in a few words: "timed out", "Connection refused", "Tunnel connection
    failed: 403 Forbidden", ..."""
    if is_timeout(e):
        return "timed out"
    e = _cause(e)
    text = str(e) or type(e).__name__
    if isinstance(e, urllib3.exceptions.NewConnectionError):  # "Pool(...): Failed ...: [Errno]"
        text = text.rpartition(": ")[2]
    return " ".join(text.split())



# The errors one attempt can end with that another attempt may not have.
_TRANSIENT = (Retry, OSError, urllib3.exceptions.HTTPError, ValueError)


# -- Download: one segment in memory, several at once --------------------------------------------

class Download:
    """Fetches url (bytes [offset, offset + length) of it when byterange is given) into memory in
    a thread of its own; read_at() reads while it arrives. Resumes after a failure.

    max_bytes: the most the body may hold (default MAX_BODY_BYTES); past it the download stops
    with an error naming the URL and the bound. deadline_sec: how long one attempt may take
    (None: no limit but the stall watchdog's); past it the attempt is retried, as after a
    stall, resuming where it stopped."""

    def __init__(self, url: str, policy: FetchPolicy, byterange: Optional[Tuple[int, int]] = None,
                 label: Optional[str] = None, max_bytes: Optional[int] = None,
                 deadline_sec: Optional[float] = None):
        self.url = url
        self.policy = policy
        self.byterange = byterange
        self.label = label or url
        self.max_bytes = max_bytes or MAX_BODY_BYTES
        self.deadline_sec = deadline_sec
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

    def _wait(self, ready) -> None:
        """Waits until ready() or the download ends, however it ends: the thread's own time is
        bounded (tries x deadline), and a thread that has died wakes nobody, so it is checked."""
        while not ready() and not self.done and self.error is None and \
                not self._cancel.is_set():
            if not self._thread.is_alive():
                self._cond.wait(0.05)  # its last notify may be on the way
                if not ready() and not self.done and self.error is None:
                    self.error = HighlightSenseError(
                        f"could not fetch {self.label}: its download stopped without a result")
                break
            self._cond.wait(1.0)

    def read_at(self, pos: int, n: int) -> bytes:
        """Up to n bytes from pos, waiting for them to arrive; b"" at the end."""
        with self._cond:
            self._wait(lambda: len(self.data) > pos)
            if len(self.data) <= pos and self.error is not None:
                raise self.error
            return bytes(self.data[pos:pos + n])

    def result(self) -> bytes:
        """The whole body, once complete."""
        with self._cond:
            self._wait(lambda: False)
            if self.error is not None:
                raise self.error
            return bytes(self.data)

    def _run(self) -> None:
        last = "no attempt"
        try:
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
                except _TRANSIENT as e:
                    last = describe_error(e)
                    self.failures += 1
                    if attempt < self.policy.tries:
                        log.debug("%s: %s; retrying from byte %d", self.label, last,
                                  len(self.data))
                        self._cancel.wait(self.policy.delay(attempt))
            error = HighlightSenseError(
                f"could not fetch {self.label} after {self.failures or 1} "
                f"tr{'ies' if self.failures > 1 else 'y'}: {last}")
        except BaseException as e:  # a bug, or an error no test has seen: the reader must hear
            error = HighlightSenseError(f"could not fetch {self.label}: {describe_error(e)} "
                                        f"({type(e).__name__})")
        with self._cond:
            self.error = error
            self._cond.notify_all()

    def _over(self, size: int) -> GiveUp:
        return GiveUp(f"it is over {self.max_bytes / 2**20:g} MiB (at least {size} bytes), the "
                      "most HighlightSense keeps for it")

    def _attempt(self) -> None:
        have = len(self.data)
        offset = self.byterange[0] if self.byterange else 0
        last = offset + self.byterange[1] - 1 if self.byterange else None
        if self.size is not None and have >= self.size:
            return
        attempt = _Attempt(self.policy.stall_sec, self.deadline_sec)
        _WATCHDOG.watch(attempt)
        complete = False
        try:
            response, _ = _connect(self.url, self.policy, offset + have, last, attempt)
            skip, total = _body_start(response, offset + have)
            if self.size is None and total is not None:
                self.size = total - offset if response.status == 206 else total
            if self.size is not None and self.size > self.max_bytes:
                raise self._over(self.size)
            while not self._cancel.is_set():
                want = _PIECE if skip else self._room()
                if want <= 0:
                    break  # the range (or the file) is complete: anything more is not ours
                piece = response.read1(min(want, _PIECE))
                if not piece:
                    complete = True  # the body's own end
                    break
                attempt.progress()
                if skip:
                    # Past the bytes we have (a server ignoring Range sends all again).
                    cut = min(skip, len(piece))
                    skip -= cut
                    piece = piece[cut:cut + self._room()]
                    if not piece:
                        continue
                with self._cond:
                    self.data += piece
                    self._cond.notify_all()
                if len(self.data) > self.max_bytes:
                    raise self._over(len(self.data))
            if self._cancel.is_set():
                return
            if attempt.stalled:
                raise Retry(attempt.stalled)
            if self.size is not None and len(self.data) < self.size:
                raise Retry(f"connection closed at byte {len(self.data)} of {self.size}")
            # Read to its end, the connection can serve the next request (keep-alive).
            complete = complete or response.length_remaining == 0
        except _TRANSIENT as e:
            if attempt.stalled:
                raise Retry(attempt.stalled) from e
            raise
        finally:
            attempt.close(reusable=complete)

    def _room(self) -> int:
        """How many more bytes belong to the body: up to its size (a byte range's length, or
        the Content-Length), else up to one past the bound (to notice a body that goes on)."""
        end = self.size if self.size is not None else self.max_bytes + 1
        return end - len(self.data)


def open_url(url: str, policy: FetchPolicy, method: str = "GET") -> urllib3.BaseHTTPResponse:
    """One request through the shared pools and the environment's proxies, redirects followed
    (the policy's headers to its origin only), no retries and no watchdog: for callers with a
    loop of their own (the separator's weights download). The body is unread: read it (read1),
    then release_conn(). Raises GiveUp or urllib3's errors (describe_error says them)."""
    return _connect(url, policy, 0, None, _Attempt(policy.stall_sec), method)[0]


def fetch_bytes(url: str, policy: FetchPolicy, label: Optional[str] = None,
                byterange: Optional[Tuple[int, int]] = None, max_bytes: Optional[int] = None,
                deadline_sec: Optional[float] = None) -> bytes:
    """The whole body of url, with the retries, bounds and watchdog of Download."""
    return Download(url, policy, byterange, label, max_bytes, deadline_sec).start().result()


# -- HttpFile: a seekable file over HTTP, for PyAV ------------------------------------------------

class HttpFile(io.RawIOBase):
    """A read-only, seekable file object over an http(s) URL: reads stream one connection, a
    seek starts a new Range request, a failure resumes where it stopped. PyAV opens it with
    av.open(HttpFile(url)); str() gives the URL for messages."""

    def __init__(self, url: str, policy: Optional[FetchPolicy] = None):
        super().__init__()
        self.url = url
        self.policy = (policy or FetchPolicy()).bound_to(url)
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
                    raise Retry(self._attempt.stalled)
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
            except _TRANSIENT as e:
                stalled = self._attempt is not None and self._attempt.stalled
                last = stalled or describe_error(e)
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
        skip, total = _body_start(response, self.pos)
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
