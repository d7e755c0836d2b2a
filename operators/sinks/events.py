"""Events out of `watch`: one JSON object per line (stdout or a file), and webhook POSTs.

A line is written and flushed the moment its event is emitted, so a reader tailing the file sees
it at once. Webhook POSTs (the same JSON, Content-Type application/json) go out from a thread of
their own, in order, each retried with backoff; one that still fails is a warning, never the end
of the watch.

Event types:
  highlight  id, start_sec, end_sec, start_ts, end_ts, peak_sec, confidence, threshold, forced,
             decided_at_sec (stream time received when decided), delay_sec (decided_at_sec -
             end_sec: how far the stream had run past the window), latency_sec (wall seconds from
             the arrival of the window's last audio to this event), emitted_at (UTC), source
  clip       id (the highlight's), path, start_sec, end_sec (as written), mode, note
"""
import json
import logging
import queue
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Optional, TextIO

log = logging.getLogger("highlightsense")


class EventSink:
    def __init__(self, path: Optional[str] = None, webhook: Optional[str] = None,
                 tries: int = 4, backoff_sec: float = 0.5, timeout_sec: float = 10.0,
                 stream: Optional[TextIO] = None):
        self.path = path
        self._out = open(path, "a", encoding="utf-8") if path else (stream or sys.stdout)
        self._own = bool(path)
        self.webhook = webhook
        self.tries, self.backoff_sec, self.timeout_sec = tries, backoff_sec, timeout_sec
        self.count = 0
        self.delivered = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._posts: "queue.Queue" = queue.Queue()
        self._poster = None
        if webhook:
            self._poster = threading.Thread(target=self._post_all, daemon=True, name="hs-webhook")
            self._poster.start()

    def emit(self, event: dict) -> None:
        line = json.dumps(event, separators=(", ", ": "))
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()
            self.count += 1
        if self._poster is not None:
            self._posts.put(line.encode())

    def close(self, wait_sec: float = 30.0) -> None:
        """Waits (up to wait_sec) for the webhook to take what is queued, then closes the file."""
        if self._poster is not None:
            self._posts.put(None)
            self._poster.join(wait_sec)
            if self._poster.is_alive():
                log.warning("webhook: gave up waiting; %d events not delivered",
                            self._posts.qsize())
        if self._own:
            self._out.close()

    def _post_all(self) -> None:
        while (body := self._posts.get()) is not None:
            self._post(body)

    def _post(self, body: bytes) -> None:
        reason = ""
        for attempt in range(1, self.tries + 1):
            request = urllib.request.Request(self.webhook, data=body, method="POST",
                                             headers={"Content-Type": "application/json"})
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
        log.warning("webhook %s: could not deliver an event after %d tries: %s", self.webhook,
                    attempt, reason)
