"""The threads this tool starts, and how a command ends with none of them running.

Every thread the tool starts is named `hs-...` (stages, downloads, the fetch watchdog, the live
video buffer, clips, webhook). Each has its own way to be stopped (a pipeline stops its stages,
a source's close() cancels its downloads); what is left here is the last word: at the end of
a command each is joined, for at most JOIN_SEC in all, save those already waited for and given
up (`abandon`). One still running then is stuck in a blocking call (a read that will not
return). Letting interpreter teardown meet it is what ended
runs with "terminate called without an active exception" (exit 134): a daemon thread that comes
back from torch's C++ code while the interpreter shuts down is killed inside it. So a command
that leaves a thread blocked names it in the log and, its outputs flushed, leaves with
os._exit(status) (`leave`, the console script's last step).
"""
import logging
import os
import sys
import threading
import time
import weakref
from typing import List, Optional

log = logging.getLogger("highlightsense")

PREFIX = "hs-"
JOIN_SEC = 5.0


def ours() -> List[threading.Thread]:
    """The tool's threads still running, other than the caller."""
    me = threading.current_thread()
    return [t for t in threading.enumerate()
            if t.name.startswith(PREFIX) and t is not me and t.is_alive()]


def join(threads, timeout: Optional[float] = None) -> List[threading.Thread]:
    """Joins each of `threads` within `timeout` seconds in all (JOIN_SEC by default); returns
    those still running."""
    deadline = time.monotonic() + (JOIN_SEC if timeout is None else timeout)
    for thread in threads:
        if thread is not threading.current_thread() and thread.is_alive():
            thread.join(max(0.0, deadline - time.monotonic()))
    return [t for t in threads if t.is_alive()]


_abandoned: "weakref.WeakSet[threading.Thread]" = weakref.WeakSet()


def abandon(threads) -> None:
    """`threads` were waited for and will not end (blocked): `leave` does not wait again."""
    _abandoned.update(threads)


def names(threads) -> str:
    return ", ".join(sorted({t.name for t in threads}))


def leave(status: int) -> int:
    """The end of a command run as a program: `status` once no thread of the tool is left
    running; else (one is blocked) the outputs are flushed and the process exits at once
    with `status`, without interpreter teardown."""
    try:
        join([t for t in ours() if t not in _abandoned])
    except KeyboardInterrupt:  # a second Ctrl-C while waiting: go now
        status = 130
    blocked = ours()
    if not blocked:
        return status
    log.warning("%s still blocked at the end; leaving without waiting for %s",
                names(blocked), "it" if len(blocked) == 1 else "them")
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)
